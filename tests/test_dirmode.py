"""Directory mode: config, matching, and a real agent picking up databases created after start."""

from __future__ import annotations

import os
import shutil
import sqlite3
import textwrap

import pytest

from dbcheck import committed_prefix, content_digest
from proc import litesync, run_writer, start_agent_ready, stop, wait_for
from litesync.config import DbConfig, DirConfig, load_config
from litesync.dirwatch import find_databases, has_sqlite_header
from litesync.errors import ConfigError


def load(tmp_path, text):
    path = tmp_path / "litesync.yml"
    path.write_text(textwrap.dedent(text))
    return load_config(str(path), environ={})


def test_dir_entry(tmp_path):
    cfg = load(tmp_path, """\
        retention: 1h
        dbs:
          - path: main.db
            replicas: [{url: /b/main}]
          - dir: tenants
            pattern: "*.sqlite"
            recursive: true
            checkpoint-pages: 500
            replicas:
              - url: /b/tenants
              - {type: s3, bucket: bk, path: tenants/}
        """)
    assert [d.path for d in cfg.dbs] == [str(tmp_path / "main.db")]
    (d,) = cfg.dirs
    assert (d.path, d.pattern, d.recursive) == (str(tmp_path / "tenants"), "*.sqlite", True)
    assert (d.template.checkpoint_pages, d.template.retention) == (500, 3600.0)
    db = cfg.database(str(tmp_path / "tenants" / "eu" / "a.sqlite"))
    assert db.path == str(tmp_path / "tenants" / "eu" / "a.sqlite")
    assert [(r.name, r.path) for r in db.replicas] == [("file", "/b/tenants/eu/a.sqlite"), ("s3", "tenants/eu/a.sqlite")]
    assert db.checkpoint_pages == 500
    assert cfg.database(str(tmp_path / "main.db")) is cfg.dbs[0]
    assert cfg.database(str(tmp_path / "tenants" / "a.db")) is None
    assert [r.path for r in cfg.replicas] == ["/b/main", "/b/tenants", "tenants"]


