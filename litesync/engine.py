"""Recurring work on a bounded set of threads, whatever the number of databases.

A *task* is a function that does one turn of work and returns when it wants to run again:
a delay in seconds, or None to sleep until it is woken (a file event, a spool change, a
stop). The ``Scheduler`` runs every task on a few worker threads per pool, one timer
thread keeps the delays in a heap, and a task never runs twice at once: woken while it
runs, it runs again right after. A task may belong to a *lane* (say, one remote store):
at most ``lane_limit`` tasks of a lane run at once, so a store that hangs every request
holds a few workers, never the whole pool. A ``Loop`` runs one task on a thread of its own, with the
same contract, for a component used alone (tests, a single-purpose command).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

Step = Callable[[], "float | None"]
ERROR_DELAY = 1.0  # a task that raised runs again after this long

_IDLE, _QUEUED, _RUNNING, _DONE = "idle", "queued", "running", "done"


class Task:
    """A recurring piece of work run by a ``Scheduler``: see the module doc."""

    def __init__(self, scheduler: "Scheduler", step: Step, pool: "_Pool", name: str, lane: str | None) -> None:
        self._scheduler = scheduler
        self.lane = lane
        self._step = step
        self._pool = pool
        self.name = name
        self._state = _IDLE
        self._again = False  # woken while running
        self._cancelled = False
        self._timer: int | None = None  # the heap entry that stands for this task's delay

    def wake(self) -> None:
        """Run the task as soon as a worker is free (again after the current turn, if running)."""
        self._scheduler._wake(self)

    def cancel(self) -> None:
        """Run it no more; a turn under way finishes."""
        self._scheduler._cancel(self)

    @property
    def active(self) -> bool:
        """False once cancelled."""
        return not self._cancelled

    def join(self, timeout: float | None = None) -> None:
        """Wait until no turn of it is under way (after ``cancel``, until it is over)."""
        self._scheduler._join(self, timeout)

    @property
    def busy(self) -> bool:
        """True while a turn runs."""
        return self._state == _RUNNING

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {self._state})"


class _Pool:
    def __init__(self, name: str, workers: int, lock: threading.Lock, lane_limit: int | None) -> None:
        self.name = name
        self.size = workers
        self.lane_limit = lane_limit
        self.lanes: collections.Counter[str] = collections.Counter()  # lane -> tasks running
        self.ready: collections.deque[Task] = collections.deque()
        self.cond = threading.Condition(lock)
        self.threads: list[threading.Thread] = []
        self.busy = 0


class Scheduler:
    """Runs tasks on named pools of worker threads (``pools``: name -> thread count, or
    (thread count, most tasks of one lane at once)); one timer thread wakes delayed tasks.
    Threads start with the first task of their pool."""

    def __init__(self, pools: dict[str, int | tuple[int, int]]) -> None:
        self._lock = threading.Lock()
        self._pools = {}
        for name, spec in pools.items():
            workers, limit = spec if isinstance(spec, tuple) else (spec, None)
            self._pools[name] = _Pool(name, workers, self._lock, limit)
        self._heap: list[tuple[float, int, Task]] = []
        self._seq = itertools.count()
        self._timer_cond = threading.Condition(self._lock)
        self._turn_ended = threading.Condition(self._lock)
        self._timer: threading.Thread | None = None
        self._stopped = False

    def task(self, step: Step, pool: str, name: str, *, start: bool = True, lane: str | None = None) -> Task:
        """Return a new task running ``step`` on ``pool`` (in ``lane``); its first turn comes
        at once unless ``start`` is false."""
        t = Task(self, step, self._pools[pool], name, lane)
        with self._lock:
            self._ensure_threads(t._pool)
            if start:
                self._enqueue(t)
        return t

    def threads(self) -> int:
        """How many threads the scheduler runs."""
        with self._lock:
            return sum(len(p.threads) for p in self._pools.values()) + (1 if self._timer is not None else 0)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads once the turns under way end (tasks run no more)."""
        with self._lock:
            self._stopped = True
            for p in self._pools.values():
                p.cond.notify_all()
            self._timer_cond.notify_all()
            threads = [t for p in self._pools.values() for t in p.threads]
            if self._timer is not None:
                threads.append(self._timer)
        deadline = time.monotonic() + timeout
        for th in threads:
            th.join(max(0.0, deadline - time.monotonic()))

    # -- with the lock held ----------------------------------------------------------

    def _ensure_threads(self, pool: _Pool) -> None:
        if self._stopped:
            raise RuntimeError("scheduler is stopped")
        while len(pool.threads) < pool.size:
            th = threading.Thread(target=self._work, args=(pool,), name=f"{pool.name}-{len(pool.threads)}",
                                  daemon=True)
            pool.threads.append(th)
            th.start()
        if self._timer is None:
            self._timer = threading.Thread(target=self._time, name="timer", daemon=True)
            self._timer.start()

    def _enqueue(self, t: Task) -> None:
        t._state = _QUEUED
        t._timer = None
        t._pool.ready.append(t)
        t._pool.cond.notify()

    def _wake(self, t: Task) -> None:
        with self._lock:
            if t._cancelled or self._stopped:
                return
            if t._state == _RUNNING:
                t._again = True
            elif t._state == _IDLE:
                self._enqueue(t)

    def _join(self, t: Task, timeout: float | None) -> None:
        with self._lock:
            self._turn_ended.wait_for(lambda: t._state != _RUNNING or self._stopped, timeout)

    def _cancel(self, t: Task) -> None:
        with self._lock:
            t._cancelled = True
            t._timer = None
            if t._state == _QUEUED:
                t._pool.ready.remove(t)
            if t._state != _RUNNING:  # else _after_turn ends it
                t._state = _DONE

    def _after_turn(self, t: Task, delay: float | None) -> None:
        self._turn_ended.notify_all()
        if t._cancelled:
            t._state = _DONE
            return
        if t._again or delay == 0:
            t._again = False
            self._enqueue(t)
        elif delay is None:
            t._state = _IDLE
        else:
            t._state = _IDLE
            seq = next(self._seq)
            t._timer = seq
            heapq.heappush(self._heap, (time.monotonic() + delay, seq, t))
            self._timer_cond.notify()

    # -- threads -------------------------------------------------------------------------

    def _next(self, pool: _Pool) -> Task | None:
        """Take the first ready task whose lane has room; None when there is none."""
        if pool.lane_limit is None:
            return pool.ready.popleft() if pool.ready else None
        for i, t in enumerate(pool.ready):
            if t.lane is None or pool.lanes[t.lane] < pool.lane_limit:
                del pool.ready[i]
                return t
        return None

    def _work(self, pool: _Pool) -> None:
        while True:
            with self._lock:
                while not self._stopped and (t := self._next(pool)) is None:
                    pool.cond.wait()
                if self._stopped:
                    return
                assert t is not None
                t._state = _RUNNING
                pool.busy += 1
                if t.lane is not None:
                    pool.lanes[t.lane] += 1
            try:
                delay = t._step()
            except Exception:
                log.exception("%s: unexpected error; running it again in %.0fs", t.name, ERROR_DELAY)
                delay = ERROR_DELAY
            with self._lock:
                pool.busy -= 1
                if t.lane is not None:
                    pool.lanes[t.lane] -= 1
                    pool.cond.notify_all()  # a task of that lane may wait for the room
                self._after_turn(t, delay)

    def _time(self) -> None:
        with self._lock:
            while not self._stopped:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _due, seq, t = heapq.heappop(self._heap)
                    if t._timer == seq and t._state == _IDLE:  # else woken or rescheduled since
                        self._enqueue(t)
                timeout = self._heap[0][0] - now if self._heap else None
                self._timer_cond.wait(timeout)


