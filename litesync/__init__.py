"""litesync: streaming replication for SQLite databases in WAL mode."""

__version__ = "0.1.0"

from .errors import (ChainError, ConfigError, CorruptObjectError, DatabaseError, LitesyncError,  # noqa: E402
                     ObjectNotFoundError, ReplicaError, RestoreError, TransientReplicaError, UsageError,
                     VerifyError)

__all__ = ["__version__", "LitesyncError", "UsageError", "ConfigError", "CorruptObjectError", "ChainError",
           "DatabaseError", "ReplicaError", "TransientReplicaError", "ObjectNotFoundError", "RestoreError",
           "VerifyError"]
