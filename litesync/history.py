"""What a replica holds, over time (pure): the catalog of generations, snapshots and
segments; restore plans (latest or point in time); which objects retention may delete;
which runs of segments compaction merges.

Segments written by the agent cover one sequence number each (``first_seq == last_seq``)
and keep one entry per transaction, so a restore can stop at any transaction. Compaction
merges a run into one segment covering ``first..last`` that holds the latest version of
each page; it replaces the run only as a whole. A plan prefers the longest segment that
ends at or before the target time and falls back to the single-sequence ones inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

from . import layout
from .errors import ChainError, RestoreError
from .replica.base import ObjectInfo


@dataclass
class Generation:
    """The objects of one generation, sorted by sequence."""

    generation: int
    snapshots: list[tuple[layout.SnapshotName, int]] = field(default_factory=list)
    segments: list[tuple[layout.SegmentName, int]] = field(default_factory=list)

    @property
    def start_ms(self) -> int | None:
        """The creation time of the oldest snapshot (the first restorable moment)."""
        return min((s.created_ms for s, _ in self.snapshots), default=None)

    @property
    def end_ms(self) -> int | None:
        """The last commit time recorded (or the newest snapshot's time)."""
        times = [s.created_ms for s, _ in self.snapshots] + [s.last_commit_ms for s, _ in self.segments]
        return max(times, default=None)

    @property
    def size(self) -> int:
        return sum(s for _, s in self.snapshots) + sum(s for _, s in self.segments)

    @property
    def last_seq(self) -> int | None:
        return max((s.last_seq for s, _ in self.segments), default=None)


@dataclass
class Catalog:
    """Every litesync object of a replica, by generation (ascending)."""

    generations: dict[int, Generation]

    def newest(self) -> Generation | None:
        return self.generations[max(self.generations)] if self.generations else None

    def restorable_range(self) -> tuple[int, int] | None:
        """(first, last) millisecond a restore can reach, over all generations with a snapshot."""
        gens = [g for g in self.generations.values() if g.snapshots]
        if not gens:
            return None
        # A generation with a snapshot has both times.
        return (min(s for s in (g.start_ms for g in gens) if s is not None),
                max(e for e in (g.end_ms for g in gens) if e is not None))

    @property
    def size(self) -> int:
        return sum(g.size for g in self.generations.values())


def catalog(objects: Iterable[ObjectInfo]) -> Catalog:
    """Sort a replica listing into generations; keys litesync did not write are ignored."""
    gens: dict[int, Generation] = {}
    for info in objects:
        name = layout.parse_key(info.key)
        if name is None:
            continue
        g = gens.setdefault(name.generation, Generation(name.generation))
        if isinstance(name, layout.SnapshotName):
            g.snapshots.append((name, info.size))
        else:
            g.segments.append((name, info.size))
    for g in gens.values():
        g.snapshots.sort(key=lambda x: x[0].seq)
        g.segments.sort(key=lambda x: (x[0].first_seq, x[0].last_seq))
    return Catalog(dict(sorted(gens.items())))


def format_ms(ms: int | None) -> str:
    """An RFC 3339 UTC time with milliseconds, or '-'."""
    if ms is None:
        return "-"
    t = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_time(text: str) -> int:
    """Milliseconds since the epoch for an RFC 3339 time (``Z`` or an offset is required)."""
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"invalid time: {text!r} (expected RFC 3339, e.g. 2026-11-22T14:01:00Z)") from None
    if t.tzinfo is None:
        raise ValueError(f"time without an offset: {text!r} (add Z for UTC, or an offset like +01:00)")
    return int(round(t.timestamp() * 1000))


@dataclass(frozen=True)
class Plan:
    """What a restore reads: one snapshot and the segments that follow it, in order."""

    generation: int
    snapshot: layout.SnapshotName
    snapshot_size: int
    segments: tuple[tuple[layout.SegmentName, int], ...]
    until_ms: int | None = None
    #: False when the target time falls inside a segment covering several sequence numbers
    #: with no finer one beside it. The names cannot tell which kind it is: a concatenated
    #: one (every commit kept: the restore stops exactly at the target) or a merged one
    #: whose parts retention deleted (the restore stops before it). See docs/FORMAT.md.
    exact: bool = True

    @property
    def total_bytes(self) -> int:
        return self.snapshot_size + sum(s for _, s in self.segments)

    @property
    def objects(self) -> int:
        return 1 + len(self.segments)


