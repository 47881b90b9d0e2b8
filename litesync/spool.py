"""The local spool: sealed, fsynced objects waiting to be shipped, named as on a replica.

A published object never changes: a file replica on the same file system hard-links it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import BinaryIO, Callable

from . import layout
from .fsutil import no_room
from .replica.file import FileReplicaClient, makedirs_private, publish_temp, temp_file

Name = layout.SnapshotName | layout.SegmentName


def sort_key(name: Name) -> tuple[int, int, int]:
    """Order of objects: by generation, then sequence; a snapshot before the segment at its seq."""
    if isinstance(name, layout.SnapshotName):
        return (name.generation, name.seq, 0)
    return (name.generation, name.first_seq, 1)


def over_bound(objects: list[tuple[Name, int]], shipped: Callable[[Name], bool],
               limit: int) -> tuple[list[Name], list[Name], int]:
    """What to delete from a spool holding ``objects`` (pure, in shipping order): the
    objects every replica has (``shipped``), the unshipped ones the bound drops, and the
    bytes the bound counts after that.

    The bound is on copied WAL waiting to be shipped: past ``limit`` bytes, unshipped
    objects go, the oldest first, and the replicas behind them go on from a snapshot. The
    newest snapshot is neither counted nor dropped, whatever its size: it is the bridge a
    replica behind the dropped objects ships next (dropping it would leave that replica
    waiting for another, whose turn would drop it again). The newest object always stays:
    the agent resumes from it.
    """
    if len(objects) <= 1:
        return [], [], 0
    newest = objects[-1][0]
    done = [n for n, _ in objects[:-1] if shipped(n)]
    gone = set(done)
    waiting = [(n, s) for n, s in objects if n not in gone]
    bridge = max((n for n, _ in waiting if isinstance(n, layout.SnapshotName)), key=sort_key, default=None)
    size = sum(s for n, s in waiting if n != bridge)
    dropped: list[Name] = []
    for n, s in waiting:
        if size <= limit:
            break
        if n == newest or n == bridge:
            continue
        dropped.append(n)
        size -= s
    return done, dropped, size


class Spool:
    """A directory of objects plus an in-memory index that shippers wait on."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.client = FileReplicaClient(root, name=f"spool {root}")
        self.changed = threading.Condition()
        self._listeners: list[Callable[[], None]] = []  # called after every change (shippers' wakes)
        self._objects: dict[Name, int] = {}
        self.snapshots_published = 0  # by this process, whether still here or dropped since
        try:
            makedirs_private(root)
        except OSError as e:
            if not no_room(e):
                raise
            # A full disk: the first object written makes it (see temp_file), once there is room.
        for info in self.client.list(""):
            name = layout.parse_key(info.key)
            if name is not None:
                self._objects[name] = info.size
        self._remove_temp_files()

    def _remove_temp_files(self) -> None:
        for dirpath, _dirs, files in os.walk(self.root):
            for fn in files:
                if fn.endswith(".tmp"):
                    os.unlink(os.path.join(dirpath, fn))

    def path(self, name: Name) -> str:
        return os.path.join(self.root, *name.key.split("/"))

    def writing(self, name: Name) -> contextlib.AbstractContextManager[BinaryIO]:
        """A temp file for ``name``, fsynced on success; it becomes visible on ``publish``."""
        return temp_file(self.path(name))

    def publish(self, name: Name) -> None:
        """Rename the written temp file into place, durably, and wake the shippers."""
        path = self.path(name)
        publish_temp(path)
        size = os.stat(path).st_size
        with self.changed:
            self._objects[name] = size
            if isinstance(name, layout.SnapshotName):
                self.snapshots_published += 1
            self.changed.notify_all()
        self._tell()

    def discard(self, name: Name) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(name) + ".tmp")

    def objects(self) -> list[tuple[Name, int]]:
        """Return (name, size) of every object, in shipping order."""
        with self.changed:
            items = list(self._objects.items())
        items.sort(key=lambda kv: sort_key(kv[0]))
        return items

    def size(self) -> int:
        with self.changed:
            return sum(self._objects.values())

    def last_object(self) -> tuple[Name, str] | None:
        """Return the newest object of the newest generation and its path."""
        objs = self.objects()
        if not objs:
            return None
        newest_gen = objs[-1][0].generation
        # The last one in shipping order, but a segment wins over a snapshot at the same seq.
        name = objs[-1][0]
        assert name.generation == newest_gen
        return name, self.path(name)

    def last_snapshot_time(self, generation: int) -> float | None:
        times = [n.created_ms for n, _ in self.objects()
                 if isinstance(n, layout.SnapshotName) and n.generation == generation]
        return max(times) / 1000 if times else None

    def delete(self, names: list[Name]) -> None:
        if not names:
            return
        # Not fsynced: an object that comes back after a machine crash is shipped again or dropped.
        self.client.delete([n.key for n in names], durable=False)
        with self.changed:
            for n in names:
                self._objects.pop(n, None)
            self.changed.notify_all()
        self._tell()

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()
        self._tell()

    def listen(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` after every change (and ``notify``)."""
        with self.changed:
            self._listeners.append(fn)

    def unlisten(self, fn: Callable[[], None]) -> None:
        with self.changed:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def _tell(self) -> None:
        with self.changed:
            listeners = list(self._listeners)
        for fn in listeners:
            fn()
