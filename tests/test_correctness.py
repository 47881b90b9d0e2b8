"""The ways a restore was once silently wrong or failed, each reproduced on real SQLite with
real processes: an app killed inside a commit, a clock that steps back, a commit that
shrinks the database below pages it spilled."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import torture

from dbcheck import content_digest, integrity
from proc import clean_env, litesync, start_agent_ready, stop, wait_for

APP = """
import sqlite3, sys
db, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("PRAGMA synchronous=FULL")
c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT, v BLOB)")
for i in range(n):
    c.execute("BEGIN")
    c.execute("INSERT INTO t(tag, v) VALUES (?, zeroblob(100))", (tag,))
    c.execute("COMMIT")
"""


def run_app(db: str, tag: str, n: int, *, killed_at_sync: bool = False) -> int:
    """Commit ``n`` rows tagged ``tag`` from a new process; with ``killed_at_sync`` the
    process is killed at its first fsync/fdatasync: after writing its commit's WAL frames,
    before the wal-index counts them."""
    cmd = [sys.executable, "-c", APP, db, tag, str(n)]
    if killed_at_sync:
        cmd = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync,fsync",
               "-e", "inject=fdatasync,fsync:signal=KILL:when=1", *cmd]
    return subprocess.run(cmd, env=clean_env(), timeout=60).returncode


def tags(path: str) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT tag, count(*) FROM t GROUP BY tag").fetchall())
    finally:
        conn.close()


def wait_until_restored(url: str, out: str, expected: dict[str, str], seconds: float = 10) -> None:
    """Restore ``url`` to ``out`` until its content digest is ``expected`` (the replica caught up)."""
    def caught_up() -> bool:
        restore(url, out)
        return content_digest(out) == expected

    wait_for(caught_up, seconds)


def restore(url: str, out: str) -> None:
    if os.path.exists(out):
        os.unlink(out)
    r = litesync("restore", "-o", out, url)
    assert r.returncode == 0, r.stderr
    assert integrity(out) == "ok"


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (.ci/run installs it)")
def test_an_app_killed_inside_a_commit_leaves_no_phantom_rows_and_replication_goes_on(tmp_path):
    """The killed transaction's frames chain correctly but the wal-index never counted
    them; the next writer overwrites them. The replica must hold every later commit and
    none of the killed one's rows."""
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    run_app(db, "base", 1)
    agent = start_agent_ready(db, url, log_path=str(tmp_path / "agent.log"))
    try:
        run_app(db, "base", 2)  # frames in the WAL, which the agent's read keeps from restarting
        assert run_app(db, "phantom", 1, killed_at_sync=True) == -9
        run_app(db, "later", 5)
        assert tags(db) == {"base": 3, "later": 5}  # read while the agent keeps the wal-index alive
        out = str(tmp_path / "restored.db")

        def caught_up() -> bool:
            restore(url, out)
            return tags(out) == {"base": 3, "later": 5}

        wait_for(caught_up, 10)
    finally:
        assert stop(agent) == 0
    restore(url, out)
    assert tags(out) == {"base": 3, "later": 5}


SHRINK = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA cache_size=10")
c.execute("BEGIN")
c.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
          "INSERT INTO big(v) SELECT randomblob(3000) FROM n")
c.execute("DELETE FROM big")
c.execute("INSERT INTO small(v) VALUES ('after the shrink')")
if sys.argv[2] == "INCREMENTAL":
    c.execute("PRAGMA incremental_vacuum").fetchall()  # the shrink, inside the same transaction
