"""A checksum of a whole database that follows page writes in O(1) per page.

The checksum is the XOR of one 64-bit hash per page, sha256(pgno || page)[:8]. Writing a
page XORs its old hash out and its new hash in; shrinking the database XORs the dropped
pages out. The agent and a restore both keep one; they must agree after every
transaction, which proves that a restore rebuilt the exact pages the agent saw.

The lock-byte page (the one holding byte offset 1 GiB) hashes as 0 whatever it holds:
SQLite never stores data there, so no WAL frame carries it and a checksum kept from
page writes never sees it, while a full read of the database sees the file's bytes.
"""

from __future__ import annotations

import hashlib
from array import array

from .journal import pending_page


def page_hash(pgno: int, data: bytes | memoryview) -> int:
    """Return the 64-bit hash of page ``pgno`` holding ``data`` (0 for the lock-byte page)."""
    if pgno == pending_page(len(data)):
        return 0
    return raw_page_hash(pgno, data)


def raw_page_hash(pgno: int, data: bytes | memoryview) -> int:
    """Return the hash of ``data`` as page ``pgno``, with no exception for the lock-byte page."""
    h = hashlib.sha256(pgno.to_bytes(4, "big"))
    h.update(data)
    return int.from_bytes(h.digest()[:8], "little")


class DbHash:
    """Per-page hashes of one database and their running XOR."""

    __slots__ = ("_hashes", "value")

    def __init__(self) -> None:
        self._hashes = array("Q")
        self.value = 0

    @property
    def page_count(self) -> int:
        return len(self._hashes)

    def get(self, pgno: int) -> int:
        """Return the hash of page ``pgno`` (0 for a page past the end)."""
        return self._hashes[pgno - 1] if pgno <= len(self._hashes) else 0

    def set_hash(self, pgno: int, h: int) -> None:
        """Record that page ``pgno`` now has hash ``h`` (growing the database if needed)."""
        hashes = self._hashes
        idx = pgno - 1
        if idx >= len(hashes):
            hashes.extend([0] * (idx + 1 - len(hashes)))
        self.value ^= hashes[idx] ^ h
        hashes[idx] = h

    def set_page(self, pgno: int, data: bytes | memoryview) -> None:
        self.set_hash(pgno, page_hash(pgno, data))

    def truncate(self, db_size: int) -> None:
        """Set the database size in pages: drops pages past it; a grown tail is zero pages."""
        hashes = self._hashes
        while len(hashes) > db_size:
            self.value ^= hashes.pop()
        if len(hashes) < db_size:
            # Pages that exist but were never written are holes; give them no weight
            # until written (SQLite writes every page it counts).
            hashes.extend([0] * (db_size - len(hashes)))

    def copy(self) -> "DbHash":
        other = DbHash()
        other._hashes = array("Q", self._hashes)
        other.value = self.value
        return other
