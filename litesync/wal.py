"""SQLite WAL file format: header and frame parsing, cumulative checksums (pure).

Reference: sqlite.org/fileformat2.html, "WAL file format". Nothing here opens a file; a
caller passes bytes or a ``read_at(offset, size) -> bytes`` function.

The checksum runs over 32-bit words two at a time:  s0 += w[i] + s1;  s1 += w[i+1] + s0.
That is a linear recurrence, so the checksum of a frame is ``M^n·(s0, s1) + C·words`` for a
fixed 2x2 matrix ``M^n`` and fixed coefficient rows ``C``; numpy evaluates ``C·words`` for
many frames at once (uint64 arithmetic wraps modulo 2^64, which keeps the result exact
modulo 2^32).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator

import numpy as np

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
MAGIC_LE = 0x377F0682
MAGIC_BE = 0x377F0683
WAL_VERSION = 3007000
_MASK = 0xFFFFFFFF

ReadAt = Callable[[int, int], bytes]


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


@dataclass(frozen=True)
class Frame:
    """One valid frame: its 1-based index, page number and db size (non-zero on commit)."""

    index: int
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
    """Rows C0, C1 and matrix M^n with checksum(words, s) = M^n·s + (C0·words, C1·words)."""
    n_pairs = n_words // 2
    # powers[j] = M^j with M = [[1,1],[1,2]], modulo 2^32.
    powers = [(1, 0, 0, 1)]
    for _ in range(n_pairs):
        a, b, c, d = powers[-1]
        powers.append(((a + b) & _MASK, (a + 2 * b) & _MASK, (c + d) & _MASK, (c + 2 * d) & _MASK))
    c0 = np.empty(n_words, dtype=np.uint64)
    c1 = np.empty(n_words, dtype=np.uint64)
    for k in range(n_pairs):
        # Pair k contributes M^(n-1-k)·(a_k, a_k + b_k).
        p00, p01, p10, p11 = powers[n_pairs - 1 - k]
        c0[2 * k] = (p00 + p01) & _MASK
        c0[2 * k + 1] = p01
        c1[2 * k] = (p10 + p11) & _MASK
        c1[2 * k + 1] = p11
    return c0, c1, powers[n_pairs]


def _frame_sums(chunk: bytes, page_size: int, big_endian: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (frame headers as uint32 rows, C0·words, C1·words) for whole frames in ``chunk``."""
    frame_size = FRAME_HEADER_SIZE + page_size
    n = len(chunk) // frame_size
    raw = np.frombuffer(chunk, dtype=(">u4" if big_endian else "<u4"), count=n * frame_size // 4)
    raw = raw.reshape(n, frame_size // 4)
    # Checksummed words: the first 8 bytes of the frame header, then the page.
    words = np.concatenate((raw[:, :2], raw[:, 6:]), axis=1).astype(np.uint64)
    c0, c1, _ = _coefficients(words.shape[1])
    headers = np.frombuffer(chunk, dtype=">u4", count=n * frame_size // 4).reshape(n, frame_size // 4)[:, :6]
    return headers, words @ c0, words @ c1


def scan(read_at: ReadAt, header: WalHeader, start: int, state: tuple[int, int],
         chunk_frames: int = 256, max_frames: int | None = None) -> Iterator[Transaction]:
    """Yield the committed transactions that follow frame ``start - 1``.

    ``state`` is the cumulative checksum after frame ``start - 1`` (the header's checksum
    when ``start`` is 1). Scanning ends at the first frame that is short, carries other
    salts, or breaks the checksum chain: that is the end of the WAL, not an error. Frames
    after the last commit frame are not part of a transaction and are not yielded.
    """
    page_size = header.page_size
    frame_size = header.frame_size
    _, _, mn = _coefficients(2 + page_size // 4)
    m00, m01, m10, m11 = mn
    s0, s1 = state
    pending: list[Frame] = []
    index = start
    scanned = 0
    # Small reads first, growing: the frames after the end are often stale ones of an
    # earlier WAL, and reading (and summing) a whole chunk of them costs every poll.
    batch = min(16, chunk_frames)
    while max_frames is None or scanned < max_frames:
        want = batch if max_frames is None else min(batch, max_frames - scanned)
        batch = min(batch * 2, chunk_frames)
        chunk = read_at(header.frame_offset(index), want * frame_size)
        if len(chunk) < frame_size:
            return
        headers, sums0, sums1 = _frame_sums(chunk, page_size, header.big_endian)
        for i in range(len(headers)):
            pgno, commit, salt1, salt2, ck1, ck2 = (int(x) for x in headers[i])
            if salt1 != header.salt1 or salt2 != header.salt2 or pgno == 0:
                return
            n0 = (m00 * s0 + m01 * s1 + int(sums0[i])) & _MASK
            n1 = (m10 * s0 + m11 * s1 + int(sums1[i])) & _MASK
            if (n0, n1) != (ck1, ck2):
                return
            s0, s1 = n0, n1
            pending.append(Frame(index, pgno, commit))
            index += 1
            scanned += 1
            if commit:
                yield Transaction(tuple(pending), commit, (s0, s1))
                pending = []
        if len(headers) < want:
            return


def read_page(read_at: ReadAt, header: WalHeader, index: int) -> bytes:
    """Return the page stored in frame ``index``."""
    off = header.frame_offset(index) + FRAME_HEADER_SIZE
    data = read_at(off, header.page_size)
    if len(data) != header.page_size:
        raise EOFError(f"WAL frame {index}: short read at offset {off}")
    return data
