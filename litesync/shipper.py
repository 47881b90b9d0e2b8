"""Shipping spool objects to one replica, at that replica's own pace and position."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

from . import history, layout
from .engine import FATAL_CHANGES
from .errors import CorruptObjectError, LitesyncError, LocalWriteError
from .fsutil import same_file_system
from .logs import Labelled
from .replica.base import ReplicaClient
from .replica.check import check_stored
from .replica.file import makedirs_private
from .segment import concat_segments, split_segment
from .engine import Loop, Task
from .spool import Name, Spool, sort_key

log = logging.getLogger(__name__)

# Segments waiting in the spool go up together, as one object (see segment.concat_segments):
# under a fast writer one upload carries many commits, so the replica keeps up and the
# store sees few requests, while a lone commit still goes up at once.
MAX_BATCH_BYTES = 8 << 20
MAX_BATCH_PARTS = 1000


@dataclass
class ReplicaPosition:
    """Where a replica stands: the last object shipped to it (its sort key), and the next
    segment sequence expected."""

    key: tuple[int, int, int] | None = None
    next_seq: int = 0
    snapshot: str | None = None  # the key of the last snapshot shipped (the spool may drop it)

    @property
    def generation(self) -> int | None:
        return None if self.key is None else self.key[0]


def batch_after(objects: list[tuple[Name, int]], first: layout.SegmentName, max_bytes: int = MAX_BATCH_BYTES,
                max_parts: int = MAX_BATCH_PARTS) -> list[layout.SegmentName]:
    """The segments to ship as one object, starting with ``first`` (pure): those that follow
    it without a gap or a snapshot in between, within the size and count bounds."""
    run = [first]
    size = dict(objects)[first]
    snaps = {(n.generation, n.seq) for n, _ in objects if isinstance(n, layout.SnapshotName)}
    for n, s in objects:
        if not isinstance(n, layout.SegmentName) or sort_key(n) <= sort_key(run[-1]):
            continue
        if (n.generation != first.generation or n.first_seq != run[-1].last_seq + 1
                or (n.generation, n.first_seq) in snaps or len(run) >= max_parts or size + s > max_bytes):
            break
        run.append(n)
        size += s
    return run


def choose_next(objects: list[tuple[Name, int]], pos: ReplicaPosition) -> tuple[Name | None, bool]:
    """Return (next object to ship or None, whether a fresh snapshot is needed) (pure)."""
    if not objects:
        return None, False
    snaps = [n for n, _ in objects if isinstance(n, layout.SnapshotName)]
    if pos.key is None:
        if not snaps:
            return None, True
        newest_gen = max(n.generation for n in snaps)
        return max((n for n in snaps if n.generation == newest_gen), key=lambda n: n.seq), False
    gen = pos.key[0]  # pos.generation, narrowed to an int by the test above
    later = [n for n, _ in objects if sort_key(n) > pos.key]
    same = [n for n in later if n.generation == gen]
    for n in same:
        if isinstance(n, layout.SnapshotName) and n.seq == pos.next_seq:
            return n, False
        if isinstance(n, layout.SegmentName) and n.first_seq == pos.next_seq:
            return n, False
    # The segment we need is not in the spool. A snapshot is only taken once every segment
    # before it was written, so a later snapshot means ours was dropped: jump to it.
    jump = [n for n in same if isinstance(n, layout.SnapshotName) and n.seq > pos.next_seq]
    if jump:
        return min(jump, key=lambda n: n.seq), False
    gap = any(isinstance(n, layout.SegmentName) and n.first_seq > pos.next_seq for n in same)
    newer = sorted({n.generation for n in snaps if n.generation > gen})
    if newer:
        first = min((n for n in snaps if n.generation == newer[0]), key=lambda n: n.seq)
        return first, False
    # Only a snapshot of the current generation can bridge a gap in it.
    return None, gap


def unshipped(objects: list[tuple[Name, int]], pos: ReplicaPosition) -> list[tuple[Name, int]]:
    """Return the spool objects a replica at ``pos`` has yet to receive (pure)."""
    if pos.key is None:
        first, _ = choose_next(objects, pos)
        if first is None:
            return []
        return [(n, s) for n, s in objects if sort_key(n) >= sort_key(first)]
    return [(n, s) for n, s in objects if sort_key(n) > pos.key]


def object_time(name: Name) -> float:
    """Return when an object's content was committed: a segment's last commit, a snapshot's creation."""
    ms = name.created_ms if isinstance(name, layout.SnapshotName) else name.last_commit_ms
    return ms / 1000


