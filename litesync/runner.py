"""The replication process: one agent thread per database, one shipper thread per replica,
a file watcher that wakes agents on WAL writes, one thread per configured directory that
adds and removes its databases, and a clean shutdown that ships everything."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from .agent import DbAgent
from .compact import Maintainer
from .dirwatch import DirWatcher
from .errors import LitesyncError
from .replica import open_replica
from .shipper import Shipper
from .spool import Name

if TYPE_CHECKING:
    from .config import Config, DbConfig

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
STEP_INTERVAL = 0.01


class DbReplication:
    """One database: its agent, its shippers and the thread that drives them."""

    def __init__(self, cfg: "DbConfig", poll_interval: float = POLL_INTERVAL, wait_for_db: bool = False,
                 discovered: bool = False) -> None:
        self.cfg = cfg
        self.wait_for_db = wait_for_db
        # Found in a configured directory: its errors are its own, not the whole process's.
        self.discovered = discovered
        self.poll_interval = poll_interval
        self.agent = DbAgent(cfg.path, checkpoint_pages=cfg.checkpoint_pages,
                             snapshot_interval=cfg.snapshot_interval)
        self.shippers: list[Shipper] = []
        self.maintainers: list[Maintainer] = []
        for rc in cfg.replicas:
            client = open_replica(rc)
            state = os.path.join(self.agent.state_dir, "replicas", f"{rc.name}.json")
            shipper = Shipper(self.agent.spool, client, state, label=f"{cfg.path} -> {rc.name}",
                              request_snapshot=self.agent.snapshot_requested,
                              sync_interval=rc.sync_interval or 0.0, destination=rc.destination)
            self.shippers.append(shipper)
            self.maintainers.append(Maintainer(
                client, label=shipper.label, retention=cfg.retention, compaction=cfg.compaction,
                interval=cfg.retention_check_interval, work_dir=self.agent.state_dir,
                activity=lambda s=shipper: s.uploaded_objects))
        self.stop_event = threading.Event()
        self.started = threading.Event()
        self.waiting = threading.Event()  # for the database to be created
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"agent {cfg.path}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _open(self) -> bool:
        waited = False
        while self.wait_for_db and not os.path.exists(self.cfg.path):
            if not waited:
                log.info("%s: waiting for the database to be created", self.cfg.path)
                waited = True
                self.waiting.set()
            if self.stop_event.wait(0.2) and not os.path.exists(self.cfg.path):
                return False
        self.agent.open()
        self.agent.start()
        for s in self.shippers:
            s.start()
        for m in self.maintainers:
            m.start()
        self.started.set()
        return True

    def _run(self) -> None:
        try:
            if not self._open():
                return
        except BaseException as e:  # reported by the runner
            self.error = e
            if self.discovered:
                log.error("%s: cannot replicate: %s; skipped until the file changes", self.cfg.path, e)
            self.started.set()
            return
        last_step = 0.0
        while not self.stop_event.is_set():
            self.agent.wake.wait(self.poll_interval)
            # Commits that arrive close together ship together: a lone commit is copied at
            # once, a fast writer's commits in shipments at most STEP_INTERVAL apart, which
            # bounds the per-shipment work (files, fsyncs, uploads) it causes.
            pause = last_step + STEP_INTERVAL - time.monotonic()
            if pause > 0:
                self.stop_event.wait(pause)
            self.agent.wake.clear()
            if self.stop_event.is_set():
                break
            last_step = time.monotonic()
            try:
                self.agent.step()
                self.collect_garbage()
            except LitesyncError as e:
                log.error("%s: %s", self.cfg.path, e)
                self.stop_event.wait(1.0)
            except Exception:
                log.exception("%s: unexpected error; continuing", self.cfg.path)
                self.stop_event.wait(1.0)
        try:
            self.agent.sync()
        except Exception as e:
            log.error("%s: final sync failed: %s", self.cfg.path, e)
            self.error = e

    def collect_garbage(self) -> None:
        """Drop spool objects every replica has; bound the spool by dropping the oldest."""
        objs = self.agent.spool.objects()
        if len(objs) <= 1:
            return
        newest = objs[-1][0]
        drop: list[Name] = [n for n, _ in objs[:-1] if all(s.done_with(n) for s in self.shippers)]
        size = sum(s for _, s in objs) - sum(s for n, s in objs if n in drop)
        if size > self.cfg.spool_max_size:
            for n, s in objs:
                if size <= self.cfg.spool_max_size:
                    break
                if n is newest or n in drop:
                    continue
                drop.append(n)
                size -= s
            log.warning("%s: spool over %d bytes; dropped unshipped objects, lagging replicas get a new snapshot",
                        self.cfg.path, self.cfg.spool_max_size)
        self.agent.spool.delete(drop)

    def ready(self) -> bool:
        """True once replicating and every replica checked (see ``Shipper.checked``), or while
        waiting for the database to be created."""
        if not self.started.is_set():
            return self.waiting.is_set()
        return self.error is None and all(s.checked.is_set() for s in self.shippers)

    def request_stop(self) -> None:
        """Start the final sync without waiting for it."""
        self.stop_event.set()
        self.agent.wake.set()

    def stop(self, timeout: float) -> bool:
        """Stop after a final sync; wait up to ``timeout`` for every replica; True if all shipped."""
        self.request_stop()
        self.thread.join()
        deadline = time.monotonic() + timeout
        ok = True
        if self.started.is_set() and self.error is None:
            self.agent.spool.notify()
            for s in self.shippers:
                while s.is_alive() and s.fatal is None and s.pending() and time.monotonic() < deadline:
                    self.agent.spool.notify()
                    time.sleep(0.02)
                if s.fatal is not None:
                    ok = False
                elif s.pending():
                    log.error("%s: stopped before everything was shipped (last error: %s)", s.label, s.last_error)
                    ok = False
        for m in self.maintainers:
            m.stop()
        for s in self.shippers:
            s.stop()
        for m in self.maintainers:
            if m.is_alive():
                m.join(timeout=30)
        for s in self.shippers:
            if s.is_alive():
                s.join(timeout=5)
            s.client.close()
        try:
            self.agent.close()
        except Exception as e:  # closing must not hide the shipping verdict
            log.warning("%s: close: %s", self.cfg.path, e)
        return ok and self.error is None


class Runner:
    """Replicates every database of a configuration until stopped; databases found in
    configured directories come and go while it runs."""

    def __init__(self, config: "Config", poll_interval: float = POLL_INTERVAL, wait_for_db: bool = False) -> None:
        self.config = config
        self.poll_interval = poll_interval
        self._lock = threading.Lock()  # guards dbs and _wakes, which directory threads change
        # One directory scan at a time: two entries may find one file, and a scan opens a
        # file only while no other thread of this process can have started replicating it.
        self.scan_lock = threading.Lock()
        self.dbs = [DbReplication(d, poll_interval, wait_for_db) for d in config.dbs]
        self._wakes = {d.agent.wal_path: d.agent.wake for d in self.dbs}
        self.dirs = [DirWatcher(d, self, poll_interval) for d in config.dirs]
        self._observer = None
        self._handler = None
        self._watches: dict[str, tuple[object, int]] = {}  # directory -> (its watch, its inode)

    def start(self) -> None:
        self._start_watcher()
        for d in self.dbs:
            d.start()
        for w in self.dirs:
            w.scan()  # the databases already there start now, with the listed ones
            w.start()

    def databases(self) -> list[DbReplication]:
        """Return the databases being replicated now."""
        with self._lock:
            return list(self.dbs)

    def replicates(self, path: str) -> bool:
        """True when a database at ``path`` is being replicated (listed, or found in a directory)."""
        return any(d.cfg.path == path for d in self.databases())

    def add(self, cfg: "DbConfig") -> DbReplication:
        """Start replicating a database found in a directory; return it."""
        d = DbReplication(cfg, self.poll_interval, discovered=True)
        with self._lock:
            self.dbs.append(d)
            self._wakes[d.agent.wal_path] = d.agent.wake
        self.watch(os.path.dirname(cfg.path))
        d.start()
        return d

    def remove(self, d: DbReplication, timeout: float) -> bool:
        """Stop replicating one database (final sync, up to ``timeout`` for shipping); True if all shipped."""
        with self._lock:
            self.dbs.remove(d)
            self._wakes.pop(d.agent.wal_path, None)
        return d.stop(timeout)

    def wait_started(self, timeout: float | None = None) -> None:
        """Wait until every database took its first snapshot or resumed; raise its error if any."""
        for d in self.databases():
            d.started.wait(timeout)
            if d.error is not None and not d.discovered:
                raise d.error

    def ready(self) -> bool:
        """True once every database replicates (or waits to be created) and every replica was checked."""
        return all(d.ready() for d in self.databases() if not (d.discovered and d.error is not None))

    def _start_watcher(self) -> None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency
            log.warning("watchdog unavailable; polling every %.1fs", POLL_INTERVAL)
            return
        wakes, dirs = self._wakes, self.dirs

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):  # noqa: ANN001
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    wake = wakes.get(path)
                    if wake is not None:
                        wake.set()
                    elif path:
                        for w in dirs:
                            w.notice(path)

        self._handler = Handler()
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        for d in self.dbs:
            os.makedirs(os.path.dirname(d.agent.wal_path), exist_ok=True)
            self.watch(os.path.dirname(d.agent.wal_path))
        for w in self.dirs:
            os.makedirs(w.cfg.path, exist_ok=True)
            self.watch(w.cfg.path)

    def watch(self, directory: str) -> None:
        """Deliver the file-system events of ``directory`` (not of its subdirectories)."""
        # Never recursive: a recursive watch would follow every spool write of every state directory.
        try:
            inode = os.stat(directory).st_ino
        except OSError:
            return
        with self._lock:
            if self._observer is None:
                return
            old = self._watches.get(directory)
            if old is not None and old[1] == inode:
                return
            if old is not None:  # deleted and created again: the old watch died with it
                with contextlib.suppress(KeyError, OSError):
                    self._observer.unschedule(old[0])
            try:
                self._watches[directory] = (self._observer.schedule(self._handler, directory), inode)
            except OSError as e:
                log.warning("%s: cannot watch (%s); polling every %.1fs", directory, e, self.poll_interval)

    def fatal_errors(self) -> list[BaseException]:
        """Errors that make replication impossible as configured (startup or replica setup)."""
        dbs = self.databases()
        out: list[BaseException] = [d.error for d in dbs if d.error is not None and not d.discovered]
        out += [s.fatal for d in dbs for s in d.shippers if s.fatal is not None]
        return out

    def sync_all(self, timeout: float) -> bool:
        """Wait until every replica has everything in the spool; True on success."""
        deadline = time.monotonic() + timeout
        for d in self.databases():
            for s in d.shippers:
                while s.pending() and time.monotonic() < deadline:
                    d.agent.spool.notify()
                    time.sleep(0.02)
                if s.pending():
                    return False
        return True

    def stop(self, timeout: float = 30.0) -> bool:
        """Final sync of every database, wait for shipping; True when everything was shipped."""
        for w in self.dirs:
            w.stop()
        dbs = self.databases()
        for d in dbs:  # final syncs run side by side; shipping shares one deadline
            d.request_stop()
        deadline = time.monotonic() + timeout
        ok = True
        for d in dbs:
            ok = d.stop(max(0.0, deadline - time.monotonic())) and ok
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        return ok
