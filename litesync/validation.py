"""Validation of one database's replicas while it replicates (``validation-interval``):
each replica is restored and compared with the live database (see verify.py), on a
thread of its own, and its verdicts are kept for the status."""

from __future__ import annotations

import threading
import time
from typing import Callable

from . import layout, status
from .agent import DbAgent
from .errors import LitesyncError
from .shipper import Shipper

VALIDATION_WAIT = 60.0  # how long a validation waits for the replica to catch up


class Validator:
    """Validates each replica of the database at ``db_path`` every ``interval`` seconds
    (None: only when ``validate`` is called) and keeps the verdicts per replica."""

    def __init__(self, db_path: str, agent: DbAgent, shippers: list[Shipper], *, interval: float | None,
                 db_id: str | None, started: threading.Event, stop_event: threading.Event,
                 failed: Callable[[], bool], touch: Callable[[], None],
                 wait_timeout: float | None = None) -> None:
        """``started`` is set once the database replicates, ``stop_event`` when it stops;
        ``failed`` says whether it stopped on an error; ``touch`` is told of each verdict."""
        self.db_path = db_path
        self.agent = agent
        self.shippers = shippers
        self.interval = interval
        self.db_id = db_id
        self.started = started
        self.stop_event = stop_event
        self.failed = failed
        self.touch = touch
        self.wait_timeout = wait_timeout  # None: VALIDATION_WAIT, read when a validation runs
        # replica name -> {"ok": count, "failed": count, "last": {...}}
        self.verdicts: dict[str, dict] = {s.replica: {"ok": 0, "failed": 0, "last": None} for s in shippers}
        self._thread: threading.Thread | None = None
        if interval is not None:
            self._thread = threading.Thread(target=self._loop, name=f"validate {db_path}", daemon=True)

    def start(self) -> None:
        """Start validating every ``interval`` (nothing when there is none)."""
        if self._thread is not None:
            self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the thread to end once ``stop_event`` is set."""
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        assert self.interval is not None
        while not self.started.wait(0.2):
            if self.stop_event.is_set():
                return
        while not self.stop_event.wait(self.interval):
            if self.failed():
                return
            for s in self.shippers:
                if self.stop_event.is_set():
                    return
                self.validate(s)

    def _wait_timeout(self) -> float:
        return VALIDATION_WAIT if self.wait_timeout is None else self.wait_timeout

    def validate(self, s: Shipper) -> bool:
        """Verify one replica against the live database (see verify.py); record and log the verdict."""
        from .verify import verify_replica

        t0 = time.time()
        try:
            v = verify_replica(s.client, self.db_path, work_dir=self.agent.state_dir,
                               wait=lambda since: self.wait_shipped(s, since, self._wait_timeout()),
                               db_id=self.db_id, tmp_prefix=layout.VALIDATION_TMP_PREFIX)
            ok, message = True, v.describe()
            s.log.info("validation ok: %s", message)
        except LitesyncError as e:
            if self.stop_event.is_set():
                return False  # cut short by the shutdown: no verdict
            ok, message = False, str(e)
            s.log.error("validation failed: %s", e)
        except Exception as e:  # a defect: recorded as a failed validation, and the next one still runs
            ok, message = False, f"unexpected error: {type(e).__name__}: {e}"
            s.log.error("validation failed: %s", message)
            s.log.debug("validation error", exc_info=True)
        entry = self.verdicts[s.replica]
        entry["ok" if ok else "failed"] += 1
        self.touch()
        entry["last"] = {"at": t0, "ok": ok, "message": message, "seconds": round(time.time() - t0, 3)}
        return ok

    def wait_shipped(self, s: Shipper, since: float, timeout: float) -> bool:
        """Wait until ``s``'s replica holds every transaction committed before ``since``; False
        after ``timeout``. Raises when the agent stops meanwhile, so no restore starts then."""
        deadline = time.monotonic() + timeout
        while not self.stop_event.is_set():
            if status.caught_up(self.agent.copied_through, (s.pos.generation, s.pos.next_seq), since):
                return True
            if time.monotonic() >= deadline:
                return False
            self.agent.wake.set()
            time.sleep(0.05)
        raise LitesyncError(f"{self.db_path}: validation cut short: the agent is stopping")
