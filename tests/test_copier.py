"""The frame copier (``copier.FrameCopier``) on a real WAL database, in one thread and
without the agent: the application's connection goes through apsw (two copies of SQLite in
one process do not see each other's locks); the copier itself only reads the -wal and -shm
files and writes the spool. Its state is a plain object standing in for the agent's."""

from __future__ import annotations

from dataclasses import dataclass, field

import apsw
import pytest

from litesync import layout, wal
from litesync.copier import Diverged, FrameCopier
from litesync.dbhash import DbHash
from litesync.livedb import WalChanged
from litesync.segment import NO_LINK, SegmentReader, TxInfo, WalPosition
from litesync.spool import Spool
from litesync.walfile import WalFile

from conftest import apsw_app

GEN = 0x0000018C00000001


@dataclass
class State:
    """What the copier reads and advances (the agent's replication state)."""

    spool: Spool
    page_size: int = 4096
    db_id: str = "test-db"
    generation: int = GEN
    next_seq: int = 0
    end_link: bytes = NO_LINK
    pos: WalPosition = field(default_factory=WalPosition)
    hasher: DbHash = field(default_factory=DbHash)
    stats: dict[str, float] = field(default_factory=lambda: {"segments": 0, "transactions": 0, "max_wal_bytes": 0})
    clock: int = 1_700_000_000_000

    def recorded_ms(self) -> int:
        self.clock += 1
        return self.clock


def _app(db: str):
    return apsw_app(db)


def _state_of(db: str) -> DbHash:
    """The committed state of ``db``, hashed from a copy made with SQLite's backup API."""
    src = apsw.Connection(db, flags=apsw.SQLITE_OPEN_READONLY)
    copy = apsw.Connection(":memory:")
    try:
        with copy.backup("main", src, "main") as backup:
            backup.step(-1)
        ps = copy.execute("PRAGMA page_size").fetchall()[0][0]
        image = copy.serialize("main")
    finally:
        copy.close()
        src.close()
    hasher = DbHash()
    pages = len(image) // ps
    for pgno in range(1, pages + 1):
        hasher.set_page(pgno, image[(pgno - 1) * ps:pgno * ps])
    hasher.truncate(pages)
    return hasher


@pytest.fixture
def setup(tmp_path):
    """An app whose WAL was just emptied (every page in the database file), and a copier
    positioned at the start of that WAL with the file's state as the state copied."""
    db = str(tmp_path / "app.db")
    app = _app(db)
    app.execute("INSERT INTO t VALUES (randomblob(5000))")
    app.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    state = State(Spool(str(tmp_path / "spool")), hasher=_state_of(db))
    walfile = WalFile(db + "-wal", db + "-shm", state.stats)
    copier = FrameCopier(state, walfile)
    try:
        yield db, app, state, walfile, copier
    finally:
        walfile.close()
        app.close()


def _start(state: State, hdr: wal.WalHeader) -> None:
    """Position ``state`` at the start of the WAL with header ``hdr`` (as after a restart)."""
    state.pos = WalPosition(hdr.salt1, hdr.salt2, 0, hdr.checksum1, hdr.checksum2)


def _segments(state: State) -> list[tuple[layout.SegmentName, str]]:
    return [(n, state.spool.path(n)) for n, _ in state.spool.objects() if isinstance(n, layout.SegmentName)]


def test_committed_transactions_become_one_segment_and_the_position_and_state_advance(setup):
    db, app, state, walfile, copier = setup
    for _ in range(3):
        app.execute("INSERT INTO t VALUES (randomblob(3000))")
    hdr = walfile.header()
    assert hdr is not None
    _start(state, hdr)
    txs, read_at = copier.uncopied(hdr)
    assert len(txs) == 3 and not copier.in_flight
    copier.spool_transactions(txs, hdr, read_at, recheck=hdr)
    assert state.pos.frame == walfile.index_frames(hdr) == txs[-1].end_index
    assert state.next_seq == 1 and state.stats == {"segments": 1, "transactions": 3,
                                                   "max_wal_bytes": walfile.size()}
    expected = _state_of(db)
    assert state.hasher.value == expected.value and state.hasher.page_count == expected.page_count
    [(name, path)] = _segments(state)
    assert (name.generation, name.first_seq) == (GEN, 0)
    with open(path, "rb") as f:
        r = SegmentReader(f, path)
        assert [t.db_size for t in r.header.txs] == [t.db_size for t in txs]
        assert r.header.wal == state.pos and r.header.db_id == "test-db"
        for _ in r.pages():
            pass
        assert r.finish().db_checksum == expected.value
    assert state.end_link != NO_LINK
    # nothing new: nothing to copy
    assert copier.uncopied(hdr) == ([], walfile.read_at) and not copier.in_flight


