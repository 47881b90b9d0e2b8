"""A round trip that proves a replica is usable: list, write, read back, delete."""

from __future__ import annotations

import logging
import os
import time

from .. import layout
from ..errors import CorruptObjectError, ForeignDatabaseError, ObjectNotFoundError, ReplicaError
from ..segment import read_header
from .base import ReplicaClient
from .crypt import check_encryption

log = logging.getLogger(__name__)

# What the agent says of a replica whose newest generation is another database's.
AGENT_HINT = ("another database writes here (two entries sharing a replica, or swapped paths?); if this "
              "database was moved, set id: {found!r} on it to keep these backups, else give it a replica of its own")


def check_stored(client: ReplicaClient, db_id: str | None) -> None:
    """Raise when the newest generation of the replica cannot be continued by database
    ``db_id``: stored with other encryption (ReplicaError, see check_encryption), or
    belonging to another database (ForeignDatabaseError naming both ids). One object is read:
    the smallest of the newest generation. Objects written before ids existed pass."""
    key = check_encryption(client)
    if key is None or db_id is None:
        return
    name = layout.parse_key(key)
    try:
        with client.open(key) as f:
            found = read_header(f, key, isinstance(name, layout.SnapshotName)).db_id
    except ObjectNotFoundError:
        return  # retention removed it since the listing; the next start looks again
    except CorruptObjectError as e:
        # Not the agent's to judge here: a restore names it; retention leaves it alone.
        log.warning("%s: %s", client.name, e)
        return
    if found is not None and found != db_id:
        raise ForeignDatabaseError(f"replica {client.name}: {key}", found, db_id, AGENT_HINT)


PROBE_PREFIX = "litesync-check/"


def check_replica(client: ReplicaClient, db_id: str | None = None) -> float:
    """Run the round trip; return its duration in seconds or raise ReplicaError.

    The listing also checks that stored objects match the client's encryption setting and
    belong to database ``db_id`` (see check_stored).
    """
    t0 = time.monotonic()
    check_stored(client, db_id)
    key = f"{PROBE_PREFIX}{os.urandom(8).hex()}"
    data = os.urandom(1024)
    client.write_bytes(key, data)
    try:
        back = client.read(key)
        if back != data:
            raise ReplicaError(client.name, f"probe object {key!r} read back differently ({len(back)} bytes)")
    finally:
        client.delete([key])
    if any(o.key == key for o in client.list(PROBE_PREFIX)):
        raise ReplicaError(client.name, f"probe object {key!r} still listed after delete")
    return time.monotonic() - t0
