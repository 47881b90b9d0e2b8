"""litesync object formats: segments (transactions of pages) and snapshots (pure).

Both formats are ``header | body | trailer`` (see docs/FORMAT.md):
  header   fixed little-endian fields (and, for segments, one entry per transaction),
           closed by a CRC-32 of the header;
  body     zstd frames with content checksums (one when written; several when segments
           were concatenated);
  trailer  56 bytes: database checksum, body length, sha256 of header and body, magic.
Readers stream: they hold back the last 56 bytes of the input as the trailer and verify
the digest when the object ends, so a damaged object is never reported as good.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, Protocol, cast

import zstandard

from .errors import ChainError, CorruptObjectError

SEGMENT_MAGIC = b"LSYNCSEG"
SNAPSHOT_MAGIC = b"LSYNCSNP"
TRAILER_MAGIC = b"LSYNCEND"
# replica.crypt.MAGIC: what a reader finds in an encrypted object it was given no key for.
ENCRYPTED_MAGIC = b"LSYNCENC"
NO_KEY = "object is encrypted, and no encryption key is configured for this replica " \
         "(encryption-key, or $LITESYNC_ENCRYPTION_KEY)"
FORMAT_VERSION = 2  # written when the object carries its database id; version 1 objects (no id) still read
_VERSIONS = (1, 2)
MAX_DB_ID = 1024  # bytes of UTF-8
# Level 1 compressed this project's WAL and text+JSON pages 1.3-3x faster than level 3 at
# a ratio within 4% (better on some pages): the agent's CPU goes mostly to compression.
ZSTD_LEVEL = 1
LINK_SIZE = 16
NO_LINK = bytes(LINK_SIZE)

_SEG_FIXED = struct.Struct("<8sHHIQQQ16s16sIIIIIII")
_TX = struct.Struct("<QIIQI")
_SNAP_FIXED = struct.Struct("<8sHHIQQ16sIQIIIII")
_CRC = struct.Struct("<I")
_ID_LEN = struct.Struct("<H")
_TRAILER = struct.Struct("<QQ32s8s")
TRAILER_SIZE = _TRAILER.size
_PGNO = struct.Struct("<I")
_READ_CHUNK = 1 << 20
_WRITE_BATCH = 1 << 20

TX_CHECKSUM_KNOWN = 1
SEGMENT_MERGED = 1


def check_db_id(db_id: str) -> str:
    """Return ``db_id``, or raise ValueError when it cannot be a database id: empty, not
    UTF-8, or longer than MAX_DB_ID bytes of it. (Messages quote ids with repr, so any
    character is fine: a database path may hold a tab.)"""
    if not db_id:
        raise ValueError("database id is empty")
    try:
        raw = db_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"database id is not UTF-8: {db_id!r}") from None
    if len(raw) > MAX_DB_ID:
        raise ValueError(f"database id is longer than {MAX_DB_ID} bytes")
    return db_id


def _id_bytes(db_id: str | None) -> bytes:
    """The id field of a version 2 header (length, UTF-8); nothing for a version 1 header."""
    if db_id is None:
        return b""
    raw = check_db_id(db_id).encode("utf-8")
    return _ID_LEN.pack(len(raw)) + raw


def _version(db_id: str | None) -> int:
    return 1 if db_id is None else FORMAT_VERSION


def _check_page_size(name: str, page_size: int) -> None:
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise CorruptObjectError(name, f"invalid page size: {page_size}")


@dataclass(frozen=True)
class WalPosition:
    """Where in the source WAL an object ends: salts, last frame, checksum after it."""

    salt1: int = 0
    salt2: int = 0
    frame: int = 0
    checksum1: int = 0
    checksum2: int = 0


@dataclass(frozen=True)
class TxInfo:
    """One transaction of a segment."""

    commit_ms: int
    db_size: int
    page_count: int
    db_checksum: int
    flags: int = TX_CHECKSUM_KNOWN

    @property
    def checksum_known(self) -> bool:
        return bool(self.flags & TX_CHECKSUM_KNOWN)


@dataclass(frozen=True)
class SegmentHeader:
    """The header of a segment covering sequence numbers ``first_seq..last_seq``."""

    page_size: int
    generation: int
    first_seq: int
    last_seq: int
    prev_link: bytes
    end_link: bytes
    wal: WalPosition
    wal_first_frame: int
    txs: tuple[TxInfo, ...]
    flags: int = 0  # SEGMENT_MERGED: compacted (only the run's final state; see compact.py)
    db_id: str | None = None  # the database the segment belongs to; None in version 1 objects

    @property
    def merged(self) -> bool:
        return bool(self.flags & SEGMENT_MERGED)

    def to_bytes(self) -> bytes:
        w = self.wal
        fixed = _SEG_FIXED.pack(SEGMENT_MAGIC, _version(self.db_id), self.flags, self.page_size, self.generation,
                                self.first_seq, self.last_seq, self.prev_link, self.end_link,
                                w.salt1, w.salt2, self.wal_first_frame, w.frame, w.checksum1,
                                w.checksum2, len(self.txs))
        table = b"".join(_TX.pack(t.commit_ms, t.db_size, t.page_count, t.db_checksum, t.flags)
                         for t in self.txs)
        body = fixed + _id_bytes(self.db_id) + table
        return body + _CRC.pack(zlib.crc32(body))

    def validate(self, name: str) -> None:
        _check_page_size(name, self.page_size)
        if self.last_seq < self.first_seq:
            raise CorruptObjectError(name, f"invalid sequence range: {self.first_seq}..{self.last_seq}")
        if not self.txs:
            raise CorruptObjectError(name, "segment holds no transaction")
        for i, t in enumerate(self.txs):
            if t.db_size == 0:
                raise CorruptObjectError(name, f"transaction {i}: invalid database size: 0")

    @property
    def page_count(self) -> int:
        return sum(t.page_count for t in self.txs)

    @property
    def last_commit_ms(self) -> int:
        return self.txs[-1].commit_ms


@dataclass(frozen=True)
class SnapshotHeader:
    """The header of a snapshot: the database state before segment ``seq``."""

    page_size: int
    generation: int
    seq: int
    prev_link: bytes
    db_size: int
    created_ms: int
    wal: WalPosition
    db_id: str | None = None  # the database the snapshot belongs to; None in version 1 objects

    def to_bytes(self) -> bytes:
        w = self.wal
        fixed = _SNAP_FIXED.pack(SNAPSHOT_MAGIC, _version(self.db_id), 0, self.page_size, self.generation,
                                 self.seq, self.prev_link, self.db_size, self.created_ms,
                                 w.salt1, w.salt2, w.frame, w.checksum1, w.checksum2) + _id_bytes(self.db_id)
        return fixed + _CRC.pack(zlib.crc32(fixed))

    def validate(self, name: str) -> None:
        _check_page_size(name, self.page_size)
        if self.db_size == 0:
            raise CorruptObjectError(name, "invalid database size: 0")


@dataclass(frozen=True)
class Trailer:
    db_checksum: int
    body_len: int
    digest: bytes


class _HashingWriter:
    """Passes writes to ``out`` while hashing and counting them."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes | memoryview) -> int:
        self.sha.update(data)
        self.out.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()


