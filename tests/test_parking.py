"""Parking: a database idle under descriptor pressure closes its connections (DbAgent.park)
and reopens on its next commit, continuing its generation only when that is provable."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from litesync.agent import DbAgent
from litesync.livedb import read_live
from litesync.errors import DatabaseError


def _open_files() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out


_APP = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA wal_autocheckpoint=0")
for line in sys.stdin:
    if line.strip() == "close":
        conn.close()
    else:
        conn.execute(line).fetchall()
    print("ok", flush=True)
"""


class App:
    """The application: another process with one connection, which never checkpoints on
    its own; ``execute`` runs a statement there and waits for it."""

    def __init__(self, db: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", _APP, db], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        self.execute("SELECT count(*) FROM t")  # its connection opens the database and WAL now

    def execute(self, sql: str) -> None:
        self.p.stdin.write(sql + "\n")
        self.p.stdin.flush()
        assert self.p.stdout.readline() == "ok\n"

    def close(self) -> None:
        self.execute("close")

    def stop(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=10)


@pytest.fixture
def app(tmp_path):
    db = str(tmp_path / "app.db")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("INSERT INTO t (v) VALUES ('first')")
    c.close()
    a = App(db)
    yield db, a
    a.stop()


def _agent(db: str) -> DbAgent:
    agent = DbAgent(db, snapshot_interval=None)
    agent.open()
    agent.start()
    return agent


def _park(agent: DbAgent) -> None:
    """Park ``agent`` once its files have been quiet long enough for their marks to count
    (see Parking.racy): right after a write, park declines."""
    assert not agent.park()
    time.sleep(0.1)
    assert agent.park()


def rows(path: str, table: str = "t") -> list[str]:
    c = sqlite3.connect(path)
    try:
        return [r[0] for r in c.execute(f"SELECT v FROM {table} ORDER BY id")]
    finally:
        c.close()


def restored(agent: DbAgent, out: str, table: str = "t") -> list[str]:
    from litesync.restore import restore

    restore(agent.spool.client, out, force=True)
    return rows(out, table)


def test_a_parked_database_holds_no_descriptor_of_its_files(app):
    db, conn = app
    agent = _agent(db)
    try:
        names = {db, db + "-wal", db + "-shm"}
        assert names & _open_files()
        _park(agent)
        assert not names & _open_files()
        assert agent.parked and agent.parked_unchanged()
        conn.execute("INSERT INTO t (v) VALUES ('while parked')")
        assert not agent.parked_unchanged()
    finally:
        agent.close()


def test_commits_in_the_same_wal_continue_the_generation(app):
    db, conn = app
    agent = _agent(db)
    try:
        conn.execute("INSERT INTO t (v) VALUES ('before')")
        agent.step()
        gen, segs, txs = agent.generation, agent.stats["segments"], agent.stats["transactions"]
        _park(agent)
        conn.execute("INSERT INTO t (v) VALUES ('a')")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # checkpointed, not restarted
        agent.unpark()  # copies it, under a seal (see the test after the next)
        agent.step()
        assert (agent.generation, agent.stats["segments"], agent.stats["transactions"]) == (gen, segs + 1, txs + 1)
    finally:
        agent.close()


def test_a_restarted_wal_continues_the_generation_with_the_difference(app, tmp_path, caplog):
    db, conn = app
    agent = _agent(db)
    try:
        gen, segs, txs = agent.generation, agent.stats["segments"], agent.stats["transactions"]
        _park(agent)
        # Everything copied is checkpointed, the WAL truncated, then commits start a new WAL.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("INSERT INTO t (v) VALUES ('in a new WAL')")
        conn.execute("INSERT INTO t (v) VALUES ('and another')")
        caplog.set_level("INFO")
        agent.unpark()
        assert "copied what changed (1 page) as one transaction" in caplog.text
        conn.execute("INSERT INTO t (v) VALUES ('after')")
        assert agent.step() == 1
        assert (agent.generation, agent.stats["segments"], agent.stats["transactions"]) == (gen, segs + 2, txs + 2)
        assert restored(agent, str(tmp_path / "r.db")) == rows(db) == ["first", "in a new WAL", "and another", "after"]
    finally:
        agent.close()


def test_commits_checkpointed_away_while_parked_are_copied_as_their_difference(app, tmp_path):
    db, conn = app
    agent = _agent(db)
    try:
        gen = agent.generation
        _park(agent)
        conn.execute("INSERT INTO t (v) VALUES ('checkpointed away')")
        conn.execute("DELETE FROM t WHERE v = 'first'")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("INSERT INTO t (v) VALUES ('in a new WAL')")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # some of the new WAL in the file too
        conn.execute("INSERT INTO t (v) VALUES ('and one more')")
        agent.unpark()
        agent.step()
        assert agent.generation == gen
        out = str(tmp_path / "r.db")
        assert restored(agent, out) == rows(db) == ["checkpointed away", "in a new WAL", "and one more"]
        assert sqlite3.connect(out).execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        agent.close()


def test_a_wal_removed_by_the_last_connection_closing(app, tmp_path):
    db, conn = app
    agent = _agent(db)
    try:
        gen = agent.generation
        _park(agent)
        conn.close()  # the last connection checkpoints and removes the WAL
        assert not os.path.exists(db + "-wal")
        segs = agent.stats["segments"]
        agent.unpark()  # nothing was committed: the file is the state copied
        assert (agent.generation, agent.stats["segments"]) == (gen, segs)
        app2 = App(db)
        app2.execute("INSERT INTO t (v) VALUES ('after')")
        assert agent.step() == 1 and agent.generation == gen
        app2.stop()
        assert restored(agent, str(tmp_path / "r.db")) == rows(db) == ["first", "after"]
    finally:
        agent.close()


_WRITER = """
import random, sqlite3, sys, time
names, seed, seconds = sys.argv[1].split(","), int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(seed)
kept = {}
end = time.time() + seconds
i = 0
while time.time() < end:
    name = rng.choice(names)
    how = rng.random()
    conn = kept.get(name) or sqlite3.connect(name, isolation_level=None)
    conn.execute("INSERT INTO t(v) VALUES (?)", (f"row {i}",))
    i += 1
    if how < 0.3:
        conn.close()  # the last connection: checkpoints and removes the WAL
        kept.pop(name, None)
    elif how < 0.4:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        kept[name] = conn
    else:
        kept[name] = conn
    time.sleep(rng.random() * 0.02)
for conn in kept.values():
    conn.close()
"""


def test_an_agent_short_of_descriptors_parks_idle_databases_and_restores_stay_exact(tmp_path):
    import json
    import random
    import resource
    import shutil

    from dbcheck import content_digest, integrity
    from proc import clean_env, litesync, wait_for
    from test_fleet import empty_wal_db, snapshots_in, tenants_config

    n, room = 120, 12
    tenants, store, cfg = tenants_config(tmp_path)
    template = str(tmp_path / "template.db")
    empty_wal_db(template)
    names = [str(tenants / f"tenant{i:03d}.db") for i in range(n)]
    for name in names:
        shutil.copyfile(template, name)
    # Room for `room` open databases: runner.FDS_RESERVED, a lock per database, 8 per open one.
    limit = 256 + n + 8 * room
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "litesync", "--config", str(cfg), "replicate"], stdout=out, stderr=out,
            env=clean_env(), preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
    try:
        wait_for(lambda: len(snapshots_in(store)) == n, 120, 0.5)
        written = random.Random(3).sample(names, 30)
        subprocess.run([sys.executable, "-c", _WRITER, ",".join(written), "5", "6"], check=True, timeout=60)
    finally:
        agent.terminate()
        assert agent.wait(timeout=60) == 0
    text = log_path.read_text()
    assert "Too many open files" not in text and "Traceback" not in text, text[-3000:]
    parks = 0
    (tmp_path / "restored").mkdir()
    for name in sorted(set(written) | set(names[:5])):
        st = json.loads((tenants / f".{os.path.basename(name)}-litesync" / "status.json").read_text())
        parks += st["parks"]
        out = str(tmp_path / "restored" / os.path.basename(name))
        r = litesync("restore", "-o", out, "--config", str(cfg), name)
        assert r.returncode == 0, r.stderr
        assert integrity(out) == "ok"
        assert content_digest(out) == content_digest(name), name
    assert parks > len(written)  # every database parked at least once at start, many again later