def plan(cat: Catalog, *, generation: int | None = None, until_ms: int | None = None,
         replica: str = "replica") -> Plan:
    """Choose the newest generation with a snapshot at or before ``until_ms`` (or
    ``generation``), its newest such snapshot, and the fewest segments that follow it."""
    if generation is not None:
        g = cat.generations.get(generation)
        if g is None or not g.snapshots:
            raise RestoreError(f"{replica}: generation {layout.format_generation(generation)} has no snapshot")
        gens = [g]
    else:
        gens = [g for g in reversed(cat.generations.values()) if g.snapshots]
        if not gens:
            raise RestoreError(f"{replica}: no backups found (no snapshot in any generation)")
    for g in gens:
        snaps = g.snapshots
        if until_ms is not None:
            snaps = [s for s in snaps if s[0].created_ms <= until_ms]
            if not snaps:
                continue
        snap, snap_size = snaps[-1]
        chain, exact = _chain(g, snap.seq, until_ms, replica)
        return Plan(g.generation, snap, snap_size, chain, until_ms, exact)
    rng = cat.restorable_range()
    where = f"generation {layout.format_generation(generation)}" if generation is not None else replica
    span = (f"it holds {format_ms(rng[0])} to {format_ms(rng[1])}" if rng and generation is None
            else f"its first snapshot is at {format_ms(gens[-1].start_ms)}")
    raise RestoreError(f"{where}: nothing to restore at or before {format_ms(until_ms)}; {span}")


def _chain(g: Generation, start: int, until_ms: int | None,
           replica: str) -> tuple[tuple[tuple[layout.SegmentName, int], ...], bool]:
    by_first: dict[int, list[tuple[layout.SegmentName, int]]] = {}
    for name, size in g.segments:
        by_first.setdefault(name.first_seq, []).append((name, size))
    chain = []
    expected = start
    last_seq = g.last_seq
    while last_seq is not None and expected <= last_seq:
        cands = by_first.get(expected)
        if not cands:
            later = [n for n, _ in g.segments if n.first_seq > expected]
            if not later:
                break  # segments that end before ``expected`` are history before the snapshot
            raise ChainError(f"{replica}: generation {layout.format_generation(g.generation)}: segment "
                             f"{expected} is missing (next present: {later[0].key})")
        if until_ms is None:
            chain.append(max(cands, key=lambda c: c[0].last_seq))
        else:
            whole = [c for c in cands if c[0].last_commit_ms <= until_ms]
            if whole:
                chain.append(max(whole, key=lambda c: c[0].last_seq))
            else:
                # The target is inside this range: take the finest segment, applied in part.
                finest = min(cands, key=lambda c: c[0].last_seq)
                chain.append(finest)
                return tuple(chain), finest[0].first_seq == finest[0].last_seq
        expected = chain[-1][0].last_seq + 1
    return tuple(chain), True


@dataclass(frozen=True)
class FollowStep:
    """What a follower does next: apply ``segments``, or start over from ``restart``."""

    segments: tuple[tuple[layout.SegmentName, int], ...] = ()
    restart: Plan | None = None
    reason: str = ""


def follow_step(cat: Catalog, generation: int | None, next_seq: int, replica: str = "replica") -> FollowStep:
    """The next step of a follower whose output holds ``generation`` up to ``next_seq``.

    It continues its chain with the segments that start at ``next_seq`` (a merged segment
    that starts there is taken whole; one that covers sequences already applied is not
    needed). It starts over from the newest snapshot when there is no position yet, when
    a newer generation has a snapshot, or when the chain cannot be continued (the segment
    it needs is gone, replaced by a merged segment that starts earlier).
    """
    newest = next((g for g in reversed(cat.generations.values()) if g.snapshots), None)
    if newest is None:
        raise RestoreError(f"{replica}: no backups found (no snapshot in any generation)")

    def restart(reason: str) -> FollowStep:
        return FollowStep(restart=plan(cat, replica=replica), reason=reason)

    if generation is None:
        return restart("no position to continue from")
    if newest.generation > generation:
        return restart(f"a new generation began: {layout.format_generation(newest.generation)}")
    g = cat.generations.get(generation)
    if g is None:
        raise RestoreError(f"{replica}: generation {layout.format_generation(generation)} is gone and the newest "
                           f"is older: {layout.format_generation(newest.generation)}")
    if not any(n.first_seq == next_seq for n, _ in g.segments):
        later = [n for n, _ in g.segments if n.last_seq >= next_seq]
        if not later:
            return FollowStep()
        return restart(f"segment {next_seq} is gone (the replica holds {later[0].key})")
    try:
        chain, _ = _chain(g, next_seq, None, replica)
    except ChainError as e:
        return restart(str(e))
    return FollowStep(segments=chain)


