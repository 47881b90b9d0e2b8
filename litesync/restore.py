"""Restore: plan (pure) which objects rebuild the database, then apply them to a temp file,
verify every link and checksum, and rename the result into place."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import apsw

from . import history, layout
from .dbhash import DbHash
from .errors import (ChainError, CorruptObjectError, LitesyncError, ObjectNotFoundError, OutputExistsError,
                     RestoreError, TransientReplicaError)
from .history import Plan
from .replica.base import ObjectInfo, ReplicaClient
from .replica.file import fsync_dir
from .segment import SegmentReader, SnapshotReader

log = logging.getLogger(__name__)

RETRIES = 4  # whole-restore retries after a transient replica error


def plan_restore(objects: Iterable[ObjectInfo], *, generation: int | None = None,
                 until_ms: int | None = None, replica: str = "replica") -> Plan:
    """Plan a restore from a replica listing (see ``history.plan``)."""
    return history.plan(history.catalog(objects), generation=generation, until_ms=until_ms, replica=replica)


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


def _apply(client: ReplicaClient, plan: Plan, fd: int, progress: Callable[[int, int], None] | None,
           observe: Callable[[int], None] | None = None) -> Result:
    t0 = time.monotonic()
    hasher = DbHash()
    total = plan.total_bytes
    done = 0
    key = plan.snapshot.key
    with client.open(key) as f:
        src = _CountingReader(f, client.name, key)
        snap = SnapshotReader(src, key)
        h = snap.header
        if (h.generation, h.seq) != (plan.generation, plan.snapshot.seq):
            raise CorruptObjectError(key, f"header names generation {h.generation:016x} seq {h.seq}, "
                                          f"object name says {plan.generation:016x} seq {plan.snapshot.seq}")
        ps = h.page_size
        for pgno, chunk in snap.chunks():
            os.pwrite(fd, chunk, (pgno - 1) * ps)
            for i in range(len(chunk) // ps):
                hasher.set_page(pgno + i, chunk[i * ps:(i + 1) * ps])
            if progress:
                progress(done + src.count, total)
        trailer = snap.finish()
        if trailer.db_checksum != hasher.value:
            raise CorruptObjectError(key, f"database checksum mismatch: object says {trailer.db_checksum:016x}, "
                                          f"pages give {hasher.value:016x}")
        done += src.count
    if observe:
        observe(hasher.value)
    db_size = h.db_size
    os.ftruncate(fd, db_size * ps)
    link = h.prev_link
    expected_seq = h.seq
    txs = 0
    last_commit = None
    for name, _size in plan.segments:
        key = name.key
        with client.open(key) as f:
            src = _CountingReader(f, client.name, key)
            seg = SegmentReader(src, key)
            sh = seg.header
            if sh.generation != plan.generation or sh.first_seq != expected_seq:
                raise ChainError(f"{key}: header says generation {sh.generation:016x} seq {sh.first_seq}, "
                                 f"expected generation {plan.generation:016x} seq {expected_seq}")
            if sh.prev_link != link:
                raise ChainError(f"{key}: does not follow the previous object (link {sh.prev_link.hex()} "
                                 f"!= {link.hex()})")
            if sh.page_size != ps:
                raise CorruptObjectError(key, f"page size {sh.page_size} != snapshot page size {ps}")
            stop_at = len(sh.txs)
            if plan.until_ms is not None:
                stop_at = sum(1 for t in sh.txs if t.commit_ms <= plan.until_ms)
            cur = 0

            def close_tx(i: int) -> None:
                nonlocal db_size
                tx = sh.txs[i]
                if tx.db_size < db_size:
                    os.ftruncate(fd, tx.db_size * ps)
                db_size = tx.db_size  # growth needs no call: the pages were written
                hasher.truncate(db_size)
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
                    os.pwrite(fd, data, (pgno - 1) * ps)
                    hasher.set_page(pgno, data)
            while cur < stop_at:
                close_tx(cur)
                cur += 1
            seg.finish()
            done += src.count
            if progress:
                progress(done, total)
            txs += stop_at
            if stop_at:
                last_commit = sh.txs[stop_at - 1].commit_ms
            link = sh.end_link
            expected_seq = sh.last_seq + 1
            if stop_at < len(sh.txs):
                break
    os.ftruncate(fd, db_size * ps)
    return Result("", plan.generation, txs, done, db_size, ps, time.monotonic() - t0, last_commit, hasher.value)


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
            observe: Callable[[int], None] | None = None) -> Result:
    """Rebuild the database at ``out_path`` from ``client``; the output appears only when verified.

    ``observe`` is called with the checksum of the database after the snapshot and after
    each transaction applied (states a verification may compare with the live database).
    """
    out_path = os.path.abspath(out_path)
    if os.path.exists(out_path) and not force:
        raise OutputExistsError(f"output exists: {out_path} (use --force to replace it)")
    planned_here = plan is None

    def make_plan() -> Plan:
        return plan_restore(client.list(layout.GENERATIONS + "/"), generation=generation,
                            until_ms=until_ms, replica=client.name)

    if plan is None:
        plan = make_plan()
    tmp = out_path + ".tmp"
    try:
        replans = 0
        attempt = 0
        while True:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                result = _apply(client, plan, fd, progress, observe)
                os.fsync(fd)
                break
            except ObjectNotFoundError as e:
                # Compaction or retention replaced an object after we listed: plan again.
                if not planned_here or replans == RETRIES:
                    raise
                replans += 1
                log.info("%s; planning the restore again", e, extra={"replica": client.name})
                plan = make_plan()
            except LitesyncError as e:
                if not e.retryable or attempt == RETRIES:
                    raise
                attempt += 1
                delay = min(30.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.warning("%s (attempt %d of %d; restarting the restore in %.1fs)", e, attempt,
                            RETRIES + 1, delay, extra={"replica": client.name})
                time.sleep(delay)
            finally:
                os.close(fd)
        if check:
            verdict = integrity_check(tmp)
            if verdict != "ok":
                raise RestoreError(f"restored database fails integrity_check: {verdict.splitlines()[0]}")
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out_path + suffix)
        os.replace(tmp, out_path)
        fsync_dir(os.path.dirname(out_path))
    except BaseException:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp + suffix)
        raise
    result.path = out_path
    log.debug("restored %s from replica %s: generation %s, %d transactions after the snapshot, %d bytes read",
             out_path, client.name, layout.format_generation(plan.generation), result.transactions,
             result.bytes_read, extra={"replica": client.name})
    return result
