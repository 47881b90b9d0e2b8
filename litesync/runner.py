"""The replication process: one agent thread per database; the shippers and maintainers of
every replica as tasks of one scheduler (engine.py) on a few threads; a file watcher that
wakes agents on WAL writes, one thread per configured directory that adds and removes its
databases, and a clean shutdown that ships everything."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import logging
import os
import resource
import threading
import time
from typing import TYPE_CHECKING, Callable

import apsw

from . import layout, status
from .agent import DbAgent, WriteLockBusy
from .compact import Maintainer
from .dirwatch import DirWatcher
from .engine import FATAL_CHANGES, Loop, Scheduler, Task
from .errors import DatabaseError, LitesyncError
from .fsutil import free_space, no_room, same_file_system
from .logs import Labelled
from .replica import open_replica
from .replica.registry import BACKENDS
from .progress import format_size, plural
from .shipper import Shipper, unshipped
from .spool import over_bound
from .validation import Validator

if TYPE_CHECKING:
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers.api import BaseObserver

    from .config import Config, DbConfig, ReplicaConfig
    from .metrics import MetricsServer
    from .replica.base import ReplicaClient
    from .watch import InotifyObserver

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
STEP_INTERVAL = 0.025
RECHECK_FIRST = 0.001
# The process's heartbeat (see status.ProcessControl) is touched this often; readers take
# one older than status.STALE_AFTER for a dead agent's. A status file is rewritten when
# something changed, or when a reader asks.
PUBLISH_INTERVAL = 3.0
PUBLISH_TICK = 0.25  # and this soon after a change
JOIN_TIMEOUT = 5.0  # how long a stopping database waits for its shippers' and maintainers' turns
LOCK_RETRY = 0.5  # a database whose application holds the write lock at start is tried again this soon
# A database that has been idle this many polls is looked at only every IDLE_POLL seconds:
# its file events (and the requests of its shippers) wake it at once, the poll is a fallback.
# Where inotify watches the directory, every commit is an event: the poll is a rare
# safety net (WATCHED_IDLE_POLL), and so is the periodic rescan of a configured directory.
IDLE_AFTER = 10
IDLE_POLL = 5.0
WATCHED_IDLE_POLL = 30.0
FATAL_CHECK = 0.5
# The scheduler's pools (see engine.py). Copying frames is CPU and local disk, but a turn
# may wait for an application's write lock (a seal, up to SEAL_TIMEOUT_MS): a few threads
# per core. Opening a database may wait for the lock much longer (a migration): opens have
# a pool of their own, so the databases already running never queue behind them. Uploads
# and compaction wait on the network: each store (a lane) runs at most LANE_LIMIT turns at
# once, so a store that hangs every request holds that many workers, never all of them.
AGENT_WORKERS = max(8, 2 * (os.cpu_count() or 2) + 4)
OPEN_WORKERS = 4
LANE_LIMIT = 4
SHIP_WORKERS = 16
MAINTAIN_WORKERS = 4
# Open databases (see OpenBudget). A database with connections holds up to this many
# descriptors: R and W (database file and WAL each), SQLite's -shm and the agent's, the
# agent's WAL reader, and a spare; every database holds its agent lock's besides.
FDS_PER_OPEN = 8
FDS_RESERVED = 256  # spool files being written, sockets, the watcher, the process's own
MIN_OPEN = 8
OPEN_RETRY = 0.25  # a database waiting for a free slot to open looks again this soon
SLOT_WAIT_WARNING = 30.0  # and says so once when it waited this long
# Under descriptor pressure a database idle this long is parked: its connections close
# (see DbAgent.park). A parked database is looked at (a stat of its files) on its file
# events, and every PARKED_POLL seconds where inotify watches it (else at its idle poll).
PARK_AFTER = 1.0
PARK_AFTER_WHEN_WAITED_FOR = 0.1
# Without that pressure, an agent holding more than FLEET_OPEN open databases parks one
# idle this long: memory follows the work, not the number of databases (an open database
# costs about 260 KiB, mostly SQLite's page caches; a parked one about 40 KiB).
FLEET_OPEN = 64
PARK_IDLE_AFTER = 30.0
# Only a database this small parks so: parked, it pins no WAL, and an app that closes its
# last connection (or checkpoints in full) makes its next unpark read the whole database.
PARK_IDLE_MAX_BYTES = 64 << 20
PARKED_POLL = 60.0
# A turn refused for lack of room (see DbReplication._no_room) is tried again as soon as
# space is freed on the spool's file system, looked at every NO_ROOM_POLL seconds, and
# every NO_ROOM_RETRY seconds whatever the file system says (a quota is not in statvfs).
NO_ROOM_POLL = 1.0
NO_ROOM_RETRY = 30.0


class OpenBudget:
    """How many databases may hold connections at once: what the descriptor limit allows
    (raised to its hard limit at start), or ``max_open``. A database over the budget waits
    to open until an idle one parks; one that is parked reopens at once on a commit (the
    budget is soft there), so a burst over many databases is never held back."""

    def __init__(self, max_open: int | None = None) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (ValueError, OSError) as e:
                log.debug("descriptor limit left at %d: %s", soft, e)
        self.fd_limit = soft
        self.max_open = max_open
        self._lock = threading.Lock()
        self.open = 0  # databases holding connections
        self.members = 0  # databases replicated (each holds its lock's descriptor)
        self.waiting = 0  # databases waiting for a slot to open
        self._warned = False

    @property
    def capacity(self) -> int:
        if self.max_open is not None:
            return self.max_open
        by_fds = (self.fd_limit - FDS_RESERVED - self.members) // FDS_PER_OPEN
        if by_fds < MIN_OPEN and not self._warned:
            self._warned = True
            log.error("the descriptor limit (%d) leaves room for %d open databases of %d; "
                      "replication is slow to start and to follow commits: raise it (ulimit -n, "
                      "LimitNOFILE= in a systemd unit)", self.fd_limit, max(by_fds, 0), self.members)
        return max(MIN_OPEN, by_fds)

    def join(self) -> None:
        with self._lock:
            self.members += 1

    def leave(self) -> None:
        with self._lock:
            self.members -= 1

    def try_open(self, waited: bool) -> bool:
        """Take a slot for a database to open; False (counted as waiting) when none is free.
        ``waited``: this database was counted as waiting already."""
        with self._lock:
            if self.open < self.capacity:
                self.open += 1
                self.waiting -= waited
                return True
            self.waiting += not waited
            return False

    def reopen(self) -> None:
        """Take a slot for a parked database that has work, over the budget if need be."""
        with self._lock:
            self.open += 1

    def release(self, waited: bool = False) -> None:
        """Give back a slot (a database parked or stopped), or stop waiting for one."""
        with self._lock:
            if waited:
                self.waiting -= 1
            else:
                self.open -= 1

    def pressure(self) -> bool:
        """True when idle databases should park: others wait, or more are open than fit."""
        return self.waiting > 0 or self.open > self.capacity


_libc: ctypes.CDLL | None = None
_trimmed_at = 0.0
_trim_lock = threading.Lock()


def _c_library() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _libc = ctypes.CDLL(None)
    return _libc


LARGE_ALLOCATION = 256 << 10  # allocations from this size get pages of their own (see tune_malloc)


def tune_malloc(arenas: int = 2) -> None:
    """Let glibc keep at most ``arenas`` malloc arenas (its default: 8 per core): each
    thread's freed memory stays in its arena, and with forty threads the agent's RSS
    climbed in a soak. And give every allocation of LARGE_ALLOCATION or more pages of its
    own, returned when freed: by default glibc raises that threshold to the size of each
    large block freed (up to 32 MiB), after which the WAL reads, snapshot pages and
    downloads of megabytes land in the heap between longer-lived objects and leave it
    fragmented (six-minute soaks, same settings: 80 -> 118 MiB by default, 77 -> 101 MiB
    with the threshold fixed). Call before threads start."""
    mallopt = getattr(_c_library(), "mallopt", None)  # glibc only
    if mallopt is not None:
        mallopt(-8, arenas)  # M_ARENA_MAX
        mallopt(-3, LARGE_ALLOCATION)  # M_MMAP_THRESHOLD, which also ends its dynamic raising


def trim_heap() -> None:
    """Give the memory freed since back to the system, at most once a second: glibc keeps
    freed pages in the middle of its heap, so closed connections, and the buffers of
    copies, uploads and snapshots, would otherwise leave the agent's RSS at its peak.
    Called every few seconds (the status publisher) and at each park."""
    global _trimmed_at
    with _trim_lock:
        if time.monotonic() - _trimmed_at < 1.0:
            return
        _trimmed_at = time.monotonic()
        trim = getattr(_c_library(), "malloc_trim", None)  # glibc only
        if trim is not None:
            trim(0)


def new_scheduler() -> Scheduler:
    return Scheduler({"agent": AGENT_WORKERS, "open": OPEN_WORKERS, "ship": (SHIP_WORKERS, LANE_LIMIT),
                      "maintain": (MAINTAIN_WORKERS, LANE_LIMIT // 2)})


def store_lane(rc: "ReplicaConfig") -> str:
    """The lane of a replica's tasks: the store it talks to (not its path within)."""
    return "file" if rc.type == "file" else f"{rc.type}:{rc.endpoint or ''}:{rc.bucket or ''}"


