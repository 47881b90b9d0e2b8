"""The replica-client interface: the small set of operations every backend implements."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Iterable, Iterator

if TYPE_CHECKING:
    from .resume import Deadline, RetryPolicy

# Every request to a store is bounded, so that a store that accepts connections and never
# answers shows as a failure within seconds (botocore's defaults wait 60 s, three times;
# b2sdk's wait 46 s to connect and 20 minutes for an API call's answer, up to five times).
# The read timeout bounds each wait for the store (an answer, the next bytes of a body),
# not a whole transfer; a large upload waits longer for its answer while the store
# assembles it.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0
# For a write of more than LARGE_WRITE bytes (and each part of a multipart upload): the
# answer comes once the store has every byte, and on a slow or shared link the bytes the
# kernel and the network buffered still drain for seconds after the last one was handed
# over (measured: three 8 MiB writes at once through a 1 MB/s link all timed out at 5 s,
# again at every retry).
LARGE_WRITE = 1 << 20
LARGE_READ_TIMEOUT = 30.0


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key relative to the replica root, and its size in bytes."""

    key: str
    size: int


class ReplicaClient(abc.ABC):
    """Storage for one replica. Keys are '/'-separated and relative to the replica root.

    Implementations raise ``ReplicaError`` (or ``TransientReplicaError`` when a retry can
    help, ``ObjectNotFoundError`` for a missing key); they never log secrets.
    """

    #: A description safe to print: the URL without credentials.
    name: str

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose key starts with ``prefix``, in ascending key order."""

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Return a stream of the object's bytes; the caller closes it."""

    @abc.abstractmethod
    def write(self, key: str, src: BinaryIO, size: int) -> None:
        """Store ``size`` bytes read from ``src`` under ``key`` atomically (all or nothing)."""

    @abc.abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete the objects (every version); keys that do not exist are ignored."""

    def write_file(self, key: str, path: str) -> int:
        """Store the local file ``path`` under ``key`` atomically; return its size. The
        caller never modifies the file afterwards, so a backend may share it, not copy it."""
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            self.write(key, f, size)
        return size

    def close(self) -> None:
        """Release connections and threads."""

    def set_retry(self, policy: "RetryPolicy") -> None:
        """Make reads and listings insist on a failing store as ``policy`` says (see
        resume.py). Backends whose requests cannot break mid-way ignore it."""

    def set_deadline(self, deadline: "Deadline | None") -> None:
        """Make every wait of reads and listings on the store end at ``deadline`` (see
        resume.py). Backends that never wait on a network ignore it."""

    def read(self, key: str) -> bytes:
        """Return the whole object."""
        with self.open(key) as f:
            return f.read()

    def write_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically."""
        import io

        self.write(key, io.BytesIO(data), len(data))