def test_example_has_a_directory(tmp_path):
    from test_config import EXAMPLE, EXAMPLE_ENV

    key_file = tmp_path / "litesync.key"
    key_file.write_text("2efedcba9876543210fedcba9876543210fedcba98765432100123456789abcd\n")
    key_file.chmod(0o600)
    cfg = load_config(EXAMPLE, environ={**EXAMPLE_ENV, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    (d,) = cfg.dirs
    assert (d.path, d.pattern, d.recursive, d.template.snapshot_interval) == \
        ("/var/lib/app/tenants", "*.db", False, 12 * 3600.0)
    assert d.database("/var/lib/app/tenants/a.db").replicas[0].path == "tenants/a.db"


def test_dir_defaults(tmp_path):
    (d,) = load(tmp_path, "dbs: [{dir: /data, replicas: [{url: 's3://bk'}]}]\n").dirs
    assert (d.pattern, d.recursive) == ("*.db", False)
    assert d.database("/data/x.db").replicas[0].path == "x.db"  # a bucket root prefix


@pytest.mark.parametrize("text, message", [
    ("dbs:\n  - path: a.db\n    dir: d\n    replicas: [{url: /b}]\n",
     "litesync.yml:3: dbs[0]: give either path: or dir:, not both"),
    ("dbs:\n  - path: a.db\n    pattern: '*.db'\n    replicas: [{url: /b}]\n",
     "litesync.yml:3: dbs[0]: key 'pattern' applies only with dir:"),
    ("dbs:\n  - path: a.db\n    recursive: true\n    replicas: [{url: /b}]\n",
     "litesync.yml:3: dbs[0]: key 'recursive' applies only with dir:"),
    ("dbs:\n  - dir: d\n    pattern: sub/*.db\n    replicas: [{url: /b}]\n",
     "litesync.yml:3: dbs[0].pattern: pattern matches file names, not paths: 'sub/*.db'"),
    ("dbs:\n  - dir: d\n    recursive: yes\n    replicas: [{url: /b}]\n",
     "litesync.yml:3: dbs[0].recursive: expected true or false: 'yes'"),
    ("dbs:\n  - dir: d\n    replicas: [{url: /b}]\n  - dir: ./d/\n    replicas: [{url: /c}]\n",
     "litesync.yml:4: dbs[1].dir: duplicate directory: '{tmp}/d' (also dbs[0])"),
    ("dbs:\n  - dir: d\n", "litesync.yml:2: dbs[0]: missing required key: 'replicas'"),
    ("dbs:\n  - dir: d\n    replicas: [{url: /b}]\n  - path: x.db\n    replicas: [{url: /b}]\n",
     "litesync.yml:5: dbs[1].replicas[0]: same destination as dbs[0].replicas[0]: '/b'"),
])
def test_dir_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert str(e.value) == f"{tmp_path}/{message.replace('{tmp}', str(tmp_path))}"


def test_find_databases_by_name_and_header(tmp_path):
    d = tmp_path / "data"
    (d / "sub" / ".deep.db-litesync").mkdir(parents=True)
    (d / ".a.db-litesync").mkdir()
    for name in ("a.db", "sub/b.db", "sub/.deep.db-litesync/c.db"):
        sqlite3.connect(d / name).execute("CREATE TABLE t (x)").connection.close()
    for name in ("a.db-wal", "a.db-shm", "a.db-journal", "x.db.tmp", "notes.txt", ".a.db-litesync/lock"):
        (d / name).write_bytes(b"SQLite format 3\0" + bytes(100))
    (d / "text.db").write_text("hello, not a database")
    (d / "empty.db").write_bytes(b"")
    flat = DirConfig(DbConfig(str(d), ()), "*", False)
    assert find_databases(flat) == [str(d / n) for n in ("a.db", "empty.db", "notes.txt", "text.db")]
    deep = DirConfig(DbConfig(str(d), ()), "*.db", True)
    assert find_databases(deep) == [str(d / n) for n in ("a.db", "empty.db", "text.db", "sub/b.db")]
    assert [has_sqlite_header(str(d / n)) for n in ("a.db", "text.db", "empty.db", "gone.db")] == \
        [True, False, None, None]
    assert not flat.matches(str(d / "sub" / "b.db")) and deep.matches(str(d / "sub" / "b.db"))
    assert not deep.matches(str(d)) and not deep.matches(str(tmp_path / "a.db"))


def test_agent_picks_up_databases_created_after_start(tmp_path):
    """A real agent on a dir: config; a writer creates a database after start; restores match."""
    data, rep = tmp_path / "data", tmp_path / "rep"
    data.mkdir()
    run_writer(str(data / "first.db"), "--count", "10")
    (data / "notes.db").write_text("not a database")
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"dbs:\n  - dir: data\n    pattern: '*.db'\n    recursive: true\n"
                   f"    replicas: [{{url: {rep}}}]\n")
    log = str(tmp_path / "agent.log")
    agent = start_agent_ready("--config", str(cfg), log_path=log)
    try:
        (data / "eu").mkdir()
        late = str(data / "eu" / "late.db")
        run_writer(late, "--count", "40", "--rate", "200")
        run_writer(str(data / "first.db"), "--count", "5", "--seed", "2")
        gone = str(data / "gone.db")
        run_writer(gone, "--count", "3")
        # On the replica before it goes (found is logged before the agent opens it).
        wait_for(lambda: any(files for _, _, files in os.walk(rep / "gone.db")), timeout=30)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(gone + suffix):
                os.unlink(gone + suffix)
        wait_for(lambda: "gone.db: database removed" in open(log).read(), timeout=30)
    finally:
        code = stop(agent)
    text = open(log).read()
    assert code == 0, text
    assert f"{data}/notes.db: not a SQLite database; skipped" in text
    assert f"{late}: found in {data}" in text
    assert sorted(os.listdir(rep)) == ["eu", "first.db", "gone.db"]
    for db, n in ((late, 40), (str(data / "first.db"), 15)):
        out = str(tmp_path / f"restored-{os.path.basename(db)}")
        r = litesync("--config", str(cfg), "restore", "-o", out, db)  # found under the dir's prefix
        assert r.returncode == 0, r.stderr
        assert committed_prefix(out) == n
        assert content_digest(out) == content_digest(db)

    # A new machine: the directory is gone; every database its replica holds comes back.
    shutil.rmtree(data)
    r = litesync("--config", str(cfg), "replicate", "--once", "--restore-if-db-not-exists")
    assert r.returncode == 0, r.stderr
    assert committed_prefix(late) == 40 and committed_prefix(str(data / "first.db")) == 15
    assert committed_prefix(str(data / "gone.db")) == 3


def test_a_write_to_a_replicated_database_does_not_rescan_its_directory(tmp_path):
    """A commit's checkpoint writes the database file: at a thousand databases a rescan per
    commit stats every file. A new file, or one that went, still wakes the scan."""
    from litesync.dirwatch import DirWatcher

    d = DirConfig(DbConfig(str(tmp_path), ()))
    w = DirWatcher(d, runner=None, interval=5.0)  # type: ignore[arg-type]
    live, new, gone = (str(tmp_path / n) for n in ("live.db", "new.db", "gone.db"))
    open(live, "w").close()
    open(new, "w").close()
    w.active[live] = (None, (0, 0))  # type: ignore[assignment]
    w.active[gone] = (None, (0, 0))  # type: ignore[assignment]
    w.notice(live)
    w.notice(live + "-wal")
    assert not w.wake.is_set()
    w.notice(new)
    assert w.wake.is_set()
    w.wake.clear()
    w.notice(gone)
    assert w.wake.is_set()


def test_a_database_replaced_in_a_directory_gets_one_new_generation(tmp_path):
    """The agent takes up a database replaced by rename at its next turn (one line, one new
    generation); the directory's rescan then finds the agent already on the new file and
    neither stops it nor starts it over."""
    data, rep = tmp_path / "data", tmp_path / "rep"
    data.mkdir()
    db = str(data / "a.db")
    run_writer(db, "--count", "10")
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"dbs:\n  - dir: data\n    replicas: [{{url: {rep}}}]\n")
    log = str(tmp_path / "agent.log")
    agent = start_agent_ready("--config", str(cfg), log_path=log)
    try:
        new = str(tmp_path / "new.db")
        run_writer(new, "--count", "4", "--seed", "3")
        for suffix in ("-wal", "-shm"):
            os.unlink(db + suffix)
        os.replace(new, db)
        run_writer(db, "--count", "2", "--seed", "4")
        wait_for(lambda: "the database file was replaced" in open(log).read(), timeout=30)
        run_writer(str(data / "b.db"), "--count", "1")  # a new file: the directory is rescanned
        wait_for(lambda: "b.db: found" in open(log).read(), timeout=30)
    finally:
        code = stop(agent)
    text = open(log).read()
    assert code == 0, text
    assert "a.db: database removed or replaced" not in text
    assert len(os.listdir(rep / "a.db" / "generations")) == 2
    out = str(tmp_path / "restored.db")
    r = litesync("--config", str(cfg), "restore", "-o", out, db)
    assert r.returncode == 0, r.stderr
    assert content_digest(out) == content_digest(db)