def test_a_wal_checkpointed_in_full_while_parked_then_restarted_loses_nothing(app, tmp_path):
    """After parking, the app commits T1 to the same WAL and checkpoints it in full; unpark
    finds the WAL continuing, and R, begun then, pins nothing: T2 restarts the WAL. The restart
    is harmless only because unpark copied T1 and began R again under a seal."""
    db, conn = app
    conn.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT)")  # T1 writes a page T2 does not
    reader = App(db)
    agent = _agent(db)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t")  # an app's reader: the agent's checkpoint is partial
        conn.execute("INSERT INTO t (v) VALUES ('T0')")
        agent.step()
        assert agent.checkpoint()
        reader.execute("COMMIT")
        _park(agent)
        conn.execute("INSERT INTO u (v) VALUES ('T1')")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        agent.unpark()
        conn.execute("INSERT INTO t (v) VALUES ('T2')")  # restarts the WAL
        agent.step()
        out = str(tmp_path / "r.db")
        assert restored(agent, out) == rows(db) and rows(out, "u") == rows(db, "u") == ["T1"]
    finally:
        agent.close()
        reader.stop()


def test_a_commit_while_parking_is_never_claimed_copied(app, tmp_path):
    """A commit right after park's last look (here: as its connections close) changes the
    marks taken before that look: the parked agent sees it, and copied_through does not claim it."""
    db, conn = app
    agent = _agent(db)
    try:
        real = agent.disconnect

        def disconnect_then_commit() -> None:
            real()
            conn.execute("INSERT INTO t (v) VALUES ('committed while parking')")

        time.sleep(0.1)
        agent.disconnect = disconnect_then_commit  # type: ignore[method-assign]
        assert agent.park()
        agent.disconnect = real  # type: ignore[method-assign]
        before = agent.copied_through
        assert not agent.parked_unchanged()
        assert agent.copied_through == before
        agent.unpark()
        agent.step()
        assert restored(agent, str(tmp_path / "r.db")) == rows(db) == ["first", "committed while parking"]
    finally:
        agent.close()


