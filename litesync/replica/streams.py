"""Readable streams the replica clients build on: a stream served from chunks made one at
a time (encryption, decryption, throttling), and reading a source to a given length."""

from __future__ import annotations

import io
from typing import BinaryIO


def read_full(f: BinaryIO, n: int) -> bytes:
    """Read ``n`` bytes from ``f``, fewer only where it ends (a raw stream may return less)."""
    parts = []
    got = 0
    while got < n:
        piece = f.read(n - got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class ChunkedReader(io.RawIOBase):
    """A readable stream whose bytes come from ``_chunk``, one chunk at a time: ``read(n)``
    returns ``n`` bytes, fewer only at the end, and asks for the next chunk only when the
    last one is used up (an empty chunk is skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = memoryview(b"")
        self._pos = 0

    def _chunk(self) -> bytes | memoryview | None:
        """The next chunk of the stream; None after the last."""
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        """Return ``n`` bytes (all that is left when ``n`` is negative); fewer only at the end."""
        want = -1 if n is None or n < 0 else n
        out = []
        while want != 0:
            if self._pos >= len(self._buf):
                chunk = self._chunk()
                if chunk is None:
                    break
                self._buf, self._pos = memoryview(chunk), 0
                continue
            take = len(self._buf) - self._pos if want < 0 else min(len(self._buf) - self._pos, want)
            out.append(self._buf[self._pos:self._pos + take])
            self._pos += take
            if want > 0:
                want -= take
        return b"".join(out)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)
