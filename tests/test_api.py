"""The Python API: an application process replicates and restores through child processes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from dbcheck import committed_prefix, content_digest
from proc import WORKLOAD, clean_env, run_writer, wait_for
from litesync import ConfigError, LitesyncError, Replicator, UsageError
from litesync.api import _exit_error, _last_error, _parse_line


def run_app(tmp_path, body: str, *args: str, wait: bool = True):
    """Run ``body`` as an application process (stdlib sqlite3 and the litesync API, nothing else)."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(f"""\
        import json, logging, os, sqlite3, sys
        sys.path.insert(0, {os.path.dirname(WORKLOAD)!r})
        logging.basicConfig(level=logging.INFO)
        from litesync import Replicator, restore_db
        from workload import connect, one_tx
        import random
        """) + textwrap.dedent(body))
    cmd = [sys.executable, str(script), *args]
    if not wait:
        return subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, text=True)
    r = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def test_round_trip_from_an_application_process(tmp_path):
    """The app writes with sqlite3 while its Replicator replicates; stop; restore_db; same content."""
    db, url = str(tmp_path / "app.db"), f"file://{tmp_path / 'replica'}"
    r = run_app(tmp_path, f"""
        conn = connect({db!r})
        rng = random.Random(1)
        one_tx(conn, 1, rng, False, 200, 3)
        with Replicator({db!r}, [{url!r}]) as rep:
            status = rep.status()
            assert status["running"] and status["pid"] and status["exit_code"] is None, status
            assert list(status["databases"]) == [{db!r}], status
            for n in range(2, 301):
                one_tx(conn, n, rng, n % 3 == 0, 200, 3)
        assert rep.status()["exit_code"] == 0
        out = restore_db({url!r}, {str(tmp_path / "restored.db")!r})
        assert restore_db({url!r}, out, if_db_not_exists=True) is None
        # litesync's own SQLite never entered this process.
        print(json.dumps({{"restored": out, "apsw": "apsw" in sys.modules}}))
        """)
    result = json.loads(r.stdout.splitlines()[-1])
    assert result == {"restored": str(tmp_path / "restored.db"), "apsw": False}
    assert committed_prefix(result["restored"]) == 300
    assert content_digest(result["restored"]) == content_digest(db)
    assert "litesync.api" in r.stderr and "up to date" in r.stderr  # the child's log, forwarded


def test_the_agent_stops_with_a_final_sync_when_the_application_dies(tmp_path):
    db, url = str(tmp_path / "app.db"), f"file://{tmp_path / 'replica'}"
    app = run_app(tmp_path, f"""
        conn = connect({db!r})
        rng = random.Random(2)
        rep = Replicator({db!r}, [{url!r}]).start()
        for n in range(1, 51):
            one_tx(conn, n, rng, False, 200, 3)
        print(rep.pid, flush=True)
        import time
        time.sleep(600)  # until killed
        """, wait=False)
    agent_pid = int(app.stdout.readline())
    app.send_signal(signal.SIGKILL)
    app.wait()
    app.stdout.close()

    def agent_gone() -> bool:
        try:
            with open(f"/proc/{agent_pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_for(agent_gone, timeout=30)
    out = str(tmp_path / "restored.db")
    from litesync import restore_db

    restore_db(url, out)
    assert committed_prefix(out) == 50


def test_config_errors_are_raised_before_any_child_starts(tmp_path):
    with pytest.raises(ConfigError, match=r"^unsupported replica URL scheme: 'ftp' in 'ftp://x'$"):
        Replicator(str(tmp_path / "app.db"), ["ftp://x"])
    cfg = tmp_path / "litesync.yml"
    cfg.write_text("dbs:\n  - path: app.db\n    replicass: []\n")
    with pytest.raises(ConfigError) as e:
        Replicator(config=str(cfg))
    assert (e.value.line, e.value.path) == (3, "dbs[0]")
    with pytest.raises(UsageError, match="a list of URLs"):
        Replicator("app.db", "file:///x")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="an output path is required"):
        from litesync import restore_db

        restore_db("file:///x")


def test_start_raises_the_agents_one_line_error(tmp_path):
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "2")
    (tmp_path / "plain-file").write_text("not a directory")
    rep = Replicator(db, [str(tmp_path / "plain-file" / "replica")])
    with pytest.raises(LitesyncError) as e:
        rep.start(timeout=30)
    assert not isinstance(e.value, UsageError)
    assert str(e.value).startswith("replica file: cannot list ")
    assert str(e.value).endswith("Not a directory")
    assert rep.status()["exit_code"] == 1 and not rep.running


def test_stop_raises_when_a_replica_missed_something(tmp_path):
    db = str(tmp_path / "app.db")
    replica = tmp_path / "replica"
    run_writer(db, "--count", "2")
    rep = Replicator(db, [str(replica)], shutdown_timeout=1).start()
    shutil.rmtree(replica)
    replica.write_text("the replica directory is gone")
    run_writer(db, "--count", "5")
    with pytest.raises(LitesyncError, match="stopped before everything was shipped"):
        rep.stop()
    assert rep.status()["exit_code"] == 1
    rep.stop()  # once stopped, stopping again does nothing


def test_status_reads_the_published_status_file(tmp_path):
    db = str(tmp_path / "app.db")
    rep = Replicator(db, [str(tmp_path / "r")])
    st = rep.status()
    assert (st["running"], st["pid"], st["exit_code"]) == (False, None, None)
    assert st["databases"][db] == {"db": db, "running": False, "published": False, "stale": False,
                                   "age_seconds": None, "replicas": []}
    state = tmp_path / ".app.db-litesync"
    state.mkdir()
    (state / "status.json").write_text('{"updated_at": 1, "replicas": [{"name": "file", "lag_seconds": 0.1}]}')
    published = rep.status()["databases"][db]
    assert published["published"] and published["stale"]  # no agent holds the lock
    assert published["replicas"] == [{"name": "file", "lag_seconds": 0.1}]


@pytest.mark.parametrize("line, level, message", [
    ("2026-11-22T14:01:00.123Z WARNING x: retrying", logging.WARNING, "x: retrying"),
    ('{"time": "t", "level": "error", "logger": "litesync", "msg": "boom"}', logging.ERROR, "boom"),
    ("litesync: error: database does not exist: /x", logging.ERROR, "database does not exist: /x"),
    ("litesync replicate: error: unrecognized arguments: -x", logging.ERROR, "unrecognized arguments: -x"),
    ("restored /x: 4096 bytes", logging.INFO, "restored /x: 4096 bytes"),
])
def test_child_lines_keep_their_level(line, level, message):
    assert _parse_line(line) == (level, message)


def test_exit_codes_map_to_the_exception_tree():
    lines = ["2026-11-22T14:01:00.123Z ERROR first", "2026-11-22T14:01:00.124Z INFO later",
             "litesync: error: the one line"]
    assert _last_error(lines) == "the one line"
    assert _last_error(lines[:2]) == "first"
    e = _exit_error(2, lines)
    assert isinstance(e, UsageError) and str(e) == "the one line"
    e = _exit_error(1, lines)
    assert type(e) is LitesyncError and e.exit_code == 1
    assert str(_exit_error(-9, [])) == "litesync killed by signal 9"
    assert str(_exit_error(3, [])) == "litesync exited with code 3"
