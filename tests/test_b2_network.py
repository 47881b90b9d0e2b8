"""B2's native API over a real socket: every request litesync makes is bounded.

b2sdk's simulator has no network, so these tests talk HTTP to a small server on loopback
that authorizes and names the bucket (b2_authorize_account, b2_list_buckets) and then accepts every other request and never answers: a
store that blackholes. With b2sdk's own defaults each of these waits 20 minutes for an
API call's answer (46 s to connect), up to five times.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("b2sdk")

from litesync.errors import TransientReplicaError
from litesync.replica.b2 import B2ReplicaClient, _read_timeout, new_api
from litesync.replica.base import LARGE_READ_TIMEOUT, READ_TIMEOUT

from conftest import replica_cfg
from proc import wait_for

BUCKET = "litesync-test"
KEY_ID, KEY = "key-id", "s3cr3t"
BUCKET_INFO = {"accountId": "account-1", "bucketName": BUCKET, "bucketId": "bucket-1", "bucketType": "allPrivate",
               "bucketInfo": {}, "corsRules": [], "lifecycleRules": [], "options": [], "revision": 1,
               "defaultServerSideEncryption": {"isClientAuthorizedToRead": True, "value": {"mode": None}},
               "fileLockConfiguration": {"isClientAuthorizedToRead": True, "value": {
                   "defaultRetention": {"mode": None, "period": None}, "isFileLockEnabled": None}},
               "replicationConfiguration": None}


class SilentB2(ThreadingHTTPServer):
    """Answers b2_authorize_account and b2_list_buckets; holds every other request open, unanswered, until closed."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.released = threading.Event()
        self.held: list[str] = []
        self.unavailable = 0  # authorizations still to answer 503 (the store briefly down)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: SilentB2

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _serve(self) -> None:
        if self.path.split("?")[0].endswith("/b2_authorize_account"):
            expected = "Basic " + base64.b64encode(f"{KEY_ID}:{KEY}".encode()).decode()
            if self.server.unavailable > 0:
                self.server.unavailable -= 1
                self._answer(503, {"status": 503, "code": "service_unavailable", "message": "try later"})
                return
            if self.headers.get("Authorization") != expected:
                self._answer(401, {"status": 401, "code": "unauthorized", "message": "bad key"})
                return
            self._answer(200, self._authorization())
            return
        if self.path.split("?")[0].endswith("/b2_list_buckets"):
            self._answer(200, {"buckets": [BUCKET_INFO]})
            return
        self._hold()

    def _hold(self) -> None:
        self.server.held.append(self.path.split("?")[0].rsplit("/", 1)[-1])
        self.server.released.wait(120)
        self.close_connection = True

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorization(self) -> dict:
        url = self.server.url
        return {"accountId": "account-1", "authorizationToken": "token-1",
                "apiInfo": {"groupsApi": {}, "storageApi": {
                    "apiUrl": url, "downloadUrl": url, "s3ApiUrl": url,
                    "recommendedPartSize": 100 << 20, "absoluteMinimumPartSize": 5 << 20,
                    "allowed": {"buckets": [{"id": "bucket-1", "name": BUCKET}], "namePrefix": None,
                                "capabilities": ["listBuckets", "listFiles", "readFiles", "writeFiles",
                                                 "deleteFiles"]},
                    "capabilities": ["listBuckets", "listFiles", "readFiles", "writeFiles", "deleteFiles"],
                    "bucketId": "bucket-1", "bucketName": BUCKET, "namePrefix": None}}}


@pytest.fixture
def silent_b2():
    server = SilentB2()
    try:
        yield server
    finally:
        server.close()


