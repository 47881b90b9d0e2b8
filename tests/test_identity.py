"""A backup knows its database: every object records the id of the database it belongs to,
and restore, --restore-if-db-not-exists and the agent refuse a replica holding another's.

The tenants here are a directory of databases sharing one replica prefix and one
encryption key, the set-up in which one tenant's backup could restore as another's.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest

from dbcheck import content_digest, write_rows
from proc import clean_env, litesync

from litesync import layout
from litesync.replica.file import FileReplicaClient

KEY = "5d41402abc4b2a76b9719d911017c592ae2b5f6e0f1d2c3b4a5968778695a4b3"
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "v1")


def rows(db: str) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY id")]
    finally:
        conn.close()


class Tenants:
    """tenants/alice.db and tenants/bob.db, replicated by one dir: entry to store/<name>."""

    def __init__(self, tmp_path, encrypted: bool) -> None:
        self.tmp = tmp_path
        self.dir = str(tmp_path / "tenants")
        self.store = str(tmp_path / "store")
        os.makedirs(self.dir)
        key = f"\n        encryption-key: {KEY}" if encrypted else ""
        self.config = str(tmp_path / "litesync.yml")
        with open(self.config, "w") as f:
            f.write(f"dbs:\n  - dir: {self.dir}\n    id: tenants\n    replicas:\n      - url: file://{self.store}{key}\n")
        os.chmod(self.config, 0o600)
        self.env = clean_env()

    def db(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def run(self, *args: str):
        return litesync("--config", self.config, *args, env=self.env)

    def replicate(self, name: str, label: str) -> None:
        """Write rows to tenants/<name> and ship them (a generation newer than any before)."""
        write_rows(self.db(name), 5, label)
        r = self.run("replicate", "--once", self.db(name))
        assert r.returncode == 0, r.stderr

    def replica(self, name: str) -> str:
        return os.path.join(self.store, name)

    def generations(self, name: str) -> list[str]:
        return sorted(os.listdir(os.path.join(self.replica(name), "generations")))

    def listing(self) -> list[tuple[str, int]]:
        return sorted((o.key, o.size) for o in FileReplicaClient(self.store).list(""))


@pytest.fixture(params=["plain", "encrypted"])
def tenants(request, tmp_path):
    t = Tenants(tmp_path, request.param == "encrypted")
    t.replicate("alice.db", "alice")
    t.replicate("bob.db", "bob")  # bob's generation is newer than alice's
    return t


def one_line_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_every_object_records_its_database(tenants):
    from litesync.segment import read_header
    from litesync.replica import open_replica
    from litesync.config import load_config

    cfg = load_config(tenants.config)
    for name in ("alice.db", "bob.db"):
        db = cfg.database(tenants.db(name))
        assert db is not None and db.id == f"tenants/{name}"
        client = open_replica(db.replicas[0])
        for o in client.list(layout.GENERATIONS + "/"):
            with client.open(o.key) as f:
                assert read_header(f, o.key, o.key.endswith(".snap")).db_id == f"tenants/{name}"


def test_a_tenant_swapped_in_by_copy_is_refused(tenants):
    shutil.rmtree(tenants.replica("alice.db"))
    shutil.copytree(tenants.replica("bob.db"), tenants.replica("alice.db"))
    out = str(tenants.tmp / "out.db")
    r = tenants.run("restore", "-o", out, tenants.db("alice.db"))
    assert r.returncode == 2
    line = one_line_error(r)
    assert line.startswith("litesync: error: generations/") and ".snap: " in line
    assert line.endswith(": belongs to database 'tenants/bob.db', not 'tenants/alice.db'; "
                         "if that is the backup wanted, restore it with --id 'tenants/bob.db'")
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")
    # The override does what it says.
    r = tenants.run("restore", "-o", out, "--id", "tenants/bob.db", tenants.db("alice.db"))
    assert r.returncode == 0, r.stderr
    assert rows(out) == [f"bob {i}" for i in range(5)]


def test_another_tenants_newer_generation_added_beside_is_refused(tenants):
    bob_gen = tenants.generations("bob.db")[-1]
    assert bob_gen > tenants.generations("alice.db")[-1]
    shutil.copytree(os.path.join(tenants.replica("bob.db"), "generations", bob_gen),
                    os.path.join(tenants.replica("alice.db"), "generations", bob_gen))
    before = tenants.listing()
    out = str(tenants.tmp / "out.db")
    r = tenants.run("restore", "-o", out, tenants.db("alice.db"))
    assert r.returncode == 2
    assert one_line_error(r).endswith("belongs to database 'tenants/bob.db', not 'tenants/alice.db'; "
                                      "if that is the backup wanted, restore it with --id 'tenants/bob.db'")
    assert not os.path.exists(out)
    assert tenants.listing() == before
    # alice's own generation is still there for the asking.
    alice_gen = tenants.generations("alice.db")[0]
    r = tenants.run("restore", "-o", out, "--generation", alice_gen, tenants.db("alice.db"))
    assert r.returncode == 0, r.stderr
    assert rows(out) == [f"alice {i}" for i in range(5)]


def test_restore_if_db_not_exists_refuses_a_foreign_replica(tenants):
    os.remove(tenants.db("alice.db"))
    shutil.rmtree(os.path.join(tenants.dir, ".alice.db-litesync"))
    shutil.rmtree(tenants.replica("alice.db"))
    shutil.copytree(tenants.replica("bob.db"), tenants.replica("alice.db"))
    before = tenants.listing()
    r = tenants.run("replicate", "--once", "--restore-if-db-not-exists")
    assert r.returncode == 2, r.stderr
    assert "belongs to database 'tenants/bob.db', not 'tenants/alice.db'" in r.stderr
    assert not os.path.exists(tenants.db("alice.db"))
    assert tenants.listing() == before


def test_a_url_restore_takes_the_database_the_replica_holds_unless_told(tenants):
    out = str(tenants.tmp / "out.db")
    env = dict(tenants.env, LITESYNC_ENCRYPTION_KEY=KEY) if "encryption-key" in open(tenants.config).read() \
        else tenants.env
    url = f"file://{tenants.replica('bob.db')}"
    r = litesync("restore", "-o", out, url, env=env)
    assert r.returncode == 0, r.stderr
    assert rows(out) == [f"bob {i}" for i in range(5)]
    r = litesync("restore", "-o", out + "2", "--id", "tenants/alice.db", url, env=env)
    assert r.returncode == 2
    assert "belongs to database 'tenants/bob.db', not 'tenants/alice.db'" in one_line_error(r)
    assert not os.path.exists(out + "2")


def test_the_agent_refuses_a_replica_holding_another_database(tmp_path):
    """Two entries whose replica paths were swapped: each agent would write into the other's history."""
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    ra, rb = str(tmp_path / "ra"), str(tmp_path / "rb")
    write_rows(a, 5, "a")
    write_rows(b, 5, "b")
    for db, root in ((a, ra), (b, rb)):
        r = litesync("replicate", "--once", db, f"file://{root}")
        assert r.returncode == 0, r.stderr
    before = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for root in (ra, rb)
                    for d, _, fs in os.walk(root) for f in fs)
    write_rows(a, 5, "a more")
    r = litesync("replicate", "--once", a, f"file://{rb}")
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("litesync: error: replica file: generations/"), line
    assert f"belongs to database {b!r}, not {a!r}; another database writes here" in line
    assert f"set id: {b!r} on it to keep these backups" in line
    after = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for root in (ra, rb)
                   for d, _, fs in os.walk(root) for f in fs)
    assert after == before
    # A database moved to a new path keeps its backups by its old id.
    moved = str(tmp_path / "moved.db")
    os.rename(b, moved)
    shutil.rmtree(str(tmp_path / ".b.db-litesync"))
    r = litesync("replicate", "--once", "--id", b, moved, f"file://{rb}")
    assert r.returncode == 0, r.stderr
    out = str(tmp_path / "out.db")
    r = litesync("restore", "-o", out, "--id", b, f"file://{rb}")
    assert r.returncode == 0, r.stderr
    assert content_digest(out) == content_digest(moved)


