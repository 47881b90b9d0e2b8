"""The ways a restore was once silently wrong or failed, each reproduced on real SQLite with
real processes: an app killed inside a commit, a clock that steps back, a commit that
shrinks the database below pages it spilled."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

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

        def caught_up() -> bool:
            restore(url, out)
            return content_digest(out) == expected

        wait_for(caught_up, 10)
    finally:
        assert stop(agent) == 0
    # The agent starts again on the idle database (it crash-looped here before).
    agent = start_agent_ready(db, url, log_path=log)
    assert stop(agent) == 0, open(log).read()
    restore(url, out)
    assert content_digest(out) == content_digest(db)
