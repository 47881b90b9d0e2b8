"""Validation of a replica while the database replicates (``validation.Validator``), driven
by hand on a real database and a file replica in one thread."""

from __future__ import annotations

import threading

import apsw
import pytest

from litesync.agent import DbAgent
from litesync.errors import LitesyncError
from litesync.replica.file import FileReplicaClient
from litesync.shipper import Shipper
from litesync.validation import Validator


@pytest.fixture
def replicated(tmp_path):
    """(application connection, agent, shipper, validator) for a database whose every commit
    so far is in its file replica; the validator never waits for the replica to catch up."""
    db = str(tmp_path / "app.db")
    app = apsw.Connection(db)  # apsw's SQLite, as the agent: see test_wal_truncate._app
    app.execute("PRAGMA journal_mode=WAL").fetchall()
    app.execute("CREATE TABLE t (x TEXT)")
    app.execute("INSERT INTO t VALUES ('first')")
    agent = DbAgent(db, snapshot_interval=None)
    agent.open()
    shipper = Shipper(agent.spool, FileReplicaClient(str(tmp_path / "replica")), str(tmp_path / "pos.json"),
                      db=db, replica="file", request_snapshot=threading.Event())
    touched: list[int] = []
    validator = Validator(db, agent, [shipper], interval=None, db_id=None, started=threading.Event(),
                          stop_event=threading.Event(), failed=lambda: False,
                          touch=lambda: touched.append(1), wait_timeout=0.0)
    try:
        agent.start()
        agent.step()
        while shipper.ship_one():
            pass
        assert not shipper.pending()
        yield app, agent, shipper, validator, touched
    finally:
        shipper.client.close()
        agent.close()
        app.close()


def test_a_replica_holding_every_commit_validates_and_the_verdict_is_kept(replicated):
    app, agent, shipper, validator, touched = replicated
    assert validator.validate(shipper)
    verdict = validator.verdicts["file"]
    assert (verdict["ok"], verdict["failed"], verdict["last"]["ok"], touched) == (1, 0, True, [1])
    assert verdict["last"]["message"].endswith("equals the live database's")


def test_a_replica_missing_a_commit_fails_validation_and_says_why(replicated):
    app, agent, shipper, validator, touched = replicated
    app.execute("INSERT INTO t VALUES ('not copied yet')")
    assert not validator.validate(shipper)
    verdict = validator.verdicts["file"]
    assert (verdict["ok"], verdict["failed"], verdict["last"]["ok"], touched) == (0, 1, False, [1])
    assert verdict["last"]["message"].endswith(
        ": the replica may lack the latest transactions (no running agent reported it caught up)")


def test_a_validation_cut_short_by_the_stop_records_no_verdict(replicated):
    app, agent, shipper, validator, touched = replicated
    validator.stop_event.set()
    with pytest.raises(LitesyncError, match=r"^.*app\.db: validation cut short: the agent is stopping$"):
        validator.wait_shipped(shipper, 0.0, 10.0)
    assert not validator.validate(shipper)
    assert (validator.verdicts["file"], touched) == ({"ok": 0, "failed": 0, "last": None}, [])


def test_a_validation_left_by_a_killed_agent_is_removed_by_the_next(tmp_path, monkeypatch):
    """An agent killed during a validation leaves its restore (as big as the database) in
    the state directory: a 62-minute soak found one per kill that hit a validation. The
    next agent removes it once it holds the lock; a `litesync verify` of its own is left."""
    import os
    import tempfile

    from litesync import layout

    db = str(tmp_path / "app.db")
    app = apsw.Connection(db)
    app.execute("PRAGMA journal_mode=WAL").fetchall()
    app.execute("CREATE TABLE t (x TEXT)")
    state = layout.state_dir_for(db)
    os.makedirs(state)
    left = tempfile.mkdtemp(prefix=layout.VALIDATION_TMP_PREFIX, dir=state)
    with open(os.path.join(left, "verify.db"), "wb") as f:
        f.write(b"\0" * 4096)
    cli = tempfile.mkdtemp(prefix="verify-", dir=state)
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    agent = DbAgent(db, snapshot_interval=None)
    try:
        agent.lock()
        assert not os.path.exists(left) and os.path.isdir(cli)
        # The validations of this agent are named so.
        monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
        agent.open()
        agent.start()
        shipper = Shipper(agent.spool, FileReplicaClient(str(tmp_path / "replica")), str(tmp_path / "pos.json"),
                          db=db, replica="file", request_snapshot=threading.Event())
        while shipper.ship_one():
            pass
        validator = Validator(db, agent, [shipper], interval=None, db_id=None, started=threading.Event(),
                              stop_event=threading.Event(), failed=lambda: False, touch=lambda: None,
                              wait_timeout=0.0)
        assert validator.validate(shipper)
        assert [os.path.basename(p)[:len(layout.VALIDATION_TMP_PREFIX)] for p in made] == \
            [layout.VALIDATION_TMP_PREFIX]
        shipper.client.close()
    finally:
        agent.close()
        app.close()
