"""Parking (``parking.Parking``) driven directly, in one thread, on a real database that
another process writes: its stat marks, ``park``, ``release`` and ``unpark``. The app runs
in its own process because a parked agent closes its descriptors of the -wal and -shm,
which would drop the locks of an app connection in this process."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import time

import pytest

from litesync.agent import DbAgent
from litesync.livedb import read_live
from litesync.parking import Parking

_APP = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA wal_autocheckpoint=0")
for line in sys.stdin:
    conn.execute(line).fetchall()
    print("ok", flush=True)
"""


class App:
    """Another process with one connection that never checkpoints on its own."""

    def __init__(self, db: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", _APP, db], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def execute(self, sql: str) -> None:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(sql + "\n")
        self.p.stdin.flush()
        assert self.p.stdout.readline() == "ok\n"

    def stop(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()
        self.p.wait(timeout=10)


@pytest.fixture
def started(tmp_path):
    """(database, app, agent): an agent opened and started, its files idle for a moment."""
    db = str(tmp_path / "app.db")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("INSERT INTO t (v) VALUES ('first')")
    c.close()
    app = App(db)
    agent = DbAgent(db, snapshot_interval=None)
    agent.open()
    agent.start()
    time.sleep(0.1)  # older than the file-system clock's tick: the marks can tell
    try:
        yield db, app, agent
    finally:
        agent.close()
        app.stop()


def test_marks_taken_in_the_same_tick_as_a_write_prove_nothing():
    now = time.time()
    fresh = ((1, 2, 4096, int(now * 1e9), int((now - 1) * 1e9)), None)
    old = ((1, 2, 4096, int((now - 1) * 1e9), int((now - 1) * 1e9)), None)
    assert Parking.racy(now, fresh) and not Parking.racy(now, old) and not Parking.racy(now, (None, None))


def test_a_parked_database_stays_parked_until_a_commit_changes_its_marks(started):
    db, app, agent = started
    parking = agent.parking
    assert parking.park() and parking.parked and not agent.is_open
    assert parking.marks == parking.file_marks()[1]
    before = agent.copied_through
    assert parking.parked_unchanged() and agent.copied_through[0] > before[0]
    app.execute("INSERT INTO t (v) VALUES ('while parked')")
    assert not parking.parked_unchanged()
    parking.unpark()
    assert not parking.parked and agent.is_open and parking.marks is None
    agent.sync()
    assert agent.hasher.value == read_live(db).checksum and agent.stats["generations"] == 1


def test_a_released_database_unparks_at_the_next_turn(started):
    db, app, agent = started
    parking = agent.parking
    parking.release()
    assert parking.parked and parking.marks == () and not parking.parked_unchanged()
    app.execute("INSERT INTO t (v) VALUES ('after the release')")
    parking.unpark()
    agent.sync()
    assert agent.hasher.value == read_live(db).checksum and agent.stats["generations"] == 1


def test_a_wal_restarted_while_parked_is_resynced_as_one_transaction(started, caplog):
    db, app, agent = started
    parking = agent.parking
    gen = agent.generation
    assert parking.park()
    app.execute("INSERT INTO t (v) VALUES ('one')")
    app.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the frames of 'one' are gone from the WAL
    app.execute("INSERT INTO t (v) VALUES ('two')")
    segments = agent.stats["segments"]
    with caplog.at_level(logging.INFO, logger="litesync.agent"):
        parking.unpark()
    assert "the WAL was restarted while the database was parked: copied what changed" in caplog.text
    assert agent.stats["segments"] == segments + 1 and agent.generation == gen
    assert agent.restart_ok and agent.r_begin_pos == agent.pos
    assert agent.hasher.value == read_live(db).checksum
