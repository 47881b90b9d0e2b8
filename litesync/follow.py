"""Follow mode: restore a database, then keep applying new segments to it in place, while
other processes read it.

The output is an ordinary SQLite database in rollback-journal mode (not WAL), updated the
way SQLite itself commits a transaction in that mode (sqlite.org/lockingv3.html,
fileformat2.html), so that readers get SQLite's own guarantees:

1. New segments are downloaded, verified link by link and checksum by checksum, and
   reduced to their net effect (``PageBatch``) in a temp file. Nothing is locked yet.
2. The original content of every page the update changes is written to ``OUT-journal``
   behind a zeroed header (a journal whose first byte is zero is not hot) and synced.
3. The state file records the positions before and after the update.
4. Holding SQLite's EXCLUSIVE lock, taken through SQLite (``BEGIN EXCLUSIVE`` on an apsw
   connection), the journal header is written and synced (the journal is now hot), the
   pages are written with page 1's change counter bumped (so readers drop their cache),
   the file is synced, and the journal is deleted: that is the commit. Then the lock is
   released. Readers wait (SQLITE_BUSY, covered by a busy timeout) only during step 4.

After ``kill -9`` at any point the output is the old state or the new one: a hot journal
left behind is rolled back by the next connection that may write (the resumed follower,
or any reader that did not open the file read-only); a connection opened read-only gets
SQLITE_READONLY_ROLLBACK until then, never a torn page. On resume the follower checks the
file against the two positions of the state file and continues from the one it matches,
or starts over from a snapshot in place.

POSIX locks belong to a process: closing any descriptor of the output would drop the
locks SQLite holds on it, so the follower opens it once, for its whole life.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import logging
import os
import random
import threading
import time
from array import array
from typing import Callable, Iterator, Sequence

import apsw

from . import history, journal, layout
from .dbhash import DbHash, page_hash
from .errors import ChainError, CorruptObjectError, LitesyncError, OutputExistsError, RestoreError, UsageError
from .fetch import Fetcher, ObjectCache
from .replica.base import ReplicaClient
from .replica.file import atomic_file, fsync_dir
from .replica.resume import policy_for
from .restore import ChainPosition, PageBatch, Result, apply_segment, load_snapshot, open_snapshot, restore_any

log = logging.getLogger(__name__)

STATE_SUFFIX = "-litesync-follow.json"
LOCK_SUFFIX = "-litesync-follow.lock"
BATCH_BYTES = 64 << 20  # compressed segment bytes applied in one update, at most
BATCH_SEGMENTS = 1000
_READ_PAGES = 256


class Stopped(Exception):
    """The follower was asked to stop while it waited."""


def _page_size(header: bytes) -> int:
    ps = int.from_bytes(header[16:18], "big")
    return 65536 if ps == 1 else ps


def is_rollback_database(path: str) -> bool:
    """True when ``path`` is a SQLite database in rollback-journal mode (a follower's output)."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError:
        return False
    return len(head) == 100 and head.startswith(b"SQLite format 3\0") and head[18] == journal.ROLLBACK_MODE


class LiveDatabase:
    """The follower's output: a rollback-journal database updated in place (see module doc)."""

    def __init__(self, path: str, *, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.path = os.path.abspath(path)
        self.journal_path = self.path + "-journal"
        self.should_stop = should_stop
        self.fd = os.open(self.path, os.O_RDWR)  # for the process lifetime (see module doc)
        try:
            self.page_size = _page_size(os.pread(self.fd, 100, 0))
            self.conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READWRITE)
            self.conn.setbusytimeout(500)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        self.conn.close()
        os.close(self.fd)  # after SQLite let go of its locks

    @property
    def pages(self) -> int:
        return os.fstat(self.fd).st_size // self.page_size

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        """Hold SQLite's EXCLUSIVE (or SHARED) lock on the output, waiting for readers as long
        as they need. Taking it rolls back a hot journal a crashed follower left."""
        t0 = time.monotonic()
        told = False
        while True:
            try:
                self.conn.execute("BEGIN EXCLUSIVE" if exclusive else "BEGIN")
                self.conn.execute("PRAGMA schema_version").fetchall()  # takes the lock now
                break
            except apsw.BusyError:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if self.should_stop():
                    raise Stopped() from None
                if not told and time.monotonic() - t0 > 5:
                    log.info("%s: waiting for readers to let go of the database", self.path)
                    told = True
        try:
            yield
        finally:
            # Nothing was written through SQLite: ROLLBACK only releases the lock.
            self.conn.execute("ROLLBACK")

    def read_pages(self) -> Iterator[tuple[int, bytes]]:
        """Yield (page number, page) of the whole file; call it holding a lock."""
        ps = self.page_size
        total = self.pages
        pgno = 1
        while pgno <= total:
            n = min(_READ_PAGES, total - pgno + 1)
            data = os.pread(self.fd, n * ps, (pgno - 1) * ps)
            for i in range(n):
                yield pgno + i, data[i * ps:(i + 1) * ps]
            pgno += n

    def apply(self, batch: PageBatch, before_commit: Callable[[], None]) -> int:
        """Make the file hold ``batch`` applied to it, atomically for readers; return the
        number of pages written. ``before_commit`` runs once the journal is synced and
        before the file changes."""
        ps = self.page_size
        if batch.page_size != ps or batch.size is None or batch.low is None:
            raise ValueError("batch does not fit this database")
        orig = self.pages
        final = batch.size
        cut = min(batch.low, orig)
        skip = journal.pending_page(ps)
        zero = bytes(ps)
        page1 = os.pread(self.fd, ps, 0)
        new1 = journal.rollback_page1(batch.page(1) if batch.has(1) else page1,
                                      journal.change_counter(page1) + 1, final)
        nonce = random.getrandbits(32)
        writes = array("I", [1])
        records = 1
        jfd = os.open(self.journal_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        armed = False
        try:
            with open(jfd, "wb", closefd=False, buffering=1 << 20) as jf:
                jf.write(bytes(journal.SECTOR_SIZE))  # the header comes last: until then it is not hot
                jf.write(journal.journal_record(1, page1, nonce))
                length = journal.SECTOR_SIZE + ps + 8
                last = 1
                for p in heapq.merge(batch.page_numbers(), range(cut + 1, orig + 1)):
                    if p == last:
                        continue
                    last = p
                    new = None if p > final else (batch.page(p) if batch.has(p) else zero)
                    if p <= orig:
                        old = os.pread(self.fd, ps, (p - 1) * ps)
                        if new is not None and old == new:
                            continue
                        if p != skip:  # SQLite stops a rollback at the lock-byte page
                            jf.write(journal.journal_record(p, old, nonce))
                            records += 1
                            length += ps + 8
                    if new is not None and (p <= orig or new is not zero):
                        writes.append(p)
                jf.write(journal.journal_padding(length))
            os.fsync(jfd)
            fsync_dir(os.path.dirname(self.path))
            before_commit()
            with self.locked(exclusive=True):
                os.pwrite(jfd, journal.journal_header(records, nonce, orig, ps), 0)
                os.fsync(jfd)
                armed = True
                for p in writes:
                    data = new1 if p == 1 else (batch.page(p) if batch.has(p) else zero)
                    os.pwrite(self.fd, data, (p - 1) * ps)
                os.ftruncate(self.fd, final * ps)
                os.fsync(self.fd)
                os.unlink(self.journal_path)  # the commit
                armed = False
            fsync_dir(os.path.dirname(self.path))
        except BaseException:
            if armed:
                # Roll the half-written update back now, the way SQLite does after a crash.
                log.error("%s: update failed; rolling it back", self.path)
                with contextlib.suppress(Exception), self.locked(exclusive=False):
                    pass
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.journal_path)  # not hot: nothing was written to the database
            raise
        finally:
            os.close(jfd)
        return len(writes)


def _mark(pos: ChainPosition, page1: bytes) -> dict:
    return {"generation": layout.format_generation(pos.generation), "next_seq": pos.next_seq,
            "link": pos.link.hex(), "checksum": f"{pos.hasher.value:016x}", "db_size": pos.db_size,
            "page1": page1.hex(), "last_commit_ms": pos.last_commit_ms}


class Follower:
    """Keeps ``out_path`` equal to the newest state of the replicas (``clients``, in
    priority order), polling every ``interval`` seconds until ``stop`` is set."""

    def __init__(self, clients: Sequence[ReplicaClient], out_path: str, *, interval: float,
                 stop: threading.Event, cache: ObjectCache | None = None, force: bool = False,
                 check: bool = True, db_id: str | None = None) -> None:
        self.clients = list(clients)
        for client in self.clients:  # see restore_any: with several, a dead one is left for the next
            client.set_retry(policy_for(len(self.clients) - 1))
        self.db_id = db_id  # the database followed (None: the one the replica holds, as long as it stays)
        self.out = os.path.abspath(out_path)
        self.state_path = self.out + STATE_SUFFIX
        self.interval = interval
        self.stop = stop
        self.cache = cache
        self.force = force
        self.check = check
        self.current = 0  # index of the replica polled
        self.db: LiveDatabase | None = None
        self.pos: ChainPosition | None = None
        self.page1 = b""  # the source's bytes of page 1 that the output's header replaces
        self.applied = 0  # updates applied since start
        self._lock_file: int | None = None

    @property
    def client(self) -> ReplicaClient:
        return self.clients[self.current]

    # -- state -----------------------------------------------------------------------------

    def _save(self, before: dict | None, after: dict) -> None:
        data = json.dumps({"version": 1, "output": self.out, "before": before, "after": after}, indent=1)
        with atomic_file(self.state_path, 0o644) as f:
            f.write(data.encode())

    def _load(self) -> dict | None:
        try:
            with open(self.state_path) as f:
                state = json.load(f)
            if state.get("version") != 1 or not isinstance(state.get("after"), dict):
                raise ValueError("unknown layout")
            return state
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as e:
            log.warning("%s: unreadable follower state %s (%s); starting over", self.out, self.state_path, e)
            return None

    # -- start -----------------------------------------------------------------------------

    def _take_lock(self) -> None:
        fd = os.open(self.out + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"another follower is running on this output: {self.out}") from None
        self._lock_file = fd

    def start(self) -> None:
        """Resume from the state file, or restore the output (first run)."""
        state = self._load()
        exists = os.path.exists(self.out)
        if exists and (state is None or self.force):
            if not self.force:
                raise OutputExistsError(f"output exists and is not a follower's output: {self.out} "
                                        "(use --force to replace it)")
            if is_rollback_database(self.out):
                log.info("%s: replacing its content in place (--force)", self.out)
                self._open()
                return
        if not exists or not is_rollback_database(self.out):
            self._first_restore()
            return
        self._open()
        self._resume(state)  # type: ignore[arg-type]

    def _open(self) -> None:
        self.db = LiveDatabase(self.out, should_stop=self.stop.is_set)

    def _first_restore(self) -> None:
        def prepare(tmp: str, result: Result) -> None:
            # The output is a rollback-journal database: switch page 1 over before it appears.
            fd = os.open(tmp, os.O_RDWR)
            try:
                page1 = os.pread(fd, result.page_size, 0)
                os.pwrite(fd, journal.rollback_page1(page1, journal.change_counter(page1) + 1,
                                                     result.db_size_pages), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            assert result.position is not None
            self.page1 = journal.patched_bytes(page1)
            self._save(None, _mark(result.position, self.page1))

        result = restore_any(self.clients, self.out, cache=self.cache, force=self.force, check=self.check,
                             on_verified=prepare, db_id=self.db_id)
        for name, why in result.skipped:
            log.warning("%s: not restored from %s: %s", self.out, name, why)
        self.pos = result.position
        self.current = [c.name for c in self.clients].index(result.replica)
        log.info("%s: restored from %s (generation %s, last commit %s)", self.out, result.replica,
                 layout.format_generation(result.generation), history.format_ms(result.last_commit_ms))
        self._open()

    def _resume(self, state: dict) -> None:
        """Find which recorded position the output holds, after rolling back a hot journal."""
        assert self.db is not None
        hasher = DbHash()
        with self.db.locked(exclusive=False):
            for pgno, page in self.db.read_pages():
                hasher.set_page(pgno, page)
            file1 = os.pread(self.db.fd, self.db.page_size, 0)
        for which in ("after", "before"):
            mark = state.get(which)
            if not mark:
                continue
            try:
                saved = bytes.fromhex(mark["page1"])
                src1 = journal.unpatch(file1, saved)
                value = hasher.value ^ page_hash(1, file1) ^ page_hash(1, src1)
                if value != int(mark["checksum"], 16) or hasher.page_count != mark["db_size"]:
                    continue
                hasher.set_page(1, src1)
                self.pos = ChainPosition(layout.parse_generation(mark["generation"]), int(mark["next_seq"]),
                                    bytes.fromhex(mark["link"]), self.db.page_size, int(mark["db_size"]),
                                    hasher, mark.get("last_commit_ms"))
            except (KeyError, TypeError, ValueError) as e:
                log.warning("%s: unreadable position in %s: %s", self.out, self.state_path, e)
                continue
            self.page1 = saved
            log.info("%s: resuming at generation %s seq %d (checksum verified)", self.out, mark["generation"],
                     self.pos.next_seq)
            return
        log.warning("%s: its content matches no position in %s; starting over from a snapshot",
                    self.out, self.state_path)

    # -- polling ---------------------------------------------------------------------------

    def poll(self) -> bool:
        """List the replica once and apply what is new; return whether more is waiting."""
        client = self.client
        cat = history.catalog(client.list(layout.GENERATIONS + "/"))
        pos = self.pos
        step = history.follow_step(cat, pos.generation if pos else None, pos.next_seq if pos else 0,
                                   replica=client.name)
        if step.restart is not None:
            p = step.restart
            log.info("%s: starting over from %s: %s", self.out, p.snapshot.key, step.reason)
            self._update(client, (p.snapshot, p.snapshot_size), list(p.segments))
            return False
        segs: list[tuple[layout.SegmentName, int]] = []
        total = 0
        for name, size in step.segments:
            if segs and (total + size > BATCH_BYTES or len(segs) >= BATCH_SEGMENTS):
                break
            segs.append((name, size))
            total += size
        if segs:
            self._update(client, None, segs)
        return len(segs) < len(step.segments)

    def _update(self, client: ReplicaClient, snapshot: tuple[layout.SnapshotName, int] | None,
                segments: list[tuple[layout.SegmentName, int]]) -> None:
        db = self.db
        assert db is not None
        t0 = time.monotonic()
        keys = ([(snapshot[0].key, snapshot[1])] if snapshot else []) + [(n.key, s) for n, s in segments]
        work_dir = os.path.dirname(self.out)
        with PageBatch(db.page_size, db.pages, work_dir) as batch, \
                Fetcher(client, keys, cache=self.cache, tmp_dir=work_dir) as fetch:
            try:
                if snapshot is not None:
                    with fetch.open(snapshot[0].key) as f:
                        # A new generation must belong to the database followed so far.
                        known = self.db_id or (self.pos.db_id if self.pos is not None else None)
                        snap = open_snapshot(f, snapshot[0], known)
                        if snap.header.page_size != db.page_size:
                            raise RestoreError(f"{snapshot[0].key}: page size {snap.header.page_size} differs from "
                                               f"the output's {db.page_size}; start over with a new output")
                        pos = load_snapshot(snap, batch)
                        pos.db_id = pos.db_id or known
                else:
                    assert self.pos is not None
                    pos = self.pos.copy()
                    pos.db_id = pos.db_id or self.db_id
                for name, _size in segments:
                    with fetch.open(name.key) as f:
                        apply_segment(f, name.key, pos, batch)
            except (CorruptObjectError, ChainError):
                for key in fetch.cached:  # never trust the cache: download them again next time
                    self.cache.discard(key)  # type: ignore[union-attr]
                raise
            page1 = journal.patched_bytes(batch.page(1)) if batch.has(1) else self.page1
            before = _mark(self.pos, self.page1) if self.pos is not None else None
            t1 = time.monotonic()
            written = db.apply(batch, lambda: self._save(before, _mark(pos, page1)))
        self.pos, self.page1 = pos, page1
        self.applied += 1
        first = segments[0][0].first_seq if segments else pos.next_seq
        log.debug("%s: applied seq %d..%d from %s, last commit %s (%d pages written; %.3fs to read, %.3fs to "
                  "write)", self.out, first, pos.next_seq - 1, client.name, history.format_ms(pos.last_commit_ms),
                  written, t1 - t0, time.monotonic() - t1)

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Follow until ``stop`` is set; errors are logged and retried at the next poll."""
        self._take_lock()
        log.info("%s: following %s every %gs", self.out, ", ".join(c.name for c in self.clients), self.interval)
        last_error = None
        try:
            while not self.stop.is_set():
                more = False
                try:
                    if self.db is None:
                        self.start()
                    else:
                        more = self.poll()
                    last_error = None
                except Stopped:
                    break
                except UsageError:
                    raise
                except (LitesyncError, OSError, apsw.Error) as e:
                    if str(e) != last_error:
                        log.error("%s: %s (will retry)", self.out, e)
                    last_error = str(e)
                    if len(self.clients) > 1 and isinstance(e, LitesyncError) and self.db is not None:
                        self.current = (self.current + 1) % len(self.clients)
                        log.warning("%s: following %s instead", self.out, self.client.name)
                self.stop.wait(0 if more else self.interval)
        finally:
            if self.db is not None:
                self.db.close()
                self.db = None
            if self._lock_file is not None:
                os.close(self._lock_file)
                self._lock_file = None
