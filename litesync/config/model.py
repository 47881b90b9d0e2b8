"""The configuration as frozen dataclasses, its defaults, and the order restores try replicas in."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

from ..layout import is_state_dir
from ..replica.registry import BACKENDS

DEFAULT_SNAPSHOT_INTERVAL = 4 * 3600.0
# Least time between the starts of two uploads to a replica while commits keep coming:
# each backend declares its own (replica/registry.py).
DEFAULT_SYNC_INTERVAL = {t: b.default_sync_interval for t, b in BACKENDS.items()}
DEFAULT_CHECKPOINT_PAGES = 1000
DEFAULT_SPOOL_MAX_SIZE = 1 << 30
DEFAULT_MAX_WAL_SIZE = 64 << 20
# A restore's total deadline (restore --timeout, restore-timeout:); inf: none.
DEFAULT_RESTORE_TIMEOUT = 3600.0
DEFAULT_RETENTION = 24 * 3600.0
DEFAULT_RETENTION_CHECK_INTERVAL = 60.0
DEFAULT_COMPACTION = (30.0, 300.0, 3600.0)
DEFAULT_PATTERN = "*.db"
# Multipart uploads on S3 and B2 take parts of 5 MiB to 5 GiB (the last part may be smaller).
MIN_PART_SIZE = 5 << 20
MAX_PART_SIZE = 5 << 30

REPLICA_TYPES = tuple(BACKENDS)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
LOG_STREAMS = ("stderr", "stdout")


def _secrets() -> tuple[frozenset[str], frozenset[str]]:
    """Return the ``ReplicaConfig`` fields and the option keys whose values are never shown."""
    backends = BACKENDS.values()  # read when asked: a backend registered later is masked too
    return (frozenset(f for b in backends for f in b.secret_fields) | {"encryption_keys"},
            frozenset(k for b in backends for k in b.secret_keys))


@dataclass(frozen=True, repr=False)
class ReplicaConfig:
    """One replica destination. ``path`` is a directory (file) or a key prefix (s3, b2)."""

    type: str
    name: str
    path: str
    url: str | None = None
    bucket: str | None = None
    endpoint: str | None = None
    region: str | None = None
    force_path_style: bool | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    application_key_id: str | None = None
    application_key: str | None = None
    sync_interval: float | None = None  # unset: DEFAULT_SYNC_INTERVAL of the type
    part_size: int | None = None
    concurrency: int | None = None
    priority: int | None = None
    encryption_keys: tuple[bytes, ...] | None = None  # the first encrypts, every one decrypts
    max_bandwidth: int | None = None  # bytes per second, uploads and downloads together
    db_id: str | None = None  # the id of the database it holds (encrypted objects are bound to it)
    # The keys of the backend's own (registry.Backend.options) that are given, as (key, value) pairs.
    options: tuple[tuple[str, Any], ...] = ()

    def __repr__(self) -> str:
        secret_fields, secret_keys = _secrets()
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in secret_fields and value is not None:
                value = "***"
            elif f.name == "options":
                value = tuple((k, "***" if k in secret_keys else v) for k, v in value)
            parts.append(f"{f.name}={value!r}")
        return f"ReplicaConfig({', '.join(parts)})"

    def option(self, key: str, default: Any = None) -> Any:
        """Return the value of the backend's own key ``key`` (as its converter made it), default when not given."""
        return dict(self.options).get(key, default)

    @property
    def destination(self) -> str:
        """Return where the replica writes, for messages (never a secret)."""
        if self.type == "file":
            return self.path
        where = f"{self.type}://{self.bucket}/{self.path}" if self.bucket else f"{self.type}://{self.path}"
        return f"{where} at {self.endpoint}" if self.endpoint else where


@dataclass(frozen=True)
class LoggingConfig:
    """Log level, line format and output stream."""

    level: str = "info"
    format: str = "text"
    stream: str = "stderr"


@dataclass(frozen=True, kw_only=True)
class DbSettings:
    """The settings of a database that the top of the file gives every database, unless it
    gives its own. A ``DbConfig`` is one, with its path, replicas and id."""

    snapshot_interval: float = DEFAULT_SNAPSHOT_INTERVAL
    checkpoint_pages: int = DEFAULT_CHECKPOINT_PAGES
    spool_max_size: int = DEFAULT_SPOOL_MAX_SIZE
    max_wal_size: int = DEFAULT_MAX_WAL_SIZE
    retention: float = DEFAULT_RETENTION
    retention_check_interval: float = DEFAULT_RETENTION_CHECK_INTERVAL
    compaction: tuple[float, ...] = DEFAULT_COMPACTION
    validation_interval: float | None = None

    def as_fields(self) -> dict[str, Any]:
        """Return the settings by field name, for ``DbConfig(path, replicas, **settings.as_fields())``."""
        return {f.name: getattr(self, f.name) for f in fields(DbSettings)}


