"""Deployment: first boot of a new machine (--restore-if-db-not-exists) and the systemd unit example."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import sys

from dbcheck import committed_prefix, content_digest
from proc import clean_env, WORKLOAD, litesync, run_writer, start_agent_ready, stop
from litesync.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def app(db: str, count: int, seed: int) -> str:
    return f"{sys.executable} {WORKLOAD} {db} --count {count} --seed {seed}"


def test_new_machine_restores_then_replicates(tmp_path):
    """Machine loss: database and state gone. The same command restores, starts the app and replicates on."""
    db, url = str(tmp_path / "app.db"), f"file://{tmp_path / 'replica'}"
    run_writer(db, "--count", "1")
    agent = start_agent_ready(db, url, log_path=str(tmp_path / "agent.log"))
    run_writer(db, "--count", "20", "--rate", "200")
    assert stop(agent) == 0
    before = content_digest(db)
    for path in (db, db + "-wal", db + "-shm"):
        if os.path.exists(path):
            os.unlink(path)
    shutil.rmtree(tmp_path / ".app.db-litesync")

    r = litesync("replicate", "--restore-if-db-not-exists", db, url, "--exec", app(db, 10, 2))
    assert r.returncode == 0, r.stderr
    assert f"{db} does not exist: restoring it from file" in r.stderr
    assert committed_prefix(db) == 31  # the app went on from the restored state
    out = str(tmp_path / "latest.db")
    r = litesync("restore", "-o", out, url)
    assert r.returncode == 0, r.stderr
    assert committed_prefix(out) == 31 and content_digest(out) == content_digest(db)
    # The restored database's history continues in a new generation; the old one still restores.
    gens = sorted(os.listdir(tmp_path / "replica" / "generations"))
    assert len(gens) == 2
    old = str(tmp_path / "old.db")
    r = litesync("restore", "-o", old, "--generation", gens[0], url)
    assert r.returncode == 0, r.stderr
    assert content_digest(old) == before

    # A later boot: the database exists, nothing is restored.
    r = litesync("replicate", "--restore-if-db-not-exists", "--once", db, url)
    assert r.returncode == 0 and "restoring" not in r.stderr, r.stderr


def test_new_deployment_starts_without_a_backup(tmp_path):
    db, url = str(tmp_path / "new" / "app.db"), f"file://{tmp_path / 'replica'}"
    os.mkdir(tmp_path / "new")
    r = litesync("replicate", "--restore-if-db-not-exists", db, url, "--exec", app(db, 5, 1))
    assert r.returncode == 0, r.stderr
    assert "no replica holds a backup: starting without one" in r.stderr
    out = str(tmp_path / "out.db")
    assert litesync("restore", "-o", out, url).returncode == 0
    assert committed_prefix(out) == 5


def test_no_backup_but_an_unreachable_replica_does_not_start(tmp_path):
    """The replica that cannot be listed may hold the backup: starting empty would bury it."""
    from proc import free_port

    db = str(tmp_path / "app.db")
    dead = f"s3://bucket/app?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1"
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{tmp_path / 'replica'}\n"
                   f"      - url: {dead}\n")
    r = litesync("--config", str(cfg), "replicate", "--restore-if-db-not-exists", "--exec", app(db, 5, 1),
                 env=clean_env({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}))
    assert r.returncode == 1, r.stderr
    assert re.search(r"app\.db does not exist and no replica holds a backup, but s3 .*could not be listed: "
                     r".*EndpointConnectionError", r.stderr), r.stderr
    assert not os.path.exists(db)


def test_failed_restore_does_not_start_the_app(tmp_path):
    db, url = str(tmp_path / "app.db"), f"file://{tmp_path / 'replica'}"
    run_writer(db, "--count", "3")
    assert litesync("replicate", "--once", db, url).returncode == 0
    os.unlink(db)
    for root, _dirs, files in os.walk(tmp_path / "replica"):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:  # damage every object
                fh.seek(60)
                fh.write(b"\xff" * 8)
    marker = tmp_path / "app-started"
    r = litesync("replicate", "--restore-if-db-not-exists", db, url, "--exec", f"touch {marker}")
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("litesync: error: ") == 1 and ".snap" in r.stderr
    assert not marker.exists() and not os.path.exists(db)


def test_systemd_unit_example():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(os.path.join(ROOT, "docs", "litesync.service"))
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert os.path.basename(argv[0]) == "litesync"
    args = build_parser().parse_args(argv[1:])  # the options exist as written
    assert args.command == "replicate" and args.restore_if_db_not_exists
    assert service["Type"] == "notify" and service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"].rstrip("s")) > args.shutdown_timeout
    assert "on-failure" == service["Restart"] and service["RestartPreventExitStatus"] == "2"
    assert "docs/litesync.service" in open(os.path.join(ROOT, "README.md")).read()
