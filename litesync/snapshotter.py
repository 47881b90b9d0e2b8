"""The snapshotter: reads the whole database as the agent's read transaction ``R`` sees
it (a *view*: the database file plus the WAL's committed frames) and writes it to the
spool as a snapshot, continuing the agent's generation or starting a new one.

A view is taken under the seal with every committed frame copied, so the snapshot is the
state the segments before it lead to; a view that does not match the replicated state
means the database changed without a trace in the WAL, and a new generation starts.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

from . import layout, wal
from .checkpointer import Checkpointer
from .connections import Connections, WriteLockBusy
from .copier import FrameCopier
from .dbhash import DbHash
from .errors import LitesyncError
from .livedb import View, WalChanged, read_view, wal_overlay
from .logs import Labelled
from .progress import LogProgress
from .segment import NO_LINK, SnapshotHeader, SnapshotWriter, WalPosition
from .spool import Spool
from .walfile import WalFile


def now_ms() -> int:
    return int(time.time() * 1000)


class Agent(Protocol):
    """What the snapshotter needs of the agent: its connections, WAL, copier and
    checkpointer, and the replication state it reads and resets."""

    path: str
    db_id: str
    log: Labelled
    connections: Connections
    walfile: WalFile
    copier: FrameCopier
    checkpointer: Checkpointer
    spool: Spool
    stats: dict[str, float]
    page_size: int
    generation: int
    generation_floor: int  # a replica holds this generation: new ones come after it
    next_seq: int
    end_link: bytes
    pos: WalPosition
    hasher: DbHash
    last_snapshot_at: float
    copied_through: tuple[float, int, int]
    last_recorded_ms: int
    restart_ok: bool
    r_begin_pos: WalPosition

    def sync(self) -> int:
        """Copy what is committed into the spool; return how many transactions."""
        ...

    def begin_read(self) -> None:
        """Begin R's read transaction."""
        ...

    def recorded_ms(self) -> int:
        """The time to record for what is written now."""
        ...


