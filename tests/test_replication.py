"""End to end: real writer processes, the real agent process, kills, restores, content checks."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from dbcheck import committed_prefix, content_digest, integrity
from proc import (WORKLOAD, free_port, kill9, litesync, run_writer, start_agent_ready, start_litesync,
                  start_writer, stop, wait_for)


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
    # Read while the agent keeps the wal-index alive: a writer stopped inside a commit left
    # frames that are not committed now, but that SQLite's recovery would accept once every
    # connection is closed (the agent would copy them when it next starts).
    expected = content_digest(db)
    assert stop(agent) == 0, open(tmp_path / "agent.log").read()
    out = str(tmp_path / "restored.db")
    r = litesync("restore", "-o", out, url)
    assert r.returncode == 0, r.stderr
    assert integrity(out) == "ok"
    assert content_digest(out) == expected


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


def test_an_idle_database_gets_no_periodic_snapshot_unless_it_changed(tmp_path, caplog):
    """At each snapshot interval an unchanged database is read and compared, not uploaded
    again; a commit brings the next snapshot back; a change made behind the WAL's back
    (bytes of the file rewritten) starts a new generation."""
    from litesync.agent import DbAgent

    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "20")
    agent = DbAgent(db, snapshot_interval=0.1)
    agent.open()
    try:
        agent.start()
        agent.checkpoint()  # every page in the database file
        snaps, gen = agent.stats["snapshots"], agent.generation
        for _ in range(3):
            time.sleep(0.15)
            agent.step()
        assert agent.stats["snapshots"] == snaps
        assert len([n for n, _ in agent.spool.objects() if n.key.endswith(".snap")]) == snaps
        run_writer(db, "--count", "1")
        time.sleep(0.15)
        agent.step()
        assert (agent.stats["snapshots"], agent.generation) == (snaps + 1, gen)
        agent.checkpoint()
        time.sleep(0.15)
        agent.step()
        assert agent.stats["snapshots"] == snaps + 1  # the checkpoint changed nothing
        size = os.path.getsize(db)
        with open(db, "r+b") as f:  # not through SQLite: no WAL frame shows it
            f.seek(size - 4096 + 2000)
            b = f.read(1)
            f.seek(size - 4096 + 2000)
            f.write(bytes([b[0] ^ 0xFF]))
        caplog.set_level("INFO")
        time.sleep(0.15)
        agent.step()
        assert agent.generation != gen and agent.stats["snapshots"] == snaps + 2
        assert "replicated state disagrees with the database" in caplog.text
    finally:
        agent.close()


def s3_env():
    from proc import clean_env

    return clean_env({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})


def test_s3_replica_with_agent_kills(tmp_path, s3_bucket):
    """Agent + writer + kill -9 restarts against S3 on a local server; restore equals the source."""
    endpoint, bucket = s3_bucket
    url = f"s3://{bucket}/app?endpoint={endpoint}&region=us-east-1&force-path-style=true"
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "1")
    rng = random.Random(3)
    writer = start_writer(db, "--rate", "300", "--rows", "2")
    log = str(tmp_path / "agent.log")
    try:
        for _ in range(4):
            agent = start_litesync("replicate", db, url, env=s3_env(), log_path=log)
            time.sleep(rng.uniform(0.8, 2.0))
            kill9(agent)
    finally:
        stop(writer)
    r = litesync("replicate", "--once", db, url, env=s3_env())
    assert r.returncode == 0, r.stderr
    out = str(tmp_path / "restored.db")
    r = litesync("restore", "-o", out, url, env=s3_env())
    assert r.returncode == 0, r.stderr
    assert integrity(out) == "ok"
    assert content_digest(out) == content_digest(db)


def test_fan_out_to_two_replicas(tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    s3_url = f"s3://{bucket}/fan?endpoint={endpoint}&region=us-east-1&force-path-style=true"
    file_url = f"file://{tmp_path / 'local'}"
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "1")
    agent = start_agent_ready(db, file_url, s3_url, env=s3_env(), log_path=str(tmp_path / "agent.log"))
    run_writer(db, "--count", "150", "--rate", "300")
    assert stop(agent) == 0, open(tmp_path / "agent.log").read()
    for url in (file_url, s3_url):
        out = str(tmp_path / f"restored-{len(url)}.db")
        r = litesync("restore", "-o", out, url, env=s3_env())
        assert r.returncode == 0, r.stderr
        assert content_digest(out) == content_digest(db)


def test_s3_outage_converges_and_app_never_waits(tmp_path, s3_server):
    """Stop the S3 server during writes, bring it back: nothing lost, the writer never stalled."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="outage")
    url = f"s3://outage/db?endpoint={endpoint}&region=us-east-1&force-path-style=true"
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "1")
    log = str(tmp_path / "agent.log")
    agent = start_agent_ready(db, url, env=s3_env(), log_path=log)
    wait_log = str(tmp_path / "wait.txt")
    writer = start_writer(db, "--rate", "200", "--seconds", "6", "--max-wait-log", wait_log)
    time.sleep(1.5)
    server.stop()
    with pytest.raises(OSError):  # the outage is real: nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    time.sleep(2.5)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        writer.wait(timeout=60)
        assert stop(agent) == 0, open(log).read()
        longest = float(open(wait_log).read().split()[0])
        assert longest < 1.0, f"writer waited {longest:.3f}s"
        out = str(tmp_path / "restored.db")
        r = litesync("restore", "-o", out, url, env=s3_env())
        assert r.returncode == 0, r.stderr
        assert content_digest(out) == content_digest(db)
        assert committed_prefix(out) == committed_prefix(db)
    finally:
        server.stop()