def _databases_config(tmp_path, names: list[str]):
    """WAL databases ``names`` in ``tmp_path``, and the loaded config replicating each to a directory."""
    from litesync.config import load_config

    paths = []
    for name in names:
        p = str(tmp_path / name)
        c = sqlite3.connect(p, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        c.close()
        paths.append(p)
    (tmp_path / "litesync.yml").write_text("dbs:\n" + "".join(
        f"  - path: {p}\n    replicas:\n      - url: file://{tmp_path}/store/{os.path.basename(p)}\n" for p in paths))
    return paths, load_config(str(tmp_path / "litesync.yml"))


def test_a_database_waiting_for_a_slot_stops_at_once(tmp_path):
    """Stopping, a database still waiting for a slot of the budget finishes without opening,
    whatever the database holding the slot does (it comes later in the list here)."""
    from litesync.runner import DbReplication, OpenBudget

    paths, cfg = _databases_config(tmp_path, ["a.db", "b.db"])
    budget = OpenBudget(max_open=1)
    a, b = DbReplication(cfg.dbs[0], budget=budget), DbReplication(cfg.dbs[1], budget=budget)
    writer = App(paths[1])
    busy = threading.Event()

    def keep_busy() -> None:
        while not busy.is_set():
            writer.execute("INSERT INTO t (v) VALUES ('x')")
            time.sleep(0.1)

    t = threading.Thread(target=keep_busy, daemon=True)
    try:
        b.start()
        assert b.started.wait(10)
        t.start()
        a.start()
        time.sleep(1.0)
        assert (budget.open, budget.waiting) == (1, 1)
        a.request_stop()
        b.request_stop()
        stopped = threading.Thread(target=a.stop, args=(5.0,), daemon=True)
        stopped.start()
        stopped.join(10)
        assert not stopped.is_alive()
        assert budget.waiting == 0
    finally:
        busy.set()
        t.join(5)
        writer.stop()
        b.stop(5.0)


def _parked_after_a_full_checkpoint(agent: DbAgent, conn: App) -> None:
    """Park, then have the app restart the WAL, commit, and checkpoint it in full: unpark
    must resync, and R then reads under read lock 0, which does not stop a WAL restart."""
    _park(agent)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("INSERT INTO t (v) VALUES ('while parked')")
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


@pytest.mark.parametrize("when", ["resync", "scan_view"])
def test_a_wal_restarted_while_a_parked_database_is_read_is_read_again(app, tmp_path, when):
    """The app's commit restarts the WAL right after the view is taken, the seal released
    (the scan then sees it), or right after the scan (the changed pages are then read from
    the new WAL): the read is done again, and the restore is exact, in the same generation."""
    db, conn = app
    agent = _agent(db)
    try:
        gen = agent.generation
        _parked_after_a_full_checkpoint(agent, conn)
        target = agent.snapshotter if when == "scan_view" else agent.parking
        real = getattr(target, when)
        calls: list[int] = []

        def then_commit(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1 and when == "resync":
                conn.execute("INSERT INTO t (v) VALUES ('during the read')")  # restarts the WAL
            result = real(*args, **kwargs)
            if len(calls) == 1 and when == "scan_view":
                conn.execute("INSERT INTO t (v) VALUES ('during the read')")
            return result

        setattr(target, when, then_commit)
        agent.unpark()
        setattr(target, when, real)
        agent.step()
        assert len(calls) >= 2  # read again
        assert agent.generation == gen
        assert restored(agent, str(tmp_path / "r.db")) == rows(db) == ["first", "while parked", "during the read"]
    finally:
        agent.close()


# --- a database file replaced under the agent ------------------------------------------------


def _make(path: str, tag: str, n: int, extra: int = 0) -> None:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(n):
        c.execute("INSERT INTO t (v) VALUES (?)", (f"{tag}{i}",))
    if extra:
        c.execute("CREATE TABLE u (x)")
        c.executemany("INSERT INTO u VALUES (?)", [("y" * 500,)] * extra)
    c.close()


def test_a_symbolic_link_pointed_at_another_database_replicates_that_one(tmp_path):
    """Blue/green: app.db -> a.db becomes app.db -> b.db. The new generation is b.db's, read
    with b.db's WAL (not a.db's), and b.db's later commits follow it."""
    a, b, link = str(tmp_path / "a.db"), str(tmp_path / "b.db"), str(tmp_path / "app.db")
    _make(a, "A", 3)
    _make(b, "B", 5, extra=100)
    os.symlink("a.db", link)
    app_a = App(link)
    agent = _agent(link)
    try:
        app_a.execute("INSERT INTO t (v) VALUES ('A-late')")
        agent.step()
        os.symlink("b.db", str(tmp_path / "tmp.lnk"))
        os.replace(str(tmp_path / "tmp.lnk"), link)
        app_b = App(link)
        app_b.execute("INSERT INTO t (v) VALUES ('B-new1')")
        reason = agent.replaced()
        assert reason is not None
        agent.adopt_replacement(reason)
        app_b.execute("INSERT INTO t (v) VALUES ('B-new2')")
        agent.step()
        out = str(tmp_path / "r.db")
        assert restored(agent, out) == rows(b) == ["B0", "B1", "B2", "B3", "B4", "B-new1", "B-new2"]
        count = "SELECT count(*), sum(length(x)) FROM u"
        assert sqlite3.connect(out).execute(count).fetchall() == sqlite3.connect(b).execute(count).fetchall()
        app_b.stop()
    finally:
        app_a.stop()
        agent.close()


def test_a_database_replaced_beside_its_old_wal_is_refused_in_one_line(tmp_path):
    """`mv new.db app.db` with the old database's -wal still there (the agent's read kept the
    app's close from removing it): SQLite applies that WAL to the new file. The agent says so
    and what to do, and ships nothing of it as the new file's."""
    db, new = str(tmp_path / "app.db"), str(tmp_path / "new.db")
    _make(db, "A", 3)
    _make(new, "B", 5)
    app = App(db)
    agent = _agent(db)
    try:
        app.execute("INSERT INTO t (v) VALUES ('A-late')")
        agent.step()
        gen, snaps = agent.generation, agent.stats["snapshots"]
        app.close()
        os.replace(new, db)
        reason = agent.replaced()
        assert reason is not None
        with pytest.raises(DatabaseError, match=r"the replaced database's WAL is still beside it .*app\.db-wal.*"
                                                r"remove the -wal and -shm files before replacing a database"):
            agent.adopt_replacement(reason)
        assert (agent.generation, agent.stats["snapshots"]) == (gen, snaps)
        assert agent.replaced() is not None  # tried again at the next turn
    finally:
        app.stop()
        agent.close()


def test_a_database_replaced_again_while_the_agent_opens_it_is_opened_again(tmp_path):
    """A second replacement between the agent's connect and its look at the path: the agent
    does not take one file's identity for the other's (it would then never notice again)."""
    db = str(tmp_path / "app.db")
    _make(db, "A", 3)
    agent = _agent(db)
    try:
        _make(str(tmp_path / "n1.db"), "N1", 2)
        _make(str(tmp_path / "n2.db"), "N2", 4, extra=20)
        os.replace(str(tmp_path / "n1.db"), db)
        real = agent._connect

        def connect_then_replace() -> None:
            real()
            agent._connect = real
            os.replace(str(tmp_path / "n2.db"), db)

        agent._connect = connect_then_replace
        with pytest.raises(DatabaseError, match="changed while the agent opened it"):
            agent.adopt_replacement(agent.replaced() or "")
        agent.adopt_replacement(agent.replaced() or "")  # the next turn
        assert agent.replaced() is None
        assert restored(agent, str(tmp_path / "r.db")) == rows(db) == ["N20", "N21", "N22", "N23"]
    finally:
        agent.close()


def test_a_fleet_keeps_its_large_databases_open(tmp_path, monkeypatch):
    """A large database is not parked for memory's sake: its next unpark could read it whole."""
    from litesync import runner
    from litesync.runner import DbReplication, OpenBudget

    monkeypatch.setattr(runner, "FLEET_OPEN", 2)
    monkeypatch.setattr(runner, "PARK_IDLE_AFTER", 0.2)
    monkeypatch.setattr(runner, "PARK_IDLE_MAX_BYTES", 4096)  # every database here is larger
    _paths, cfg = _databases_config(tmp_path, [f"t{i}.db" for i in range(4)])
    budget = OpenBudget()
    reps = [DbReplication(d, budget=budget, poll_interval=0.1) for d in cfg.dbs]
    try:
        for r in reps:
            r.start()
        assert all(r.started.wait(10) for r in reps)
        time.sleep(1.5)  # many turns past PARK_IDLE_AFTER
        assert [r.agent.parked for r in reps] == [False] * 4 and budget.open == 4
        assert all(r.agent.hasher.page_count * r.agent.page_size > 4096 for r in reps)
    finally:
        for r in reps:
            r.request_stop()
        for r in reps:
            r.stop(5.0)


def test_a_fleet_parks_its_idle_databases_without_pressure_and_wakes_them_on_a_commit(tmp_path, monkeypatch):
    """Memory follows the work: an agent holding more than FLEET_OPEN open databases parks
    those idle PARK_IDLE_AFTER, though the budget has room; a commit reopens one."""
    from litesync import runner
    from litesync.runner import DbReplication, OpenBudget
    from proc import litesync, wait_for

    monkeypatch.setattr(runner, "FLEET_OPEN", 2)
    monkeypatch.setattr(runner, "PARK_IDLE_AFTER", 0.5)
    paths, cfg = _databases_config(tmp_path, [f"t{i}.db" for i in range(4)])
    budget = OpenBudget()
    reps = [DbReplication(d, budget=budget, poll_interval=0.1) for d in cfg.dbs]
    writer = None
    try:
        for r in reps:
            r.start()
        assert all(r.started.wait(10) for r in reps)
        assert budget.capacity > len(reps)  # no pressure: room for every one
        wait_for(lambda: sum(r.agent.parked for r in reps) >= len(reps) - runner.FLEET_OPEN, timeout=20)
        assert budget.open <= runner.FLEET_OPEN
        time.sleep(1.0)
        assert sum(r.agent.parked for r in reps) < len(reps)  # parking stops at FLEET_OPEN open
        woken = next(r for r in reps if r.agent.parked)
        writer = App(woken.cfg.path)
        writer.execute("INSERT INTO t (v) VALUES ('after parking')")
        wait_for(lambda: woken.agent.stats["transactions"] > 0, timeout=10)
        assert woken.agent.stats["unparks"] >= 1
    finally:
        if writer is not None:
            writer.stop()
        for r in reps:
            r.request_stop()
        for r in reps:
            r.stop(5.0)
    out = str(tmp_path / "r.db")
    r = litesync("restore", "-o", out, f"file://{tmp_path}/store/{os.path.basename(woken.cfg.path)}")
    assert r.returncode == 0, r.stderr
    assert rows(out) == ["after parking"]


def _cat_over(src: str, dst: str) -> None:
    """``cat src > dst``, from another process: a descriptor of the database opened and
    closed here would drop every lock this process (the agent's) holds on it."""
    subprocess.run(["sh", "-c", 'cat "$1" > "$2"', "sh", src, dst], check=True)


def test_a_database_file_copied_over_in_place_starts_a_new_generation_from_it(app, tmp_path, caplog):
    """The same inode, other content (``cat backup.db > app.db``), while the agent runs; the
    app's next commit restarts the WAL. Its frames must not be appended to the old file's
    history: they were, and the replicated state was neither file's. (The copy is no larger
    than the database: the WAL the agent keeps open still gives SQLite the old page count.)"""
    db, conn = app
    conn.execute("CREATE TABLE u (x)")
    for i in range(20):
        conn.execute(f"INSERT INTO u VALUES ('{i}' || zeroblob(1000))")
    other = str(tmp_path / "other.db")
    _make(other, "other", 5, extra=3)  # fewer pages: another first page
    agent = _agent(db)
    try:
        agent.step()
        assert agent.checkpoint()  # the WAL checkpointed in full: the app's next commit restarts it
        conn.stop()
        _cat_over(other, db)
        writer = App(db)
        writer.execute("INSERT INTO t (v) VALUES ('after the copy')")
        writer.stop()
        with caplog.at_level(logging.WARNING, logger="litesync.agent"):
            agent.step()
        assert "starting a new generation: the database file was changed in place" in caplog.text
        assert agent.stats["generations"] == 2
        assert read_live(db).checksum == agent.hasher.value
        out = str(tmp_path / "r.db")
        assert restored(agent, out) == rows(db) == [f"other{i}" for i in range(5)] + ["after the copy"]
    finally:
        agent.close()


@pytest.mark.parametrize("fault", ["disk full", "WAL truncated under the resync"])
def test_a_resync_that_fails_leaves_the_database_parked_and_the_next_unpark_copies_it(app, tmp_path, fault):
    """The commits made while parked, their WAL gone: a resync that fails must not leave the
    agent open on a state it claims copied (copied_through moved on, the commit never came)."""
    import errno

    db, conn = app
    agent = _agent(db)
    try:
        agent.step()
        _park(agent)
        if fault == "disk full":
            conn.execute("INSERT INTO t (v) VALUES ('while parked')")
            conn.close()  # the last connection: SQLite checkpoints and removes the WAL
            writing, calls = agent.spool.writing, []

            def full_once(name):
                calls.append(name)
                if len(calls) == 1:
                    raise OSError(errno.ENOSPC, "No space left on device", agent.spool.root)
                return writing(name)

            agent.spool.writing = full_once  # type: ignore[method-assign]
            expected: type[BaseException] = OSError
        else:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("INSERT INTO t (v) VALUES ('while parked')")
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # in full: R reads on lock 0
            scan = agent.snapshotter.scan_view

            def then_truncated(*args, **kw):
                out = scan(*args, **kw)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return out

            agent.snapshotter.scan_view = then_truncated  # type: ignore[method-assign]
            expected = DatabaseError  # the WAL kept changing: tried again, then given up on
        try:
            agent.unpark()
        except expected:
            assert agent.parked and not agent.parked_unchanged()  # so the runner unparks again
            agent.unpark()
        agent.step()
        assert read_live(db).checksum == agent.hasher.value
        assert rows(db) == ["first", "while parked"]
        assert restored(agent, str(tmp_path / "r.db")) == rows(db)
    finally:
        agent.close()


def test_a_database_unlinked_while_the_app_writes_on_is_still_copied(app, tmp_path):
    """Its path leads nowhere, but the app holds it open and commits: the agent copies on
    (before, checking the file for a change in place failed at every turn)."""
    db, conn = app
    agent = _agent(db)
    try:
        agent.step()
        assert agent.checkpoint()
        os.rename(db, db + ".moved")  # unlinked from its path; the -wal and -shm stay
        for i in range(3):
            conn.execute(f"INSERT INTO t (v) VALUES ('unlinked {i}')")
            assert agent.step() == 1
    finally:
        agent.close()


def test_a_copy_over_the_database_with_the_same_first_page_is_noticed_by_its_file_times(app, tmp_path, caplog):
    """In WAL mode page 1 changes only when a commit touches it (its change counter stays):
    a backup of the same database is most often the same first page. The file itself was
    written since the agent's read began, which SQLite never does while that read is on lock 0."""
    db, conn = app
    conn.execute("CREATE TABLE big (x)")
    for i in range(50):
        conn.execute(f"INSERT INTO big VALUES ('{i}' || zeroblob(500))")
    backup = str(tmp_path / "backup.db")
    agent = _agent(db)
    try:
        agent.step()
        assert agent.checkpoint()
        subprocess.run(["cp", db, backup], check=True)  # checkpointed in full: a backup of the database
        conn.execute("UPDATE big SET x = 'changed' || zeroblob(500) WHERE rowid = 10")  # page 1 stays
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        agent.step()
        assert agent.checkpoint()
        conn.stop()
        _cat_over(backup, db)
        writer = App(db)
        writer.execute("INSERT INTO t (v) VALUES ('after the copy')")
        writer.stop()
        with caplog.at_level(logging.WARNING, logger="litesync.agent"):
            agent.step()
        assert "the database file was changed in place: written since the agent's read of it began" in caplog.text
        assert read_live(db).checksum == agent.hasher.value
    finally:
        agent.close()
