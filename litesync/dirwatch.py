"""Directory mode: the databases in a directory whose names match a pattern, picked up as
they appear (a file-system event or the periodic poll) and let go as they disappear."""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Callable

from .layout import is_state_dir

if TYPE_CHECKING:
    from .config import DirConfig
    from .runner import DbReplication, Runner

log = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
# How long a removed database may take to ship what it had committed.
REMOVED_DB_TIMEOUT = 10.0


def scan_directory(cfg: "DirConfig") -> tuple[list[str], list[str]]:
    """Return the files under ``cfg.path`` whose names ``cfg`` replicates (contents unchecked),
    and the directories looked in."""
    found, looked = [], []
    for root, dirs, files in os.walk(cfg.path):
        looked.append(root)
        dirs[:] = sorted(d for d in dirs if cfg.recursive and not is_state_dir(d))
        found += [p for p in (os.path.join(root, f) for f in sorted(files)) if cfg.matches(p)]
    return found, looked


def find_databases(cfg: "DirConfig") -> list[str]:
    """Return the files under ``cfg.path`` whose names ``cfg`` replicates (contents unchecked)."""
    return scan_directory(cfg)[0]


# Descriptors of replicated databases that a scan opened under another name (a race with
# a rename or a link): never closed, since closing one drops every SQLite lock this
# process holds on the file.
_parked: list[int] = []


def has_sqlite_header(path: str, replicated: Callable[[tuple[int, int]], bool] = lambda identity: False
                      ) -> bool | None:
    """Return whether the file starts with SQLite's header; None while it is empty (being
    created) or gone, or when it turns out to be a file ``replicated`` says is replicated."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    st = os.fstat(fd)
    if replicated((st.st_dev, st.st_ino)):
        _parked.append(fd)
        return None
    try:
        head = os.pread(fd, len(SQLITE_HEADER), 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if SQLITE_HEADER.startswith(head):
        return True if head == SQLITE_HEADER else None
    return False


def _identity(path: str) -> tuple[int, int, int, int] | None:
    """Return (device, inode, size, mtime) of the file, None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class DirWatcher(threading.Thread):
    """Keeps a runner replicating exactly the databases now in one configured directory."""

    def __init__(self, cfg: "DirConfig", runner: "Runner", interval: float) -> None:
        super().__init__(name=f"dir {cfg.path}", daemon=True)
        self.cfg = cfg
        self.runner = runner
        self.interval = interval
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        # path -> (its replication, the file's device and inode when it was found)
        self.active: dict[str, tuple["DbReplication", tuple[int, int]]] = {}
        # path -> the file's identity when it was passed over (not SQLite, or failed)
        self.passed: dict[str, tuple[int, int, int, int] | None] = {}
        self.aliases: set[str] = set()  # names of databases replicated under another name (logged once)

    def notice(self, path: str) -> None:
        """Hear of a file-system event; rescan when it concerns a database of this directory
        that may have come or gone. A write to one being replicated (its application's
        checkpoint) does not: a scan looks at every file, and a busy directory of thousands
        of databases would be rescanned at each commit. (One replaced by a rename is seen by
        the periodic scan.)"""
        if not self.cfg.matches(path):
            return
        if path in self.active and os.path.exists(path):
            return
        self.wake.set()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            if self.stop_event.is_set():
                break
            try:
                self.scan()
            except Exception:
                log.exception("%s: scanning the directory failed; will retry", self.cfg.path)

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        if self.is_alive():
            self.join()

    def scan(self) -> None:
        """Replicate new databases, stop for removed or replaced ones, drop those that failed."""
        with self.runner.scan_lock:
            self._scan()

    def _scan(self) -> None:
        paths, looked = scan_directory(self.cfg)
        for directory in looked[1:]:  # a database created in a subdirectory shows at once
            self.runner.watch(directory)
        found = {p: _identity(p) for p in paths}
        for path, (d, inode) in list(self.active.items()):
            now = found.get(path)
            # A file replaced under a running agent is taken up by the agent itself (a new
            # generation, see DbAgent.adopt_replacement): then it is the agent's file.
            if now is not None and d.agent.identity is not None and now[:2] == d.agent.identity:
                inode = d.agent.identity
                self.active[path] = (d, inode)
            if now is None or now[:2] != inode:
                log.info("%s: database removed or replaced; stopping its replication", path)
            elif d.error is not None:
                self.passed[path] = now  # logged by the replication itself
            else:
                continue
            del self.active[path]
            self.runner.remove(d, REMOVED_DB_TIMEOUT)
        names, identities = self.runner.replicated_files()
        for path, identity in found.items():
            if path in self.active or identity is None or self.passed.get(path) == identity:
                continue
            # Listed, found by another entry, or another name of one.
            if path in names or identity[:2] in identities:
                if path not in self.aliases:
                    self.aliases.add(path)
                    log.info("%s: another name of a database already replicated; skipped", path)
                continue
            # Only a file this process does not replicate may be opened here: closing a
            # descriptor of a database drops every SQLite lock the process holds on it.
            header = has_sqlite_header(path, identities.__contains__)
            if header is None:
                continue
            if not header:
                log.info("%s: not a SQLite database; skipped", path)
                self.passed[path] = identity
                continue
            self.passed.pop(path, None)
            db = self.cfg.database(path)
            log.info("%s: found in %s; replicating to %s", path, self.cfg.path,
                     ", ".join(r.name for r in db.replicas))
            self.active[path] = (self.runner.add(db), identity[:2])
            names.add(path)
            identities.add(identity[:2])
