"""The checkpointer (``checkpointer.Checkpointer``) of an agent on a real database, driven
directly in one thread: no engine, no loop. The application's connection goes through
apsw's SQLite, as the agent's (two copies of SQLite in one process do not see each other's
locks)."""

from __future__ import annotations

import os

import apsw
import pytest

from litesync import livedb, wal
from litesync.agent import DbAgent
from litesync.livedb import read_live

from conftest import apsw_app


def _app(db: str):
    return apsw_app(db, 5000)


@pytest.fixture
def opened(tmp_path):
    """(database, app, agent): an agent opened and started (its first snapshot written)."""
    db = str(tmp_path / "app.db")
    app = _app(db)
    a = DbAgent(db, checkpoint_pages=1000, max_wal_size=1 << 20, snapshot_interval=None)
    a.open()
    a.start()
    try:
        yield db, app, a
    finally:
        a.close()
        app.close()


def _in_step(a: DbAgent) -> None:
    """Everything committed is copied, in the generation the agent started with."""
    assert read_live(a.path).checksum == a.hasher.value
    assert a.stats["generations"] == 1


def test_a_checkpoint_copies_every_commit_and_the_next_commit_restarts_the_wal_harmlessly(opened):
    db, app, a = opened
    for i in range(3):
        app.execute("INSERT INTO t VALUES (?)", (i,))
    assert a.checkpointer.checkpoint()
    hdr = a.walfile.header()
    assert hdr is not None and a.pos.frame == a.walfile.index_frames(hdr)
    assert wal.index_checkpointed_in_full(a.walfile.read_index())
    assert a.restart_ok and a.r_begin_pos == a.pos and a.r_on_lock0 and a.restart_harmless()
    assert not a.connections.sealed and a.connections.reading
    _in_step(a)
    app.execute("INSERT INTO t VALUES ('after')")  # restarts the WAL: R read the file alone
    new = a.walfile.header()
    assert new is not None and new.salts != hdr.salts
    assert a.sync() == 1
    _in_step(a)


def test_a_checkpoint_the_app_refuses_the_seal_copies_what_was_committed_and_fails(opened, monkeypatch):
    db, app, a = opened
    monkeypatch.setattr(livedb, "SEAL_TIMEOUT_MS", 20)
    app.execute("INSERT INTO t VALUES (1)")
    app.execute("BEGIN IMMEDIATE")
    try:
        assert not a.checkpointer.checkpoint()
        assert not a.connections.sealed
    finally:
        app.execute("ROLLBACK")
    _in_step(a)


def test_a_long_tail_is_copied_outside_the_seal_and_the_seal_returns_with_little_behind_it(opened):
    db, app, a = opened
    with app:
        for _ in range(200):  # about 800 KB of frames: more than a seal copies
            app.execute("INSERT INTO t VALUES (randomblob(4000))")
    sealed_during_sync = []
    sync = a.sync

    def watched_sync() -> int:
        sealed_during_sync.append(a.connections.sealed)
        return sync()

    a.sync = watched_sync  # type: ignore[method-assign]
    got = a.checkpointer.seal_small_tail()
    try:
        assert got is not None and a.connections.sealed
        hdr, txs, _read_at = got
        assert hdr is not None and txs == []  # copied before the seal was taken again
        assert sealed_during_sync == [False]
    finally:
        a.connections.unseal()
    _in_step(a)


def test_a_cycle_restarts_the_read_under_the_seal_after_copying_the_tail(opened):
    db, app, a = opened
    app.execute("INSERT INTO t VALUES (1)")
    segments = a.stats["segments"]
    assert a.checkpointer.cycle(checkpoint=False)
    assert a.stats["segments"] == segments + 1  # the tail captured under the seal, spooled after it
    assert a.restart_ok and a.r_begin_pos == a.pos and not a.r_on_lock0  # frames left: R pins them
    assert not a.connections.sealed and a.connections.reading
    assert a.checkpointer.cycle(checkpoint=True)
    assert a.r_on_lock0  # checkpointed in full under the seal: R reads the file alone
    _in_step(a)


def test_a_truncation_an_app_reader_blocks_waits_longer_each_time_and_succeeds_once_it_ends(opened):
    db, app, a = opened
    app.execute("INSERT INTO t VALUES (1)")
    reader = apsw.Connection(db)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchall()  # pins the WAL at this commit
        with app:
            for _ in range(400):
                app.execute("INSERT INTO t VALUES (randomblob(4000))")
        size = os.path.getsize(db + "-wal")
        assert not a.checkpointer.truncate_wal()
        assert a.checkpointer.truncate_wait == 2.0 and a.checkpointer.truncate_at > 0
        assert not a.checkpointer.truncate_wal()
        assert a.checkpointer.truncate_wait == 4.0
        assert os.path.getsize(db + "-wal") == size
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert a.checkpointer.truncate_wal()
    assert os.path.getsize(db + "-wal") == 0 and a.checkpointer.truncate_wait == 1.0
    assert a.stats["wal_truncations"] == 1
    _in_step(a)
