"""The frame copier: finds the WAL frames committed after the position copied (by the
wal-index, never by checksums alone) and writes them, as the next segment of the
generation, into the local spool; the shipper uploads from there.

It reads and advances the replication state it is given (``Replicated``: the agent's),
and reads the WAL through a ``WalFile``; it takes no lock itself. Run under the seal,
``uncopied`` sees every committed frame; outside, what was committed when it looked.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from . import layout, wal
from .dbhash import DbHash, page_hash
from .livedb import WalChanged
from .segment import SegmentHeader, SegmentWriter, TX_CHECKSUM_KNOWN, TxInfo, WalPosition
from .spool import Spool
from .walfile import WalFile

# The WAL frames of one shipment are read at once when they take at most this much;
# larger shipments read the WAL page by page, twice, which keeps the agent's RSS flat.
_KEEP_IN_MEMORY = 8 << 20


class Diverged(Exception):
    """The WAL's committed frames do not continue what was copied: a new generation starts."""


class Replicated(Protocol):
    """The replication state the copier reads and advances (the agent's)."""

    page_size: int
    db_id: str
    spool: Spool
    stats: dict[str, float]
    generation: int
    next_seq: int
    end_link: bytes
    pos: WalPosition  # the last WAL frame copied
    hasher: DbHash  # the state copied: every page's hash

    def recorded_ms(self) -> int:
        """The time to record for what is written now."""
        ...


@dataclass
class Tail:
    """WAL bytes read once, from offset ``base``; reads past them go to ``fallback``,
    or find nothing without one (a tail kept after the WAL may have restarted)."""
    base: int
    data: bytes
    fallback: Callable[[int, int], bytes] | None = None

    def read_at(self, offset: int, size: int) -> bytes | memoryview:
        start = offset - self.base
        if 0 <= start and start + size <= len(self.data):
            return memoryview(self.data)[start:start + size]
        if self.fallback is None:
            return self.data[start:start + size] if start >= 0 else b""
        if 0 <= start < len(self.data):
            return self.data[start:] + self.fallback(offset + len(self.data) - start,
                                                     size - len(self.data) + start)
        return self.fallback(offset, size)


