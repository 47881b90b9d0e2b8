"""Encrypted replicas under attack, through the real agent and `litesync restore`: a stored
object truncated, its chunks reordered, a chunk spliced in from another object or from
another generation, or an older version put back under the object's own name. Each is
refused with one line naming the object, and nothing is written; the one replay the
format cannot see (the same content sealed again) restores exactly.

The chunk-level rules themselves are checked in test_crypt.py; here, what a restore makes
of them, on objects the agent wrote.
"""

from __future__ import annotations

import io
import shutil

import pytest

from dbcheck import content_digest
from litesync import layout
from litesync.replica.crypt import DEFAULT_CHUNK_SIZE, TAG_SIZE, EncryptedClient, header_size
from litesync.replica.file import FileReplicaClient
from proc import litesync, run_writer, start_agent_ready, stop
from test_encryption import KEY_A, env_with, failed_restore, file_objects, write_marked_rows

SEALED = DEFAULT_CHUNK_SIZE + TAG_SIZE
INTACT = "generation "  # ... is intact, restore it with: ... (the older generation is untouched)
AUTH_FAIL = "fails authentication: tampered, truncated, stored under another name, or wrong key"


@pytest.fixture(scope="module")
def two_generations(tmp_path_factory):
    """An encrypted file replica holding two generations of one database, each a snapshot of
    several chunks and segments after it: (db, replica dir)."""
    tmp = tmp_path_factory.mktemp("attacks")
    db = str(tmp / "app.db")
    url = f"file://{tmp / 'replica'}"
    for rows in (1500, 1700):  # ~3 MB each time: snapshots of 3 or more chunks
        write_marked_rows(db, rows)
        agent = start_agent_ready(db, url, env=env_with(KEY_A), log_path=str(tmp / "agent.log"))
        run_writer(db, "--count", "6", "--rate", "5")  # slow enough that each goes up alone
        assert stop(agent) == 0
        shutil.rmtree(layout.state_dir_for(db))  # the next agent starts a new generation
    return db, tmp / "replica"


@pytest.fixture
def replica(two_generations, tmp_path):
    """A fresh copy of the replica for one test: (db, url, dir, {kind: [keys of the newest generation]}, older snapshot)."""
    db, src = two_generations
    dst = tmp_path / "replica"
    shutil.copytree(src, dst)
    keys = sorted(file_objects(dst))
    gens = sorted({k.split("/")[1] for k in keys})
    assert len(gens) == 2
    newest = {kind: [k for k in keys if k.split("/")[1] == gens[1] and f"/{kind}/" in k]
              for kind in ("snapshots", "segments")}
    older_snapshot = next(k for k in keys if k.split("/")[1] == gens[0] and "/snapshots/" in k)
    return db, f"file://{dst}", dst, newest, older_snapshot


def chunks(data: bytes) -> tuple[bytes, list[bytes]]:
    """(header, sealed chunks) of a stored object of the agent's database."""
    head = header_size(data[54:54 + int.from_bytes(data[52:54], "little")].decode())
    body = data[head:]
    return data[:head], [body[i:i + SEALED] for i in range(0, len(body), SEALED)]


def test_the_untouched_replica_restores_exactly(replica, tmp_path):
    db, url, _dir, _newest, _older = replica
    out = str(tmp_path / "out.db")
    r = litesync("restore", "-o", out, url, env=env_with(KEY_A))
    assert r.returncode == 0, r.stderr
    assert content_digest(out) == content_digest(db)


def test_a_truncated_object_is_refused_and_named(replica, tmp_path):
    _db, url, d, newest, _older = replica
    snap = newest["snapshots"][0]
    data = (d / snap).read_bytes()
    (d / snap).write_bytes(data[:len(data) - SEALED // 2])  # cut inside the chunk before the last
    line = failed_restore(tmp_path, url, KEY_A)
    assert line.startswith(f"litesync: error: {snap}: chunk ") and f" {AUTH_FAIL}; {INTACT}" in line


def test_reordered_chunks_are_refused_and_named(replica, tmp_path):
    _db, url, d, newest, _older = replica
    snap = newest["snapshots"][0]
    head, sealed = chunks((d / snap).read_bytes())
    assert len(sealed) >= 3
    (d / snap).write_bytes(head + sealed[1] + sealed[0] + b"".join(sealed[2:]))
    assert failed_restore(tmp_path, url, KEY_A).startswith(f"litesync: error: {snap}: chunk 0 {AUTH_FAIL}; {INTACT}")


@pytest.mark.parametrize("source", ["another object", "another generation"])
def test_a_chunk_spliced_in_from_elsewhere_is_refused_and_named(replica, tmp_path, source):
    _db, url, d, newest, older = replica
    snap = newest["snapshots"][0]
    head, sealed = chunks((d / snap).read_bytes())
    donor = newest["segments"][-1] if source == "another object" else older
    _h, donor_sealed = chunks((d / donor).read_bytes())
    sealed[1] = donor_sealed[0][:len(sealed[1])].ljust(len(sealed[1]), b"\0")
    (d / snap).write_bytes(head + b"".join(sealed))
    assert failed_restore(tmp_path, url, KEY_A).startswith(f"litesync: error: {snap}: chunk 1 {AUTH_FAIL}; {INTACT}")


def test_an_older_version_under_the_same_name_is_refused_when_it_does_not_fit_its_place(replica, tmp_path):
    """The format cannot tell versions of one name apart (see docs/ENCRYPTION.md); the
    history can. Stand-in for an older version: other content of this database, sealed with
    the key under the name of a segment in the middle of the chain."""
    db, url, d, newest, _older = replica
    segs = newest["segments"]
    assert len(segs) >= 3
    enc = EncryptedClient(FileReplicaClient(str(d)), [KEY_A], db_id=db)
    other = enc.read(segs[0])
    target = segs[1]
    enc.write(target, io.BytesIO(other), len(other))
    line = failed_restore(tmp_path, url, KEY_A)
    gen = target.split("/")[1]
    assert line.startswith(f"litesync: error: {target}: header says generation {gen} seq 0, expected generation "
                           f"{gen} seq 1; {INTACT}"), line


def test_the_same_content_sealed_again_under_its_name_restores_exactly(replica, tmp_path):
    """A replay of an object's own content (as an agent that re-ships after a crash writes
    it) is not detectable, and need not be: it is the same data."""
    db, url, d, newest, _older = replica
    enc = EncryptedClient(FileReplicaClient(str(d)), [KEY_A], db_id=db)
    target = newest["segments"][-1]
    before = (d / target).read_bytes()
    plain = enc.read(target)
    enc.write(target, io.BytesIO(plain), len(plain))
    assert (d / target).read_bytes() != before  # sealed afresh: new salt, new nonces
    out = str(tmp_path / "out.db")
    r = litesync("restore", "-o", out, url, env=env_with(KEY_A))
    assert r.returncode == 0, r.stderr
    assert content_digest(out) == content_digest(db)