@dataclass(frozen=True)
class DbConfig(DbSettings):
    """One database (absolute path), its id and the replicas it ships to.

    The id names the database in every object it writes; a restore refuses a replica whose
    objects carry another. By default it is the path (``layout.default_db_id``); the ``id:``
    key sets it, so a moved database keeps its backups. In a directory's template it is the
    prefix of its databases' ids: ``<prefix>/<path relative to the directory>``.
    """

    path: str
    replicas: tuple[ReplicaConfig, ...]
    id: str = ""

    def with_id(self, db_id: str) -> "DbConfig":
        """Return this database with id ``db_id``, its replicas told (they bind encrypted objects to it)."""
        return replace(self, id=db_id, replicas=tuple(replace(rc, db_id=db_id) for rc in self.replicas))


# Files a directory never replicates: SQLite's own companions and litesync's temp files.
_COMPANION_SUFFIXES = ("-wal", "-shm", "-journal", ".tmp")


@dataclass(frozen=True)
class DirConfig:
    """A directory whose databases matching ``pattern`` are replicated, each as ``template``
    says: ``template.path`` is the directory, its replicas are prefixes under which each
    database gets its own place (``<prefix>/<path relative to the directory>``)."""

    template: DbConfig
    pattern: str = DEFAULT_PATTERN
    recursive: bool = False

    @property
    def path(self) -> str:
        return self.template.path

    def matches(self, db_path: str) -> bool:
        """True when the absolute ``db_path`` is a database this directory replicates (by name only)."""
        rel = os.path.relpath(db_path, self.path)
        parts = rel.split(os.sep)
        if parts[0] in (os.curdir, os.pardir) or (len(parts) > 1 and not self.recursive):
            return False
        name = parts[-1]
        return (fnmatch.fnmatchcase(name, self.pattern) and not name.endswith(_COMPANION_SUFFIXES)
                and not any(is_state_dir(p) for p in parts[:-1]))

    def database(self, db_path: str) -> DbConfig:
        """Return the configuration of the database at ``db_path`` inside this directory."""
        rel = os.path.relpath(db_path, self.path)
        db = replace(self.template, path=db_path, replicas=tuple(_beneath(rc, rel) for rc in self.template.replicas))
        return db.with_id(f"{self.template.id}/{rel.replace(os.sep, '/')}")


def _beneath(rc: ReplicaConfig, rel: str) -> ReplicaConfig:
    """Return the replica ``rc`` moved down to ``rel`` (a path relative to its directory)."""
    if rc.type == "file":
        return replace(rc, path=os.path.join(rc.path, rel), url=None)
    key = rel.replace(os.sep, "/")
    return replace(rc, path=f"{rc.path}/{key}" if rc.path else key, url=None)


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` is the file it came from, None for the command line.

    ``dbs`` are the databases listed by path, ``dirs`` the directories (``dir:`` entries),
    ``addr`` is where to serve Prometheus metrics (``host:port``), None for nowhere.
    ``max_open`` bounds the databases that hold connections at once (the rest are parked,
    see runner.OpenBudget); None: as many as the descriptor limit allows.
    """

    dbs: tuple[DbConfig, ...]
    logging: LoggingConfig = LoggingConfig()
    source: str | None = None
    dirs: tuple[DirConfig, ...] = ()
    addr: str | None = None
    exec: str | None = None  # the command ``replicate`` starts, when --exec is not given
    shutdown_timeout: float | None = None  # unset: --shutdown-timeout's default
    restore_timeout: float | None = None  # unset: DEFAULT_RESTORE_TIMEOUT; inf: no deadline
    max_open: int | None = None

    def database(self, db_path: str) -> DbConfig | None:
        """Return the configuration of the database at the absolute ``db_path``, listed or in a directory."""
        for db in self.dbs:
            if db.path == db_path:
                return db
        for d in self.dirs:
            if d.matches(db_path):
                return d.database(db_path)
        return None

    @property
    def replicas(self) -> list[ReplicaConfig]:
        """Every replica (a directory's as its prefix)."""
        return [rc for d in self.dbs + tuple(d.template for d in self.dirs) for rc in d.replicas]


def priority_order(replicas: Sequence[ReplicaConfig]) -> list[ReplicaConfig]:
    """Replicas in the order a restore tries them: by ``priority`` (lower first), then those
    without one, in the order they are listed."""
    order = sorted(range(len(replicas)), key=lambda i: (replicas[i].priority is None, replicas[i].priority or 0, i))
    return [replicas[i] for i in order]
