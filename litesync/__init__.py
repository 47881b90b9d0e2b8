"""litesync: streaming replication for SQLite databases in WAL mode."""

__version__ = "0.1.0"

from .errors import (ChainError, ConfigError, CorruptObjectError, DatabaseError, LitesyncError,
                     ObjectNotFoundError, ReplicaError, RestoreError, TransientReplicaError, UsageError,
                     VerifyError)
from .api import Replicator, restore_db

__all__ = ["__version__", "Replicator", "restore_db", "LitesyncError", "UsageError", "ConfigError",
           "CorruptObjectError", "ChainError", "DatabaseError", "ReplicaError", "TransientReplicaError",
           "ObjectNotFoundError", "RestoreError", "VerifyError"]
