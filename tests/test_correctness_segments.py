"""Segments the readers must take as the agent wrote them: pages past the size a transaction
committed (a spilled cache, then auto_vacuum), and databases that reach the lock-byte page."""

from __future__ import annotations

import io
import os
import threading

import apsw
import pytest

from litesync import journal, layout, wal
from litesync.compact import merge_segments
from litesync.dbhash import DbHash, page_hash, raw_page_hash
from litesync.errors import CorruptObjectError
from litesync.follow import Follower
from litesync.replica.file import FileReplicaClient
from litesync.restore import PageBatch, apply_segment, integrity_check, load_snapshot, restore
from litesync.segment import (NO_LINK, TX_CHECKSUM_KNOWN, SegmentHeader, SegmentReader, SegmentWriter,
                              SnapshotHeader, SnapshotReader, SnapshotWriter, TxInfo, WalPosition)

G = 0x0123456789ABCDEF
PS = 1024


def rows(path: str) -> list[tuple]:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT rowid, x FROM t ORDER BY rowid").fetchall()
    finally:
        conn.close()


def write_snapshot(client: FileReplicaClient, db_file: bytes) -> None:
    """Snapshot 0 of generation G: the pages of ``db_file``."""
    hasher = DbHash()
    for i in range(len(db_file) // PS):
        hasher.set_page(i + 1, db_file[i * PS:(i + 1) * PS])
    name = layout.SnapshotName(G, 0, 1000)
    out = io.BytesIO()
    w = SnapshotWriter(out, SnapshotHeader(PS, G, 0, NO_LINK, len(db_file) // PS, 1000, WalPosition()))
    w.add_pages(db_file)
    size = w.close(hasher.value)
    client.write(name.key, io.BytesIO(out.getvalue()), size)


def ship(client: FileReplicaClient, seq: int, link: bytes, txs: list[wal.Transaction], read_page,
         hasher: DbHash) -> tuple[layout.SegmentName, bytes]:
    """Write ``txs`` as segment ``seq`` the way the copier's ``spool_transactions`` does: each page its
    transaction wrote (last version), whatever the size it committed, and the checksum
    after each transaction. Return its name and end link."""
    infos, per_tx = [], []
    for k, tx in enumerate(txs):
        latest = {fr.pgno: fr.index for fr in tx.frames}
        for pgno, index in latest.items():
            hasher.set_page(pgno, read_page(index))
        hasher.truncate(tx.db_size)
        per_tx.append(latest)
        infos.append(TxInfo(2000 + 10 * seq + k, tx.db_size, len(latest), hasher.value, TX_CHECKSUM_KNOWN))
    end = bytes([seq + 1]) * 16
    header = SegmentHeader(PS, G, seq, seq, link, end, WalPosition(), txs[0].frames[0].index, tuple(infos))
    out = io.BytesIO()
    w = SegmentWriter(out, header)
    for latest in per_tx:
        for pgno, index in latest.items():
            w.add_page(pgno, read_page(index))
    size = w.close()
    name = layout.SegmentName(G, seq, seq, infos[-1].commit_ms)
    client.write(name.key, io.BytesIO(out.getvalue()), size)
    return name, end


SPILL = ("PRAGMA cache_size=10; BEGIN; "
         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
         "INSERT INTO t SELECT randomblob(3000) FROM n; DELETE FROM t WHERE rowid > 2; COMMIT")


@pytest.fixture
def spilled(tmp_path):
    """A replica of a database with auto_vacuum=FULL: snapshot 0, then segments 0 (one
    insert), 1 (the transaction that spills 300 rows and deletes them, plus one more
    insert) and 2 (an insert). Returns (client, segment names, rows after each transaction)."""
    db = str(tmp_path / "src.db")
    conn = apsw.Connection(db)
    conn.execute(f"PRAGMA page_size={PS}; PRAGMA auto_vacuum=FULL; PRAGMA journal_mode=WAL; "
                 "PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(100))").fetchall()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    with open(db, "rb") as f:
        db_file = f.read()
    client = FileReplicaClient(str(tmp_path / "replica"))
    write_snapshot(client, db_file)
    states = []
    for sql in ("INSERT INTO t VALUES (randomblob(200))", SPILL, "INSERT INTO t VALUES ('after')",
                "INSERT INTO t VALUES (randomblob(5000))"):
        conn.execute(sql).fetchall()
        states.append(conn.execute("SELECT rowid, x FROM t ORDER BY rowid").fetchall())
    with open(db + "-wal", "rb") as f:  # plain reads of the WAL are safe (DESIGN.md)
        data = f.read()
    conn.close()
    hdr = wal.WalHeader.parse(data[:wal.WAL_HEADER_SIZE])
    txs = list(wal.scan(lambda off, n: data[off:off + n], hdr, 1, (hdr.checksum1, hdr.checksum2)))
    assert len(txs) == 4
    assert max(fr.pgno for fr in txs[1].frames) > 100 > txs[1].db_size  # spilled past its commit size

    def read_page(index: int) -> bytes:
        return wal.read_page(lambda off, n: data[off:off + n], hdr, index)

    hasher = DbHash()
    for i in range(len(db_file) // PS):
        hasher.set_page(i + 1, db_file[i * PS:(i + 1) * PS])
    names, link = [], NO_LINK
    for seq, group in enumerate((txs[:1], txs[1:3], txs[3:])):
        name, link = ship(client, seq, link, group, read_page, hasher)
        names.append(name)
    return client, names, states


def test_restore_ignores_pages_past_the_committed_size(spilled, tmp_path):
    client, _, states = spilled
    out = str(tmp_path / "out.db")
    result = restore(client, out)
    assert result.transactions == 4
    assert rows(out) == states[-1]


def test_point_in_time_restore_stops_after_the_transaction_that_shrank(spilled, tmp_path):
    client, _, states = spilled
    out = str(tmp_path / "out.db")
    result = restore(client, out, until_ms=2010)  # segment 1's first transaction: the one that spilled
    assert result.transactions == 2
    assert rows(out) == states[1]


def test_follower_applies_a_segment_holding_pages_past_the_committed_size(spilled, tmp_path):
    client, names, states = spilled
    later = {n.key: client.read(n.key) for n in names[1:]}
    client.delete(list(later))
    out = str(tmp_path / "follow.db")
    f = Follower([client], out, interval=0.1, stop=threading.Event())
    f.start()
    try:
        assert rows(out) == states[0]
        for key, data in later.items():
            client.write_bytes(key, data)
        f.poll()
        assert f.pos.next_seq == 3
        assert rows(out) == states[-1]
        assert f.db.pages == f.pos.db_size
    finally:
        f.db.close()
    assert integrity_check(out) == "ok"


def test_compaction_drops_pages_past_the_committed_size(spilled, tmp_path):
    client, names, states = spilled
    out = io.BytesIO()
    merged, _ = merge_segments(client, names, out)
    seg = SegmentReader(io.BytesIO(out.getvalue()), merged.key)
    pages = [pgno for _, pgno, _ in seg.pages()]
    seg.finish()
    final = seg.header.txs[-1]
    assert len(pages) == seg.header.page_count == final.page_count  # none was left out by the reader
    assert max(pages) <= final.db_size
    client.delete([n.key for n in names])
    client.write_bytes(merged.key, out.getvalue())
    restored = str(tmp_path / "out.db")
    restore(client, restored)
    assert rows(restored) == states[-1]


# -- the lock-byte page ----------------------------------------------------------------------

def test_the_lock_byte_page_hashes_as_absent_whatever_it_holds():
    for ps in (512, 4096, 65536):
        lock = 0x40000000 // ps + 1
        assert page_hash(lock, os.urandom(ps)) == page_hash(lock, bytes(ps)) == 0
        assert page_hash(lock - 1, bytes(ps)) != 0 and page_hash(lock + 1, bytes(ps)) != 0


def test_a_full_read_and_page_writes_agree_past_the_lock_byte_page():
    """With 512-byte pages the lock-byte page is 2097153. The agent's checksum grows past
    it from WAL frames, which never hold it; a full read (a snapshot, an idle check, an
    agent's restart, a follower's resume) hashes it as the file holds it."""
    ps, lock = 512, 2097153
    new = {lock + 1: os.urandom(ps), lock + 2: os.urandom(ps)}
    before = DbHash()
    before.set_page(1, os.urandom(ps))
    before.truncate(lock - 1)  # both sides agree on pages 1..lock-1
    from_wal = before.copy()
    for p, data in new.items():  # a transaction grows the database past 1 GiB
        from_wal.set_page(p, data)
    from_wal.truncate(lock + 2)
    for lock_bytes in (bytes(ps), os.urandom(ps)):
        full_read = before.copy()
        for p, data in {lock: lock_bytes, **new}.items():
            full_read.set_page(p, data)
        assert full_read.value == from_wal.value


@pytest.fixture
def small_lock_page(monkeypatch):
    """Move the lock byte to 10 KiB so a few 1 KiB pages reach it: page 11."""
    monkeypatch.setattr(journal, "PENDING_BYTE", 10 * PS)
    return 11


def lock_byte_snapshot(legacy: bool, damage: int = 0) -> tuple[bytes, list[bytes]]:
    """A 14-page snapshot whose lock-byte page holds junk; checksummed as agents did before
    the lock-byte rule (``legacy``: the page by its bytes) or after (the page absent), and
    XORed with ``damage``."""
    pages = [os.urandom(PS) for _ in range(14)]
    hasher = DbHash()
    for p, data in enumerate(pages, 1):
        hasher.set_hash(p, 0 if p == journal.pending_page(PS) and not legacy else raw_page_hash(p, data))
    out = io.BytesIO()
    w = SnapshotWriter(out, SnapshotHeader(PS, G, 0, NO_LINK, 14, 1000, WalPosition()))
    w.add_pages(b"".join(pages))
    w.close(hasher.value ^ damage)
    return out.getvalue(), pages


def segment_after(writes: dict[int, bytes], size: int, hasher: DbHash) -> bytes:
    """Segment 0: one transaction writing ``writes`` and ending at ``size`` pages."""
    for p, data in writes.items():
        hasher.set_hash(p, page_hash(p, data))
    hasher.truncate(size)
    h = SegmentHeader(PS, G, 0, 0, NO_LINK, b"e" * 16, WalPosition(), 1,
                      (TxInfo(2000, size, len(writes), hasher.value),))
    out = io.BytesIO()
    w = SegmentWriter(out, h)
    for p, data in writes.items():
        w.add_page(p, data)
    w.close()
    return out.getvalue()


@pytest.mark.parametrize("legacy", [False, True])
def test_restore_verifies_a_snapshot_past_the_lock_byte_page(small_lock_page, legacy):
    """A snapshot by the lock-byte rule restores; so does one written before it, and the
    segments an agent of that time wrote after it."""
    snap, _ = lock_byte_snapshot(legacy)
    with PageBatch(PS) as batch:
        pos = load_snapshot(SnapshotReader(io.BytesIO(snap), "snap"), batch)
        assert pos.db_size == 14
        old_agent = pos.hasher.copy()  # what the agent that wrote the snapshot went on from
        seg = segment_after({2: os.urandom(PS), 15: os.urandom(PS)}, 15, old_agent)
        apply_segment(io.BytesIO(seg), "seg", pos, batch)
        assert pos.hasher.value == old_agent.value


def test_an_agent_with_the_lock_byte_rule_may_go_on_with_a_legacy_generation(small_lock_page):
    """An upgraded agent resumed a generation whose snapshot hashed the lock-byte page by
    its bytes: its next checksum is a full read's, with the page absent."""
    snap, pages = lock_byte_snapshot(legacy=True)
    with PageBatch(PS) as batch:
        pos = load_snapshot(SnapshotReader(io.BytesIO(snap), "snap"), batch)
        new_agent = DbHash()
        for p, data in enumerate(pages, 1):
            new_agent.set_page(p, data)
        seg = segment_after({3: os.urandom(PS)}, 14, new_agent)
        apply_segment(io.BytesIO(seg), "seg", pos, batch)
        assert pos.hasher.value == new_agent.value


def test_a_snapshot_checksum_that_matches_neither_rule_still_fails(small_lock_page):
    snap, _ = lock_byte_snapshot(legacy=True, damage=1)
    with PageBatch(PS) as batch, pytest.raises(CorruptObjectError, match=r"^snap: database checksum mismatch: "):
        load_snapshot(SnapshotReader(io.BytesIO(snap), "snap"), batch)