class _ObjectWriter:
    """Writes header, a zstd body fed page by page, and the trailer."""

    def __init__(self, out: BinaryIO, header: bytes, level: int) -> None:
        self._w = _HashingWriter(out)
        self._w.write(header)
        self._head_len = self._w.count
        # zstandard calls only write and flush of what it writes to.
        self._z = zstandard.ZstdCompressor(level=level, write_checksum=True).stream_writer(
            cast(BinaryIO, self._w), closefd=False, write_return_read=True)
        self._buf = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        # Many small writes cost more in call overhead than in compression: batch them.
        self._buf += data
        if len(self._buf) >= _WRITE_BATCH:
            self._z.write(self._buf)
            self._buf = bytearray()

    def close(self, db_checksum: int) -> int:
        """Finish the object; return its total size in bytes."""
        if self._buf:
            self._z.write(self._buf)
        self._z.close()  # ends the zstd frame
        return _write_trailer(self._w, self._head_len, db_checksum)


def _write_trailer(w: _HashingWriter, head_len: int, db_checksum: int) -> int:
    """Write the trailer after a header of ``head_len`` bytes and a body; return the object size."""
    body_len = w.count - head_len
    w.sha.update(struct.pack("<QQ", db_checksum, body_len))
    w.out.write(_TRAILER.pack(db_checksum, body_len, w.sha.digest(), TRAILER_MAGIC))
    return w.count + TRAILER_SIZE


