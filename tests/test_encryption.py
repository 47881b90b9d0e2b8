"""Encrypted replicas end to end: real agent and restore processes, the stored bytes, wrong keys,
tampering, rotation, mixing; secrets kept out of all output; owner-only files."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys

import pytest

from dbcheck import content_digest
from proc import clean_env, litesync, start_agent_ready, stop
from test_replication import s3_server_with_auth  # noqa: F401  (a fixture: an S3 server that checks credentials)
from litesync.replica.crypt import MAGIC, key_id

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
MARKER = b"PLAINTEXT-PAGE-MARKER-4f1c9e"


def env_with(key: bytes | None = None, **extra: str) -> dict[str, str]:
    env = clean_env({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", **extra})
    if key is not None:
        env["LITESYNC_ENCRYPTION_KEY"] = key.hex()
    return env


_WRITER = """
import os, sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
for _ in range(int(sys.argv[2])):
    c.execute("INSERT INTO t VALUES (?)", (os.urandom(1500) + bytes.fromhex(sys.argv[3]) + os.urandom(500),))
c.close()
"""


def write_marked_rows(db: str, count: int) -> None:
    """Commit ``count`` rows of incompressible bytes, each with MARKER inside, one per transaction.

    In a process of its own: a test may hold an in-process agent (apsw) on the same database,
    and two SQLite libraries must not open one database in one process.
    """
    subprocess.run([sys.executable, "-c", _WRITER, db, str(count), MARKER.hex()], check=True, env=clean_env())


def file_objects(root) -> dict[str, bytes]:
    out = {}
    for d, _dirs, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def s3_objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def assert_all_encrypted(objects: dict[str, bytes], kid: bytes) -> None:
    assert objects
    for name, data in objects.items():
        assert MARKER not in data, name
        assert data.startswith(MAGIC) and data[16:24] == kid, name


# --- round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["file", "s3"])
def test_encrypted_round_trip_through_the_agent(tmp_path, request, backend):
    """A live agent ships encrypted objects; they hold no page content; a restore with the key is exact."""
    if backend == "file":
        url = f"file://{tmp_path / 'replica'}"
        stored = lambda: file_objects(tmp_path / "replica")  # noqa: E731
    else:
        endpoint, bucket = request.getfixturevalue("s3_bucket")
        url = f"s3://{bucket}/app?endpoint={endpoint}&region=us-east-1&force-path-style=true"
        stored = lambda: s3_objects(endpoint, bucket)  # noqa: E731
    db = str(tmp_path / "app.db")
    write_marked_rows(db, 5)
    agent = start_agent_ready(db, url, env=env_with(KEY_A), log_path=str(tmp_path / "agent.log"))
    try:
        write_marked_rows(db, 40)
    finally:
        assert stop(agent) == 0, open(tmp_path / "agent.log").read()
    objects = stored()
    assert any("/segments/" in k for k in objects) and any("/snapshots/" in k for k in objects)
    assert_all_encrypted(objects, key_id(KEY_A))
    out = str(tmp_path / "restored.db")
    r = litesync("restore", "-o", out, url, env=env_with(KEY_A))
    assert r.returncode == 0, r.stderr
    assert content_digest(out) == content_digest(db)
    if backend == "file":
        # The search means something: the same database replicated without a key shows the marker.
        # (The replica keeps its name, "file", at a new path: it gets a snapshot of its own.)
        plain = f"file://{tmp_path / 'plain'}"
        r = litesync("replicate", "--once", db, plain, env=env_with())
        assert r.returncode == 0, r.stderr
        assert any(MARKER in data for data in file_objects(tmp_path / "plain").values())
        r = litesync("restore", "-o", str(tmp_path / "plain.db"), plain, env=env_with())
        assert r.returncode == 0, r.stderr
        assert content_digest(str(tmp_path / "plain.db")) == content_digest(db)


def test_encrypted_round_trip_on_b2(tmp_path, b2_api):
    """The agent's objects shipped by a Shipper through an encrypted B2 client, then restored."""
    import threading

    from litesync.agent import DbAgent
    from litesync.config import ReplicaConfig
    from litesync.replica import wrap_replica
    from litesync.replica.b2 import B2ReplicaClient
    from litesync.restore import restore
    from litesync.shipper import Shipper

    api, bucket = b2_api
    rc = ReplicaConfig("b2", "b2", "backups/app", bucket=bucket, part_size=1 << 20, encryption_keys=(KEY_A,))
    raw = B2ReplicaClient(rc, api=api)
    client = wrap_replica(raw, rc)
    db = str(tmp_path / "app.db")
    write_marked_rows(db, 3)
    agent = DbAgent(db)
    agent.open()
    try:
        agent.start()
        write_marked_rows(db, 20)
        agent.step()
        shipper = Shipper(agent.spool, client, str(tmp_path / "pos.json"), db=db, replica="b2",
                          request_snapshot=threading.Event())
        while shipper.ship_one():
            pass
    finally:
        agent.close()
    objects = {o.key: raw.read(o.key) for o in raw.list("")}
    assert len(objects) >= 2
    assert_all_encrypted(objects, key_id(KEY_A))
    out = str(tmp_path / "restored.db")
    restore(client, out)
    assert content_digest(out) == content_digest(db)


