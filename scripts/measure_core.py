#!/usr/bin/env python3
"""Measure litesync's core figures on this machine (local replica).

    python scripts/measure_core.py [--seconds 60] [--restore-mb 300] [--workdir DIR]

Prints: commit-to-replica lag (median, p99) at a steady writer rate; agent CPU seconds,
peak RSS, largest WAL and the writer's longest wait under a max-speed writer; restore
MB/s of a database of --restore-mb megabytes. Installs nothing; uses tests/workload.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOAD = os.path.join(ROOT, "tests", "workload.py")
sys.path.insert(0, ROOT)

from litesync.segment import SegmentReader  # noqa: E402


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITESYNC_"))}


def start_agent(db: str, replica: str, log: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "litesync", "replicate", db, f"file://{replica}"],
                         stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env())
    deadline = time.time() + 60
    while "up to date" not in open(log).read():
        if p.poll() is not None or time.time() > deadline:
            raise SystemExit(f"agent did not start: {open(log).read()}")
        time.sleep(0.05)
    return p


def proc_stats(pid: int) -> tuple[float, int]:
    """Return (CPU seconds, peak RSS bytes) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return cpu, hwm


def segments_dir(replica: str) -> str | None:
    gens = os.path.join(replica, "generations")
    if not os.path.isdir(gens):
        return None
    newest = sorted(os.listdir(gens))[-1]
    return os.path.join(gens, newest, "segments")