# -- retention ---------------------------------------------------------------------------

def retention_deletes(cat: Catalog, now_ms: int, window_ms: int,
                      usable: Callable[[layout.SnapshotName], bool] = lambda s: True,
                      keep_generation: int | None = None) -> list[str]:
    """Keys that no restore to a moment inside ``[now - window, now]`` needs.

    Kept: the newest snapshot at or before the window's start that ``usable`` accepts (the
    floor) and everything after it; the single-sequence segments inside any merged segment
    that ends inside the window (a point-in-time restore may stop in the middle of it);
    every object of ``keep_generation`` (the one being written). Deleted: generations
    before the floor's, snapshots and segments before the floor in its generation, and
    the parts of merged segments that end before the window.

    ``usable`` is asked about candidates newest first, until one passes: a name alone
    proves nothing (a stray object, a half-written one, another host's), so the floor is
    a snapshot known to be sound, and one stray object never makes the history redundant.
    """
    cutoff = now_ms - window_ms
    candidates = sorted((s for g in cat.generations.values() for s, _ in g.snapshots if s.created_ms <= cutoff),
                        key=lambda s: (s.generation, s.seq), reverse=True)
    floor = next((s for s in candidates if usable(s)), None)
    if floor is None:
        return []
    out: list[str] = []
    for gen, g in cat.generations.items():
        if gen == keep_generation and gen != floor.generation:
            continue
        if gen < floor.generation:
            out += [n.key for n, _ in g.snapshots] + [n.key for n, _ in g.segments]
            continue
        if gen > floor.generation:
            keep_from = -1
        else:
            keep_from = floor.seq
            out += [n.key for n, _ in g.snapshots if n.seq < floor.seq]
            out += [n.key for n, _ in g.segments if n.last_seq < floor.seq]
        old_merged = [n for n, _ in g.segments if n.first_seq != n.last_seq and n.first_seq >= keep_from
                      and n.last_commit_ms < cutoff]
        rest = [n for n, _ in g.segments if n.last_seq >= keep_from]
        out += [n.key for n in _inside(rest, old_merged)]
    return out


def _inside(names: list[layout.SegmentName], covers: list[layout.SegmentName]) -> list[layout.SegmentName]:
    """The names that lie within one of ``covers`` (other than themselves)."""
    covers = sorted(covers, key=lambda c: c.first_seq)
    out = []
    i = 0
    reach = -1  # the largest last_seq of a cover starting at or before the current name
    reach_by: layout.SegmentName | None = None
    for n in sorted(names, key=lambda n: (n.first_seq, -n.last_seq)):
        while i < len(covers) and covers[i].first_seq <= n.first_seq:
            if covers[i].last_seq > reach:
                reach, reach_by = covers[i].last_seq, covers[i]
            i += 1
        if reach >= n.last_seq and reach_by != n:
            out.append(n)
    return out


def _outermost(names: list[layout.SegmentName]) -> list[layout.SegmentName]:
    """The names no other name covers, sorted by sequence."""
    out = []
    reach = -1
    for n in sorted(names, key=lambda n: (n.first_seq, -n.last_seq)):
        if n.last_seq > reach:
            out.append(n)
            reach = n.last_seq
    return out


# -- compaction --------------------------------------------------------------------------

def compaction_runs(cat: Catalog, now_ms: int, window_ms: int) -> list[list[layout.SegmentName]]:
    """Runs of segments to merge into one each, for windows of ``window_ms``.

    Within each generation, the outermost segments (those no other segment covers) are
    grouped by the window their last commit falls in; a window is merged once it has been
    closed for half a window, when it holds two or more contiguous segments. A run never
    crosses a snapshot, so every snapshot is still followed by a segment starting at it.
    """
    runs: list[list[layout.SegmentName]] = []
    settle = window_ms // 2
    for g in cat.generations.values():
        snap_seqs = {s.seq for s, _ in g.snapshots}
        outer = _outermost([n for n, _ in g.segments])
        run: list[layout.SegmentName] = []

        def close() -> None:
            if len(run) >= 2:
                runs.append(list(run))
            run.clear()

        for n in outer:
            bucket = n.last_commit_ms // window_ms
            if (bucket + 1) * window_ms + settle > now_ms:
                close()
                continue
            if run and (n.first_seq != run[-1].last_seq + 1 or n.first_seq in snap_seqs
                        or bucket != run[-1].last_commit_ms // window_ms):
                close()
            run.append(n)
        close()
    return runs