# --- failures: wrong key, tampering, no key, mixing -------------------------------------------------

@pytest.fixture
def encrypted_replica(tmp_path):
    """A file replica holding one snapshot and some segments, all encrypted with KEY_A."""
    db = str(tmp_path / "app.db")
    write_marked_rows(db, 5)
    url = f"file://{tmp_path / 'replica'}"
    agent = start_agent_ready(db, url, env=env_with(KEY_A), log_path=str(tmp_path / "agent.log"))
    write_marked_rows(db, 10)
    assert stop(agent) == 0
    return db, url, tmp_path / "replica"


def failed_restore(tmp_path, url: str, key: bytes | None) -> str:
    """Restore with ``key``, expecting one error line, exit code 1 and nothing at the output; return the line."""
    out = str(tmp_path / "out.db")
    r = litesync("restore", "-o", out, url, env=env_with(key))
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, r.stderr
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")
    assert r.stdout == ""
    return errors[0]


def snapshot_key(replica_dir) -> str:
    return next(k for k in file_objects(replica_dir) if "/snapshots/" in k)


@pytest.mark.parametrize("key, reason", [
    (KEY_B, f"encrypted with key id {key_id(KEY_A).hex()}, which is not among the configured keys "
            f"({key_id(KEY_B).hex()}): wrong key, or tampered"),
    (None, "object is encrypted, and no encryption key is configured for this replica "
           "(encryption-key, or $LITESYNC_ENCRYPTION_KEY)"),
], ids=["wrong key", "no key"])
def test_wrong_or_missing_key_fails_cleanly_and_names_the_object(encrypted_replica, tmp_path, key, reason):
    _db, url, replica = encrypted_replica
    assert failed_restore(tmp_path, url, key) == f"litesync: error: {snapshot_key(replica)}: {reason}"


def test_tampered_object_fails_cleanly_and_names_it(encrypted_replica, tmp_path):
    _db, url, replica = encrypted_replica
    seg = sorted(k for k in file_objects(replica) if "/segments/" in k)[-1]
    data = bytearray((replica / seg).read_bytes())
    data[len(data) // 2] ^= 0x01
    (replica / seg).write_bytes(bytes(data))
    assert failed_restore(tmp_path, url, KEY_A) == (f"litesync: error: {seg}: chunk 0 fails authentication: "
                                                    f"tampered, truncated, stored under another name, or wrong key")


def test_encrypted_and_plaintext_objects_never_mix(encrypted_replica, tmp_path):
    db, url, replica = encrypted_replica
    before = file_objects(replica)
    write_marked_rows(db, 3)
    # No key for an encrypted replica.
    r = litesync("replicate", "--once", db, url, env=env_with())
    assert r.returncode == 1
    assert "object is encrypted, and no encryption key is configured for this replica" in r.stderr
    # Another key than the one the newest objects were written with.
    r = litesync("replicate", "--once", db, url, env=env_with(KEY_B))
    assert r.returncode == 1
    assert (f"encrypted with key id {key_id(KEY_A).hex()}, which is not among the configured keys "
            f"({key_id(KEY_B).hex()}): add that key to decryption-keys") in r.stderr
    r = litesync("check", url, env=env_with(KEY_B))
    assert r.returncode == 1 and "add that key to decryption-keys" in r.stdout
    assert file_objects(replica) == before
    # A key for a plaintext replica.
    plain = f"file://{tmp_path / 'plain'}"
    assert litesync("replicate", "--once", db, plain, env=env_with()).returncode == 0
    plain_before = file_objects(tmp_path / "plain")
    r = litesync("replicate", "--once", db, plain, env=env_with(KEY_A))
    assert r.returncode == 1
    assert "object is not encrypted; an encrypted replica needs a place of its own" in r.stderr
    assert file_objects(tmp_path / "plain") == plain_before


def test_key_rotation_through_the_config(encrypted_replica, tmp_path):
    """New objects use the new key; a restore needs both keys; the old key alone is not enough."""
    db, url, replica = encrypted_replica
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - url: {url}\n"
                   f"        encryption-key: ${{NEW}}\n        decryption-keys: [\"${{OLD}}\"]\n")
    env = env_with(NEW=KEY_B.hex(), OLD=KEY_A.hex())
    agent = start_agent_ready("--config", str(cfg), env=env, log_path=str(tmp_path / "rotated.log"))
    write_marked_rows(db, 10)
    assert stop(agent) == 0, open(tmp_path / "rotated.log").read()
    kids = {data[16:24] for data in file_objects(replica).values()}
    assert kids == {key_id(KEY_A), key_id(KEY_B)}
    out = str(tmp_path / "out.db")
    r = litesync("--config", str(cfg), "restore", "-o", out, db, env=env)
    assert r.returncode == 0, r.stderr
    assert content_digest(out) == content_digest(db)
    r = litesync("restore", "-o", str(tmp_path / "old.db"), url, env=env_with(KEY_A))
    assert r.returncode == 1 and f"encrypted with key id {key_id(KEY_B).hex()}" in r.stderr