def split_segment(data: bytes, name: str) -> tuple[SegmentHeader, memoryview]:
    """Return the header and the compressed body of the whole segment in ``data``, after
    checking its header checksum and its digest (the body is not decompressed)."""
    header = SegmentReader(io.BytesIO(data), name).header
    head_len = len(header.to_bytes())
    if len(data) < head_len + TRAILER_SIZE:
        raise CorruptObjectError(name, "truncated object: trailer incomplete")
    db_checksum, body_len, digest, magic = _TRAILER.unpack_from(data, len(data) - TRAILER_SIZE)
    if magic != TRAILER_MAGIC:
        raise CorruptObjectError(name, f"invalid trailer magic: {magic!r}")
    if body_len != len(data) - head_len - TRAILER_SIZE:
        raise CorruptObjectError(name, f"body length mismatch: trailer says {body_len}, "
                                       f"object holds {len(data) - head_len - TRAILER_SIZE}")
    sha = hashlib.sha256(memoryview(data)[:len(data) - TRAILER_SIZE])
    sha.update(struct.pack("<QQ", db_checksum, body_len))
    if sha.digest() != digest:
        raise CorruptObjectError(name, "digest mismatch: object is damaged")
    if db_checksum != header.txs[-1].db_checksum:
        raise CorruptObjectError(name, "trailer checksum disagrees with the transaction table")
    return header, memoryview(data)[head_len:len(data) - TRAILER_SIZE]


def concat_segments(parts: list[tuple[str, SegmentHeader, memoryview]], out: BinaryIO) -> tuple[SegmentHeader, int]:
    """Write to ``out`` one segment holding every transaction of ``parts`` (name, header
    and body from ``split_segment``), consecutive segments in order; return its header and size.

    Nothing is recompressed: the result's body is the parts' zstd frames back to back, so
    a restore can still stop after any transaction.
    """
    if not parts:
        raise ValueError("nothing to concatenate")
    headers: list[SegmentHeader] = []
    bodies: list[memoryview] = []
    for name, h, body in parts:
        if headers:
            prev = headers[-1]
            if (h.generation, h.first_seq, h.page_size) != (prev.generation, prev.last_seq + 1, prev.page_size):
                raise ChainError(f"{name}: generation {h.generation:016x} seq {h.first_seq} page size "
                                 f"{h.page_size} does not follow generation {prev.generation:016x} seq "
                                 f"{prev.last_seq} page size {prev.page_size}")
            if h.prev_link != prev.end_link:
                raise ChainError(f"{name}: does not follow the previous segment "
                                 f"(link {h.prev_link.hex()} != {prev.end_link.hex()})")
        headers.append(h)
        bodies.append(body)
    first, last = headers[0], headers[-1]
    header = SegmentHeader(first.page_size, first.generation, first.first_seq, last.last_seq, first.prev_link,
                           last.end_link, last.wal, first.wal_first_frame, tuple(t for h in headers for t in h.txs),
                           SEGMENT_MERGED if any(h.merged for h in headers) else 0,
                           db_id=common_db_id((name, h.db_id) for (name, _, _), h in zip(parts, headers)))
    header.validate("segment")
    w = _HashingWriter(out)
    w.write(header.to_bytes())
    head_len = w.count
    for body in bodies:
        w.write(body)
    return header, _write_trailer(w, head_len, header.txs[-1].db_checksum)