def test_missing_bucket_fails_clearly_without_secrets(tmp_path, s3_server):
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "2")
    secret = "sEcReT-value-123"
    url = f"s3://no-such-bucket/x?endpoint={s3_server}&region=us-east-1&force-path-style=true"
    env = s3_env()
    env["AWS_SECRET_ACCESS_KEY"] = secret
    r = litesync("replicate", "--once", "--shutdown-timeout", "2", db, url, env=env)
    assert r.returncode == 2  # a configuration error: a restart (systemd's) would not help
    assert r.stderr.count("bucket does not exist: 'no-such-bucket'") == 1  # said once, not logged too
    assert secret not in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    r = litesync("restore", "-o", str(tmp_path / "o.db"), url, env=env)
    assert r.returncode == 2
    assert "bucket does not exist: 'no-such-bucket'" in r.stderr and secret not in r.stderr


def test_check_command(tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    good = f"s3://{bucket}/c?endpoint={endpoint}&region=us-east-1&force-path-style=true"
    bad = f"s3://missing-bucket/c?endpoint={endpoint}&region=us-east-1&force-path-style=true"
    r = litesync("check", good, f"file://{tmp_path}/dir", env=s3_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok ") == 2
    r = litesync("check", good, bad, env=s3_env())
    assert r.returncode == 1
    assert r.stdout.count("FAILED") == 1 and r.stdout.count("ok ") == 1
    assert "bucket does not exist: 'missing-bucket'" in r.stdout


@pytest.fixture
def s3_server_with_auth(tmp_path):
    """A separate moto server that checks credentials (only 'test'/'test' style keys it created)."""

    port = free_port()
    env = s3_env()
    env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    p = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket as _s

    deadline = time.time() + 20
    while True:
        try:
            _s.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    p.terminate()
    p.wait()


def test_bad_credentials_fail_fast_without_secrets(tmp_path, s3_server_with_auth):
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "2")
    secret = "wrongSecretValue987"
    url = f"s3://bucket/x?endpoint={s3_server_with_auth}&region=us-east-1&force-path-style=true"
    env = s3_env()
    env.update(AWS_ACCESS_KEY_ID="AKIANOTAKEY", AWS_SECRET_ACCESS_KEY=secret)
    t0 = time.monotonic()
    r = litesync("replicate", "--once", db, url, env=env)
    assert r.returncode == 2, r.stderr
    assert time.monotonic() - t0 < 20  # fails fast, not after the 30 s shutdown timeout
    assert "access denied: unknown access key id (check access-key-id)" in r.stderr
    assert secret not in r.stderr + r.stdout and "Traceback" not in r.stderr
    # A long-running agent stops at once too, with the same message.
    p = start_litesync("replicate", db, url, env=env, log_path=str(tmp_path / "agent.log"))
    assert p.wait(timeout=30) == 2
    log = open(tmp_path / "agent.log").read()
    assert "access denied" in log and secret not in log
    r = litesync("restore", "-o", str(tmp_path / "o.db"), url, env=env)
    assert r.returncode == 2 and "access denied" in r.stderr and secret not in r.stderr
    r = litesync("check", url, env=env)
    assert r.returncode == 1 and "access denied" in r.stdout and secret not in r.stdout


def test_replica_past_the_spool_bound_gets_a_fresh_snapshot(tmp_path, monkeypatch):
    """A replica down while the spool overflows its bound catches up through a new snapshot."""

    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    env = s3_env()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bound")
    url = f"s3://bound/db?endpoint={endpoint}&region=us-east-1&force-path-style=true"
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "1")
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"dbs:\n  - path: app.db\n    spool-max-size: 300KB\n    replicas:\n"
                   f"      - url: {url}\n      - url: file://{tmp_path}/local\n")
    log = str(tmp_path / "agent.log")
    agent = start_agent_ready("--config", str(cfg), env=env, log_path=log)
    server.stop()
    run_writer(db, "--count", "400", "--rate", "200", "--row-size", "2000")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        time.sleep(3)
        assert stop(agent) == 0, open(log).read()
        text = open(log).read()
        assert text.count("over spool-max-size") == 1, text  # said once, not at every turn
        for u in (url, f"file://{tmp_path}/local"):
            out = str(tmp_path / f"r{len(u)}.db")
            r = litesync("restore", "-o", out, u, env=env)
            assert r.returncode == 0, r.stderr
            assert content_digest(out) == content_digest(db)
        # The S3 replica's newest snapshot is mid-generation: the bridge over the dropped segments.
        keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
                .list_objects_v2(Bucket="bound")["Contents"]]
        snaps = [k for k in keys if k.endswith(".snap")]
        assert snaps and not snaps[-1].split("/")[-1].startswith("0000000000000000-"), snaps
    finally:
        server.stop()


