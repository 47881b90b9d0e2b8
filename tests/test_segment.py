import io
import os
import random

import pytest

from litesync.dbhash import DbHash
from litesync.errors import CorruptObjectError
from litesync.segment import (NO_LINK, TRAILER_SIZE, SegmentHeader, SegmentReader, SegmentWriter,
                              SnapshotHeader, SnapshotReader, SnapshotWriter, TxInfo, WalPosition)

PS = 1024


def seg_bytes(pages_per_tx=((1, 2), (3,)), page_size=PS):
    pages = {p: os.urandom(page_size) for tx in pages_per_tx for p in tx}
    txs = tuple(TxInfo(1000 + i, 3, len(tx), 0xABC + i) for i, tx in enumerate(pages_per_tx))
    h = SegmentHeader(page_size, 7, 4, 4, b"p" * 16, b"e" * 16, WalPosition(1, 2, 9, 3, 4), 5, txs)
    out = io.BytesIO()
    w = SegmentWriter(out, h)
    for tx in pages_per_tx:
        for p in tx:
            w.add_page(p, pages[p])
    w.close()
    return out.getvalue(), h, pages


def read_all(data, name="obj"):
    r = SegmentReader(io.BytesIO(data), name)
    got = [(i, p, bytes(d)) for i, p, d in r.pages()]
    r.finish()
    return r.header, got


def test_segment_round_trip():
    data, h, pages = seg_bytes()
    header, got = read_all(data)
    assert header == h
    assert got == [(0, 1, pages[1]), (0, 2, pages[2]), (1, 3, pages[3])]


def test_segment_compresses_repetitive_pages():
    pages = ((1, 2, 3),)
    h = SegmentHeader(PS, 1, 0, 0, NO_LINK, NO_LINK, WalPosition(), 1, (TxInfo(1, 3, 3, 0),))
    out = io.BytesIO()
    w = SegmentWriter(out, h)
    for p in pages[0]:
        w.add_page(p, b"a" * PS)
    size = w.close()
    assert size == len(out.getvalue()) < PS


@pytest.mark.parametrize("where", ["header", "body", "trailer"])
def test_flipped_byte_is_detected_and_named(where):
    data, _, _ = seg_bytes()
    b = bytearray(data)
    pos = {"header": 20, "body": len(data) - TRAILER_SIZE - 10, "trailer": len(data) - 20}[where]
    b[pos] ^= 0x01
    with pytest.raises(CorruptObjectError) as e:
        read_all(bytes(b), "gen/seg-1")
    assert str(e.value).startswith("gen/seg-1: ")
    expected = {"header": "header checksum mismatch",
                "trailer": "digest mismatch: object is damaged"}.get(where)
    if expected:
        assert str(e.value) == f"gen/seg-1: {expected}"
    else:
        assert "damaged" in str(e.value)


def test_every_truncation_is_detected():
    data, _, _ = seg_bytes()
    for cut in list(range(0, len(data), 97)) + [len(data) - 1]:
        with pytest.raises(CorruptObjectError) as e:
            read_all(data[:cut], "x.seg")
        assert str(e.value).startswith("x.seg: ")


def test_exact_messages_for_bad_fields():
    data, _, _ = seg_bytes()
    with pytest.raises(CorruptObjectError, match=r"^s: invalid magic: b'XSYNCSEG' \(expected b'LSYNCSEG'\)$"):
        read_all(b"X" + data[1:], "s")
    bad_version = data[:8] + b"\x09\x00" + data[10:]
    with pytest.raises(CorruptObjectError, match=r"^s: unsupported format version: 9$"):
        read_all(bad_version, "s")
    with pytest.raises(CorruptObjectError, match=r"^s: truncated object: header incomplete$"):
        read_all(data[:30], "s")


def test_invalid_page_size_is_named():
    h = SegmentHeader(1000, 1, 0, 0, NO_LINK, NO_LINK, WalPosition(), 1, (TxInfo(1, 1, 1, 0),))
    with pytest.raises(CorruptObjectError, match=r"^segment: invalid page size: 1000$"):
        SegmentWriter(io.BytesIO(), h)


def test_pages_past_the_transaction_size_are_not_part_of_the_database():
    # db_size 3 in the table, page 5 in the body: written before the commit shrank the database
    data, _, pages = seg_bytes(pages_per_tx=((1, 5), (2,)))
    _, got = read_all(data, "s")
    assert got == [(0, 1, pages[1]), (1, 2, pages[2])]


def test_page_number_zero_is_rejected():
    data, _, _ = seg_bytes(pages_per_tx=((1, 0),))
    with pytest.raises(CorruptObjectError, match=r"^s: transaction 0: invalid page number: 0$"):
        read_all(data, "s")


