"""The checkpointer: keeps the WAL short without holding the application's writers.

A checkpoint runs under brief seals only after every committed frame is copied (the
copier's ``uncopied`` under the seal, written to the spool after it), and restarts the
agent's read transaction ``R`` under the seal, so that a WAL restart after it is known
harmless. A WAL file grown past max-wal-size is truncated once copied: its dead end cut in
steps, then a TRUNCATE checkpoint that only succeeds if nothing was committed since.
"""

from __future__ import annotations

import os
import time
from typing import Protocol

from . import wal
from .connections import Connections
from .copier import Diverged, FrameCopier
from .livedb import WalChanged
from .logs import Labelled
from .progress import format_size
from .segment import WalPosition
from .walfile import WalFile

# A checkpoint seal copies at most this much uncopied WAL under the write lock; a longer
# tail is first copied without the lock (up to _TAIL_ATTEMPTS times).
_MAX_TAIL = 512 << 10
_TAIL_ATTEMPTS = 3
# A WAL file larger than a database's max-wal-size is truncated once copied; a try that
# fails (an app's reader kept the WAL in use) waits this long, doubling up to the second.
_TRUNCATE_RETRY = (1.0, 30.0)
# Freeing a large file's blocks takes long (100 ms for 344 MB here), and a TRUNCATE
# checkpoint does it under the write lock: the dead end of a large WAL is cut first, this
# much per brief seal, with a pause between for the app's writers.
_SHRINK_STEP = 32 << 20
_SHRINK_PAUSE = 0.005


class Agent(Protocol):
    """What the checkpointer needs of the agent: its connections, WAL and copier, the
    position copied, and the state of its read transaction ``R``."""

    connections: Connections
    walfile: WalFile
    copier: FrameCopier
    pos: WalPosition
    stats: dict[str, float]
    log: Labelled
    max_wal_size: int
    restart_ok: bool  # R began under a seal with everything copied (see DbAgent.restart_harmless)
    r_begin_pos: WalPosition  # the position copied when R began
    r_on_lock0: bool  # R began under the seal on a WAL checkpointed in full

    def sync(self) -> int:
        """Copy what is committed into the spool; return how many transactions."""
        ...

    def begin_read(self) -> None:
        """Begin R's read transaction."""
        ...

    def restart_harmless(self) -> bool:
        """True when a WAL restart cannot have dropped uncopied frames."""
        ...


