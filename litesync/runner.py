"""The replication process: one agent thread per database, one shipper thread per replica,
a file watcher that wakes agents on WAL writes, and a clean shutdown that ships everything."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from .agent import DbAgent
from .compact import Maintainer
from .errors import LitesyncError
from .replica import open_replica
from .shipper import Shipper
from .spool import Name

if TYPE_CHECKING:
    from .config import Config, DbConfig

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0


class DbReplication:
    """One database: its agent, its shippers and the thread that drives them."""

    def __init__(self, cfg: "DbConfig", poll_interval: float = POLL_INTERVAL, wait_for_db: bool = False) -> None:
        self.cfg = cfg
        self.wait_for_db = wait_for_db
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
            self.started.set()
            return
        while not self.stop_event.is_set():
            self.agent.wake.wait(self.poll_interval)
            self.agent.wake.clear()
            if self.stop_event.is_set():
                break
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

    def stop(self, timeout: float) -> bool:
        """Stop after a final sync; wait up to ``timeout`` for every replica; True if all shipped."""
        self.stop_event.set()
        self.agent.wake.set()
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
    """Replicates every database of a configuration until stopped."""

    def __init__(self, config: "Config", poll_interval: float = POLL_INTERVAL, wait_for_db: bool = False) -> None:
        self.config = config
        self.dbs = [DbReplication(d, poll_interval, wait_for_db) for d in config.dbs]
        self._observer = None

    def start(self) -> None:
        self._start_watcher()
        for d in self.dbs:
            d.start()

    def wait_started(self, timeout: float | None = None) -> None:
        """Wait until every database took its first snapshot or resumed; raise its error if any."""
        for d in self.dbs:
            d.started.wait(timeout)
            if d.error is not None:
                raise d.error

    def _start_watcher(self) -> None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency
            log.warning("watchdog unavailable; polling every %.1fs", POLL_INTERVAL)
            return
        by_wal = {d.agent.wal_path: d.agent.wake for d in self.dbs}

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):  # noqa: ANN001
                wake = by_wal.get(event.src_path)
                if wake is not None:
                    wake.set()

        obs = Observer()
        for directory in {os.path.dirname(p) for p in by_wal}:
            os.makedirs(directory, exist_ok=True)
            obs.schedule(Handler(), directory, recursive=False)
        obs.daemon = True
        obs.start()
        self._observer = obs

    def fatal_errors(self) -> list[BaseException]:
        """Errors that make replication impossible as configured (startup or replica setup)."""
        out: list[BaseException] = [d.error for d in self.dbs if d.error is not None]
        out += [s.fatal for d in self.dbs for s in d.shippers if s.fatal is not None]
        return out

    def sync_all(self, timeout: float) -> bool:
        """Wait until every replica has everything in the spool; True on success."""
        deadline = time.monotonic() + timeout
        for d in self.dbs:
            for s in d.shippers:
                while s.pending() and time.monotonic() < deadline:
                    d.agent.spool.notify()
                    time.sleep(0.02)
                if s.pending():
                    return False
        return True

    def stop(self, timeout: float = 30.0) -> bool:
        """Final sync of every database, wait for shipping; True when everything was shipped."""
        ok = True
        for d in self.dbs:
            ok = d.stop(timeout) and ok
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        return ok
