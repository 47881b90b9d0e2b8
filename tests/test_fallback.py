"""Several replicas: restore picks the newest, falls back in priority order when one is
damaged or offline and says so; a cache directory spares downloads; downloads overlap."""

from __future__ import annotations

import logging
import os
import shutil
import threading

import pytest

from conftest import replica_cfg
from dbcheck import committed_prefix, content_digest
from litesync import history, layout
from litesync.config import priority_order
from litesync.fetch import Fetcher, ObjectCache
from litesync.replica.base import ObjectInfo, ReplicaClient
from litesync.replica.file import FileReplicaClient
from litesync.restore import Candidate, rank, restore_any
from proc import free_port, litesync, run_writer, start_agent_ready, stop


def _config(tmp_path, db, replicas):
    lines = [f"dbs:\n  - path: {db}\n    replicas:"]
    for name, url, priority in replicas:
        lines.append(f"      - name: {name}\n        url: {url}")
        if priority is not None:
            lines.append(f"        priority: {priority}")
    path = tmp_path / "litesync.yml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    """A database written while replicated to two directories: (db, dir a, dir b)."""
    tmp = tmp_path_factory.mktemp("two")
    db = str(tmp / "app.db")
    a, b = str(tmp / "a"), str(tmp / "b")
    cfg = _config(tmp, db, [("primary", f"file://{a}", None), ("secondary", f"file://{b}", None)])
    run_writer(db, "--count", "5")
    agent = start_agent_ready("--config", cfg, log_path=str(tmp / "agent.log"))
    # Spaced so that the agent copies a few commits at a time: a dozen segments or more
    # (at 300 tx/s a loaded machine batched them into fewer than the 8 a test needs).
    run_writer(db, "--count", "60", "--rate", "60", "--seed", "2")
    assert stop(agent) == 0
    return db, a, b


@pytest.fixture
def replicas(two_replicas, tmp_path):
    """Fresh copies of the two replicas for one test: (db, a, b)."""
    db, a, b = two_replicas
    shutil.copytree(a, tmp_path / "a")
    shutil.copytree(b, tmp_path / "b")
    return db, str(tmp_path / "a"), str(tmp_path / "b")


def _segments(root):
    client = FileReplicaClient(root)
    return [o.key for o in client.list("generations/") if o.key.endswith(".seg")]


def _restore(tmp_path, cfg, db, *extra):
    out = str(tmp_path / "out.db")
    if os.path.exists(out):
        os.unlink(out)
    r = litesync("--config", cfg, "restore", "-o", out, *extra, db)
    return r, out


def test_damaged_replica_falls_back_to_the_next_and_says_why(replicas, tmp_path):
    db, a, b = replicas
    cfg = _config(tmp_path, db, [("primary", f"file://{a}", None), ("secondary", f"file://{b}", None)])
    key = _segments(a)[-1]
    path = os.path.join(a, *key.split("/"))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x40
    open(path, "wb").write(bytes(data))
    r, out = _restore(tmp_path, cfg, db)
    assert r.returncode == 0, r.stderr
    assert f"restored {out} from secondary:" in r.stdout
    assert f"not from primary: {key}: " in r.stdout, r.stdout
    assert "trying the next replica" in r.stderr
    assert content_digest(out) == content_digest(db)
    # Both damaged: one line that names each replica and its object.
    other = os.path.join(b, *key.split("/"))
    open(other, "wb").write(bytes(data))
    r, out = _restore(tmp_path, cfg, db)
    assert r.returncode == 1
    assert "no replica can restore: primary: " in r.stderr and f"; secondary: {key}" in r.stderr
    assert not os.path.exists(out)


def test_offline_replica_is_skipped(replicas, tmp_path):
    db, _a, b = replicas
    dead = f"s3://bucket/app?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1&force-path-style=true"
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"dbs:\n  - path: {db}\n    replicas:\n"
                   f"      - name: cloud\n        url: {dead}\n        access-key-id: x\n"
                   f"        secret-access-key: y\n        priority: 0\n"
                   f"      - name: local\n        url: file://{b}\n        priority: 1\n")
    r, out = _restore(tmp_path, str(cfg), db)
    assert r.returncode == 0, r.stderr
    assert f"restored {out} from local:" in r.stdout
    assert "not from cloud (s3://bucket/app at 127.0.0.1:" in r.stdout, r.stdout
    assert "EndpointConnectionError" in r.stdout
    assert content_digest(out) == content_digest(db)


def test_newest_replica_wins_and_priority_breaks_ties(replicas, tmp_path):
    db, a, b = replicas
    # The preferred replica is behind: its last segments never arrived.
    segs = _segments(a)
    for key in segs[-3:]:
        os.unlink(os.path.join(a, *key.split("/")))
    cfg = _config(tmp_path, db, [("behind", f"file://{a}", 0), ("ahead", f"file://{b}", 5)])
    r, out = _restore(tmp_path, cfg, db)
    assert r.returncode == 0, r.stderr
    assert "from ahead:" in r.stdout and "not from" not in r.stdout
    assert "restoring from ahead: it holds the newest state" in r.stderr
    assert content_digest(out) == content_digest(db)
    # A moment both replicas hold: the preferred one serves it.
    cat = history.catalog(FileReplicaClient(a).list("generations/"))
    t = history.format_ms(cat.newest().segments[-1][0].last_commit_ms)
    r, out = _restore(tmp_path, cfg, db, "--timestamp", t)
    assert r.returncode == 0, r.stderr
    assert "from behind:" in r.stdout
    k = committed_prefix(out)
    r = litesync("--config", cfg, "restore", "--dry-run", "--json", db)
    assert '"replica": "ahead"' in r.stdout
    assert k < committed_prefix(db)


def test_rank_and_priority_order():
    def cand(name, gen, last, covers=True, exact=True):
        seg = [(layout.SegmentName(gen, last, last, 0), 1)] if last >= 0 else []
        plan = history.Plan(gen, layout.SnapshotName(gen, 0, 0), 1, tuple(seg), None, exact)
        c = Candidate(FileReplicaClient("/nonexistent", name=name), plan=plan, covers=covers)
        return c

    a, b, c = cand("a", 1, 5), cand("b", 1, 9), cand("c", 2, 0)
    assert [x.client.name for x in rank([a, b, c])] == ["c", "a", "b"]
    assert [x.client.name for x in rank([a, b])] == ["b", "a"]
    # Equal states keep priority order; a replica that cannot serve goes last.
    broken = Candidate(FileReplicaClient("/nonexistent", name="x"))
    assert [x.client.name for x in rank([broken, a, cand("d", 1, 5)])] == ["a", "d", "x"]
    # A point in time: whoever covers it, in priority order, before a newer one that does not.
    assert [x.client.name for x in rank([cand("e", 1, 3, covers=False), a, b], until_ms=10)] == ["a", "e", "b"]
    rs = [replica_cfg(name=n, priority=p) for n, p in (("u1", None), ("p2", 2), ("u2", None), ("p0", 0))]
    assert [r.name for r in priority_order(rs)] == ["p0", "p2", "u1", "u2"]


# -- cache and parallel downloads ----------------------------------------------------------

class Counting(ReplicaClient):
    """Counts the objects a restore downloads."""

    def __init__(self, inner: ReplicaClient) -> None:
        self.inner = inner
        self.name = inner.name
        self.opened: list[str] = []

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def open(self, key):
        self.opened.append(key)
        return self.inner.open(key)

    def write(self, key, src, size):
        self.inner.write(key, src, size)

    def delete(self, keys):
        self.inner.delete(keys)


def test_cache_dir_spares_downloads_and_is_never_trusted(two_replicas, s3_bucket, tmp_path, caplog):
    from litesync.replica.s3 import S3ReplicaClient

    db, a, _b = two_replicas
    endpoint, bucket = s3_bucket
    s3 = S3ReplicaClient(replica_cfg(type="s3", name="s3", bucket=bucket, path="app", endpoint=endpoint,
                                     region="us-east-1", force_path_style=True))
    source = FileReplicaClient(a)
    for info in source.list("generations/"):
        with source.open(info.key) as f:
            s3.write(info.key, f, info.size)
    client = Counting(s3)
    cache = ObjectCache(str(tmp_path / "cache"))
    first = restore_any([client], str(tmp_path / "1.db"), cache=cache)
    needed = len(client.opened)
    assert needed > 3 and first.cached_objects == 0 and cache.downloads == needed
    client.opened.clear()
    second = restore_any([client], str(tmp_path / "2.db"), cache=cache)
    assert client.opened == [] and second.cached_objects == needed
    assert content_digest(str(tmp_path / "2.db")) == content_digest(db)
    # A cached object that fails its checks is dropped and downloaded again.
    cached_segments = sorted(os.path.join(d, f) for d, _, fs in os.walk(cache.directory) for f in fs
                             if f.endswith(".seg"))
    victim = cached_segments[-1]
    data = bytearray(open(victim, "rb").read())
    data[-60] ^= 1
    open(victim, "wb").write(bytes(data))
    caplog.set_level(logging.WARNING)
    third = restore_any([client], str(tmp_path / "3.db"), cache=cache)
    assert "discarding" in caplog.text and "cached objects" in caplog.text
    assert 1 <= len(client.opened) <= needed
    assert content_digest(str(tmp_path / "3.db")) == content_digest(db)
    assert third.replica == s3.name
    s3.close()


def test_cache_dir_by_cli(replicas, tmp_path):
    db, a, _b = replicas
    cache = str(tmp_path / "cache")
    outs = [str(tmp_path / f"c{i}.db") for i in range(2)]
    r1 = litesync("restore", "--cache-dir", cache, "-o", outs[0], f"file://{a}")
    r2 = litesync("restore", "--cache-dir", cache, "-o", outs[1], f"file://{a}")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    assert ", 0 objects from the cache)" in r1.stdout
    n = len(_segments(a)) + 1  # one snapshot, every segment
    assert f", {n} objects from the cache)" in r2.stdout, r2.stdout
    assert content_digest(outs[1]) == content_digest(db)


class Slow(ReplicaClient):
    """Every open waits until another open is under way: only parallel downloads finish."""

    name = "slow"

    def __init__(self, inner: ReplicaClient) -> None:
        self.inner = inner
        self.barrier = threading.Barrier(2, timeout=10)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def open(self, key):
        self.barrier.wait()
        return self.inner.open(key)

    def write(self, key, src, size):
        raise NotImplementedError

    def delete(self, keys):
        raise NotImplementedError


def test_downloads_run_in_parallel_and_in_bounds(replicas):
    _db, a, _b = replicas
    inner = FileReplicaClient(a)
    objs = [(o.key, o.size) for o in inner.list("generations/") if o.key.endswith(".seg")][:8]
    assert len(objs) == 8
    client = Slow(inner)
    with Fetcher(client, objs, workers=4) as fetch:
        for key, size in objs[:6]:
            with fetch.open(key) as f:
                assert len(f.read()) == size
    # At most ``ahead_bytes`` wait at once (but always one): here one object at a time, in order.
    small = Fetcher(Counting(inner), objs, workers=4, ahead_bytes=1)
    try:
        for key, _ in objs:
            small.open(key).close()
            assert len(small._futures) <= 1
    finally:
        small.close()
    with pytest.raises(ValueError, match="plan order"):
        with Fetcher(Counting(inner), objs) as fetch:
            fetch.open(objs[1][0])


def test_listing_is_parallel_and_errors_are_per_replica(replicas):
    from litesync.fetch import list_all

    _db, a, b = replicas

    class Broken(FileReplicaClient):
        def list(self, prefix=""):
            from litesync.errors import TransientReplicaError

            raise TransientReplicaError(self.name, "list: timeout")

    got = list_all([FileReplicaClient(a), Broken(b, name="broken"), FileReplicaClient(b)], "generations/")
    assert isinstance(got[0], list) and isinstance(got[2], list) and got[0] == got[2]
    assert str(got[1]) == "replica broken: list: timeout"
    assert all(isinstance(o, ObjectInfo) for o in got[0])