def common_db_id(ids: Iterable[tuple[str, str | None]]) -> str | None:
    """Return the database id shared by consecutive objects (name, id) of one history, None
    when none has one (version 1); raise ChainError when two ids differ. Objects without an
    id were written before ids existed: a generation continued by a newer agent mixes both."""
    found: tuple[str, str] | None = None
    for name, db_id in ids:
        if db_id is None:
            continue
        if found is not None and db_id != found[1]:
            raise ChainError(f"{name}: belongs to database {db_id!r}, {found[0]} to {found[1]!r}")
        found = found or (name, db_id)
    return found[1] if found else None


class SegmentWriter:
    """Encodes one segment: call ``add_page`` for each page of each transaction in order."""

    def __init__(self, out: BinaryIO, header: SegmentHeader, level: int = ZSTD_LEVEL) -> None:
        header.validate("segment")
        self.header = header
        self._obj = _ObjectWriter(out, header.to_bytes(), level)
        self._expected = header.page_count
        self._written = 0

    def add_page(self, pgno: int, data: bytes | memoryview) -> None:
        if len(data) != self.header.page_size:
            raise ValueError(f"page {pgno}: size {len(data)} != page size {self.header.page_size}")
        self._obj.write(_PGNO.pack(pgno))
        self._obj.write(data)
        self._written += 1

    def close(self) -> int:
        """Write the trailer; return the object's size."""
        if self._written != self._expected:
            raise ValueError(f"segment: wrote {self._written} pages, header lists {self._expected}")
        return self._obj.close(self.header.txs[-1].db_checksum)


class SnapshotWriter:
    """Encodes one snapshot: call ``add_page`` for pages 1..db_size in order."""

    def __init__(self, out: BinaryIO, header: SnapshotHeader, level: int = ZSTD_LEVEL) -> None:
        header.validate("snapshot")
        self.header = header
        self._obj = _ObjectWriter(out, header.to_bytes(), level)
        self._written = 0

    def add_pages(self, data: bytes | memoryview) -> None:
        """Append whole pages (``len(data)`` is a multiple of the page size)."""
        self._obj.write(data)
        self._written += len(data) // self.header.page_size

    def close(self, db_checksum: int) -> int:
        if self._written != self.header.db_size:
            raise ValueError(f"snapshot: wrote {self._written} pages, header says {self.header.db_size}")
        return self._obj.close(db_checksum)


class Readable(Protocol):
    """What a reader needs of its source: a binary file, or a wrapper that offers ``read``."""

    def read(self, n: int = -1, /) -> bytes: ...


