"""Replica backends behind one small interface (see ``base.ReplicaClient``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .base import ObjectInfo, ReplicaClient
from .file import FileReplicaClient

if TYPE_CHECKING:
    from ..config import ReplicaConfig

__all__ = ["ObjectInfo", "ReplicaClient", "FileReplicaClient", "open_replica", "wrap_replica"]

log = logging.getLogger(__name__)


def open_replica(cfg: "ReplicaConfig") -> ReplicaClient:
    """Return the client for a configured replica, throttled and encrypted as configured."""
    return wrap_replica(_backend(cfg), cfg)


def _backend(cfg: "ReplicaConfig") -> ReplicaClient:
    from .registry import BACKENDS

    backend = BACKENDS.get(cfg.type)
    if backend is None:
        raise ValueError(f"unknown replica type: {cfg.type!r}")
    return backend.factory(cfg)


def wrap_replica(client: ReplicaClient, cfg: "ReplicaConfig") -> ReplicaClient:
    """Return ``client`` behind the configured bandwidth limit and encryption.

    The limit is innermost, so it counts the bytes that cross the wire (ciphertext).
    """
    if cfg.max_bandwidth:
        from .throttle import RateLimiter, ThrottledClient

        client = ThrottledClient(client, RateLimiter(cfg.max_bandwidth))
        log.debug("%s: limited to %d bytes/s", client.name, cfg.max_bandwidth)
    if cfg.encryption_keys:
        from .crypt import EncryptedClient

        client = EncryptedClient(client, list(cfg.encryption_keys), db_id=cfg.db_id)
        log.debug("%s: encrypting with key id %s", client.name, client.key_id.hex())
    return client
