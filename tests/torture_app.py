"""The torture suite's writer: a deterministic history of transactions, and the process that runs it.

Transaction ``k``, attempt ``a``, is a pure function of ``(seed, k, a, kind)`` and of the
database state before it (the committed transactions ``1..k-1``), so the checker can
rebuild the state after any ``k`` by replaying the committed history in a fresh database.
Every transaction ends by setting ``meta`` to ``(k, a)``: a restored copy names the
transaction it claims to hold, and a phantom of an attempt that never committed differs
from the attempt that did (the content depends on ``a``).

The process (``python tests/torture_app.py DB LOG ...``) appends to the history log
``LOG``, one line per event:

    start PID PROFILE       this process started
    observed K A            meta read at start: the last committed transaction
    begin K A KIND          about to run attempt A of transaction K
    commit K A              COMMIT returned
    exit PID                this process finished normally

It uses apsw (SQLite 3.54): the stdlib ``sqlite3`` of this machine is 3.40, which has the
WAL-reset bug of concurrent checkpointers (DESIGN.md); a failure caused by that bug
would be blamed on litesync.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import time
from collections import Counter

import apsw

# Kinds of transaction, and how often each profile draws them.
PROFILES: dict[str, dict[str, int]] = {
    "small": {"small": 8, "update": 2, "kv": 2, "delete": 1, "user_version": 1},
    "mixed": {"small": 4, "update": 2, "delete": 2, "kv": 1, "schema": 1, "blob": 1, "vacuum": 1, "huge": 1,
              "shrink": 1, "user_version": 1},
    "huge": {"huge": 3, "delete": 2, "shrink": 2, "blob": 1, "update": 1, "vacuum": 1},
    "schema": {"schema": 4, "small": 2, "vacuum": 1, "delete": 1, "shrink": 1},
    "grow": {"grow": 1},  # the --long variant: 16 MiB transactions until the database passes 1 GiB
}

# Kinds that add rows; past --max-db-bytes a writer deletes instead (the log says which ran).
GROWING = ("small", "huge", "blob", "vacuum", "user_version", "kv")

# Physical steps run before a "vacuum" transaction, outside it: no logical change.
VACUUM_STEPS = (
    ("VACUUM",),
    ("PRAGMA auto_vacuum=NONE", "VACUUM"),
    ("PRAGMA auto_vacuum=FULL", "VACUUM"),
    ("PRAGMA auto_vacuum=INCREMENTAL", "VACUUM"),
    ("PRAGMA incremental_vacuum",),
)


# --- the deterministic history ------------------------------------------------------

def tx_rng(seed: int, k: int, attempt: int, what: str = "body") -> random.Random:
    """The PRNG for one part of one attempt (string seeds hash with SHA-512: stable across runs)."""
    return random.Random(f"{seed}/{k}/{attempt}/{what}")


def pick_kind(seed: int, k: int, attempt: int, profile: str) -> str:
    """The kind of transaction ``k`` in a process of ``profile`` (transaction 1 creates the schema)."""
    if k == 1:
        return "init"
    weights = PROFILES[profile]
    return tx_rng(seed, k, attempt, "kind").choices(list(weights), list(weights.values()))[0]


def run_tx(conn, seed: int, k: int, attempt: int, kind: str) -> None:
    """Execute the body of transaction ``k`` and set meta; the caller holds BEGIN..COMMIT."""
    rng = tx_rng(seed, k, attempt)
    BODIES[kind](conn, rng, k)
    conn.execute("UPDATE meta SET k = ?, a = ? WHERE id = 1", (k, attempt))


def sized_blob(rng: random.Random, size: int) -> bytes:
    """``size`` bytes from the PRNG: a random half, repeated (so compression has some work)."""
    half = rng.randbytes((size + 1) // 2)
    return (half + half)[:size]


def data_tables(conn) -> list[str]:
    """The tables rows are written to, in name order (the state decides, so replay agrees)."""
    rows = conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' AND "
                        "(name = 'items' OR name GLOB 't_*') ORDER BY name").fetchall()
    return [r[0] for r in rows]


def id_range(conn, table: str) -> tuple[int, int] | None:
    lo, hi = conn.execute(f'SELECT min(id), max(id) FROM "{table}"').fetchall()[0]
    return None if lo is None else (lo, hi)


def insert_rows(conn, rng: random.Random, k: int, table: str, count: int, lo: int, hi: int) -> None:
    """Insert ``count`` rows with explicit ids ``k * 100000 + i`` and blobs of lo..hi bytes."""
    for i in range(count):
        conn.execute(f'INSERT INTO "{table}" (id, k, v) VALUES (?, ?, ?)',
                     (k * 100_000 + i, k, sized_blob(rng, rng.randint(lo, hi))))


def body_init(conn, rng: random.Random, k: int) -> None:
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v BLOB)")
    conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, val TEXT) WITHOUT ROWID")
    conn.execute("CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), k INTEGER, a INTEGER)")
    conn.execute("INSERT INTO meta VALUES (1, 0, 0)")
    insert_rows(conn, rng, k, "items", 10, 10, 500)


def body_small(conn, rng: random.Random, k: int) -> None:
    insert_rows(conn, rng, k, rng.choice(data_tables(conn)), rng.randint(1, 5), 10, 2000)


def body_huge(conn, rng: random.Random, k: int) -> None:
    """0.5-4 MB of rows: with the app's tiny cache_size this spills pages before COMMIT."""
    total = rng.randint(1 << 19, 4 << 20)
    size = rng.randint(300, 4000)
    insert_rows(conn, rng, k, rng.choice(data_tables(conn)), total // size, size // 2, size)


def body_grow(conn, rng: random.Random, k: int) -> None:
    """16 MiB into a table no other kind touches: the database stays past 1 GiB once it got there."""
    conn.execute("CREATE TABLE IF NOT EXISTS bulk (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v BLOB)")
    insert_rows(conn, rng, k, "bulk", 4096, 4000, 4096)


def body_blob(conn, rng: random.Random, k: int) -> None:
    table = rng.choice(data_tables(conn))
    conn.execute(f'INSERT INTO "{table}" (id, k, v) VALUES (?, ?, ?)',
                 (k * 100_000, k, sized_blob(rng, rng.randint(64 << 10, 3 << 20))))


def body_update(conn, rng: random.Random, k: int) -> None:
    table = rng.choice(data_tables(conn))
    span = id_range(conn, table)
    if span is None:
        return body_small(conn, rng, k)
    lo = rng.randint(*span)
    hi = lo + rng.choice([1, 100, 10_000, 200_000])
    if rng.random() < 0.5:
        conn.execute(f'UPDATE "{table}" SET k = ?, v = ? WHERE id BETWEEN ? AND ?',
                     (k, sized_blob(rng, rng.randint(0, 6000)), lo, hi))
    else:  # rows grow or shrink by different amounts: overflow chains change (|| makes text: cast back)
        conn.execute(f'UPDATE "{table}" SET v = CAST(substr(v, ?) || zeroblob(?) AS BLOB) WHERE id BETWEEN ? AND ?',
                     (rng.randint(1, 300), rng.randint(0, 300), lo, hi))


def body_delete(conn, rng: random.Random, k: int) -> None:
    table = rng.choice(data_tables(conn))
    if rng.random() < 0.5:
        span = id_range(conn, table) or (0, 0)
        lo = rng.randint(*span)
        conn.execute(f'DELETE FROM "{table}" WHERE id BETWEEN ? AND ?', (lo, lo + rng.choice([10, 100_000, 500_000])))
    else:
        m = rng.randint(2, 5)
        conn.execute(f'DELETE FROM "{table}" WHERE id % ? = ?', (m, rng.randrange(m)))


def body_shrink(conn, rng: random.Random, k: int) -> None:
    """Insert, then delete most of a table and free pages in the same transaction."""
    if rng.random() < 0.5:
        body_huge(conn, rng, k)
    body_delete(conn, rng, k)
    conn.execute("PRAGMA incremental_vacuum").fetchall()  # one page per step: fetch them all


def body_kv(conn, rng: random.Random, k: int) -> None:
    for _ in range(rng.randint(1, 20)):
        conn.execute("INSERT INTO kv (key, val) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET val = excluded.val",
                     (f"key-{rng.randrange(500):03d}", f"{k}:" + "v" * rng.randint(0, 300)))
    conn.execute("DELETE FROM kv WHERE key = ?", (f"key-{rng.randrange(500):03d}",))


def body_schema(conn, rng: random.Random, k: int) -> None:
    tables = data_tables(conn)
    table = rng.choice(tables)
    change = rng.choice(["create", "create", "index", "column", "drop"])
    if change == "create" or (change == "drop" and len(tables) == 1):
        conn.execute(f'CREATE TABLE "t_{k}" (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v BLOB)')
        insert_rows(conn, rng, k, f"t_{k}", rng.randint(1, 50), 10, 3000)
    elif change == "index":
        conn.execute(f'CREATE INDEX "ix_{k}" ON "{table}" ({rng.choice(["k", "v", "k, id"])})')
    elif change == "column":
        conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "c_{k}" INTEGER DEFAULT {k}')
    else:
        conn.execute(f'DROP TABLE "{rng.choice([t for t in tables if t != "items"])}"')


def body_user_version(conn, rng: random.Random, k: int) -> None:
    conn.execute(f"PRAGMA user_version = {k}")
    body_small(conn, rng, k)


BODIES = {"init": body_init, "small": body_small, "huge": body_huge, "grow": body_grow, "blob": body_blob,
          "update": body_update, "delete": body_delete, "shrink": body_shrink, "kv": body_kv,
          "schema": body_schema, "user_version": body_user_version, "vacuum": body_small}


def logical_digest(conn) -> str:
    """SHA-256 of the schema (not rootpages), user_version and every row in key order."""
    h = hashlib.sha256()
    schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name").fetchall()
    h.update(repr(schema).encode())
    h.update(repr(conn.execute("PRAGMA user_version").fetchall()).encode())
    for (table,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name").fetchall():
        ncols = len(conn.execute(f'PRAGMA table_info("{table}")').fetchall())
        order = ", ".join(str(i + 1) for i in range(ncols))  # the key column comes first in every table
        for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}'):
            h.update(repr(row).encode())
    return h.hexdigest()


# --- the history log ------------------------------------------------------------------

def read_log(path: str) -> list[list[str]]:
    """The log's lines split in words (a torn last line cannot happen: one write() per line)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


class HistoryLog:
    """Appends one line per event with a single write() to an O_APPEND file.

    Not fsynced on purpose: the faults are process kills, which never lose the page
    cache, and an fsync here would be counted by strace's fault injection on fsync.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, *words: object) -> None:
        os.write(self.fd, (" ".join(map(str, words)) + "\n").encode())


# --- the process ----------------------------------------------------------------------

def open_db(args: argparse.Namespace) -> apsw.Connection:
    """Open the database with this process's settings; a new database gets the page size and auto_vacuum."""
    conn = apsw.Connection(args.db)
    conn.setbusytimeout(20_000)
    if conn.execute("PRAGMA page_count").fetchall()[0][0] == 0:
        conn.execute(f"PRAGMA page_size = {args.page_size}")
        conn.execute(f"PRAGMA auto_vacuum = {args.auto_vacuum}")
    conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute(f"PRAGMA synchronous = {args.synchronous}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {args.autocheckpoint}").fetchall()
    conn.execute(f"PRAGMA cache_size = {args.cache_size}")
    return conn


def observe(conn) -> tuple[int, int]:
    """The (k, attempt) the database says was committed last; (0, 0) before transaction 1."""
    try:
        return tuple(conn.execute("SELECT k, a FROM meta WHERE id = 1").fetchall()[0])
    except apsw.SQLError:  # no meta table yet
        return 0, 0


def physical_step(conn, seed: int, k: int, attempt: int) -> None:
    """VACUUM or a change of auto_vacuum: rewrites pages, changes no row."""
    for sql in tx_rng(seed, k, attempt, "vacuum").choice(VACUUM_STEPS):
        conn.execute(sql).fetchall()


def db_bytes(conn) -> int:
    return conn.execute("PRAGMA page_count").fetchall()[0][0] * conn.execute("PRAGMA page_size").fetchall()[0][0]


def write(conn, log: HistoryLog, args: argparse.Namespace, k: int, attempt: int) -> None:
    """Log, run and commit attempt ``attempt`` of transaction ``k``; log the commit."""
    kind = pick_kind(args.seed, k, attempt, args.profile)
    if kind in GROWING and args.max_db_bytes and db_bytes(conn) > args.max_db_bytes:
        kind = "delete"  # keeps runs short: restores, replay and VACUUM cost what the database weighs
    log.append("begin", k, attempt, kind)
    if kind == "vacuum":
        physical_step(conn, args.seed, k, attempt)
    conn.execute("BEGIN IMMEDIATE")
    run_tx(conn, args.seed, k, attempt, kind)
    conn.execute("COMMIT")
    log.append("commit", k, attempt)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = Counter(int(w[1]) for w in read_log(args.log) if w[0] == "begin")
    log = HistoryLog(args.log)
    log.append("start", os.getpid(), args.profile)
    conn = open_db(args)
    k, attempt = observe(conn)
    log.append("observed", k, attempt)
    pause = random.Random(f"{args.seed}/pause/{k}")
    for _ in range(args.max_tx):
        if time.time() >= args.until:
            break
        k += 1
        began[k] += 1  # attempt numbers are never reused: a phantom of an old attempt is visible
        write(conn, log, args, k, began[k])
        if args.grow_to and db_bytes(conn) > args.grow_to:
            break
        time.sleep(pause.uniform(0, args.max_pause))
    conn.close()
    log.append("exit", os.getpid())
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("db")
    p.add_argument("log")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--profile", choices=sorted(PROFILES), default="small")
    p.add_argument("--page-size", type=int, default=4096)
    p.add_argument("--auto-vacuum", choices=["NONE", "FULL", "INCREMENTAL"], default="NONE")
    p.add_argument("--synchronous", choices=["OFF", "NORMAL", "FULL", "EXTRA"], default="NORMAL")
    p.add_argument("--autocheckpoint", type=int, default=1000, help="PRAGMA wal_autocheckpoint (0: off)")
    p.add_argument("--cache-size", type=int, default=-2000, help="PRAGMA cache_size (10: spill huge transactions)")
    p.add_argument("--max-tx", type=int, default=1_000_000)
    p.add_argument("--until", type=float, default=float("inf"), help="stop starting transactions at this Unix time")
    p.add_argument("--max-pause", type=float, default=0.02, help="most seconds to sleep between transactions")
    p.add_argument("--grow-to", type=int, default=0, help="stop once the database exceeds this many bytes")
    p.add_argument("--max-db-bytes", type=int, default=0, help="past this size, delete instead of adding rows")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