class _ObjectReader:
    """Reads header bytes, then body bytes decompressed, holding back the trailer."""

    def __init__(self, src: Readable, name: str) -> None:
        self.name = name
        self._src = src
        self._sha = hashlib.sha256()
        self._held = b""  # raw bytes read but not yet consumed
        self._eof = False
        self._body_len = 0
        self._dec = zstandard.ZstdDecompressor().decompressobj()
        self._out = bytearray()
        self._out_pos = 0
        self.trailer: Trailer | None = None

    def _fill(self, need: int) -> None:
        while len(self._held) < need and not self._eof:
            chunk = self._src.read(_READ_CHUNK)
            if not chunk:
                self._eof = True
            else:
                self._held += chunk

    def read_raw(self, n: int, what: str) -> bytes:
        """Read ``n`` header bytes (never from the trailer)."""
        self._fill(n + TRAILER_SIZE)
        if len(self._held) < n + TRAILER_SIZE:
            raise CorruptObjectError(self.name, f"truncated object: {what} incomplete")
        data, self._held = self._held[:n], self._held[n:]
        self._sha.update(data)
        return data

    def _feed_body(self) -> bool:
        """Decompress more body bytes; return False at the end of the body."""
        self._fill(TRAILER_SIZE + 1)
        if len(self._held) <= TRAILER_SIZE:
            return False
        take = len(self._held) - TRAILER_SIZE
        raw, self._held = self._held[:take], self._held[take:]
        self._sha.update(raw)
        self._body_len += len(raw)
        try:
            out = self._decompress(raw)
        except zstandard.ZstdError as e:
            raise CorruptObjectError(self.name, f"compressed body is damaged: {e}") from None
        if out:
            # A new buffer each time: views handed out earlier must stay valid.
            self._out = self._out[self._out_pos:] + out
            self._out_pos = 0
        return True

    def _decompress(self, raw: bytes) -> bytes:
        """Decompress ``raw``, the next body bytes, whatever frame boundaries it crosses."""
        # A body may be several zstd frames back to back (see concat_segments), and a read
        # may end exactly where a frame does: a finished decompressor never takes more input.
        out = b""
        while raw:
            if self._dec.eof:
                self._dec = zstandard.ZstdDecompressor().decompressobj()
            out += self._dec.decompress(raw)
            raw = self._dec.unused_data if self._dec.eof else b""
        return out

    def read_body(self, n: int, what: str) -> memoryview:
        """Return the next ``n`` decompressed body bytes."""
        while len(self._out) - self._out_pos < n:
            if not self._feed_body():
                raise CorruptObjectError(self.name, f"truncated object: {what} missing from body")
        view = memoryview(self._out)[self._out_pos:self._out_pos + n]
        self._out_pos += n
        return view

    def finish(self) -> Trailer:
        """Consume the rest and verify body end, lengths and digest; return the trailer."""
        while self._feed_body():
            pass
        if len(self._out) - self._out_pos:
            raise CorruptObjectError(self.name, f"body has {len(self._out) - self._out_pos} unexpected extra bytes")
        if not self._dec.eof:
            raise CorruptObjectError(self.name, "truncated object: compressed body is incomplete")
        if len(self._held) != TRAILER_SIZE:
            raise CorruptObjectError(self.name, "truncated object: trailer incomplete")
        db_checksum, body_len, digest, magic = _TRAILER.unpack(self._held)
        if magic != TRAILER_MAGIC:
            raise CorruptObjectError(self.name, f"invalid trailer magic: {magic!r}")
        if body_len != self._body_len:
            raise CorruptObjectError(self.name, f"body length mismatch: trailer says {body_len}, read {self._body_len}")
        self._sha.update(self._held[:16])
        if self._sha.digest() != digest:
            raise CorruptObjectError(self.name, "digest mismatch: object is damaged")
        self.trailer = Trailer(db_checksum, body_len, digest)
        return self.trailer


def _read_magic(r: _ObjectReader, expected: bytes) -> int:
    """Read the magic and the format version; return the version."""
    head = r.read_raw(8, "header")
    if head == ENCRYPTED_MAGIC:
        raise CorruptObjectError(r.name, NO_KEY)
    if head != expected:
        raise CorruptObjectError(r.name, f"invalid magic: {head!r} (expected {expected!r})")
    version = struct.unpack("<H", r.read_raw(2, "header"))[0]
    if version not in _VERSIONS:
        raise CorruptObjectError(r.name, f"unsupported format version: {version}")
    return version


