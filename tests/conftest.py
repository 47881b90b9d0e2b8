"""Shared fixtures: a real S3 server (moto) on 127.0.0.1, and replica clients for every backend."""

from __future__ import annotations

import os
import uuid
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def s3_server():
    """Start moto's HTTP S3 server on loopback; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[k]
        os.environ.update(saved)


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the local server: (endpoint, bucket)."""
    import boto3

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return s3_server, bucket


def apsw_app(db: str, busy_timeout_ms: int | None = None):
    """The application's connection for tests that drive an agent's parts in this process:
    apsw's SQLite, as the agent's (two copies of SQLite in one process do not see each
    other's locks); WAL, no autocheckpoint, a table ``t (x BLOB)``."""
    import apsw

    c = apsw.Connection(db)
    c.execute("PRAGMA journal_mode=WAL").fetchall()
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    if busy_timeout_ms is not None:
        c.set_busy_timeout(busy_timeout_ms)
    return c


def replica_cfg(**kw):
    base = dict(type="file", name="r", path="", url=None, bucket=None, endpoint=None, region=None,
                force_path_style=None, access_key_id=None, secret_access_key=None, application_key_id=None,
                application_key=None, sync_interval=None, part_size=None, concurrency=None, priority=None)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture
def b2_api():
    """b2sdk's own offline simulator, authorized, with one bucket: (api, bucket name)."""
    from b2sdk.v2 import B2Api, B2HttpApiConfig, InMemoryAccountInfo, InMemoryCache, RawSimulator

    api = B2Api(InMemoryAccountInfo(), cache=InMemoryCache(),
                api_config=B2HttpApiConfig(_raw_api_class=RawSimulator))
    key_id, key = api.session.raw_api.create_account()
    api.authorize_account("production", key_id, key)
    api.create_bucket("litesync-test", "allPrivate")
    return api, "litesync-test"


# One fixture per backend of litesync.replica.registry (tests/test_config.py checks they match).
BACKEND_FIXTURES = ("file", "s3", "b2")


@pytest.fixture(params=BACKEND_FIXTURES)
def replica_client(request, tmp_path):
    """A ready ReplicaClient for each backend."""
    if request.param == "file":
        from litesync.replica.file import FileReplicaClient

        client = FileReplicaClient(str(tmp_path / "replica"))
    elif request.param == "s3":
        from litesync.replica.s3 import S3ReplicaClient

        endpoint, bucket = request.getfixturevalue("s3_bucket")
        client = S3ReplicaClient(replica_cfg(type="s3", name="s3", bucket=bucket, path="backups/app",
                                             endpoint=endpoint, region="us-east-1", force_path_style=True,
                                             part_size=5 << 20, concurrency=2))
    if request.param == "b2":
        from litesync.replica.b2 import B2ReplicaClient

        api, bucket = request.getfixturevalue("b2_api")
        client = B2ReplicaClient(replica_cfg(type="b2", name="b2", bucket=bucket, path="backups/app",
                                             part_size=1 << 20), api=api)
    yield client
    client.close()
