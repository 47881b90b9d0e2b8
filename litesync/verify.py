"""Verification of a replica: restore it to a temporary file (every object's digest, every
link and every transaction's database checksum checked, then ``PRAGMA integrity_check``),
and compare the restored database with the live one at the same position.

"The same position" while the application keeps writing: the live database is read first,
in one read transaction (``livedb.read_live``), which gives its checksum and a time before
which everything it holds was committed. Then ``wait`` lets the agent ship everything
committed before that time, and the restore records the checksum of every state it passes
through (after the snapshot and after each transaction). The replica matches when the
live checksum is one of them: it went through exactly the live database's state.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable

from . import layout
from .livedb import LiveState, read_live
from .errors import VerifyError
from .replica.base import ReplicaClient
from .restore import Result, restore


@dataclass
class Verified:
    """A replica that restored cleanly and, when a live database was given, matched it."""

    replica: str
    result: Result
    live: LiveState | None

    def describe(self) -> str:
        r = self.result
        text = (f"generation {layout.format_generation(r.generation)}, {r.transactions} transactions after the "
                f"snapshot, {r.db_bytes} bytes, integrity_check ok")
        if self.live is None:
            return text + f", checksum {r.db_checksum:016x} (no live database to compare with)"
        return text + f", checksum {self.live.checksum:016x} equals the live database's"


def verify_replica(client: ReplicaClient, db_path: str | None, *, work_dir: str | None = None,
                   wait: Callable[[float], bool] | None = None, attempts: int = 3,
                   progress: Callable[[int, int], None] | None = None, db_id: str | None = None,
                   tmp_prefix: str = "verify-") -> Verified:
    """Restore ``client``'s latest state to a temporary file under ``work_dir`` and check it;
    with ``db_path``, compare it with the live database. ``wait(t)`` returns once the
    replica holds every transaction committed before ``t`` (False: it could not tell).
    ``db_id``: the id of the database the replica must hold (None: any). ``tmp_prefix``
    names the temporary directory.

    Raises ``VerifyError`` naming both checksums when the replica does not match, and the
    restore's own errors (naming the damaged object) when it does not restore.
    """
    for attempt in range(attempts):
        live = read_live(db_path) if db_path is not None else None
        caught_up = wait(live.at) if live is not None and wait is not None else False
        states: set[int] = set()
        tmp = tempfile.mkdtemp(prefix=tmp_prefix, dir=work_dir)
        try:
            result = restore(client, os.path.join(tmp, "verify.db"), progress=progress, observe=states.add,
                             db_id=db_id)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if live is None or live.checksum in states:
            return Verified(client.name, result, live)
        # With the replica caught up, a miss may be a new generation that began meanwhile:
        # try again. Without, the live database holds what the replica does not have.
        if not caught_up:
            break
    assert live is not None
    if caught_up:
        why = "the replica holds every transaction committed before the live read, yet differs"
    else:
        why = "the replica may lack the latest transactions (no running agent reported it caught up)"
    raise VerifyError(
        client.name, f"the live database (checksum {live.checksum:016x}, {live.pages} pages) matches "
        f"no state restored from generation {layout.format_generation(result.generation)} "
        f"({result.transactions} transactions after the snapshot; latest checksum {result.db_checksum:016x}, "
        f"{result.db_size_pages} pages): {why}")
