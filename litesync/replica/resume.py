"""Requests tried again on their own, and downloads resumed from the byte where they broke.

A backend (S3, B2) gives a ``Retrier`` each request of a restore or a follower; a failure
that a retry may cure (``retryable``) waits with backoff and jitter and tries that request
again, never the whole restore. A download that breaks mid-body goes on from the byte it
reached, from the *same version* of the object (S3: If-Match on its ETag; B2: its file id):
an object that changed between attempts is refused, never spliced. Resumed bytes reach the
readers above exactly as unresumed ones do, so they are verified the same way (AEAD chunks,
segment and snapshot checksums).

How long to insist is a ``RetryPolicy``: a number of attempts in a row that bring nothing,
and a time without progress. A restore or a follower waits out a dead store (``PATIENT``)
only when no other replica could serve (else ``BRIEF``). The agent's own clients do not
retry here (``NO_RETRY``): its loops retry, and an outage must show in its status at once.
A restore also has a total ``Deadline``: every wait on the store (a retry's delay, the
next try, the next bytes of a download) stops there, naming what it was waiting for.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, TypeVar

from ..errors import DeadlineError, LitesyncError, ReplicaError, TransientReplicaError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How long one request (or one object's download) insists on a store that fails."""

    attempts: int = 1  # attempts in a row that bring nothing (no byte, no answer), at most
    patience: float = 0.0  # seconds without progress after which a failure is final
    base: float = 0.25  # the first delay; doubling up to ``cap``, each times 0.5 to 1
    cap: float = 8.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row."""
        return min(self.cap, self.base * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)


NO_RETRY = RetryPolicy()
# Restores and followers with no other replica: a store down for a few minutes is waited out.
PATIENT = RetryPolicy(attempts=60, patience=300.0, cap=4.0)
# With another replica to turn to: broken downloads still resume (bytes are progress), a
# store that does not answer at all is given up within seconds.
BRIEF = RetryPolicy(attempts=4, patience=10.0, cap=2.0)


def policy_for(alternatives: int) -> RetryPolicy:
    """How long to insist on one replica when ``alternatives`` others could serve instead."""
    return PATIENT if alternatives == 0 else BRIEF


class Deadline:
    """When a whole operation (a restore) must be over, and how that was asked for."""

    def __init__(self, seconds: float, operation: str = "restore", origin: str = "--timeout") -> None:
        self.seconds = seconds
        self.operation = operation
        self.origin = origin  # the option or key that set it, for the message
        self._at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds until the deadline (negative past it)."""
        return self._at - time.monotonic()

    def error(self, waiting_for: str) -> DeadlineError:
        from ..progress import format_duration

        return DeadlineError(f"{self.operation} timed out after {format_duration(self.seconds)} ({self.origin}), "
                             f"waiting for {waiting_for}")

    def check(self, waiting_for: Callable[[], str]) -> None:
        """Raise DeadlineError, naming ``waiting_for()``, once the deadline has passed."""
        if self.left() <= 0:
            raise self.error(waiting_for())


class ObjectChangedError(ReplicaError):
    """An object changed (another ETag, size or version) between two reads of one download."""