c.execute("COMMIT")
"""


@pytest.mark.parametrize("mode", ["FULL", "INCREMENTAL"])
def test_a_commit_that_spills_then_shrinks_the_database_restores(tmp_path, mode):
    """auto_vacuum plus a transaction larger than the page cache: frames for pages past the
    size the commit finally gives. Restore, and a restarted agent, must both work."""
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"PRAGMA auto_vacuum={mode}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE big(v BLOB)")
    conn.execute("CREATE TABLE small(v TEXT)")
    conn.close()
    log = str(tmp_path / "agent.log")
    agent = start_agent_ready(db, url, log_path=log)
    try:
        subprocess.run([sys.executable, "-c", SHRINK, db, mode], env=clean_env(), check=True, timeout=60)
        expected = content_digest(db)
        out = str(tmp_path / "restored.db")
        wait_until_restored(url, out, expected)
    finally:
        assert stop(agent) == 0
    # The agent starts again on the idle database (it crash-looped here before).
    agent = start_agent_ready(db, url, log_path=log)
    assert stop(agent) == 0, open(log).read()
    restore(url, out)
    assert content_digest(out) == content_digest(db)


def faketime_env(offset: int, tmp_path) -> dict[str, str]:
    """An environment whose processes see the wall clock shifted by ``offset`` seconds
    (libfaketime, with the torture suite's shim for Python's monotonic waits)."""
    lib = torture.Tools.find().faketime
    if lib is None:
        pytest.skip("needs libfaketime (.ci/run installs the faketime package)")
    return clean_env(torture.faketime_env(lib, offset, str(tmp_path / "faketime-shim")))


def replicate_once(db: str, url: str, env: dict[str, str] | None = None) -> None:
    r = litesync("replicate", "--once", db, url, env=env)
    assert r.returncode == 0, r.stderr


def checkpoint_truncate(db: str) -> None:
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    c.close()


@pytest.mark.parametrize("state,ahead", [("kept", 3600), ("lost", 3600), ("lost", 800 * 86400)])
def test_a_clock_behind_the_previous_generation_still_ships_the_newest_history(tmp_path, state, ahead):
    """The agent ran with a clock an hour (or 800 days) ahead, then restarts with the true
    clock and needs a new generation (the WAL was checkpointed and restarted meanwhile). Its
    id must still be the newest, whether the spool remembers the old one (kept) or only the
    replica does (lost: a new host, or the state directory removed). However far ahead the
    replica's generation is, it is never dismissed: a restore would take it."""
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    run_app(db, "before", 3)
    replicate_once(db, url, env=faketime_env(ahead, tmp_path))
    run_app(db, "ahead", 2)
    replicate_once(db, url, env=faketime_env(ahead, tmp_path))
    checkpoint_truncate(db)
    if state == "lost":
        shutil.rmtree(tmp_path / ".app.db-litesync")
    run_app(db, "after", 4)
    replicate_once(db, url)
    out = str(tmp_path / "restored.db")
    restore(url, out)
    assert tags(out) == {"before": 3, "ahead": 2, "after": 4}
    # The newest history has the greatest id although its clock is an hour behind.
    snaps = {g: os.listdir(tmp_path / "replica" / "generations" / g / "snapshots")
             for g in os.listdir(tmp_path / "replica" / "generations")}
    created = {g: min(int(n.split("-")[1].split(".")[0], 16) for n in names) for g, names in snaps.items() if names}
    newest = max(created)
    assert created[newest] < max(created.values()) - 3000 * 1000


def test_point_in_time_restore_across_a_clock_step_back(tmp_path):
    """History: generation A written with the clock an hour ahead, then generation B with
    the true clock (its times earlier than A's, its id greater). A target at or after B's
    snapshot restores from B, the newest generation with a snapshot at or before it, even
    a target past A's (future) times. A target before both finds nothing, and says what the
    replica holds."""
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    run_app(db, "ahead", 2)
    replicate_once(db, url, env=faketime_env(3600, tmp_path))
    checkpoint_truncate(db)
    run_app(db, "after", 3)
    replicate_once(db, url)
    out = str(tmp_path / "restored.db")

    def restore_at(ms: int) -> dict[str, int]:
        if os.path.exists(out):
            os.unlink(out)
        stamp = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        r = litesync("restore", "-o", out, "--timestamp", stamp, url)
        assert r.returncode == 0, r.stderr
        return tags(out)

    now = int(time.time() * 1000)
    assert restore_at(now + 1000) == {"ahead": 2, "after": 3}
    assert restore_at(now + 7200 * 1000) == {"ahead": 2, "after": 3}
    assert restore_at(now + 3600 * 1000 + 60_000) == {"ahead": 2, "after": 3}
    r = litesync("restore", "-o", out + "2", "--timestamp",
                 datetime.fromtimestamp(now / 1000 - 600, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), url)
    assert r.returncode == 1
    assert "nothing to restore at or before" in r.stderr


