"""Reading a live database through SQLite, with no agent state: the connections litesync
opens (``connect``), the wal-index header, the committed WAL frames over the database file
(``wal_overlay``, ``read_view``), and the checksum of the whole committed state in one read
transaction (``read_live``, used by validation and ``litesync verify``).

Pages are read through SQLite and the -shm file through one descriptor kept open (see
``read_index_header``): closing a descriptor of either file would drop this process's locks.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import apsw

from . import wal
from .dbhash import DbHash
from .errors import DatabaseError
from .segment import SnapshotWriter, WalPosition

SEAL_TIMEOUT_MS = 5000
_READ_CHUNK_PAGES = 256


class WalChanged(Exception):
    """The WAL changed under a read that needed it stable; the step is retried."""


@dataclass
class View:
    """The database as a read transaction begun under a seal sees it."""

    pos: WalPosition
    header: wal.WalHeader | None
    overlay: dict[int, int]  # pgno -> WAL frame index holding the page for this view
    db_size: int


_shm_fds: dict[tuple[int, int], int] = {}
_shm_fds_lock = threading.Lock()


def read_index_header(shm_path: str, size: int = 2 * wal.INDEX_HEADER_SIZE) -> bytes:
    """Return the wal-index header (both copies, or ``size`` bytes) from a -shm file, or b""
    when there is none.

    SQLite's WAL locks (every reader's pin on the WAL among them) are POSIX locks on the
    -shm file, and closing *any* descriptor of that file drops every lock this process
    holds on it. So the file is read through one descriptor per file, never closed.
    """
    try:
        st = os.stat(shm_path)
    except FileNotFoundError:
        return b""
    key = (st.st_dev, st.st_ino)
    with _shm_fds_lock:
        fd = _shm_fds.get(key)
        if fd is None:
            try:
                fd = os.open(shm_path, os.O_RDONLY)
            except FileNotFoundError:
                return b""
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if key in _shm_fds:  # re-created between stat and open; keep both open
                fd = _shm_fds[key]
            _shm_fds[key] = fd
    return os.pread(fd, size, 0)


# When the current wait for a lock began, per thread (SQLite calls the busy handler in the
# thread that waits, with tries = 0 first).
_waiting = threading.local()


def busy_handler(tries: int) -> bool:
    """Retry a busy lock every 0.2 ms for up to SEAL_TIMEOUT_MS of elapsed time (counting
    tries instead made it twice as long on a loaded machine, where a 0.2 ms sleep takes more)."""
    now = time.monotonic()
    if tries == 0:
        _waiting.since = now
    elif now - getattr(_waiting, "since", now) >= SEAL_TIMEOUT_MS / 1000:
        return False
    time.sleep(0.0002)
    return True


def connect(path: str) -> apsw.Connection:
    """Open ``path`` the way litesync reads and seals it (never checkpointing on its own)."""
    c = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
    # SQLite's own busy handler sleeps up to 100 ms between tries and loses the
    # write lock to a busy writer for seconds; retry every 0.2 ms instead.
    c.set_busy_handler(busy_handler)
    # Closing must not checkpoint: the WAL left behind is how a restarted agent
    # proves it missed nothing.
    c.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    c.execute("PRAGMA wal_autocheckpoint=0")
    return c


def wal_overlay(read_at: wal.ReadAt, hdr: wal.WalHeader | None, committed: int | None,
                after: int = 0) -> tuple[dict[int, int], WalPosition]:
    """Return the WAL frame holding the newest committed version of each page (frames past
    ``after`` only) and the position of the last commit.

    ``committed`` is the wal-index's frame count, read under the write lock: frames past it
    are not committed, however well they chain. Raises WalChanged when it is unknown or
    the frames it counts do not chain (the WAL changed under the read)."""
    overlay: dict[int, int] = {}
    if hdr is None:
        return overlay, WalPosition()
    if committed is None:
        raise WalChanged()
    last = None
    for tx in wal.scan(read_at, hdr, 1, (hdr.checksum1, hdr.checksum2), max_frames=committed, expect=committed):
        last = tx
        for fr in tx.frames:
            if fr.index > after:
                overlay[fr.pgno] = fr.index
    if (last.end_index if last is not None else 0) != committed:
        raise WalChanged()
    if last is None:
        return overlay, WalPosition(hdr.salt1, hdr.salt2, 0, hdr.checksum1, hdr.checksum2)
    return overlay, WalPosition(hdr.salt1, hdr.salt2, last.end_index, *last.checksum)


def read_view(conn: apsw.Connection, page_size: int, view: View, read_at: wal.ReadAt,
              wal_header: Callable[[], wal.WalHeader | None], out: SnapshotWriter | None = None,
              progress: Callable[[int], None] | None = None) -> DbHash:
    """Read every page of ``view`` through ``conn``, which holds the view's read transaction:
    the database file, patched with the view's WAL frames. Hash the pages, write them to
    ``out`` if given, report bytes read to ``progress``. Raises WalChanged when the WAL
    was restarted under the read."""
    ps = page_size
    hasher = DbHash()
    pgno = 1
    while pgno <= view.db_size:
        n = min(_READ_CHUNK_PAGES, view.db_size - pgno + 1)
        _complete, data = conn.read("main", 0, (pgno - 1) * ps, n * ps)
        buf = bytearray(data)
        patched = False
        for i in range(n):
            index = view.overlay.get(pgno + i)
            if index is not None:
                try:
                    buf[i * ps:(i + 1) * ps] = wal.read_page(read_at, view.header, index, pgno + i)  # type: ignore[arg-type]
                except (wal.FrameMismatch, EOFError):
                    # Restarted or truncated (a TRUNCATE checkpoint) under a read on lock 0.
                    raise WalChanged() from None
                patched = True
        if patched and wal_header() != view.header:
            raise WalChanged()
        mv = memoryview(buf)
        for i in range(n):
            hasher.set_page(pgno + i, mv[i * ps:(i + 1) * ps])
        if out is not None:
            out.add_pages(mv)
        pgno += n
        if progress is not None:
            progress((pgno - 1) * ps)
    hasher.truncate(view.db_size)
    return hasher


@dataclass(frozen=True)
class LiveState:
    """The checksum of a live database as one read transaction saw it. Every transaction
    that state holds was committed before wall time ``at``."""

    checksum: int
    pages: int
    page_size: int
    at: float


def read_live(db_path: str, attempts: int = 5) -> LiveState:
    """Read the whole database at ``db_path`` in one read transaction and return its checksum.

    As for a snapshot, a brief seal (the write lock) makes the WAL hold exactly the commits
    the read transaction sees; pages are read through SQLite and patched with those frames.
    Nothing is written and nothing is checkpointed.
    """
    path = os.path.abspath(db_path)
    if not os.path.exists(path):
        raise DatabaseError(f"database does not exist: {path}")
    file = os.path.realpath(path)  # where SQLite keeps the -wal and -shm (see DbAgent)
    wal_fd: list[int] = []

    def read_at(offset: int, size: int) -> bytes:
        if not wal_fd:
            try:
                wal_fd.append(os.open(file + "-wal", os.O_RDONLY))
            except FileNotFoundError:
                return b""
        return os.pread(wal_fd[0], size, offset)

    def header() -> wal.WalHeader | None:
        hdr = wal.WalHeader.parse(read_at(0, wal.WAL_HEADER_SIZE))
        return None if hdr is not None and wal.index_restarted(read_index_header(file + "-shm"), hdr) else hdr

    def committed(hdr: wal.WalHeader | None) -> int | None:
        return 0 if hdr is None else wal.index_frames(read_index_header(file + "-shm"), hdr)

    def backfilled() -> int:
        # Frames already checkpointed are read from the database file: a reader on lock 0
        # (the WAL checkpointed in full) then reads no frame a TRUNCATE could take away.
        shm = read_index_header(file + "-shm", wal.INDEX_READ_SIZE)
        return wal.index_backfilled(shm) or 0

    try:
        seal, reader = connect(path), connect(path)
    except apsw.Error as e:
        raise DatabaseError(f"{path}: {e}") from e
    try:
        for _ in range(attempts):
            try:
                seal.execute("BEGIN IMMEDIATE")
            except apsw.BusyError:
                continue
            try:
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM sqlite_schema").fetchall()
                page_size = reader.execute("PRAGMA page_size").fetchall()[0][0]
                db_size = reader.execute("PRAGMA page_count").fetchall()[0][0]
                assert isinstance(page_size, int) and isinstance(db_size, int)  # what these PRAGMAs answer
                hdr = header()
                try:
                    overlay, pos = wal_overlay(read_at, hdr, committed(hdr), backfilled())
                except WalChanged:
                    reader.execute("COMMIT")
                    continue
                at = time.time()
            finally:
                seal.execute("ROLLBACK")
            try:
                hasher = read_view(reader, page_size, View(pos, hdr, overlay, db_size), read_at, header)
            except WalChanged:
                continue
            finally:
                reader.execute("COMMIT")
            return LiveState(hasher.value, db_size, page_size, at)
    except apsw.Error as e:
        raise DatabaseError(f"{path}: {e}") from e
    finally:
        seal.close()
        reader.close()
        for fd in wal_fd:
            os.close(fd)
    raise DatabaseError(f"{path}: could not read a consistent state after {attempts} attempts")
