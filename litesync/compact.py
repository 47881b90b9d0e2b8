"""Compaction and retention on a replica: merge runs of segments into one, delete what no
restore inside the retention window needs. One ``Maintainer`` thread per replica."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from typing import BinaryIO, Callable

from . import history, layout
from .errors import ChainError, CorruptObjectError, ForeignDatabaseError, LitesyncError
from .engine import Loop, Task
from .logs import Labelled
from .replica.base import ReplicaClient
from .restore import PageBatch, check_db_id, snapshot_fault
from .segment import (SEGMENT_MERGED, TX_CHECKSUM_KNOWN, SegmentHeader, SegmentReader, SegmentWriter, TxInfo,
                      common_db_id)

log = logging.getLogger(__name__)

IDLE_LOOK = 3600.0  # seconds between retention rounds on a replica nothing is shipped to


def merge_segments(client: ReplicaClient, names: list[layout.SegmentName], out: BinaryIO, work_dir: str | None = None,
                   db_id: str | None = None) -> tuple[layout.SegmentName, int]:
    """Write to ``out`` one segment equal to applying ``names`` in order; return its name and size.
    Every part must belong to database ``db_id`` (None: to one database).

    The result holds two transactions: the smallest database size reached inside the run
    (no pages: a restore truncates to it, as replaying the run would) and then the latest
    version of every page still in the database, with the run's final size and checksum.
    Both carry the run's last commit time, so a point-in-time restore takes all or none.
    """
    if len(names) < 2:
        raise ValueError("a merge needs at least two segments")
    first: SegmentHeader | None = None
    last: SegmentHeader | None = None
    batch: PageBatch | None = None
    ids: list[tuple[str, str | None]] = []
    try:
        expected_seq = names[0].first_seq
        for name in names:
            with client.open(name.key) as f:
                seg = SegmentReader(f, name.key)
                h = seg.header
                check_db_id(name.key, h.db_id, db_id)
                ids.append((name.key, h.db_id))
                if first is None:
                    first = h
                    batch = PageBatch(h.page_size, work_dir=work_dir)
                elif h.page_size != first.page_size:
                    raise CorruptObjectError(name.key, f"page size {h.page_size} != {first.page_size}")
                elif h.prev_link != last.end_link:  # type: ignore[union-attr]
                    raise ChainError(f"{name.key}: does not follow the previous segment")
                if (h.generation, h.first_seq, h.last_seq) != (name.generation, name.first_seq, name.last_seq) \
                        or h.first_seq != expected_seq:
                    raise CorruptObjectError(name.key, f"header names generation {h.generation:016x} "
                                                       f"seq {h.first_seq}..{h.last_seq}")
                assert batch is not None
                cur = 0
                for i, pgno, data in seg.pages():
                    while cur < i:
                        batch.set_size(h.txs[cur].db_size)
                        cur += 1
                    batch.write(pgno, data)
                while cur < len(h.txs):
                    batch.set_size(h.txs[cur].db_size)
                    cur += 1
                seg.finish()
                last = h
                expected_seq = h.last_seq + 1
        assert first is not None and last is not None and batch is not None and batch.low is not None
        final = last.txs[-1]
        commit_ms = final.commit_ms
        txs = (TxInfo(commit_ms, batch.low, 0, 0, 0),
               TxInfo(commit_ms, final.db_size, batch.count, final.db_checksum, final.flags & TX_CHECKSUM_KNOWN))
        header = SegmentHeader(first.page_size, first.generation, first.first_seq, last.last_seq, first.prev_link,
                               last.end_link, last.wal, first.wal_first_frame, txs, SEGMENT_MERGED,
                               db_id=common_db_id(ids))
        w = SegmentWriter(out, header)
        for p in batch.page_numbers():
            w.add_page(p, batch.page(p))
        size = w.close()
    finally:
        if batch is not None:
            batch.close()
    return layout.SegmentName(first.generation, first.first_seq, last.last_seq, commit_ms), size


class Maintainer:
    """Compacts and applies retention on one replica, on a schedule: its work is ``step``,
    a turn of the engine (``attach``), or of a thread of its own (``start``)."""

    def __init__(self, client: ReplicaClient, *, db: str, replica: str, retention: float | None,
                 compaction: tuple[float, ...], interval: float, work_dir: str,
                 activity: Callable[[], int] = lambda: 0, grace: float | None = None, tick: float | None = None,
                 clock: Callable[[], float] = time.time, written: Callable[[str], bool] = lambda key: False,
                 current_generation: Callable[[], int | None] = lambda: None, db_id: str | None = None) -> None:
        self.log = Labelled(log, db, replica)
        self.client = client
        self.retention = retention
        self.compaction = compaction
        self.interval = interval
        self.work_dir = work_dir
        self.activity = activity  # a counter that changes when something was shipped
        self.tick = min(1.0, interval) if tick is None else tick  # how often activity is looked at
        self.grace = interval if grace is None else grace
        self.clock = clock
        self.stop_event = threading.Event()
        self._doomed: dict[str, float] = {}  # key -> when first found deletable
        self.written = written  # keys this process uploaded: sound without a download
        self.current_generation = current_generation  # never deleted
        self.db_id = db_id  # objects of another database are never taken as this one's
        self._unmergeable: set[str] = set()  # first keys of runs a merge failed on, for good
        self._checked: dict[str, str | None] = {}  # snapshot key -> why it is unsound (None: sound)
        self.unsound: list[str] = []  # "key: why" of snapshots retention found unsound, for status
        self.stats = {"rounds": 0, "compactions": 0, "compacted_segments": 0, "deleted": 0, "errors": 0,
                      "unsound_objects": 0}
        self.last_error: str | None = None
        self._seen = activity()
        self._shipped_at: float | None = None  # when the activity counter last moved (clock time)
        self._last_round = clock()
        self._task: Task | Loop | None = None
        self._woken_on_activity = False  # told of each upload (attach): no need to look every tick

    def step(self) -> float | None:
        """One turn. Compaction rides on shipping: a round that compacts starts when the
        shipper has just uploaded (within a tick) and the previous round is ``interval``
        old, so the requests it makes come while the database is being written, never after
        it falls quiet. A quiet replica gets retention alone: each interval while deletions
        wait out their grace period, otherwise once an hour (one listing). Return the delay
        before the next turn: a tick; attached to the engine, which wakes it on every
        upload, until the next round could be due."""
        if self.stop_event.is_set():
            return None
        now = self.clock()
        act = self.activity()
        if act != self._seen:
            self._seen, self._shipped_at = act, now
        since = now - self._last_round
        just_shipped = self._shipped_at is not None and now - self._shipped_at <= self.tick
        quiet_round = self.interval if self._doomed else max(self.interval, IDLE_LOOK)
        if not (since >= quiet_round or (just_shipped and since >= self.interval)):
            if not self._woken_on_activity:
                return self.tick
            return self.interval - since if just_shipped and since < self.interval else quiet_round - since
        self._last_round = now
        try:
            self.run_once(compact=just_shipped)
            self.last_error = None
            self.stats["rounds"] += 1
        except (LitesyncError, OSError) as e:
            self.stats["errors"] += 1
            if str(e) != self.last_error:
                self.log.error("maintenance: %s (will retry)", e)
            self.last_error = str(e)
        if not self._woken_on_activity:
            return self.tick
        return self.interval if self._doomed else max(self.interval, IDLE_LOOK)

    def attach(self, task: Task) -> None:
        """Run as ``task`` of the engine; the owner wakes it after each upload."""
        self._task = task
        self._woken_on_activity = True

    def wake(self) -> None:
        if self._task is not None:
            self._task.wake()

    def start(self) -> None:
        """Run on a thread of its own (without the engine), looking at the activity every tick."""
        self._task = Loop(self.step, f"maintain {self.log.label}").start()

    def is_alive(self) -> bool:
        return self._task is not None and self._task.active

    def join(self, timeout: float | None = None) -> None:
        if self._task is not None:
            self._task.join(timeout)

    def run_once(self, compact: bool = True) -> bool:
        """One round: compact every closed window at every level (unless ``compact`` is
        false), then retention; return whether anything changed."""
        changed = False
        for window in self.compaction if compact else ():
            now = int(self.clock() * 1000)
            cat = history.catalog(self.client.list(layout.GENERATIONS + "/"))
            for run in history.compaction_runs(cat, now, int(window * 1000)):
                if self.stop_event.is_set():
                    return changed
                if run[0].key in self._unmergeable:
                    continue
                try:
                    self.compact(run)
                    changed = True
                except (CorruptObjectError, ChainError, ForeignDatabaseError) as e:
                    # An object that is not what its name says (a stray, a damaged or foreign
                    # one) stays as it is, and is reported; the rest of the round goes on.
                    self._unmergeable.add(run[0].key)
                    self._report_unsound(str(e))
                    self.log.warning("compaction: %s; that run is left as it is", e)
        if self.retention is not None:
            changed = self.apply_retention() > 0 or changed
        return changed

    def compact(self, run: list[layout.SegmentName]) -> layout.SegmentName:
        t0 = time.monotonic()
        with tempfile.TemporaryFile(dir=self.work_dir) as out:
            name, size = merge_segments(self.client, run, out, self.work_dir, self.db_id)
            out.seek(0)
            self.client.write(name.key, out, size)
        self.stats["compactions"] += 1
        self.stats["compacted_segments"] += len(run)
        self.log.debug("compacted %d segments into %s (%d bytes, %.2fs)", len(run), name.key, size,
                       time.monotonic() - t0)
        return name

    def apply_retention(self) -> int:
        """Delete what retention allows once it has been unneeded for the grace period."""
        now = self.clock()
        cat = history.catalog(self.client.list(layout.GENERATIONS + "/"))
        unneeded = set(history.retention_deletes(cat, int(now * 1000), int(self.retention * 1000),  # type: ignore[operator]
                                                 usable=self._sound, keep_generation=self.current_generation()))
        self._doomed = {k: self._doomed.get(k, now) for k in unneeded}
        # A restore or follower may have planned with these a moment ago: let it finish.
        ripe = sorted(k for k, t in self._doomed.items() if now - t >= self.grace)
        if ripe:
            self.client.delete(ripe)
            for k in ripe:
                del self._doomed[k]
            self.stats["deleted"] += len(ripe)
            self.log.info("retention deleted %d objects", len(ripe))
        return len(ripe)

    def _sound(self, name: layout.SnapshotName) -> bool:
        """Whether snapshot ``name`` may stand as the state everything before it is deleted
        for: this process uploaded it, or it reads back whole (header, every page, the
        trailer's digest; an encrypted replica's authentication) as what its name says."""
        key = name.key
        if self.written(key):
            return True
        if key not in self._checked:
            # Every generation this agent writes carries its id: a newer one without is not its own.
            current = self.current_generation()
            newer = current is not None and name.generation > current
            self._checked[key] = why = snapshot_fault(self.client, name, self.db_id, require_id=newer)
            if why is not None:
                self._report_unsound(f"{key}: {why}")
                self.log.warning("retention: %s is unsound (%s); left alone, and not taken as a state to keep",
                                 key, why)
        return self._checked[key] is None

    def _report_unsound(self, what: str) -> None:
        self.stats["unsound_objects"] += 1
        self.unsound.append(what)

    def stop(self) -> None:
        self.stop_event.set()
        if self._task is not None:
            self._task.cancel()