class Snapshotter:
    """Writes the snapshots of ``agent``'s database. ``snapshot_at``: (generation, seq) of
    the last snapshot written; ``checked_at``: when an unchanged database last stood in
    for a snapshot."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.snapshot_at: tuple[int, int] | None = None  # (generation, seq) of our last snapshot
        self.checked_at = 0.0  # when an unchanged database last stood in for a snapshot

    def reopen_view(self, pages: bool = True, checkpoint: bool = True) -> View:
        """Under the seal, with every committed frame copied: checkpoint (if asked) and
        restart ``R``.

        With ``pages`` the view also says where each page of the new read lies (for a full
        read of the database); without, only the checkpoint and the restart happen.
        """
        # Until R reads again under this seal, a WAL restart may drop frames: not harmless.
        self.agent.restart_ok = False
        self.agent.connections.end_read()
        log_frames, ckpt = self.agent.connections.checkpoint() if checkpoint else (0, 0)
        self.agent.begin_read()
        hdr = self.agent.walfile.header()
        if not pages:
            return View(self.agent.pos, hdr, {}, 0)
        committed = self.agent.walfile.index_frames(hdr) if hdr is not None else 0
        overlay, pos = wal_overlay(self.agent.walfile.read_at, hdr, committed, ckpt)
        if hdr is not None and checkpoint:
            if pos.frame != log_frames and not (log_frames == 0 and ckpt == 0):
                self.agent.log.debug("WAL holds %d committed frames, checkpoint reported %d",
                                     pos.frame, log_frames)
        reader = self.agent.connections.reader
        assert reader is not None  # a view is read while open
        db_size = reader.execute("PRAGMA page_count").fetchall()[0][0]
        assert isinstance(db_size, int)  # page_count answers an integer
        return View(pos, hdr, overlay, db_size)

    def scan_view(self, view: View, out: SnapshotWriter | None,
                  progress: Callable[[int], None] | None = None) -> DbHash:
        """Read every page of ``view`` (database file plus WAL overlay); hash and maybe write them."""
        reader = self.agent.connections.reader
        assert reader is not None  # R holds the view's read transaction
        walfile = self.agent.walfile
        return read_view(reader, self.agent.page_size, view, walfile.read_at, walfile.header, out, progress)

    def newest_generation(self) -> int:
        """The greatest generation id this database's history holds: in the spool (which
        always keeps its newest object), this agent's, or one a replica holds."""
        spooled = max((n.generation for n, _ in self.agent.spool.objects()), default=0)
        return max(spooled, self.agent.generation, self.agent.generation_floor)

    def disagreement(self, found: int) -> None:
        self.agent.log.error("replicated state disagrees with the database (checksum %016x != %016x); "
                             "starting a new generation", self.agent.hasher.value, found)

    def snapshot(self, new_generation: bool = False, if_changed: bool = False) -> bool:
        """Write a snapshot of the current state to the spool (a new generation if asked);
        return whether one was written.

        With ``if_changed``, a database that committed nothing since the last snapshot of
        this generation is read and checksummed instead: when it matches the replicated
        state no snapshot is written (an idle database causes no upload); when it does not,
        something changed it without a trace in the WAL, and a new generation starts.
        """
        agent = self.agent
        why = "the write lock was not granted"
        for attempt in range(5):
            t0 = time.time()
            if not new_generation:
                agent.sync()  # outside the seal: what the seal captures stays small
                new_generation = agent.generation == 0
            hdr: wal.WalHeader | None = None
            txs: list[wal.Transaction] = []
            read_at: wal.ReadAt = agent.walfile.read_at
            if new_generation and not agent.connections.sealed:
                # Nothing to keep continuous: checkpoint before the seal (R's read ended, so
                # it goes as far as the app's readers allow), and the checkpoint under the
                # seal, which the app's writers wait for, has little left to do (a WAL of
                # tens of MB held them for 60-170 ms).
                agent.connections.end_read()
                agent.connections.checkpoint()
                sealed = agent.connections.seal()
            elif new_generation:
                sealed = agent.connections.seal()
            else:
                tail_sealed = agent.checkpointer.seal_small_tail()
                sealed = tail_sealed is not None
                if tail_sealed is not None:
                    hdr, txs, read_at = tail_sealed
            if not sealed:
                why = "the write lock was not granted, or the WAL kept changing"
                time.sleep(0.1 * (attempt + 1))
                continue
            try:
                tail = agent.copier.capture(hdr, txs, read_at) if hdr is not None and txs else None
                view = self.reopen_view()
            except WalChanged:
                why = "the WAL and the wal-index disagree under the write lock"
                continue
            finally:
                agent.connections.unseal()
            if tail is not None:
                # Written and fsynced after the seal; R's view already includes these frames.
                agent.copier.spool_transactions(txs, hdr, tail.read_at)  # type: ignore[arg-type]
            if not new_generation:
                # R began under the seal with every committed frame copied.
                agent.restart_ok, agent.r_begin_pos = True, agent.pos
            if if_changed and not new_generation and self.snapshot_at == (agent.generation, agent.next_seq):
                try:
                    value = self.scan_view(view, None).value
                except WalChanged:
                    why = "the WAL was restarted while the database was read"
                    continue
                if value == agent.hasher.value:
                    self.checked_at = time.time()
                    agent.log.debug("no snapshot: nothing committed since the last one")
                    return False
                self.disagreement(value)
                new_generation = True
            if new_generation:
                try:
                    gen, seq, prev = layout.new_generation(after=self.newest_generation()), 0, NO_LINK
                except ValueError as e:
                    raise LitesyncError(f"{agent.path}: {e}") from None
            else:
                gen, seq, prev = agent.generation, agent.next_seq, agent.end_link
            created = agent.recorded_ms() if not new_generation else now_ms()
            name = layout.SnapshotName(gen, seq, created)
            header = SnapshotHeader(agent.page_size, gen, seq, prev, view.db_size, created, view.pos,
                                    db_id=agent.db_id)
            try:
                with agent.spool.writing(name) as f:
                    w = SnapshotWriter(f, header)
                    progress = LogProgress(agent.log, f"snapshot {layout.format_generation(gen)}/{seq}",
                                           view.db_size * agent.page_size)
                    hasher = self.scan_view(view, w, progress)
                    w.close(hasher.value)
            except WalChanged:
                agent.spool.discard(name)
                why = "the WAL was restarted while the database was read"
                continue
            if not new_generation and hasher.value != agent.hasher.value:
                agent.spool.discard(name)
                self.disagreement(hasher.value)
                new_generation = True
                continue
            agent.spool.publish(name)
            if new_generation:
                agent.stats["generations"] += 1
            agent.generation, agent.next_seq, agent.end_link = gen, seq, prev
            if new_generation:
                agent.last_recorded_ms = created
            agent.pos = view.pos
            agent.hasher = hasher
            agent.restart_ok = True
            agent.r_begin_pos = agent.pos
            agent.last_snapshot_at = time.time()
            agent.copied_through = (t0, gen, seq)
            agent.stats["snapshots"] += 1
            agent.stats["snapshot_seconds"] = agent.last_snapshot_at - t0
            self.snapshot_at = (gen, seq)
            agent.log.info("snapshot %s/%d written (%d pages, %.2fs)",
                           layout.format_generation(gen), seq, view.db_size, agent.last_snapshot_at - t0)
            return True
        if why.startswith("the write lock was not granted"):
            raise WriteLockBusy(f"{agent.path}: could not take a consistent snapshot after 5 attempts: {why}")
        raise LitesyncError(f"{agent.path}: could not take a consistent snapshot after 5 attempts: {why}")
