"""What a user sees at the edges of the command line: a replica named by its directory,
missing directories, broken pipes, shutdown, log times, exit codes, messages and sizes.
Each test runs the real CLI in a process of its own."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from proc import clean_env, free_port, kill9, litesync, run_writer, start_litesync, wait_for

RFC3339_UTC = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) ")


@pytest.fixture
def replicated(tmp_path):
    """A database with a few transactions and its default replica, app.db.backups/."""
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "3")
    r = litesync("replicate", "--once", db)
    assert r.returncode == 0, r.stderr
    return db


def error_line(r: subprocess.CompletedProcess, code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# --- 1: where litesync looks ---------------------------------------------------------------


def test_a_replica_directory_given_as_a_path_is_read_as_a_replica(replicated, tmp_path):
    backups = replicated + ".backups"
    out = str(tmp_path / "r.db")
    r = litesync("restore", "-o", out, backups)
    assert r.returncode == 0, r.stderr
    assert f"restored {out} from {backups}: " in r.stdout
    r = litesync("generations", backups)
    assert r.returncode == 0 and "total: 1 generation, " in r.stdout and f"({backups})" in r.stdout


def test_a_missing_replica_directory_is_named_with_exit_2(tmp_path):
    missing = tmp_path / "typo"
    r = litesync("restore", "-o", str(tmp_path / "r.db"), f"file://{missing}")
    assert error_line(r, 2) == (f"litesync: error: replica directory does not exist: {missing} "
                                f"(from 'file://{missing}')")
    db = tmp_path / "nothere.db"
    r = litesync("generations", str(db), cwd=str(tmp_path))
    assert error_line(r, 2) == (f"litesync: error: replica directory does not exist: {db}.backups "
                                f"(the default replica of {db}; no config file names it)")
    assert not os.path.exists(tmp_path / "r.db")


# --- 2: no tracebacks ----------------------------------------------------------------------


def test_restore_creates_the_output_directory_and_removes_it_when_it_fails(replicated, tmp_path):
    out = tmp_path / "new" / "sub" / "x.db"
    r = litesync("restore", "-o", str(out), replicated)
    assert r.returncode == 0, r.stderr
    assert out.exists()
    bad = tmp_path / "other" / "x.db"
    r = litesync("restore", "-o", str(bad), "--generation", "ffffffffffffffff", replicated)
    assert "generation ffffffffffffffff has no snapshot" in error_line(r, 1)
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("command", [["segments", "--json"], ["restore", "--dry-run", "--json"]])
def test_a_reader_that_goes_away_is_no_traceback(replicated, command):
    p = subprocess.Popen([sys.executable, "-m", "litesync", *command, replicated], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=clean_env())
    p.stdout.close()  # as `| head -0` does, before litesync writes
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 1
    assert err == ""  # neither a traceback nor "Exception ignored ... BrokenPipeError"


# --- 3: shutdown ---------------------------------------------------------------------------


def test_shutdown_says_what_it_does(replicated, tmp_path):
    log = tmp_path / "agent.log"
    p = start_litesync("replicate", replicated, log_path=str(log))
    try:
        wait_for(lambda: "up to date" in log.read_text())
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 0
    finally:
        kill9(p)
    text = log.read_text()
    assert "SIGINT: shutting down: final sync, then up to 30s for the replicas to receive everything " \
           "(SIGINT again stops at once)" in text
    assert text.rstrip().endswith("INFO stopped: every replica has everything committed")


def test_a_second_signal_stops_at_once_and_says_what_was_not_shipped(replicated, tmp_path):
    log = tmp_path / "agent.log"
    unreachable = f"s3://bucket/app?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1"
    env = clean_env({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    p = start_litesync("replicate", "--shutdown-timeout", "300", replicated, unreachable, env=env,
                       log_path=str(log))
    try:
        wait_for(lambda: "(retrying)" in log.read_text())
        p.send_signal(signal.SIGINT)
        wait_for(lambda: "shutting down" in log.read_text())
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=20) == 1  # not the 300 s shutdown timeout
    finally:
        kill9(p)
    text = log.read_text()
    assert "WARNING SIGINT again: stopping now, without waiting for the replicas" in text
    assert re.search(r"ERROR \S+app.db -> s3: stopped before everything was shipped: 1 object \([\d.]+ kB\) "
                     r"wait in the spool for the next start \(last error: ", text), text


# --- 4: log times --------------------------------------------------------------------------


def test_log_times_are_utc_in_rfc3339_whatever_the_local_zone(tmp_path):
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "1")
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    r = litesync("replicate", "--once", db, env=clean_env({"TZ": "Asia/Kolkata"}))  # UTC+05:30
    after = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines and all(RFC3339_UTC.match(line) for line in lines), r.stderr
    first = datetime.datetime.fromisoformat(RFC3339_UTC.match(lines[0])[1].replace("Z", "+00:00"))
    assert before <= first <= after


# --- 5: configuration errors exit 2, once ----------------------------------------------------


def test_missing_credentials_are_a_configuration_error_said_once(tmp_path):
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "1")
    url = f"s3://bucket/app?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1"
    r = litesync("replicate", db, url, env=clean_env({"HOME": str(tmp_path)}), timeout=60)
    assert r.returncode == 2, r.stderr  # systemd's unit does not restart on 2
    lines = r.stderr.splitlines()
    assert lines[-1].startswith("litesync: error: replica s3 (s3://bucket/app at 127.0.0.1:")
    assert lines[-1].endswith("no credentials (set access-key-id/secret-access-key or AWS_ACCESS_KEY_ID)")
    assert sum("no credentials" in line for line in lines) == 1, r.stderr


# --- 6: messages that name things once ------------------------------------------------------


def test_usage_errors_name_the_subcommand_once():
    r = litesync("restore", "--bogus", "x.db")
    assert error_line(r, 2) == "litesync restore: error: unrecognized arguments: --bogus"
    r = litesync("segments")
    assert error_line(r, 2) == "litesync segments: error: the following arguments are required: DB|URL"


def test_a_replica_is_named_once_in_each_reason(tmp_path):
    for name in ("local", "offsite"):
        (tmp_path / name).mkdir()
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"dbs:\n  - path: app.db\n    replicas:\n      - {{name: local, url: {tmp_path}/local}}\n"
                   f"      - {{name: offsite, url: {tmp_path}/offsite}}\n")
    r = litesync("--config", str(cfg), "restore", "-o", str(tmp_path / "r.db"), str(tmp_path / "app.db"))
    assert error_line(r, 1) == ("litesync: error: no replica can restore: local: no backups found (no snapshot "
                                "in any generation); offsite: no backups found (no snapshot in any generation)")


# --- 7: options where users put them ----------------------------------------------------------


def test_verbose_after_the_command_and_version_flag(replicated, tmp_path):
    r = litesync("generations", replicated, "-v")
    assert r.returncode == 0, r.stderr
    r = litesync("--version")
    assert r.returncode == 0 and re.match(r"litesync \d+\.\d+\.\d+ \(SQLite 3\.", r.stdout)


def test_restore_json_prints_what_was_restored(replicated, tmp_path):
    out = str(tmp_path / "r.db")
    r = litesync("restore", "--json", "-o", out, replicated)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["path"] == out and summary["replica"] == replicated + ".backups"
    assert summary["bytes"] == os.path.getsize(out) and re.fullmatch(r"[0-9a-f]{16}", summary["generation"])
    assert summary["skipped"] == [] and summary["transactions"] >= 0


# --- 8: sizes and counts -------------------------------------------------------------------


def test_small_restores_and_listings_read_as_english(replicated, tmp_path):
    r = litesync("restore", "-o", str(tmp_path / "r.db"), replicated)
    assert r.returncode == 0, r.stderr
    assert re.search(r": \d+\.\d kB, \d+ transactions? after the snapshot", r.stdout), r.stdout
    assert re.search(r"\((\d+(\.\d)? [kMG]?B|- B)/s read\)", r.stdout) and " 0 MB/s" not in r.stdout, r.stdout
    r = litesync("snapshots", replicated)
    assert re.search(r"^total: 1 snapshot, \d+\.\d kB \(", r.stdout, re.M), r.stdout


# --- 9: a failed start leaves nothing behind ------------------------------------------------


@pytest.mark.parametrize("content", [None, b"not a database"])
def test_a_failed_start_leaves_no_state_directory(tmp_path, content):
    db = tmp_path / "app.db"
    if content is not None:
        db.write_bytes(content)
    r = litesync("replicate", "--once", str(db), f"file://{tmp_path / 'rep'}")
    assert r.returncode == 1 and "litesync: error: " in r.stderr
    assert sorted(os.listdir(tmp_path)) == ([] if content is None else ["app.db"])


def test_a_second_agent_refuses_before_reading_the_first_ones_state(replicated, tmp_path):
    log = tmp_path / "agent.log"
    p = start_litesync("replicate", replicated, log_path=str(log))
    try:
        wait_for(lambda: "up to date" in log.read_text())
        r = litesync("replicate", replicated, f"file://{tmp_path / 'elsewhere'}")
    finally:
        kill9(p)
    assert r.stderr.splitlines()[-1] == f"litesync: error: another litesync agent is replicating {replicated}"
    assert r.returncode == 1 and "moved" not in r.stderr, r.stderr
