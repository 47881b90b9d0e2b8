"""SQLite's rollback journal and the database-header fields a writer updates (pure).

The follower (follow.py) updates its output in place the way SQLite itself commits a
transaction in rollback-journal mode, so that SQLite readers in other processes can rely
on SQLite's own guarantees. The formats come from sqlite.org/fileformat2.html:

- Journal (section 4.1): a header padded to one sector: magic d9d505f920a163d7, the
  record count, a checksum nonce, the database size in pages before the transaction, the
  sector size and the page size, all 32-bit big-endian. Then one record per page: page
  number, the page's original content, and a checksum (the nonce plus every 200th byte
  of the page, counting back from ``page_size - 200``). A journal whose first byte is zero
  is not hot; rolling a hot journal back truncates the database to the size in the
  header and writes every record back.
- Database header (section 1.3): bytes 18-19 select rollback (1) or WAL (2) mode; the
  file change counter (24) tells other connections to drop their page cache; the
  in-header database size (28) is valid when the "version-valid-for" number (92) equals
  the change counter; 96 holds the writer's SQLite version number.
"""

from __future__ import annotations

import struct

JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
SECTOR_SIZE = 512
PENDING_BYTE = 0x40000000  # the page holding it is never used, and never journaled
_JOURNAL_HEADER = struct.Struct(">8sIIIII")
_U32 = struct.Struct(">I")

ROLLBACK_MODE = 1
#: (offset, length) of the header fields a follower rewrites on page 1
PATCHED_FIELDS = ((18, 2), (24, 8), (92, 8))
PATCHED_SIZE = sum(n for _, n in PATCHED_FIELDS)
WRITER_VERSION = 3054001  # what page 1 says wrote it (any value is valid)


def pending_page(page_size: int) -> int:
    """The page number that holds the lock bytes (only databases over 1 GiB reach it)."""
    return PENDING_BYTE // page_size + 1


def journal_header(records: int, nonce: int, db_pages: int, page_size: int) -> bytes:
    """The first sector of a journal of ``records`` pages, for a database of ``db_pages`` pages."""
    head = _JOURNAL_HEADER.pack(JOURNAL_MAGIC, records, nonce, db_pages, SECTOR_SIZE, page_size)
    return head + bytes(SECTOR_SIZE - len(head))


def record_checksum(data: bytes | memoryview, nonce: int) -> int:
    total = nonce
    i = len(data) - 200
    while i > 0:
        total += data[i]
        i -= 200
    return total & 0xFFFFFFFF


def journal_record(pgno: int, data: bytes | memoryview, nonce: int) -> bytes:
    """One journal record: the page number, the page as it was, its checksum."""
    return _U32.pack(pgno) + bytes(data) + _U32.pack(record_checksum(data, nonce))


def journal_padding(length: int) -> bytes:
    """Zeros that end a journal of ``length`` bytes on a sector boundary, so that its last
    bytes can never be read as the name of a super-journal."""
    return bytes(-length % SECTOR_SIZE)


def change_counter(page1: bytes | memoryview) -> int:
    return _U32.unpack_from(page1, 24)[0]


def rollback_page1(page1: bytes | memoryview, counter: int, db_pages: int) -> bytes:
    """Page 1 set for rollback-journal mode, with a new change counter and database size."""
    out = bytearray(page1)
    out[18] = out[19] = ROLLBACK_MODE
    _U32.pack_into(out, 24, counter & 0xFFFFFFFF)
    _U32.pack_into(out, 28, db_pages)
    _U32.pack_into(out, 92, counter & 0xFFFFFFFF)
    _U32.pack_into(out, 96, WRITER_VERSION)
    return bytes(out)


def patched_bytes(page1: bytes | memoryview) -> bytes:
    """The bytes of page 1 that ``rollback_page1`` overwrites."""
    return b"".join(bytes(page1[o:o + n]) for o, n in PATCHED_FIELDS)


def unpatch(page1: bytes | memoryview, saved: bytes) -> bytes:
    """Page 1 with the bytes ``patched_bytes`` saved put back."""
    if len(saved) != PATCHED_SIZE:
        raise ValueError(f"invalid saved header bytes: {len(saved)} bytes (expected {PATCHED_SIZE})")
    out = bytearray(page1)
    i = 0
    for o, n in PATCHED_FIELDS:
        out[o:o + n] = saved[i:i + n]
        i += n
    return bytes(out)
