"""SQLite WAL file format: header and frame parsing, cumulative checksums (pure).

Reference: sqlite.org/fileformat2.html, "WAL file format". Nothing here opens a file; a
caller passes bytes or a ``read_at(offset, size) -> bytes`` function.

The checksum runs over 32-bit words two at a time:  s0 += w[i] + s1;  s1 += w[i+1] + s0.
That is a linear recurrence, so the checksum of a frame is ``M^n·(s0, s1) + C·words`` for a
fixed 2x2 matrix ``M^n`` and fixed coefficient rows ``C``; numpy evaluates ``C·words`` for
many frames at once in uint32 arithmetic, which wraps modulo 2^32 as the checksum does.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator, NamedTuple

import numpy as np

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
MAGIC_LE = 0x377F0682
MAGIC_BE = 0x377F0683
WAL_VERSION = 3007000
_MASK = 0xFFFFFFFF

# (offset, size) -> bytes; a memoryview when served from bytes read earlier (copier.Tail)
ReadAt = Callable[[int, int], bytes | memoryview]


def checksum(data: bytes, big_endian: bool, s0: int = 0, s1: int = 0) -> tuple[int, int]:
    """Return the WAL checksum of ``data`` (a multiple of 8 bytes) continued from (s0, s1)."""
    if len(data) % 8:
        raise ValueError(f"checksum input must be a multiple of 8 bytes, got {len(data)}")
    words = struct.unpack((">" if big_endian else "<") + f"{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & _MASK
        s1 = (s1 + words[i + 1] + s0) & _MASK
    return s0, s1


@dataclass(frozen=True)
class WalHeader:
    """The 32-byte header at the start of a WAL file."""

    magic: int
    version: int
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    checksum1: int
    checksum2: int

    @property
    def big_endian(self) -> bool:
        return self.magic == MAGIC_BE

    @property
    def salts(self) -> tuple[int, int]:
        return self.salt1, self.salt2

    @property
    def frame_size(self) -> int:
        return FRAME_HEADER_SIZE + self.page_size

    def frame_offset(self, index: int) -> int:
        """Return the file offset of frame ``index`` (1-based)."""
        return WAL_HEADER_SIZE + (index - 1) * self.frame_size

    @classmethod
    def parse(cls, data: bytes) -> "WalHeader | None":
        """Return the header, or None when ``data`` holds no valid header (empty, torn, reset)."""
        if len(data) < WAL_HEADER_SIZE:
            return None
        fields = struct.unpack(">8I", data[:WAL_HEADER_SIZE])
        hdr = cls(*fields)
        if hdr.magic not in (MAGIC_LE, MAGIC_BE) or hdr.version != WAL_VERSION:
            return None
        ps = hdr.page_size
        if ps < 512 or ps > 65536 or ps & (ps - 1):
            return None
        if checksum(data[:24], hdr.big_endian) != (hdr.checksum1, hdr.checksum2):
            return None
        return hdr


class Frame(NamedTuple):
    """One valid frame: its 1-based index, page number and db size (non-zero on commit)."""

    # The field shadows tuple.index (a method); every caller means the field.
    index: int  # type: ignore[assignment]
    pgno: int
    commit_size: int

    @property
    def is_commit(self) -> bool:
        return self.commit_size != 0


@dataclass(frozen=True)
class Transaction:
    """The frames of one committed transaction, and the checksum after its commit frame."""

    frames: tuple[Frame, ...]
    db_size: int
    checksum: tuple[int, int]

    @property
    def end_index(self) -> int:
        return self.frames[-1].index


@lru_cache(maxsize=8)
def _coefficients(n_words: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Coefficients C (one row per checksummed word, two columns) and matrix M^n with
    checksum(words, s) = M^n·s + words·C, all modulo 2^32. ``C`` is split into the rows
    for the frame header's first two words and the rows for the page."""
    n_pairs = n_words // 2
    # powers[j] = M^j with M = [[1,1],[1,2]], modulo 2^32.
    powers = [(1, 0, 0, 1)]
    for _ in range(n_pairs):
        a, b, c, d = powers[-1]
        powers.append(((a + b) & _MASK, (a + 2 * b) & _MASK, (c + d) & _MASK, (c + 2 * d) & _MASK))
    coef = np.empty((n_words, 2), dtype=np.uint32)
    for k in range(n_pairs):
        # Pair k contributes M^(n-1-k)·(a_k, a_k + b_k).
        p00, p01, p10, p11 = powers[n_pairs - 1 - k]
        coef[2 * k] = ((p00 + p01) & _MASK, (p10 + p11) & _MASK)
        coef[2 * k + 1] = (p01, p11)
    return np.ascontiguousarray(coef[:2]), np.ascontiguousarray(coef[2:]), powers[n_pairs]