def timed(fn) -> tuple[float, BaseException | None]:
    """Seconds ``fn()`` took (in a thread; infinite when it still waits after 60 s) and what it raised."""
    out: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            fn()
        except BaseException as e:
            out["error"] = e
        out["seconds"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    return out.get("seconds", float("inf")), out.get("error")


def test_each_request_to_a_b2_store_that_never_answers_fails_within_seconds(silent_b2):
    api = new_api(silent_b2.url, KEY_ID, KEY)  # the authorization is answered, over HTTP
    client = B2ReplicaClient(replica_cfg(type="b2", name="b2", bucket=BUCKET, path="app"), api=api)
    results: dict = {}
    calls = {"list": lambda: client.list("generations/"),
             "read": lambda: client.open("generations/x/snapshot"),
             "write": lambda: client.write("generations/x/wal/1", _Bytes(b"x" * 1000), 1000)}
    threads = [threading.Thread(target=lambda n=n, f=f: results.__setitem__(n, timed(f))) for n, f in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(70)
    assert set(results) == set(calls)
    for name, (seconds, error) in results.items():
        # One try of READ_TIMEOUT each (a write: b2sdk's two upload attempts, each asking
        # for an upload URL), not b2sdk's 20 minutes times five.
        limit = 2 * READ_TIMEOUT + 4 if name == "write" else READ_TIMEOUT + 3
        assert seconds < limit, (name, seconds, str(error))
        assert isinstance(error, TransientReplicaError), (name, error)
        assert "b2://litesync-test/app" in str(error), (name, str(error))
    assert {"b2_list_file_names", "b2_get_upload_url"} <= set(silent_b2.held), silent_b2.held


def test_a_b2_client_made_while_the_store_is_briefly_down_tries_again(silent_b2, monkeypatch):
    import litesync.replica.b2 as b2

    # The client as `litesync replicate` makes it (keys from the config), at this realm.
    monkeypatch.setattr(b2, "new_api", lambda realm, key_id, key: new_api(silent_b2.url, key_id, key))
    silent_b2.unavailable = 2
    cfg = replica_cfg(type="b2", name="b2", bucket=BUCKET, path="app", application_key_id=KEY_ID,
                      application_key=KEY)
    client = B2ReplicaClient(cfg)  # answered at the third try
    assert client.bucket_name == BUCKET and silent_b2.unavailable == 0
    silent_b2.unavailable = 3
    with pytest.raises(TransientReplicaError, match="connect: ServiceError"):
        B2ReplicaClient(cfg)


def test_a_b2_upload_larger_than_a_megabyte_waits_longer_for_its_answer():
    upload = "https://pod-000-1000-00.backblaze.com/b2api/v4/b2_upload_file/bucket-1/c001"
    assert _read_timeout(upload, {"Content-Length": str(2 << 20)}) == LARGE_READ_TIMEOUT
    assert _read_timeout(upload, {"Content-Length": "1000"}) == READ_TIMEOUT
    part = "https://pod-000-1000-00.backblaze.com/b2api/v4/b2_upload_part/4_z1"
    assert _read_timeout(part, {"Content-Length": str(100 << 20)}) == LARGE_READ_TIMEOUT
    listing = "https://api000.backblazeb2.com/b2api/v4/b2_list_file_names"
    assert _read_timeout(listing, {"Content-Length": str(2 << 20)}) == READ_TIMEOUT
    finish = "https://api000.backblazeb2.com/b2api/v4/b2_finish_large_file"
    assert _read_timeout(finish, {"Content-Length": "200"}) == LARGE_READ_TIMEOUT


def test_a_large_b2_upload_whose_sending_stalls_a_few_seconds_is_not_cut(monkeypatch):
    """requests sends a body under the connect timeout (3 s): a large upload's send waits
    LARGE_READ_TIMEOUT there too (6 s here). The store here reads nothing."""
    import socket

    import litesync.replica.b2 as b2
    from litesync.replica.b2 import _bounded_api_class

    monkeypatch.setattr(b2, "LARGE_READ_TIMEOUT", 6.0)
    http = _bounded_api_class().SESSION_CLASS.B2HTTP_CLASS(__import__("b2sdk.v2", fromlist=["x"]).B2HttpApiConfig())
    stall = socket.socket()
    stall.bind(("127.0.0.1", 0))
    stall.listen(1)  # accepted by the kernel, read by nobody: the send blocks once the buffers fill
    url = f"http://127.0.0.1:{stall.getsockname()[1]}/b2api/v4/b2_upload_file/bucket-1/c001"
    body = b"x" * (32 << 20)
    seconds, error = timed(lambda: http.request("POST", url, {"Content-Length": str(len(body))}, body))
    stall.close()
    assert 5.5 <= seconds < 20, (seconds, error)  # not cut at the connect timeout, 3 s


def test_an_agent_shows_a_b2_store_that_never_answers_as_failed_within_seconds(silent_b2, tmp_path):
    import sqlite3

    from test_faults import b2_replication, replica_state

    db = str(tmp_path / "app.db")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    api = new_api(silent_b2.url, KEY_ID, KEY)
    t0 = time.monotonic()
    with b2_replication(db, api, stop_timeout=1) as runner:  # nothing can be shipped
        wait_for(lambda: replica_state(runner)["state"] == "failed", timeout=30, interval=0.1)
        took = time.monotonic() - t0
        state = replica_state(runner)
    conn.close()
    assert took < 3 * READ_TIMEOUT + 5, took
    assert "B2RequestTimeout" in state["last_error"], state


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, n: int = -1) -> bytes:
        out, self._data = (self._data, b"") if n < 0 else (self._data[:n], self._data[n:])
        return out