def sql(db: str, *statements: str) -> None:
    """Run ``statements`` from a new process (the test process keeps to one SQLite library)."""
    code = ("import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('PRAGMA wal_autocheckpoint=0')\n"
            "for s in sys.argv[2:]:\n    c.execute(s).fetchall()\n")
    subprocess.run([sys.executable, "-c", code, db, *statements], env=clean_env(), check=True, timeout=60)


def test_a_host_rolled_back_to_an_earlier_state_starts_a_new_generation(tmp_path):
    """A VM snapshot restored: the database, its WAL and the agent's state go back in time
    together; the replica, elsewhere, keeps what the discarded timeline shipped. The agent
    must not continue its old generation under names the replica already holds."""
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    state = tmp_path / ".app.db-litesync"
    log = str(tmp_path / "agent.log")
    sql(db, "PRAGMA journal_mode=WAL", "CREATE TABLE t(x)", "INSERT INTO t VALUES('base')")

    def session(*rows: str, truncate_after: bool = False) -> None:
        agent = start_agent_ready(db, url, log_path=log)
        for row in rows:
            sql(db, f"INSERT INTO t VALUES('{row}')")
            time.sleep(0.2)
        assert stop(agent) == 0, open(log).read()
        if truncate_after:
            sql(db, "PRAGMA wal_checkpoint(TRUNCATE)")

    session("s1")
    saved = tmp_path / "vm-snapshot"
    saved.mkdir()
    for f in ("app.db", "app.db-wal"):
        shutil.copy2(tmp_path / f, saved / f)
    shutil.copytree(state, saved / state.name)
    session("X1", "X2", truncate_after=True)  # the timeline the rollback discards
    session("X3")
    for f in ("app.db", "app.db-wal", "app.db-shm"):
        if os.path.exists(tmp_path / f):
            os.unlink(tmp_path / f)
    shutil.rmtree(state)
    for f in ("app.db", "app.db-wal"):
        shutil.copy2(saved / f, tmp_path / f)
    shutil.copytree(saved / state.name, state)
    session("Y1", "Y2", "Y3")
    out = str(tmp_path / "restored.db")
    restore(url, out)
    assert content_digest(out) == content_digest(db)
    assert "starting a new generation after" in open(log).read()


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (.ci/run installs it)")
def test_a_truncate_checkpoint_killed_before_the_truncate_leaves_an_empty_wal(tmp_path):
    """SQLite writes the restarted wal-index (new salts, no frame), then truncates the WAL:
    killed in between, the WAL file keeps its old header while the wal-index says it is
    empty. The agent must read that as an empty WAL, not fail."""
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    holder = subprocess.Popen([sys.executable, "-c", """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA journal_mode=WAL"); c.execute("CREATE TABLE t(x)")
for i in range(5):
    c.execute("INSERT INTO t VALUES(?)", (i,))
c.execute("PRAGMA wal_checkpoint(PASSIVE)")
print("ready", flush=True)
sys.stdin.read()
""", db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=clean_env(), text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"  # the -shm stays alive with the holder
        killed = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=ftruncate",
                                 "-e", "inject=ftruncate:signal=KILL", sys.executable, "-c",
                                 "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute("
                                 "'PRAGMA wal_checkpoint(TRUNCATE)').fetchall()", db], env=clean_env(), timeout=60)
        assert killed.returncode == -9
        assert os.path.getsize(db + "-wal") > 0  # the old WAL header is still there
        replicate_once(db, url)
        out = str(tmp_path / "restored.db")
        restore(url, out)
        assert content_digest(out) == content_digest(db)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_reading_the_live_database_in_the_agent_process_keeps_its_pin_on_the_wal(tmp_path):
    """SQLite's WAL locks are POSIX locks on the -shm file: closing any descriptor of it in
    a process drops them all. ``read_live`` (validation runs it inside the agent) must
    leave a read transaction's pin in place, so that a TRUNCATE checkpoint stays busy."""
    import apsw

    from litesync.livedb import read_live

    db = str(tmp_path / "app.db")
    sql(db, "PRAGMA journal_mode=WAL", "CREATE TABLE t(x)", "INSERT INTO t VALUES(1)")
    reader = apsw.Connection(db)
    writer = apsw.Connection(db)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    try:
        writer.execute("INSERT INTO t VALUES(2)")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchall()  # pins the WAL at this frame
        writer.execute("INSERT INTO t VALUES(3)")
        read_live(db)
        checkpoint = subprocess.run(
            [sys.executable, "-c", "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("
             "'PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0])", db],
            env=clean_env(), capture_output=True, text=True, timeout=60, check=True)
        assert checkpoint.stdout.strip() == "1"  # busy: the reader's pin held
        reader.execute("COMMIT")
    finally:
        reader.close()
        writer.close()


