"""Faults on the network (tests/faultproxy.py in front of the real S3 server): restores and
followers finish through resets and outages, resumed downloads are verified like others,
and an object that changes between two attempts is refused, never spliced.

The full matrix (and a 1 GB database) is scripts/faults.py; this is its short version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass

import boto3
import pytest

from conftest import replica_cfg
from dbcheck import committed_prefix, content_digest, integrity
from faultproxy import FaultProxy
from litesync.errors import LitesyncError
from litesync.replica.resume import PATIENT, ObjectChangedError, RetryPolicy
from litesync.replica.s3 import S3ReplicaClient
from proc import WORKLOAD, clean_env, litesync, run_writer, start_agent_ready, start_litesync, stop, wait_for

S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


def s3_url(endpoint: str, bucket: str) -> str:
    return f"s3://{bucket}/app?endpoint={endpoint}&region=us-east-1&force-path-style=true"


def make_database(path: str, megabytes: int, seed: int = 1) -> None:
    """Add about ``megabytes`` MB to the WAL database at ``path`` (made if missing), 16 MB per
    transaction: blobs half random, so it compresses about 2:1."""
    rng = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS blobs(id INTEGER PRIMARY KEY, data BLOB)")
    for done in range(0, megabytes, 16):
        conn.execute("BEGIN")
        for _ in range(min(16, megabytes - done) * 256):
            conn.execute("INSERT INTO blobs(data) VALUES (?)", (rng.randbytes(2048) + bytes(2048),))
        conn.execute("COMMIT")
    conn.close()


@pytest.fixture(scope="module")
def replicated(s3_server, tmp_path_factory):
    """A ~50 MB database replicated to S3 (a snapshot, then segments): (db, endpoint, bucket)."""
    tmp = tmp_path_factory.mktemp("faults")
    bucket = "faults"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    db = str(tmp / "app.db")
    make_database(db, 48)
    agent = start_agent_ready(db, s3_url(s3_server, bucket), log_path=str(tmp / "agent.log"),
                              env=clean_env(S3_ENV), timeout=120)
    run_writer(db, "--count", "40", "--rate", "200")
    assert stop(agent) == 0
    return db, s3_server, bucket


@pytest.fixture
def proxy(replicated):
    _db, endpoint, _bucket = replicated
    host, port = endpoint.removeprefix("http://").split(":")
    with FaultProxy((host, int(port)), seed=7) as p:
        yield p


def restore_through(proxy: FaultProxy, replicated, out: str, timeout: float = 240):
    _db, _endpoint, bucket = replicated
    return litesync("restore", "-o", out, s3_url(proxy.url, bucket), env=clean_env(S3_ENV), timeout=timeout)


def test_restores_succeed_and_are_exact_while_a_fifth_of_responses_are_reset_mid_body(replicated, proxy, tmp_path):
    db = replicated[0]
    proxy.set("reset_response", p=0.2)
    want = content_digest(db)
    for i in range(3):
        out = str(tmp_path / f"out{i}.db")
        r = restore_through(proxy, replicated, out)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        assert content_digest(out) == want
        assert integrity(out) == "ok"
    assert proxy.counts["cut"] > 0  # the faults did happen


def test_restore_waits_for_a_store_that_goes_down_and_completes(replicated, proxy, tmp_path):
    proxy.set("bandwidth", rate=12 << 20)  # ~4 s for the whole restore: the outage falls inside
    out = str(tmp_path / "out.db")
    restoring = start_litesync("restore", "-o", out, s3_url(proxy.url, replicated[2]), env=clean_env(S3_ENV),
                               log_path=str(tmp_path / "restore.log"))
    time.sleep(1.0)
    proxy.set("refuse")
    time.sleep(4.0)
    assert restoring.poll() is None and not os.path.exists(out)  # waiting, nothing written yet
    proxy.set("pass")
    assert restoring.wait(120) == 0
    log = (tmp_path / "restore.log").read_text()
    assert "Traceback" not in log
    assert log.count("waiting for the store") == 1, log
    assert content_digest(out) == content_digest(replicated[0])


def test_a_restore_past_its_deadline_stops_naming_what_it_waited_for_and_writes_nothing(replicated, proxy, tmp_path):
    """The store goes silent mid-download for longer than --timeout: the restore stops
    within the deadline and a request's timeout, exit 1, one error line naming the object
    and the byte it waited for; nothing at the output path."""
    proxy.set("bandwidth", rate=8 << 20)  # the download is under way when the store goes silent
    out = str(tmp_path / "sub" / "out.db")
    t0 = time.monotonic()
    restoring = subprocess.Popen([sys.executable, "-m", "litesync", "restore", "--timeout", "6s", "-o", out,
                                  s3_url(proxy.url, replicated[2])], env=clean_env(S3_ENV),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    proxy.set("blackhole")
    _, stderr = restoring.communicate(timeout=60)
    took = time.monotonic() - t0
    assert restoring.returncode == 1, stderr
    assert took < 6 + 7, f"stopped {took:.1f}s after it began (deadline 6s)"
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == stderr.splitlines()[-1], stderr
    assert errors[0].startswith(f"litesync: error: restore timed out after 6.0s (--timeout 6s), waiting for "
                                f"replica {s3_url(proxy.url, replicated[2])} (s3://{replicated[2]}/app at "
                                f"127.0.0.1:{proxy.port}): read 'generations/"), errors[0]
    assert " at byte " in errors[0] and errors[0].endswith(f"; nothing was written to {out}"), errors[0]
    assert "Traceback" not in stderr
    assert not os.path.exists(tmp_path / "sub")  # not even the directory made for it


def test_a_restore_waits_out_an_outage_shorter_than_its_deadline_and_completes(replicated, proxy, tmp_path):
    """The store goes silent for 20 s mid-restore, inside a 90 s deadline: the restore says
    once that it waits (and when it gives up), then completes, exact."""
    proxy.set("bandwidth", rate=12 << 20)
    out = str(tmp_path / "out.db")
    log = tmp_path / "restore.log"
    restoring = start_litesync("restore", "--timeout", "90s", "-o", out, s3_url(proxy.url, replicated[2]),
                               env=clean_env(S3_ENV), log_path=str(log))
    time.sleep(1.0)
    proxy.set("blackhole")
    time.sleep(20.0)
    assert restoring.poll() is None and not os.path.exists(out)
    proxy.set("pass")
    assert restoring.wait(120) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("waiting for the store") == 1, text
    assert "the restore gives up in 1m" in text and "(--timeout 90s)" in text, text
    assert content_digest(out) == content_digest(replicated[0]) and integrity(out) == "ok"


def test_follower_catches_up_while_a_fifth_of_responses_are_reset(replicated, proxy, tmp_path):
    db, endpoint, bucket = replicated
    proxy.set("reset_response", p=0.2)
    out = str(tmp_path / "follow.db")
    follower = start_litesync("restore", "--follow", "--interval", "200ms", "-o", out, s3_url(proxy.url, bucket),
                              env=clean_env(S3_ENV), log_path=str(tmp_path / "follow.log"))
    try:
        agent = start_agent_ready(db, s3_url(endpoint, bucket), log_path=str(tmp_path / "agent.log"),
                                  env=clean_env(S3_ENV), timeout=120)
        run_writer(db, "--count", "30", "--rate", "100", "--seed", "5")
        assert stop(agent) == 0
        want = content_digest(db)

        def caught_up() -> bool:
            try:
                return os.path.exists(out) and content_digest(out) == want
            except sqlite3.Error:
                return False

        wait_for(caught_up, timeout=60, interval=0.5)
    finally:
        assert stop(follower) == 0
    assert integrity(out) == "ok"
    log = (tmp_path / "follow.log").read_text()
    assert "Traceback" not in log
    assert "will retry" not in log  # each broken download resumed on its own; no poll failed
    assert proxy.counts["cut"] > 0


def _client(endpoint: str, bucket: str, policy: RetryPolicy = PATIENT) -> S3ReplicaClient:
    client = S3ReplicaClient(replica_cfg(type="s3", name="s3", bucket=bucket, path="x", endpoint=endpoint,
                                         region="us-east-1", force_path_style=True))
    client.set_retry(policy)
    return client


def test_an_object_that_changes_between_two_attempts_is_refused_not_spliced(s3_bucket):
    endpoint, bucket = s3_bucket
    host, port = endpoint.removeprefix("http://").split(":")
    direct = _client(endpoint, bucket)
    direct.write_bytes("obj", b"a" * 100_000)
    with FaultProxy((host, int(port))) as proxy:
        client = _client(proxy.url, bucket)
        proxy.set("reset_response", after=1000)
        f = client.open("obj")
        assert f.read(1000) == b"a" * 1000
        direct.write_bytes("obj", b"b" * 100_000)  # replaced before the read goes on
        proxy.set("pass")
        with pytest.raises(ObjectChangedError) as e:
            f.read()
        assert str(e.value) == (f"replica {client.name}: read 'obj': the object changed while it was read "
                                f"(it was ETag {f.version}); not resumed from byte 1000")
        client.close()
    direct.close()


def test_a_resumed_download_reads_the_same_bytes_and_a_dead_store_is_given_up(s3_bucket):
    endpoint, bucket = s3_bucket
    host, port = endpoint.removeprefix("http://").split(":")
    data = os.urandom(3 << 20)
    direct = _client(endpoint, bucket)
    direct.write_bytes("obj", data)
    with FaultProxy((host, int(port)), seed=3) as proxy:
        client = _client(proxy.url, bucket)
        proxy.set("reset_response", p=0.5)
        f = client.open("obj")
        assert f.read() == data
        assert f.resumed > 0
        proxy.set("refuse")
        quick = _client(proxy.url, bucket, RetryPolicy(attempts=3, patience=60, base=0.01))
        with pytest.raises(LitesyncError) as e:
            list(quick.list(""))
        assert "gave up after 3 failed attempts" in str(e.value) and not e.value.retryable
        client.close()
        quick.close()
    direct.close()


class FlakyDownloads:
    """Wraps b2sdk's simulator so that a share of downloads break mid-body (the one fault
    the simulator cannot make itself: it has no network)."""

    def __init__(self, raw, p: float, seed: int = 1) -> None:
        self.raw = raw
        self.p = p
        self.rng = random.Random(seed)
        self.cut = 0
        self.raw = raw
        self._download = raw.download_file_from_url
        raw.download_file_from_url = self.download_file_from_url

    def undo(self) -> None:
        self.raw.download_file_from_url = self._download

    def download_file_from_url(self, *args, **kw):
        manager = self._download(*args, **kw)
        resp = manager.response
        if self.rng.random() < self.p and len(resp.data_bytes) > 1:
            at = self.rng.randrange(1, len(resp.data_bytes))
            whole = resp.iter_content
            self.cut += 1

            def iter_content(chunk_size=1):
                sent = 0
                for chunk in whole(chunk_size):
                    if sent + len(chunk) > at:
                        yield chunk[:at - sent]
                        raise ConnectionResetError("connection reset by the test")
                    sent += len(chunk)
                    yield chunk

            resp.iter_content = iter_content
        return manager


class B2Faults:
    """Faults at b2sdk's simulator boundary, where its HTTP layer would raise them (the
    simulator runs in this process: there is no connection for the proxy to break):

    - ``upload_p``: that share of upload requests fail with a reset connection, half before
      the store keeps the bytes, half after (the answer is lost: the upload happened);
    - ``down``: every request fails as a refused connection does (an outage).

    b2sdk tries each upload five times itself; what reaches litesync is what fails all five.
    """

    CALLS = ("authorize_account", "get_bucket", "list_buckets", "list_file_names", "list_file_versions",
             "get_upload_url", "get_upload_part_url", "upload_file", "upload_part", "start_large_file",
             "finish_large_file", "cancel_large_file", "list_parts", "download_file_from_url",
             "delete_file_version", "get_file_info_by_id", "get_file_info_by_name")
    UPLOADS = ("upload_file", "upload_part")

    def __init__(self, raw, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.upload_p = 0.0
        self.down = False
        self.counts = {"refused": 0, "upload_reset": 0, "answer_lost": 0}
        for name in self.CALLS:
            if hasattr(raw, name):
                setattr(raw, name, self._wrap(name, getattr(raw, name)))

    def _wrap(self, name: str, call):
        from b2sdk.v2.exception import B2ConnectionError

        def faulty(*args, **kw):
            if self.down:
                self.counts["refused"] += 1
                raise B2ConnectionError("connection refused by the test")
            if name in self.UPLOADS and self.rng.random() < self.upload_p:
                if self.rng.random() < 0.5:
                    self.counts["upload_reset"] += 1
                    raise B2ConnectionError("connection reset by the test")
                call(*args, **kw)
                self.counts["answer_lost"] += 1
                raise B2ConnectionError("connection reset by the test after the upload was kept")
            return call(*args, **kw)

        return faulty


@contextlib.contextmanager
def b2_replication(db: str, api, path: str = "app", stop_timeout: float = 30):
    """Replicate ``db`` to ``b2://litesync-test/PATH`` on b2sdk's simulator ``api`` with an
    agent in this process (where the simulator is); yield the Runner. The agent opens the
    database with apsw: read it with sqlite3 in this process only after the block."""
    import dataclasses

    from litesync.config import config_from_args
    from litesync.replica.b2 import B2ReplicaClient
    from litesync.replica.registry import BACKENDS
    from litesync.runner import Runner

    saved = BACKENDS["b2"]
    BACKENDS["b2"] = dataclasses.replace(saved, factory=lambda cfg: B2ReplicaClient(cfg, api=api))
    try:
        runner = Runner(config_from_args(db, [f"b2://litesync-test/{path}"]))
        runner.start()
        try:
            yield runner
        finally:
            runner.stop(timeout=stop_timeout)
    finally:
        BACKENDS["b2"] = saved


def replica_state(runner) -> dict:
    """The runner's one database's one replica, as `litesync status` shows it."""
    return runner.statuses()[0]["replicas"][0]


def wait_state(runner, pred, timeout: float) -> float:
    """Seconds until ``pred(replica_state(runner))`` held; fails after ``timeout``."""
    t0 = time.monotonic()
    wait_for(lambda: pred(replica_state(runner)), timeout=timeout, interval=0.1)
    return time.monotonic() - t0


def synced(r: dict) -> bool:
    return r["state"] == "completed" and r["lag_bytes"] == 0


def b2_restore_exact(api, db: str, out: str, *, cut: float = 0.0) -> bool:
    """Restore b2://litesync-test/app from the simulator (downloads cut mid-body with
    probability ``cut``); return whether it equals ``db``."""
    from litesync.replica.b2 import B2ReplicaClient
    from litesync.restore import restore_any

    client = B2ReplicaClient(replica_cfg(type="b2", name="b2", bucket="litesync-test", path="app"), api=api)
    flaky = FlakyDownloads(api.session.raw_api, p=cut) if cut else None
    try:
        restore_any([client], out)
    finally:
        if flaky is not None:
            flaky.undo()
    return content_digest(out) == content_digest(db) and integrity(out) == "ok"


def test_b2_replication_through_failing_uploads_loses_nothing_and_restores_through_cut_downloads(
        b2_api, tmp_path, caplog):
    """70% of B2 upload requests fail (half of them after the upload was kept: the answer is
    lost), beyond what b2sdk's own five tries absorb: the agent tries again, the replica
    catches up, and a restore with 30% of its downloads cut mid-body is exact."""
    api, _bucket = b2_api
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "1")
    faults = B2Faults(api.session.raw_api, seed=3)
    with b2_replication(db, api) as runner:
        wait_state(runner, synced, 30)
        faults.upload_p = 0.7
        run_writer(db, "--count", "150", "--rate", "100", "--seed", "2")
        wait_state(runner, lambda r: r["errors"] > 0, 30)  # some uploads failed five times over
        faults.upload_p = 0.0
        wait_state(runner, synced, 60)
    assert faults.counts["upload_reset"] > 0 and faults.counts["answer_lost"] > 0
    assert b2_restore_exact(api, db, str(tmp_path / "out.db"), cut=0.3)
    assert committed_prefix(str(tmp_path / "out.db")) == 151
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    failed = [r.getMessage() for r in caplog.records if "(retrying)" in r.getMessage()]
    # b2sdk uploads a large segment in parts: when one part fails its five tries, the parts
    # still in flight end with AlreadyFailed, which names no error of its own.
    assert failed and all("write 'generations/" in m for m in failed), failed
    assert all("B2ConnectionError at each of b2sdk's" in m or "another part failed" in m for m in failed), failed
    assert any("B2ConnectionError" in m for m in failed), failed


def test_a_b2_outage_shows_as_failed_within_seconds_and_replication_recovers(b2_api, tmp_path, caplog):
    """B2 refuses every request for a while: the replica's status is failed, with the
    reason, within seconds; when B2 is back it catches up and nothing is lost."""
    api, _bucket = b2_api
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "1")
    faults = B2Faults(api.session.raw_api)
    with b2_replication(db, api) as runner:
        wait_state(runner, synced, 30)
        faults.down = True
        writer = subprocess.Popen([sys.executable, WORKLOAD, db, "--count", "300", "--rate", "100", "--seed", "2"],
                                  env=clean_env())
        took = wait_state(runner, lambda r: r["state"] == "failed", 15)
        assert took < 5, f"the outage took {took:.1f}s to show"
        assert "B2ConnectionError" in replica_state(runner)["last_error"]
        time.sleep(4)
        faults.down = False
        recovery = wait_state(runner, synced, 60)
        assert writer.wait(60) == 0
        wait_state(runner, synced, 30)
    assert recovery < 35, f"caught up {recovery:.1f}s after B2 came back"
    assert b2_restore_exact(api, db, str(tmp_path / "out.db"))
    assert committed_prefix(str(tmp_path / "out.db")) == 301
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)


def test_a_restore_from_b2_waits_out_an_outage_and_completes(b2_api, tmp_path, caplog):
    """B2 is down when the restore begins and for 3 s more: the restore says once that it
    waits, then completes, exact."""
    import threading

    api, _bucket = b2_api
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "20")
    with b2_replication(db, api) as runner:
        wait_state(runner, synced, 30)
    faults = B2Faults(api.session.raw_api)
    faults.down = True
    caplog.set_level(logging.INFO, logger="litesync")
    threading.Timer(3.0, lambda: setattr(faults, "down", False)).start()
    t0 = time.monotonic()
    assert b2_restore_exact(api, db, str(tmp_path / "out.db"))
    assert time.monotonic() - t0 >= 3.0 and faults.counts["refused"] > 0
    assert caplog.text.count("waiting for the store") == 1, caplog.text
    assert "the store answers again" in caplog.text and "Traceback" not in caplog.text


def test_b2_downloads_resume_by_file_id_and_read_back_exactly(b2_api):
    from litesync.replica.b2 import B2ReplicaClient

    api, bucket = b2_api
    client = B2ReplicaClient(replica_cfg(type="b2", name="b2", bucket=bucket, path="x", part_size=1 << 20), api=api)
    client.set_retry(RetryPolicy(attempts=10, patience=60, base=0.01))
    objects = {f"o{i}": os.urandom(20_000 + i) for i in range(8)}
    for key, data in objects.items():
        client.write_bytes(key, data)
    flaky = FlakyDownloads(api.session.raw_api, p=0.3)
    for key, data in objects.items():
        assert client.read(key) == data
    assert flaky.cut > 0


def test_a_blackholed_store_shows_as_failed_within_seconds_and_replication_resumes(s3_bucket, tmp_path):
    """The store accepts connections and never answers: status says failed, with the
    reason, within seconds; the metrics count it; when the store is back, nothing is lost."""
    from test_ops import published, scrape

    from proc import free_port

    endpoint, bucket = s3_bucket
    host, port = endpoint.removeprefix("http://").split(":")
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "3")
    metrics = free_port()
    with FaultProxy((host, int(port))) as proxy:
        cfg = tmp_path / "litesync.yml"
        cfg.write_text(f"addr: 127.0.0.1:{metrics}\ncompaction: off\ndbs:\n  - path: {db}\n    replicas:\n"
                       f"      - name: offsite\n        url: {s3_url(proxy.url, bucket)}\n")
        agent = start_agent_ready("--config", str(cfg), "--shutdown-timeout", "1", log_path=str(tmp_path / "a.log"),
                                  env=clean_env(S3_ENV))
        try:
            errors = f'litesync_replica_errors_total{{db="{db}",replica="offsite"}}'
            before = scrape(metrics)[errors]
            proxy.set("blackhole")
            t0 = time.monotonic()
            run_writer(db, "--count", "20", "--rate", "200", "--seed", "2")
            st = published(str(cfg), lambda s: s["replicas"][0]["state"] == "failed")
            took = time.monotonic() - t0
            assert took < 15, f"the outage took {took:.1f}s to show"
            assert "ReadTimeoutError" in st["replicas"][0]["last_error"], st
            assert scrape(metrics)[errors] > before
            proxy.set("pass")
            published(str(cfg), lambda s: s["replicas"][0]["state"] == "completed" and s["replicas"][0]["lag_bytes"] == 0)
        finally:
            stop(agent)
        out = str(tmp_path / "out.db")
        r = litesync("restore", "-o", out, s3_url(proxy.url, bucket), env=clean_env(S3_ENV))
        assert r.returncode == 0, r.stderr
    assert content_digest(out) == content_digest(db)
    assert "Traceback" not in (tmp_path / "a.log").read_text()


# -- a slow store under a fast writer --------------------------------------------------------

@dataclass
class SlowStore:
    """What one run of ``slow_store`` measured."""

    transactions: int  # committed by the writer
    seconds: float  # the writer's run
    longest_commit: float  # the writer's longest wait for one commit (s)
    locked: int  # "database is locked" the writer met
    max_seal: float  # the longest the agent held the write lock (s), as its status says
    max_wal: int  # the WAL file's largest size seen (bytes)
    max_wal_at: float  # when, in seconds from the writer's start
    max_spool: int  # the spool directory's largest size seen (bytes)
    max_segments: int  # of which segments (copied WAL waiting: what the bound is on)
    spool_warnings: int  # "over spool-max-size" lines in the agent's log
    errors: int  # ERROR lines in the agent's log
    bridges: int  # snapshots taken mid-generation (the bridges over dropped objects)
    catch_up: float | None  # from the writer's end until the replica had everything (s)
    restored: int  # transactions a restore afterwards holds (tests/workload.py's count)
    same: bool  # the restore's content equals the writer's database
    tracebacks: int
    log: str


def _dir_size(path: str, suffix: str = "") -> int:
    """Bytes of the files under ``path`` whose names end with ``suffix``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name.endswith(suffix):
                try:
                    total += os.path.getsize(os.path.join(root, name))
                except OSError:
                    pass  # dropped while we looked
    return total