class FrameCopier:
    """Copies the committed frames after ``state.pos``, read through ``walfile``, into
    ``state.spool``. ``in_flight``: a frame follows the committed ones, so a commit is
    probably being written; ``index_unknown_since``: since when (monotonic) the wal-index
    could not be used, or None."""

    def __init__(self, state: Replicated, walfile: WalFile) -> None:
        self.state = state
        self.walfile = walfile
        self.in_flight = False
        self.index_unknown_since: float | None = None

    def uncopied(self, hdr: wal.WalHeader) -> tuple[list[wal.Transaction], wal.ReadAt]:
        """The committed transactions after our position (complete when called under the
        seal), and a reader that serves their frames from memory where it can.

        Committed means counted by the wal-index (mxFrame), never merely "checksums chain":
        an app killed between writing its frames and updating the wal-index wrote frames
        that SQLite discards. Those frames are read in one call (up to _KEEP_IN_MEMORY),
        checked, and the same bytes are shipped. Raises Diverged when the committed frames
        do not continue the ones copied, WalChanged when the WAL changed under the read.
        """
        self.in_flight = False
        committed = self.walfile.index_frames(hdr)
        if committed is None:
            # A restart or a wal-index update half done: nothing can be proven committed yet.
            self.in_flight = True
            if self.index_unknown_since is None:
                self.index_unknown_since = time.monotonic()
            return [], self.walfile.read_at
        self.index_unknown_since = None
        if committed < self.state.pos.frame:
            self.check_unchanged(hdr, committed)
            raise Diverged(f"the wal-index counts {committed} committed WAL frames, "
                           f"fewer than the {self.state.pos.frame} already copied")
        if committed == self.state.pos.frame:
            self.in_flight = self.frame_follows(hdr, committed)
            return [], self.walfile.read_at
        start = self.state.pos.frame + 1
        expect = committed - self.state.pos.frame
        base = hdr.frame_offset(start)
        size = min(expect, max(1, _KEEP_IN_MEMORY // hdr.frame_size)) * hdr.frame_size
        read_at = Tail(base, self.walfile.read_at(base, size), self.walfile.read_at).read_at
        state = (self.state.pos.checksum1, self.state.pos.checksum2)
        txs = list(wal.scan(read_at, hdr, start, state, max_frames=expect, expect=expect))
        end = txs[-1].end_index if txs else self.state.pos.frame
        if end != committed:
            self.check_unchanged(hdr, committed)
            raise Diverged(f"WAL frame {end + 1} does not continue the frames already copied "
                           f"(the wal-index counts {committed} committed)")
        self.in_flight = self.frame_follows(hdr, committed)
        return txs, read_at

    def check_unchanged(self, hdr: wal.WalHeader, committed: int) -> None:
        """Raise WalChanged unless the WAL header and the wal-index still say what they
        said when ``committed`` was read: a break seen during a restart proves nothing."""
        if self.walfile.header() != hdr or self.walfile.index_frames(hdr) != committed:
            raise WalChanged()

    def frame_follows(self, hdr: wal.WalHeader, committed: int) -> bool:
        """True when a frame with this WAL's salts follows the committed ones: a commit is
        likely being written (the wal-index is updated after its frames, without a file
        event), so the loop looks again soon."""
        fh = self.walfile.read_at(hdr.frame_offset(committed + 1), wal.FRAME_HEADER_SIZE)
        salts = hdr.salt1.to_bytes(4, "big") + hdr.salt2.to_bytes(4, "big")
        return len(fh) == wal.FRAME_HEADER_SIZE and fh[8:16] == salts

    def capture(self, hdr: wal.WalHeader, txs: list[wal.Transaction],
                read_at: wal.ReadAt) -> Tail:
        """Copy the frames of ``txs`` into memory, so they can be shipped after the WAL restarts.

        Only committed frames: the file may hold stale frames of an earlier WAL after them.
        """
        base = hdr.frame_offset(self.state.pos.frame + 1)
        end = hdr.frame_offset(txs[-1].end_index + 1) if txs else base
        return Tail(base, bytes(read_at(base, end - base)))

    def spool_transactions(self, txs: list[wal.Transaction], hdr: wal.WalHeader, read_at: wal.ReadAt,
                           *, recheck: wal.WalHeader | None = None, final_hash: DbHash | None = None,
                           checksums_known: bool = True) -> None:
        """Write ``txs`` as the next segment in the spool and advance the position.

        With ``final_hash`` (after a restart of the agent) only the state after the last
        transaction is known; without ``checksums_known`` none is, and the incremental hash
        is left as it was (a later segment records the checksum).
        """
        commit_ms = self.state.recorded_ms()
        # Last frame of each page per transaction; a page written twice ships once. Pages
        # past the size in the commit frame are not part of the database: a transaction
        # that spilled its cache, then shrank the file (auto_vacuum), wrote them.
        per_tx = []
        total = 0
        for tx in txs:
            latest: dict[int, int] = {}
            for fr in tx.frames:
                if fr.pgno <= tx.db_size:
                    latest[fr.pgno] = fr.index
            per_tx.append(latest)
            total += len(latest)
        # The frames of ``txs`` lie back to back: read them with one call when they fit in
        # memory, else page by page (twice: to hash, then to compress).
        first = txs[0].frames[0].index
        span = (txs[-1].end_index - first + 1) * hdr.frame_size
        keep = span <= _KEEP_IN_MEMORY
        if keep:
            block = memoryview(read_at(hdr.frame_offset(first), span))
            if len(block) != span:
                raise EOFError(f"WAL frames {first}..{txs[-1].end_index}: short read")
            ps = self.state.page_size

            def page(index: int) -> bytes | memoryview:
                off = (index - first) * hdr.frame_size + wal.FRAME_HEADER_SIZE
                return block[off:off + ps]
        else:
            def page(index: int) -> bytes | memoryview:
                try:
                    return wal.read_page(read_at, hdr, index)
                except wal.FrameMismatch:
                    raise WalChanged() from None
        # Pass 1: hash each shipped page and compute the database checksum after each tx.
        changes: dict[int, int] = {}
        value = self.state.hasher.value
        size = self.state.hasher.page_count
        infos = []
        for tx, latest in zip(txs, per_tx):
            for pgno, index in latest.items():
                h = page_hash(pgno, page(index))
                old = changes.get(pgno, self.state.hasher.get(pgno)) if pgno <= size else 0
                value ^= old ^ h
                changes[pgno] = h
                size = max(size, pgno)
            for pgno in range(tx.db_size + 1, size + 1):
                value ^= changes.get(pgno, self.state.hasher.get(pgno))
                changes[pgno] = 0
            size = tx.db_size
            infos.append([commit_ms, tx.db_size, len(latest), value, TX_CHECKSUM_KNOWN])
        if recheck is not None and self.walfile.header() != recheck:
            raise WalChanged()
        if final_hash is not None or not checksums_known:
            for info in infos:
                info[3], info[4] = 0, 0
        if final_hash is not None:
            infos[-1][3], infos[-1][4] = final_hash.value, TX_CHECKSUM_KNOWN
        end = txs[-1]
        pos = WalPosition(hdr.salt1, hdr.salt2, end.end_index, *end.checksum)

        def pages() -> Iterator[tuple[int, bytes | memoryview]]:
            for latest in per_tx:
                for pgno, index in latest.items():
                    yield pgno, page(index)

        changed = None if recheck is None or keep else (lambda: self.walfile.header() != recheck)
        self.write_segment([TxInfo(*i) for i in infos], txs[0].frames[0].index, pos, pages(), changed)
        # The segment is durable: advance.
        if final_hash is None and checksums_known:
            for pgno, h in changes.items():
                if pgno <= size:
                    self.state.hasher.set_hash(pgno, h)
            self.state.hasher.truncate(size)

    def write_segment(self, txs: list[TxInfo], first_frame: int, pos: WalPosition,
                      pages: Iterable[tuple[int, bytes | memoryview]],
                      changed: Callable[[], bool] | None = None) -> None:
        """Write the next segment of this generation, holding ``txs`` (their pages, in
        order, from ``pages``), into the spool, and advance to WAL position ``pos``. Raises
        WalChanged, writing nothing, when ``changed`` says the pages read may be wrong."""
        state = self.state
        seq = state.next_seq
        header = SegmentHeader(state.page_size, state.generation, seq, seq, state.end_link, os.urandom(16),
                               pos, first_frame, tuple(txs), db_id=state.db_id)
        name = layout.SegmentName(state.generation, seq, seq, txs[-1].commit_ms)
        with state.spool.writing(name) as f:
            w = SegmentWriter(f, header)
            for pgno, data in pages:
                w.add_page(pgno, data)
            w.close()
        if changed is not None and changed():
            state.spool.discard(name)
            raise WalChanged()
        state.spool.publish(name)
        state.pos = pos
        state.next_seq = seq + 1
        state.end_link = header.end_link
        state.stats["segments"] += 1
        state.stats["transactions"] += len(txs)
