"""An application for disk-full tests (stdlib sqlite3, its own process): it commits at a
steady rate and keeps going through errors, as a service would, and says what it saw.

Each transaction ``n`` writes ``--bytes`` of incompressible data: by default it replaces
the payload of one of ``--rows`` rows (the database keeps its size: the WAL is all that
grows, and SQLite reuses it after each checkpoint); with ``--grow`` it inserts a new row
(the database grows). Every commit also sets ``counter.n = n``, so a restored copy tells
how far it got. A failed commit is rolled back, counted, and the next one tried after
``--pause``; nothing is retried under the same ``n``.

It runs until SIGTERM (or ``--seconds``), then prints one JSON line: commits, errors, the
commits before the first error, the first and last error messages, the (wall clock) time
of the first error and of the last, and the longest run of failed commits.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import sys
import time


def prepare(path: str, rows: int, size: int) -> None:
    """Create the table with ``rows`` rows of ``size`` random bytes (WAL mode)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS data (id INTEGER PRIMARY KEY, payload BLOB)")
    conn.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER)")
    conn.execute("INSERT OR IGNORE INTO counter VALUES (1, 0)")
    rng = random.Random(0)
    conn.execute("BEGIN")
    for i in range(rows):
        conn.execute("INSERT OR REPLACE INTO data VALUES (?, ?)", (i, rng.randbytes(size)))
    conn.execute("COMMIT")
    conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db")
    ap.add_argument("--prepare", type=int, metavar="ROWS", help="create ROWS rows and exit")
    ap.add_argument("--rows", type=int, default=1000, help="rows updated at random (default 1000)")
    ap.add_argument("--bytes", type=int, default=1000, help="bytes written per transaction (default 1000)")
    ap.add_argument("--rate", type=float, default=200, help="transactions per second (default 200)")
    ap.add_argument("--grow", action="store_true", help="insert rows instead of updating them")
    ap.add_argument("--seconds", type=float, help="stop after this long")
    ap.add_argument("--pause", type=float, default=0.01, help="seconds to wait after a failed commit")
    args = ap.parse_args()
    if args.prepare is not None:
        prepare(args.db, args.prepare, args.bytes)
        return 0
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    conn = sqlite3.connect(args.db, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    n = conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0]
    rng = random.Random(n)
    report = {"commits": 0, "errors": 0, "commits_before_first_error": None, "first_error": None, "last_error": None, "first_error_at": None,
              "last_error_at": None, "longest_failing_run": 0, "last_n": n}
    failing = 0
    t0 = time.monotonic()
    next_at = t0
    while not stop["now"] and (args.seconds is None or time.monotonic() - t0 < args.seconds):
        next_at += 1 / args.rate
        try:
            conn.execute("BEGIN IMMEDIATE")
            payload = rng.randbytes(args.bytes)
            if args.grow:
                conn.execute("INSERT INTO data (payload) VALUES (?)", (payload,))
            else:
                conn.execute("UPDATE data SET payload = ? WHERE id = ?", (payload, rng.randrange(args.rows)))
            conn.execute("UPDATE counter SET n = ? WHERE id = 1", (n + 1,))
            conn.execute("COMMIT")
            n += 1
            report["commits"] += 1
            report["last_n"] = n
            failing = 0
        except sqlite3.Error as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            now = round(time.time(), 3)
            report["errors"] += 1
            if report["commits_before_first_error"] is None:
                report["commits_before_first_error"] = report["commits"]
            report["first_error"] = report["first_error"] or str(e)
            report["first_error_at"] = report["first_error_at"] or now
            report["last_error"], report["last_error_at"] = str(e), now
            failing += 1
            report["longest_failing_run"] = max(report["longest_failing_run"], failing)
            time.sleep(args.pause)
        time.sleep(max(0.0, next_at - time.monotonic()))
    conn.close()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
