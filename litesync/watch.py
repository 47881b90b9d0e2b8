"""File-change notices from Linux inotify, read in bulk.

watchdog reads every inotify event as it comes and turns each into Python objects: under
a writer committing thousands of times a second that cost the agent a quarter of its CPU
(measured with scripts/bench.py's load workload). This observer reads whatever events are
queued in one call, hands each changed path to the handler once, then pauses a few
milliseconds; meanwhile the kernel folds repeated writes to one file into one queued
event. It offers the part of watchdog's ``Observer`` the runner uses (``schedule``,
``unschedule``, ``start``, ``stop``, ``join``) and is used where inotify exists.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import struct
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000  # the kernel's queue overflowed: events were lost
IN_IGNORED = 0x8000
_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_NONBLOCK = os.O_NONBLOCK
_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, name length
_READ_SIZE = 1 << 16
PAUSE = 0.005  # after each read: lets repeated writes fold into one event


@dataclass(frozen=True)
class Change:
    """What the handler receives: the path of a changed file (like a watchdog event)."""

    src_path: str


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1
        return libc
    except (OSError, AttributeError):
        return None


def available() -> bool:
    """True where inotify can be used (Linux)."""
    return _libc() is not None


def parse_events(data: bytes) -> list[tuple[int, int, str]]:
    """Return (watch descriptor, mask, name) of each event in a buffer read from inotify (pure)."""
    out = []
    pos = 0
    while pos + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
        name = data[pos + _EVENT.size:pos + _EVENT.size + length].split(b"\0", 1)[0]
        out.append((wd, mask, os.fsdecode(name)))
        pos += _EVENT.size + length
    return out


class InotifyObserver(threading.Thread):
    """Delivers the changed files of watched directories (not of their subdirectories)."""

    def __init__(self, pause: float = PAUSE) -> None:
        super().__init__(name="inotify", daemon=True)
        libc = _libc()
        if libc is None:
            raise OSError("inotify is not available")
        self._libc = libc
        self.fd = libc.inotify_init1(_NONBLOCK | _CLOEXEC)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.pause = pause
        self._lock = threading.Lock()
        self._watches: dict[int, tuple[str, object]] = {}  # wd -> (directory, handler)
        self._stopping = threading.Event()

    def schedule(self, handler: object, path: str, recursive: bool = False) -> int:
        """Watch ``path`` (a directory); return the watch to ``unschedule`` later."""
        if recursive:
            raise ValueError("recursive watches are not supported")
        with self._lock:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), _MASK)
            if wd < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"inotify watch {path}: {os.strerror(err)}")
            self._watches[wd] = (path, handler)
        return wd

    def unschedule(self, wd: int) -> None:
        with self._lock:
            if self._watches.pop(wd, None) is not None:
                self._libc.inotify_rm_watch(self.fd, wd)

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                ready, _, _ = select.select([self.fd], [], [], 0.5)
                if not ready:
                    continue
                changed: dict[tuple[int, str], None] = {}  # in order, each once
                overflow = False
                try:
                    while True:
                        for wd, mask, name in parse_events(os.read(self.fd, _READ_SIZE)):
                            if mask & IN_Q_OVERFLOW:
                                overflow = True
                            elif mask & IN_IGNORED:
                                with self._lock:
                                    self._watches.pop(wd, None)  # the directory is gone
                            elif name:
                                changed[(wd, name)] = None
                except BlockingIOError:
                    pass
                for wd, name in changed:
                    with self._lock:
                        watch = self._watches.get(wd)
                    if watch is not None:
                        directory, handler = watch
                        handler.on_any_event(Change(os.path.join(directory, name)))  # type: ignore[attr-defined]
                if overflow:
                    # Any file may have changed unseen: every handler looks at all of its files.
                    with self._lock:
                        handlers = {id(h): h for _d, h in self._watches.values()}
                    log.warning("inotify queue overflowed: looking at every watched file")
                    for h in handlers.values():
                        if hasattr(h, "on_overflow"):
                            h.on_overflow()
                self._stopping.wait(self.pause)
        except Exception:  # the runner polls as well: log and let it carry on
            log.exception("inotify watcher stopped; polling only")

    def stop(self) -> None:
        self._stopping.set()

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if not self.is_alive() and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
