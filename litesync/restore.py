"""Restore: plan (pure) which objects rebuild the database, then apply them to a temp file,
verify every link and checksum, and rename the result into place.

Objects are applied to a *sink*: ``FileSink`` writes pages straight into the output file,
``PageBatch`` keeps the net effect of a run of transactions aside (the follower applies
it in place later, and compaction turns it into a merged segment). With several replicas,
``restore_any`` lists them all, restores from the one with the newest state and falls back
to the others in priority order when one is unreachable or returns a damaged object.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Protocol, Sequence

import apsw

from . import history, layout
from .dbhash import DbHash, page_hash, raw_page_hash
from .errors import (ChainError, CorruptObjectError, DeadlineError, ForeignDatabaseError, LegacyGenerationError,
                     LitesyncError, ObjectNotFoundError, OutputExistsError, RestoreError, TransientReplicaError,
                     UsageError)
from .fetch import Fetcher, ObjectCache, list_all
from .history import Plan
from .journal import pending_page
from .replica import open_replica
from .replica.base import ObjectInfo, ReplicaClient
from .replica.file import fsync_dir
from .replica.resume import Deadline, policy_for
from .segment import Readable, SegmentReader, SnapshotReader, read_header

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)

RETRIES = 4  # whole-restore retries after a transient replica error
# Snapshot chunks (of 256 pages) decompressed ahead of their writes: bounds restore memory.
_IN_FLIGHT_CHUNKS = 8


def plan_restore(objects: Iterable[ObjectInfo], *, generation: int | None = None,
                 until_ms: int | None = None, replica: str = "replica") -> Plan:
    """Plan a restore from a replica listing (see ``history.plan``)."""
    return history.plan(history.catalog(objects), generation=generation, until_ms=until_ms, replica=replica)


# -- applying objects ---------------------------------------------------------------------

class Sink(Protocol):
    def write(self, pgno: int, data: bytes | memoryview) -> None:
        """Write one page or a run of whole pages starting at ``pgno``."""

    def set_size(self, pages: int) -> None:
        """A transaction ended with the database at ``pages`` pages."""


class FileSink:
    """Pages go straight into the file ``fd``; the database shrinks as transactions say."""

    def __init__(self, fd: int, page_size: int) -> None:
        self.fd = fd
        self.page_size = page_size
        self.size = 0

    def write(self, pgno: int, data: bytes | memoryview) -> None:
        os.pwrite(self.fd, data, (pgno - 1) * self.page_size)

    def set_size(self, pages: int) -> None:
        if pages < self.size:
            os.ftruncate(self.fd, pages * self.page_size)
        self.size = pages  # growth needs no call: the pages were written

    def finish(self) -> None:
        os.ftruncate(self.fd, self.size * self.page_size)


class PageBatch:
    """The net effect of a run of transactions, kept in a temporary file: the latest version
    of every page still in the database, the smallest size reached and the final size.

    Applying it means: cut the database to ``low`` pages, write ``pages()``, set the size
    to ``size``; pages past ``low`` that the run did not write again are zero, as they are
    after replaying the run transaction by transaction.
    """

    def __init__(self, page_size: int, size: int | None = None, work_dir: str | None = None) -> None:
        self.page_size = page_size
        self.size = size
        self.low = size  # None until the first transaction when the starting size is unknown
        self._file = tempfile.TemporaryFile(dir=work_dir)
        self._fd = self._file.fileno()
        self._written = bytearray()  # one flag per page: its latest version is in the file

    def __enter__(self) -> "PageBatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, pgno: int, data: bytes | memoryview) -> None:
        n = len(data) // self.page_size
        end = pgno - 1 + n
        if end > len(self._written):
            self._written.extend(bytes(end - len(self._written)))
        os.pwrite(self._fd, data, (pgno - 1) * self.page_size)
        self._written[pgno - 1:end] = b"\x01" * n

    def set_size(self, pages: int) -> None:
        if pages < len(self._written):
            self._written[pages:] = bytes(len(self._written) - pages)
        self.low = pages if self.low is None else min(self.low, pages)
        self.size = pages

    @property
    def count(self) -> int:
        """How many pages the batch holds."""
        return sum(self._written)

    def has(self, pgno: int) -> bool:
        return pgno <= len(self._written) and self._written[pgno - 1] == 1

    def page(self, pgno: int) -> bytes:
        return os.pread(self._fd, self.page_size, (pgno - 1) * self.page_size)

    def page_numbers(self) -> Iterator[int]:
        """The pages the batch holds, ascending."""
        return (p + 1 for p, flag in enumerate(self._written) if flag)

    def close(self) -> None:
        self._file.close()


@dataclass
class ChainPosition:
    """Where a rebuilt database stands in its generation's chain, and its checksum state."""

    generation: int
    next_seq: int
    link: bytes
    page_size: int
    db_size: int
    hasher: DbHash
    last_commit_ms: int | None = None
    transactions: int = 0
    db_id: str | None = None  # the database the chain belongs to; None while no object has said

    def copy(self) -> "ChainPosition":
        return replace(self, hasher=self.hasher.copy())


