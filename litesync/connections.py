"""The agent's two connections to one database, the seal and the checkpoints.

``reader`` holds the read transaction that pins the WAL: while it reads, no writer can
restart the WAL past frames it might read. ``sealer`` takes the write lock (the *seal*),
so that no frame is appended while the agent looks at the WAL, and checkpoints outside
the seal; under the seal, ``reader`` checkpoints between two reads.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import apsw

from .errors import DatabaseError
from . import livedb
from .livedb import busy_handler, connect

# A TRUNCATE checkpoint holds the write lock while it waits for readers: it waits this
# long at most (ms), so the app's writers barely notice, and tries again later.
TRUNCATE_WAIT_MS = 20


class WriteLockBusy(DatabaseError):
    """The application held the write lock for longer than a seal may wait; retryable."""

    retryable = True


class Connections:
    """The reader and the sealer of the database at ``path``; ``stats`` counts the seals
    (their number and time held) and the checkpoints."""

    def __init__(self, path: str, log: logging.Logger | logging.LoggerAdapter, stats: dict[str, float]) -> None:
        self.path = path
        self.log = log
        self.stats = stats
        self.reader: apsw.Connection | None = None
        self.sealer: apsw.Connection | None = None
        self.reading = False  # reader holds its read transaction
        self._seal_depth = 0
        self._sealed_at = 0.0

    @property
    def is_open(self) -> bool:
        return self.reader is not None

    @property
    def sealed(self) -> bool:
        return self._seal_depth > 0

    def open(self) -> int:
        """Open both connections, switching the database to WAL mode if needed; return its page size."""
        self.reader, self.sealer = connect(self.path), connect(self.path)
        try:
            mode = self.sealer.execute("PRAGMA journal_mode").fetchall()[0][0]
            assert isinstance(mode, str)  # journal_mode answers the mode's name
            if mode.lower() != "wal":
                mode = self.sealer.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
                assert isinstance(mode, str)
                if mode.lower() != "wal":
                    raise DatabaseError(f"{self.path}: cannot switch to WAL mode (journal_mode is {mode!r})")
                self.log.info("switched the database to WAL mode")
            page_size = self.sealer.execute("PRAGMA page_size").fetchall()[0][0]
            assert isinstance(page_size, int)  # page_size answers an integer
            return page_size
        except BaseException as e:
            for c in (self.reader, self.sealer):
                c.close()
            self.reader = self.sealer = None
            if isinstance(e, apsw.Error):
                raise DatabaseError(f"{self.path}: {e}") from e
            raise

    def close(self) -> None:
        """End the read and close both connections (nothing when closed)."""
        self.end_read()
        for c in (self.reader, self.sealer):
            if c is not None:
                c.close()
        self.reader = self.sealer = None

    def begin_read(self) -> None:
        """Begin the reader's read transaction, which pins the WAL as it is now."""
        assert self.reader is not None  # the reader reads while open
        self.reader.execute("BEGIN")
        self.reader.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        self.reading = True

    def end_read(self) -> None:
        if self.reading and self.reader is not None:
            self.reader.execute("COMMIT")
        self.reading = False

    def seal(self) -> bool:
        """Take the write lock so no frame can be appended (again, when sealed already: one
        ``unseal`` per ``seal``); False when the app held it too long."""
        if self._seal_depth:
            self._seal_depth += 1
            return True
        assert self.sealer is not None  # the seal is taken while open
        try:
            self.sealer.execute("BEGIN IMMEDIATE")
            self._seal_depth = 1
            self._sealed_at = time.monotonic()
            return True
        except apsw.BusyError:
            self.log.warning("could not take the write lock within %d ms; will retry", livedb.SEAL_TIMEOUT_MS)
            return False

    def unseal(self) -> None:
        self._seal_depth -= 1
        if self._seal_depth == 0:
            assert self.sealer is not None  # still open: the sealer holds the seal
            self.sealer.execute("ROLLBACK")
            self._count_seal(time.monotonic() - self._sealed_at)

    def _count_seal(self, held: float) -> None:
        self.stats["seals"] += 1
        self.stats["seal_seconds"] += held
        self.stats["max_seal_seconds"] = max(self.stats["max_seal_seconds"], held)

    def checkpoint(self) -> tuple[int, int]:
        """Run a PASSIVE checkpoint; return (frames in the WAL, frames checkpointed).

        A connection checkpoints only outside a transaction: the sealer, unless it holds
        the seal; then the reader, which must be between reads."""
        if self._seal_depth:
            assert not self.reading, "checkpoint under the seal while the reader reads"
            conn = self.reader
        else:
            conn = self.sealer
        assert conn is not None  # checkpoints happen while open
        busy, log_frames, ckpt = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        assert isinstance(log_frames, int) and isinstance(ckpt, int)  # wal_checkpoint answers integers
        self.stats["checkpoints"] += 1
        self.log.debug("checkpoint: busy=%d wal=%d checkpointed=%d", busy, log_frames, ckpt)
        return max(log_frames, 0), max(ckpt, 0)

    def checkpoint_truncate(self, worth_waiting: Callable[[], bool]) -> bool:
        """Run a TRUNCATE checkpoint through the sealer, waiting for locks up to
        TRUNCATE_WAIT_MS while ``worth_waiting()``; True when it emptied the WAL."""
        assert self.sealer is not None and not self._seal_depth  # the sealer checkpoints outside the seal
        deadline = time.monotonic() + TRUNCATE_WAIT_MS / 1000

        def brief(_tries: int) -> bool:
            if time.monotonic() >= deadline or not worth_waiting():
                return False
            time.sleep(0.0002)
            return True

        self.sealer.set_busy_handler(brief)
        t0 = time.monotonic()
        try:
            busy = self.sealer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0]
        except apsw.BusyError:
            busy = 1
        finally:
            self.sealer.set_busy_handler(busy_handler)
        # It holds the write lock as a seal does (while it waits, too): counted as one.
        self._count_seal(time.monotonic() - t0)
        self.stats["checkpoints"] += 1
        return busy == 0