def slow_store(proxy: FaultProxy, endpoint: str, bucket: str, work: str, *, seconds: float, spool_max: str,
               rate: int, latency: float = 0.3, tx_rate: int = 500, writer: tuple[str, ...] = (),
               env: dict[str, str] | None = None, catch_up_timeout: float = 600) -> SlowStore:
    """Replicate a database to S3 through ``proxy`` made slow (``latency`` s before each answer,
    ``rate`` bytes/s) while tests/workload.py commits ``tx_rate`` transactions a second for
    ``seconds``; measure the writer, the WAL and the spool, then how long the replica takes
    to catch up once the writer stops, and restore it (directly) to compare."""
    from litesync.status import read_statuses

    env = env or clean_env(S3_ENV)
    db = os.path.join(work, "app.db")
    spool = os.path.join(work, ".app.db-litesync", "spool")
    log = os.path.join(work, "agent.log")
    run_writer(db, "--count", "1")
    cfg = os.path.join(work, "litesync.yml")
    with open(cfg, "w") as f:
        f.write(f"spool-max-size: {spool_max}\ndbs:\n  - path: {db}\n    replicas:\n      - name: s3\n"
                f"        url: {s3_url(proxy.url, bucket)}\n")
    agent = start_agent_ready("--config", cfg, log_path=log, env=env)
    try:
        proxy.set("latency", seconds=latency, rate=rate)
        waits = os.path.join(work, "writer.txt")
        t0 = time.monotonic()
        w = subprocess.Popen([sys.executable, WORKLOAD, db, "--seconds", str(seconds), "--rate", str(tx_rate),
                              "--max-wait-log", waits, "--seed", "2", *writer], env=env)
        max_wal = max_spool = max_segments = 0
        max_wal_at = 0.0
        while w.poll() is None:
            wal = os.path.getsize(db + "-wal") if os.path.exists(db + "-wal") else 0
            if wal > max_wal:
                max_wal, max_wal_at = wal, time.monotonic() - t0
            max_spool = max(max_spool, _dir_size(spool))
            max_segments = max(max_segments, _dir_size(spool, ".seg"))
            time.sleep(0.1)
        took = time.monotonic() - t0
        assert w.returncode == 0
        longest, locked, done = open(waits).read().split()
        ended = time.monotonic()

        def caught_up() -> bool:
            r = read_statuses([db], fresh=1.0)[0].get("replicas") or [{}]
            return r[0].get("state") == "completed" and r[0].get("lag_bytes") == 0

        catch_up: float | None = None
        while time.monotonic() - ended < catch_up_timeout:
            max_spool = max(max_spool, _dir_size(spool))
            if caught_up():
                catch_up = time.monotonic() - ended
                break
            time.sleep(0.5)
        max_seal = float(read_statuses([db], fresh=1.0)[0].get("max_seal_seconds") or 0.0)
    finally:
        stop(agent)
    proxy.set("pass")
    text = open(log).read()
    out = os.path.join(work, "restored.db")
    r = litesync("restore", "-o", out, s3_url(endpoint, bucket), env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return SlowStore(transactions=int(done) + 1, seconds=took, longest_commit=float(longest), locked=int(locked),
                     max_seal=max_seal,
                     max_wal=max_wal, max_wal_at=max_wal_at, max_spool=max_spool, max_segments=max_segments,
                     spool_warnings=text.count("over spool-max-size"),
                     errors=sum(" ERROR " in line for line in text.splitlines()),
                     bridges=sum(1 for line in text.splitlines() if " snapshot " in line and " written " in line
                                 and "/0 written" not in line),
                     catch_up=catch_up, restored=committed_prefix(out), same=content_digest(out) == content_digest(db),
                     tracebacks=text.count("Traceback") + r.stderr.count("Traceback"), log=text)


def test_a_slow_store_never_holds_the_writer_back_and_the_replica_catches_up_through_a_snapshot(s3_bucket, tmp_path):
    """A store 300 ms away behind a narrow link (512 kB/s, less than the writer's segments
    need) and a writer at 500 tx/s: commits never wait on litesync, the WAL stays small,
    the spool fills to its bound, then a snapshot bridges what was dropped; once the writer
    stops the replica catches up, and a restore holds every transaction."""
    endpoint, bucket = s3_bucket
    host, port = endpoint.removeprefix("http://").split(":")
    with FaultProxy((host, int(port))) as proxy:
        m = slow_store(proxy, endpoint, bucket, str(tmp_path), seconds=12, spool_max="1MiB", rate=512 << 10,
                       writer=("--row-size", "400", "--incompressible"), catch_up_timeout=60)
    assert m.locked == 0 and m.longest_commit < 1.0 and m.max_seal < 0.5, m
    assert m.max_wal < 16 << 20, m  # checkpoint-pages 1000 (4 MiB) and what a turn copies meanwhile
    assert m.spool_warnings >= 1 and m.bridges >= 1, m.log
    # The bound holds for the copied WAL (one turn's copy over it at most); the snapshot
    # bridging it comes on top.
    assert m.max_segments <= (1 << 20) + (512 << 10), m
    assert m.catch_up is not None, m.log
    assert m.restored == m.transactions and m.same, m
    assert m.tracebacks == 0 and m.errors == 0, m.log


def test_the_deadline_reaches_the_store_through_encryption_and_a_bandwidth_limit(b2_api):
    from litesync.replica import wrap_replica
    from litesync.replica.b2 import B2ReplicaClient
    from litesync.replica.resume import Deadline

    api, bucket = b2_api
    raw = B2ReplicaClient(replica_cfg(type="b2", name="b2", bucket=bucket, path="x"), api=api)
    client = wrap_replica(raw, replica_cfg(max_bandwidth=1 << 20, encryption_keys=(bytes(range(32)),), db_id="a"))
    deadline = Deadline(0.0, "restore", "--timeout 0s")
    client.set_deadline(deadline)
    assert raw.deadline is deadline
    with pytest.raises(LitesyncError) as e:
        client.read("k")
    assert str(e.value) == ("restore timed out after 0.0s (--timeout 0s), waiting for replica b2 (b2://litesync-test/x): "
                            "read 'k'")
