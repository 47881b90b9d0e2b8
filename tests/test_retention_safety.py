"""Retention acts on what it can prove, never on names alone: one stray object in the
replica (empty, truncated, another tool's) must not make it delete the genuine history."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from dbcheck import content_digest, write_rows
from proc import clean_env, litesync

from litesync import history, layout
from litesync.compact import Maintainer
from litesync.replica.file import FileReplicaClient


@pytest.fixture
def two_generations(tmp_path):
    """A replica holding two genuine generations of app.db; returns (db, replica root, newest gen)."""
    db, root = str(tmp_path / "app.db"), str(tmp_path / "replica")
    for n in (3, 4):
        write_rows(db, n)  # the last connection closes: the WAL is checkpointed and removed
        r = litesync("replicate", "--once", db, root)
        assert r.returncode == 0, r.stderr
    gens = sorted(os.listdir(os.path.join(root, "generations")))
    assert len(gens) == 2
    return db, root, int(gens[-1], 16)


def stray_zero_bytes(root: str, newest: int) -> str:
    key = "generations/7fffffffffffffff/snapshots/0000000000000000-000000000001.snap"
    path = os.path.join(root, *key.split("/"))
    os.makedirs(os.path.dirname(path))
    open(path, "wb").close()
    return key


def stray_truncated(root: str, newest: int) -> str:
    """Half of the newest genuine snapshot, named as a snapshot of a newer generation."""
    client = FileReplicaClient(root)
    snap = [o.key for o in client.list(layout.generation_prefix(newest)) if o.key.endswith(".snap")][0]
    data = client.read(snap)
    key = layout.SnapshotName(newest + (1 << 16), 0, 2).key
    client.write_bytes(key, data[:len(data) // 2])
    return key


@pytest.mark.parametrize("make_stray", [stray_zero_bytes, stray_truncated])
def test_a_stray_snapshot_never_makes_retention_delete_the_genuine_history(two_generations, tmp_path, make_stray):
    db, root, newest = two_generations
    stray = make_stray(root, newest)
    client = FileReplicaClient(root)
    genuine_newest = {o.key for o in client.list(layout.generation_prefix(newest))}
    m = Maintainer(client, db="app.db", replica="r", retention=1, compaction=(), interval=1,
                   work_dir=str(tmp_path), grace=0, clock=lambda: time.time() + 10**6)
    m.apply_retention()
    left = {o.key for o in client.list(layout.GENERATIONS + "/")}
    assert genuine_newest <= left  # the newest genuine state stays whole
    assert stray in left  # left alone, and reported
    assert len(m.unsound) == 1 and m.unsound[0].startswith(stray + ": ")
    assert m.stats["unsound_objects"] == 1
    out = str(tmp_path / "restored.db")
    r = litesync("restore", "-o", out, "--generation", layout.format_generation(newest), f"file://{root}")
    assert r.returncode == 0, r.stderr
    assert content_digest(out) == content_digest(db)
    m.apply_retention()  # checked once: no second download, no second report
    assert m.stats["unsound_objects"] == 1


def test_retention_never_deletes_the_generation_being_written(two_generations, tmp_path):
    """Even under a sound newer snapshot (another host writing under the same path during
    a blue/green deploy), the generation this agent writes stays."""
    _db, root, newest = two_generations
    client = FileReplicaClient(root)
    gens = sorted(int(g, 16) for g in os.listdir(os.path.join(root, "generations")))
    older = gens[0]
    before = {o.key for o in client.list(layout.generation_prefix(older))}
    m = Maintainer(client, db="app.db", replica="r", retention=1, compaction=(), interval=1,
                   work_dir=str(tmp_path), grace=0, clock=lambda: time.time() + 10**6,
                   current_generation=lambda: older)
    m.apply_retention()
    assert {o.key for o in client.list(layout.generation_prefix(older))} == before


def test_the_floor_is_the_newest_usable_snapshot():
    objs = []
    for gen, seq, t in [(1, 0, 100), (2, 0, 200), (3, 0, 300)]:
        objs.append(history.ObjectInfo(layout.SnapshotName(gen, seq, t).key, 10))
    cat = history.catalog(objs)
    deletes = history.retention_deletes(cat, now_ms=1000, window_ms=10, usable=lambda s: s.generation != 3)
    assert sorted(deletes) == [layout.SnapshotName(1, 0, 100).key]
    assert history.retention_deletes(cat, now_ms=1000, window_ms=10, usable=lambda s: False) == []


def test_a_running_agent_keeps_its_history_beside_a_stray_newer_snapshot(tmp_path):
    """The reported case: retention 1s, checked every second, and a 0-byte file named as a
    snapshot of a newer generation. The genuine history stays restorable; status names
    the stray object."""
    import json

    from proc import start_agent_ready, stop, wait_for

    db, root = str(tmp_path / "app.db"), str(tmp_path / "replica")
    write_rows(db, 3)
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"retention: 1s\nretention-check-interval: 1s\ndbs:\n  - path: {db}\n"
                   f"    replicas:\n      - url: file://{root}\n")
    agent = start_agent_ready("--config", str(cfg), log_path=str(tmp_path / "agent.log"))
    try:
        gen = int(os.listdir(os.path.join(root, "generations"))[0], 16)
        stray = stray_zero_bytes(root, gen)
        conn = sqlite3.connect(db, isolation_level=None)
        for i in range(20):
            conn.execute("INSERT INTO t(v) VALUES (?)", (f"more {i}",))
            time.sleep(0.1)

        def reported() -> bool:
            r = litesync("--config", str(cfg), "status", "--json")
            st = json.loads(r.stdout)
            found = [u for d in st["dbs"] for rep in d.get("replicas", ()) for u in rep.get("unsound_objects") or ()]
            return any(u.startswith(stray) for u in found)

        wait_for(reported, 15)
        expected = content_digest(db)
        conn.close()
        out = str(tmp_path / "restored.db")
        r = litesync("restore", "-o", out, "--generation", layout.format_generation(gen), f"file://{root}")
        assert r.returncode == 0, r.stderr
        assert content_digest(out) == expected
    finally:
        assert stop(agent) == 0


def test_a_damaged_newest_generation_names_the_intact_older_one_and_the_command(two_generations, tmp_path):
    _db, root, newest = two_generations
    client = FileReplicaClient(root)
    snap = [o.key for o in client.list(layout.generation_prefix(newest)) if o.key.endswith(".snap")][0]
    path = os.path.join(root, *snap.split("/"))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    older = layout.format_generation(min(int(g, 16) for g in os.listdir(os.path.join(root, "generations"))))
    out = str(tmp_path / "restored.db")
    r = litesync("restore", "-o", out, f"file://{root}")
    assert r.returncode == 1
    command = f"litesync restore --generation {older} -o {out} file://{root}"
    assert r.stderr.startswith(f"litesync: error: {snap}: ")
    assert r.stderr.rstrip().endswith(f"; generation {older} is intact, restore it with: {command}")
    assert not os.path.exists(out)
    r = litesync(*command.split()[1:])
    assert r.returncode == 0, r.stderr


KEY = "3c9f1e7a5b2d8c4f6a0e9b3d7f1c5a8e2b6d0f4a8c1e5b9d3f7a0c4e8b2d6f1a"
OTHER_KEY = "9e2b6d0f4a8c1e5b3c9f1e7a5b2d8c4f7f1c5a8e2b6d0f4a8c1e5b9d3f7a0c4e"


def encrypted_replica(tmp_path, name: str, label: str, root: str) -> str:
    """Replicate tmp_path/<name> (rows labelled ``label``) to ``root``, encrypted with KEY."""
    db = str(tmp_path / name)
    write_rows(db, 5, label)
    r = litesync("replicate", "--once", db, f"file://{root}", env=clean_env({"LITESYNC_ENCRYPTION_KEY": KEY}))
    assert r.returncode == 0, r.stderr
    return db


def stray_under_another_key(tmp_path, root: str, newest: int) -> tuple[str, str]:
    """The newest genuine snapshot, sealed with another key, named as a newer generation's."""
    from litesync.replica.crypt import EncryptedClient, load_key

    inner = FileReplicaClient(root)
    snap = [o.key for o in inner.list(layout.generation_prefix(newest)) if o.key.endswith(".snap")][0]
    plain = EncryptedClient(inner, [load_key(KEY)]).read(snap)
    key = layout.SnapshotName(newest + (1 << 16), 0, 2).key
    EncryptedClient(inner, [load_key(OTHER_KEY)], db_id="app.db").write_bytes(key, plain)
    return key, "encrypted with key id "