def _never_checkpointed(tmp_path):
    """A database with one commit, and a config whose agent never checkpoints it:
    (database, replica URL, log path, config path)."""
    db = str(tmp_path / "app.db")
    url = f"file://{tmp_path / 'replica'}"
    run_writer(db, "--count", "1")
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"checkpoint-pages: 1000000\ndbs:\n  - path: app.db\n    replicas:\n      - url: {url}\n")
    return db, url, str(tmp_path / "agent.log"), cfg


def test_resume_after_kill9_keeps_one_generation(tmp_path):
    """When the WAL proves continuity, a killed agent resumes its generation: no gap, no duplicate."""
    # No checkpoint by the app or the agent: the WAL keeps every frame while the agent is
    # down, so every restart can prove continuity.
    db, url, log, cfg = _never_checkpointed(tmp_path)
    writer = start_writer(db, "--rate", "300", "--autocheckpoint", "0")
    try:
        for _ in range(5):
            agent = start_agent_ready("--config", str(cfg), log_path=log)
            time.sleep(random.Random(9).uniform(0.3, 0.8))
            kill9(agent)
            time.sleep(0.3)  # the writer goes on while the agent is away
    finally:
        stop(writer)
    sync_once(db, url)
    text = open(log).read()
    assert text.count("resumed generation") >= 4, text
    assert len(os.listdir(tmp_path / "replica" / "generations")) == 1
    out = str(tmp_path / "restored.db")
    restore_and_compare(db, url, out)
    assert committed_prefix(out) == committed_prefix(db)


def test_exec_forwards_sigterm_to_the_app(tmp_path):
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "2")
    app = tmp_path / "app.py"
    app.write_text("import signal, sys, time\n"
                   "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
                   f"open({str(tmp_path / 'ready')!r}, 'w').close()\n"
                   "time.sleep(60)\n")
    p = start_litesync("replicate", db, f"file://{tmp_path}/rep", "--exec", f"{sys.executable} {app}",
                       log_path=str(tmp_path / "agent.log"))
    wait_for(lambda: os.path.exists(tmp_path / "ready"), timeout=30)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 7  # the app's own exit code, after a final sync
    restore_and_compare(db, f"file://{tmp_path}/rep", str(tmp_path / "out.db"))