# --- secrets stay out of all output -----------------------------------------------------------------

def test_no_secret_in_any_output_of_a_failing_auth_run(tmp_path, s3_server_with_auth):
    """Wrong S3 credentials and an encryption key, in a world-readable config and in the
    environment, with debug logging: every command fails with exit code 1, and nothing any of
    them prints holds a secret."""
    secret = "wrongSecretValue987xyz"
    key = os.urandom(32)
    secrets = [secret, key.hex(), key.hex().upper(), base64.b64encode(key).decode()]
    db = str(tmp_path / "app.db")
    write_marked_rows(db, 3)
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - type: s3\n        bucket: bucket\n"
                   f"        path: x\n        endpoint: {s3_server_with_auth}\n        force-path-style: true\n"
                   f"        access-key-id: AKIANOTAKEY\n        secret-access-key: {secret}\n"
                   f"        encryption-key: {key.hex()}\n")
    cfg.chmod(0o644)
    url = f"s3://bucket/x?endpoint={s3_server_with_auth}&region=us-east-1&force-path-style=true"
    url_env = clean_env({"AWS_ACCESS_KEY_ID": "AKIANOTAKEY", "AWS_SECRET_ACCESS_KEY": secret,
                         "LITESYNC_ENCRYPTION_KEY": key.hex()})
    out = str(tmp_path / "out.db")
    conf = ("-v", "--config", str(cfg))
    runs = {
        "replicate": litesync(*conf, "replicate", "--once"),
        "restore": litesync(*conf, "restore", "-o", out, db),
        "check": litesync(*conf, "check"),
        "generations": litesync(*conf, "generations", db),
        "replicate URL": litesync("-v", "replicate", "--once", db, url, env=url_env),
        "restore URL": litesync("-v", "restore", "-o", out, url, env=url_env),
    }
    for name, r in runs.items():
        output = r.stdout + r.stderr
        assert r.returncode == (1 if name == "check" else 2), (name, output)  # check reports, exit 1
        assert "access denied" in output, (name, output)
        assert "Traceback" not in output, (name, output)
        for s in secrets:
            assert s not in output, (name, output)
    assert not os.path.exists(out)
    assert f"config file is readable by every user and holds secrets: {cfg}" in runs["replicate"].stderr
    assert "secret-access-key at line 10, dbs[0].replicas[0].encryption-key at line 11" in runs["replicate"].stderr


def test_files_are_owner_only(tmp_path):
    """File replica, state directory, spool and position files: 0700 directories, 0600 files."""
    db = str(tmp_path / "app.db")
    write_marked_rows(db, 5)
    old = os.umask(0o002)  # the most permissive umask a user might have
    try:
        r = litesync("replicate", "--once", db, f"file://{tmp_path / 'backups' / 'app'}", env=env_with(KEY_A))
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    checked = 0
    for top in (tmp_path / "backups", tmp_path / ".app.db-litesync"):
        for d, dirs, files in os.walk(top):
            for path, want in [(d, 0o700)] + [(os.path.join(d, f), 0o600) for f in files]:
                assert stat.S_IMODE(os.stat(path).st_mode) == want, path
                checked += 1
    assert checked > 10


def test_an_agent_without_encryption_does_not_load_cryptography():
    """The AES library (7 MB of RSS) is loaded with the first encrypted replica only."""
    import subprocess
    import sys

    code = ("import sys, litesync.cli, litesync.runner, litesync.config, litesync.shipper, litesync.restore; "
            "print('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
