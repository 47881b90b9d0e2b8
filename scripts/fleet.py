"""The parts of bench.py's fleet measurement that know no agent process: a directory of many
small WAL databases, where each tool puts one database on a local replica, and the busy
writer that measures commit-to-replica lag.

Each tool's file replica of a database found in a directory is `<replica>/<file name>/...`:

    litesync    generations/G/snapshots/S-T.snap, generations/G/segments/F-L-T.seg (docs/FORMAT.md)
    Litestream  ltx/<level>/<min txid>-<max txid>.ltx (written as .tmp, then renamed)
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sqlite3
import time
from typing import Any, Callable

# A commit is on the replica when a new object for its database appears; each pending
# sample is looked at again after a tenth of its age (2 ms to 50 ms): a lag is known
# within 10% or 2 ms, and a slow tool costs the writer few directory listings.
CHECK_MIN, CHECK_MAX, CHECK_SHARE = 0.002, 0.05, 0.1
# How long after its last commit the writer keeps looking for samples not yet shipped.
DRAIN_SECONDS = 10.0


def db_names(n: int) -> list[str]:
    width = max(5, len(str(n - 1)))
    return [f"t{i:0{width}d}.db" for i in range(n)]


def make_fleet(d: str, n: int) -> list[str]:
    """Create n small WAL databases in d: copies of one template, each then given a row of its
    own. Return their file names."""
    os.makedirs(d, exist_ok=True)
    template = os.path.join(d, ".template")
    conn = sqlite3.connect(template, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, body TEXT NOT NULL)")
    conn.execute("CREATE INDEX items_name ON items (name)")
    conn.executemany("INSERT INTO items (name, body) VALUES (?, ?)",
                     [(f"row {i}", "x" * 200) for i in range(5)])
    conn.close()  # the last connection checkpoints the WAL into the file and removes it
    names = db_names(n)
    for i, name in enumerate(names):
        path = os.path.join(d, name)
        shutil.copyfile(template, path)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA synchronous=OFF")  # set-up: fsyncs would take most of the time
        conn.execute("INSERT INTO items (name, body) VALUES (?, ?)", (f"database {i}", name))
        conn.close()
    os.remove(template)
    return names


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def litesync_on_replica(root: str) -> bool:
    """True once a database's replica root holds a snapshot."""
    gens = os.path.join(root, "generations")
    return any(n.endswith(".snap") for g in _listdir(gens) for n in _listdir(os.path.join(gens, g, "snapshots")))


def litesync_commits(root: str, since_ms: int) -> set[str]:
    """Segments under a database's replica root whose last commit is at or after since_ms."""
    gens = os.path.join(root, "generations")
    return {n for g in _listdir(gens) for n in _listdir(os.path.join(gens, g, "segments"))
            if n.endswith(".seg") and int(n[-16:-4], 16) >= since_ms}


def litestream_on_replica(root: str) -> bool:
    """True once a database's replica root holds an LTX file at any level."""
    ltx = os.path.join(root, "ltx")
    return any(n.endswith(".ltx") for level in _listdir(ltx) for n in _listdir(os.path.join(ltx, level)))


def litestream_commits(root: str, since_ms: int) -> set[str]:
    """Level-0 LTX files under a database's replica root (their names carry no time)."""
    return {n for n in _listdir(os.path.join(root, "ltx", "0")) if n.endswith(".ltx")}


ON_REPLICA = {"litesync": litesync_on_replica, "litestream": litestream_on_replica}
COMMITS = {"litesync": litesync_commits, "litestream": litestream_commits}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100] of values by nearest rank: one of the values, so an
    infinite one (a commit never seen on the replica) can be the answer."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


class _Sample:
    """One sampled commit waiting to be seen on the replica."""

    def __init__(self, root: str, since_ms: int, before: set[str], committed: float) -> None:
        self.root, self.since_ms, self.before, self.committed = root, since_ms, before, committed
        self.due = committed + CHECK_MIN


def fleet_writer(tool: str, dbdir: str, replica: str, n: int, seconds: float, rate: float, sample_every: int,
                 seed: int, out: str, started: Any, stopped: Any) -> None:
    """Commit one row at a time to random databases at rate per second for seconds; every
    sample_every-th commit, note the objects already on its database's replica, then time
    how long until a new one appears. Set started and stopped around the commits; write
    {"commits", "lags_s", "longest_commit_s", "unseen": [[name, commit time], ...]} as JSON to out."""
    rng = random.Random(seed)
    names = db_names(n)
    commits_of = COMMITS[tool]
    conns: dict[str, sqlite3.Connection] = {}  # a few hundred kept open, oldest closed first
    pending: list[_Sample] = []
    lags: list[float] = []
    done = 0
    longest = 0.0
    started.set()
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        name = names[rng.randrange(n)]
        conn = _connection(conns, os.path.join(dbdir, name))
        root = os.path.join(replica, name)
        sampled = done % sample_every == 0
        since_ms = int(time.time() * 1000)
        before = commits_of(root, since_ms) if sampled else set()
        t0 = time.time()
        conn.execute("INSERT INTO items (name, body) VALUES (?, ?)", (f"busy {done}", "y" * 100))
        committed = time.time()
        longest = max(longest, committed - t0)
        if sampled:
            pending.append(_Sample(root, since_ms, before, committed))
        done += 1
        _check(pending, lags, commits_of, until=start + done / rate)
    stopped.set()
    _check(pending, lags, commits_of, until=time.monotonic() + DRAIN_SECONDS, drain=True)
    for conn in conns.values():
        conn.close()
    with open(out, "w") as f:
        json.dump({"commits": done, "lags_s": lags, "longest_commit_s": longest,
                   "unseen": [[os.path.basename(s.root), s.committed] for s in pending]}, f)


def _connection(conns: dict[str, sqlite3.Connection], path: str) -> sqlite3.Connection:
    conn = conns.pop(path, None)
    if conn is None:
        if len(conns) >= 256:
            conns.pop(next(iter(conns))).close()
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL's usual setting: no fsync per commit
    conns[path] = conn  # most recently used last
    return conn


def _check(pending: list[_Sample], lags: list[float], commits_of: Callable[[str, int], set], until: float,
           drain: bool = False) -> None:
    """Look for pending samples on the replica as they fall due, until the monotonic time
    until (or, with drain, until none is pending)."""
    while True:
        now_wall = time.time()
        for s in [s for s in pending if s.due <= now_wall]:
            if commits_of(s.root, s.since_ms) - s.before:
                lags.append(time.time() - s.committed)
                pending.remove(s)
            else:
                age = now_wall - s.committed
                s.due = now_wall + min(max(age * CHECK_SHARE, CHECK_MIN), CHECK_MAX)
        left = until - time.monotonic()
        if left <= 0 or (drain and not pending):
            return
        next_due = min((s.due for s in pending), default=now_wall + left) - time.time()
        time.sleep(max(0.0, min(left, next_due)))