def test_a_rolled_back_host_whose_lost_timeline_left_only_a_snapshot_starts_a_new_generation(tmp_path):
    """The lost timeline took a snapshot of the generation, and retention removed the
    segments before it: the replica holds, at a sequence the rolled-back agent has yet to
    ship, a snapshot this agent never wrote. Shipping on would make restore return the
    lost timeline."""
    from litesync.compact import Maintainer
    from litesync.replica.file import FileReplicaClient

    db = str(tmp_path / "app.db")
    root = tmp_path / "replica"
    log = str(tmp_path / "agent.log")
    cfg = tmp_path / "litesync.yml"
    sql(db, "PRAGMA journal_mode=WAL", "CREATE TABLE t(x)", "INSERT INTO t VALUES('r1')")
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                               "c.execute('SELECT 1 FROM t').fetchall(); sys.stdin.read()", db],
                              stdin=subprocess.PIPE, env=clean_env())  # the app keeps the WAL alive
    try:
        cfg.write_text(f"snapshot-interval: 1s\ncompaction: \"off\"\ndbs:\n  - path: {db}\n"
                       f"    replicas:\n      - url: file://{root}\n")
        agent = start_agent_ready("--config", str(cfg), log_path=log)
        sql(db, "INSERT INTO t VALUES('r2')")
        time.sleep(0.3)
        assert stop(agent) == 0
        saved = tmp_path / "vm-snapshot"
        shutil.copytree(tmp_path, saved, ignore=shutil.ignore_patterns("vm-snapshot", "replica"))
        agent = start_agent_ready("--config", str(cfg), log_path=log)  # the timeline to be lost
        for i in range(3):
            sql(db, f"INSERT INTO t VALUES('lost{i}')")
            time.sleep(0.2)
        time.sleep(2.5)  # a periodic snapshot of the lost timeline
        assert stop(agent) == 0
        # Retention a day later (as the lost agent's idle look would run it).
        Maintainer(FileReplicaClient(str(root)), db="app.db", replica="r", retention=24 * 3600, compaction=(),
                   interval=60, work_dir=str(tmp_path), grace=0, clock=lambda: time.time() + 25 * 3600,
                   written=lambda key: True).run_once(compact=False)
        holder.stdin.close()
        holder.wait(timeout=30)
        for name in os.listdir(saved):  # the rollback: the disk as it was
            target = tmp_path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (shutil.copytree if (saved / name).is_dir() else shutil.copy2)(saved / name, target)
        holder = subprocess.Popen(holder.args, stdin=subprocess.PIPE, env=clean_env())
        time.sleep(0.3)
        sql(db, "INSERT INTO t VALUES('new1')", "INSERT INTO t VALUES('new2')")
        r = litesync("--config", str(cfg), "replicate", "--once")
        assert r.returncode == 0, r.stderr
        out = str(tmp_path / "restored.db")
        restore(f"file://{root}", out)
        assert content_digest(out) == content_digest(db)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_second_name_for_a_replicated_database_is_never_opened_by_the_directory_scan(tmp_path):
    """A symbolic link to a database that directory mode replicates: opening and closing it
    in the agent's process would drop the agent's SQLite locks, and an app closing its last
    connection would then checkpoint past the agent and delete the WAL under it."""
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    db = str(tenants / "a.db")
    sql(db, "PRAGMA journal_mode=WAL", "CREATE TABLE t(x)")
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"dbs:\n  - dir: {tenants}\n    pattern: \"*.db\"\n    replicas:\n"
                   f"      - url: file://{tmp_path / 'replica'}\n")
    log = str(tmp_path / "agent.log")
    agent = start_agent_ready("--config", str(cfg), log_path=log)
    try:
        sql(db, "INSERT INTO t VALUES('before')")
        os.symlink("a.db", tenants / "cur.db")
        wait_for(lambda: "another name of a database already replicated" in open(log).read(), 10)
        for i in range(10):
            sql(db, f"INSERT INTO t VALUES('row{i}')")  # each closes the app's last connection
        assert os.path.exists(db + "-wal")  # the agent still holds its locks: no checkpoint-and-delete
    finally:
        assert stop(agent) == 0, open(log).read()
    out = str(tmp_path / "restored.db")
    restore(f"file://{tmp_path / 'replica' / 'a.db'}", out)
    assert content_digest(out) == content_digest(db)