def test_frames_a_rolled_back_transaction_spilled_are_not_copied_and_read_as_in_flight(setup):
    """Frames past the wal-index's count carry the WAL's salts: not committed, but a sign
    that a commit may be under way (the loop looks again soon)."""
    db, app, state, walfile, copier = setup
    app.execute("INSERT INTO t VALUES (randomblob(100))")
    hdr = walfile.header()
    assert hdr is not None
    _start(state, hdr)
    txs, read_at = copier.uncopied(hdr)
    copier.spool_transactions(txs, hdr, read_at)
    committed = state.pos.frame
    app.execute("PRAGMA cache_size=2")
    app.execute("BEGIN")
    for _ in range(20):
        app.execute("INSERT INTO t VALUES (randomblob(3000))")  # spills to the WAL
    app.execute("ROLLBACK")
    assert walfile.size() > hdr.frame_offset(committed + 1)
    assert walfile.index_frames(hdr) == committed
    assert copier.uncopied(hdr) == ([], walfile.read_at) and copier.in_flight
    assert copier.frame_follows(hdr, committed) and not copier.frame_follows(hdr, committed + 100)


def test_a_position_past_the_committed_frames_diverges_and_names_both_counts(setup):
    db, app, state, walfile, copier = setup
    app.execute("INSERT INTO t VALUES (randomblob(100))")
    hdr = walfile.header()
    assert hdr is not None
    committed = walfile.index_frames(hdr)
    assert committed is not None
    state.pos = WalPosition(hdr.salt1, hdr.salt2, committed + 5, 1, 2)
    with pytest.raises(Diverged) as e:
        copier.uncopied(hdr)
    assert str(e.value) == (f"the wal-index counts {committed} committed WAL frames, "
                            f"fewer than the {committed + 5} already copied")


def test_frames_that_do_not_continue_the_ones_copied_diverge(setup):
    db, app, state, walfile, copier = setup
    app.execute("INSERT INTO t VALUES (randomblob(100))")
    app.execute("INSERT INTO t VALUES (randomblob(100))")
    hdr = walfile.header()
    assert hdr is not None
    state.pos = WalPosition(hdr.salt1, hdr.salt2, 0, hdr.checksum1 ^ 1, hdr.checksum2)  # another chain
    committed = walfile.index_frames(hdr)
    with pytest.raises(Diverged) as e:
        copier.uncopied(hdr)
    assert str(e.value) == (f"WAL frame 1 does not continue the frames already copied "
                            f"(the wal-index counts {committed} committed)")


def test_captured_frames_are_written_after_the_wal_restarted_over_them(setup):
    """What ``capture`` kept in memory is what is written, though the file now holds the
    frames of a new WAL at the same offsets."""
    db, app, state, walfile, copier = setup
    for _ in range(2):
        app.execute("INSERT INTO t VALUES (randomblob(3000))")
    hdr = walfile.header()
    assert hdr is not None
    _start(state, hdr)
    txs, read_at = copier.uncopied(hdr)
    tail = copier.capture(hdr, txs, read_at)
    expected = _state_of(db)
    app.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
    app.execute("INSERT INTO t VALUES (randomblob(3000))")  # restarts the WAL over the old frames
    new = walfile.header()
    assert new is not None and new.salts != hdr.salts
    copier.spool_transactions(txs, hdr, tail.read_at)
    assert state.hasher.value == expected.value and (state.pos.salt1, state.pos.salt2) == hdr.salts
    [(name, path)] = _segments(state)
    with open(path, "rb") as f:
        r = SegmentReader(f, path)
        for _ in r.pages():
            pass
        assert r.finish().db_checksum == expected.value


def test_a_segment_whose_pages_may_be_wrong_is_discarded_and_nothing_advances(setup):
    db, app, state, walfile, copier = setup
    app.execute("INSERT INTO t VALUES (randomblob(100))")
    hdr = walfile.header()
    assert hdr is not None
    _start(state, hdr)
    before = (state.pos, state.next_seq, state.end_link)
    tx = TxInfo(1, 2, 1, 0, 0)
    with pytest.raises(WalChanged):
        copier.write_segment([tx], 1, WalPosition(hdr.salt1, hdr.salt2, 1, 0, 0), iter([(1, bytes(4096))]),
                             changed=lambda: True)
    assert (state.pos, state.next_seq, state.end_link) == before and state.spool.objects() == []
    assert state.stats["segments"] == 0
