"""A WAL file grown past max-wal-size is truncated once copied, never losing a commit."""

from __future__ import annotations

import os

import apsw

from dbcheck import content_digest, integrity
from proc import litesync, start_agent_ready, run_writer, stop, wait_for

from litesync.agent import DbAgent
from litesync.livedb import read_live


def _app(db: str) -> apsw.Connection:
    """An application's connection. Through apsw's SQLite, as the agent: two copies of
    SQLite in one process do not see each other's locks (the app's own process would)."""
    c = apsw.Connection(db)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    return c


def _burst(app: apsw.Connection, rows: int = 600) -> None:
    """One transaction of ``rows`` 4 KB rows: a WAL of about 2.5 MB."""
    with app:
        for _ in range(rows):
            app.execute("INSERT INTO t VALUES (randomblob(4000))")


def _agent(db: str) -> DbAgent:
    a = DbAgent(db, checkpoint_pages=1000, max_wal_size=1 << 20, snapshot_interval=None)
    a.open()
    a.start()
    return a


def _burst_checkpointed_in_full(tmp_path) -> tuple[str, apsw.Connection, DbAgent]:
    """A burst copied and checkpointed in full by an agent that does not truncate: (database, app, agent)."""
    db = str(tmp_path / "app.db")
    app = _app(db)
    a = _agent(db)
    a.max_wal_size = 1 << 30
    _burst(app)
    a.step()
    assert a.checkpoint()
    return db, app, a


def _in_step_with_the_database(a: DbAgent) -> None:
    """The replicated state is the live database's, in the generation it started with."""
    assert read_live(a.path).checksum == a.hasher.value
    assert a.stats["generations"] == 1


def test_a_wal_past_max_wal_size_is_truncated_once_copied_and_the_generation_goes_on(tmp_path):
    db = str(tmp_path / "app.db")
    app = _app(db)
    a = _agent(db)
    try:
        _burst(app)
        assert os.path.getsize(db + "-wal") > 2 << 20
        a.step()
        assert os.path.getsize(db + "-wal") == 0
        assert a.stats["wal_truncations"] == 1
        for i in range(20):  # the app's next commits start the WAL again; each is copied
            app.execute("INSERT INTO t VALUES (?)", (i,))
            a.step()
        assert 0 < os.path.getsize(db + "-wal") < 1 << 20
        _in_step_with_the_database(a)
    finally:
        a.close()


def test_an_app_reader_keeps_the_wal_from_truncation_until_it_ends(tmp_path):
    db = str(tmp_path / "app.db")
    app = _app(db)
    reader = apsw.Connection(db)
    a = _agent(db)
    try:
        app.execute("INSERT INTO t VALUES (1)")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchall()  # pins the WAL at its first commit
        _burst(app)
        size = os.path.getsize(db + "-wal")
        a.step()
        assert os.path.getsize(db + "-wal") == size
        assert a.stats["wal_truncations"] == 0
        app.execute("INSERT INTO t VALUES (2)")  # the app's writer was not left holding anything
        reader.execute("COMMIT")
        a.step()  # within the wait after a failed try: nothing
        assert a.stats["wal_truncations"] == 0
        a.checkpointer.truncate_at = 0.0  # the wait over
        a.step()
        assert os.path.getsize(db + "-wal") == 0
        _in_step_with_the_database(a)
    finally:
        a.close()


def test_a_commit_between_the_checkpoint_and_the_truncation_stops_it_and_is_copied(tmp_path):
    """The interleaving the truncation must survive: the app commits after the agent's last
    look, before its TRUNCATE checkpoint. The agent's read lock 0 makes the TRUNCATE fail."""
    db = str(tmp_path / "app.db")
    app = _app(db)
    a = _agent(db)
    truncate = a.checkpointer.checkpoint_truncate

    def commit_first() -> bool:
        app.execute("INSERT INTO t VALUES ('in between')")
        return truncate()

    a.checkpointer.checkpoint_truncate = commit_first  # type: ignore[method-assign]
    try:
        _burst(app)
        a.step()
        assert a.stats["wal_truncations"] == 0
        assert os.path.getsize(db + "-wal") > 0
        a.checkpointer.checkpoint_truncate = truncate  # type: ignore[method-assign]
        a.checkpointer.truncate_at = 0.0
        a.step()
        assert a.stats["wal_truncations"] == 1
        _in_step_with_the_database(a)
        assert app.execute("SELECT count(*) FROM t WHERE x = 'in between'").fetchall()[0][0] == 1
    finally:
        a.close()