def test_a_configured_id_names_the_database(tmp_path):
    db, root = str(tmp_path / "app.db"), str(tmp_path / "r")
    cfg = str(tmp_path / "litesync.yml")
    with open(cfg, "w") as f:
        f.write(f"dbs:\n  - path: {db}\n    id: billing\n    replicas:\n      - url: file://{root}\n")
    write_rows(db, 5, "x")
    r = litesync("--config", cfg, "replicate", "--once")
    assert r.returncode == 0, r.stderr
    r = litesync("restore", "-o", str(tmp_path / "o.db"), "--id", "billing", f"file://{root}")
    assert r.returncode == 0, r.stderr
    r = litesync("restore", "-o", str(tmp_path / "p.db"), "--id", db, f"file://{root}")
    assert r.returncode == 2
    assert "belongs to database 'billing', not" in r.stderr


@pytest.mark.parametrize("text, message", [
    ("x" * 1025, "litesync.yml:3: dbs[0].id: database id is longer than 1024 bytes"),
    ("\"a\\uD800\"", "litesync.yml:3: dbs[0].id: database id is not UTF-8: 'a\\ud800'"),
])
def test_a_bad_id_is_a_config_error(tmp_path, text, message):
    with open(tmp_path / "litesync.yml", "w") as f:
        f.write(f"dbs:\n  - path: app.db\n    id: {text}\n    replicas:\n      - url: file:///r\n")
    r = litesync("--config", "litesync.yml", "restore", "-o", "x.db", "app.db", cwd=str(tmp_path))
    assert r.returncode == 2
    assert one_line_error(r) == f"litesync: error: {message}"