def test_writer_refuses_wrong_page_count():
    h = SegmentHeader(PS, 1, 0, 0, NO_LINK, NO_LINK, WalPosition(), 1, (TxInfo(1, 2, 2, 0),))
    w = SegmentWriter(io.BytesIO(), h)
    w.add_page(1, bytes(PS))
    with pytest.raises(ValueError, match="wrote 1 pages, header lists 2"):
        w.close()


def snapshot_bytes(n=10):
    pages = [os.urandom(PS) for _ in range(n)]
    hasher = DbHash()
    for i, p in enumerate(pages, 1):
        hasher.set_page(i, p)
    h = SnapshotHeader(PS, 3, 0, NO_LINK, n, 123, WalPosition(1, 2, 3, 4, 5))
    out = io.BytesIO()
    w = SnapshotWriter(out, h)
    w.add_pages(b"".join(pages[:4]))
    w.add_pages(b"".join(pages[4:]))
    w.close(hasher.value)
    return out.getvalue(), h, pages, hasher.value


def test_snapshot_round_trip():
    data, h, pages, value = snapshot_bytes()
    r = SnapshotReader(io.BytesIO(data), "snap")
    assert r.header == h
    got = b"".join(bytes(c) for _, c in r.chunks(pages_per_chunk=3))
    assert got == b"".join(pages)
    assert r.finish().db_checksum == value


