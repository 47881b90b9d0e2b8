"""The command line: exit codes, one-line errors, restore safety, corruption handling."""

from __future__ import annotations

import os
import re

import pytest

from dbcheck import committed_prefix, content_digest
from proc import clean_env, litesync, run_writer, start_agent_ready, stop
from litesync.cli import build_parser


@pytest.fixture
def backed_up(tmp_path):
    """A database with 30 transactions replicated (while written) to a file replica."""
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "10")
    url = f"file://{tmp_path / 'replica'}"
    agent = start_agent_ready(db, url, log_path=str(tmp_path / "agent.log"))
    run_writer(db, "--count", "20", "--seed", "2", "--rate", "100")
    assert stop(agent) == 0
    return db, url, tmp_path / "replica"


def objects(replica_dir, suffix):
    out = []
    for root, _dirs, files in os.walk(replica_dir):
        out += [os.path.join(root, f) for f in files if f.endswith(suffix)]
    return sorted(out)


def assert_one_line_error(r, code):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_version():
    r = litesync("version")
    assert r.returncode == 0
    assert re.match(r"litesync \d+\.\d+\.\d+ \(SQLite 3\.\d+", r.stdout)


def test_restore_latest_and_refuse_to_overwrite(backed_up, tmp_path):
    db, url, _ = backed_up
    out = str(tmp_path / "out.db")
    r = litesync("restore", "-o", out, url)
    assert r.returncode == 0, r.stderr
    assert content_digest(out) == content_digest(db)
    before = open(out, "rb").read()
    r = litesync("restore", "-o", out, url)
    line = assert_one_line_error(r, 2)
    assert f"output exists: {out}" in line and "--force" in line
    assert open(out, "rb").read() == before
    r = litesync("restore", "-o", out, "--force", url)
    assert r.returncode == 0, r.stderr
    r = litesync("restore", "-o", out, "--if-db-not-exists", url)
    assert r.returncode == 0


def test_restore_from_empty_replica(tmp_path):
    (tmp_path / "nothing").mkdir()
    url = f"file://{tmp_path / 'nothing'}"
    out = str(tmp_path / "out.db")
    r = litesync("restore", "-o", out, url)
    line = assert_one_line_error(r, 1)
    assert line == f"litesync: error: {url}: no backups found (no snapshot in any generation)"
    r = litesync("restore", "-o", out, "--if-replica-exists", url)
    assert r.returncode == 0
    assert not os.path.exists(out)
    # An absent replica directory counts as empty for --if-replica-exists (a first deployment).
    r = litesync("restore", "-o", out, "--if-replica-exists", f"file://{tmp_path / 'absent'}")
    assert r.returncode == 0 and not os.path.exists(out)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_segment_stops_restore_and_names_it(backed_up, tmp_path, damage):
    _db, url, replica = backed_up
    seg = objects(replica, ".seg")[-1]
    data = bytearray(open(seg, "rb").read())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = data[: len(data) - 7]
    open(seg, "wb").write(bytes(data))
    out = str(tmp_path / "out.db")
    r = litesync("restore", "-o", out, url)
    line = assert_one_line_error(r, 1)
    key = os.path.relpath(seg, replica)
    assert key in line
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")


def test_damaged_snapshot_stops_restore(backed_up, tmp_path):
    _db, url, replica = backed_up
    snap = objects(replica, ".snap")[-1]
    data = bytearray(open(snap, "rb").read())
    data[100] ^= 1
    open(snap, "wb").write(bytes(data))
    out = str(tmp_path / "out.db")
    r = litesync("restore", "-o", out, url)
    line = assert_one_line_error(r, 1)
    assert os.path.relpath(snap, replica) in line
    assert not os.path.exists(out)


def test_missing_segment_is_named(backed_up, tmp_path):
    _db, url, replica = backed_up
    segs = objects(replica, ".seg")
    assert len(segs) >= 2
    os.unlink(segs[0])
    r = litesync("restore", "-o", str(tmp_path / "out.db"), url)
    line = assert_one_line_error(r, 1)
    assert "segment 0 is missing" in line