@pytest.mark.parametrize("first, second, message", [
    ("path: a.db\n    id: same", "path: b.db\n    id: same", "database id 'same' is also dbs[0]'s"),
    # A directory's prefix that could hold a path entry's id: that directory may find a database with it.
    ("dir: tenants\n    id: t", "path: app.db\n    id: t/app.db", "database id 't/app.db' could be also dbs[0]'s"),
])
def test_two_entries_that_could_share_an_id_are_a_config_error(tmp_path, first, second, message):
    with open(tmp_path / "litesync.yml", "w") as f:
        f.write(f"dbs:\n  - {first}\n    replicas: [{{url: file:///r1}}]\n"
                f"  - {second}\n    replicas: [{{url: file:///r2}}]\n")
    r = litesync("--config", "litesync.yml", "status", cwd=str(tmp_path))
    assert r.returncode == 2
    assert one_line_error(r) == f"litesync: error: litesync.yml:6: dbs[1].id: {message}"


@pytest.mark.parametrize("kind", ["plain", "encrypted"])
def test_format_1_replicas_still_restore(tmp_path, kind):
    """Replicas written before database ids existed (format 1, committed as fixtures)."""
    env = clean_env()
    if kind == "encrypted":
        with open(os.path.join(FIXTURES, "encrypted.key")) as f:
            env["LITESYNC_ENCRYPTION_KEY"] = f.read().strip()
    with open(os.path.join(FIXTURES, f"{kind}-rows.json")) as f:
        expected = [tuple(r) for r in json.load(f)]
    url = f"file://{os.path.join(FIXTURES, f'{kind}-replica')}"
    for extra in ([], ["--id", "anything"]):  # objects without an id pass any expectation
        out = str(tmp_path / f"{kind}{len(extra)}.db")
        r = litesync("restore", "-o", out, *extra, url, env=env)
        assert r.returncode == 0, r.stderr
        conn = sqlite3.connect(out)
        assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == expected
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()


