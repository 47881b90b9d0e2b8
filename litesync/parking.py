"""Parking: an idle database's agent closes its connections and descriptors (all but the
agent lock), so that thousands of databases fit in the process's limits; a stat of the
database and its WAL tells whether anything changed since.

Parked, the agent pins nothing: the application may checkpoint and restart the WAL.
``unpark`` connects again and goes on from what was copied: the frames after it when the
WAL still holds them, else the difference between the state copied and the current one,
as one transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterator, Protocol

import apsw

from . import wal
from .checkpointer import Checkpointer
from .connections import Connections, WriteLockBusy
from .copier import FrameCopier
from .dbhash import DbHash
from .livedb import View, WalChanged
from .logs import Labelled
from .segment import TX_CHECKSUM_KNOWN, TxInfo, WalPosition
from .snapshotter import Snapshotter
from .walfile import WalFile

# A file modified within this long of a stat may be written again with the same times
# (the kernel's file times advance by clock ticks of a few milliseconds): see Parking.racy.
_RACY_SECONDS = 0.05
_RESYNC_ATTEMPTS = 3  # reads of a parked database's state that the WAL may interrupt


class Agent(Protocol):
    """What parking needs of the agent: its connections, WAL, copier, checkpointer and
    snapshotter, the identity of its database file, and the replication state."""

    path: str
    log: Labelled
    connections: Connections
    walfile: WalFile
    copier: FrameCopier
    checkpointer: Checkpointer
    snapshotter: Snapshotter
    stats: dict[str, float]
    identity: tuple[int, int] | None
    page_size: int
    generation: int
    next_seq: int
    pos: WalPosition
    hasher: DbHash
    copied_through: tuple[float, int, int]
    restart_ok: bool
    r_begin_pos: WalPosition

    @property
    def wal_path(self) -> str: ...

    @property
    def is_open(self) -> bool: ...

    @property
    def in_flight(self) -> bool: ...

    def sync(self) -> int: ...

    def disconnect(self) -> None: ...

    def connect_stable(self, expect: tuple[int, int] | None = None) -> tuple[int, int]: ...

    def replaced(self) -> str | None: ...

    def adopt_replacement(self, reason: str) -> None: ...

    def new_generation(self, reason: str, level: int = logging.INFO) -> None: ...

    def begin_read(self) -> None: ...

    def wal_continues(self, hdr: wal.WalHeader | None, pos: WalPosition) -> str | None: ...

    def recorded_ms(self) -> int: ...


class Parking:
    """Parks and unparks ``agent``. ``marks``: while parked, what a stat of the database
    and its WAL said at parking (``()`` after ``release``: unlike any stat); None while
    not parked."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.marks: tuple | None = None  # while parked (see ``park``): the files' stat at parking

    @property
    def parked(self) -> bool:
        return self.marks is not None

    def file_marks(self) -> tuple[float, tuple]:
        """(when, what a stat of the database and its -wal says: identity, size, times).
        Any write changes them, but one in the same tick of the file-system clock as the
        stat keeps the times: see ``racy``."""
        taken = time.time()
        marks: list[tuple[int, int, int, int, int] | None] = []
        for path in (self.agent.path, self.agent.wal_path):
            try:
                st = os.stat(path)
                marks.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            except FileNotFoundError:
                marks.append(None)
        return taken, tuple(marks)

    @staticmethod
    def racy(taken: float, marks: tuple) -> bool:
        """True when a file was modified so close to ``taken`` that a later write may have
        left its times as they were (the file-system clock is coarse): the marks prove nothing."""
        newest = max((max(m[3], m[4]) for m in marks if m is not None), default=0)
        return newest >= (taken - _RACY_SECONDS) * 1e9

    def park(self) -> bool:
        """Close every connection and descriptor but the agent lock, once all that is
        committed is copied; return whether it did. Parked, the agent pins nothing: the
        application may checkpoint and restart the WAL, which ``unpark`` must account for."""
        if self.parked or not self.agent.is_open or self.agent.connections.sealed:
            return False
        # The marks are taken before the last look: a commit after them changes them.
        taken, marks = self.file_marks()
        if self.racy(taken, marks):
            return False  # written a moment ago: not idle, and the marks could not tell
        if self.agent.sync() or self.agent.in_flight or self.agent.copier.index_unknown_since is not None:
            return False  # something arrived, or may be arriving: not idle
        self.agent.disconnect()
        self.marks = marks
        self.agent.stats["parks"] += 1
        return True

    def release(self) -> None:
        """Let go of the WAL without copying what is new, because the spool cannot be
        written (its disk full): the connections close, so R no longer pins the WAL, and the
        application's own checkpoints can reuse it. Parked, with work to do: ``unpark``
        copies what is new, or, when the WAL was restarted meanwhile, what changed as one
        transaction (``resync``). Nothing to release before the first snapshot."""
        if self.parked or not self.agent.is_open or self.agent.connections.sealed or not self.agent.generation:
            return
        self.agent.disconnect()
        self.marks = ()  # unlike any stat: the next turn unparks

    def parked_unchanged(self) -> bool:
        """True while parked and neither the database nor its WAL changed since (a stat each):
        then everything committed so far is copied, as ``copied_through`` now says."""
        if not self.marks:
            return False
        taken, marks = self.file_marks()
        if marks != self.marks:
            return False
        self.agent.copied_through = (taken, self.agent.generation, self.agent.next_seq)
        return True

    def unpark(self) -> None:
        """Open the connections of a parked database and continue what was copied.

        When the WAL still holds the frames copied last, the frames after them are copied
        as usual. When it was restarted or removed meanwhile, the frames committed in
        between may have been checkpointed and lost to us: the difference between the state
        copied and the current one is copied as one transaction (``resync``). A database
        file replaced, or a page size changed, starts a new generation. Raises
        WriteLockBusy when the write lock is needed and the app holds it.
        """
        if not self.parked:
            return
        agent = self.agent
        agent.stats["unparks"] += 1
        reason = agent.replaced()
        if reason is not None:
            self.marks = None
            agent.adopt_replacement(f"{reason} while parked")
            return
        page_size = agent.page_size
        agent.connect_stable(expect=agent.identity)  # not replaced since the look above
        self.marks = None
        try:
            self.continue_after_parking(page_size)
        except BaseException:
            # Parked still, in effect: nothing proves that the commits made meanwhile are
            # copied, so copied_through must not move on (a resync that failed on a full
            # disk, or on a WAL truncated under it, left them behind), and the next turn
            # unparks again.
            with contextlib.suppress(apsw.Error):
                agent.disconnect()
            self.marks = ()
            raise

    def continue_after_parking(self, page_size: int) -> None:
        """The part of ``unpark`` after connecting: go on from what was copied before parking."""
        agent = self.agent
        if agent.page_size != page_size:
            agent.new_generation(f"the page size changed from {page_size} to {agent.page_size} while parked")
            return
        agent.begin_read()
        hdr = agent.walfile.header()
        if agent.wal_continues(hdr, agent.pos) is None:
            # R pins the WAL (no restart while it reads) unless the WAL was checkpointed in
            # full when it began: then it read the database file alone, pins nothing, and
            # frames after ours could go with a restart before they are copied. Seen from
            # here: frames up to ours not yet checkpointed prove the first case.
            backfilled = wal.index_backfilled(agent.walfile.read_index())
            if hdr is not None and backfilled is not None and backfilled < agent.pos.frame:
                return  # ``sync`` copies the frames after ours
            # Copy what is new and restart R under a seal, as a checkpoint does, so that a
            # WAL restart from then on is known harmless (else, a new generation).
            agent.checkpointer.cycle(checkpoint=False)
            return
        for _attempt in range(_RESYNC_ATTEMPTS):
            if not agent.connections.seal():
                raise WriteLockBusy(f"{agent.path}: the application holds the write lock")
            try:
                # Every committed frame, R reading under the seal. No checkpoint: one that
                # empties the WAL lets the app's next commit restart it, and the next unpark
                # come here again.
                view = agent.snapshotter.reopen_view(checkpoint=False)
            except WalChanged:
                continue
            finally:
                agent.connections.unseal()
            try:
                self.resync(view)
                return
            except WalChanged:
                # R may read the WAL under read lock 0 (it was checkpointed in full), which
                # does not stop the app from restarting it while the pages are read.
                continue
        agent.new_generation("the WAL kept changing while the agent read the database it had parked")

    def resync(self, view: View) -> None:
        """After a WAL restart while parked, the commits in between may have been
        checkpointed and their frames lost to us; the state they made is in ``view``
        (pinned by R, begun under the seal). Copy the difference between the state copied
        and that one as one transaction: the history passes from one to the other directly."""
        agent = self.agent
        found = agent.snapshotter.scan_view(view, None)
        old = agent.hasher
        changed = [pgno for pgno in range(1, view.db_size + 1) if found.get(pgno) != old.get(pgno)]
        if changed or view.db_size != old.page_count:
            ps = agent.page_size

            def pages() -> Iterator[tuple[int, bytes | memoryview]]:
                for pgno in changed:
                    index = view.overlay.get(pgno)
                    if index is not None:
                        try:
                            yield pgno, wal.read_page(agent.walfile.read_at, view.header,  # type: ignore[arg-type]
                                                      index, pgno)
                        except (wal.FrameMismatch, EOFError):
                            raise WalChanged() from None  # restarted or truncated under the read
                    else:
                        reader = agent.connections.reader
                        assert reader is not None  # R pins the view (see above)
                        yield pgno, reader.read("main", 0, (pgno - 1) * ps, ps)[1]

            tx = TxInfo(agent.recorded_ms(), view.db_size, len(changed), found.value, TX_CHECKSUM_KNOWN)
            # A restart changes the WAL's header: the pages read from it are the view's if it did not.
            agent.copier.write_segment([tx], view.pos.frame + 1, view.pos, pages(),
                                       changed=lambda: agent.walfile.header() != view.header)
            agent.log.info("the WAL was restarted while the database was parked: copied what changed "
                           "(%d page%s) as one transaction", len(changed), "" if len(changed) == 1 else "s")
        agent.pos = view.pos
        agent.hasher = found
        agent.restart_ok = True  # R began under the seal, and everything it sees is copied
        agent.r_begin_pos = agent.pos