def _read_id(r: _ObjectReader, version: int) -> tuple[bytes, str | None]:
    """Read a version 2 header's database id; return its raw field and the id (None in version 1)."""
    if version < 2:
        return b"", None
    raw_len = r.read_raw(_ID_LEN.size, "database id")
    (n,) = _ID_LEN.unpack(raw_len)
    if not 0 < n <= MAX_DB_ID:
        raise CorruptObjectError(r.name, f"invalid database id length: {n}")
    raw = r.read_raw(n, "database id")
    try:
        return raw_len + raw, check_db_id(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptObjectError(r.name, f"invalid database id: {e}") from None


class SegmentReader:
    """Decodes a segment from a stream; ``pages()`` then ``finish()``."""

    def __init__(self, src: Readable, name: str) -> None:
        self.name = name
        self._r = _ObjectReader(src, name)
        version = _read_magic(self._r, SEGMENT_MAGIC)
        rest = self._r.read_raw(_SEG_FIXED.size - 10, "header")
        fixed = SEGMENT_MAGIC + struct.pack("<H", version) + rest
        (_, _, flags, page_size, generation, first_seq, last_seq, prev_link, end_link, salt1, salt2,
         first_frame, last_frame, ck1, ck2, tx_count) = _SEG_FIXED.unpack(fixed)
        id_field, db_id = _read_id(self._r, version)
        if tx_count > 1 << 24:
            raise CorruptObjectError(name, f"invalid transaction count: {tx_count}")
        table = self._r.read_raw(tx_count * _TX.size, "transaction table")
        (crc,) = _CRC.unpack(self._r.read_raw(4, "header checksum"))
        if zlib.crc32(fixed + id_field + table) != crc:
            raise CorruptObjectError(name, "header checksum mismatch")
        txs = tuple(TxInfo(*_TX.unpack_from(table, i * _TX.size)) for i in range(tx_count))
        self.header = SegmentHeader(page_size, generation, first_seq, last_seq, prev_link, end_link,
                                    WalPosition(salt1, salt2, last_frame, ck1, ck2), first_frame, txs, flags,
                                    db_id=db_id)
        self.header.validate(name)

    def pages(self) -> Iterator[tuple[int, int, memoryview]]:
        """Yield (transaction index, page number, page) in order, for the pages inside each
        transaction's database size; views are valid until the next."""
        page_size = self.header.page_size
        for i, tx in enumerate(self.header.txs):
            for _ in range(tx.page_count):
                rec = self._r.read_body(4 + page_size, f"page of transaction {i}")
                pgno = _PGNO.unpack_from(rec)[0]
                if pgno == 0:
                    raise CorruptObjectError(self.name, f"transaction {i}: invalid page number: 0")
                # A transaction that spilled its cache and then shrank the database (auto_vacuum)
                # wrote pages past the size it committed; agents shipped them. As for SQLite,
                # they are not part of the database (the checksum after the transaction says so).
                if pgno <= tx.db_size:
                    yield i, pgno, rec[4:]

    def finish(self) -> Trailer:
        trailer = self._r.finish()
        if trailer.db_checksum != self.header.txs[-1].db_checksum:
            raise CorruptObjectError(self.name, "trailer checksum disagrees with the transaction table")
        return trailer


def read_header(src: Readable, name: str, snapshot: bool) -> SegmentHeader | SnapshotHeader:
    """Return the header of the snapshot (or segment) in ``src``, its checksum checked; the
    body is not read."""
    return (SnapshotReader if snapshot else SegmentReader)(src, name).header


class SnapshotReader:
    """Decodes a snapshot from a stream; ``chunks()`` then ``finish()``."""

    def __init__(self, src: Readable, name: str) -> None:
        self.name = name
        self._r = _ObjectReader(src, name)
        version = _read_magic(self._r, SNAPSHOT_MAGIC)
        rest = self._r.read_raw(_SNAP_FIXED.size - 10, "header")
        fixed = SNAPSHOT_MAGIC + struct.pack("<H", version) + rest
        id_field, db_id = _read_id(self._r, version)
        (crc,) = _CRC.unpack(self._r.read_raw(4, "header checksum"))
        if zlib.crc32(fixed + id_field) != crc:
            raise CorruptObjectError(name, "header checksum mismatch")
        (_, _, _flags, page_size, generation, seq, prev_link, db_size, created_ms,
         salt1, salt2, frame, ck1, ck2) = _SNAP_FIXED.unpack(fixed)
        self.header = SnapshotHeader(page_size, generation, seq, prev_link, db_size, created_ms,
                                     WalPosition(salt1, salt2, frame, ck1, ck2), db_id=db_id)
        self.header.validate(name)

    def chunks(self, pages_per_chunk: int = 256) -> Iterator[tuple[int, memoryview]]:
        """Yield (first page number, run of whole pages) covering pages 1..db_size."""
        ps = self.header.page_size
        pgno = 1
        while pgno <= self.header.db_size:
            n = min(pages_per_chunk, self.header.db_size - pgno + 1)
            yield pgno, self._r.read_body(n * ps, f"page {pgno}")
            pgno += n

    def finish(self) -> Trailer:
        return self._r.finish()
