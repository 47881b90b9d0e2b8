import os
import sqlite3
import struct

import pytest

from litesync import wal


def make_wal(tmp_path, txs=5, rows=20):
    db = str(tmp_path / "w.db")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("CREATE TABLE t (x)")
    for _ in range(txs):
        c.execute("BEGIN")
        for _ in range(rows):
            c.execute("INSERT INTO t VALUES (?)", (os.urandom(300),))
        c.execute("COMMIT")
    data = open(db + "-wal", "rb").read()
    return c, db, data


def reader(data):
    return lambda off, n: data[off:off + n]


def reference_scan(data):
    """Slow, obviously-correct scan: list of (index, pgno, commit, checksum) of valid frames."""
    hdr = wal.WalHeader.parse(data)
    s = (hdr.checksum1, hdr.checksum2)
    out = []
    i = 1
    while True:
        off = hdr.frame_offset(i)
        frame = data[off:off + hdr.frame_size]
        if len(frame) < hdr.frame_size:
            break
        pgno, commit, s1, s2, c1, c2 = struct.unpack(">6I", frame[:24])
        if (s1, s2) != hdr.salts:
            break
        s = wal.checksum(frame[:8] + frame[24:], hdr.big_endian, *s)
        if s != (c1, c2):
            break
        out.append((i, pgno, commit, s))
        i += 1
    return out


def test_scan_matches_reference_on_real_wal(tmp_path):
    _, _, data = make_wal(tmp_path)
    hdr = wal.WalHeader.parse(data)
    assert hdr is not None and hdr.page_size == 4096
    txs = list(wal.scan(reader(data), hdr, 1, (hdr.checksum1, hdr.checksum2)))
    ref = reference_scan(data)
    assert [f.index for tx in txs for f in tx.frames] == [r[0] for r in ref]
    commits = [r for r in ref if r[2]]
    assert [tx.checksum for tx in txs] == [r[3] for r in commits]
    assert [tx.db_size for tx in txs] == [r[2] for r in commits]
    assert len(txs) == 6  # CREATE TABLE + 5 transactions


def test_scan_resumes_mid_wal(tmp_path):
    _, _, data = make_wal(tmp_path)
    hdr = wal.WalHeader.parse(data)
    all_txs = list(wal.scan(reader(data), hdr, 1, (hdr.checksum1, hdr.checksum2)))
    third = all_txs[2]
    rest = list(wal.scan(reader(data), hdr, third.end_index + 1, third.checksum))
    assert rest == all_txs[3:]


def test_torn_tail_ends_the_wal(tmp_path):
    _, _, data = make_wal(tmp_path)
    hdr = wal.WalHeader.parse(data)
    full = list(wal.scan(reader(data), hdr, 1, (hdr.checksum1, hdr.checksum2)))
    # Cut the last frame in half: the last transaction disappears, the others stay.
    cut = data[: hdr.frame_offset(full[-1].end_index) + 100]
    txs = list(wal.scan(reader(cut), hdr, 1, (hdr.checksum1, hdr.checksum2)))
    assert txs == full[:-1]


def test_flipped_byte_ends_the_wal_at_that_frame(tmp_path):
    _, _, data = make_wal(tmp_path)
    hdr = wal.WalHeader.parse(data)
    full = list(wal.scan(reader(data), hdr, 1, (hdr.checksum1, hdr.checksum2)))
    bad_frame = full[3].frames[0].index
    b = bytearray(data)
    b[hdr.frame_offset(bad_frame) + 24 + 50] ^= 0xFF
    txs = list(wal.scan(reader(bytes(b)), hdr, 1, (hdr.checksum1, hdr.checksum2)))
    assert txs == full[:3]


def test_other_salts_end_the_wal(tmp_path):
    _, _, data = make_wal(tmp_path)
    hdr = wal.WalHeader.parse(data)
    full = list(wal.scan(reader(data), hdr, 1, (hdr.checksum1, hdr.checksum2)))
    b = bytearray(data)
    off = hdr.frame_offset(full[2].frames[0].index)
    b[off + 8:off + 12] = struct.pack(">I", hdr.salt1 ^ 1)
    assert list(wal.scan(reader(bytes(b)), hdr, 1, (hdr.checksum1, hdr.checksum2))) == full[:2]


def test_wal_restart_changes_salts_and_old_frames_are_invalid(tmp_path):
    c, db, data = make_wal(tmp_path)
    old = wal.WalHeader.parse(data)
    c.execute("PRAGMA wal_checkpoint(RESTART)")
    c.execute("INSERT INTO t VALUES (1)")
    new_data = open(db + "-wal", "rb").read()
    new = wal.WalHeader.parse(new_data)
    assert new.salts != old.salts
    assert new.salt1 == (old.salt1 + 1) & 0xFFFFFFFF
    txs = list(wal.scan(reader(new_data), new, 1, (new.checksum1, new.checksum2)))
    # Only the one new transaction: frames left from the old WAL carry the old salts.
    assert len(txs) == 1
    assert len(new_data) > new.frame_offset(txs[0].end_index + 1)


def test_header_rejects_bad_magic_checksum_and_short_input(tmp_path):
    _, _, data = make_wal(tmp_path)
    assert wal.WalHeader.parse(data[:31]) is None
    assert wal.WalHeader.parse(b"\0" * 32) is None
    b = bytearray(data[:32])
    b[12] ^= 1  # checkpoint sequence changes, checksum no longer matches
    assert wal.WalHeader.parse(bytes(b)) is None


def test_big_endian_checksum_matches_reference():
    # The fast path must agree with the definition for both byte orders.
    page_size = 512
    words = os.urandom(8 + page_size)
    for big in (True, False):
        c0, c1, mn = wal._coefficients(len(words) // 4)
        import numpy as np

        w = np.frombuffer(words, dtype=">u4" if big else "<u4").astype(np.uint64)
        s = (123456789, 987654321)
        fast = ((mn[0] * s[0] + mn[1] * s[1] + int(w @ c0)) & 0xFFFFFFFF,
                (mn[2] * s[0] + mn[3] * s[1] + int(w @ c1)) & 0xFFFFFFFF)
        assert fast == wal.checksum(words, big, *s)


def test_checksum_rejects_odd_length():
    with pytest.raises(ValueError, match="multiple of 8 bytes, got 7"):
        wal.checksum(b"1234567", False)
