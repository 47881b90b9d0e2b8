"""An application that sets no busy timeout, beside the agent: every `database is locked`
it meets lies in a hold of the write lock the agent reports, and a busy timeout absorbs
them all when transactions ask for the write lock first (scripts/locks.py's app, a real
agent process)."""

from __future__ import annotations

import os
import re
import sqlite3
import sys

from proc import kill9, litesync, start_agent_ready

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import locks

APP_SECONDS = 3.0


def start_agent(tmp_path, db: str):
    """Start `litesync replicate` on ``db``, checkpointing every 20 pages so that a few
    seconds of the app make it take the write lock many times."""
    os.makedirs(tmp_path / "replica")
    config = tmp_path / "litesync.yml"
    config.write_text(f"dbs:\n  - path: {db}\n    checkpoint-pages: 20\n"
                      f"    replicas:\n      - url: file://{tmp_path / 'replica'}\n")
    return start_agent_ready("--config", str(config), log_path=str(tmp_path / "agent.log"))


def test_a_busy_timeout_0_app_fails_only_inside_the_seals_the_agent_reports(tmp_path):
    db = str(tmp_path / "app.db")
    locks.make_app_db(db)
    alone = locks.app_in_process(db, 1.0, 0)
    assert alone["commits"] > 0 and alone["failures"] == alone["read_failures"] == 0, alone
    agent = start_agent(tmp_path, db)
    try:
        before = locks.seal_figures(db)
        seen = locks.app_in_process(db, APP_SECONDS, 0)
        after = locks.seal_figures(db)
        shown = litesync("status", db).stdout
    finally:
        kill9(agent)
    seals = after["seals"] - before["seals"]
    held = re.search(r"^  write lock held (\d+) times, ([\d.]+)s in all, longest ([\d.]+) ms$", shown, re.M)
    assert held and int(held[1]) >= after["seals"], shown
    assert seals >= 2, (before, after)  # each checkpoint takes two seals, and the app wrote > 20 pages
    assert 0 < after["max_seal_seconds"] <= after["seal_seconds"], after
    # The seals are the agent's only holds of the write lock here (no WAL truncation), and a
    # write fails only while one is held: each run of failed writes lies in a seal of its own.
    assert after["wal_truncations"] == 0, after
    assert seen["blocked_spans"] <= seals, (seen, seals)
    # A deferred BEGIN takes no lock, and the first INSERT takes the write lock for the rest of
    # the transaction: that INSERT is where a seal shows, nowhere else.
    assert set(seen["failures_by_statement"]) <= {"INSERT"}, seen
    assert seen["read_failures"] == 0, seen
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM items").fetchone()[0]
    assert rows == locks.BASE_ROWS + locks.ROWS_PER_TX * (alone["commits"] + seen["commits"])


def test_a_busy_timeout_absorbs_every_seal_when_a_transaction_asks_for_the_write_lock_first(tmp_path):
    """As the README says: a busy timeout, and a write transaction that either writes first
    or begins with BEGIN IMMEDIATE (a read-first deferred one is not helped by the timeout:
    SQLite calls no busy handler to turn a read transaction into a write transaction)."""
    db = str(tmp_path / "app.db")
    locks.make_app_db(db)
    agent = start_agent(tmp_path, db)
    try:
        before = locks.seal_figures(db)
        seen = [locks.app_in_process(db, APP_SECONDS / 2, 0, variant)
                for variant in (locks.Variant(1000), locks.Variant(1000, immediate=True, read_first=True))]
        after = locks.seal_figures(db)
    finally:
        kill9(agent)
    assert after["seals"] - before["seals"] >= 2, (before, after)
    for app in seen:
        assert app["commits"] > 0 and app["failures"] == app["read_failures"] == 0, app
