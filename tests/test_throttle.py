"""RateLimiter on a fake clock, and ThrottledClient in real time over the file replica."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest

from litesync.replica.file import FileReplicaClient
from litesync.replica.throttle import RateLimiter, ThrottledClient


class FakeClock:
    """A clock that only moves when told to, or when someone sleeps on it."""

    def __init__(self):
        self.now = 100.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def limiter(rate, clock, **kw):
    return RateLimiter(rate, clock=clock, sleep=clock.sleep, **kw)


def test_burst_is_a_quarter_second_or_64k():
    assert RateLimiter(1_000_000).burst == 250_000
    assert RateLimiter(1000).burst == 64 << 10
    assert RateLimiter(1000, burst=10).burst == 10


# A rate of 1 MiB/s keeps every figure exact in binary floating point.
MIBPS = 1 << 20


def test_starts_empty_and_sleeps_for_the_deficit():
    clock = FakeClock()
    rl = limiter(MIBPS, clock)
    assert rl.acquire(1 << 17) == 0.125
    assert rl.acquire(0) == 0.0
    for _ in range(7):
        rl.acquire(1 << 17)
    assert clock.slept == [0.125] * 8
    assert sum(clock.slept) == 1.0
    assert clock.now == 101.0


def test_idle_time_fills_the_bucket_up_to_the_burst():
    clock = FakeClock()
    rl = limiter(MIBPS, clock)
    assert rl.burst == 1 << 18
    clock.now += 0.125
    assert rl.acquire(1 << 17) == 0.0  # the idle eighth of a second paid for it
    clock.now += 60  # a long idle spell is worth one burst, not a minute
    assert rl.acquire(1 << 18) == 0.0
    assert rl.acquire(1 << 19) == 0.5
    clock.now += 0.0625
    assert rl.acquire(1 << 17) == 0.0625
    assert clock.slept == [0.5, 0.0625]


def test_large_acquire_takes_the_bucket_into_debt():
    clock = FakeClock()
    rl = limiter(MIBPS, clock)
    clock.now += 1
    assert rl.acquire(3 << 20) == 2.75  # 3 MiB less the quarter-MiB burst
    assert rl.acquire(1) == 1 / MIBPS
    assert sum(clock.slept) == 2.75 + 1 / MIBPS


def test_concurrent_callers_share_the_rate():
    # The clock stands still and sleeps do not move it: each caller's wait is the debt of
    # every acquire booked before its own, so the 100 waits are exactly 1/128, 2/128, ... s.
    clock = FakeClock()
    lock = threading.Lock()
    waits = []
    rl = RateLimiter(MIBPS, clock=clock, sleep=lambda s: None)

    def worker():
        for _ in range(25):
            w = rl.acquire(1 << 13)
            with lock:
                waits.append(w)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == [i / 128 for i in range(1, 101)]


def test_invalid_arguments():
    with pytest.raises(ValueError, match=r"^invalid rate: 0 bytes per second \(must be > 0\)$"):
        RateLimiter(0)
    with pytest.raises(ValueError, match=r"^invalid burst: -1 bytes \(must be > 0\)$"):
        RateLimiter(1000, burst=-1)


# Real time: 3 MB at 2 MB/s takes 1.5 s each way.

SIZE = 3_000_000
RATE = 2_000_000
EXPECTED = SIZE / RATE


@pytest.fixture
def throttled(tmp_path):
    inner = FileReplicaClient(str(tmp_path / "replica"))
    client = ThrottledClient(inner, RateLimiter(RATE))
    yield inner, client
    client.close()


def test_upload_is_limited(throttled):
    inner, client = throttled
    data = os.urandom(SIZE)
    t0 = time.monotonic()
    client.write("up", io.BytesIO(data), SIZE)
    elapsed = time.monotonic() - t0
    assert inner.read("up") == data
    assert abs(elapsed - EXPECTED) <= 0.1 * EXPECTED, elapsed


def test_download_is_limited(throttled):
    inner, client = throttled
    data = os.urandom(SIZE)
    inner.write_bytes("down", data)
    t0 = time.monotonic()
    with client.open("down") as f:
        pieces = []
        while True:
            p = f.read(1 << 20)
            if not p:
                break
            pieces.append(p)
    elapsed = time.monotonic() - t0
    assert b"".join(pieces) == data
    assert abs(elapsed - EXPECTED) <= 0.1 * EXPECTED, elapsed


def test_upload_and_download_share_one_limit(throttled):
    inner, client = throttled
    half = SIZE // 2
    up = os.urandom(half)
    inner.write_bytes("down", os.urandom(half))
    got = []
    t0 = time.monotonic()
    reader = threading.Thread(target=lambda: got.append(client.read("down")))
    reader.start()
    client.write("up", io.BytesIO(up), half)
    reader.join()
    elapsed = time.monotonic() - t0
    assert len(got[0]) == half and inner.read("up") == up
    assert abs(elapsed - EXPECTED) <= 0.1 * EXPECTED, elapsed


def test_passes_through(throttled):
    inner, client = throttled
    assert client.name == inner.name
    client.write_bytes("a/1", b"one")
    client.write_bytes("a/2", b"")
    assert [(o.key, o.size) for o in client.list("a/")] == [("a/1", 3), ("a/2", 0)]
    assert client.read("a/2") == b""
    client.delete(["a/1"])
    assert [o.key for o in client.list("a/")] == ["a/2"]


def test_write_leaves_the_source_open(throttled):
    _inner, client = throttled
    src = io.BytesIO(b"abc")
    client.write("k", src, 3)
    assert not src.closed


def test_throttled_reads_return_full_pieces(throttled):
    # Inner clients (s3transfer's multipart reader) treat a short read as the end.
    inner, _client = throttled
    client = ThrottledClient(inner, RateLimiter(1e9, burst=1000))
    data = os.urandom(10_000)
    inner.write_bytes("k", data)
    with client.open("k") as f:
        assert f.read(4096) == data[:4096]
        assert f.read() == data[4096:]
        assert f.read(10) == b""


def test_upload_limit_holds_on_every_backend(replica_client):
    # Over 5 MiB: S3 takes the multipart path, B2 (1 MiB parts here) the large-file path.
    # Only a lower bound: the B2 simulator alone is slower than the limit.
    size, rate = (6 << 20) + 123, 12_000_000
    data = os.urandom(size)  # before the limiter: its bucket fills from its creation, up to a quarter second
    client = ThrottledClient(replica_client, RateLimiter(rate))
    t0 = time.monotonic()
    client.write("big", io.BytesIO(data), size)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.95 * size / rate, elapsed
    assert replica_client.read("big") == data


# max-bandwidth from litesync.yml: the agent's shipping and a restore, in real time.

def write_config(tmp_path, replica_keys: str) -> str:
    path = tmp_path / "litesync.yml"
    path.write_text(f"dbs:\n  - path: {tmp_path / 'app.db'}\n    replicas:\n"
                    f"      - url: file://{tmp_path / 'replica'}\n{replica_keys}")
    return str(path)


def test_max_bandwidth_in_the_config_limits_shipping_and_restore(tmp_path):
    """A 4.5 MB snapshot, encrypted, at 1.5 MB/s: the shipper's upload and the restore's download
    each run at the limit within 10%, counting stored (encrypted) bytes; the spool is not limited."""
    import sqlite3

    from dbcheck import content_digest
    from litesync.config import load_config
    from litesync.replica import open_replica
    from litesync.restore import restore
    from litesync.runner import DbReplication

    rate = 1_500_000
    db = str(tmp_path / "app.db")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (x BLOB)")
    c.executemany("INSERT INTO t VALUES (?)", [(os.urandom(100_000),) for _ in range(45)])
    c.close()
    cfg = load_config(write_config(tmp_path, "        max-bandwidth: 1.5MB/s\n        encryption-key: 1f0123456789abcdef0123456789abcdef0123456789abcdeffedcba98765432\n"))
    d = DbReplication(cfg.dbs[0])
    shipper = d.shippers[0]
    d.agent.open()
    try:
        t0 = time.monotonic()
        d.agent.start()  # the snapshot, into the spool
        spool_seconds = time.monotonic() - t0
        time.sleep(0.3)  # let the bucket fill: the upload below starts with exactly one burst in hand
        t0 = time.monotonic()
        assert shipper.ship_one()
        ship_seconds = time.monotonic() - t0
    finally:
        d.agent.close()
        shipper.client.close()
    stored = sum(o.size for o in FileReplicaClient(str(tmp_path / "replica")).list(""))
    assert stored > 4_500_000
    expected = (stored - shipper.client.inner.limiter.burst) / rate
    assert abs(ship_seconds - expected) <= 0.1 * expected, (ship_seconds, expected)
    assert spool_seconds < expected / 3, spool_seconds
    client = open_replica(cfg.dbs[0].replicas[0])
    out = str(tmp_path / "restored.db")
    t0 = time.monotonic()
    restore(client, out)
    restore_seconds = time.monotonic() - t0
    expected = stored / rate
    assert abs(restore_seconds - expected) <= 0.1 * expected, (restore_seconds, expected)
    assert content_digest(out) == content_digest(db)


def test_the_writer_never_waits_for_the_limit(tmp_path):
    """A replica limited to 50 KB/s far below what the writer produces: the agent keeps copying
    the WAL into the spool and checkpointing, so the writer never waits; shipping lags behind."""
    from proc import kill9, run_writer, start_agent_ready

    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "1")
    config = write_config(tmp_path, "        max-bandwidth: 50KB/s\n")
    agent = start_agent_ready("--config", config, log_path=str(tmp_path / "agent.log"))
    try:
        wait_log = str(tmp_path / "wait.txt")
        run_writer(db, "--rate", "200", "--seconds", "3", "--max-wait-log", wait_log)
        longest, locked, done = open(wait_log).read().split()
        spooled = sum(f.stat().st_size for f in (tmp_path / ".app.db-litesync" / "spool").rglob("*.seg"))
        shipped = sum(f.stat().st_size for f in (tmp_path / "replica").rglob("*.seg"))
    finally:
        kill9(agent)
    assert float(longest) < 1.0 and int(locked) == 0 and int(done) > 300, (longest, locked, done)
    assert spooled > 3 * shipped, (spooled, shipped)
    assert shipped < 50_000 * 5
