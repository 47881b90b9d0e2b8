"""The chunked stream base the encrypting, decrypting and throttled readers share."""

from __future__ import annotations

import io
import random

import pytest

from litesync.replica.streams import ChunkedReader, read_full


class Chunks(ChunkedReader):
    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__()
        self._chunks = list(chunks)
        self.asked = 0

    def _chunk(self) -> bytes | None:
        self.asked += 1
        return self._chunks.pop(0) if self._chunks else None


class Dribble(io.RawIOBase):
    """A raw stream that returns at most 3 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._f.read(3 if n < 0 else min(n, 3))


CHUNKS = [b"header", b"", b"0123456789", b"", b"", b"ab", b"tail-of-the-stream"]


@pytest.mark.parametrize("size", [1, 2, 5, 7, 16, 100, -1])
def test_reads_of_any_size_give_the_stream_in_order(size):
    r = Chunks(CHUNKS)
    out = []
    while piece := r.read(size):
        out.append(piece)
    assert b"".join(out) == b"".join(CHUNKS)
    if size > 0:  # n bytes each time, fewer only at the end
        assert all(len(p) == size for p in out[:-1]) and 0 < len(out[-1]) <= size
    assert r.read(5) == b"" and r.readall() == b""


def test_read_n_returns_n_until_the_end_and_asks_for_chunks_lazily():
    r = Chunks([b"abc", b"defgh"])
    assert r.read(2) == b"ab" and r.asked == 1
    assert r.read(4) == b"cdef" and r.asked == 2
    buf = bytearray(10)
    assert r.readinto(buf) == 2 and bytes(buf[:2]) == b"gh"
    assert r.readinto(buf) == 0


def test_read_full_reads_through_short_reads():
    data = random.Random(1).randbytes(1000)
    f = Dribble(data)
    assert read_full(f, 10) == data[:10]
    assert read_full(f, 2000) == data[10:]
    assert read_full(f, 5) == b""