def test_segment_from_elsewhere_breaks_the_chain(backed_up, tmp_path):
    """A well-formed segment that does not follow its predecessor is refused."""
    db, url, replica = backed_up
    segs = objects(replica, ".seg")
    # Swap the contents of the last two segments: each is intact, the chain is not.
    a, b = open(segs[-2], "rb").read(), open(segs[-1], "rb").read()
    open(segs[-2], "wb").write(b)
    open(segs[-1], "wb").write(a)
    r = litesync("restore", "-o", str(tmp_path / "out.db"), url)
    line = assert_one_line_error(r, 1)
    assert os.path.relpath(segs[-2], replica) in line


def test_restore_db_from_config(tmp_path):
    db = str(tmp_path / "app.db")
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"dbs:\n  - path: app.db\n    replicas:\n      - url: file://{tmp_path}/rep\n")
    run_writer(db, "--count", "15")
    r = litesync("--config", str(cfg), "replicate", "--once")
    assert r.returncode == 0, r.stderr
    out = str(tmp_path / "restored.db")
    r = litesync("--config", str(cfg), "restore", "-o", out, db)
    assert r.returncode == 0, r.stderr
    assert committed_prefix(out) == 15
    # Without -o the configured path itself is the target, which exists: refused.
    r = litesync("--config", str(cfg), "restore", db)
    assert_one_line_error(r, 2)
    # Found through $LITESYNC_CONFIG too.
    r = litesync("restore", "-o", str(tmp_path / "r2.db"), db, env=clean_env({"LITESYNC_CONFIG": str(cfg)}))
    assert r.returncode == 0, r.stderr


def test_default_replica_next_to_the_database(tmp_path):
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "3")
    r = litesync("replicate", "--once", db, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert os.path.isdir(db + ".backups/generations")


@pytest.mark.parametrize("args,code,text", [
    (["replicate", "--config", "/nonexistent.yml"], 2, "/nonexistent.yml: config file not found"),
    (["replicate", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["--config", "/nonexistent.yml", "replicate"], 2, "/nonexistent.yml: config file not found"),
    (["restore"], 2, "the following arguments are required: DB|URL"),
    (["restore", "ftp://x/y", "-o", "z"], 2, "unsupported replica URL scheme: 'ftp'"),
    (["restore", "s3://b/p?colour=red", "-o", "z"], 2, "unknown query parameter 'colour'"),
    (["replicate", "/nonexistent/dir/x.db", "file:///tmp/x", "--once"], 1, "database does not exist"),
    (["bogus"], 2, "invalid choice: 'bogus'"),
])
def test_bad_input_is_one_line_with_exit_code(args, code, text, tmp_path):
    r = litesync(*args, cwd=str(tmp_path))
    line = assert_one_line_error(r, code) if code != 2 or "error" in r.stderr else r.stderr
    assert text in line


def test_config_error_names_file_line_and_key(tmp_path):
    cfg = tmp_path / "litesync.yml"
    cfg.write_text("dbs:\n  - path: app.db\n    replicass:\n      - url: file:///tmp/x\n")
    r = litesync("--config", str(cfg), "replicate", "--once")
    line = assert_one_line_error(r, 2)
    assert f"{cfg}:3: dbs[0]: unknown key 'replicass' (did you mean 'replicas'?)" in line


def test_every_command_is_documented_in_readme():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert f"litesync {name}" in readme, f"command {name} missing from README"
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in readme, f"option {opt} of {name} missing from README"


def test_json_logging_from_config(tmp_path):
    import json

    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "3")
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"logging: {{format: json, level: info}}\ndbs:\n  - path: app.db\n"
                   f"    replicas:\n      - url: file://{tmp_path}/rep\n")
    r = litesync("--config", str(cfg), "replicate", "--once")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stderr.splitlines()]
    assert any("snapshot" in rec["msg"] and rec["level"] == "info" for rec in lines)