def test_snapshot_flipped_byte_fails():
    data, *_ = snapshot_bytes()
    b = bytearray(data)
    b[len(b) // 2] ^= 4
    r = SnapshotReader(io.BytesIO(bytes(b)), "snap")
    with pytest.raises(CorruptObjectError, match="^snap: "):
        for _ in r.chunks():
            pass
        r.finish()


def test_dbhash_tracks_writes_and_truncation():
    a, b = DbHash(), DbHash()
    for i in range(1, 6):
        a.set_page(i, bytes([i]) * 16)
    a.set_page(2, b"new" * 4)
    a.truncate(4)
    for i in (1, 3, 4):
        b.set_page(i, bytes([i]) * 16)
    b.set_page(2, b"new" * 4)
    assert a.value == b.value and a.page_count == 4
    # Swapping two pages' contents changes the checksum.
    c = DbHash()
    c.set_page(1, bytes([2]) * 16)
    c.set_page(2, bytes([1]) * 16)
    d = DbHash()
    d.set_page(1, bytes([1]) * 16)
    d.set_page(2, bytes([2]) * 16)
    assert c.value != d.value


# --- concatenation ------------------------------------------------------------------------


def chain_of_segments(n, page_size=PS):
    """n consecutive single-sequence segments (seq 4..), each linking to the previous."""
    from litesync.segment import split_segment

    parts, expect = [], []
    link = b"p" * 16
    for k in range(n):
        end = bytes([k + 1]) * 16
        pages = {p: os.urandom(page_size) for p in (1, 2 + k)}
        txs = (TxInfo(1000 + k, 2 + k, 2, 0xA00 + k),)
        h = SegmentHeader(page_size, 7, 4 + k, 4 + k, link, end, WalPosition(1, 2, 9 + k, 3, 4), 5 + k, txs)
        out = io.BytesIO()
        w = SegmentWriter(out, h)
        for p, d in pages.items():
            w.add_page(p, d)
            expect.append((k, p, d))
        w.close()
        name = f"seg-{4 + k}"
        parts.append((name, *split_segment(out.getvalue(), name)))
        link = end
    return parts, expect


def test_concatenated_segments_read_as_one_with_every_transaction():
    from litesync.segment import concat_segments

    parts, expect = chain_of_segments(3)
    out = io.BytesIO()
    header, size = concat_segments(parts, out)
    assert size == len(out.getvalue())
    got_header, got = read_all(out.getvalue())
    assert (got_header.first_seq, got_header.last_seq) == (4, 6)
    assert got_header.prev_link == b"p" * 16 and got_header.end_link == bytes([3]) * 16
    assert [t.commit_ms for t in got_header.txs] == [1000, 1001, 1002]
    assert got == expect


def test_concatenation_refuses_a_broken_chain():
    from litesync.errors import ChainError
    from litesync.segment import concat_segments

    parts, _ = chain_of_segments(3)
    with pytest.raises(ChainError, match=r"^seg-6: .*does not follow generation 0000000000000007 seq 4"):
        concat_segments([parts[0], parts[2]], io.BytesIO())


@pytest.mark.parametrize("where", ["body", "trailer", "short"])
def test_split_segment_detects_damage(where):
    from litesync.segment import split_segment

    data, _, _ = seg_bytes()
    b = bytearray(data)
    if where == "short":
        b = b[:-5]
    else:
        b[{"body": len(data) - TRAILER_SIZE - 10, "trailer": len(data) - 20}[where]] ^= 0x01
    with pytest.raises(CorruptObjectError, match=r"^spool/seg: "):
        split_segment(bytes(b), "spool/seg")


def test_a_damaged_frame_inside_a_concatenation_is_detected():
    from litesync.segment import concat_segments

    parts, _ = chain_of_segments(3)
    out = io.BytesIO()
    concat_segments(parts, out)
    data = bytearray(out.getvalue())
    data[len(data) - TRAILER_SIZE - 3] ^= 0x40  # inside the last part's frame
    with pytest.raises(CorruptObjectError, match=r"^cat: "):
        read_all(bytes(data), "cat")



# --- frame boundaries and read boundaries -------------------------------------------------


def chain_part(seq, pages, empty_txs=0, page_size=512):
    """Segment ``seq`` of a chain (name, header, body), holding ``pages`` (page 1..n) in one
    transaction and ``empty_txs`` more transactions without pages."""
    from litesync.segment import split_segment

    txs = (TxInfo(1000 + seq, len(pages), len(pages), 0),) + (TxInfo(1000 + seq, len(pages), 0, 0),) * empty_txs
    h = SegmentHeader(page_size, 7, seq, seq, bytes([seq]) * 16, bytes([seq + 1]) * 16, WalPosition(1, 2, 9, 3, 4),
                      5, txs)
    out = io.BytesIO()
    w = SegmentWriter(out, h)
    for p, d in enumerate(pages, 1):
        w.add_page(p, d)
    w.close()
    return (f"seg-{seq}", *split_segment(out.getvalue(), f"seg-{seq}"))


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_a_frame_ending_where_a_read_ends_is_followed_by_the_next(delta):
    """The reader reads 1 MiB at a time and holds the trailer back, so the body bytes of its
    first read end at object offset 1 MiB - TRAILER_SIZE. In a concatenation the shipper would
    upload, a part's frame ends there (or one byte either side), and another part follows.

    Random pages are stored, not compressed: the frame of n pages is 516 n bytes and a
    little. The offset is tuned by the number of one-page parts (an odd length each) and of
    transactions (28 bytes each in the header).
    """
    from litesync.segment import _READ_CHUNK, _SEG_FIXED, concat_segments

    target = _READ_CHUNK - TRAILER_SIZE + delta
    rnd = random.Random(1)
    randoms = [rnd.randbytes(512) for _ in range(2040)]
    small = chain_part(0, randoms[:1])[2]
    bigs = {n: chain_part(0, randoms[:n])[2] for n in range(2000, 2033)}
    head0 = _SEG_FIXED.size + 4 + 28  # the header of a concatenation of one transaction

    def layout():
        # a big part, m one-page parts, then a last part with e empty transactions
        for m in range(4):
            for e in range(129):
                for n, body in bigs.items():
                    if head0 + 28 * (m + 1 + e) + len(body) + m * len(small) == target:
                        return n, m, e
        raise AssertionError(f"no layout puts a frame end at {target}")

    n, m, e = layout()
    pages = [randoms[:n]] + [randoms[n + i:n + i + 1] for i in range(m)] + [randoms[:3]]
    parts = [chain_part(seq, p, e if seq == m + 1 else 0) for seq, p in enumerate(pages)]
    out = io.BytesIO()
    header, _ = concat_segments(parts, out)
    assert len(header.to_bytes()) + sum(len(b) for _, _, b in parts[:-1]) == target
    got_header, got = read_all(out.getvalue(), "cat")
    assert got_header == header
    # every part but the last holds one transaction: part i's pages are transaction i's
    assert got == [(i, p, d) for i, ps in enumerate(pages) for p, d in enumerate(ps, 1)]


def test_every_read_size_decodes_a_concatenation():
    """Whatever sizes the source returns (a network stream returns what it has), a read may
    end exactly where a part's frame ends."""
    from litesync.segment import concat_segments

    parts, expect = chain_of_segments(3, page_size=512)
    out = io.BytesIO()
    concat_segments(parts, out)
    data = out.getvalue()

    class Trickle(io.RawIOBase):
        def __init__(self, step):
            self.pos, self.step = 0, step

        def read(self, n=-1):
            chunk = data[self.pos:self.pos + min(n, self.step)]
            self.pos += len(chunk)
            return chunk

    for step in range(1, len(data) + 1):
        r = SegmentReader(Trickle(step), f"read size {step}")
        assert [(i, p, bytes(d)) for i, p, d in r.pages()] == expect
        r.finish()