def check_db_id(name: str, found: str | None, expected: str | None) -> None:
    """Raise ForeignDatabaseError when the object ``name`` says it belongs to database
    ``found`` and another, ``expected``, is wanted. Objects written before database ids
    (format version 1) say nothing, and pass."""
    if found is not None and expected is not None and found != expected:
        raise ForeignDatabaseError(name, found, expected)


def open_snapshot(src: Readable, name: layout.SnapshotName, db_id: str | None = None) -> SnapshotReader:
    """Start reading a snapshot; its header must agree with its name, and with ``db_id``
    (the database expected; None: any)."""
    snap = SnapshotReader(src, name.key)
    h = snap.header
    if (h.generation, h.seq) != (name.generation, name.seq):
        raise CorruptObjectError(name.key, f"header names generation {h.generation:016x} seq {h.seq}, "
                                           f"object name says {name.generation:016x} seq {name.seq}")
    check_db_id(name.key, h.db_id, db_id)
    return snap


def snapshot_fault(client: ReplicaClient, name: layout.SnapshotName, db_id: str | None = None,
                   require_id: bool = False) -> str | None:
    """Why the snapshot object ``name`` cannot be restored from, or None when it reads back
    whole (every page, the trailer's digest) as the snapshot its name says, of database
    ``db_id`` (None: any); with ``require_id``, one written before ids existed is not."""
    try:
        with client.open(name.key) as f:
            snap = open_snapshot(f, name, db_id)
            if require_id and snap.header.db_id is None:
                return "carries no database id (format 1), yet is newer than objects that do"
            for _ in snap.chunks():
                pass
            snap.finish()
    except ForeignDatabaseError as e:
        return f"belongs to database {e.found!r}, not {e.expected!r}"
    except CorruptObjectError as e:
        return e.reason
    except (LitesyncError, OSError) as e:
        if getattr(e, "retryable", False):
            raise  # the store, not the object: the caller tries again
        return str(e)
    return None


def load_snapshot(snap: SnapshotReader, sink: Sink, tick: Callable[[], None] | None = None) -> ChainPosition:
    """Write every page of a snapshot to ``sink``, verify its checksum, return the position after it."""
    h = snap.header
    ps = h.page_size
    hasher = DbHash()
    legacy = _load_pages(snap, sink, hasher, tick)
    trailer = snap.finish()
    if legacy and trailer.db_checksum == hasher.value ^ legacy:
        # Written by an agent that hashed the lock-byte page by its bytes (see dbhash): so
        # are its later checksums in this generation, while the database holds that page.
        hasher.set_hash(pending_page(ps), legacy)
    if trailer.db_checksum != hasher.value:
        raise CorruptObjectError(snap.name, f"database checksum mismatch: object says {trailer.db_checksum:016x}, "
                                            f"pages give {hasher.value:016x}")
    sink.set_size(h.db_size)
    return ChainPosition(h.generation, h.seq, h.prev_link, ps, h.db_size, hasher, db_id=h.db_id)