class Checkpointer:
    """Checkpoints and truncates the WAL of ``agent``'s database. ``truncate_at``: not
    before this (monotonic) time does the next truncation try, after one failed."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.truncate_at = 0.0  # (monotonic) not before: see truncate_wal
        self.truncate_wait = _TRUNCATE_RETRY[0]

    def checkpoint(self) -> bool:
        """Let the WAL restart without holding the write lock for long; False if a seal failed.

        Two short seals: the first moves ``R`` to the end of the WAL, so that a PASSIVE
        checkpoint outside any seal can copy nearly every frame into the database; the
        second takes the few frames committed meanwhile, checkpoints them and restarts
        ``R``, after which a wholly checkpointed WAL may restart.
        """
        # Copy what is committed first, outside any seal: what a seal captures stays small.
        self.agent.sync()
        if not self.cycle(checkpoint=False):
            return False
        self.agent.connections.checkpoint()
        self.agent.sync()
        return self.cycle(checkpoint=True)

    def truncate_wal(self, checkpointed: bool = False) -> bool:
        """Shrink the WAL file to nothing once every frame in it is copied; return whether it did.

        SQLite reuses a WAL file from its start but never shrinks it: after a burst (or a
        long reader that kept it from restarting) it keeps its largest size. A checkpoint
        first copies every frame, checkpoints them and restarts ``R`` under the seal; on a
        WAL checkpointed in full, ``R`` reads the database file alone, under read lock 0.
        A TRUNCATE checkpoint then succeeds only if nothing was committed since: a new
        frame would have to be checkpointed, which needs read lock 0 exclusively, and ``R``
        holds it. Its restart is the one a reader under read lock 0 lets happen, harmless
        (see ``sync``): nothing was copied since ``R`` began. A reader of the app's keeps
        it from restarting; the truncation is tried again later. With ``checkpointed``, the
        caller's own checkpoint just did the first part.
        """
        before = self.agent.walfile.size()
        done = ((checkpointed or self.checkpoint()) and self.agent.restart_harmless() and self.agent.r_on_lock0
                and self.shrink_dead_end() and self.checkpoint_truncate())
        if not done:
            self.truncate_at = time.monotonic() + self.truncate_wait
            self.agent.log.debug("WAL of %d bytes not truncated (in use); next try in %.0fs",
                                 before, self.truncate_wait)
            self.truncate_wait = min(2 * self.truncate_wait, _TRUNCATE_RETRY[1])
            return False
        self.truncate_wait = _TRUNCATE_RETRY[0]
        self.agent.stats["wal_truncations"] += 1
        self.agent.log.info("WAL truncated from %s (larger than max-wal-size %s)",
                            format_size(before), format_size(self.agent.max_wal_size))
        return True

    def shrink_dead_end(self) -> bool:
        """Cut the WAL file past its last live frame, _SHRINK_STEP at a time under brief
        seals (frames past the wal-index's count are dead: left from before a restart, or
        of a commit never finished); False when a seal was refused."""
        while self.agent.walfile.size() > _SHRINK_STEP:
            if not self.agent.connections.seal():
                return False
            try:
                hdr = self.agent.walfile.header()
                frames = 0 if hdr is None else self.agent.walfile.index_frames(hdr)
                if frames is None:
                    return True  # the wal-index unusable for now: the TRUNCATE checkpoint decides
                live = hdr.frame_offset(frames + 1) if hdr is not None and frames else 0
                size = self.agent.walfile.size()
                target = max(live, size - _SHRINK_STEP)
                if target >= size:
                    return True
                # Under the seal no frame is being written: no write can land past the cut.
                os.truncate(self.agent.walfile.wal_path, target)
            finally:
                self.agent.connections.unseal()
            self.agent.stats["wal_shrinks"] += 1
            time.sleep(_SHRINK_PAUSE)
        return True

    def checkpoint_truncate(self) -> bool:
        """Run a TRUNCATE checkpoint, waiting briefly for locks; True when it emptied the WAL."""
        def checkpointed_in_full() -> bool:
            return wal.index_checkpointed_in_full(self.agent.walfile.read_index())

        # A frame committed since R began can never be checkpointed while R holds read lock
        # 0, and the TRUNCATE cannot succeed: it gives up rather than hold the app's writers.
        return checkpointed_in_full() and self.agent.connections.checkpoint_truncate(checkpointed_in_full)

    def seal_small_tail(self) -> tuple[wal.WalHeader | None, list[wal.Transaction],
                                       wal.ReadAt] | None:
        """Take the seal with little uncopied WAL behind it; return the WAL header and the
        uncopied transactions, still sealed, or None (not sealed) when the write lock could
        not be had or the WAL kept changing.

        Nothing slow happens under the seal, since the app waits for it: a long tail
        (which would hold the write lock, and memory, while read), a WAL restart or a
        divergence (a new generation) is handled by ``sync`` outside it first.
        """
        for attempt in range(_TAIL_ATTEMPTS + 1):
            if not self.agent.connections.seal():
                return None
            hdr = self.agent.walfile.header()
            if hdr is None:
                return None, [], self.agent.walfile.read_at
            if hdr.salts == (self.agent.pos.salt1, self.agent.pos.salt2):
                try:
                    txs, read_at = self.agent.copier.uncopied(hdr)
                    frames = txs[-1].end_index - self.agent.pos.frame if txs else 0
                    if frames * hdr.frame_size <= _MAX_TAIL or attempt == _TAIL_ATTEMPTS:
                        return hdr, txs, read_at
                except (WalChanged, Diverged):
                    pass
            self.agent.connections.unseal()
            self.agent.sync()
        self.agent.log.warning("the WAL kept changing under the seal; postponed")
        return None

    def cycle(self, checkpoint: bool) -> bool:
        """Under a seal: capture the WAL tail, restart ``R`` (checkpointing in between if
        asked); then ship the captured transactions."""
        sealed = self.seal_small_tail()
        if sealed is None:
            return False
        hdr, txs, read_at = sealed
        try:
            tail = self.agent.copier.capture(hdr, txs, read_at) if hdr is not None and txs else None
            # Until the captured frames are in the spool, a WAL restart is not harmless.
            self.agent.restart_ok = False
            self.agent.connections.end_read()
            if checkpoint:
                self.agent.connections.checkpoint()
            # Under the seal nothing is committed: a WAL checkpointed in full now is one when
            # R begins, and R reads the database file alone, on read lock 0.
            full = wal.index_checkpointed_in_full(self.agent.walfile.read_index())
            self.agent.begin_read()
            self.agent.r_on_lock0 = full
        finally:
            self.agent.connections.unseal()
        if tail is not None:
            self.agent.copier.spool_transactions(txs, hdr, tail.read_at)  # type: ignore[arg-type]
        self.agent.restart_ok = True
        self.agent.r_begin_pos = self.agent.pos
        return True
