"""The agent's reader and sealer (``connections.Connections``) on a real database, in one
thread. The application's connection goes through apsw's SQLite, as the agent's: two
copies of SQLite in one process do not see each other's locks."""

from __future__ import annotations

import logging
import os
import time

import apsw
import pytest

from litesync import livedb
from litesync.connections import Connections


def _stats() -> dict[str, float]:
    return {"seals": 0, "seal_seconds": 0.0, "max_seal_seconds": 0.0, "checkpoints": 0}


def _app(db: str) -> apsw.Connection:
    c = apsw.Connection(db)
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    c.set_busy_timeout(0)  # a write under the seal fails at once
    return c


@pytest.fixture
def opened(tmp_path):
    db = str(tmp_path / "app.db")
    app = _app(db)  # a rollback-journal database until the connections open
    stats = _stats()
    conns = Connections(db, logging.getLogger("test"), stats)
    try:
        yield db, app, conns, stats
    finally:
        conns.close()
        app.close()


def test_opening_switches_the_database_to_wal_and_gives_its_page_size(opened):
    db, app, conns, stats = opened
    assert conns.open() == 4096 and conns.is_open
    other = apsw.Connection(db)  # a new connection reads the mode from the file's header
    try:
        assert other.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    finally:
        other.close()
    conns.close()
    assert not conns.is_open and conns.reader is None and conns.sealer is None


def test_the_seal_keeps_the_app_from_writing_until_the_last_unseal(opened):
    db, app, conns, stats = opened
    conns.open()
    assert conns.seal() and conns.seal() and conns.sealed  # taken twice, released twice
    with pytest.raises(apsw.BusyError):
        app.execute("INSERT INTO t VALUES (1)")
    conns.unseal()
    with pytest.raises(apsw.BusyError):
        app.execute("INSERT INTO t VALUES (2)")
    conns.unseal()
    assert not conns.sealed
    app.execute("INSERT INTO t VALUES (3)")
    assert stats["seals"] == 1 and 0 < stats["max_seal_seconds"] == stats["seal_seconds"]


def test_a_seal_the_app_refuses_for_too_long_is_not_taken(opened, monkeypatch, caplog):
    db, app, conns, stats = opened
    conns.open()
    monkeypatch.setattr(livedb, "SEAL_TIMEOUT_MS", 20)
    app.execute("BEGIN IMMEDIATE")
    try:
        assert not conns.seal() and not conns.sealed
    finally:
        app.execute("ROLLBACK")
    assert stats["seals"] == 0
    assert "could not take the write lock within " in caplog.text


def test_the_seal_gives_up_after_its_timeout_in_elapsed_time_however_slow_each_sleep(opened, monkeypatch):
    db, app, conns, stats = opened
    conns.open()
    monkeypatch.setattr(livedb, "SEAL_TIMEOUT_MS", 200)
    real_sleep = livedb.time.sleep
    # A loaded machine: each 0.2 ms sleep takes 2 ms. Counting tries waited 10 times as long.
    monkeypatch.setattr(livedb.time, "sleep", lambda s: real_sleep(s * 10))
    app.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.monotonic()
        assert not conns.seal()
        waited = time.monotonic() - t0
    finally:
        app.execute("ROLLBACK")
    assert 0.2 <= waited < 0.6, waited


def test_the_readers_read_stops_a_checkpoint_at_the_frames_it_pinned(opened):
    db, app, conns, stats = opened
    conns.open()
    app.execute("INSERT INTO t VALUES (randomblob(3000))")
    conns.begin_read()
    app.execute("INSERT INTO t VALUES (randomblob(3000))")  # after the reader's mark
    frames, checkpointed = conns.checkpoint()
    assert 0 < checkpointed < frames
    conns.end_read()
    assert conns.checkpoint() == (frames, frames)
    assert stats["checkpoints"] == 2


def test_under_the_seal_the_reader_checkpoints_between_reads(opened):
    db, app, conns, stats = opened
    conns.open()
    app.execute("INSERT INTO t VALUES (randomblob(3000))")
    assert conns.seal()
    try:
        frames, checkpointed = conns.checkpoint()
    finally:
        conns.unseal()
    assert frames == checkpointed > 0


def test_a_truncate_checkpoint_empties_the_wal_unless_a_reader_holds_it(opened):
    db, app, conns, stats = opened
    conns.open()
    app.execute("INSERT INTO t VALUES (randomblob(3000))")
    conns.begin_read()
    app.execute("INSERT INTO t VALUES (randomblob(3000))")
    assert not conns.checkpoint_truncate(lambda: True)  # the reader pins a frame: busy
    assert os.path.getsize(db + "-wal") > 0
    conns.end_read()
    assert conns.checkpoint_truncate(lambda: True)
    assert os.path.getsize(db + "-wal") == 0
    assert (stats["checkpoints"], stats["seals"]) == (2, 2)  # it holds the write lock as a seal does
