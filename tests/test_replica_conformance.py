"""One conformance suite for the replica-client interface, run against every backend."""

from __future__ import annotations

import io
import os

import pytest

from litesync.errors import ObjectNotFoundError


def test_round_trip_sizes(replica_client):
    for key, data in [("a/empty", b""), ("a/small", b"hello"), ("a/big", os.urandom((6 << 20) + 123))]:
        replica_client.write(key, io.BytesIO(data), len(data))
        assert replica_client.read(key) == data


def test_streamed_read(replica_client):
    data = os.urandom(3 << 20)
    replica_client.write_bytes("x/stream", data)
    with replica_client.open("x/stream") as f:
        chunks = []
        while True:
            c = f.read(1 << 16)
            if not c:
                break
            chunks.append(c)
    assert b"".join(chunks) == data


def test_overwrite_replaces(replica_client):
    replica_client.write_bytes("k", b"one")
    replica_client.write_bytes("k", b"two!")
    assert replica_client.read("k") == b"two!"
    assert [(o.key, o.size) for o in replica_client.list("k")] == [("k", 4)]


def test_write_file_stores_a_local_file(replica_client, tmp_path):
    src = tmp_path / "obj"
    for data in (os.urandom(100_000), b"again"):  # the second replaces the first
        src.write_bytes(data)
        assert replica_client.write_file("f/obj", str(src)) == len(data)
        assert replica_client.read("f/obj") == data
    assert [(o.key, o.size) for o in replica_client.list("f/")] == [("f/obj", 5)]


def test_file_replica_links_a_file_on_its_file_system_and_copies_when_it_cannot(tmp_path, monkeypatch):
    import errno

    from litesync.replica.file import FileReplicaClient

    client = FileReplicaClient(str(tmp_path / "rep"))
    src = tmp_path / "spooled"
    src.write_bytes(b"segment bytes")
    client.write_file("g/one", str(src))
    linked = tmp_path / "rep" / "g" / "one"
    assert os.stat(linked).st_ino == os.stat(src).st_ino and os.stat(src).st_nlink == 2

    def no_link(a, b):  # another file system
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    client.write_file("g/two", str(src))
    copied = tmp_path / "rep" / "g" / "two"
    assert copied.read_bytes() == b"segment bytes" and os.stat(copied).st_ino != os.stat(src).st_ino
    assert sorted(p.name for p in (tmp_path / "rep" / "g").iterdir()) == ["one", "two"]  # no temp file left


def test_list_order_and_prefix(replica_client):
    keys = ["generations/000b/segments/0002.seg", "generations/000a/segments/0001.seg",
            "generations/000a/snapshots/0000.snap", "generations/000a/segments/0000.seg", "other/x"]
    for k in keys:
        replica_client.write_bytes(k, k.encode())
    got = [o.key for o in replica_client.list("generations/")]
    assert got == sorted(k for k in keys if k.startswith("generations/"))
    assert [o.key for o in replica_client.list("generations/000a/segments/")] == [
        "generations/000a/segments/0000.seg", "generations/000a/segments/0001.seg"]
    assert [o.size for o in replica_client.list("other/")] == [len(b"other/x")]
    assert list(replica_client.list("nothing/")) == []


def test_missing_key(replica_client):
    with pytest.raises(ObjectNotFoundError) as e:
        replica_client.read("no/such/key")
    assert "no/such/key" in str(e.value)
    assert e.value.retryable is False


def test_delete(replica_client):
    replica_client.write_bytes("d/1", b"1")
    replica_client.write_bytes("d/1", b"11")  # a second version where the store keeps versions
    replica_client.write_bytes("d/2", b"2")
    replica_client.delete(["d/1", "d/missing"])
    assert [o.key for o in replica_client.list("d/")] == ["d/2"]
    with pytest.raises(ObjectNotFoundError):
        replica_client.read("d/1")
    replica_client.delete([])


