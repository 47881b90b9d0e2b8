"""The one exception tree of litesync.

Every exception says whether retrying the same operation can help (``retryable``), how
soon (``retry_interval``: a fixed pace, or None for a growing backoff) and which exit code
the CLI maps it to (0 ok, 1 runtime failure, 2 usage or config error).
"""

from __future__ import annotations


class LitesyncError(Exception):
    """Base of every error litesync raises on purpose."""

    retryable: bool = False
    retry_interval: float | None = None  # seconds between tries when they keep a fixed pace
    exit_code: int = 1


class UsageError(LitesyncError):
    """The command line or its arguments are wrong."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file or a replica URL is invalid.

    ``path`` is the field path (``dbs[0].replicas[1].retention``), ``line`` the 1-based
    line in the file when known.
    """

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None,
                 line: int | None = None) -> None:
        self.file = file
        self.path = path
        self.line = line
        where = []
        if file:
            where.append(f"{file}:{line}" if line else file)
        elif line:
            where.append(f"line {line}")
        if path:
            where.append(path)
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class CorruptObjectError(LitesyncError):
    """A stored object (segment, snapshot, state file) fails its checks; never retried."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


class ChainError(LitesyncError):
    """Stored objects are intact one by one but do not follow each other."""


class DatabaseError(LitesyncError):
    """The source database cannot be replicated as it is (not WAL, unreadable, ...)."""


class ReplicaError(LitesyncError):
    """A replica operation failed. ``replica`` names the replica (never with secrets)."""

    def __init__(self, replica: str, message: str, *, retryable: bool = False) -> None:
        self.replica = replica
        self.retryable = retryable
        super().__init__(f"replica {replica}: {message}")


class LocalWriteError(ReplicaError):
    """A replica's local directory refused a write: its file system full (or out of inodes),
    over quota, read-only or gone. Retryable, and cheap to try: tried again every second
    rather than after a growing backoff, so shipping resumes within a second of the space
    coming back. Says the directory, not the object, so each try says the same."""

    retry_interval = 1.0

    def __init__(self, replica: str, path: str, error: OSError, key: str) -> None:
        self.path = path
        self.errno = error.errno
        self.key = key  # the object whose write failed (debug logs only)
        super().__init__(replica, f"{path}: {error.strerror or error}", retryable=True)


class ReplicaSetupError(ReplicaError):
    """A replica refuses as configured (no or wrong credentials, no such bucket): a
    configuration error, which no retry and no restart cures."""

    exit_code = 2


class TransientReplicaError(ReplicaError):
    """A replica failure that a retry may cure (5xx, 429, timeout, connection reset)."""

    def __init__(self, replica: str, message: str) -> None:
        super().__init__(replica, message, retryable=True)


class ObjectNotFoundError(ReplicaError):
    """The named object does not exist on the replica."""

    def __init__(self, replica: str, key: str) -> None:
        self.key = key
        super().__init__(replica, f"object not found: {key!r}")


class RestoreError(LitesyncError):
    """A restore cannot produce a verified database."""


class DeadlineError(LitesyncError):
    """An operation ran past its total deadline (``restore --timeout``); never retried, and
    no other replica is tried (the deadline is the whole operation's)."""


class VerifyError(LitesyncError):
    """A restored replica differs from the live database it should equal."""

    def __init__(self, replica: str, message: str) -> None:
        self.replica = replica
        super().__init__(message)


class ForeignDatabaseError(UsageError):
    """A stored object belongs to another database than the one expected: their ids differ
    (another tenant's backup copied in, replica paths swapped, a database moved)."""

    RESTORE_HINT = "if that is the backup wanted, restore it with --id {found!r}"

    def __init__(self, name: str, found: str, expected: str, hint: str = RESTORE_HINT) -> None:
        self.name = name
        self.found = found
        self.expected = expected
        super().__init__(f"{name}: belongs to database {found!r}, not {expected!r}; "
                         + hint.format(found=found, expected=expected))


class LegacyGenerationError(UsageError):
    """The newest generation carries no database id (format 1), yet an older one does: an
    agent that writes ids never writes a generation without one, so it is not this history."""


class OutputExistsError(UsageError):
    """The restore output exists and --force was not given."""
