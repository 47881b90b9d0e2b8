"""Reading a live database outside the agent (``livedb.read_live``), on real SQLite files
in one thread. Every connection goes through apsw's SQLite, as litesync's own: two copies
of SQLite in one process do not see each other's locks."""

from __future__ import annotations

import os

import apsw
import pytest

from litesync.dbhash import DbHash
from litesync.errors import DatabaseError
from litesync.livedb import read_live


def _app(db: str) -> apsw.Connection:
    """An application's connection that never checkpoints and spills its changes to the WAL
    after a few pages, before it commits."""
    c = apsw.Connection(db)
    c.execute("PRAGMA journal_mode=WAL").fetchall()
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("PRAGMA cache_size=2")
    c.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    return c


def _insert(app: apsw.Connection, rows: int) -> None:
    for _ in range(rows):
        app.execute("INSERT INTO t VALUES (randomblob(3000))")


def _backup_checksum(db: str) -> tuple[int, int]:
    """Return the checksum and page count of a copy of ``db`` made with SQLite's backup API.

    The copy is in memory: a copy into a file would bump its change counter on commit,
    and page 1 would differ from the live one."""
    src = apsw.Connection(db, flags=apsw.SQLITE_OPEN_READONLY)
    copy = apsw.Connection(":memory:")
    try:
        with copy.backup("main", src, "main") as backup:
            backup.step(-1)
        page_size = copy.execute("PRAGMA page_size").fetchall()[0][0]
        image = copy.serialize("main")
    finally:
        copy.close()
        src.close()
    pages = len(image) // page_size
    hasher = DbHash()
    for pgno in range(1, pages + 1):
        hasher.set_page(pgno, image[(pgno - 1) * page_size:pgno * page_size])
    hasher.truncate(pages)
    return hasher.value, pages


def test_a_live_read_gives_the_committed_state_not_the_uncommitted_frames_after_it(tmp_path):
    """Committed frames not yet checkpointed count; the frames of a transaction that spilled
    to the WAL and rolled back stay in the file, chained to the committed ones, and do not."""
    db = str(tmp_path / "app.db")
    app = _app(db)
    try:
        with app:
            _insert(app, 20)
        committed_wal = os.path.getsize(db + "-wal")
        app.execute("BEGIN")
        _insert(app, 50)
        app.execute("ROLLBACK")
        assert os.path.getsize(db + "-wal") > committed_wal  # the spilled frames are still there

        live = read_live(db)

        assert (live.checksum, live.pages) == _backup_checksum(db)
        assert live.page_size == 4096
        with app:
            _insert(app, 1)
        assert read_live(db).checksum == _backup_checksum(db)[0] != live.checksum
    finally:
        app.close()


def test_a_live_read_leaves_the_wal_as_it_found_it(tmp_path):
    """Nothing is written and nothing is checkpointed."""
    db = str(tmp_path / "app.db")
    app = _app(db)
    try:
        with app:
            _insert(app, 20)
        with open(db + "-wal", "rb") as f:
            before = f.read()
        read_live(db)
        with open(db + "-wal", "rb") as f:
            assert f.read() == before
    finally:
        app.close()


def test_a_live_read_of_a_missing_database_names_it(tmp_path):
    db = str(tmp_path / "missing.db")
    with pytest.raises(DatabaseError, match="^database does not exist: "):
        read_live(db)
    assert not os.path.exists(db)