def test_b2_delete_removes_every_version(b2_api):
    from conftest import replica_cfg
    from litesync.replica.b2 import B2ReplicaClient

    api, bucket = b2_api
    client = B2ReplicaClient(replica_cfg(type="b2", name="b2", bucket=bucket, path="p"), api=api)
    for i in range(3):
        client.write_bytes("v", b"x" * i)
    b = api.get_bucket_by_name(bucket)
    assert len([fv for fv, _ in b.ls("p", recursive=True, latest_only=False)]) == 3
    client.delete(["v"])
    assert [fv for fv, _ in b.ls("p", recursive=True, latest_only=False)] == []


def replicated_agent(tmp_path, transactions):
    """An agent that has copied ``transactions`` single-row inserts into its spool."""
    import sqlite3

    from litesync.agent import DbAgent

    db = str(tmp_path / "src.db")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (x)")
    agent = DbAgent(db)
    agent.open()
    agent.start()
    for _ in range(transactions):
        c.execute("INSERT INTO t VALUES (?)", (os.urandom(500),))
        agent.step()
    return agent


def test_restore_round_trip_through_every_backend(replica_client, tmp_path):
    """The agent's real objects, copied to the backend, restore to the same database."""
    import sqlite3

    from litesync.restore import restore

    agent = replicated_agent(tmp_path, 20)
    for name, _size in agent.spool.objects():
        with open(agent.spool.path(name), "rb") as f:
            replica_client.write(name.key, f, os.path.getsize(agent.spool.path(name)))
    agent.close()
    out = str(tmp_path / "out.db")
    restore(replica_client, out)
    assert sqlite3.connect(out).execute("SELECT count(*) FROM t").fetchone()[0] == 20


class _FlakyClient:
    """Wraps a client; the first ``failures`` reads of an object break mid-stream (fault injection)."""

    def __init__(self, inner, failures):
        self.inner = inner
        self.name = inner.name
        self.failures = failures

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def open(self, key):
        f = self.inner.open(key)
        if self.failures <= 0:
            return f
        self.failures -= 1

        class Broken:
            def __enter__(s):
                return s

            def __exit__(s, *a):
                f.close()

            def read(s, n=-1):
                raise ConnectionResetError("peer reset")

        return Broken()


def test_restore_retries_transient_read_failures(tmp_path, monkeypatch):
    import sqlite3

    from litesync import restore as restore_mod
    from litesync.errors import TransientReplicaError
    from litesync.replica.file import FileReplicaClient

    monkeypatch.setattr(restore_mod.time, "sleep", lambda s: None)
    agent = replicated_agent(tmp_path, 1)
    agent.close()
    spool = FileReplicaClient(agent.spool.root)
    restore_mod.restore(_FlakyClient(spool, failures=2), str(tmp_path / "ok.db"))
    assert sqlite3.connect(str(tmp_path / "ok.db")).execute("SELECT count(*) FROM t").fetchone()[0] == 1
    with pytest.raises(TransientReplicaError, match="read .*ConnectionResetError"):
        restore_mod.restore(_FlakyClient(spool, failures=99), str(tmp_path / "never.db"))
    assert not os.path.exists(tmp_path / "never.db") and not os.path.exists(tmp_path / "never.db.tmp")


def test_b2_missing_key_and_missing_bucket_are_clear(b2_api, monkeypatch):
    from conftest import replica_cfg
    from litesync.errors import ReplicaError
    from litesync.replica.b2 import B2ReplicaClient

    monkeypatch.delenv("B2_APPLICATION_KEY_ID", raising=False)
    monkeypatch.delenv("B2_APPLICATION_KEY", raising=False)
    with pytest.raises(ReplicaError, match=r"^replica b2 \(b2://bkt/p\): application-key-id is not set") as e:
        B2ReplicaClient(replica_cfg(type="b2", name="b2", bucket="bkt", path="p", application_key="s3cr3t"))
    assert "s3cr3t" not in str(e.value) and e.value.retryable is False
    api, _bucket = b2_api
    with pytest.raises(ReplicaError, match="bucket does not exist or is not visible to this key"):
        B2ReplicaClient(replica_cfg(type="b2", name="b2", bucket="no-such-bucket", path="p"), api=api)
