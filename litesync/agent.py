"""Replication of one database: ``DbAgent`` owns its state (generation, position copied,
hash of the state copied, the state of ``R``) and drives the parts that act on it: the
frame copier (``copier.py``), the checkpointer (``checkpointer.py``), the snapshotter
(``snapshotter.py``) and parking (``parking.py``), over the database's connections
(``connections.py``) and its WAL file (``walfile.py``). It decides between going on and a
new generation: at start (resume), when the WAL restarts, when the file is replaced.
Shipping from the spool to replicas lives in ``shipper.py``; the scheduler that runs the
agent's turns in ``engine.py`` and ``runner.py``.

Continuity rests on one SQLite rule: while a connection holds a read transaction, no
writer can restart the WAL past frames it might read, except when the WAL was wholly
checkpointed when that read began (then a writer may restart it exactly once, before
appending anything). So the agent keeps a read transaction ``R`` open at all times and
only (re)starts it under a *seal* (the write lock, taken by connection ``W``) right after
it has copied every committed frame. A WAL restart seen while nothing has been copied
since ``R`` began is therefore harmless; any other restart, or anything the agent cannot
explain after a restart of its own process, starts a new generation with a new snapshot.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from typing import Callable

import apsw

from . import layout, wal
from .layout import state_dir_for
from .status import LOCK_FILE
from .dbhash import DbHash, page_hash
from .engine import Signal
from .errors import DatabaseError
from .connections import Connections, WriteLockBusy
from .livedb import WalChanged
from .logs import Labelled
from .segment import (NO_LINK, SegmentHeader, SegmentReader, SnapshotHeader,
                      SnapshotReader, WalPosition)
from .checkpointer import Checkpointer
from .copier import Diverged, FrameCopier
from .parking import Parking
from .snapshotter import Snapshotter, now_ms
from .spool import Spool
from .walfile import WalFile

log = logging.getLogger(__name__)

# The wal-index unusable this long (s): the agent takes the write lock once, which repairs it.
_INDEX_REPAIR_AFTER = 0.5


_sqlite_memory_economized = False


def economize_sqlite_memory() -> None:
    """Turn off SQLite's per-connection lookaside memory in this process (about 45 KiB of
    each connection's 160 KiB, three per database: 135 MB for an agent of a thousand
    databases). The agent's statements are few and simple, so the small allocations it
    serves do not matter. SQLite must not be shut down with a connection open: call it
    first thing in a process (``litesync replicate`` does), never in an embedding one."""
    global _sqlite_memory_economized
    if _sqlite_memory_economized:
        return
    try:
        apsw.shutdown()
        apsw.config(apsw.SQLITE_CONFIG_LOOKASIDE, 0, 0)
        apsw.initialize()
    except apsw.Error as e:  # connections already open (an embedding application's)
        log.debug("SQLite lookaside left as it is: %s", e)
    _sqlite_memory_economized = True


class DbAgent:
    """Replicates one database into its local spool: the state, and the turn that drives
    the copier, checkpointer, snapshotter and parking over it (``step``)."""

    def __init__(self, db_path: str, *, checkpoint_pages: int = 1000,
                 snapshot_interval: float | None = 4 * 3600, label: str | None = None,
                 db_id: str | None = None, max_wal_size: int = 64 << 20) -> None:
        self.path = os.path.abspath(db_path)
        self.db_id = db_id or layout.default_db_id(self.path)  # written into every object (see DbConfig)
        self.label = label or self.path
        self.log = Labelled(log, self.label)
        self.checkpoint_pages = checkpoint_pages
        self.max_wal_size = max_wal_size
        self.snapshot_interval = snapshot_interval
        self.state_dir = state_dir_for(self.path)
        self._made_state_dir = not os.path.isdir(self.state_dir)  # see discard_new_state
        self.spool = Spool(os.path.join(self.state_dir, "spool"))
        self.wake = Signal()  # set on a file event; the engine's task is woken with it
        self.snapshot_requested = Signal()
        # Generation ids must grow whatever the clock does: a replica may hold a newer one.
        self.generation_floor = 0
        self.last_recorded_ms = 0  # see recorded_ms
        self.newer_generation_seen = threading.Event()
        self.generation = 0
        self.next_seq = 0
        self.end_link = NO_LINK
        self.pos = WalPosition()
        self.hasher = DbHash()
        self.page_size = 0
        self.last_snapshot_at = 0.0
        self.stats: dict[str, float] = {"segments": 0, "transactions": 0, "checkpoints": 0, "snapshots": 0,
                                        "generations": 0, "max_wal_bytes": 0, "snapshot_seconds": 0.0,
                                        "seals": 0, "seal_seconds": 0.0, "max_seal_seconds": 0.0,
                                        "wal_truncations": 0, "wal_shrinks": 0,
                                        "parks": 0, "unparks": 0, "errors": 0}
        # SQLite follows a symbolic link to the database and keeps its -wal and -shm beside
        # the file it leads to: so does the agent. The state directory stays by the name.
        self.walfile = WalFile(os.path.realpath(self.path) + "-wal", os.path.realpath(self.path) + "-shm",
                               self.stats)
        # (t, generation, next_seq): every transaction committed before wall time t is in
        # the spool, in segments before next_seq of that generation.
        self.copied_through: tuple[float, int, int] = (0.0, 0, 0)
        self.restart_ok = False
        self.r_begin_pos = WalPosition()
        self.r_on_lock0 = False  # R began under the seal on a WAL checkpointed in full (see Checkpointer.cycle)
        self._file_at_read: tuple[int, int, int] | None = None  # the database file's stat when R began
        self._lock_fd: int | None = None
        self.identity: tuple[int, int] | None = None  # (device, inode) of the database file, once open
        # R (the reader) holds the read transaction that pins the WAL; W (the sealer) takes the
        # write lock (the seal) and checkpoints outside it (see connections.py).
        self.connections = Connections(self.path, self.log, self.stats)
        # Copies the committed frames into the spool, advancing this agent's position.
        self.copier = FrameCopier(self, self.walfile)
        # Checkpoints the WAL under brief seals and truncates it when it grew too large.
        self.checkpointer = Checkpointer(self)
        # Writes snapshots, and with them new generations.
        self.snapshotter = Snapshotter(self)
        # Closes the connections of an idle database, and opens them again.
        self.parking = Parking(self)

    # -- connections -----------------------------------------------------------------

    def lock(self) -> None:
        """Take the agent lock of this database (held until ``close``): one agent per database."""
        if self._lock_fd is not None:
            return
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        if os.stat(self.state_dir).st_mode & 0o077:
            # It holds database pages (the spool); older litesync versions left it readable by all.
            os.chmod(self.state_dir, 0o700)
        self._lock_fd = os.open(os.path.join(self.state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        # `litesync status` holds a shared lock for an instant to see whether an agent runs.
        for attempt in range(20):
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 19:
                    os.close(self._lock_fd)
                    self._lock_fd = None
                    raise DatabaseError(f"another litesync agent is replicating {self.path}") from None
                time.sleep(0.05)
        # A validation's restore left by an agent killed during it (as big as the database):
        # with the lock held, no validation of another agent can be under way.
        for name in os.listdir(self.state_dir):
            if name.startswith(layout.VALIDATION_TMP_PREFIX):
                shutil.rmtree(os.path.join(self.state_dir, name), ignore_errors=True)

    def open(self) -> None:
        """Take the agent lock, open connections, and make sure the database is in WAL mode."""
        if not os.path.exists(self.path):
            raise DatabaseError(f"database does not exist: {self.path}")
        self.lock()
        self._connect()
        st = os.stat(self.path)
        self.identity = (st.st_dev, st.st_ino)  # the file replicated, whatever its name becomes

    def _connect(self) -> None:
        self.page_size = self.connections.open()

    @property
    def wal_path(self) -> str:
        return self.walfile.wal_path

    @property
    def shm_path(self) -> str:
        return self.walfile.shm_path

    @property
    def in_flight(self) -> bool:
        """A frame follows the committed ones: a commit is probably in flight (see copier.py)."""
        return self.copier.in_flight

    @property
    def is_open(self) -> bool:
        """True once ``open`` made the connections."""
        return self.connections.is_open

    @property
    def locked(self) -> bool:
        """True while this agent holds the database's agent lock."""
        return self._lock_fd is not None

    def close(self) -> None:
        self.disconnect()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def disconnect(self) -> None:
        """Close the connections, then the agent's own descriptors of the -wal and -shm
        (closing those while a connection of this process is open would drop its locks)."""
        self.connections.end_read()
        # Whatever R pinned is gone: a WAL restart proves nothing until R reads again
        # under a seal with everything copied.
        self.restart_ok = False
        self.connections.close()
        self.walfile.close()

    # -- parking: an idle database without connections (see parking.py) --------------

    @property
    def parked(self) -> bool:
        return self.parking.parked

    def park(self) -> bool:
        """Close every connection and descriptor but the agent lock, once all that is
        committed is copied; return whether it did (see ``Parking.park``)."""
        return self.parking.park()

    def release(self) -> None:
        """Let go of the WAL without copying what is new, the spool unwritable (see ``Parking.release``)."""
        self.parking.release()

    def parked_unchanged(self) -> bool:
        """True while parked and neither the database nor its WAL changed since (see ``Parking.parked_unchanged``)."""
        return self.parking.parked_unchanged()

    def unpark(self) -> None:
        """Open the connections of a parked database and continue what was copied (see
        ``Parking.unpark``); raises WriteLockBusy when the write lock is needed and the app holds it."""
        self.parking.unpark()

    def _path_identity(self) -> tuple[int, int] | None:
        """(device, inode) of the file at the database's path now, None when there is none."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def replaced(self) -> str | None:
        """Why the file at the database's path is no longer the one replicated (a stat), or
        None. A file that is gone is not replaced: an app that holds it open may go on
        writing to it, and the agent goes on copying."""
        now = self._path_identity()
        if now is None or self.identity is None or now == self.identity:
            return None
        return (f"the database file was replaced (device {self.identity[0]} inode {self.identity[1]}, "
                f"now inode {now[1]})")

    def adopt_replacement(self, reason: str) -> None:
        """Replicate the file now at the database's path: its own connections, a new
        generation from it. Nothing of it is ever appended to the old file's history: the
        identity moves to the new file only once its first snapshot is in the spool, so a
        failure here is tried again from the start at the next turn."""
        self.disconnect()
        # The path may lead elsewhere now (a symbolic link pointed at another file): the
        # WAL and wal-index read are those beside the file it leads to.
        real = os.path.realpath(self.path)
        self.walfile.wal_path, self.walfile.shm_path = real + "-wal", real + "-shm"
        identity = self.connect_stable()
        hdr = self.walfile.header()
        if hdr is not None and self.pos.frame and (hdr.salt1, hdr.salt2) == (self.pos.salt1, self.pos.salt2):
            self.disconnect()
            raise DatabaseError(
                f"{self.path}: the database file was replaced but the replaced database's WAL is still "
                f"beside it ({self.wal_path}), and SQLite applies it to the new file; remove the -wal and "
                f"-shm files before replacing a database (with the app stopped), or stop litesync first")
        self.new_generation(f"{reason}: replicating the new file", logging.WARNING)
        self.identity = identity

    def connect_stable(self, expect: tuple[int, int] | None = None) -> tuple[int, int]:
        """Connect to the file at the database's path and return its identity, when it was
        the same file before and after connecting, and the one ``expect``-ed if given (else
        it was being replaced: raise, connections closed)."""
        before = self._path_identity()
        if before is None:
            raise DatabaseError(f"database does not exist: {self.path}")
        self._connect()
        if self._path_identity() != before or expect not in (None, before):
            self.disconnect()
            raise DatabaseError(f"{self.path}: the database file changed while the agent opened it; will retry")
        return before

    def discard_new_state(self) -> None:
        """Remove the state directory after a start that failed, if this agent created it and
        wrote nothing into its spool: a failed start leaves nothing behind."""
        if self._made_state_dir and self._lock_fd is None and not self.spool.objects():
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def begin_read(self) -> None:
        self.r_on_lock0 = False
        self.connections.begin_read()
        self._file_at_read = self._file_stat()  # after R holds its read lock: see _file_differs

    def _file_stat(self) -> tuple[int, int, int] | None:
        """(size, mtime, ctime) of the database file, None when its path leads nowhere."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ctime_ns

    # -- state -----------------------------------------------------------------------

    def start(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Resume the spool's generation when continuity is provable, else start a new one.

        An application may hold the write lock for long (a huge transaction): replication
        then starts once it lets go, unless ``stopping`` says to give up."""
        while True:
            try:
                self.start_once()
                return
            except WriteLockBusy:
                if stopping():
                    raise
                self.log.warning("the application holds the write lock; waiting for it to start replication")

    def start_once(self) -> None:
        """One attempt of ``start``; raises WriteLockBusy while the application holds the write lock."""
        try:
            reason = self._try_resume()
        except WalChanged:
            reason = "the WAL changed while the agent was resuming"
        if reason is not None:
            self.new_generation(reason)

    def _try_resume(self) -> str | None:
        """Resume from the spool; return why not, or None when resumed."""
        last = self.spool.last_object()
        if last is None:
            return "no previous state"
        name, path = last
        h: SegmentHeader | SnapshotHeader
        with open(path, "rb") as f:
            if isinstance(name, layout.SegmentName):
                h = SegmentReader(f, path).header
                self.next_seq, self.end_link, pos = h.last_seq + 1, h.end_link, h.wal
            else:
                h = SnapshotReader(f, path).header
                self.next_seq, self.end_link, pos = h.seq, h.prev_link, h.wal
        if h.page_size != self.page_size:
            return f"page size changed from {h.page_size} to {self.page_size}"
        if h.db_id is not None and h.db_id != self.db_id:
            return f"the database id changed from {h.db_id!r} to {self.db_id!r}"
        hdr = self.walfile.header()
        if hdr is None:
            return self._resume_from_file(name, path, pos)
        reason = self.wal_continues(hdr, pos)
        if reason is not None:
            return reason
        self.generation, self.pos = name.generation, pos
        self.last_recorded_ms = name.created_ms if isinstance(name, layout.SnapshotName) else name.last_commit_ms
        # Copy what was committed while the agent was away: all but the last transaction
        # outside the seal (its checksums unknown: the hash of the state at ``pos`` is not
        # kept), R pinning those frames meanwhile; the rest under the seal, after which the
        # view is read in full and its checksum recorded with the last transaction.
        self.begin_read()
        try:
            txs, read_at = self.copier.uncopied(hdr)
        except Diverged as e:
            return str(e)
        if len(txs) > 1:
            self.copier.spool_transactions(txs[:-1], hdr, read_at, recheck=hdr, checksums_known=False)
        if not self.connections.seal():
            self.connections.end_read()
            raise WriteLockBusy(f"{self.path}: the application holds the write lock")
        try:
            if self.walfile.header() != hdr:
                return "the WAL was restarted while the agent was resuming"
            try:
                txs, read_at = self.copier.uncopied(hdr)
            except Diverged as e:
                return str(e)
            tail = self.copier.capture(hdr, txs, read_at)
            view = self.snapshotter.reopen_view()
        finally:
            self.connections.unseal()
        new_hash = self.snapshotter.scan_view(view, None)
        if txs:
            self.copier.spool_transactions(txs, hdr, tail.read_at, final_hash=new_hash)
        elif new_hash.value != self._spool_checksum(name, path):
            return "the database changed while the agent was stopped without a trace in the WAL"
        self._resumed(new_hash)
        return None

    def _resume_from_file(self, name: layout.SegmentName | layout.SnapshotName, path: str,
                          pos: WalPosition) -> str | None:
        """Resume with no WAL (removed, or emptied by a TRUNCATE checkpoint) when the
        database file alone holds the state copied last; return why not, or None."""
        if not self.connections.seal():
            raise WriteLockBusy(f"{self.path}: the application holds the write lock")
        try:
            if self.walfile.header() is not None:
                raise WalChanged()
            view = self.snapshotter.reopen_view(checkpoint=False)
        finally:
            self.connections.unseal()
        found = self.snapshotter.scan_view(view, None)
        if found.value != self._spool_checksum(name, path):
            return "the WAL was removed or reset while the agent was stopped"
        self.generation, self.pos = name.generation, pos
        self.last_recorded_ms = name.created_ms if isinstance(name, layout.SnapshotName) else name.last_commit_ms
        self._resumed(found)
        return None

    def _resumed(self, hasher: DbHash) -> None:
        """Resumed at ``self.pos`` with ``hasher`` the state copied, R begun under the seal with all of it copied."""
        self.hasher = hasher
        self.restart_ok = True
        self.r_begin_pos = self.pos
        # The interval runs from the generation's newest snapshot still in the spool, or from now.
        self.last_snapshot_at = self.spool.last_snapshot_time(self.generation) or time.time()
        self.log.info("resumed generation %s at segment %d",
                      layout.format_generation(self.generation), self.next_seq)

    def wal_continues(self, hdr: wal.WalHeader | None, pos: WalPosition) -> str | None:
        """Why the WAL does not continue from ``pos`` (the last position copied), or None."""
        if hdr is None:
            return "the WAL was removed or reset while the agent was stopped"
        if hdr.salts != (pos.salt1, pos.salt2):
            return "the WAL was restarted while the agent was stopped"
        if pos.frame == 0:
            if (hdr.checksum1, hdr.checksum2) != (pos.checksum1, pos.checksum2):
                return "the WAL header changed while the agent was stopped"
            return None
        fh = self.walfile.read_at(hdr.frame_offset(pos.frame), wal.FRAME_HEADER_SIZE)
        if len(fh) < wal.FRAME_HEADER_SIZE or fh[8:24] != (
                pos.salt1.to_bytes(4, "big") + pos.salt2.to_bytes(4, "big")
                + pos.checksum1.to_bytes(4, "big") + pos.checksum2.to_bytes(4, "big")):
            return f"WAL frame {pos.frame} is not the one last copied"
        return None

    @staticmethod
    def _spool_checksum(name: layout.SegmentName | layout.SnapshotName, path: str) -> int:
        with open(path, "rb") as f:
            if isinstance(name, layout.SegmentName):
                r = SegmentReader(f, path)
                for _ in r.pages():
                    pass
                return r.finish().db_checksum
            s = SnapshotReader(f, path)
            for _ in s.chunks():
                pass
            return s.finish().db_checksum

    # -- copying frames ------------------------------------------------------------

    def restart_harmless(self) -> bool:
        """True when a WAL restart cannot have dropped uncopied frames: ``R`` began under a
        seal with everything copied, and nothing was copied since."""
        return self.restart_ok and self.connections.reading and self.pos == self.r_begin_pos

    def _file_differs(self) -> str | None:
        """Why the database file is not the state copied last, or None. Meaningful while a
        WAL restart is harmless: the WAL was checkpointed in full into the file, and ``R``'s
        read lock 0 keeps any checkpoint out since it began, so SQLite has not written the
        file since then and it holds exactly that state. A file written in place (copied
        over, restored over) shows as a changed size or file time since ``R`` began, or as a
        size or first page that are not the state's (when it was written before)."""
        reader = self.connections.reader
        assert reader is not None  # R pins the state (see above)
        now = self._file_stat()
        if now is None:
            return None  # unlinked while the app writes on: nothing to compare, the copying goes on
        if self._file_at_read is not None and now != self._file_at_read:
            return "the database file was changed in place: written since the agent's read of it began"
        size = now[0]
        expected = self.hasher.page_count * self.page_size
        if size < expected:
            return (f"the database file was changed in place: it holds {size} bytes, "
                    f"the state copied last {expected}")
        first = reader.read("main", 0, 0, self.page_size)[1]
        if self.hasher.page_count and page_hash(1, first) != self.hasher.get(1):
            return "the database file was changed in place: its first page is not the one copied last"
        return None

    def sync(self) -> int:
        """Copy newly committed transactions into the spool; return how many."""
        t0 = time.time()
        hdr = self.walfile.header()
        if hdr is None:
            self.copied_through = (t0, self.generation, self.next_seq)
            return 0
        if hdr.salts != (self.pos.salt1, self.pos.salt2):
            if not self.restart_harmless():
                self.new_generation("the WAL was restarted before all its frames were copied")
                return 0
            changed = self._file_differs()
            if changed is not None:
                self.new_generation(changed, logging.WARNING)
                return 0
            self.log.debug("WAL restarted (salts %08x %08x)", hdr.salt1, hdr.salt2)
            self.pos = WalPosition(hdr.salt1, hdr.salt2, 0, hdr.checksum1, hdr.checksum2)
            self.restart_ok = False
        try:
            txs, read_at = self.copier.uncopied(hdr)
        except WalChanged:
            return 0
        except Diverged as e:
            self.new_generation(str(e))
            return 0
        if txs:
            try:
                self.copier.spool_transactions(txs, hdr, read_at, recheck=hdr)
            except WalChanged:
                return 0
            self.restart_ok = False
        self.copied_through = (t0, self.generation, self.next_seq)
        return len(txs)

    # -- checkpoints --------------------------------------------------------------

    def checkpoint(self) -> bool:
        """Let the WAL restart without holding the write lock for long; False if a seal failed
        (see ``Checkpointer.checkpoint``)."""
        return self.checkpointer.checkpoint()

    def truncate_wal(self, checkpointed: bool = False) -> bool:
        """Shrink the WAL file to nothing once every frame in it is copied; return whether it
        did (see ``Checkpointer.truncate_wal``)."""
        return self.checkpointer.truncate_wal(checkpointed)

    def recorded_ms(self) -> int:
        """The time recorded for what is written now: the wall clock, but never earlier than
        what this generation recorded before, so a clock stepped back keeps a generation's
        times in order (a point-in-time restore stops at the first commit past its target)."""
        self.last_recorded_ms = max(now_ms(), self.last_recorded_ms)
        return self.last_recorded_ms

    def note_generation(self, generation: int) -> None:
        """A replica holds ``generation``, newer than ours (a clock behind another's, or a
        lost state directory): start a new generation after it (called from any thread)."""
        if generation > self.generation_floor:
            self.generation_floor = generation
        self.newer_generation_seen.set()
        self.wake.set()

    def new_generation(self, reason: str, level: int = logging.INFO) -> None:
        """Start a new generation: a fresh snapshot at the current state."""
        self.log.log(level, "starting a new generation: %s", reason)
        self.snapshot(new_generation=True)

    def snapshot(self, new_generation: bool = False, if_changed: bool = False) -> bool:
        """Write a snapshot of the current state to the spool (a new generation if asked);
        return whether one was written (see ``Snapshotter.snapshot``)."""
        return self.snapshotter.snapshot(new_generation, if_changed)

    # -- the loop ------------------------------------------------------------------

    def outbid(self) -> bool:
        """Start a generation after the one a replica holds, when a shipper saw one newer
        than ours (see ``note_generation``); return whether it did."""
        if not (self.newer_generation_seen.is_set() and self.generation_floor >= self.generation):
            return False
        self.newer_generation_seen.clear()
        try:
            self.new_generation(f"a replica holds generation {layout.format_generation(self.generation_floor)}, "
                                f"newer than this one ({layout.format_generation(self.generation)})")
        except BaseException:
            self.newer_generation_seen.set()  # the shipper waits for it: try again next step
            raise
        self.snapshot_requested.clear()  # the new generation's snapshot serves it
        return True

    def snapshot_due(self) -> bool:
        return (self.snapshot_interval is not None
                and time.time() - max(self.last_snapshot_at, self.snapshotter.checked_at) >= self.snapshot_interval)

    def step(self) -> int:
        """One round of work: copy, checkpoint when the WAL is long, snapshot when due;
        return how many transactions were copied."""
        copied = self.sync()
        unknown_since = self.copier.index_unknown_since
        if unknown_since is not None and time.monotonic() - unknown_since > _INDEX_REPAIR_AFTER:
            # A writer killed between the wal-index header's two copies: SQLite repairs the
            # index when a connection next locks the database; take the write lock briefly.
            self.copier.index_unknown_since = None
            if self.connections.seal():
                self.connections.unseal()
        checkpointed = self.pos.frame >= self.checkpoint_pages and self.checkpoint()
        if self.walfile.size() > self.max_wal_size and time.monotonic() >= self.checkpointer.truncate_at:
            self.truncate_wal(checkpointed)
        due = self.snapshot_due()
        if self.outbid():
            return copied  # the new generation's snapshot serves any other need
        if self.snapshot_requested.is_set():
            self.snapshot_requested.clear()
            try:
                self.snapshot()
            except BaseException:
                self.snapshot_requested.set()  # a replica waits for it: ask again next step
                raise
        elif due:
            self.snapshot(if_changed=True)
        return copied
