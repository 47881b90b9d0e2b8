"""Replica backends behind one small interface (see ``base.ReplicaClient``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ObjectInfo, ReplicaClient
from .file import FileReplicaClient

if TYPE_CHECKING:
    from ..config import ReplicaConfig

__all__ = ["ObjectInfo", "ReplicaClient", "FileReplicaClient", "open_replica"]


def open_replica(cfg: "ReplicaConfig") -> ReplicaClient:
    """Return the client for a configured replica."""
    if cfg.type == "file":
        return FileReplicaClient(cfg.path, name=cfg.name)
    if cfg.type == "s3":
        from .s3 import S3ReplicaClient

        return S3ReplicaClient(cfg)
    if cfg.type == "b2":
        from .b2 import B2ReplicaClient

        return B2ReplicaClient(cfg)
    raise ValueError(f"unknown replica type: {cfg.type!r}")