def stray_of_another_database(tmp_path, root: str, newest: int) -> tuple[str, str]:
    """Another database's newer generation, copied in whole under its own names."""
    import shutil

    other = str(tmp_path / "other-replica")
    encrypted_replica(tmp_path, "other.db", "other", other)
    gen = os.listdir(os.path.join(other, "generations"))[0]
    assert int(gen, 16) > newest
    shutil.copytree(os.path.join(other, "generations", gen), os.path.join(root, "generations", gen))
    snap = [o.key for o in FileReplicaClient(root).list(f"generations/{gen}/") if o.key.endswith(".snap")][0]
    return snap, f"belongs to database {str(tmp_path / 'other.db')!r}, not {str(tmp_path / 'app.db')!r}"


@pytest.mark.parametrize("make_stray", [stray_under_another_key, stray_of_another_database])
def test_a_newer_snapshot_of_another_key_or_database_is_left_alone(tmp_path, make_stray):
    from litesync.replica.crypt import EncryptedClient, load_key

    root = str(tmp_path / "replica")
    db = encrypted_replica(tmp_path, "app.db", "one", root)
    db = encrypted_replica(tmp_path, "app.db", "two", root)  # a second generation
    gens = sorted(int(g, 16) for g in os.listdir(os.path.join(root, "generations")))
    newest = gens[-1]
    stray, why = make_stray(tmp_path, root, newest)
    client = EncryptedClient(FileReplicaClient(root), [load_key(KEY)], db_id=db)
    genuine = {o.key for g in gens for o in client.list(layout.generation_prefix(g))}
    m = Maintainer(client, db="app.db", replica="r", retention=1, compaction=(), interval=1,
                   work_dir=str(tmp_path), grace=0, clock=lambda: time.time() + 10**6, db_id=db)
    m.apply_retention()
    left = {o.key for o in client.list(layout.GENERATIONS + "/")}
    newest_keys = {k for k in genuine if k.startswith(layout.generation_prefix(newest))}
    assert newest_keys <= left and stray in left
    assert len(m.unsound) == 1 and m.unsound[0].startswith(f"{stray}: {why}"), m.unsound
    env = clean_env({"LITESYNC_ENCRYPTION_KEY": KEY})
    out = str(tmp_path / "restored.db")
    r = litesync("restore", "-o", out, "--generation", layout.format_generation(newest), "--id", db,
                 f"file://{root}", env=env)
    assert r.returncode == 0, r.stderr
    assert content_digest(out) == content_digest(db)
    # Without --generation the stray is the newest: the restore stops and names it.
    r = litesync("restore", "-o", str(tmp_path / "x.db"), "--id", db, f"file://{root}", env=env)
    assert r.returncode in (1, 2) and stray in r.stderr and why in r.stderr