def _chain(ids: list[str | None]) -> list[tuple[str, bytes]]:
    """A snapshot of two pages, then one segment per further id, each rewriting page 2; the
    first id is the snapshot's (None: format 1). Returns (key, object bytes) in order."""
    import io

    from litesync.dbhash import DbHash
    from litesync.segment import (NO_LINK, SegmentHeader, SegmentWriter, SnapshotHeader, SnapshotWriter, TxInfo,
                                  WalPosition)

    ps, gen = 512, 0x0123456789ABCDEF
    pages = {1: bytes([1]) * ps, 2: bytes([2]) * ps}
    hasher = DbHash()
    for n, data in pages.items():
        hasher.set_page(n, data)
    out = io.BytesIO()
    w = SnapshotWriter(out, SnapshotHeader(ps, gen, 0, NO_LINK, 2, 1000, WalPosition(), db_id=ids[0]))
    w.add_pages(pages[1] + pages[2])
    w.close(hasher.value)
    objects = [(layout.SnapshotName(gen, 0, 1000).key, out.getvalue())]
    link = NO_LINK
    for seq, db_id in enumerate(ids[1:]):
        page = bytes([10 + seq]) * ps
        hasher.set_page(2, page)
        end = bytes([seq + 1]) * 16
        out = io.BytesIO()
        w = SegmentWriter(out, SegmentHeader(ps, gen, seq, seq, link, end, WalPosition(), 1,
                                             (TxInfo(2000 + seq, 2, 1, hasher.value),), db_id=db_id))
        w.add_page(2, page)
        w.close()
        objects.append((layout.SegmentName(gen, seq, seq, 2000 + seq).key, out.getvalue()))
        link = end
    return objects


def _replay(objects: list[tuple[str, bytes]], db_id: str | None = None):
    import io

    from litesync.restore import PageBatch, apply_segment, load_snapshot, open_snapshot

    (key, data), rest = objects[0], objects[1:]
    name = layout.parse_key(key)
    with PageBatch(512, 2) as batch:
        pos = load_snapshot(open_snapshot(io.BytesIO(data), name, db_id), batch)
        pos.db_id = pos.db_id or db_id
        for key, data in rest:
            apply_segment(io.BytesIO(data), key, pos, batch)
        return pos


def test_a_format_1_generation_continued_in_format_2_restores():
    """An agent upgraded with a spool of format 1 objects continues their generation."""
    pos = _replay(_chain([None, None, "app", "app"]), "app")
    assert (pos.next_seq, pos.db_id) == (3, "app")


def test_an_object_of_another_database_inside_a_chain_is_refused():
    from litesync.errors import ForeignDatabaseError

    with pytest.raises(ForeignDatabaseError, match=r": belongs to database 'bob', not 'app'; "):
        _replay(_chain(["app", "app", "bob"]))
    with pytest.raises(ForeignDatabaseError, match=r"\.snap: belongs to database 'bob', not 'app'; "):
        _replay(_chain(["bob", "bob"]), "app")
    with pytest.raises(ForeignDatabaseError, match=r"\.seg: belongs to database 'bob', not 'app'; "):
        _replay(_chain([None, "bob"]), "app")  # a format 1 snapshot says nothing; its segment does


def test_concatenating_segments_of_two_databases_fails():
    from litesync.errors import ChainError
    from litesync.segment import common_db_id

    assert common_db_id([("a", None), ("b", "x"), ("c", "x")]) == "x"
    assert common_db_id([("a", None)]) is None
    with pytest.raises(ChainError, match=r"^c: belongs to database 'y', b to 'x'$"):
        common_db_id([("a", None), ("b", "x"), ("c", "y")])


def test_two_directories_holding_the_same_name_keep_apart(tmp_path):
    """Found in review: ids relative to the directory made t1/app.db and t2/app.db one database."""
    store = str(tmp_path / "rep")
    cfg = str(tmp_path / "litesync.yml")
    with open(cfg, "w") as f:
        f.write(f"dbs:\n  - dir: {tmp_path}/t1\n    replicas: [{{url: 'file://{store}/t1'}}]\n"
                f"  - dir: {tmp_path}/t2\n    replicas: [{{url: 'file://{store}/t2'}}]\n")
    for t in ("t1", "t2"):
        os.makedirs(tmp_path / t)
        write_rows(str(tmp_path / t / "app.db"), 3, t)
    r = litesync("--config", cfg, "replicate", "--once")
    assert r.returncode == 0, r.stderr
    shutil.rmtree(os.path.join(store, "t1", "app.db"))
    shutil.copytree(os.path.join(store, "t2", "app.db"), os.path.join(store, "t1", "app.db"))
    r = litesync("--config", cfg, "restore", "-o", str(tmp_path / "out.db"), str(tmp_path / "t1" / "app.db"))
    assert r.returncode == 2
    assert f"belongs to database '{tmp_path}/t2/app.db', not '{tmp_path}/t1/app.db'" in one_line_error(r)


