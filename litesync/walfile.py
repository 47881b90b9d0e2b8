"""The agent's reads of one database's ``-wal`` file and of its wal-index (the ``-shm``
file's header), through descriptors it keeps open.

Reading the ``-wal`` with plain I/O is safe; the descriptors stay open until ``close``,
because closing a descriptor of a file SQLite holds locks on, while a connection of this
process is open, drops those locks (see DESIGN.md).
"""

from __future__ import annotations

import os

from . import wal


class WalFile:
    """The WAL at ``wal_path`` and the wal-index at ``shm_path``; ``stats`` keeps the
    largest WAL size seen (``max_wal_bytes``)."""

    def __init__(self, wal_path: str, shm_path: str, stats: dict[str, float]) -> None:
        self.wal_path = wal_path
        self.shm_path = shm_path
        self.stats = stats
        self._wal_fd: int | None = None
        self._shm_fd: int | None = None

    def close(self) -> None:
        """Close the descriptors of the -wal and -shm (only once no connection of this
        process is open: closing them sooner would drop its locks)."""
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        if self._shm_fd is not None:
            os.close(self._shm_fd)
            self._shm_fd = None

    def read_at(self, offset: int, size: int) -> bytes:
        if self._wal_fd is None:
            try:
                self._wal_fd = os.open(self.wal_path, os.O_RDONLY)
            except FileNotFoundError:
                return b""
        return os.pread(self._wal_fd, size, offset)

    def header(self) -> wal.WalHeader | None:
        """The WAL's header; None when there is no WAL, or none by the wal-index (restarted,
        nothing written since)."""
        hdr = wal.WalHeader.parse(self.read_at(0, wal.WAL_HEADER_SIZE))
        if hdr is not None and wal.index_restarted(self.read_index(), hdr):
            return None
        if hdr is not None:
            size = os.fstat(self._wal_fd).st_size  # type: ignore[arg-type]
            if size > self.stats["max_wal_bytes"]:
                self.stats["max_wal_bytes"] = size
        return hdr

    def read_index(self) -> bytes:
        """The wal-index header's two copies and nBackfill, from the -shm file (b"" when there is none).

        The descriptor stays open until ``close``: closing one drops SQLite's locks."""
        if self._shm_fd is None:
            try:
                self._shm_fd = os.open(self.shm_path, os.O_RDONLY)
            except OSError:
                return b""
        return os.pread(self._shm_fd, wal.INDEX_READ_SIZE, 0)

    def index_frames(self, hdr: wal.WalHeader) -> int | None:
        """The WAL's frame count by the wal-index (the -shm file), when it can be read."""
        return wal.index_frames(self.read_index(), hdr)

    def size(self) -> int:
        """The WAL file's size, 0 when there is none."""
        self.read_at(0, 0)  # opens it if it exists
        return os.fstat(self._wal_fd).st_size if self._wal_fd is not None else 0