def test_a_database_named_through_a_symbolic_link_is_replicated_from_its_wal(tmp_path):
    """SQLite keeps the -wal and -shm beside the file a link leads to; the agent must read
    them there, not beside the link (it once copied nothing and still said up to date)."""
    (tmp_path / "data").mkdir()
    real = str(tmp_path / "data" / "real.db")
    link = str(tmp_path / "app.db")
    os.symlink(real, link)
    sql(real, "PRAGMA journal_mode=WAL", "CREATE TABLE t(x)")
    url = f"file://{tmp_path / 'replica'}"
    log = str(tmp_path / "agent.log")
    agent = start_agent_ready(link, url, log_path=log)
    try:
        for i in range(5):
            sql(real, f"INSERT INTO t VALUES({i})")
        expected = content_digest(real)
        out = str(tmp_path / "restored.db")
        wait_until_restored(url, out, expected)
    finally:
        assert stop(agent) == 0
    assert open(log).read().count("starting a new generation") == 1  # the first: no snapshot stood in


def test_an_agent_started_while_the_app_holds_the_write_lock_waits_for_it(tmp_path):
    """A huge transaction can hold the write lock for longer than a seal waits (5 s): the
    agent resuming then must wait and replicate, not exit (the torture suite found it)."""
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    sql(db, "PRAGMA journal_mode=WAL", "CREATE TABLE t(x)", "INSERT INTO t VALUES('before')")
    app = subprocess.Popen([sys.executable, "-c", """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA wal_autocheckpoint=0")
c.execute("INSERT INTO t VALUES('in the WAL')")  # kept there: the agent can resume
print("open", flush=True)
sys.stdin.readline()
c.execute("BEGIN IMMEDIATE")
c.execute("INSERT INTO t VALUES('held')")
print("locked", flush=True)
time.sleep(12)
c.execute("COMMIT")
""", db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=clean_env(), text=True)
    assert app.stdout.readline().strip() == "open"
    replicate_once(db, url)  # a previous state to resume
    app.stdin.write("go\n")
    app.stdin.flush()
    assert app.stdout.readline().strip() == "locked"
    log = str(tmp_path / "agent.log")
    agent = start_agent_ready(db, url, log_path=log, timeout=60)
    try:
        assert app.wait(timeout=30) == 0
        text = open(log).read()
        assert "the application holds the write lock; waiting for it to start replication" in text
        sql(db, "INSERT INTO t VALUES('after')")
        wait_until_restored(url, str(tmp_path / "restored.db"), content_digest(db))
    finally:
        assert stop(agent) == 0, open(log).read()
