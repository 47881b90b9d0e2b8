"""A writer process for tests and benchmarks (stdlib sqlite3, its own process).

Every transaction ``n`` inserts rows tagged ``tx = n``, records ``(n, rows, digest)`` in
``txlog`` and sets ``counter.n = n``, so a restored copy can be checked to hold exactly
transactions 1..k. ``--mixed`` adds large transactions, multi-MB blobs, updates, deletes,
CREATE INDEX, ALTER TABLE and VACUUM.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import sys
import time


def connect(path: str, autocheckpoint: int | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    if autocheckpoint is not None:
        conn.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")
    conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, tx INTEGER, payload BLOB)")
    conn.execute("CREATE TABLE IF NOT EXISTS txlog (tx INTEGER PRIMARY KEY, rows INTEGER, digest TEXT)")
    conn.execute("CREATE TABLE IF NOT EXISTS scratch (id INTEGER PRIMARY KEY, tx INTEGER, payload BLOB)")
    conn.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER)")
    conn.execute("INSERT OR IGNORE INTO counter VALUES (1, 0)")
    return conn


def one_tx(conn: sqlite3.Connection, n: int, rng: random.Random, mixed: bool, row_size: int, rows: int,
           incompressible: bool = False) -> None:
    conn.execute("BEGIN IMMEDIATE")
    h = hashlib.sha256()
    count = rows
    big = mixed and n % 97 == 0
    if big:
        count = rows * 50
    for _ in range(count):
        payload = rng.randbytes(row_size) if incompressible else rng.randbytes(row_size // 2).hex().encode()
        h.update(payload)
        conn.execute("INSERT INTO items (tx, payload) VALUES (?, ?)", (n, payload))
    if mixed:
        if n % 151 == 0:
            blob = rng.randbytes(3 << 20)
            h.update(blob)
            conn.execute("INSERT INTO items (tx, payload) VALUES (?, ?)", (n, blob))
            count += 1
        conn.execute("INSERT INTO scratch (tx, payload) VALUES (?, ?)", (n, rng.randbytes(rng.randrange(10, 3000))))
        if n % 13 == 0:
            conn.execute("UPDATE scratch SET payload = payload || x'00' WHERE id IN "
                         "(SELECT id FROM scratch ORDER BY random() LIMIT 5)")
        if n % 29 == 0:
            conn.execute("DELETE FROM scratch WHERE id IN (SELECT id FROM scratch ORDER BY random() LIMIT 20)")
        if n == 200:
            conn.execute("CREATE INDEX IF NOT EXISTS items_tx ON items (tx)")
        if n == 300:
            conn.execute("ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'x'")
    conn.execute("INSERT INTO txlog VALUES (?, ?, ?)", (n, count, h.hexdigest()))
    conn.execute("UPDATE counter SET n = ? WHERE id = 1", (n,))
    conn.execute("COMMIT")
    if mixed and n % 250 == 0:
        conn.execute("VACUUM")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("db")
    p.add_argument("--count", type=int, default=0, help="transactions to write (0 = until killed)")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long")
    p.add_argument("--rate", type=float, default=0, help="transactions per second (0 = max speed)")
    p.add_argument("--rows", type=int, default=3)
    p.add_argument("--row-size", type=int, default=200)
    p.add_argument("--mixed", action="store_true")
    p.add_argument("--incompressible", action="store_true", help="rows of random bytes, not hex text")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--autocheckpoint", type=int, default=None)
    p.add_argument("--commit-log", help="append 'n commit_time' per transaction (line-buffered)")
    p.add_argument("--max-wait-log", help="write the longest commit wait (s) and lock errors here at exit")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    conn = connect(args.db, args.autocheckpoint)
    n = conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0]
    log = open(args.commit_log, "a", buffering=1) if args.commit_log else None
    start = time.monotonic()
    longest = 0.0
    locked = 0
    done = 0
    try:
        while (not args.count or done < args.count) and (not args.seconds or time.monotonic() - start < args.seconds):
            n += 1
            t0 = time.monotonic()
            while True:
                try:
                    one_tx(conn, n, rng, args.mixed, args.row_size, args.rows, args.incompressible)
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) and "busy" not in str(e):
                        raise
                    locked += 1
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            longest = max(longest, time.monotonic() - t0)
            if log:
                log.write(f"{n} {time.time():.6f}\n")
            done += 1
            if args.rate:
                target = start + done / args.rate
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
    finally:
        if args.max_wait_log:
            with open(args.max_wait_log, "w") as f:
                f.write(f"{longest:.6f} {locked} {done}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