def test_once_to_a_new_replica_when_the_spool_holds_no_snapshot(tmp_path):
    """The spool keeps only a segment; a replica that needs a snapshot still gets one from
    `replicate --once`, and says it is up to date only after."""
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "5")
    agent = start_agent_ready(db, f"file://{tmp_path / 'a'}", log_path=str(tmp_path / "agent.log"))
    try:
        run_writer(db, "--count", "20", "--rate", "100", "--autocheckpoint", "0")
        time.sleep(1.5)  # shipped, and the spool collected: the snapshot goes, the last segment stays
    finally:
        assert stop(agent) == 0
    spool = os.path.join(tmp_path, ".app.db-litesync", "spool")
    kept = [f for _, _, files in os.walk(spool) for f in files]
    assert kept and all(f.endswith(".seg") for f in kept), kept
    # Same replica name ("file"), another place: it starts from a snapshot of its own.
    t0 = time.monotonic()
    r = litesync("replicate", "--once", db, f"file://{tmp_path / 'b'}")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 20
    restore_and_compare(db, f"file://{tmp_path / 'b'}", str(tmp_path / "out.db"))


def test_a_database_replaced_by_rename_starts_a_new_generation_from_the_new_file(tmp_path):
    """`mv new.db app.db` (its WAL files removed first, as replacing a database needs) under
    a running agent: the agent says so in one line, replicates the new file in a generation
    of its own, and the old generation still restores the old content."""
    import json

    db, new = str(tmp_path / "app.db"), str(tmp_path / "new.db")
    url = f"file://{tmp_path / 'replica'}"
    log = str(tmp_path / "agent.log")
    run_writer(db, "--count", "20")
    agent = start_agent_ready(db, url, log_path=log)
    try:
        run_writer(db, "--count", "5")
        old = content_digest(db)
        run_writer(new, "--count", "7", "--seed", "9")  # closed: its WAL checkpointed and removed
        wait_for(lambda: len(os.listdir(tmp_path / "replica" / "generations")) == 1
                 and litesync("restore", "--dry-run", url).returncode == 0)
        time.sleep(0.5)  # the agent caught up with the 5 commits (it ships each within milliseconds)
        old_inode = os.stat(db).st_ino
        os.unlink(db + "-wal")
        os.unlink(db + "-shm")
        os.replace(new, db)
        run_writer(db, "--count", "3", "--seed", "10")
        wait_for(lambda: "the database file was replaced" in open(log).read())
    finally:
        assert stop(agent) == 0
    lines = [line for line in open(log) if "the database file was replaced" in line]
    assert len(lines) == 1 and " WARNING " in lines[0] and lines[0].rstrip().endswith(
        "starting a new generation: the database file was replaced "
        f"(device {os.stat(db).st_dev} inode {old_inode}, now inode {os.stat(db).st_ino}): replicating the new file"), lines
    gens = json.loads(litesync("generations", "--json", url).stdout)["generations"]
    assert len(gens) == 2
    restore_and_compare(db, url, str(tmp_path / "latest.db"))
    first = min(g["generation"] for g in gens)
    out = str(tmp_path / "old.db")
    r = litesync("restore", "-o", out, "--generation", first, url)
    assert r.returncode == 0, r.stderr
    assert content_digest(out) == old


def test_a_wal_deleted_while_the_agent_is_stopped_starts_a_new_generation_from_the_file(tmp_path):
    """Its commits were copied, but the database went back to what the file alone holds:
    the agent must not continue the old history as if they were still there."""
    db, url, log, cfg = _never_checkpointed(tmp_path)
    agent = start_agent_ready("--config", str(cfg), log_path=log)
    writer = start_writer(db, "--rate", "300", "--autocheckpoint", "0")
    time.sleep(1.5)
    kill9(writer)  # killed: its WAL stays, never checkpointed
    time.sleep(0.5)  # the agent copies the last commits
    kill9(agent)
    assert committed_prefix(db) > 100
    for suffix in ("-wal", "-shm"):
        os.remove(db + suffix)
    assert committed_prefix(db) == 1  # the file alone: back before the writer's commits
    r = litesync("replicate", "--once", db, url)
    assert r.returncode == 0, r.stderr
    assert "starting a new generation: the WAL was removed or reset while the agent was stopped" in r.stderr
    assert len(os.listdir(tmp_path / "replica" / "generations")) == 2
    out = str(tmp_path / "restored.db")
    restore_and_compare(db, url, out)
    assert committed_prefix(out) == committed_prefix(db)
