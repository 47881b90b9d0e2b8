#!/usr/bin/env python3
"""Measure how closely max-bandwidth holds over a long run (local replica, encrypted).

    python scripts/measure_bandwidth.py [--rate 2MB/s] [--seconds 60] [--workdir DIR]

A writer commits incompressible rows at twice the limit while `litesync replicate` ships
them to a file replica limited by max-bandwidth; the bytes stored in the replica are counted
over --seconds (after a warm-up). Then `litesync restore` downloads the replica under the
same limit, and its bytes read per second are reported too. Installs nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from litesync.config import parse_bandwidth  # noqa: E402

WARM_UP = 5.0
ROW = 64 << 10


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITESYNC_"))}


def stored_bytes(root: str) -> int:
    total = 0
    for d, _dirs, files in os.walk(root):
        for f in files:
            if not f.endswith(".tmp"):
                try:
                    total += os.stat(os.path.join(d, f)).st_size
                except FileNotFoundError:
                    pass
    return total


def write(db: str, bytes_per_second: float, stop: threading.Event) -> None:
    c = sqlite3.connect(db, isolation_level=None, timeout=30)
    t0, n = time.monotonic(), 0
    while not stop.is_set():
        c.execute("INSERT INTO t VALUES (?)", (os.urandom(ROW),))
        n += 1
        delay = t0 + n * ROW / bytes_per_second - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    c.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", default="2MB/s")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--workdir")
    args = p.parse_args()
    rate = parse_bandwidth(args.rate)
    work = args.workdir or tempfile.mkdtemp(prefix="litesync-bw-")
    db, replica = os.path.join(work, "app.db"), os.path.join(work, "replica")
    c = sqlite3.connect(db)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    c.close()
    cfg = os.path.join(work, "litesync.yml")
    with open(cfg, "w") as f:
        f.write(f"compaction: off\ndbs:\n  - path: {db}\n    replicas:\n      - url: file://{replica}\n"
                f"        max-bandwidth: {args.rate}\n        encryption-key: {'ab' * 32}\n")
    log = os.path.join(work, "agent.log")
    agent = subprocess.Popen([sys.executable, "-m", "litesync", "--config", cfg, "replicate"],
                             stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env())
    stop = threading.Event()
    writer = threading.Thread(target=write, args=(db, 2 * rate, stop), daemon=True)
    writer.start()
    try:
        time.sleep(WARM_UP)
        start_t, start_b = time.monotonic(), stored_bytes(replica)
        samples = []
        while time.monotonic() - start_t < args.seconds:
            time.sleep(10.0 - (time.monotonic() - start_t) % 10.0)
            samples.append((time.monotonic() - start_t, stored_bytes(replica) - start_b))
            t, b = samples[-1]
            print(f"upload   {t:5.1f}s  {b / 1e6:8.2f} MB  {b / t / 1e6:6.3f} MB/s  "
                  f"({(b / t - rate) / rate * 100:+.2f}% of the limit)", flush=True)
    finally:
        stop.set()
        writer.join()
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    out = os.path.join(work, "restored.db")
    size = stored_bytes(replica)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "litesync", "--config", cfg, "restore", "--no-integrity-check",
                        "-o", out, db], capture_output=True, text=True, env=env())
    seconds = time.monotonic() - t0
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
        return 1
    print(r.stdout.strip())
    print(f"restore  {seconds:5.1f}s  {size / 1e6:8.2f} MB  {size / seconds / 1e6:6.3f} MB/s  "
          f"({(size / seconds - rate) / rate * 100:+.2f}% of the limit, process start included)")
    if not args.workdir:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