def _hash_pages(pgno: int, chunk: memoryview, ps: int) -> list[tuple[int, int]]:
    return [(pgno + i, page_hash(pgno + i, chunk[i * ps:(i + 1) * ps])) for i in range(len(chunk) // ps)]


def _load_pages(snap: SnapshotReader, sink: Sink, hasher: DbHash, tick: Callable[[], None] | None) -> int:
    """Write every page of ``snap`` to ``sink`` and record its hash in ``hasher``; return
    the lock-byte page's ``raw_page_hash`` (0 when the snapshot ends before it).

    Decompression (here), page writes (one thread, in order) and page hashing (another)
    overlap: each releases the GIL for most of its work, so a restore uses both cores.
    """
    ps = snap.header.page_size
    lock = pending_page(ps)
    legacy = 0
    pending: collections.deque = collections.deque()

    def settle(limit: int) -> None:
        while len(pending) > limit:
            written, hashed = pending.popleft()
            written.result()
            for pgno, h in hashed.result():
                hasher.set_hash(pgno, h)

    with ThreadPoolExecutor(1, "restore-write") as writer, ThreadPoolExecutor(1, "restore-hash") as hashes:
        try:
            for pgno, chunk in snap.chunks():
                if pgno <= lock < pgno + len(chunk) // ps:
                    legacy = raw_page_hash(lock, chunk[(lock - pgno) * ps:(lock - pgno + 1) * ps])
                pending.append((writer.submit(sink.write, pgno, chunk), hashes.submit(_hash_pages, pgno, chunk, ps)))
                settle(_IN_FLIGHT_CHUNKS)
                if tick:
                    tick()
            settle(0)
        finally:
            for written, hashed in pending:  # after an error: nothing more reaches the sink
                written.cancel()
                hashed.cancel()
    return legacy


def apply_segment(src: Readable, key: str, pos: ChainPosition, sink: Sink, until_ms: int | None = None,
                  observe: Callable[[int], None] | None = None) -> bool:
    """Apply the transactions of one segment (those committed at or before ``until_ms``) to
    ``sink``, verifying the link and the database checksum after each (and passing it to
    ``observe``); advance ``pos``. Return whether the whole segment was applied."""
    seg = SegmentReader(src, key)
    sh = seg.header
    check_db_id(key, sh.db_id, pos.db_id)
    pos.db_id = pos.db_id or sh.db_id
    if sh.generation != pos.generation or sh.first_seq != pos.next_seq:
        raise ChainError(f"{key}: header says generation {sh.generation:016x} seq {sh.first_seq}, "
                         f"expected generation {pos.generation:016x} seq {pos.next_seq}")
    if sh.prev_link != pos.link:
        raise ChainError(f"{key}: does not follow the previous object (link {sh.prev_link.hex()} "
                         f"!= {pos.link.hex()})")
    if sh.page_size != pos.page_size:
        raise CorruptObjectError(key, f"page size {sh.page_size} != snapshot page size {pos.page_size}")
    stop_at = len(sh.txs)
    if until_ms is not None:
        stop_at = sum(1 for t in sh.txs if t.commit_ms <= until_ms)
    hasher = pos.hasher
    lock = pending_page(sh.page_size)
    cur = 0

    def close_tx(i: int) -> None:
        tx = sh.txs[i]
        sink.set_size(tx.db_size)
        hasher.truncate(tx.db_size)
        pos.db_size = tx.db_size
        legacy = hasher.get(lock)
        if tx.checksum_known and legacy and tx.db_checksum == hasher.value ^ legacy:
            hasher.set_hash(lock, 0)  # an agent with the lock-byte rule went on with this generation
        if tx.checksum_known and tx.db_checksum != hasher.value:
            raise CorruptObjectError(key, f"transaction {i}: database checksum mismatch: object says "
                                          f"{tx.db_checksum:016x}, restored pages give {hasher.value:016x}")
        if observe:
            observe(hasher.value)

    for i, pgno, data in seg.pages():
        while cur < i and cur < stop_at:
            close_tx(cur)
            cur += 1
        if i < stop_at:
            sink.write(pgno, data)
            hasher.set_page(pgno, data)
    while cur < stop_at:
        close_tx(cur)
        cur += 1
    seg.finish()
    pos.transactions += stop_at
    if stop_at:
        pos.last_commit_ms = sh.txs[stop_at - 1].commit_ms
    pos.link = sh.end_link
    pos.next_seq = sh.last_seq + 1
    return stop_at == len(sh.txs)


# -- restoring to a file ------------------------------------------------------------------

@dataclass
class Result:
    path: str
    generation: int
    transactions: int
    bytes_read: int
    db_size_pages: int
    page_size: int
    seconds: float
    last_commit_ms: int | None = None
    replica: str = ""
    #: (replica, why it was not used), for replicas tried or passed over before this one
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: objects read from the cache directory without a download
    cached_objects: int = 0
    position: ChainPosition | None = None
    db_checksum: int = 0

    @property
    def db_bytes(self) -> int:
        return self.db_size_pages * self.page_size


class _CountingReader:
    """Counts bytes read; a failure of the underlying stream becomes a retryable replica error."""

    def __init__(self, f, replica: str, key: str) -> None:  # noqa: ANN001
        self.f = f
        self.replica = replica
        self.key = key
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.f.read(n)
        except LitesyncError:
            raise
        except Exception as e:  # a connection reset or timeout mid-object
            raise TransientReplicaError(self.replica, f"read {self.key!r}: {type(e).__name__}") from e
        self.count += len(data)
        return data


def id_before(client: ReplicaClient, generation: int, look: int = 8) -> tuple[int, str] | None:
    """Return (generation, database id) of the newest of the ``look`` generations before
    ``generation`` whose smallest object carries a database id, or None. One header read
    per generation looked at."""
    cat = history.catalog(client.list(layout.GENERATIONS + "/"))
    for gen in sorted((g for g in cat.generations if g < generation), reverse=True)[:look]:
        info = cat.generations[gen]
        objects = info.snapshots + info.segments
        if not objects:
            continue
        name = min(objects, key=lambda o: o[1])[0]
        try:
            with client.open(name.key) as f:
                found = read_header(f, name.key, isinstance(name, layout.SnapshotName)).db_id
        except (CorruptObjectError, ObjectNotFoundError):
            continue
        if found is not None:
            return gen, found
    return None


def _refuse_legacy_after_ids(client: ReplicaClient, snapshot: layout.SnapshotName) -> None:
    """Raise LegacyGenerationError when ``snapshot`` (which carries no id) belongs to a
    generation newer than one whose objects carry an id."""
    before = id_before(client, snapshot.generation)
    if before is not None:
        gen, found = before
        raise LegacyGenerationError(
            f"{snapshot.key}: carries no database id (written before ids existed), yet generation "
            f"{layout.format_generation(gen)} before it belongs to database {found!r}: another database's old "
            f"backup copied in? If that is the backup wanted, restore it with --generation "
            f"{layout.format_generation(snapshot.generation)}")


def _apply(fetch: Fetcher, replica: str, plan: Plan, fd: int,
           progress: Callable[[int, int], None] | None, observe: Callable[[int], None] | None = None,
           db_id: str | None = None, legacy_check: Callable[[layout.SnapshotName], None] | None = None) -> Result:
    t0 = time.monotonic()
    total = plan.total_bytes
    done = 0
    key = plan.snapshot.key
    with fetch.open(key) as f:
        src = _CountingReader(f, replica, key)
        snap = open_snapshot(src, plan.snapshot, db_id)
        if snap.header.db_id is None and legacy_check is not None:
            legacy_check(plan.snapshot)
        sink = FileSink(fd, snap.header.page_size)
        tick = (lambda: progress(done + src.count, total)) if progress else None
        pos = load_snapshot(snap, sink, tick)
        pos.db_id = pos.db_id or db_id
        done += src.count
    if observe:
        observe(pos.hasher.value)
    for name, _size in plan.segments:
        key = name.key
        with fetch.open(key) as f:
            src = _CountingReader(f, replica, key)
            whole = apply_segment(src, key, pos, sink, plan.until_ms, observe)
            done += src.count
            if progress:
                progress(done, total)
        if not whole:
            break
    sink.finish()
    return Result("", plan.generation, pos.transactions, done, pos.db_size, pos.page_size,
                  time.monotonic() - t0, pos.last_commit_ms, replica, position=pos, db_checksum=pos.hasher.value)


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def intact_generation(client: ReplicaClient, damaged: int) -> int | None:
    """The newest generation older than ``damaged`` that a restore can use: its chain plans
    and its snapshot reads back whole (the segments are only known to be there). For the
    message of a restore whose newest generation is damaged."""
    cat = history.catalog(client.list(layout.GENERATIONS + "/"))
    for gen in sorted((g for g in cat.generations if g < damaged), reverse=True):
        try:
            p = history.plan(cat, generation=gen, replica=client.name)
            if snapshot_fault(client, p.snapshot) is None:
                return gen
        except LitesyncError:
            continue
    return None


def integrity_check(path: str) -> str:
    """Return SQLite's integrity_check verdict for the database at ``path`` ("ok" when sound)."""
    conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "\n".join(str(r[0]) for r in rows)


def restore(client: ReplicaClient, out_path: str, *, plan: Plan | None = None, force: bool = False,
            check: bool = True, progress: Callable[[int, int], None] | None = None,
            generation: int | None = None, until_ms: int | None = None,
            objects: list[ObjectInfo] | None = None, cache: ObjectCache | None = None,
            retries: int = RETRIES, on_verified: Callable[[str, Result], None] | None = None,
            observe: Callable[[int], None] | None = None, db_id: str | None = None,
            deadline: Deadline | None = None) -> Result:
    """Rebuild the database at ``out_path`` from ``client``; the output appears only when verified.

    ``db_id`` is the id of the database wanted: an object carrying another stops the
    restore with ForeignDatabaseError before anything is written to ``out_path`` (None:
    whatever database the replica holds, so long as its objects agree).

    ``objects`` is a listing made moments ago (else the replica is listed); ``on_verified``
    is called with the verified temp file before it is renamed into place; ``observe`` with
    the checksum of the database after the snapshot and after each transaction applied
    (states a verification may compare with the live database). Past ``deadline`` (see
    ``restore_any``), every wait on the store stops with DeadlineError.
    """
    out_path = os.path.abspath(out_path)
    if os.path.exists(out_path) and not force:
        raise OutputExistsError(f"output exists: {out_path} (use --force to replace it)")
    planned_here = plan is None

    def make_plan() -> Plan:
        return plan_restore(client.list(layout.GENERATIONS + "/"), generation=generation,
                            until_ms=until_ms, replica=client.name)

    if plan is None:
        plan = (plan_restore(objects, generation=generation, until_ms=until_ms, replica=client.name)
                if objects is not None else make_plan())
    tmp = out_path + ".tmp"
    syncing = None
    try:
        replans = 0
        attempt = 0
        fresh_downloads = False
        while True:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            keys = [(plan.snapshot.key, plan.snapshot_size)] + [(n.key, s) for n, s in plan.segments]
            fetch = Fetcher(client, keys, cache=cache, tmp_dir=os.path.dirname(out_path))
            try:
                # A generation chosen by the user is theirs to choose; one chosen as the newest
                # must not be a legacy one newer than a history that carries ids.
                legacy_check = None if generation is not None else partial(_refuse_legacy_after_ids, client)
                result = _apply(fetch, client.name, plan, fd, progress, observe, db_id, legacy_check)
                # The file goes to disk while SQLite checks it (both without the GIL).
                syncer = ThreadPoolExecutor(1, thread_name_prefix="fsync")
                syncing = syncer.submit(_fsync_and_close, os.dup(fd))
                syncer.shutdown(wait=False)
                result.cached_objects = len(fetch.cached)
                break
            except ObjectNotFoundError as e:
                # Compaction or retention replaced an object after we listed: plan again.
                if not planned_here or replans == RETRIES:
                    raise
                replans += 1
                log.info("%s; planning the restore again", e, extra={"replica": client.name})
                plan = make_plan()
            except (CorruptObjectError, ChainError) as e:
                # Never trust the cache: drop what this attempt read from it, download again.
                if not fetch.cached or fresh_downloads:
                    if generation is None and until_ms is None:
                        e.intact_generation = intact_generation(client, plan.generation)  # type: ignore[union-attr]
                    raise
                fresh_downloads = True
                log.warning("%s (read from the cache directory); discarding %d cached objects and "
                            "downloading them again", e, len(fetch.cached))
                for key in fetch.cached:
                    cache.discard(key)  # type: ignore[union-attr]
            except LitesyncError as e:
                if not e.retryable or attempt >= retries:
                    raise
                attempt += 1
                delay = min(30.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                if deadline is not None and deadline.left() < delay:
                    raise deadline.error(str(e)) from None
                log.warning("%s (attempt %d of %d; restarting the restore in %.1fs)", e, attempt,
                            retries + 1, delay, extra={"replica": client.name})
                time.sleep(delay)
            finally:
                fetch.close()
                os.close(fd)
        if check:
            verdict = integrity_check(tmp)
            if verdict != "ok":
                raise RestoreError(f"restored database fails integrity_check: {verdict.splitlines()[0]}")
        syncing.result()  # an fsync error is raised here
        result.path = out_path
        if on_verified is not None:
            on_verified(tmp, result)
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out_path + suffix)
        os.replace(tmp, out_path)
        fsync_dir(os.path.dirname(out_path))
    except BaseException:
        if syncing is not None:
            syncing.exception()  # let it finish (and close its descriptor) before the file goes
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp + suffix)
        raise
    log.debug("restored %s from replica %s: generation %s, %d transactions after the snapshot, %d bytes read",
              out_path, client.name, layout.format_generation(plan.generation), result.transactions,
              result.bytes_read, extra={"replica": client.name})
    return result


def restore_missing(cfg: "Config") -> list[Result]:
    """Restore each database of ``cfg`` that does not exist from its replicas; return the restores.

    A replica that holds nothing means a new deployment: that database is left for the
    application to create. A directory's databases are those its first replica holds.
    """
    results = []
    dbs = list(cfg.dbs)
    for d in cfg.dirs:
        client = open_replica(d.template.replicas[0])
        try:
            found = databases_in(client)
        finally:
            client.close()
        paths = [os.path.join(d.path, *rel.split("/")) for rel in found]
        dbs += [d.database(p) for p in paths if d.matches(p)]
    from .config import priority_order

    for db in dbs:
        if os.path.exists(db.path):
            continue
        clients = [open_replica(rc) for rc in priority_order(db.replicas)]
        deadline = _deadline(cfg)
        for client in clients:
            client.set_deadline(deadline)
        try:
            cands = survey(clients)
            if not any(c.plan for c in cands):
                down = [c for c in cands if c.objects is None]
                if down:
                    # Starting empty would begin a generation newer than the backup the
                    # unreachable replica may hold: later restores would pick the empty one.
                    raise RestoreError(f"{db.path} does not exist and no replica holds a backup, but "
                                       f"{down[0].client.name} could not be listed: {down[0].error}")
                log.info("%s does not exist and no replica holds a backup: starting without one", db.path)
                continue
            log.info("%s does not exist: restoring it from %s", db.path, cands[0].client.name)
            os.makedirs(os.path.dirname(db.path), exist_ok=True)
            results.append(restore_any(clients, db.path, cands=cands, db_id=db.id or None, deadline=deadline))
        finally:
            for c in clients:
                c.close()
    return results


def _deadline(cfg: "Config") -> Deadline | None:
    """A restore's deadline from now, as the configuration's ``restore-timeout`` says."""
    from .config import DEFAULT_RESTORE_TIMEOUT

    if cfg.restore_timeout is None:
        return Deadline(DEFAULT_RESTORE_TIMEOUT, "restore", "restore-timeout's default")
    if math.isinf(cfg.restore_timeout):
        return None
    return Deadline(cfg.restore_timeout, "restore", f"restore-timeout in {cfg.source}")


def databases_in(client: ReplicaClient) -> list[str]:
    """Return the paths, relative to the replica's root, under which a database's snapshots lie."""
    found = set()
    marker = f"/{layout.GENERATIONS}/"
    for obj in client.list():
        i = obj.key.rfind(marker)
        if i > 0 and isinstance(layout.parse_key(obj.key[i + 1:]), layout.SnapshotName):
            found.add(obj.key[:i])
    return sorted(found)


# -- several replicas ---------------------------------------------------------------------

@dataclass
class Candidate:
    """One replica as seen by a restore: its listing and plan, or why it cannot serve."""

    client: ReplicaClient
    objects: list[ObjectInfo] | None = None
    plan: Plan | None = None
    error: LitesyncError | None = None
    covers: bool = True  # for a point in time: the replica holds history past it

    @property
    def state(self) -> tuple[int, int]:
        """(generation, last sequence) the plan reaches: larger is newer."""
        p = self.plan
        assert p is not None
        return p.generation, (p.segments[-1][0].last_seq if p.segments else p.snapshot.seq - 1)


def rank(cands: Sequence[Candidate], until_ms: int | None = None) -> list[Candidate]:
    """Candidates in the order a restore tries them (pure): the one with the newest state
    first (for a point in time: one that holds history past it, and plans it exactly), then
    the others in their given (priority) order; replicas that cannot serve come last."""
    usable = [c for c in cands if c.plan is not None]

    def key(c: Candidate) -> tuple:
        if until_ms is None:
            return c.state
        # Every replica that covers the target restores the same state: keep priority order.
        return (c.covers, c.plan.exact) + (((0, 0),) if c.covers else (c.state,))  # type: ignore[union-attr]

    if not usable:
        return list(cands)
    best = max(usable, key=key)  # max keeps the first of equals: priority order
    return [best] + [c for c in usable if c is not best] + [c for c in cands if c.plan is None]


def survey(clients: Sequence[ReplicaClient], *, generation: int | None = None,
           until_ms: int | None = None) -> list[Candidate]:
    """List every replica in parallel and plan a restore on each; return them ranked."""
    cands = []
    for client, listing in zip(clients, list_all(clients, layout.GENERATIONS + "/")):
        c = Candidate(client)
        if isinstance(listing, LitesyncError):
            c.error = listing
        else:
            c.objects = listing
            try:
                cat = history.catalog(listing)
                c.plan = history.plan(cat, generation=generation, until_ms=until_ms, replica=client.name)
                if until_ms is not None:
                    rng = cat.restorable_range()
                    c.covers = rng is not None and rng[1] >= until_ms
            except LitesyncError as e:
                c.error = e
        cands.append(c)
    return rank(cands, until_ms)


def _none_can(failures: list[LitesyncError], skipped: list[tuple[str, str]]) -> LitesyncError:
    if len(failures) == 1:
        return failures[0]
    return RestoreError("no replica can restore: " + "; ".join(named_reason(name, why) for name, why in skipped))


def named_reason(name: str, why: str) -> str:
    """Return "name: why", without naming the replica twice when ``why`` already starts with it."""
    return why if why.startswith(f"{name}: ") else f"{name}: {why}"


def choose(clients: Sequence[ReplicaClient], *, generation: int | None = None,
           until_ms: int | None = None) -> Candidate:
    """The replica (and plan) a restore would try first; an error when none can serve."""
    cands = survey(clients, generation=generation, until_ms=until_ms)
    if cands[0].plan is None:
        raise _none_can([c.error for c in cands if c.error], [(c.client.name, str(c.error)) for c in cands])
    return cands[0]


def restore_any(clients: Sequence[ReplicaClient], out_path: str, *, generation: int | None = None,
                until_ms: int | None = None, cache: ObjectCache | None = None,
                cands: list[Candidate] | None = None, deadline: Deadline | None = None,
                **kw) -> Result:  # noqa: ANN003
    """Restore from the replica with the newest state among ``clients`` (given in priority
    order), falling back to the next ones when a replica is unreachable, damaged or
    incomplete. The result names the replica used and why others were not. ``cands`` is a
    ``survey`` of ``clients`` made moments ago (else they are listed here).

    ``deadline`` bounds the whole restore, listings included: past it, the wait under way
    stops with DeadlineError naming what it waited for, no other replica is tried, and
    nothing is written to ``out_path``.
    """
    try:
        return _restore_any(clients, out_path, generation=generation, until_ms=until_ms, cache=cache,
                            cands=cands, deadline=deadline, **kw)
    except DeadlineError as e:
        raise DeadlineError(f"{e}; nothing was written to {os.path.abspath(out_path)}") from None


def _restore_any(clients: Sequence[ReplicaClient], out_path: str, *, generation: int | None,
                 until_ms: int | None, cache: ObjectCache | None, cands: list[Candidate] | None,
                 deadline: Deadline | None, **kw) -> Result:  # noqa: ANN003
    # A request that fails is tried again on its own, a broken download resumed; a store
    # that does not answer is waited for only when no other replica could serve.
    for client in clients:
        client.set_retry(policy_for(len(clients) - 1))
        client.set_deadline(deadline)
    if cands is None:
        cands = survey(clients, generation=generation, until_ms=until_ms)
    late = [c.error for c in cands if isinstance(c.error, DeadlineError)]
    if late:
        raise late[0]
    failures = [c.error for c in cands if c.error is not None]
    skipped = [(c.client.name, str(c.error)) for c in cands if c.error is not None]
    usable = [c for c in cands if c.plan is not None]
    if usable and usable[0].client is not clients[0]:
        log.info("restoring from %s: it holds the newest state", usable[0].client.name)
    for i, c in enumerate(usable):
        others = i + 1 < len(usable)
        c.client.set_retry(policy_for(len(usable) - i - 1))
        try:
            result = restore(c.client, out_path, generation=generation, until_ms=until_ms, objects=c.objects,
                             cache=cache, retries=1 if others else RETRIES, deadline=deadline, **kw)
        except (UsageError, DeadlineError):
            raise
        except LitesyncError as e:
            skipped.append((c.client.name, str(e)))
            failures.append(e)
            if others:
                log.warning("%s: %s; trying the next replica", c.client.name, e)
            continue
        result.skipped = skipped
        return result
    raise _none_can(failures, skipped)