def measure_lag(work: str, seconds: float, rate: float) -> list[float]:
    db, replica = os.path.join(work, "lag.db"), os.path.join(work, "lag-replica")
    subprocess.run([sys.executable, WORKLOAD, db, "--count", "1"], check=True)
    agent = start_agent(db, replica, os.path.join(work, "lag-agent.log"))
    commit_log = os.path.join(work, "commits.txt")
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            d = segments_dir(replica)
            if d and os.path.isdir(d):
                now = time.time()
                for fn in os.listdir(d):
                    if fn.endswith(".seg") and fn not in seen:
                        seen[fn] = now
            time.sleep(0.0005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    subprocess.run([sys.executable, WORKLOAD, db, "--rate", str(rate), "--seconds", str(seconds),
                    "--commit-log", commit_log], check=True, env=env())
    time.sleep(1.0)
    stop.set()
    t.join()
    agent.send_signal(signal.SIGTERM)
    agent.wait()
    commits = {}
    for line in open(commit_log):
        n, ts = line.split()
        commits[int(n)] = float(ts)
    # Transactions appear in segments in commit order: count them off segment by segment.
    d = segments_dir(replica)
    lags = []
    n = 2  # transaction 1 predates the agent (it is in the snapshot)
    for fn in sorted(seen):
        with open(os.path.join(d, fn), "rb") as f:
            txs = len(SegmentReader(f, fn).header.txs)
        for _ in range(txs):
            if n in commits:
                lags.append(seen[fn] - commits[n])
            n += 1
    return lags


def measure_load(work: str, seconds: float) -> dict[str, float]:
    db, replica = os.path.join(work, "load.db"), os.path.join(work, "load-replica")
    subprocess.run([sys.executable, WORKLOAD, db, "--count", "1"], check=True)
    agent = start_agent(db, replica, os.path.join(work, "load-agent.log"))
    cpu0, _ = proc_stats(agent.pid)
    wait_log = os.path.join(work, "wait.txt")
    writer = subprocess.Popen([sys.executable, WORKLOAD, db, "--seconds", str(seconds), "--rows", "10",
                               "--row-size", "1000", "--max-wait-log", wait_log], env=env())
    max_wal = 0
    while writer.poll() is None:
        try:
            max_wal = max(max_wal, os.path.getsize(db + "-wal"))
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    cpu1, rss = proc_stats(agent.pid)
    agent.send_signal(signal.SIGTERM)
    agent.wait()
    longest, locked, txs = open(wait_log).read().split()
    wal_shipped = 0
    for root, _dirs, files in os.walk(replica):
        wal_shipped += sum(os.path.getsize(os.path.join(root, f)) for f in files if f.endswith(".seg"))
    return {"agent_cpu_s": cpu1 - cpu0, "peak_rss_mb": rss / 2**20, "max_wal_mb": max_wal / 2**20,
            "longest_wait_ms": float(longest) * 1000, "locked_errors": int(locked), "transactions": int(txs),
            "db_mb": os.path.getsize(db) / 2**20, "replica_segment_mb": wal_shipped / 2**20}


def make_db(path: str, mb: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, meta TEXT)")
    words = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
             "sigma tau upsilon phi chi psi omega").split()
    import random

    rng = random.Random(1)
    i = 0
    while os.path.getsize(path) < mb * 1e6:
        conn.execute("BEGIN")
        for _ in range(2000):
            i += 1
            body = " ".join(rng.choice(words) for _ in range(120)) + f" {rng.random()}"
            meta = f'{{"id": {i}, "score": {rng.random():.6f}, "tags": ["{rng.choice(words)}"]}}'
            conn.execute("INSERT INTO docs (body, meta) VALUES (?, ?)", (body, meta))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def measure_restore(work: str, mb: int) -> dict[str, float]:
    db, replica = os.path.join(work, "big.db"), os.path.join(work, "big-replica")
    make_db(db, mb)
    subprocess.run([sys.executable, "-m", "litesync", "replicate", "--once", db, f"file://{replica}"],
                   check=True, env=env())
    out = {}
    size = os.path.getsize(db)
    for label, extra in (("restore", []), ("restore_no_integrity_check", ["--no-integrity-check"])):
        target = os.path.join(work, f"restored-{label}.db")
        subprocess.run(["sync"])
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "litesync", "restore", *extra, "-o", target, f"file://{replica}"],
                       check=True, env=env(), stdout=subprocess.DEVNULL)
        dt = time.monotonic() - t0
        out[f"{label}_s"] = dt
        out[f"{label}_mb_per_s"] = size / 1e6 / dt
    out["db_mb"] = size / 1e6
    out["replica_mb"] = sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(replica) for f in fs) / 1e6
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60, help="max-speed writer duration (default 60)")
    p.add_argument("--lag-seconds", type=float, default=20)
    p.add_argument("--lag-rate", type=float, default=200, help="steady writer rate for the lag figure")
    p.add_argument("--restore-mb", type=int, default=300)
    p.add_argument("--workdir")
    args = p.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="litesync-measure-")
    os.makedirs(work, exist_ok=True)
    try:
        lags = sorted(measure_lag(work, args.lag_seconds, args.lag_rate))
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        print(f"lag commit->local replica ({len(lags)} tx at {args.lag_rate:.0f} tx/s): "
              f"median {statistics.median(lags) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms")
        load = measure_load(work, args.seconds)
        print(f"max-speed writer {args.seconds:.0f}s (10 x 1KB rows/tx): {load['transactions']} tx, "
              f"agent CPU {load['agent_cpu_s']:.1f}s, peak RSS {load['peak_rss_mb']:.1f} MiB, "
              f"largest WAL {load['max_wal_mb']:.1f} MiB, longest writer wait {load['longest_wait_ms']:.1f} ms, "
              f"'database is locked' {load['locked_errors']}, segments shipped {load['replica_segment_mb']:.1f} MiB")
        r = measure_restore(work, args.restore_mb)
        print(f"restore of a {r['db_mb']:.0f} MB database (replica {r['replica_mb']:.0f} MB): "
              f"{r['restore_mb_per_s']:.0f} MB/s with integrity_check ({r['restore_s']:.2f}s), "
              f"{r['restore_no_integrity_check_mb_per_s']:.0f} MB/s without ({r['restore_no_integrity_check_s']:.2f}s)")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