def test_an_agent_truncates_the_wal_after_a_burst_and_restores_stay_exact(tmp_path):
    db = str(tmp_path / "app.db")
    cfg = tmp_path / "litesync.yml"
    url = f"file://{tmp_path / 'replica'}"
    cfg.write_text(f"max-wal-size: 256KiB\ndbs:\n  - path: {db}\n    replicas:\n      - url: {url}\n")
    log = str(tmp_path / "agent.log")
    run_writer(db, "--count", "1")
    agent = start_agent_ready("--config", str(cfg), log_path=log)
    run_writer(db, "--seconds", "3", "--rows", "20", "--row-size", "4000", "--incompressible")
    wait_for(lambda: os.path.getsize(db + "-wal") <= 256 << 10, timeout=30)
    expected = content_digest(db)
    assert stop(agent) == 0, open(log).read()
    text = open(log).read()
    assert "WAL truncated from" in text, text
    assert text.count("starting a new generation") == 1, text
    out = str(tmp_path / "restored.db")
    r = litesync("restore", "-o", out, url)
    assert r.returncode == 0, r.stderr
    assert integrity(out) == "ok"
    assert content_digest(out) == expected


def test_the_dead_end_of_a_large_wal_is_cut_in_steps_before_the_truncation(tmp_path, monkeypatch):
    """Freeing a large file's blocks is slow: the frames past the live ones go first, a step
    per brief seal, so the TRUNCATE checkpoint frees little under the write lock."""
    from litesync import checkpointer

    monkeypatch.setattr(checkpointer, "_SHRINK_STEP", 256 << 10)
    db, app, a = _burst_checkpointed_in_full(tmp_path)
    try:
        app.execute("INSERT INTO t VALUES ('restarts the WAL')")  # a few live frames at its start
        size = os.path.getsize(db + "-wal")
        assert size > 2 << 20
        a.max_wal_size = 1 << 20
        a.step()
        assert a.stats["wal_shrinks"] >= size // (256 << 10) - 2
        assert a.stats["wal_truncations"] == 1 and os.path.getsize(db + "-wal") == 0
        app.execute("INSERT INTO t VALUES ('after')")
        a.step()
        _in_step_with_the_database(a)
    finally:
        a.close()


def test_an_agent_restarted_after_truncating_the_wal_resumes_its_generation(tmp_path):
    """With no WAL, the database file alone is the state copied last: nothing to prove
    beyond its checksum, no new generation."""
    db = str(tmp_path / "app.db")
    app = _app(db)
    a = _agent(db)
    _burst(app)
    a.step()
    assert a.stats["wal_truncations"] == 1
    generation = a.generation
    a.close()
    b = _agent(db)
    try:
        assert (b.generation, b.stats["generations"], b.stats["snapshots"]) == (generation, 0, 0)
        app.execute("INSERT INTO t VALUES ('after the restart')")
        b.step()
        assert read_live(db).checksum == b.hasher.value
        assert b.stats["generations"] == 0
    finally:
        b.close()


def test_a_live_read_while_the_wal_is_truncated_reads_the_database_file(tmp_path, monkeypatch):
    """``read_live`` (validation, ``litesync verify``) begun on a WAL checkpointed in full
    reads no frame: before, it read frames the agent's truncation took away (EOFError)."""
    from litesync import livedb

    db, app, a = _burst_checkpointed_in_full(tmp_path)
    try:
        a.max_wal_size = 1 << 20
        read_view = livedb.read_view

        def truncated_meanwhile(*args, **kw):
            assert a.truncate_wal() and os.path.getsize(db + "-wal") == 0
            return read_view(*args, **kw)

        monkeypatch.setattr(livedb, "read_view", truncated_meanwhile)
        assert read_live(db).checksum == a.hasher.value
    finally:
        a.close()