class Changes:
    """A count of changes to something many threads set and one thread polls: the poller
    compares it with the count it last saw instead of looking at every one of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def note(self) -> None:
        with self._lock:
            self.count += 1


# Fatal errors (a database's, a replica's) set anywhere: Runner.fatal_errors looks again when it moves.
FATAL_CHANGES = Changes()


class Signal(threading.Event):
    """An Event that also calls ``on_set`` (a task's ``wake``) each time it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.on_set: Callable[[], None] | None = None

    def set(self) -> None:
        super().set()
        on_set = self.on_set
        if on_set is not None:
            on_set()


class Loop:
    """One task on a thread of its own, with the contract of ``Task`` (``wake``, ``cancel``,
    ``active``); ``join`` waits for the thread."""

    def __init__(self, step: Step, name: str) -> None:
        self._step = step
        self.name = name
        self._woken = threading.Event()
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "Loop":
        self._thread.start()
        return self

    def wake(self) -> None:
        self._woken.set()

    def cancel(self) -> None:
        self._cancelled = True
        self._woken.set()

    @property
    def active(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def busy(self) -> bool:
        """True until the thread ends (after ``cancel``, once its last turn is over)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._cancelled:
            self._woken.clear()
            try:
                delay = self._step()
            except Exception:
                log.exception("%s: unexpected error; running it again in %.0fs", self.name, ERROR_DELAY)
                delay = ERROR_DELAY
            if delay != 0:
                self._woken.wait(delay)
