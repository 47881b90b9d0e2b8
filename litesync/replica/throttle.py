"""A replica wrapper that limits the bytes per second uploaded and downloaded through it."""

from __future__ import annotations

import threading
import time
from typing import BinaryIO, Callable, Iterable, Iterator

from .base import ObjectInfo, ReplicaClient
from .streams import ChunkedReader

MIN_BURST = 64 << 10
BURST_SECONDS = 0.25


class RateLimiter:
    """A thread-safe token bucket: ``acquire(n)`` returns once ``n`` bytes fit the rate.

    Tokens accrue at ``bytes_per_second`` up to ``burst`` (a quarter second's worth, at least
    64 KiB). An acquire larger than what is in the bucket takes the bucket into debt and
    sleeps until the debt is paid, so concurrent callers queue behind each other and the
    total stays at the rate. The bucket starts empty: a transfer right after start runs at
    the rate from its first byte.
    """

    def __init__(self, bytes_per_second: float, *, burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if not bytes_per_second > 0:
            raise ValueError(f"invalid rate: {bytes_per_second!r} bytes per second (must be > 0)")
        if burst is not None and burst <= 0:
            raise ValueError(f"invalid burst: {burst!r} bytes (must be > 0)")
        self.rate = float(bytes_per_second)
        self.burst = burst if burst is not None else max(MIN_BURST, int(self.rate * BURST_SECONDS))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._last = clock()

    def acquire(self, n: int) -> float:
        """Take ``n`` tokens, sleeping as long as the rate requires; return the seconds slept."""
        if n <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        # Sleep outside the lock: the debt is already booked, so later callers wait for it too.
        if wait > 0:
            self._sleep(wait)
        return wait


class _ThrottledReader(ChunkedReader):
    """Reads from ``f`` in slices of at most one burst, paying the limiter for each slice."""

    def __init__(self, f: BinaryIO, limiter: RateLimiter, *, owns: bool) -> None:
        super().__init__()
        self._f = f
        self._limiter = limiter
        self._owns = owns

    def _chunk(self) -> bytes | None:
        piece = self._f.read(self._limiter.burst)
        if not piece:
            return None
        self._limiter.acquire(len(piece))
        return piece

    def close(self) -> None:
        if not self.closed and self._owns:
            self._f.close()
        super().close()


class ThrottledClient(ReplicaClient):
    """Wraps ``inner`` so that bytes uploaded and downloaded together stay within ``limiter``.

    Uploads are limited where the inner client reads its source, so the limit holds however
    the inner client sends (single request, S3 multipart, B2 large file). Downloads are
    limited where the caller reads the stream ``open`` returns.
    """

    def __init__(self, inner: ReplicaClient, limiter: RateLimiter) -> None:
        self.inner = inner
        self.name = inner.name
        self.limiter = limiter

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def open(self, key: str) -> BinaryIO:
        return _ThrottledReader(self.inner.open(key), self.limiter, owns=True)  # type: ignore[return-value]

    def write(self, key: str, src: BinaryIO, size: int) -> None:
        self.inner.write(key, _ThrottledReader(src, self.limiter, owns=False), size)  # type: ignore[arg-type]

    def delete(self, keys: Iterable[str]) -> None:
        self.inner.delete(keys)

    def set_retry(self, policy) -> None:  # noqa: ANN001
        self.inner.set_retry(policy)

    def set_deadline(self, deadline) -> None:  # noqa: ANN001
        self.inner.set_deadline(deadline)

    def close(self) -> None:
        self.inner.close()
