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


def synth_wal(big_endian, commits, page_size=512, salts=(0x11111111, 0x22222222)):
    """A WAL built by hand: ``commits`` lists, per transaction, its frame count."""
    magic = wal.MAGIC_BE if big_endian else wal.MAGIC_LE
    head = struct.pack(">6I", magic, wal.WAL_VERSION, page_size, 7, *salts)
    s = wal.checksum(head, big_endian)
    out = [head + struct.pack(">2I", *s)]
    pgno = 0
    for n in commits:
        for k in range(n):
            pgno += 1
            page = os.urandom(page_size)
            first8 = struct.pack(">2I", pgno, pgno if k == n - 1 else 0)
            s = wal.checksum(first8 + page, big_endian, *s)
            out.append(first8 + struct.pack(">4I", *salts, *s) + page)
    return b"".join(out)


@pytest.mark.parametrize("big_endian", [True, False])
def test_scan_agrees_with_the_definition_in_both_byte_orders(big_endian):
    data = synth_wal(big_endian, [1, 3, 40, 2, 300, 1])
    hdr = wal.WalHeader.parse(data)
    assert hdr.big_endian == big_endian
    ref = reference_scan(data)
    txs = list(wal.scan(reader(data), hdr, 1, (hdr.checksum1, hdr.checksum2)))
    assert [f.index for tx in txs for f in tx.frames] == [r[0] for r in ref] == list(range(1, 348))
    assert [tx.checksum for tx in txs] == [r[3] for r in ref if r[2]]
    assert [len(tx.frames) for tx in txs] == [1, 3, 40, 2, 300, 1]


@pytest.mark.parametrize("expect", [0, 1, 5, 46, 347, 348, 1000])
def test_the_expected_frame_count_only_sizes_reads(expect):
    """A wrong hint (short, exact or long) changes the reads, never the result; a frame
    past an exact hint is still found."""
    data = synth_wal(False, [1, 3, 40, 2, 300, 1])
    hdr = wal.WalHeader.parse(data)
    full = list(wal.scan(reader(data), hdr, 1, (hdr.checksum1, hdr.checksum2)))
    reads = []

    def counting(off, n):
        reads.append(n // hdr.frame_size)
        return data[off:off + n]

    assert list(wal.scan(counting, hdr, 1, (hdr.checksum1, hdr.checksum2), expect=expect)) == full
    if expect == 347:  # the whole WAL: the hint in chunks, then one frame past it
        assert reads == [256, 91, 1]
    if expect == 46:  # more follows the hint: the frame past it is valid, and reads grow from there
        assert reads[:4] == [46, 1, 16, 32]
    third = full[2]
    assert list(wal.scan(reader(data), hdr, third.end_index + 1, third.checksum, expect=expect)) == full[3:]


def test_checksum_rejects_odd_length():
    with pytest.raises(ValueError, match="multiple of 8 bytes, got 7"):
        wal.checksum(b"1234567", False)


def test_read_page_refuses_a_frame_of_another_wal_or_another_page(tmp_path):
    _, _, data = make_wal(tmp_path)
    hdr = wal.WalHeader.parse(data)
    frame = list(wal.scan(reader(data), hdr, 1, (hdr.checksum1, hdr.checksum2)))[1].frames[0]
    off = hdr.frame_offset(frame.index)
    assert bytes(wal.read_page(reader(data), hdr, frame.index, frame.pgno)) == \
        data[off + wal.FRAME_HEADER_SIZE:off + wal.FRAME_HEADER_SIZE + hdr.page_size]
    with pytest.raises(wal.FrameMismatch, match=f"WAL frame {frame.index}: holds page {frame.pgno}, not 999"):
        wal.read_page(reader(data), hdr, frame.index, 999)
    b = bytearray(data)
    b[off + 12:off + 16] = struct.pack(">I", hdr.salt2 ^ 1)  # the frame of a WAL restarted since
    with pytest.raises(wal.FrameMismatch, match=f"WAL frame {frame.index}: salts are not the WAL header's"):
        wal.read_page(reader(bytes(b)), hdr, frame.index)
    with pytest.raises(EOFError, match="short read"):
        wal.read_page(reader(data[:off + 100]), hdr, frame.index)