class Outage:
    """Whether a store is failing, so that waiting on it is said once, not once per request."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self._lock = threading.Lock()
        self._since: float | None = None

    def failing(self, e: LitesyncError, policy: RetryPolicy, deadline: Deadline | None = None) -> None:
        with self._lock:
            first, self._since = self._since is None, self._since or time.monotonic()
        if first:
            from ..progress import format_duration

            until = (f"; the {deadline.operation} gives up in {format_duration(max(0.0, deadline.left()))} "
                     f"({deadline.origin})" if deadline is not None else "")
            log.warning("%s; waiting for the store and trying again (up to %d attempts in a row, %gs without "
                        "progress%s)", e, policy.attempts, policy.patience, until, extra={"replica": self.replica})
        else:
            log.debug("%s (retrying)", e, extra={"replica": self.replica})

    def over(self) -> None:
        """A request gave up: the next failure is a new outage, and says so."""
        with self._lock:
            self._since = None

    def answered(self) -> None:
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.info("replica %s: the store answers again after %.1fs", self.replica, time.monotonic() - since,
                     extra={"replica": self.replica})


class Retrier:
    """Counts one request's (or one download's) failures in a row and waits between tries."""

    def __init__(self, policy: RetryPolicy, outage: Outage, deadline: Deadline | None = None) -> None:
        self.policy = policy
        self.outage = outage
        self.deadline = deadline
        self.failures = 0
        self._progress_at = time.monotonic()

    def check(self, waiting_for: Callable[[], str]) -> None:
        """Raise DeadlineError once the deadline (if any) has passed."""
        if self.deadline is not None:
            self.deadline.check(waiting_for)

    def progressed(self) -> None:
        """The store gave something (an answer, bytes): the count starts over."""
        if self.failures:
            self.outage.answered()
        self.failures = 0
        self._progress_at = time.monotonic()

    def failed(self, e: LitesyncError) -> None:
        """Wait before the next try; raise ``e`` (made final) when no try is left."""
        if not e.retryable:
            raise e
        self.failures += 1
        stalled = time.monotonic() - self._progress_at
        if self.failures >= self.policy.attempts or stalled >= self.policy.patience:
            if self.policy.attempts <= 1:
                raise e  # not retried here: the caller's loop decides
            self.outage.over()
            raise ReplicaError(self.outage.replica, f"{_inner(e)}; gave up after {self.failures} failed attempts "
                                                    f"in {stalled:.0f}s") from e
        self.check(lambda: str(e))
        self.outage.failing(e, self.policy, self.deadline)
        delay = self.policy.delay(self.failures)
        if self.deadline is not None and self.deadline.left() < delay:
            time.sleep(max(0.0, self.deadline.left()))
            self.outage.over()
            raise self.deadline.error(str(e)) from e
        time.sleep(delay)

    def call(self, fn: Callable[[], T], what: str = "an answer") -> T:
        """Return ``fn()``, tried again after each retryable failure as the policy allows;
        ``what`` it asks for names it when the deadline passes first."""
        while True:
            self.check(lambda: f"replica {self.outage.replica}: {what}")
            try:
                value = fn()
            except LitesyncError as e:
                self.failed(e)
                continue
            self.progressed()
            return value


class RetriesRequests:
    """For a backend: the policy its reads and listings follow, and the one ``Outage`` they
    share (so that a store down is said once, whatever the number of requests waiting)."""

    name: str
    retry_policy: RetryPolicy = NO_RETRY
    deadline: Deadline | None = None
    _outage: Outage | None = None

    def set_retry(self, policy: RetryPolicy) -> None:
        if self._outage is None:  # made here, before requests run in threads
            self._outage = Outage(self.name)
        self.retry_policy = policy

    def set_deadline(self, deadline: Deadline | None) -> None:
        self.deadline = deadline

    def retrier(self) -> Retrier:
        """A new count of failures, for one request or one download."""
        if self._outage is None:
            self._outage = Outage(self.name)
        return Retrier(self.retry_policy, self._outage, self.deadline)


def _inner(e: LitesyncError) -> str:
    """The message of a replica error without its "replica NAME: " prefix (the new one adds it)."""
    text = str(e)
    prefix = f"replica {getattr(e, 'replica', '')}: "
    return text[len(prefix):] if text.startswith(prefix) else text


@dataclass
class Download:
    """One answer to a (ranged) GET: its body from the offset asked, and what it is of."""

    body: BinaryIO
    version: str  # ETag, file id: what a resumed read must find again
    size: int  # of the whole object


class ResumingReader(io.RawIOBase):
    """Reads an object, resuming from the byte reached when the body breaks.

    ``get(offset, version)`` returns a ``Download`` from ``offset``; with ``version``, it
    raises ``ObjectChangedError`` when the object is no longer that version.
    """

    def __init__(self, get: Callable[[int, str | None], Download], key: str, replica: str,
                 retrier: Retrier) -> None:
        super().__init__()
        self._get = get
        self.key = key
        self.replica = replica
        self._retrier = retrier
        first = retrier.call(lambda: get(0, None), f"read {key!r}")
        self._body: BinaryIO | None = first.body
        self.version = first.version
        self.size = first.size
        self.offset = 0
        self.resumed = 0  # how many times the download went on from where it broke

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        """Return up to ``n`` bytes (the rest when negative); b"" only at the object's end."""
        if n is None or n < 0:
            return self.readall()
        while True:
            if self.offset >= self.size or n == 0:
                return b""
            self._retrier.check(self._where)
            try:
                assert self._body is not None
                data = self._body.read(n)
            except LitesyncError:
                raise
            except Exception as e:  # a reset, timeout or short body mid-object
                error = TransientReplicaError(self.replica, f"read {self.key!r} at byte {self.offset} of "
                                                            f"{self.size}: {type(e).__name__}")
            else:
                if data:
                    self.offset += len(data)
                    self._retrier.progressed()
                    return data
                error = TransientReplicaError(self.replica, f"read {self.key!r}: the body ended at byte "
                                                            f"{self.offset} of {self.size}")
            self._resume(error)

    def _where(self) -> str:
        return f"replica {self.replica}: read {self.key!r} at byte {self.offset} of {self.size}"

    def _resume(self, error: LitesyncError) -> None:
        self._close_body()
        self._retrier.failed(error)
        while True:
            try:
                self._retrier.check(self._where)
                self._body = self._get(self.offset, self.version).body
                self.resumed += 1
                log.debug("%s: resumed %r at byte %d", self.replica, self.key, self.offset)
                return
            except LitesyncError as e:
                self._retrier.failed(e)

    def readall(self) -> bytes:
        out = bytearray()
        while piece := self.read(1 << 20):
            out += piece
        return bytes(out)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def _close_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # a broken connection's body
                pass
            self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()
