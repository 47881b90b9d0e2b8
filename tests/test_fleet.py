"""One agent on a directory of a few hundred databases: every one replicated, on a bounded
number of threads (the engine's pools), whatever the number of databases."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import time

from dbcheck import content_digest
from proc import litesync, start_litesync, stop, wait_for

N = 300
MAX_THREADS = 64


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


def snapshots_in(root: str) -> set[str]:
    """The databases (their directory under the replica) that hold a snapshot."""
    found = set()
    for dirpath, _dirs, files in os.walk(root):
        if any(f.endswith(".snap") for f in files):
            found.add(os.path.relpath(dirpath, root).split(os.sep)[0])
    return found


def test_an_agent_replicates_hundreds_of_databases_on_bounded_threads(tmp_path):
    tenants, store = tmp_path / "tenants", str(tmp_path / "store")
    tenants.mkdir()
    template = str(tmp_path / "template.db")
    conn = sqlite3.connect(template)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.close()
    names = [f"tenant{i:04d}.db" for i in range(N)]
    for name in names:
        shutil.copyfile(template, tenants / name)
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"dbs:\n  - dir: {tenants}\n    replicas:\n      - url: file://{store}\n")
    agent = start_litesync("--config", str(cfg), "replicate", log_path=str(tmp_path / "agent.log"))
    try:
        most = 0

        def all_replicated() -> bool:
            nonlocal most
            most = max(most, threads_of(agent.pid))
            return len(snapshots_in(store)) == N

        wait_for(all_replicated, 120, 0.5)
        rng = random.Random(7)
        written = rng.sample(names, 40)
        for name in written:
            c = sqlite3.connect(tenants / name, isolation_level=None)
            c.execute("INSERT INTO t(v) VALUES (?)", (f"{name} row",))
            c.close()
        # A database's last connection checkpoints: wait for every segment to reach the replica.
        time.sleep(2)
        most = max(most, threads_of(agent.pid))
    finally:
        assert stop(agent) == 0
    assert most <= MAX_THREADS, f"{most} threads for {N} databases"
    for name in rng.sample(written, 5) + rng.sample(names, 5):
        out = str(tmp_path / f"restored-{name}")
        r = litesync("restore", "-o", out, f"file://{store}/{name}")
        assert r.returncode == 0, r.stderr
        assert content_digest(out) == content_digest(str(tenants / name))