def test_compaction_leaves_a_stray_segment_and_retention_goes_on(tmp_path):
    """A 0-byte object named as the next segment of the generation: compaction cannot merge
    the run it falls in, says so once, and the round carries on to retention."""
    from proc import start_agent_ready, stop, wait_for

    db, root = str(tmp_path / "app.db"), str(tmp_path / "replica")
    write_rows(db, 1)
    agent = start_agent_ready(db, f"file://{root}", log_path=str(tmp_path / "agent.log"))
    client = FileReplicaClient(root)
    try:
        conn = sqlite3.connect(db, isolation_level=None)
        for i in range(4):
            conn.execute("INSERT INTO t(v) VALUES (?)", (f"more {i}",))
            time.sleep(0.2)
        expected = content_digest(db)
        conn.close()
        wait_for(lambda: len(list(client.list(layout.GENERATIONS + "/"))) >= 3, 15)
    finally:
        assert stop(agent) == 0
    cat = history.catalog(client.list(layout.GENERATIONS + "/"))
    (gen,) = cat.generations
    assert len(cat.generations[gen].segments) >= 2  # commits close together may share one
    last = max(cat.generations[gen].segments)[0]
    # Committed a moment after the last genuine one: in the same compaction window.
    stray = layout.SegmentName(gen, last.last_seq + 1, last.last_seq + 1, last.last_commit_ms + 1).key
    client.write_bytes(stray, b"")
    # An hour's window: the genuine segments and the stray fall in one run (a one-second
    # window could leave the stray alone across a boundary, with nothing to merge).
    m = Maintainer(client, db="app.db", replica="r", retention=1, compaction=(3600.0,), interval=1,
                   work_dir=str(tmp_path), grace=0, clock=lambda: time.time() + 10**6, db_id=db)
    m.run_once(compact=True)
    assert stray in {o.key for o in client.list(layout.GENERATIONS + "/")}
    assert len(m.unsound) == 1 and m.unsound[0].startswith(f"{stray}: truncated"), m.unsound
    m.run_once(compact=True)  # the same run is not tried again
    assert len(m.unsound) == 1
    client.delete([stray])
    out = str(tmp_path / "restored.db")
    r = litesync("restore", "-o", out, f"file://{root}")
    assert r.returncode == 0, r.stderr
    assert content_digest(out) == expected
