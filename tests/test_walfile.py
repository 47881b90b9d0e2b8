"""The agent's reads of a database's -wal and wal-index (``walfile.WalFile``), on a real
WAL database written through apsw in the same thread (the reads are plain file I/O)."""

from __future__ import annotations

import os

from litesync import wal
from litesync.walfile import WalFile

from conftest import apsw_app


def _app(db: str):
    return apsw_app(db)


def _walfile(db: str) -> tuple[WalFile, dict[str, float]]:
    stats: dict[str, float] = {"max_wal_bytes": 0}
    return WalFile(db + "-wal", db + "-shm", stats), stats


def test_no_wal_reads_as_no_header_and_size_zero(tmp_path):
    wf, stats = _walfile(str(tmp_path / "none.db"))
    assert wf.read_at(0, 32) == b"" and wf.header() is None and wf.size() == 0
    assert wf.read_index() == b"" and stats["max_wal_bytes"] == 0
    wf.close()


def test_the_header_and_the_wal_index_count_the_committed_frames(tmp_path):
    db = str(tmp_path / "app.db")
    app = _app(db)
    wf, stats = _walfile(db)
    try:
        for _ in range(3):
            app.execute("INSERT INTO t VALUES (randomblob(100))")
        hdr = wf.header()
        assert hdr is not None and hdr.page_size == 4096
        frames = wf.index_frames(hdr)
        assert frames is not None and frames >= 3
        assert wf.size() == os.path.getsize(db + "-wal") == hdr.frame_offset(frames + 1)
        assert stats["max_wal_bytes"] == wf.size()
        # the frames counted chain from the header, the last one a commit
        txs = list(wal.scan(wf.read_at, hdr, 1, (hdr.checksum1, hdr.checksum2), max_frames=frames))
        assert txs and txs[-1].end_index == frames
    finally:
        wf.close()
        app.close()


def test_after_a_complete_checkpoint_the_next_writer_restarts_the_wal_with_new_salts(tmp_path):
    """A complete checkpoint leaves the WAL's bytes in the file, every frame backfilled;
    the next commit restarts it from the start with new salts."""
    db = str(tmp_path / "app.db")
    app = _app(db)
    wf, _stats = _walfile(db)
    try:
        app.execute("INSERT INTO t VALUES (randomblob(100))")
        before = wf.header()
        assert before is not None
        app.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        assert wf.size() > 0  # the bytes are still there
        assert wal.index_checkpointed_in_full(wf.read_index())
        app.execute("INSERT INTO t VALUES (randomblob(100))")
        after = wf.header()
        assert after is not None and after.salts != before.salts
    finally:
        wf.close()
        app.close()


def test_a_wal_replaced_under_an_open_descriptor_is_read_through_it_until_closed(tmp_path):
    """The descriptor stays open (closing one would drop SQLite's locks of this process):
    the file read is the one opened first, until ``close``."""
    path = str(tmp_path / "x-wal")
    with open(path, "wb") as f:
        f.write(b"a" * 64)
    wf = WalFile(path, str(tmp_path / "x-shm"), {"max_wal_bytes": 0})
    assert wf.read_at(0, 4) == b"aaaa"
    os.unlink(path)
    with open(path, "wb") as f:
        f.write(b"b" * 64)
    assert wf.read_at(0, 4) == b"aaaa"
    wf.close()
    assert wf.read_at(0, 4) == b"bbbb"
    wf.close()
