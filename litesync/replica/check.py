"""A round trip that proves a replica is usable: list, write, read back, delete."""

from __future__ import annotations

import os
import time

from ..errors import ReplicaError
from .base import ReplicaClient
from .crypt import check_encryption

PROBE_PREFIX = "litesync-check/"


def check_replica(client: ReplicaClient) -> float:
    """Run the round trip; return its duration in seconds or raise ReplicaError.

    The listing also checks that stored objects match the client's encryption setting.
    """
    t0 = time.monotonic()
    check_encryption(client)
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
