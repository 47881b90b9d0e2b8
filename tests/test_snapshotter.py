"""The snapshotter (``snapshotter.Snapshotter``) of an agent on a real database, driven
directly in one thread: no engine, no loop. The application's connection goes through
apsw's SQLite, as the agent's (two copies of SQLite in one process do not see each other's
locks)."""

from __future__ import annotations

import logging

import pytest

from litesync import layout, livedb
from litesync.agent import DbAgent, WriteLockBusy
from litesync.livedb import read_live
from litesync.segment import SnapshotReader

from conftest import apsw_app


def _app(db: str):
    return apsw_app(db, 5000)


@pytest.fixture
def opened(tmp_path):
    """(database, app, agent): an agent opened and started (its first snapshot written)."""
    db = str(tmp_path / "app.db")
    app = _app(db)
    app.execute("INSERT INTO t VALUES (randomblob(5000))")
    a = DbAgent(db, checkpoint_pages=1000, snapshot_interval=None)
    a.open()
    a.start()
    try:
        yield db, app, a
    finally:
        a.close()
        app.close()


def _snapshots(a: DbAgent) -> list[layout.SnapshotName]:
    return [n for n, _ in a.spool.objects() if isinstance(n, layout.SnapshotName)]


def _checksum(a: DbAgent, name: layout.SnapshotName) -> int:
    path = a.spool.path(name)
    with open(path, "rb") as f:
        r = SnapshotReader(f, path)
        for _ in r.chunks():
            pass
        return r.finish().db_checksum


def test_the_first_snapshot_starts_a_generation_at_the_live_state(opened):
    db, app, a = opened
    [first] = _snapshots(a)
    assert (first.generation, first.seq) == (a.generation, 0) and a.stats["generations"] == 1
    assert _checksum(a, first) == read_live(db).checksum == a.hasher.value
    assert a.snapshotter.snapshot_at == (a.generation, 0) and a.restart_ok and a.r_begin_pos == a.pos


def test_a_snapshot_copies_the_commits_first_and_continues_the_generation(opened):
    db, app, a = opened
    gen = a.generation
    for i in range(3):
        app.execute("INSERT INTO t VALUES (?)", (i,))
    assert a.snapshotter.snapshot()
    assert a.generation == gen and a.stats["segments"] == 1  # the commits, as a segment before it
    newest = max(_snapshots(a), key=lambda n: n.seq)
    assert (newest.generation, newest.seq) == (gen, 1) and a.next_seq == 1
    assert _checksum(a, newest) == read_live(db).checksum == a.hasher.value
    assert a.copied_through[1:] == (gen, 1)


def test_an_unchanged_database_stands_in_for_a_snapshot_when_asked_if_changed(opened):
    db, app, a = opened
    before = a.spool.objects()
    assert not a.snapshotter.snapshot(if_changed=True)
    assert a.spool.objects() == before and a.snapshotter.checked_at > 0
    app.execute("INSERT INTO t VALUES ('new')")
    assert a.snapshotter.snapshot(if_changed=True)  # something was committed: a snapshot


def test_a_state_that_disagrees_with_the_database_starts_a_new_generation(opened, caplog):
    """What the snapshot reads is not what was replicated (here: the replicated state made
    wrong by hand, as if the file changed without a trace in the WAL)."""
    db, app, a = opened
    gen = a.generation
    a.hasher.set_hash(1, a.hasher.get(1) ^ 1)
    with caplog.at_level(logging.ERROR):
        assert a.snapshotter.snapshot(if_changed=True)
    assert "replicated state disagrees with the database" in caplog.text
    assert a.generation > gen and a.next_seq == 0 and a.stats["generations"] == 2
    assert a.hasher.value == read_live(db).checksum


def test_a_new_generation_comes_after_the_newest_a_replica_holds(opened):
    db, app, a = opened
    floor = layout.new_generation(after=a.generation + (10 << 32))  # a clock far ahead
    a.generation_floor = floor
    assert a.snapshotter.newest_generation() == floor
    assert a.snapshotter.snapshot(new_generation=True)
    assert a.generation > floor


def test_a_write_lock_the_app_keeps_fails_the_snapshot_as_retryable(opened, monkeypatch):
    db, app, a = opened
    monkeypatch.setattr(livedb, "SEAL_TIMEOUT_MS", 20)
    app.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(WriteLockBusy) as e:
            a.snapshotter.snapshot()
    finally:
        app.execute("ROLLBACK")
    assert str(e.value) == (f"{a.path}: could not take a consistent snapshot after 5 attempts: "
                            "the write lock was not granted, or the WAL kept changing")
    assert e.value.retryable