class DbReplication:
    """One database: its agent, its shippers and the thread that drives them."""

    def __init__(self, cfg: "DbConfig", poll_interval: float = POLL_INTERVAL, wait_for_db: bool = False,
                 discovered: bool = False, scheduler: Scheduler | None = None,
                 budget: OpenBudget | None = None) -> None:
        self.cfg = cfg
        self.scheduler = scheduler  # None: the shippers and maintainers run on threads of their own
        self.budget = budget  # None: the database stays open (never parks)
        self._slot: str | None = None  # "open" while it holds a slot of the budget, "waiting" while it waits
        self._waiting_since = 0.0
        self._slot_warned = False
        self._active_at = 0.0  # monotonic time of its last copy (or its reopening)
        self.wait_for_db = wait_for_db
        # Found in a configured directory: its errors are its own, not the whole process's.
        self.discovered = discovered
        self.poll_interval = poll_interval
        self.log = Labelled(log, cfg.path)
        self.agent = DbAgent(cfg.path, checkpoint_pages=cfg.checkpoint_pages, max_wal_size=cfg.max_wal_size,
                             snapshot_interval=cfg.snapshot_interval, db_id=cfg.id or None)
        self.shippers: list[Shipper] = []
        self.maintainers: list[Maintainer] = []
        self._error: BaseException | None = None
        # The agent lock first: a second agent on this database stops before it reads (or
        # says anything about) the first one's state.
        if wait_for_db or os.path.exists(cfg.path):
            try:
                self.agent.lock()
            except LitesyncError as e:
                self.error = e  # reported by the first turn
            except OSError as e:
                if not no_room(e):
                    self.error = LitesyncError(self._os_error_line(e))
                # Else the first turn takes the lock once there is room (DbAgent.open).
        for rc in cfg.replicas if self.error is None else ():
            client = open_replica(rc)
            state = os.path.join(self.agent.state_dir, "replicas", f"{rc.name}.json")
            shipper = Shipper(self.agent.spool, client, state, db=cfg.path, replica=rc.name,
                              request_snapshot=self.agent.snapshot_requested,
                              sync_interval=rc.sync_interval if rc.sync_interval is not None
                              else BACKENDS[rc.type].default_sync_interval, destination=rc.destination,
                              newer_generation=self.agent.note_generation, db_id=self.agent.db_id)
            self.shippers.append(shipper)
            maintainer = self._maintainer(cfg, rc, client, shipper)
            shipper.after_upload = maintainer.wake
            self.maintainers.append(maintainer)
        self.stop_event = threading.Event()
        self.started = threading.Event()
        self.waiting = threading.Event()  # for the database to be created
        self._task: Task | Loop | None = None
        self._phase = "open"  # then "run", then "done"
        self._finished = threading.Event()
        self._last_step = 0.0
        self._copied = 0
        # Why the last turn failed, until one succeeds: status failed; a repeat is logged at debug.
        self.turn_error: str | None = None
        self._recheck = 0.0  # > 0 while a commit seems in flight: look again this soon
        self._lock_waited = False
        self._spool_over = False  # the spool bound dropped objects, and the replicas are not back under it
        self.spool_dropped = 0  # unshipped objects the spool bound dropped
        self._idle_turns = 0
        self.idle_poll = IDLE_POLL  # WATCHED_IDLE_POLL once its directory is watched (see Runner.watch)
        self._retry_at = 0.0  # monotonic time before which a turn after an error does nothing
        # After a turn refused for lack of room: the spool's free (bytes, inodes) then.
        self._room_at_failure: tuple[int, int] | None = None
        self._room_before_try: tuple[int, int] | None = None  # the free space looked at before a retry
        self._room_recheck = False  # one more try due whatever the disk says (see _no_room)
        self._room_since = self._room_tried = 0.0  # monotonic times of the first and last such failure
        self._room_dir = ""  # the directory whose file system lacked room
        self._outbid_error: str | None = None  # why the stop could not write the generation after a replica's
        self.room_error: str | None = None  # ``<where>: <why>`` while waiting for room (see _no_room)
        self.started_at = time.time()
        self.stopping = self.stopped = False
        self._published_at: float | None = None
        self._mark: tuple | None = None
        self._dirty = True  # a turn ran since the status was last looked at (see _touch)
        self.on_touch: Callable[[DbReplication], None] | None = None  # told of each _touch (the runner's publisher)
        self.status_wanted = False  # a reader asked for a fresh status (see status.ask_fresh)
        self.control: str | None = None  # the process's control directory (see status.ProcessControl)
        self._publish_lock = threading.Lock()
        self._status_error: str | None = None  # why the status file could not be written last (said once)
        self.validator = Validator(cfg.path, self.agent, self.shippers, interval=cfg.validation_interval,
                                   db_id=cfg.id or None, started=self.started, stop_event=self.stop_event,
                                   failed=lambda: self.error is not None, touch=self._touch)

    @property
    def error(self) -> BaseException | None:
        """What stopped this database (its open, or a turn), if anything."""
        return self._error

    @error.setter
    def error(self, e: BaseException | None) -> None:
        self._error = e
        FATAL_CHANGES.note()

    def _maintainer(self, cfg: "DbConfig", rc: "ReplicaConfig", client: "ReplicaClient",
                    shipper: Shipper) -> Maintainer:
        """The maintainer of one replica, which asks ``shipper`` about its uploads."""
        return Maintainer(
            client, db=cfg.path, replica=rc.name, retention=cfg.retention, compaction=cfg.compaction,
            interval=cfg.retention_check_interval, work_dir=self.agent.state_dir,
            activity=lambda: shipper.uploaded_objects,
            written=lambda key: key in shipper.uploaded_snapshots,
            current_generation=lambda: shipper.pos.generation, db_id=self.agent.db_id)

    def start(self) -> None:
        if self.budget is not None:
            self.budget.join()
        if self.scheduler is None:
            self._set_task(Loop(self._turn, f"agent {self.cfg.path}").start())
        else:
            self._set_task(self.scheduler.task(self._turn, "open", f"open {self.cfg.path}"))
        self.validator.start()

    def _set_task(self, task: "Task | Loop") -> None:
        self._task = task
        self.agent.wake.on_set = task.wake  # file events, stops, a replica's newer generation
        self.agent.snapshot_requested.on_set = task.wake  # a replica needs a snapshot

    def _touching(self, step: "Callable[[], float | None]") -> "Callable[[], float | None]":
        """``step``, marking the status as possibly changed after each turn."""
        def turn() -> float | None:
            try:
                return step()
            finally:
                self._touch()
        return turn

    def _touch(self) -> None:
        """Mark the status as possibly changed: the publisher looks at this database next."""
        self._dirty = True
        if self.on_touch is not None:
            self.on_touch(self)

    def _turn(self) -> float | None:
        """One turn of this database's work (see engine.py): open it, then copy what was
        committed, then the final sync. Return the delay before the next turn."""
        self._touch()
        if self._phase == "open":
            return self._open_turn()
        if self._phase == "run":
            return self._run_turn()
        return None

    def _finish(self) -> None:
        self._phase = "done"
        self._task.cancel()  # type: ignore[union-attr]
        self._finished.set()

    def _open_turn(self) -> float | None:
        self._collect_while_waiting_for_room()
        room_wait = self._waiting_for_room()
        if room_wait is not None and not self.stop_event.is_set():
            return room_wait
        try:
            if self.error is not None:
                raise self.error  # the agent lock, taken in __init__
            if self.wait_for_db:
                self.agent.lock()  # so that `litesync status` sees an agent waiting for the database
                if not os.path.exists(self.cfg.path):
                    if self.stop_event.is_set():
                        self._finish()
                        return None
                    if not self.waiting.is_set():
                        self.log.info("waiting for the database to be created")
                        self.waiting.set()
                    return 0.2
            if not self.agent.is_open:
                if not self._take_slot():
                    if self.stop_event.is_set():  # nothing was copied: nothing to sync
                        self._give_slot()
                        self._finish()
                        return None
                    self._waiting_since = self._waiting_since or time.monotonic()
                    if time.monotonic() - self._waiting_since > SLOT_WAIT_WARNING and not self._slot_warned:
                        self._slot_warned = True
                        self.log.warning("waiting %.0fs for one of the %d open databases to park (go idle); "
                                         "raise the descriptor limit to open more at once",
                                         SLOT_WAIT_WARNING, self.budget.capacity)  # type: ignore[union-attr]
                    return OPEN_RETRY
                self.agent.open()
            try:
                self.agent.start_once()
            except WriteLockBusy:
                if self.stop_event.is_set():
                    raise
                # The application holds the write lock (a huge transaction): try again
                # later, leaving the worker to the other databases meanwhile.
                if not self._lock_waited:
                    self._lock_waited = True
                    self.log.warning("the application holds the write lock; waiting for it to start replication")
                return LOCK_RETRY
        except Exception as e:
            refused = self._room_refused(e)
            if refused is None:  # read-only, permissions, not WAL...: not for a retry to cure
                self._open_failed(LitesyncError(self._os_error_line(e)) if isinstance(e, OSError) else e)
                return None
            if self.stop_event.is_set():
                self._open_failed(LitesyncError(f"{refused[0]}; stopped before replication could start"))
                return None
            # Started on a full disk: as when it fills later (see _run_turn), but holding
            # nothing meanwhile. Nothing is copied yet (the next try starts over from the
            # spool): the connections close, so the WAL is not pinned, and the agent lock
            # is taken again at once (failing that, the next try says why).
            self.agent.close()
            with contextlib.suppress(LitesyncError, OSError):
                self.agent.lock()
            return self._no_room(*refused, holds_wal=False)
        except BaseException as e:  # reported by the runner
            self._open_failed(e)
            return None
        self._room_recovered("replication started")
        for rc, s, m in zip(self.cfg.replicas, self.shippers, self.maintainers):
            if self.scheduler is None:
                s.start()
                m.start()
            else:
                lane = store_lane(rc)
                s.attach(self.scheduler.task(self._touching(s.step), "ship", f"ship {s.label}", lane=lane))
                m.attach(self.scheduler.task(self._touching(m.step), "maintain", f"maintain {s.label}", lane=lane))
        self.started.set()
        self._phase = "run"
        if self.scheduler is None:
            return 0.0
        # Running from now on in the agent pool: the open task ends here.
        opener = self._task
        self._set_task(self.scheduler.task(self._turn, "agent", f"agent {self.cfg.path}"))
        opener.cancel()  # type: ignore[union-attr]
        return None

    def _open_failed(self, e: BaseException) -> None:
        """The database cannot be replicated as configured: say so, end its task."""
        self.error = e
        self._give_slot()
        if self.discovered:
            log.error("%s: cannot replicate: %s; skipped until the file changes", self.cfg.path, e)
        self.started.set()
        self._finish()

    def _run_turn(self) -> float | None:
        if self.stop_event.is_set():
            self._final_sync()
            self._finish()
            return None
        wait = self._retry_at - time.monotonic()
        if wait > 0:  # after an error, file events do not bring the next try closer
            return wait
        self._collect_while_waiting_for_room()
        room_wait = self._waiting_for_room()
        if room_wait is not None:
            self._retry_at = time.monotonic() + room_wait
            return room_wait
        # Commits that arrive close together ship together: a lone commit is copied at
        # once, a fast writer's commits in shipments at most STEP_INTERVAL apart, which
        # bounds the per-shipment work (files, fsyncs, uploads) it causes.
        pause = self._last_step + STEP_INTERVAL - time.monotonic()
        if pause > 0 and self._copied:
            return pause
        self.agent.wake.clear()
        self._last_step = time.monotonic()
        try:
            if self.agent.parked:
                if not self._needs_unpark():
                    return self._parked_poll()
                self._unpark()
            else:
                replaced = self.agent.replaced()
                if replaced is None and not self.agent.is_open:  # an adoption that failed: again
                    replaced = "the database file was replaced"
                if replaced is not None:
                    self.agent.adopt_replacement(replaced)
            if self.agent.snapshot_requested.is_set() or self.agent.newer_generation_seen.is_set():
                # A snapshot shipped, or history no replica will take (outbid), goes before
                # the next snapshot is written beside it: on a small disk both may not fit.
                self.collect_garbage()
            self._copied = self.agent.step()
            # A commit's frames are written before the wal-index counts them, and only the
            # frames cause a file event: when one seems in flight, look again soon.
            self._recheck = (min(max(self._recheck * 2, RECHECK_FIRST), self.poll_interval)
                             if self.agent.in_flight else 0.0)
            self.collect_garbage()
            self._room_recovered("copying resumed")
            self.turn_error = None
        except WriteLockBusy:  # unparking needed the write lock (see DbAgent.unpark)
            return LOCK_RETRY
        except Exception as e:
            refused = self._room_refused(e)
            if refused is not None:
                return self._no_room(*refused)
            if isinstance(e, OSError):
                # The spool's or the state directory's file system read-only or gone: nothing
                # half written is ever published, and the turn is tried again.
                return self._turn_failed(f"{self._os_error_line(e)}; copying paused, retrying every second")
            if isinstance(e, LitesyncError):
                return self._turn_failed(str(e))
            self.log.exception("unexpected error; continuing")
            self._retry_at = time.monotonic() + 1.0
            return 1.0
        if self._recheck:
            return self._recheck
        if self._copied:
            self._active_at = self._last_step
        elif self._may_park() and self.agent.park():
            self._give_slot()
            trim_heap()
            return self._parked_poll()
        self._idle_turns = 0 if self._copied else self._idle_turns + 1
        if self._idle_turns > IDLE_AFTER and self.poll_interval < self.idle_poll:
            return self.idle_poll
        return self.poll_interval

    def _turn_failed(self, message: str, delay: float = 1.0) -> float:
        """A failed turn: said once (the same message at each retry only in debug), the
        status failed with it, counted; tried again after ``delay``, which is returned."""
        self.log.log(logging.DEBUG if message == self.turn_error else logging.ERROR, "%s", message)
        self.turn_error = message
        self.agent.stats["errors"] += 1
        self._retry_at = time.monotonic() + delay
        return delay

    # -- a full disk --------------------------------------------------------------------

    def _room_refused(self, e: BaseException) -> tuple[str, str] | None:
        """When ``e`` is a write refused for lack of room: ``<where>: <why>`` and the directory
        whose file system lacks it; else None. Those are the spool's and the state
        directory's writes (ENOSPC, EDQUOT), and SQLite's on the database's own disk: a
        checkpoint that cannot grow the database file (SQLITE_FULL), a wal-index that
        cannot grow (SQLITE_IOERR_SHMSIZE, when a connection opens)."""
        if isinstance(e, OSError):
            return (self._os_error_line(e), self._spool_dir()) if no_room(e) else None
        cause = e.__cause__ if isinstance(e, DatabaseError) else e
        where = os.path.dirname(self.agent.wal_path)
        if isinstance(cause, apsw.FullError):
            return f"{self.agent.path}: {cause} (a checkpoint writes into the database file)", where
        if isinstance(cause, apsw.IOError) and getattr(cause, "extendedresult", None) == apsw.SQLITE_IOERR_SHMSIZE:
            return f"{self.agent.shm_path}: {cause} (SQLITE_IOERR_SHMSIZE: no room to grow the wal-index)", where
        return None

    def _no_room(self, line: str, directory: str, holds_wal: bool = True) -> float:
        """A turn refused for lack of room in ``directory`` (``line`` says where and why):
        nothing half written is published; said once, with what litesync does and what it
        means for the application (whether the agent ``holds_wal`` meanwhile); tried again
        once space is freed there (see ``_waiting_for_room``). Another write refused on the
        same file system while still waiting (the spool's after the checkpoint's, when a
        little room came back) is the same episode: said in debug only."""
        now = time.monotonic()
        first = self._room_at_failure is None
        if first:
            self._room_since = now
        said = not first and same_file_system(self._room_dir, directory)
        # What is free now may already include space freed since the write failed: then
        # no growth would ever be seen. The free space before this try, on this file
        # system, bounds it; without one (the first refusal, or one on another file system
        # than the last) one more try follows whatever the disk says.
        free = free_space(directory) or (-1, -1)
        before = self._room_before_try if said else None
        self._room_at_failure = free if before is None else (min(free[0], before[0]), min(free[1], before[1]))
        self._room_recheck = before is None
        self._room_tried = now
        self._room_dir = directory
        self.room_error = line
        if not holds_wal:
            what, app = "replication waits", "the application is not affected (litesync holds nothing meanwhile)"
        else:
            # The agent's read transaction would pin the WAL until it copies the frames, and
            # the app could not reuse it (on a full disk of its own, its commits would fail).
            self.agent.release()
            what, app = "copying paused", ("the WAL is released meanwhile: the application is not affected, and "
                                           "what it commits is copied when space returns")
        message = f"{line}; {what} until space is freed (looked at every {NO_ROOM_POLL:g}s); {app}"
        if said:
            self.turn_error = message  # logged in debug by _turn_failed
        return self._turn_failed(message, NO_ROOM_POLL)

    def _collect_while_waiting_for_room(self) -> None:
        """While a turn waits for room: what the replicas received meanwhile, or objects they
        all had before (an older generation's snapshot left by an agent killed before it
        collected it), may be all the room there is, and on a small disk only this agent can
        free it. Only while it holds the agent lock: waiting at start it lets go, and the
        spool may be another agent's by then (see _open_turn)."""
        if self._room_at_failure is None or not self.agent.locked:
            return
        try:
            self.collect_garbage()
        except (OSError, LitesyncError) as e:  # the turn's own collection says it, if it lasts
            self.log.debug("spool garbage collection while waiting for room: %s", e)

    def _waiting_for_room(self) -> float | None:
        """After a turn refused for lack of room: the delay before looking again while no
        space (bytes or inodes) was freed since, else None (try now)."""
        if self._room_at_failure is None:
            return None
        free = free_space(self._room_dir)
        self._room_before_try = free
        # The recheck stays due until a try reaches the disk (refused again: _no_room; done:
        # _room_recovered): a turn may end before writing (the app holds the write lock).
        if (self._room_recheck or time.monotonic() - self._room_tried >= NO_ROOM_RETRY or free is None
                or free[0] > self._room_at_failure[0] or free[1] > self._room_at_failure[1]):
            return None
        return NO_ROOM_POLL

    def _room_recovered(self, what: str) -> None:
        """A turn succeeded: after a full disk, say that the pause is over."""
        if self._room_at_failure is not None:
            self.log.info("%s: space freed, %s (paused %.1fs for lack of room)", self._room_dir, what,
                          time.monotonic() - self._room_since)
            self._room_at_failure = self._room_before_try = None
            self._room_recheck = False
            self.room_error = self.turn_error = None

    def _spool_dir(self) -> str:
        """The spool's directory, or the nearest one that exists above it."""
        path = self.agent.spool.root
        while not os.path.isdir(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        return path

    def _os_error_line(self, e: OSError) -> str:
        """``<where>: <why>`` for a failed file operation of the agent, naming the directory
        (the spool, the state directory) rather than the object, so that retries say the same."""
        where = str(e.filename or self.agent.state_dir)
        spool = self.agent.spool.root
        if where == spool or where.startswith(spool + os.sep):
            where = f"spool {spool}"
        elif where == self.agent.state_dir:
            where = f"state directory {where}"
        return f"{where}: {e.strerror or e}"

    # -- the open budget: slots, parking ----------------------------------------------

    def _take_slot(self) -> bool:
        if self.budget is None or self._slot == "open":
            return True
        if not self.budget.try_open(waited=self._slot == "waiting"):
            self._slot = "waiting"
            return False
        self._slot = "open"
        return True

    def _give_slot(self) -> None:
        if self.budget is not None and self._slot is not None:
            self.budget.release(waited=self._slot == "waiting")
            self._slot = None

    def _may_park(self) -> bool:
        if self.budget is None or self.agent.in_flight:
            return False
        idle = time.monotonic() - self._active_at
        if self.budget.pressure():
            # Databases waiting to open (a start): an idle one makes room at once.
            return idle >= (PARK_AFTER_WHEN_WAITED_FOR if self.budget.waiting else PARK_AFTER)
        a = self.agent
        return (self.budget.open > FLEET_OPEN and idle >= PARK_IDLE_AFTER
                and a.hasher.page_count * a.page_size <= PARK_IDLE_MAX_BYTES)

    def _parked_poll(self) -> float:
        return PARKED_POLL if self.idle_poll == WATCHED_IDLE_POLL else self.idle_poll

    def _needs_unpark(self) -> bool:
        """A parked database has work when its files changed or it has something to do
        besides copying (a snapshot due or asked for, a replica's newer generation)."""
        a = self.agent
        return (not a.parked_unchanged() or a.snapshot_requested.is_set() or a.newer_generation_seen.is_set()
                or a.snapshot_due())

    def _unpark(self) -> None:
        if self.budget is not None and self._slot != "open":
            self.budget.reopen()
            self._slot = "open"
        self._active_at = time.monotonic()
        try:
            self.agent.unpark()
        except BaseException:
            if self.agent.parked:
                self._give_slot()
            raise

    def _final_sync(self) -> None:
        try:
            if self.agent.parked:
                if not self._needs_unpark() and not any(s.needs_snapshot() for s in self.shippers):
                    return
                self._unpark()
            self.agent.sync()
            self._try_outbid()  # a replica outbid waits for the generation after its own
            # A replica that needs a snapshot (new, moved, or behind the spool) gets one before
            # the shippers' final round: no later step of this loop would take it.
            if any(s.needs_snapshot() for s in self.shippers):
                self.agent.snapshot_requested.clear()
                self.agent.snapshot()
        except Exception as e:
            refused = self._room_refused(e)  # said as one line, naming the file system's directory
            if refused is not None:
                e = LitesyncError(refused[0])
            elif isinstance(e, OSError):
                e = LitesyncError(self._os_error_line(e))
            self.log.error("final sync failed: %s", e)
            self.error = e

    def _try_outbid(self) -> None:
        """At the stop: write the generation after a replica's newer one, if asked; a
        failure (the write lock refused) is kept for the stop's last word, not raised:
        the other replicas' final round goes on."""
        try:
            if self.agent.parked and self.agent.newer_generation_seen.is_set():
                self._unpark()
            self.agent.outbid()
        except LitesyncError as e:
            self._outbid_error = str(e)

    def collect_garbage(self) -> None:
        """Drop spool objects every replica has; past spool-max-size, unshipped ones too (see
        ``spool.over_bound``), said once for each time the spool goes over."""
        spool = self.agent.spool
        limit = self.cfg.spool_max_size
        objects = spool.objects()
        done, dropped, waiting = over_bound(objects, lambda n: all(s.done_with(n) for s in self.shippers), limit)
        if dropped:
            sizes = dict(objects)
            level = logging.DEBUG if self._spool_over else logging.WARNING
            self.log.log(level, "spool %s: over spool-max-size (%s): dropped %s (%s) not yet shipped; a replica "
                         "behind them goes on from a new snapshot", spool.root, format_size(limit),
                         plural(len(dropped), "object"), format_size(sum(sizes.get(n, 0) for n in dropped)))
            self.spool_dropped += len(dropped)
        # Said again only after the replicas came back well under the bound.
        self._spool_over = bool(dropped) or (self._spool_over and waiting > limit // 2)
        # History no replica will take (each was outbid: the agent starts a generation after
        # the replica's) goes, the newest object too: the agent does not resume from it.
        # On a small disk it may be what keeps the new generation's snapshot from being written.
        gone = set(done + dropped)
        abandoned = [n for n, _ in objects
                     if n not in gone and all(s.will_never_ship(n) for s in self.shippers)]
        if abandoned:
            self.log.info("spool %s: dropped %s of generation %s, which no replica will take", spool.root,
                          plural(len(abandoned), "object"),
                          ", ".join(sorted({layout.format_generation(n.generation) for n in abandoned})))
        spool.delete(done + dropped + abandoned)

    def ready(self) -> bool:
        """True once replicating and every replica checked (see ``Shipper.checked``), or while
        waiting for the database to be created."""
        if not self.started.is_set():
            return self.waiting.is_set()
        return self.error is None and all(s.checked.is_set() for s in self.shippers)

    def request_stop(self) -> None:
        """Start the final sync without waiting for it."""
        self.stopping = True
        self._touch()
        self.stop_event.set()
        self.agent.wake.set()

    def stop(self, timeout: float, hurry: threading.Event | None = None) -> bool:
        """Stop after a final sync; wait up to ``timeout`` for every replica (less once ``hurry``
        is set); True if all shipped."""
        self.request_stop()
        if self._task is not None:
            self._finished.wait()
        self.validator.join(timeout=60)  # a restore under way finishes before the clients close
        deadline = time.monotonic() + timeout
        ok = True
        if self.started.is_set() and self.error is None:
            self.agent.spool.notify()
            for s in self.shippers:
                while (s.is_alive() and s.fatal is None and s.pending() and time.monotonic() < deadline
                       and not (hurry is not None and hurry.is_set())):
                    # A shipper's first look at its replica may come only now (--once, an
                    # outage at start): the agent's loop is over, so its new generation is made here.
                    self._try_outbid()
                    self.agent.spool.notify()
                    time.sleep(0.02)
                if s.fatal is not None:
                    ok = False
                elif s.pending():
                    objects = self.agent.spool.objects()
                    waiting = unshipped(objects, s.pos)
                    if s.awaiting_generation(objects) and not waiting:
                        s.log.error("stopped before everything was shipped: the replica holds a newer generation "
                                    "and this database's snapshot after it was not written (%s); the next start "
                                    "writes it", self._outbid_error or "not tried")
                    else:
                        s.log.error("stopped before everything was shipped: %s (%s) wait in the spool for the "
                                    "next start (last error: %s)", plural(len(waiting), "object"),
                                    format_size(sum(size for _, size in waiting)), s.last_error)
                    ok = False
        for m in self.maintainers:
            m.stop()
        for s in self.shippers:
            s.stop()
        # A turn under way ends before its client closes, within one deadline for them all
        # (a store that hangs a request would otherwise add its timeout once per replica).
        joins_end = time.monotonic() + JOIN_TIMEOUT
        for m in self.maintainers:
            m.join(timeout=max(0.0, joins_end - time.monotonic()))
        for s in self.shippers:
            s.join(timeout=max(0.0, joins_end - time.monotonic()))
            s.client.close()
        self.stopped = True
        self.publish_status(force=True)
        try:
            self.agent.close()
        except Exception as e:  # closing must not hide the shipping verdict
            self.log.warning("close: %s", e)
        self._give_slot()
        if self.budget is not None:
            self.budget.leave()
        return ok and self.error is None

    # -- status --------------------------------------------------------------------

    def state(self) -> str:
        if self.stopped:
            return "stopped"
        if self.error is not None or self.turn_error is not None:
            return "failed"
        if self.stopping:
            return "stopping"
        if self.started.is_set():
            return "replicating"
        return "waiting" if self.wait_for_db and not os.path.exists(self.cfg.path) else "starting"

    def status(self, now: float | None = None) -> dict:
        """Return this database's status (the content of ``status.json``, see status.py)."""
        now = time.time() if now is None else now
        a = self.agent
        copied_at, copied_gen, copied_seq = a.copied_through
        replicas = []
        for rc, s, m in zip(self.cfg.replicas, self.shippers, self.maintainers):
            r = s.report(now)
            r["destination"] = rc.destination
            r["errors"] += m.stats["errors"]
            r["unsound_objects"] = list(m.unsound)
            r["unsound_count"] = len(m.unsound)
            r["validation"] = dict(self.validator.verdicts[s.replica])
            replicas.append(r)
        objects = a.spool.objects()
        return {
            "format": status.FORMAT, "db": self.cfg.path, "pid": os.getpid(), "started_at": self.started_at,
            "updated_at": now, "state": self.state(),
            "error": str(self.error) if self.error else self.turn_error, "errors": a.stats["errors"],
            "generation": layout.format_generation(a.generation) if a.generation else None,
            "next_seq": a.next_seq, "last_snapshot_at": a.last_snapshot_at or None,
            "snapshot_seconds": round(a.stats["snapshot_seconds"], 3),
            "max_wal_bytes": int(a.stats["max_wal_bytes"]),  # the WAL's largest size seen
            "spool_bytes": sum(size for _, size in objects), "spool_objects": len(objects),
            "spool_dropped": self.spool_dropped,
            "copied_through": {"at": copied_at, "next_seq": copied_seq,
                               "generation": layout.format_generation(copied_gen) if copied_gen else None},
            "checkpoints": a.stats["checkpoints"], "snapshots": a.stats["snapshots"],
            "transactions": a.stats["transactions"], "segments": a.stats["segments"],
            # The agent's holds of the write lock (seals), which an app without a busy timeout sees.
            "seals": a.stats["seals"], "seal_seconds": round(a.stats["seal_seconds"], 6),
            "max_seal_seconds": round(a.stats["max_seal_seconds"], 6),
            "wal_truncations": a.stats["wal_truncations"],
            "parked": a.parked, "parks": a.stats["parks"], "control": self.control,
            "replicas": replicas,
        }

    def _change_mark(self) -> tuple:
        """What changes when the status changes in a way a reader must see without asking:
        state, errors, generations, a replica falling behind or failing. Counters and
        positions move with every commit: they are rewritten when a reader asks
        (status.ask_fresh), or with the next such change."""
        a = self.agent
        return (self.state(), str(self.error), self.turn_error, a.generation, a.stats["snapshots"], self._spool_over,
                tuple((s.status, s.last_error, s.pos.generation, len(m.unsound), m.stats["errors"])
                      for s, m in zip(self.shippers, self.maintainers)),
                tuple(v["ok"] + v["failed"] for v in self.validator.verdicts.values()))

    def publish_status(self, force: bool = False) -> None:
        """Rewrite ``status.json`` when something changed, or when a reader asked for it
        (``status_wanted``) and a turn ran since."""
        with self._publish_lock:
            # Another agent may own this database: its status is not ours to replace.
            if not self.agent.locked or (self.stopped and not force):
                return
            # Without a control directory, the file's time is its heartbeat: rewritten every
            # PUBLISH_INTERVAL.
            due = force or self._published_at is None or (
                self.control is None and time.time() - self._published_at >= PUBLISH_INTERVAL)
            if not (due or self._dirty):
                return  # no turn ran since: nothing to look at
            self._dirty = False
            mark = self._change_mark()
            if not due and mark == self._mark and not self.status_wanted:
                return
            self.status_wanted = False
            self._mark = mark
            now = time.time()
            try:
                status.write_status(self.cfg.path, self.status(now))
            except OSError as e:
                message = f"{status.status_path(self.cfg.path)}: cannot write the status file: {e.strerror or e}"
                self.log.log(logging.DEBUG if message == self._status_error else logging.WARNING, "%s", message)
                self._status_error = message
                return
            self._status_error = None
            self._published_at = now


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
        self.scheduler = new_scheduler()
        self.budget = OpenBudget(config.max_open)
        self.dbs = [DbReplication(d, poll_interval, wait_for_db, scheduler=self.scheduler, budget=self.budget)
                    for d in config.dbs]
        self._wakes = {d.agent.wal_path: d.agent.wake for d in self.dbs}
        # A directory is rescanned on its file events; the periodic scan is a fallback.
        self.dirs = [DirWatcher(d, self, max(poll_interval, IDLE_POLL)) for d in config.dirs]
        self._observer: InotifyObserver | BaseObserver | None = None
        self._handler: FileSystemEventHandler | None = None
        self._watches: dict[str, tuple[object, int]] = {}  # directory -> (its watch, its inode)
        self._stop_publishing = threading.Event()
        self._publisher = threading.Thread(target=self._publish_loop, name="status", daemon=True)
        self._controls: dict[str, status.ProcessControl] = {}  # directory of databases -> its control
        self._fatal: list[BaseException] = []
        self._touched: collections.deque[DbReplication] = collections.deque()  # see DbReplication._touch
        self._uncontrolled = False  # some database has no control directory
        self._fatal_checked = -FATAL_CHECK
        self._fatal_seen: tuple[int, int] | None = None
        self.metrics: MetricsServer | None = None

    def start(self) -> None:
        if self.config.addr is not None:
            from .metrics import MetricsServer

            self.metrics = MetricsServer(self.config.addr, self.statuses)  # fails at once if addr is taken
            self.metrics.start()
        self._start_watcher()
        for d in self.dbs:
            self._control_for(d)
            d.start()
        for w in self.dirs:
            w.scan()  # the databases already there start now, with the listed ones
            w.start()
        self._publisher.start()

    def databases(self) -> list[DbReplication]:
        """Return the databases being replicated now."""
        with self._lock:
            return list(self.dbs)

    def replicated_files(self) -> tuple[set[str], set[tuple[int, int]]]:
        """The names and the (device, inode) identities of every database replicated here:
        the file an agent opened (whatever its name now), or, for an agent not open yet, the
        one its configured name leads to (a stat each). A file among them must never be
        opened here, since closing a descriptor of it would drop every SQLite lock this
        process holds on it. A directory scan of thousands of files asks once."""
        names: set[str] = set()
        identities: set[tuple[int, int]] = set()
        for d in self.databases():
            names.add(d.cfg.path)
            if d.agent.identity is not None:
                identities.add(d.agent.identity)
                continue
            try:
                st = os.stat(d.cfg.path)
            except OSError:
                continue
            identities.add((st.st_dev, st.st_ino))
        return names, identities

    def add(self, cfg: "DbConfig") -> DbReplication:
        """Start replicating a database found in a directory; return it."""
        d = DbReplication(cfg, self.poll_interval, discovered=True, scheduler=self.scheduler, budget=self.budget)
        with self._lock:
            self.dbs.append(d)
            self._wakes[d.agent.wal_path] = d.agent.wake
        if self.watch(os.path.dirname(d.agent.wal_path)):
            d.idle_poll = WATCHED_IDLE_POLL
        self._control_for(d)
        d.start()
        return d

    def remove(self, d: DbReplication, timeout: float) -> bool:
        """Stop replicating one database (final sync, up to ``timeout`` for shipping); True if all shipped."""
        with self._lock:
            self.dbs.remove(d)
            self._wakes.pop(d.agent.wal_path, None)
        return d.stop(timeout)

    def statuses(self) -> list[dict]:
        """Return the current status of every database."""
        now = time.time()
        return [d.status(now) for d in self.databases()]

    def _control_for(self, d: DbReplication) -> None:
        """Give ``d`` the control directory of its directory (see status.ProcessControl), and
        the publisher's ear (see DbReplication._touch)."""
        d.on_touch = self._touched.append
        root = os.path.dirname(d.cfg.path)
        with self._lock:
            control = self._controls.get(root)
            if control is None:
                try:
                    control = self._controls[root] = status.ProcessControl(root)
                except OSError as e:
                    log.warning("%s: cannot make the agent's control directory; its status file is "
                                "rewritten every %gs instead: %s", root, PUBLISH_INTERVAL, e)
                    self._uncontrolled = True
                    return
        d.control = control.path

    def _publish_loop(self) -> None:
        beat = time.monotonic()
        while not self._stop_publishing.wait(PUBLISH_TICK):
            with self._lock:
                controls = list(self._controls.values())
            asked: set[str] = set()
            beating = time.monotonic() - beat >= PUBLISH_INTERVAL
            for control in controls:
                try:
                    asked.update(control.requests())
                    if beating:
                        control.heartbeat()
                except OSError as e:
                    log.debug("control directory %s: %s", control.path, e)
            if beating:
                beat = time.monotonic()
                trim_heap()
            if asked:
                for d in self.databases():
                    if d.cfg.path in asked:
                        # Published after the next turn (which touches it), not before: that
                        # turn refreshes what the status says (copied_through, positions).
                        d.status_wanted = True
                        d._dirty = False
                        d.agent.wake.set()
            # Only the databases touched since (a turn ran), and those whose file's time is
            # their heartbeat (no control directory): ten thousand idle ones cost nothing.
            looked: set[DbReplication] = set()
            while self._touched:
                looked.add(self._touched.popleft())
            if self._uncontrolled:
                looked.update(d for d in self.databases() if d.control is None)
            for d in looked:
                d.publish_status()

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
            def on_overflow(self) -> None:
                for wake in list(wakes.values()):
                    wake.set()
                for w in dirs:
                    w.wake.set()

            def on_any_event(self, event) -> None:  # noqa: ANN001
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    wake = wakes.get(path)
                    if wake is not None:
                        wake.set()
                    elif path:
                        for w in dirs:
                            w.notice(path)

        from . import watch

        self._handler = Handler()
        # Our own inotify reader where there is one: watchdog's costs a busy agent much CPU.
        self._observer = watch.InotifyObserver() if watch.available() else Observer()
        self._observer.daemon = True
        self._observer.start()
        for d in self.dbs:
            os.makedirs(os.path.dirname(d.agent.wal_path), exist_ok=True)
            if self.watch(os.path.dirname(d.agent.wal_path)):
                d.idle_poll = WATCHED_IDLE_POLL
        for w in self.dirs:
            os.makedirs(w.cfg.path, exist_ok=True)
            if self.watch(w.cfg.path):
                w.interval = WATCHED_IDLE_POLL

    def watch(self, directory: str) -> bool:
        """Deliver the file-system events of ``directory`` (not of its subdirectories); return
        whether inotify watches it (then each write is an event, and polls can be rare)."""
        # Never recursive: a recursive watch would follow every spool write of every state directory.
        from . import watch

        try:
            inode = os.stat(directory).st_ino
        except OSError:
            return False
        with self._lock:
            if self._observer is None:
                return False
            assert self._handler is not None  # made with the observer (_start_watcher)
            inotify = isinstance(self._observer, watch.InotifyObserver)
            old = self._watches.get(directory)
            if old is not None and old[1] == inode:
                return inotify
            if old is not None:  # deleted and created again: the old watch died with it
                with contextlib.suppress(KeyError, OSError):
                    # The watch goes back to the observer that made it (an inotify descriptor
                    # or watchdog's ObservedWatch); the types cannot tie the two together.
                    self._observer.unschedule(old[0])  # type: ignore[arg-type]
            try:
                self._watches[directory] = (self._observer.schedule(self._handler, directory), inode)
            except OSError as e:
                log.warning("%s: cannot watch (%s); polling every %.1fs", directory, e, self.poll_interval)
                return False
            return inotify

    def fatal_errors(self) -> list[BaseException]:
        """Errors that make replication impossible as configured (startup or replica setup).
        Looked for when one was set since (see engine.FATAL_CHANGES), or a database came or
        went, at most every FATAL_CHECK seconds: a caller polls it, and the errors stay."""
        now = time.monotonic()
        seen = (FATAL_CHANGES.count, len(self.dbs))
        if now - self._fatal_checked >= FATAL_CHECK and seen != self._fatal_seen:
            self._fatal_checked, self._fatal_seen = now, seen
            dbs = self.databases()
            out: list[BaseException] = [d.error for d in dbs if d.error is not None and not d.discovered]
            out += [s.fatal for d in dbs for s in d.shippers if s.fatal is not None]
            self._fatal = out
        return self._fatal

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

    def stop(self, timeout: float = 30.0, hurry: threading.Event | None = None) -> bool:
        """Final sync of every database, wait for shipping (no longer once ``hurry`` is set);
        True when everything was shipped."""
        for w in self.dirs:
            w.stop()
        dbs = self.databases()
        for d in dbs:  # final syncs run side by side; shipping shares one deadline
            d.request_stop()
        deadline = time.monotonic() + timeout
        ok = True
        for d in dbs:
            ok = d.stop(max(0.0, deadline - time.monotonic()), hurry) and ok
        self._stop_publishing.set()
        if self._publisher.is_alive():
            self._publisher.join()
        for d in dbs:  # once no status is published any more: a failed start leaves nothing behind
            if d.error is not None:
                d.agent.discard_new_state()
        for control in self._controls.values():
            control.close()
        self._fatal_checked = -FATAL_CHECK  # what the stop found is seen at once
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        self.scheduler.stop()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        return ok