INDEX_HEADER_SIZE = 48  # one copy of the wal-index header at the start of the -shm file


def _index_header(shm: bytes) -> tuple[int, bytes] | None:
    """Return (mxFrame, salts as stored) from a consistent, initialised wal-index header in
    ``shm`` (the first 96 bytes of the -shm file), or None: short, its two copies differ or
    fail their checksum (a write in progress, or a writer killed inside one), uninitialised."""
    if len(shm) < 2 * INDEX_HEADER_SIZE or shm[:INDEX_HEADER_SIZE] != shm[INDEX_HEADER_SIZE:2 * INDEX_HEADER_SIZE]:
        return None
    # Native byte order (the -shm file never leaves the machine); the salts are copied
    # byte for byte from the WAL header.
    if not shm[12] or _native_checksum(shm[:40]) != struct.unpack_from("=2I", shm, 40):
        return None
    return struct.unpack_from("=I", shm, 16)[0], shm[32:40]


def index_frames(shm: bytes, header: WalHeader) -> int | None:
    """Return the frame count (mxFrame) the wal-index header in ``shm`` gives for the WAL
    with ``header``: the frames SQLite counts as committed. None when it cannot be used
    (see _index_header), or was written for other salts (another WAL, or a restart half
    done).

    Frames past mxFrame are not committed even when their checksums chain: a writer killed
    after writing them, before updating the wal-index, wrote a transaction that never
    happened, and the next writer overwrites those frames.
    """
    index = _index_header(shm)
    if index is None or index[1] != struct.pack(">2I", header.salt1, header.salt2):
        return None
    return index[0]


def index_restarted(shm: bytes, header: WalHeader) -> bool:
    """True when the wal-index says the WAL with ``header`` was restarted and holds nothing
    yet: new salts and no frame. SQLite writes the wal-index first and the WAL header with
    the first new frame, or truncates the file after it (a TRUNCATE checkpoint killed
    between the two leaves this state until the next write): the WAL is empty."""
    index = _index_header(shm)
    return index is not None and index[0] == 0 and index[1] != struct.pack(">2I", header.salt1, header.salt2)


INDEX_READ_SIZE = 2 * INDEX_HEADER_SIZE + 4  # the two header copies and nBackfill after them


def index_backfilled(shm: bytes) -> int | None:
    """The number of frames of the current WAL a checkpoint has copied into the database
    file (nBackfill, right after the wal-index header's two copies), when the header is
    consistent; None otherwise."""
    if len(shm) < INDEX_READ_SIZE or _index_header(shm) is None:
        return None
    return struct.unpack_from("=I", shm, 2 * INDEX_HEADER_SIZE)[0]


def index_checkpointed_in_full(shm: bytes) -> bool:
    """True when the wal-index header is consistent and a checkpoint has copied every frame
    of the current WAL into the database file (nBackfill == mxFrame)."""
    index = _index_header(shm)
    return index is not None and index_backfilled(shm) == index[0]


def _native_checksum(data: bytes) -> tuple[int, int]:
    """The checksum SQLite keeps in the wal-index header: over native-order words."""
    return checksum(data, sys.byteorder == "big")


