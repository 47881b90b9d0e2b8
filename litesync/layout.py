"""Object names on a replica (and in the local spool), formatted and parsed in one place.

    generations/GGGGGGGGGGGGGGGG/snapshots/SSSSSSSSSSSSSSSS-TTTTTTTTTTTT.snap
    generations/GGGGGGGGGGGGGGGG/segments/FFFFFFFFFFFFFFFF-LLLLLLLLLLLLLLLL-TTTTTTTTTTTT.seg

G generation (16 hex), S snapshot sequence (the first segment that follows it), F..L the
sequence range a segment covers, T milliseconds since the epoch (snapshot creation, or the
segment's last commit), all lower-case fixed-width hex so that text order is numeric order.

Locally, each database's agent keeps its state in ``.<name>-litesync/`` beside it.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

GENERATIONS = "generations"
_GEN_RE = re.compile(r"^[0-9a-f]{16}$")
_SNAP_RE = re.compile(r"^generations/([0-9a-f]{16})/snapshots/([0-9a-f]{16})-([0-9a-f]{12})\.snap$")
_SEG_RE = re.compile(
    r"^generations/([0-9a-f]{16})/segments/([0-9a-f]{16})-([0-9a-f]{16})-([0-9a-f]{12})\.seg$")


MAX_GENERATION = (1 << 64) - 1


def new_generation(after: int = 0) -> int:
    """Return a new generation id greater than ``after``: milliseconds since the epoch, then
    16 random bits; or, when the clock is behind ``after`` (an NTP step, a VM restored from
    a snapshot, another host's clock), ``after``'s millisecond plus one.

    Ids order history: everything (the shippers, spool cleanup, restore, follow, retention)
    takes the greatest id as the newest, so an id never comes from the clock alone.
    """
    ms = max(int(time.time() * 1000), (after >> 16) + 1)
    gen = (ms << 16) | int.from_bytes(os.urandom(2), "big")
    if gen > MAX_GENERATION:
        raise ValueError(f"no generation id after {after:016x}: the id space is exhausted (a stray object "
                         "with that generation in a replica? remove it)")
    return gen


def format_generation(gen: int) -> str:
    return f"{gen:016x}"


def parse_generation(text: str) -> int:
    if not _GEN_RE.match(text):
        raise ValueError(f"invalid generation: {text!r}")
    return int(text, 16)


def default_db_id(path: str) -> str:
    """Return the id a database (or, for a directory, the prefix its databases' ids start
    with) has when none is configured: its absolute path, through the real directory (a
    symbolic link on the way, or a working directory reached through one, names the same
    database), keeping its own name. A name that is not UTF-8 is made so, the same way each time."""
    full = os.path.abspath(path)
    d, name = os.path.split(full)
    canonical = os.path.join(os.path.realpath(d), name) if name else os.path.realpath(full)
    return os.fsencode(canonical).decode("utf-8", "backslashreplace")


def state_dir_for(db_path: str) -> str:
    """Return the agent's local state directory for a database: ``.<name>-litesync`` beside it."""
    d, name = os.path.split(os.path.abspath(db_path))
    return os.path.join(d, f".{name}-litesync")


# The agent's validations restore into a temporary directory of the state directory named
# so; one left by an agent killed mid-validation is removed by the next (see DbAgent.lock).
VALIDATION_TMP_PREFIX = "validation-"


def is_state_dir(name: str) -> bool:
    """True for the name of an agent's state directory."""
    return name.startswith(".") and name.endswith("-litesync")


def generation_prefix(gen: int) -> str:
    return f"{GENERATIONS}/{gen:016x}/"


@dataclass(frozen=True, order=True)
class SnapshotName:
    generation: int
    seq: int
    created_ms: int

    @property
    def key(self) -> str:
        return f"{GENERATIONS}/{self.generation:016x}/snapshots/{self.seq:016x}-{self.created_ms:012x}.snap"


@dataclass(frozen=True, order=True)
class SegmentName:
    generation: int
    first_seq: int
    last_seq: int
    last_commit_ms: int

    @property
    def key(self) -> str:
        return (f"{GENERATIONS}/{self.generation:016x}/segments/"
                f"{self.first_seq:016x}-{self.last_seq:016x}-{self.last_commit_ms:012x}.seg")


def parse_key(key: str) -> SnapshotName | SegmentName | None:
    """Return what ``key`` names, or None for a key litesync did not write."""
    m = _SEG_RE.match(key)
    if m:
        return SegmentName(int(m[1], 16), int(m[2], 16), int(m[3], 16), int(m[4], 16))
    m = _SNAP_RE.match(key)
    if m:
        return SnapshotName(int(m[1], 16), int(m[2], 16), int(m[3], 16))
    return None