def test_a_newer_generation_without_an_id_beside_a_history_with_ids_is_refused(tmp_path):
    """Found in review: another database's format 1 generation, newer, copied beside a
    history that carries ids, restored as the newest. An agent writing ids never writes one
    without: it is not this history."""
    import io

    from litesync.dbhash import DbHash
    from litesync.segment import NO_LINK, SnapshotHeader, SnapshotWriter, WalPosition

    a, b, root = str(tmp_path / "a.db"), str(tmp_path / "b.db"), str(tmp_path / "r")
    write_rows(a, 3, "a")
    r = litesync("replicate", "--once", a, f"file://{root}")
    assert r.returncode == 0, r.stderr
    write_rows(b, 3, "b")  # checkpointed: the file is the database
    data = open(b, "rb").read()
    ps = int.from_bytes(data[16:18], "big")
    hasher = DbHash()
    for i in range(len(data) // ps):
        hasher.set_page(i + 1, data[i * ps:(i + 1) * ps])
    (a_gen,) = os.listdir(os.path.join(root, "generations"))
    gen = layout.new_generation(after=int(a_gen, 16))
    out = io.BytesIO()
    w = SnapshotWriter(out, SnapshotHeader(ps, gen, 0, NO_LINK, len(data) // ps, 1000, WalPosition()))  # format 1
    w.add_pages(data)
    w.close(hasher.value)
    FileReplicaClient(root).write_bytes(layout.SnapshotName(gen, 0, 1000).key, out.getvalue())
    for args in ([], ["--id", a]):
        r = litesync("restore", "-o", str(tmp_path / "out.db"), *args, f"file://{root}")
        assert r.returncode == 2
        line = one_line_error(r)
        assert line.endswith(f"carries no database id (written before ids existed), yet generation "
                             f"{a_gen} before it belongs to database "
                             f"{a!r}: another database's old backup copied in? If that is the backup wanted, "
                             f"restore it with --generation {layout.format_generation(gen)}"), line
        assert not os.path.exists(tmp_path / "out.db")
    r = litesync("restore", "-o", str(tmp_path / "out.db"), "--generation", layout.format_generation(gen),
                 f"file://{root}")
    assert r.returncode == 0, r.stderr
    assert rows(str(tmp_path / "out.db")) == ["b 0", "b 1", "b 2"]


def test_a_database_named_with_a_tab_replicates(tmp_path):
    """Found in review: a default id is a path, and a path may hold any character."""
    db, root = str(tmp_path / "tab\tname.db"), str(tmp_path / "r")
    write_rows(db, 3, "t")
    r = litesync("replicate", "--once", db, f"file://{root}")
    assert r.returncode == 0, r.stderr
    r = litesync("restore", "-o", str(tmp_path / "out.db"), "--id", db, f"file://{root}")
    assert r.returncode == 0, r.stderr
    assert rows(str(tmp_path / "out.db")) == ["t 0", "t 1", "t 2"]


def test_the_default_id_is_the_same_through_a_symbolic_link(tmp_path):
    """Found in review: a working directory or config reached through a link gave the same
    database another id, and the restore refused its own backup."""
    real = tmp_path / "real"
    real.mkdir()
    os.symlink("real", tmp_path / "link")
    (real / "litesync.yml").write_text(f"dbs:\n  - path: app.db\n    replicas: [{{url: 'file://{tmp_path}/r'}}]\n")
    write_rows(str(real / "app.db"), 3, "x")
    r = litesync("--config", "litesync.yml", "replicate", "--once", cwd=str(tmp_path / "link"))
    assert r.returncode == 0, r.stderr
    r = litesync("--config", str(real / "litesync.yml"), "restore", "-o", str(tmp_path / "out.db"),
                 str(real / "app.db"))
    assert r.returncode == 0, r.stderr
    r = litesync("--config", str(tmp_path / "link" / "litesync.yml"), "restore", "-o", str(tmp_path / "out2.db"),
                 str(tmp_path / "link" / "app.db"))
    assert r.returncode == 0, r.stderr
    assert rows(str(tmp_path / "out2.db")) == ["x 0", "x 1", "x 2"]