class Shipper:
    """Uploads spool objects to one replica in order; retries forever with backoff.

    Its work is ``step``, a turn of the engine (see engine.py): the runner gives it to the
    scheduler with ``attach``; ``start`` runs it on a thread of its own instead.

    The position is saved with ``destination`` (where the replica writes): a position saved
    for another destination, under the same replica name, is not this replica's.
    """

    def __init__(self, spool: Spool, client: ReplicaClient, state_path: str, *, db: str, replica: str,
                 request_snapshot: threading.Event, sync_interval: float = 0.0,
                 destination: str | None = None, newer_generation: Callable[[int], None] | None = None,
                 db_id: str | None = None) -> None:
        self.log = Labelled(log, db, replica)
        self.db_id = db_id  # a replica whose newest generation is another database's is refused
        self.label = self.log.label
        self.spool = spool
        self.client = client
        self.state_path = state_path
        self.replica = replica
        self.destination = destination
        self.request_snapshot = request_snapshot
        # Told of a generation on the replica newer than the one to ship (see _replica_is_ahead).
        self.newer_generation = newer_generation
        self._generations_checked: set[int] = set()
        self._replica_checked = False  # listed before this process's first upload
        self._outbid_by: int | None = None  # the replica's generation this agent was asked to pass
        self._outbid_at = 0.0  # when (wall clock)
        self.sync_interval = sync_interval
        self._uploaded_mono: float | None = None  # when the last upload ended (monotonic clock)
        self.stop_event = threading.Event()
        self.pos = self._load()
        self._state_len: int | None = None  # of the position file, once known
        self.status = "pending"
        self.last_error: str | None = None
        self._fatal: LitesyncError | None = None
        self.uploaded_objects = 0
        self.uploaded_snapshots: set[str] = set()  # keys of the snapshots this process uploaded
        self.uploaded_bytes = 0
        self.last_upload_at: float | None = None
        self.last_snapshot_at: float | None = None  # creation time of the last snapshot shipped
        self.errors = 0  # failed attempts, retried or not
        self.retries = 0  # attempts made again after a failure
        self.idle = threading.Event()
        # The first listing is done: it succeeded, or failed in a way a retry may cure (the
        # replica then catches up from the spool); not set on a configuration error.
        self.checked = threading.Event()
        self._caught_up_once = False
        self.awaiting_snapshot = False  # the spool lacks the snapshot this replica needs next
        # (position, snapshots the spool had received) when a snapshot was last asked for
        self._asked_at: tuple[ReplicaPosition, int] | None = None
        self._task: Task | Loop | None = None
        self.after_upload: Callable[[], None] | None = None  # told after each upload (the maintainer)
        self._probed = False  # the replica was looked at (see _probe)
        self._backoff = 0.0  # seconds of the last backoff (0: the last try succeeded)
        self._drained = False  # the last turn found nothing to ship
        self._retry_at = 0.0  # monotonic time before which no turn tries again after a failure
        self._failing_since: float | None = None  # monotonic time of the first failure since caught up

    @property
    def fatal(self) -> LitesyncError | None:
        """A configuration error found before shipping began."""
        return self._fatal

    @fatal.setter
    def fatal(self, e: LitesyncError | None) -> None:
        self._fatal = e
        FATAL_CHANGES.note()

    def _load(self) -> ReplicaPosition:
        try:
            with open(self.state_path) as f:
                d = json.load(f)
            # Files written before the destination was saved have none: taken as this one.
            if d.get("destination", self.destination) != self.destination:
                self.log.info("the replica moved (was %s); shipping from the newest snapshot", d["destination"])
                return ReplicaPosition()
            return ReplicaPosition(tuple(d["key"]) if d.get("key") else None, int(d["next_seq"]), d.get("snapshot"))
        except FileNotFoundError:
            return ReplicaPosition()
        except (ValueError, KeyError, TypeError) as e:
            self.log.warning("ignoring unreadable position file %s (%s); shipping from the newest snapshot",
                             self.state_path, e)
            return ReplicaPosition()

    def _save(self, pos: ReplicaPosition) -> None:
        data = json.dumps({"key": list(pos.key) if pos.key else None, "next_seq": pos.next_seq,
                           "snapshot": pos.snapshot, "destination": self.destination}).encode()
        # Written in place (one small write, padded to the previous length) and not fsynced:
        # after a machine crash an older or unreadable position only means objects are
        # shipped again, or, when the spool no longer has them, that the replica gets a new
        # snapshot. In place, because a new file per upload costs an inode allocation.
        # Opened for each write: an agent of thousands of databases keeps no descriptor each.
        if self._state_len is None:
            makedirs_private(os.path.dirname(self.state_path))
        fd = os.open(self.state_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if self._state_len is None:
                self._state_len = os.fstat(fd).st_size
            data = data.ljust(self._state_len)
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
        self._state_len = max(self._state_len, len(data))

    def done_with(self, name: Name) -> bool:
        """True when this replica no longer needs ``name`` from the spool."""
        return self.pos.key is not None and sort_key(name) <= self.pos.key

    def will_never_ship(self, name: Name) -> bool:
        """True for ``name`` of a generation this replica was outbid on: held back for the
        rest of the process (see ``_replica_is_ahead``)."""
        return self._outbid_by is not None and name.generation <= self._outbid_by

    def awaiting_generation(self, objects: list[tuple[Name, int]]) -> bool:
        """Outbid, and the agent's generation after the replica's is not in the spool yet
        (the outbid history was dropped from it: an empty spool is then no "up to date")."""
        if self._outbid_by is None or (self.pos.generation is not None and self.pos.generation > self._outbid_by):
            return False
        return not self._generation_after_outbid(objects)

    def _generation_after_outbid(self, objects: list[tuple[Name, int]]) -> bool:
        """Whether ``objects`` hold a snapshot of a generation after the one outbidding this replica."""
        assert self._outbid_by is not None
        return any(isinstance(n, layout.SnapshotName) and n.generation > self._outbid_by for n, _ in objects)

    def pending(self) -> bool:
        objects = self.spool.objects()
        name, need_snapshot = choose_next(objects, self.pos)
        return name is not None or need_snapshot or self.awaiting_generation(objects)

    def needs_snapshot(self) -> bool:
        """True when this replica can only go on from a snapshot the spool does not hold."""
        return choose_next(self.spool.objects(), self.pos)[1]

    def ship_one(self) -> bool:
        """Ship the next object if there is one; return whether something was shipped (or
        the spool changed under the upload: the next turn comes at once either way)."""
        objects = self.spool.objects()
        name, need_snapshot = choose_next(objects, self.pos)
        self.awaiting_snapshot = (name is None and need_snapshot) or self.awaiting_generation(objects)
        if name is None:
            if need_snapshot:
                self._ask_for_snapshot()
            return False
        if self._replica_is_ahead(name):
            self.awaiting_snapshot = True
            return False
        try:
            shipped = self._ship(name)
        except FileNotFoundError as e:
            if not self._dropped_meanwhile(e):
                raise
            # The spool bound dropped it before it was read: the next turn takes another way.
            self.log.debug("%s: dropped from the spool before it was shipped", e.filename)
            return True
        if shipped is None:
            return True
        new_pos, size = shipped
        # Saved before self.pos moves: the spool drops what self.pos says is shipped.
        self._save(new_pos)
        self.pos = new_pos
        self.uploaded_objects += 1
        self.uploaded_bytes += size
        self.last_upload_at = time.time()
        self._uploaded_mono = time.monotonic()
        if isinstance(name, layout.SnapshotName):
            self.last_snapshot_at = object_time(name)
        if self.after_upload is not None:
            self.after_upload()
        return True

    def _dropped_meanwhile(self, e: FileNotFoundError) -> bool:
        """True when ``e`` is about a spool object the spool no longer holds."""
        path = str(e.filename or "")
        if not path.startswith(self.spool.root + os.sep):
            return False  # the replica's side
        return path not in {self.spool.path(n) for n, _ in self.spool.objects()}

    def _ship(self, name: Name) -> tuple[ReplicaPosition, int] | None:
        """Upload ``name`` (a segment with those that follow it); return the position after
        it and the bytes uploaded, None when nothing went up (a damaged spool object)."""
        if isinstance(name, layout.SnapshotName):
            size = self._upload(name)
            self.uploaded_snapshots.add(name.key)
            return ReplicaPosition(sort_key(name), name.seq, name.key), size
        run = batch_after(self.spool.objects(), name)
        if len(run) == 1:
            size = self._upload(name)
        else:
            run, size = self._upload_batch(run)
            if not run:
                return None
        return ReplicaPosition(sort_key(run[-1]), run[-1].last_seq + 1, self.pos.snapshot), size

    def _replica_is_ahead(self, name: Name) -> bool:
        """True when the replica holds history this agent's would not follow: the agent is
        then asked for a generation after it, and ``name`` is held back.

        Ids order history, and a restore takes the greatest; the agent keeps its own ids
        growing, but only the replica knows the ids written by a host whose clock ran ahead,
        or before the state directory was lost; and only the replica shows that this host
        was rolled back (a VM snapshot restored): it holds later objects of the generation
        being resumed than the spool ever had, or others under the same sequence. Checked
        before the first upload of each process and of each new generation. Asked once per
        process: two agents writing to one replica would otherwise outbid each other for ever.
        """
        if self.newer_generation is None:
            return False
        if self._outbid_by is not None:
            if name.generation > self._outbid_by:
                return False
            if self._generation_after_outbid(self.spool.objects()):
                self.pos = ReplicaPosition()  # the agent's new generation is here: ship from its snapshot
            else:
                self.newer_generation(self._outbid_by)  # again: the agent may have failed once
            return True
        first = not self._replica_checked
        new_generation = isinstance(name, layout.SnapshotName) and name.generation != self.pos.generation
        if not first and (not new_generation or name.generation in self._generations_checked):
            return False
        cat = history.catalog(self.client.list(layout.GENERATIONS + "/"))
        self._replica_checked = True
        self._generations_checked.add(name.generation)
        reason = self._newer_generation_reason(cat, name.generation) or self._diverged_reason(cat, name)
        if reason is None:
            return False
        ahead, why = reason
        self.log.warning("%s; starting a new generation after %s", why, layout.format_generation(ahead))
        self._outbid_by = ahead
        self._outbid_at = time.time()
        self.newer_generation(ahead)
        return True

    def _newer_generation_reason(self, cat: history.Catalog, generation: int) -> tuple[int, str] | None:
        """(generation, why) when the replica holds a generation newer than ``generation``."""
        # Never dismissed as "from the future": this clock may be the wrong one, and a
        # restore takes the greatest id whatever this host thinks of it.
        newest = max((g for g, objects in cat.generations.items() if objects.snapshots), default=0)
        if newest <= generation:
            return None
        return newest, (f"the replica holds generation {layout.format_generation(newest)}, newer than this "
                        f"database's {layout.format_generation(generation)} (written by a clock ahead of this "
                        "one, or before the state directory was lost)")

    def _diverged_reason(self, cat: history.Catalog, name: Name) -> tuple[int, str] | None:
        """(generation, why) when the replica holds segments of ``name``'s generation, from
        where this replica's shipping goes on, that the spool does not know: another history
        under the same names (this host rolled back, or a second agent)."""
        gen = name.generation
        objects = [n for n, _ in self.spool.objects() if n.generation == gen]
        spooled = {n.last_seq: n.last_commit_ms for n in objects if isinstance(n, layout.SegmentName)}
        snapshots = {n.key for n in objects if isinstance(n, layout.SnapshotName)} | {self.pos.snapshot}
        start = name.seq if isinstance(name, layout.SnapshotName) else name.first_seq
        # Shipping is in order, and the spool keeps what this replica has not been told is
        # shipped: an object from ``start`` on that the spool does not hold came from
        # elsewhere; but for the snapshot at ``start`` that the position records shipping.
        held = cat.generations.get(gen)
        if held is None:
            return None
        foreign: list[Name] = [s for s, _ in held.snapshots if s.seq >= start and s.key not in snapshots]
        foreign += [s for s, _ in held.segments if s.last_seq >= start and spooled.get(s.last_seq) != s.last_commit_ms]
        if not foreign:
            return None
        return gen, (f"the replica holds {foreign[0].key}, which this agent did not write (the host was "
                     "rolled back, or another agent writes here)")

    def _ask_for_snapshot(self) -> None:
        """Ask the agent for a snapshot, once per position that needs one and snapshot it took."""
        # Asking again while the agent takes it would make it take a second one: the spool
        # changes meanwhile (the agent copies the WAL before a snapshot), the need does not.
        # A snapshot taken since that does not serve (gone from the spool before this
        # replica reached it) is a reason to ask again, or the replica would wait for ever.
        asked = (self.pos, self.spool.snapshots_published)
        if self._asked_at != asked:
            self._asked_at = asked
            self.request_snapshot.set()

    def _upload(self, name: Name) -> int:
        return self.client.write_file(name.key, self.spool.path(name))

    def _upload_batch(self, run: list[layout.SegmentName]) -> tuple[list[layout.SegmentName], int]:
        """Upload ``run`` (or its undamaged start) as one segment covering its sequence
        numbers; return what was shipped and its size."""
        parts = []
        for i, n in enumerate(run):
            path = self.spool.path(n)
            with open(path, "rb") as f:
                data = f.read()
            try:
                header, body = split_segment(data, path)
            except CorruptObjectError as e:
                if i:
                    run = run[:i]  # ship what is sound; the damaged one comes first next time
                    break
                # Never ship what is known to be damaged: drop it, bridge the gap with a snapshot.
                self.log.error("damaged spool object, dropped; a new snapshot will bridge the gap: %s", e)
                self.spool.delete([n])
                self.request_snapshot.set()
                return [], 0
            parts.append((path, header, body))
        buf = io.BytesIO()
        header, size = concat_segments(parts, buf)
        name = layout.SegmentName(header.generation, header.first_seq, header.last_seq, header.last_commit_ms)
        buf.seek(0)
        self.client.write(name.key, buf, size)
        return run, size

    def report(self, now: float) -> dict:
        """Return this replica's state for ``litesync status`` and the metrics (see status.py)."""
        pos = self.pos
        objects = self.spool.objects()
        waiting = unshipped(objects, pos)
        oldest = min((object_time(n) for n, _ in waiting), default=None)
        awaiting = self.awaiting_generation(objects)
        if awaiting:  # the replica lacks what was committed since the outbid, at least
            oldest = self._outbid_at if oldest is None else min(oldest, self._outbid_at)
        return {
            # "completed" is the last turn's verdict: with objects waiting since, it is not.
            "name": self.replica,
            "state": "pending" if self.status == "completed" and (waiting or awaiting) else self.status,
            "last_error": self.last_error,
            "lag_seconds": round(max(0.0, now - oldest), 3) if oldest is not None else 0.0,
            "lag_bytes": sum(size for _, size in waiting),
            "generation": layout.format_generation(pos.generation) if pos.generation is not None else None,
            "next_seq": pos.next_seq, "last_snapshot_at": self.last_snapshot_at,
            "last_upload_at": self.last_upload_at, "uploaded_objects": self.uploaded_objects,
            "uploaded_bytes": self.uploaded_bytes, "errors": self.errors, "retries": self.retries,
        }

    def _probe(self) -> float | None:
        """Look at the replica once before shipping, so that a configuration error (credentials,
        bucket, encryption or a database that does not match what is stored) shows at once.
        Return the delay before looking again, None when done (looked, or failed for good: ``fatal``)."""
        try:
            check_stored(self.client, self.db_id)
        except (LitesyncError, OSError) as e:
            if not getattr(e, "retryable", True):  # an OSError may pass: the next try tells
                self.errors += 1
                # Fatal: the command stops and prints it as its one error line (fatal_errors).
                self.log.debug("%s", e)
                self.status, self.last_error, self.fatal = "failed", str(e), e  # type: ignore[assignment]
                return None
            self.log.warning("%s (retrying)", e)
            self.checked.set()
            return self._failed(e)
        self._probed = True
        self._backoff = 0.0
        self.checked.set()
        return None

    def _failed(self, e: Exception, line: str | None = None) -> float:
        """Count a failed try (``line`` the status's reason, else ``e``); return the delay
        before the next one, before which turns do nothing: the error's own pace if it has
        one (a local disk), else 0.5 s, doubling up to 30 s, times 0.5 to 1."""
        self.errors += 1
        self.retries += 1
        self.status, self.last_error = "failed", line or str(e)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        interval = e.retry_interval if isinstance(e, LitesyncError) else None
        if interval is not None:
            delay = interval
        else:
            self._backoff = min(max(self._backoff * 2, 0.5), 30.0)
            delay = self._backoff * random.uniform(0.5, 1.0)
        self._retry_at = time.monotonic() + delay
        return delay

    def _paused_line(self, e: LocalWriteError) -> str:
        """The one line said when the replica's directory refuses writes: where, why, and
        what happens meanwhile."""
        where = ("the spool keeps what is not shipped, on the same disk" if same_file_system(self.spool.root, e.path)
                 else "the application is not affected; the spool keeps what is not shipped")
        return f"{e}; shipping paused, retrying every {e.retry_interval:g}s ({where})"

    def step(self) -> float | None:
        """One turn: ship the next object (or batch). Return the delay before the next turn,
        None to wait until the spool changes (or a wake)."""
        if self.stop_event.is_set() or self.fatal is not None:
            return None
        wait = self._retry_at - time.monotonic()
        if wait > 0:  # after a failure, spool changes do not bring the next try closer
            return wait
        if not self._probed:
            retry = self._probe()
            if retry is not None or self.fatal is not None:
                return retry
        # What arrives after a quiet spell goes up at once; while commits keep coming,
        # uploads start at most every sync_interval (each carries all that waited).
        if self._drained and self.sync_interval and self._uploaded_mono is not None:
            wait = self._uploaded_mono + self.sync_interval - time.monotonic()
            if wait > 0:
                return wait
        try:
            shipped = self.ship_one()
        except LocalWriteError as e:
            # Said once, not at each try: the line names the directory, not the object.
            line = self._paused_line(e)
            if line != self.last_error:
                self.log.error("%s", line)
            self.log.debug("could not write %s: %s", e.key, e.__cause__)
            self.idle.clear()
            return self._failed(e, line)
        except (LitesyncError, OSError) as e:
            if str(e) != self.last_error:
                self.log.error("%s (retrying)", e)
            self.idle.clear()
            return self._failed(e)
        # Not up to date while the replica waits for a snapshot the agent is asked for.
        caught_up = not shipped and not self.awaiting_snapshot
        if self.status != "completed" and caught_up:
            # Said once when the replica first catches up or recovers; then only in debug.
            if self._failing_since is not None:
                self.log.info("up to date (shipping failed for %.1fs)", time.monotonic() - self._failing_since)
            elif not self._caught_up_once:
                self.log.info("up to date")
            else:
                self.log.debug("up to date")
            self._caught_up_once = True
            self._failing_since = None
        self.status = "completed" if caught_up else "pending"
        self.last_error = None
        self._backoff = 0.0
        self._drained = not shipped
        if shipped:
            self.idle.clear()
            return 0.0
        self.idle.set()
        # Waiting for the agent (a snapshot asked for, a generation after the replica's):
        # the spool changes when it comes; looked at again now and then all the same.
        return 1.0 if self.awaiting_snapshot or self._outbid_by is not None else None

    def attach(self, task: Task) -> None:
        """Run as ``task`` of the engine: woken whenever the spool changes."""
        self._task = task
        self.spool.listen(task.wake)

    def start(self) -> None:
        """Run on a thread of its own (without the engine)."""
        self.attach(Loop(self.step, f"ship {self.label}").start())  # type: ignore[arg-type]

    def is_alive(self) -> bool:
        """True while the task runs (until ``stop``)."""
        return self._task is not None and self._task.active

    def join(self, timeout: float | None = None) -> None:
        """Wait for the turn under way to end (after ``stop``)."""
        if self._task is not None:
            self._task.join(timeout)

    def stop(self) -> None:
        self.stop_event.set()
        if self._task is not None:
            self.spool.unlisten(self._task.wake)
            self._task.cancel()