def _valid_prefix(chunk: bytes | memoryview, header: WalHeader, state: tuple[int, int]
                  ) -> tuple[int, np.ndarray]:
    """Check the whole frames in ``chunk``, the first continuing the checksum ``state``;
    return how many lead the chunk validly and the frame headers as rows of six uint32
    (page number, commit size, salt 1, salt 2, checksum 1, checksum 2).

    A frame is valid when it carries the WAL's salts, a page number and the checksum that
    continues its predecessor's. Each frame is checked against the checksum stored in the
    frame before it, so every frame is checked at once: a stored checksum is only relied
    on once its own frame has passed.
    """
    frame_size = header.frame_size
    n = len(chunk) // frame_size
    count = n * frame_size // 4
    rows = np.frombuffer(chunk, dtype=">u4", count=count).reshape(n, frame_size // 4)
    words = rows if header.big_endian else np.frombuffer(chunk, dtype="<u4", count=count).reshape(rows.shape)
    head_coef, page_coef, (m00, m01, m10, m11) = _coefficients(2 + header.page_size // 4)
    # uint32 arithmetic wraps modulo 2^32, which is the checksum's own arithmetic.
    sums = words[:, 6:] @ page_coef
    sums += words[:, :2] @ head_coef
    headers = rows[:, :6].astype(np.uint32)
    prev0 = np.empty(n, dtype=np.uint32)
    prev1 = np.empty(n, dtype=np.uint32)
    prev0[0], prev1[0] = state
    prev0[1:], prev1[1:] = headers[:-1, 4], headers[:-1, 5]
    m = [np.uint32(x) for x in (m00, m01, m10, m11)]
    ok = (headers[:, 2] == header.salt1) & (headers[:, 3] == header.salt2) & (headers[:, 0] != 0)
    ok &= m[0] * prev0 + m[1] * prev1 + sums[:, 0] == headers[:, 4]
    ok &= m[2] * prev0 + m[3] * prev1 + sums[:, 1] == headers[:, 5]
    return (n if ok.all() else int(ok.argmin())), headers


def scan(read_at: ReadAt, header: WalHeader, start: int, state: tuple[int, int],
         chunk_frames: int = 256, max_frames: int | None = None, expect: int | None = None
         ) -> Iterator[Transaction]:
    """Yield the committed transactions that follow frame ``start - 1``.

    ``state`` is the cumulative checksum after frame ``start - 1`` (the header's checksum
    when ``start`` is 1). Scanning ends at the first frame that is short, carries other
    salts, or breaks the checksum chain: that is the end of the WAL, not an error. Frames
    after the last commit frame are not part of a transaction and are not yielded.

    ``expect`` is how many frames the caller believes follow (from the wal-index): they
    are read in one go, then a single frame past them shows whether more follow. It only
    sizes the reads; validity is always the checksums'.
    """
    frame_size = header.frame_size
    s0, s1 = state
    pending: list[Frame] = []
    index = start
    scanned = 0
    # Without a hint, small reads first, growing: the frames after the end are often stale
    # ones of an earlier WAL, and reading (and summing) a whole chunk of them costs every poll.
    batch = min(16, chunk_frames)
    hinted = -1 if expect is None else expect  # frames still expected; 0: probe one frame past them
    while max_frames is None or scanned < max_frames:
        if hinted >= 0:
            want = min(hinted, chunk_frames) or 1
            hinted = hinted - want if hinted else -1
        else:
            want, batch = batch, min(batch * 2, chunk_frames)
        if max_frames is not None:
            want = min(want, max_frames - scanned)
        chunk = read_at(header.frame_offset(index), want * frame_size)
        if len(chunk) < frame_size:
            return
        valid, headers = _valid_prefix(chunk, header, (s0, s1))
        pgnos = headers[:valid, 0].tolist()
        commits = headers[:valid, 1].tolist()
        pending.extend(map(Frame, range(index, index + valid), pgnos, commits))
        cut = 0
        base = len(pending) - valid  # frames of an unfinished transaction from earlier chunks
        for i in np.flatnonzero(headers[:valid, 1]).tolist():
            upto = base + i + 1
            yield Transaction(tuple(pending[cut:upto]), commits[i], (int(headers[i, 4]), int(headers[i, 5])))
            cut = upto
        del pending[:cut]
        if valid:
            s0, s1 = int(headers[valid - 1, 4]), int(headers[valid - 1, 5])
        index += valid
        scanned += valid
        if valid < len(headers) or len(headers) < want:
            return


class FrameMismatch(Exception):
    """A frame read is not the one expected: another WAL's (other salts), or another page's."""


def read_page(read_at: ReadAt, header: WalHeader, index: int, pgno: int | None = None) -> bytes | memoryview:
    """Return the page stored in frame ``index``, after checking that the frame carries
    ``header``'s salts (and page number ``pgno`` if given): a WAL restarted since the frame
    was found would hold another frame there. Raises FrameMismatch when it does not."""
    off = header.frame_offset(index)
    data = memoryview(read_at(off, FRAME_HEADER_SIZE + header.page_size))
    if len(data) != FRAME_HEADER_SIZE + header.page_size:
        raise EOFError(f"WAL frame {index}: short read at offset {off}")
    if data[8:16] != struct.pack(">2I", header.salt1, header.salt2):
        raise FrameMismatch(f"WAL frame {index}: salts are not the WAL header's")
    if pgno is not None and struct.unpack_from(">I", data, 0)[0] != pgno:
        raise FrameMismatch(f"WAL frame {index}: holds page {struct.unpack_from('>I', data, 0)[0]}, not {pgno}")
    return data[FRAME_HEADER_SIZE:]
