"""Helpers for tests: compare databases and check committed prefixes."""

from __future__ import annotations

import hashlib
import sqlite3


def content_digest(path: str) -> dict[str, str]:
    """Return a digest of every table's rows (in rowid order) and of the schema."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = {}
        schema = conn.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name").fetchall()
        out["<schema>"] = hashlib.sha256(repr(schema).encode()).hexdigest()
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
        conn.text_factory = bytes  # updated blobs may hold text that is not UTF-8
        for name in tables:
            h = hashlib.sha256()
            for row in conn.execute(f'SELECT * FROM "{name}" ORDER BY rowid'):
                h.update(repr(row).encode())
            out[name] = h.hexdigest()
        return out
    finally:
        conn.close()


def integrity(path: str) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def committed_prefix(path: str) -> int:
    """Return k when the database holds exactly transactions 1..k of tests/workload.py; else fail."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        txs = [r[0] for r in conn.execute("SELECT tx FROM txlog ORDER BY tx")]
        k = len(txs)
        assert txs == list(range(1, k + 1)), f"transactions are not a prefix: gaps in {txs[:5]}..{txs[-5:]}"
        n = conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0]
        assert n == k, f"counter says {n}, txlog holds {k} transactions"
        rows = dict(conn.execute("SELECT tx, count(*) FROM items GROUP BY tx").fetchall())
        expected = dict(conn.execute("SELECT tx, rows FROM txlog").fetchall())
        assert rows == expected, "row counts per transaction differ from txlog"
        return k
    finally:
        conn.close()


def write_rows(db: str, n: int, label: str = "row") -> None:
    """Append ``n`` rows ``"<label> <i>"`` to table t of ``db`` (WAL mode), then close: the
    last connection checkpoints and removes the WAL."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t(v) VALUES (?)", [(f"{label} {i}",) for i in range(n)])
    conn.close()
