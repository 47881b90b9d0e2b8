"""Reading a restore's objects: a local cache of downloaded objects (``--cache-dir``) and a
prefetcher that downloads the next objects of a plan in parallel while one is applied.

Nothing here verifies an object: every reader (restore, follower) checks each object's
digest, header and chain link as it reads it, cached or not. A cached object that fails
those checks is discarded by the caller and downloaded again (``ObjectCache.discard``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, BinaryIO, Sequence

from .errors import LitesyncError, ReplicaError, TransientReplicaError
from .replica.base import ReplicaClient
from .replica.file import FileReplicaClient

log = logging.getLogger(__name__)

WORKERS = 4
AHEAD_BYTES = 64 << 20  # downloaded but not yet applied, at most
SPOOL_IN_MEMORY = 1 << 20  # a prefetched object larger than this waits on disk
_COPY_CHUNK = 1 << 20


def _copy(client: ReplicaClient, key: str, out: IO[bytes]) -> int:
    """Copy one object into ``out``; a failure mid-stream is a retryable replica error."""
    n = 0
    with client.open(key) as f:
        while True:
            try:
                chunk = f.read(_COPY_CHUNK)
            except LitesyncError:
                raise
            except Exception as e:  # a connection reset or timeout mid-object
                raise TransientReplicaError(client.name, f"read {key!r}: {type(e).__name__}") from e
            if not chunk:
                return n
            out.write(chunk)
            n += len(chunk)


class ObjectCache:
    """Objects downloaded from replicas, kept in a local directory under their key.

    Object names are immutable (a name is written once, with one content), so a key is a
    valid cache key across replicas of one database. Files appear atomically (temp file,
    rename); they are not fsynced, because nothing trusts them: a damaged one fails the
    reader's checks and is downloaded again.
    """

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as e:
            raise LitesyncError(f"cannot create cache directory: {self.directory}: {e.strerror}") from e
        self.downloads = 0
        self.hits = 0
        self._lock = threading.Lock()

    def path(self, key: str) -> str:
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid object key: {key!r}")
        return os.path.join(self.directory, *parts)

    def has(self, key: str) -> bool:
        return os.path.exists(self.path(key))

    def open(self, client: ReplicaClient, key: str) -> BinaryIO:
        """Return the cached copy of ``key``, downloading it first when it is not cached."""
        path = self.path(key)
        try:
            f = open(path, "rb")
            with self._lock:
                self.hits += 1
            return f
        except FileNotFoundError:
            pass
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".part")
        except OSError as e:
            raise LitesyncError(f"cannot write to cache directory: {directory}: {e.strerror}") from e
        try:
            with open(fd, "wb") as out:
                _copy(client, key, out)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        with self._lock:
            self.downloads += 1
        return open(path, "rb")

    def discard(self, key: str) -> None:
        """Forget a cached object (it failed its checks)."""
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            pass


class Fetcher:
    """Opens the objects of a plan, in plan order, while downloading the next few in a
    small thread pool (at most ``ahead_bytes`` waiting). Objects of a local directory
    replica are read in place; an object larger than ``ahead_bytes`` is streamed when its
    turn comes. With a cache, every object goes through the cache."""

    def __init__(self, client: ReplicaClient, objects: Sequence[tuple[str, int]], *,
                 cache: ObjectCache | None = None, workers: int = WORKERS, ahead_bytes: int = AHEAD_BYTES,
                 tmp_dir: str | None = None) -> None:
        self.client = client
        self.objects = list(objects)
        self.cache = cache
        self.ahead_bytes = ahead_bytes
        self.tmp_dir = tmp_dir
        self.cached: list[str] = []  # keys that were read from a cache entry made before this restore
        self._next = 0  # index of the next object to open
        self._scheduled = 0  # objects[:_scheduled] were considered for prefetching
        self._futures: dict[str, Future] = {}
        local = isinstance(client, FileReplicaClient) and cache is None
        self._pool = None if local else ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
        self._max_waiting = 2 * workers

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _download(self, key: str) -> BinaryIO:
        if self.cache is not None:
            return self.cache.open(self.client, key)
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=self.tmp_dir)
        try:
            _copy(self.client, key, spool)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        # A SpooledTemporaryFile is a binary file, but typeshed does not declare it a BinaryIO.
        return spool  # type: ignore[return-value]

    def _schedule(self) -> None:
        if self._pool is None:
            return
        waiting = sum(self.objects[i][1] for i in range(self._next, self._scheduled)
                      if self.objects[i][0] in self._futures)
        while self._scheduled < len(self.objects) and len(self._futures) < self._max_waiting:
            key, size = self.objects[self._scheduled]
            if size <= self.ahead_bytes:
                if self._futures and waiting + size > self.ahead_bytes:
                    break
                if self.cache is not None and self.cache.has(key):
                    self.cached.append(key)
                self._futures[key] = self._pool.submit(self._download, key)
                waiting += size
            self._scheduled += 1

    def open(self, key: str) -> BinaryIO:
        """Return a stream of ``key``, the next object of the plan."""
        if self._next >= len(self.objects) or self.objects[self._next][0] != key:
            raise ValueError(f"objects must be opened in plan order: {key!r}")
        self._next += 1
        self._scheduled = max(self._scheduled, self._next)
        future = self._futures.pop(key, None)
        self._schedule()
        if future is not None:
            return future.result()
        if self.cache is not None:
            if self.cache.has(key):
                self.cached.append(key)
            return self.cache.open(self.client, key)
        return self.client.open(key)

    def close(self) -> None:
        for future in self._futures.values():
            if not future.cancel():
                try:
                    future.result().close()
                except Exception:
                    pass
        self._futures.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def list_all(clients: Sequence[ReplicaClient], prefix: str) -> list[list | LitesyncError]:
    """List every replica at once; each entry is the listing or the error it gave."""

    def one(client: ReplicaClient):  # noqa: ANN202
        try:
            return list(client.list(prefix))
        except LitesyncError as e:
            return e
        except OSError as e:
            return ReplicaError(client.name, f"list: {e}")

    if len(clients) == 1:
        return [one(clients[0])]
    with ThreadPoolExecutor(max_workers=len(clients), thread_name_prefix="list") as pool:
        return list(pool.map(one, clients))
