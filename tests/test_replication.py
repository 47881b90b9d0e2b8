"""End to end: real writer processes, the real agent process, kills, restores, content checks."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time

import pytest

from dbcheck import committed_prefix, content_digest, integrity
from proc import (WORKLOAD, kill9, litesync, run_writer, start_agent_ready, start_litesync, start_writer,
                  stop)


def restore_and_compare(db: str, replica_url: str, out: str) -> None:
    r = litesync("restore", "-o", out, replica_url)
    assert r.returncode == 0, r.stderr
    assert integrity(out) == "ok"
    assert content_digest(out) == content_digest(db)


def sync_once(db: str, url: str) -> None:
    r = litesync("replicate", "--once", db, url)
    assert r.returncode == 0, r.stderr


def test_round_trip_mixed_workload(tmp_path):
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    sqlite3.connect(db).execute("PRAGMA journal_mode=WAL").close()
    agent = start_agent_ready(db, url, log_path=str(tmp_path / "agent.log"))
    try:
        run_writer(db, "--mixed", "--count", "520", "--seed", "7")
    finally:
        code = stop(agent)
    assert code == 0, open(tmp_path / "agent.log").read()
    restore_and_compare(db, url, str(tmp_path / "restored.db"))
    assert committed_prefix(str(tmp_path / "restored.db")) == 520


def test_agent_adds_nothing_to_the_database(tmp_path):
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "5")
    before = content_digest(db)
    sync_once(db, f"file://{tmp_path / 'r'}")
    assert content_digest(db) == before


def test_switches_database_to_wal(tmp_path):
    db = str(tmp_path / "app.db")
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE t (x)")
    c.execute("INSERT INTO t VALUES (1)")
    c.commit()
    c.close()
    sync_once(db, f"file://{tmp_path / 'r'}")
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    c.close()
    restore_and_compare(db, f"file://{tmp_path / 'r'}", str(tmp_path / "out.db"))


@pytest.mark.parametrize("seed", [11, 12])
def test_agent_kill9_and_restart_loses_nothing(tmp_path, seed):
    """SIGKILL the agent at random moments while the writer runs; the restore equals the source."""
    rng = random.Random(seed)
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    run_writer(db, "--count", "1")
    writer = start_writer(db, "--rate", "400", "--rows", "2", "--seed", str(seed))
    log = str(tmp_path / "agent.log")
    try:
        for _ in range(11):
            agent = start_litesync("replicate", db, url, log_path=log)
            time.sleep(rng.uniform(0.3, 1.6))
            kill9(agent)
    finally:
        stop(writer)
    sync_once(db, url)
    out = str(tmp_path / "restored.db")
    restore_and_compare(db, url, out)
    assert committed_prefix(out) > 100


def test_machine_loss_restores_a_committed_prefix(tmp_path):
    """Kill writer and agent together; what is restored is exactly transactions 1..k."""
    rng = random.Random(5)
    for trial in range(4):
        d = tmp_path / f"t{trial}"
        d.mkdir()
        db = str(d / "app.db")
        url = f"file://{d / 'replica'}"
        run_writer(db, "--count", "1")
        agent = start_agent_ready(db, url, log_path=str(d / "agent.log"))
        writer = start_writer(db, "--rate", "500", "--seed", str(trial), "--mixed" if trial % 2 else "--rows=3")
        time.sleep(rng.uniform(1.0, 2.5))
        kill9(writer)
        kill9(agent)
        out = str(d / "restored.db")
        r = litesync("restore", "-o", out, url)
        assert r.returncode == 0, r.stderr
        assert integrity(out) == "ok"
        k = committed_prefix(out)
        assert k >= 1
        # Everything committed is in the source; the replica may trail it but never invent.
        assert k <= committed_prefix(db)


def test_checkpoints_from_another_process_keep_restores_exact(tmp_path):
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    run_writer(db, "--count", "1")
    agent = start_agent_ready(db, url, log_path=str(tmp_path / "agent.log"))
    writer = start_writer(db, "--rate", "300", "--autocheckpoint", "100")
    meddler = subprocess.Popen([sys.executable, "-c", f"""
import sqlite3, time
c = sqlite3.connect({db!r}, timeout=0.2, isolation_level=None)
end = time.time() + 5
i = 0
while time.time() < end:
    mode = ("TRUNCATE", "RESTART", "PASSIVE", "FULL")[i % 4]
    try:
        c.execute(f"PRAGMA wal_checkpoint({{mode}})").fetchall()
    except sqlite3.OperationalError:
        pass
    i += 1
    time.sleep(0.02)
"""])
    meddler.wait(timeout=60)
    stop(writer)
    assert stop(agent) == 0, open(tmp_path / "agent.log").read()
    restore_and_compare(db, url, str(tmp_path / "restored.db"))


def test_exec_runs_the_app_and_returns_its_exit_code(tmp_path):
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    r = litesync("replicate", db, url, "--exec", f"{sys.executable} {WORKLOAD} {db} --count 40")
    assert r.returncode == 0, r.stderr
    restore_and_compare(db, url, str(tmp_path / "restored.db"))
    assert committed_prefix(str(tmp_path / "restored.db")) == 40
    r = litesync("replicate", db, url, "--exec", f"{sys.executable} -c 'import sys; sys.exit(3)'")
    assert r.returncode == 3, r.stderr


def test_sigterm_ships_everything_and_exits_0(tmp_path):
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    run_writer(db, "--count", "1")
    agent = start_agent_ready(db, url, log_path=str(tmp_path / "agent.log"))
    run_writer(db, "--count", "200")
    assert stop(agent) == 0
    out = str(tmp_path / "restored.db")
    restore_and_compare(db, url, out)
    assert committed_prefix(out) == 201


def test_periodic_snapshots_continue_the_generation(tmp_path):
    """With a short snapshot-interval, later snapshots join the same generation and restore from them works."""
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "1")
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"snapshot-interval: 1s\ndbs:\n  - path: app.db\n    replicas:\n"
                   f"      - url: file://{tmp_path}/rep\n")
    agent = start_agent_ready("--config", str(cfg), log_path=str(tmp_path / "agent.log"))
    run_writer(db, "--rate", "100", "--seconds", "3.5")
    assert stop(agent) == 0
    gens = os.listdir(tmp_path / "rep" / "generations")
    assert len(gens) == 1, open(tmp_path / "agent.log").read()
    snaps = sorted(os.listdir(tmp_path / "rep" / "generations" / gens[0] / "snapshots"))
    assert len(snaps) >= 3, snaps
    assert int(snaps[-1].split("-")[0], 16) > 0  # a later snapshot sits mid-generation
    out = str(tmp_path / "restored.db")
    restore_and_compare(db, f"file://{tmp_path}/rep", out)
