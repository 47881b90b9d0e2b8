"""litesync.yml to frozen dataclasses: ``${VAR}`` expansion, units, validation.

Durations are seconds (float), sizes bytes (int). An optional setting that is absent,
null, or empty after ``${VAR}`` expansion is unset (None), which is not the same as zero.
Every error from a file names the file, the field path and the line.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
import stat
import re
from dataclasses import dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from typing import Callable, Collection, Mapping, Sequence, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import litestream
from .errors import ConfigError, UsageError
from .layout import default_db_id, is_state_dir
from .replica.crypt import load_key, load_keys
from .segment import check_db_id

log = logging.getLogger(__name__)

__all__ = [
    "Config", "DbConfig", "DirConfig", "LoggingConfig", "ReplicaConfig",
    "command_line_replica", "config_from_args", "expand_env", "find_config", "keys_from_env",
    "load_config", "parse_bandwidth", "parse_duration", "parse_replica_url", "parse_size",
    "priority_order", "read_key_file", "resolve_config", "split_addr", "with_max_bandwidth",
]

CONFIG_ENV = "LITESYNC_CONFIG"
# Encryption keys for replicas named on the command line (configured replicas have their own keys).
KEY_ENV = "LITESYNC_ENCRYPTION_KEY"
KEY_FILE_ENV = "LITESYNC_ENCRYPTION_KEY_FILE"
LOCAL_CONFIG = "litesync.yml"
SYSTEM_CONFIG = "/etc/litesync.yml"

DEFAULT_SNAPSHOT_INTERVAL = 4 * 3600.0
# Least time between the starts of two uploads to a replica while commits keep coming
# (a commit after a quiet spell goes up at once). Object stores charge per request: a
# busy database makes at most 4 uploads a second to one.
DEFAULT_SYNC_INTERVAL = {"file": 0.0, "s3": 0.25, "b2": 0.25}
DEFAULT_CHECKPOINT_PAGES = 1000
DEFAULT_SPOOL_MAX_SIZE = 1 << 30
DEFAULT_RETENTION = 24 * 3600.0
DEFAULT_RETENTION_CHECK_INTERVAL = 60.0
DEFAULT_COMPACTION = (30.0, 300.0, 3600.0)
DEFAULT_PATTERN = "*.db"
# Multipart uploads on S3 and B2 take parts of 5 MiB to 5 GiB (the last part may be smaller).
MIN_PART_SIZE = 5 << 20
MAX_PART_SIZE = 5 << 30

REPLICA_TYPES = ("file", "s3", "b2")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
LOG_STREAMS = ("stderr", "stdout")

_SECRET_FIELDS = frozenset({"secret_access_key", "application_key", "encryption_keys"})


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

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value is not None:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"ReplicaConfig({', '.join(parts)})"

    @property
    def destination(self) -> str:
        """Return where the replica writes, for messages (never a secret)."""
        if self.type == "file":
            return self.path
        where = f"{self.type}://{self.bucket}/{self.path}"
        return f"{where} at {self.endpoint}" if self.endpoint else where


@dataclass(frozen=True)
class LoggingConfig:
    """Log level, line format and output stream."""

    level: str = "info"
    format: str = "text"
    stream: str = "stderr"


@dataclass(frozen=True)
class DbConfig:
    """One database (absolute path), its id and the replicas it ships to.

    The id names the database in every object it writes; a restore refuses a replica whose
    objects carry another. By default it is the path (``layout.default_db_id``); the ``id:``
    key sets it, so a moved database keeps its backups. In a directory's template it is the
    prefix of its databases' ids: ``<prefix>/<path relative to the directory>``.
    """

    path: str
    replicas: tuple[ReplicaConfig, ...]
    snapshot_interval: float = DEFAULT_SNAPSHOT_INTERVAL
    checkpoint_pages: int = DEFAULT_CHECKPOINT_PAGES
    spool_max_size: int = DEFAULT_SPOOL_MAX_SIZE
    retention: float = DEFAULT_RETENTION
    retention_check_interval: float = DEFAULT_RETENTION_CHECK_INTERVAL
    compaction: tuple[float, ...] = DEFAULT_COMPACTION
    validation_interval: float | None = None
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
    """

    dbs: tuple[DbConfig, ...]
    logging: LoggingConfig = LoggingConfig()
    source: str | None = None
    dirs: tuple[DirConfig, ...] = ()
    addr: str | None = None
    exec: str | None = None  # the command ``replicate`` starts, when --exec is not given
    shutdown_timeout: float | None = None  # unset: --shutdown-timeout's default

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


# --- scalar values -------------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

# Decimal units are powers of 1000 and binary units powers of 1024, as the names say.
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")


def parse_duration(text: str) -> float:
    """Return the seconds in a duration such as "500ms", "10s", "5m", "1h30m" or "2d"."""
    s = text.strip()
    if _NUMBER.fullmatch(s):
        raise ConfigError(f"duration needs a unit: {text!r}")
    if not s:
        raise ConfigError(f"invalid duration: {text!r} (units: ms, s, m, h, d)")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ConfigError(f"invalid duration: {text!r} (units: ms, s, m, h, d)")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total


def parse_size(text: str | int) -> int:
    """Return the bytes in a size such as "512", "64KB" (10^3) or "64MiB" (2^20)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"invalid size: {text!r}")
        return text
    m = _SIZE.fullmatch(str(text).strip())
    unit = m and _SIZE_UNITS.get(m.group(2).lower())
    if not unit:
        raise ConfigError(f"invalid size: {text!r} (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    try:
        size = Decimal(m.group(1)) * unit
    except InvalidOperation:  # pragma: no cover - the pattern only lets decimals through
        raise ConfigError(f"invalid size: {text!r}") from None
    if size != size.to_integral_value():
        raise ConfigError(f"size is not a whole number of bytes: {text!r}")
    return int(size)


def parse_bandwidth(text: str) -> int:
    """Return the bytes per second in a rate such as "5MB/s" or "512KiB/s" (greater than zero)."""
    s = str(text).strip()
    if not s.lower().endswith("/s"):
        raise ConfigError(f"bandwidth needs a '/s': {text!r} (a size per second: 5MB/s, 512KiB/s)")
    try:
        rate = parse_size(s[:-2])
    except ConfigError:
        raise ConfigError(f"invalid bandwidth: {text!r} (a size per second: 5MB/s, 512KiB/s)") from None
    if rate <= 0:
        raise ConfigError(f"must be greater than zero: {text!r}")
    return rate


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ConfigError(f"expected true or false: {text!r}")
    return value == "true"


def _integer(minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        if not re.fullmatch(r"[+-]?\d+", text.strip()):
            raise ConfigError(f"expected an integer: {text!r}")
        value = int(text)
        if value < minimum:
            raise ConfigError(f"must be at least {minimum}: {text!r}")
        return value

    return convert


def _choice(options: Sequence[str]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ConfigError(f"invalid value: {text!r} (expected {_one_of(options)})")
        return value

    return convert


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ConfigError(f"must be greater than zero: {text!r}")
    return seconds


def _compaction(text: str) -> tuple[float, ...]:
    if text.strip().lower() == "off":
        return ()
    levels = tuple(_positive_duration(part.strip()) for part in text.split(","))
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise ConfigError(f"compaction windows must increase: {text!r}")
    return levels


def _non_negative_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds < 0:
        raise ConfigError(f"must not be negative: {text!r}")
    return seconds


def _positive_size(text: str) -> int:
    size = parse_size(text)
    if size <= 0:
        raise ConfigError(f"must be greater than zero: {text!r}")
    return size


def _part_size(text: str) -> int:
    size = parse_size(text)
    if not MIN_PART_SIZE <= size <= MAX_PART_SIZE:
        raise ConfigError(f"must be between 5MiB and 5GiB: {text!r}")
    return size


def split_addr(text: str) -> tuple[str, int]:
    """Return (host, port) of "host:port", "[ipv6]:port" or ":port" (all interfaces)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not re.fullmatch(r"\d{1,5}", port) or not 0 < int(port) < 65536:
        raise ConfigError(f"expected host:port with a port from 1 to 65535: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"write an IPv6 address in brackets, [::1]:9090: {text!r}")
    return host, int(port)


def _addr(text: str) -> str:
    split_addr(text)
    return text.strip()


def _replica_type(text: str) -> str:
    if text not in REPLICA_TYPES:
        raise ConfigError(f"unknown replica type: {text!r} (expected {_one_of(REPLICA_TYPES)})")
    return text


def _replica_name(text: str) -> str:
    # The name becomes a file name in the database's state directory.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise ConfigError(f"invalid replica name: {text!r} (letters, digits, '.', '_', '-')")
    return text


def _bucket(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise ConfigError(f"invalid bucket name: {text!r}")
    return text


_LOOPBACK = re.compile(r"(localhost|127(\.\d+){3}|\[::1\])(:\d+)?(/.*)?")


def _endpoint(text: str) -> str:
    if "://" not in text and re.fullmatch(r"[A-Za-z0-9.\[\]:-]+(/.*)?", text):
        # A host without a scheme, as Litestream takes it: https, but http on the loopback.
        text = ("http://" if _LOOPBACK.fullmatch(text) else "https://") + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"endpoint must be an http:// or https:// URL: {text!r}")
    if "@" in parts.netloc:  # the endpoint is shown in logs, status and metrics: never echo it
        raise ConfigError("endpoint must not contain credentials (give them as keys or in the environment)")
    return text


def _pattern(text: str) -> str:
    if "/" in text:
        raise ConfigError(f"pattern matches file names, not paths: {text!r}")
    return text


def _key_prefix(text: str) -> str:
    return text.strip("/")


def _db_id(text: str) -> str:
    try:
        return check_db_id(text)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _abspath(path: str, base: str | None) -> str:
    if not path:
        raise ConfigError("empty path")
    return os.path.normpath(os.path.join(base or os.getcwd(), os.path.expanduser(path)))


def _one_of(options: Sequence[str]) -> str:
    return ", ".join(options[:-1]) + " or " + options[-1] if len(options) > 1 else options[0]


# --- environment expansion -----------------------------------------------------------------

_REFERENCE = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Return text with ``${VAR}`` and ``${VAR:-default}`` replaced; ``$$`` is a literal ``$``."""
    env = os.environ if environ is None else environ

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        body = m.group(1)
        if body is None:
            raise ConfigError("unterminated '${' (write '$${' for a literal '${')")
        var = _VARIABLE.fullmatch(body)
        if var is None:
            raise ConfigError(f"invalid variable reference: {m.group(0)!r}")
        name, default = var.groups()
        value = env.get(name)
        if default is not None and not value:  # like the shell: unset or empty takes the default
            return default
        if value is None:
            raise ConfigError(f"environment variable not set: {name!r}")
        return value

    return _REFERENCE.sub(substitute, text)


# --- replica URLs --------------------------------------------------------------------------

_URL_PARAMS = {"s3": ("endpoint", "region", "force-path-style"), "b2": ()}


def parse_replica_url(url: str, *, base: str | None = None) -> ReplicaConfig:
    """Return the replica a URL or directory path names (relative paths start at base, else the cwd).

    Accepts ``file:///dir``, a plain path, ``s3://bucket/prefix?endpoint=..&region=..&force-path-style=..``
    and ``b2://bucket/prefix``. The replica is named after its type.
    """
    if not url:
        raise ConfigError("empty replica URL")
    if "://" not in url:
        return ReplicaConfig("file", "file", _abspath(url, base), url=url)
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in REPLICA_TYPES:
        raise ConfigError(f"unsupported replica URL scheme: {scheme!r} in {url!r}")
    if "@" in parts.netloc:  # the URL is printed in logs; do not echo what may be a secret
        raise ConfigError("replica URL must not contain credentials (give them as keys or in the environment)")
    shown = f"{scheme}://{parts.netloc}{parts.path}"
    if parts.fragment:
        raise ConfigError(f"unexpected '#' in replica URL: {url!r}")
    params = _url_params(parts.query, _URL_PARAMS.get(scheme, ()), shown)
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigError(f"file URL needs an absolute path (file:///dir): {url!r}")
        return ReplicaConfig("file", "file", os.path.normpath(unquote(parts.path)), url=url)
    if not parts.netloc:
        raise ConfigError(f"replica URL has no bucket: {url!r}")
    force = params.get("force-path-style")
    endpoint = params.get("endpoint")
    return ReplicaConfig(
        scheme, scheme, _key_prefix(unquote(parts.path)), url=url, bucket=_bucket(parts.netloc),
        endpoint=_endpoint(endpoint) if endpoint else None, region=params.get("region") or None,
        force_path_style=_bool(force) if force else None)


def _url_params(query: str, allowed: Sequence[str], shown: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        rule = litestream.URL_PARAMS.get(key)
        if isinstance(rule, litestream.Refused):
            raise ConfigError(f"Litestream's query parameter {key!r} is not supported: {rule.instead}")
        if isinstance(rule, litestream.Alias) and rule.to in allowed:
            key = rule.to
        if key not in allowed:
            expected = f" (expected {_one_of(allowed)})" if allowed else ""
            raise ConfigError(f"unknown query parameter {key!r} in {shown!r}{expected}")
        if key in params:
            raise ConfigError(f"query parameter given twice: {key!r} in {shown!r}")
        params[key] = value
    return params


def _destination_key(rc: ReplicaConfig) -> tuple[str | None, ...]:
    if rc.type == "file":
        return ("file", rc.path)
    return (rc.type, (rc.endpoint or "").rstrip("/"), rc.bucket, rc.path)


def _default_name(rtype: str, taken: Collection[str]) -> str:
    name, n = rtype, 1
    while name in taken:
        n += 1
        name = f"{rtype}-{n}"
    return name


# --- encryption keys -----------------------------------------------------------------------


def read_key_file(path: str) -> list[bytes]:
    """Return the keys in a key file (one or more, see ``load_keys``); warn when every user may read it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
            mode = os.fstat(f.fileno()).st_mode
    except UnicodeDecodeError:
        raise ConfigError(f"encryption key file is not text: {path!r}") from None
    except OSError as e:
        raise ConfigError(f"cannot read encryption key file: {path!r} ({e.strerror})") from None
    if mode & stat.S_IROTH:
        log.warning("encryption key file is readable by every user: %s (run chmod 600 %s)", path, path)
    try:
        return load_keys(text)
    except ConfigError as e:
        raise ConfigError(f"encryption key file {path!r}: {e}") from None


def keys_from_env(environ: Mapping[str, str] | None = None) -> tuple[bytes, ...] | None:
    """Return the keys $LITESYNC_ENCRYPTION_KEY or $LITESYNC_ENCRYPTION_KEY_FILE gives; None when both are unset.

    A variable that is set must hold a key: set but empty is an error, never "no encryption".
    """
    env = os.environ if environ is None else environ
    text, path = env.get(KEY_ENV), env.get(KEY_FILE_ENV)
    if text is not None and path is not None:
        raise ConfigError(f"set ${KEY_ENV} or ${KEY_FILE_ENV}, not both")
    if text is not None:
        try:
            return tuple(load_keys(text))
        except ConfigError as e:
            raise ConfigError(f"${KEY_ENV}: {e}") from None
    if path is not None:
        return tuple(read_key_file(os.path.expanduser(path)))
    return None


# --- configuration from the command line ----------------------------------------------------


def command_line_replica(url: str, environ: Mapping[str, str] | None = None) -> ReplicaConfig:
    """Return the replica a URL given on the command line names, with the environment's encryption keys."""
    rc = with_litestream_credentials(parse_replica_url(url), os.environ if environ is None else environ)
    keys = keys_from_env(environ)
    return replace(rc, encryption_keys=keys) if keys else rc


def with_litestream_credentials(rc: ReplicaConfig, environ: Mapping[str, str]) -> ReplicaConfig:
    """Return ``rc`` with Litestream's $LITESTREAM_ACCESS_KEY_ID/$LITESTREAM_SECRET_ACCESS_KEY
    as its credentials: an s3 replica without its own, when the AWS variables are not set."""
    found = litestream.credentials_from_env(environ) if rc.type == "s3" and rc.access_key_id is None else None
    return replace(rc, access_key_id=found[0], secret_access_key=found[1]) if found else rc


def with_max_bandwidth(config: Config, rate: int) -> Config:
    """Return ``config`` with every replica (of a directory too) limited to ``rate`` bytes per second."""
    def limit(db: DbConfig) -> DbConfig:
        return replace(db, replicas=tuple(replace(r, max_bandwidth=rate) for r in db.replicas))

    return replace(config, dbs=tuple(limit(d) for d in config.dbs),
                   dirs=tuple(replace(d, template=limit(d.template)) for d in config.dirs))


def config_from_args(db_path: str, replica_urls: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Return the configuration for ``litesync replicate DB [URL ...]``.

    Without URLs the replica is the directory ``DB.backups`` next to the database. Every
    replica takes the encryption keys of the environment (``keys_from_env``).
    """
    path = _abspath(db_path, None)
    keys = keys_from_env(environ)
    if replica_urls:
        env = os.environ if environ is None else environ
        found = [with_litestream_credentials(parse_replica_url(u), env) for u in replica_urls]
    else:
        found = [ReplicaConfig("file", "file", path + ".backups")]
    replicas: list[ReplicaConfig] = []
    seen: set[tuple[str | None, ...]] = set()
    for rc in found:
        key = _destination_key(rc)
        if key in seen:
            raise ConfigError(f"replica given twice: {rc.destination!r}")
        seen.add(key)
        replicas.append(replace(rc, name=_default_name(rc.type, [r.name for r in replicas]), encryption_keys=keys))
    try:
        db_id = check_db_id(default_db_id(path))
    except ValueError as e:
        raise ConfigError(f"{path}: {e} (give it one with --id)") from None
    return Config((DbConfig(path, tuple(replicas)).with_id(db_id),), LoggingConfig(), None)


# --- configuration files -------------------------------------------------------------------


def find_config(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the config file to use: explicit, $LITESYNC_CONFIG, ./litesync.yml, /etc/litesync.yml.

    An explicit or $LITESYNC_CONFIG file must exist; None when no default file exists.
    """
    if explicit is not None:
        if not os.path.exists(explicit):
            raise ConfigError("config file not found", file=explicit)
        return explicit
    from_env = (os.environ if environ is None else environ).get(CONFIG_ENV)
    if from_env:
        if not os.path.exists(from_env):
            raise ConfigError(f"config file not found (from ${CONFIG_ENV})", file=from_env)
        return from_env
    for candidate in (LOCAL_CONFIG, SYSTEM_CONFIG):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    return None


def resolve_config(db_path: str | None, replica_urls: Sequence[str], config_path: str | None, *,
                   environ: Mapping[str, str] | None = None) -> Config:
    """Return the configuration a command means: ``DB URL...`` from the command line alone, else
    the config file (only ``DB`` of it when given), else ``DB`` with its default replica."""
    if replica_urls:
        return config_from_args(db_path or "", replica_urls)
    path = find_config(config_path, environ)
    if path is None:
        if db_path is None:
            raise UsageError("no database given and no config file found "
                             "(looked at --config, $LITESYNC_CONFIG, ./litesync.yml, /etc/litesync.yml)")
        return config_from_args(db_path, [])
    cfg = load_config(path, environ=environ)
    if db_path is None:
        return cfg
    want = os.path.abspath(db_path)
    found = cfg.database(want)
    if found is None:
        raise UsageError(f"database not in config {path}: {want}")
    return replace(cfg, dbs=(found,), dirs=())


def load_config(path: str, *, environ: Mapping[str, str] | None = None) -> Config:
    """Return the configuration in the YAML file at path (``${VAR}`` taken from environ)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
            mode = os.fstat(f.fileno()).st_mode
    except FileNotFoundError:
        raise ConfigError("config file not found", file=path) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", file=path) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror}", file=path) from None
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ConfigError(f"invalid YAML: {e.problem or e.context}", file=path,
                          line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=path) from None
    if not documents:
        raise ConfigError("config file is empty", file=path)
    if len(documents) > 1:
        raise ConfigError("config file holds more than one YAML document", file=path,
                          line=documents[1].start_mark.line + 1)
    root = documents[0]
    env = os.environ if environ is None else environ
    reader = _Reader(path, env, os.path.dirname(os.path.abspath(path)))
    config = reader.config(root)
    if reader.literal_secrets and mode & stat.S_IROTH:
        log.warning("config file is readable by every user and holds secrets: %s (%s); run chmod 600 %s",
                    path, ", ".join(reader.literal_secrets), path)
    return config


_DB_SETTINGS = ("snapshot-interval", "checkpoint-pages", "spool-max-size", "retention",
                "retention-check-interval", "compaction", "validation-interval")
_TOP_KEYS = _DB_SETTINGS + ("logging", "addr", "dbs", "exec", "shutdown-timeout")
_DIR_ONLY_KEYS = ("pattern", "recursive")
_DB_KEYS = ("path", "dir", "replicas", "replica", "id") + _DIR_ONLY_KEYS + _DB_SETTINGS
_LOGGING_KEYS = ("level", "format", "stream", "stderr")

_ENCRYPTION_KEYS = ("encryption-key", "encryption-key-file", "decryption-keys")
_COMMON_REPLICA_KEYS = ("name", "sync-interval", "priority", "max-bandwidth") + _ENCRYPTION_KEYS
# Keys whose values are secrets: the warning about a world-readable file names those given literally.
_SECRET_KEYS = ("secret-access-key", "application-key", "encryption-key", "decryption-keys")
_TYPE_KEYS = {
    "file": ("type", "path") + _COMMON_REPLICA_KEYS,
    "s3": ("type", "bucket", "path", "endpoint", "region", "force-path-style", "access-key-id",
           "secret-access-key", "part-size", "concurrency") + _COMMON_REPLICA_KEYS,
    "b2": ("type", "bucket", "path", "application-key-id", "application-key", "part-size",
           "concurrency") + _COMMON_REPLICA_KEYS,
}
# With url: these come from the URL, so giving them again as keys would be ambiguous.
_LOCATION_KEYS = ("path", "bucket", "endpoint", "region", "force-path-style")
_URL_KEYS = {t: ("url",) + tuple(k for k in keys if k != "type" and k not in _LOCATION_KEYS)
             for t, keys in _TYPE_KEYS.items()}
_ALL_REPLICA_KEYS = frozenset(k for keys in _TYPE_KEYS.values() for k in keys) | {"url"}
_CREDENTIAL_PAIRS = (("access-key-id", "secret-access-key"), ("application-key-id", "application-key"))

# Replica keys whose value converts on its own (path depends on the type, type and url are special).
_REPLICA_VALUES: dict[str, tuple[str, Callable[[str], object]]] = {
    "name": ("name", _replica_name),
    "bucket": ("bucket", _bucket),
    "endpoint": ("endpoint", _endpoint),
    "region": ("region", str),
    "force-path-style": ("force_path_style", _bool),
    "access-key-id": ("access_key_id", str),
    "secret-access-key": ("secret_access_key", str),
    "application-key-id": ("application_key_id", str),
    "application-key": ("application_key", str),
    "sync-interval": ("sync_interval", parse_duration),
    "part-size": ("part_size", _part_size),
    "concurrency": ("concurrency", _integer(1)),
    "priority": ("priority", _integer(0)),
    "max-bandwidth": ("max_bandwidth", parse_bandwidth),
}

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"

T = TypeVar("T")
Items = dict[str, tuple[Node, Node]]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return "a single value"


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


class _Reader:
    """Walks composed YAML nodes into dataclasses; errors carry file, field path and line."""

    def __init__(self, file: str, environ: Mapping[str, str], base_dir: str) -> None:
        self.file = file
        self.environ = environ
        self.base_dir = base_dir
        self.db_paths: dict[str, str] = {}
        self.db_ids: dict[str, tuple[str, bool, str]] = {}  # id or prefix -> (kind, explicit, entry)
        self.destinations: dict[tuple[str | None, ...], str] = {}
        self.literal_secrets: list[str] = []  # "field (line N)" of secrets written into the file itself

    def error(self, message: str, path: str, node: Node | None) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(message, file=self.file, path=path or None, line=line)

    # -- node shapes

    def mapping(self, node: Node, path: str) -> Items:
        """Return key -> (key node, value node), merges (``<<``) applied, duplicates refused."""
        if _is_null(node):
            return {}
        if not isinstance(node, MappingNode):
            raise self.error(f"expected a mapping, got {_kind(node)}", path, node)
        merged: Items = {}
        own: Items = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                for key, item in self.merged(value_node, path).items():
                    merged.setdefault(key, item)
                continue
            if not isinstance(key_node, ScalarNode):
                raise self.error(f"a key must be a single value, got {_kind(key_node)}", path, key_node)
            if key_node.value in own:
                raise self.error(f"duplicate key: {key_node.value!r}", path, key_node)
            own[key_node.value] = (key_node, value_node)
        return {**merged, **own}

    def merged(self, node: Node, path: str) -> Items:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        items: Items = {}
        for source in sources:
            if not isinstance(source, MappingNode):
                raise self.error("'<<' needs a mapping or a list of mappings", path, source)
            for key, item in self.mapping(source, path).items():
                items.setdefault(key, item)  # the first mapping listed wins, as in YAML
        return items

    def sequence(self, node: Node, path: str) -> list[Node]:
        if _is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            raise self.error(f"expected a list, got {_kind(node)}", path, node)
        return list(node.value)

    def check_keys(self, items: Items, allowed: Sequence[str], path: str) -> None:
        for key, (key_node, _) in items.items():
            if key not in allowed:
                raise self.unknown_key(key, allowed, path, key_node)

    def unknown_key(self, key: str, allowed: Sequence[str], path: str, key_node: Node) -> ConfigError:
        hint = difflib.get_close_matches(key, allowed, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return self.error(f"unknown key {key!r}{suggestion}", path, key_node)

    # -- values

    def text(self, node: Node, path: str) -> str | None:
        """Return the expanded text of a scalar, None when null or empty."""
        if _is_null(node):
            return None
        if not isinstance(node, ScalarNode):
            raise self.error(f"expected a single value, got {_kind(node)}", path, node)
        bare = litestream.bare_variable(node.value)
        if bare is not None:
            raise self.error(f"write ${{{bare}}} for the variable (litesync expands only that form; $$ is a "
                             f"literal $): ${bare}", path, node)
        try:
            return expand_env(node.value, self.environ) or None
        except ConfigError as e:
            raise self.error(str(e), path, node) from None

    def value(self, items: Items, key: str, path: str, convert: Callable[[str], T],
              default: T | None = None) -> T | None:
        """Return the converted value of key, default when it is absent or empty."""
        if key not in items:
            return default
        node = items[key][1]
        field = _join(path, key)
        text = self.text(node, field)
        if text is None:
            return default
        try:
            return convert(text)
        except ConfigError as e:
            raise self.error(str(e), field, node) from None

    def required(self, items: Items, key: str, path: str, parent: Node, convert: Callable[[str], T]) -> T:
        if key not in items:
            raise self.error(f"missing required key: {key!r}", path, parent)
        value = self.value(items, key, path, convert)
        if value is None:
            raise self.error("a value is required", _join(path, key), items[key][1])
        return value

    # -- sections

    def config(self, root: Node) -> Config:
        items = self.litestream_keys(self.mapping(root, ""), "", litestream.TOP_KEYS)
        self.check_keys(items, _TOP_KEYS, "")
        defaults = self.db_settings(items, "", (DEFAULT_SNAPSHOT_INTERVAL, DEFAULT_CHECKPOINT_PAGES,
                                                DEFAULT_SPOOL_MAX_SIZE, DEFAULT_RETENTION,
                                                DEFAULT_RETENTION_CHECK_INTERVAL, DEFAULT_COMPACTION, None))
        logging_config = self.logging(items)
        addr = self.value(items, "addr", "", _addr)
        if "dbs" not in items:
            raise self.error("missing required key: 'dbs'", "", root)
        db_nodes = self.sequence(items["dbs"][1], "dbs")
        if not db_nodes:
            raise self.error("at least one database is required", "dbs", items["dbs"][1])
        entries = [self.db(node, f"dbs[{i}]", defaults) for i, node in enumerate(db_nodes)]
        return Config(tuple(e for e in entries if isinstance(e, DbConfig)), logging_config, self.file,
                      tuple(e for e in entries if isinstance(e, DirConfig)), addr,
                      exec=self.value(items, "exec", "", str),
                      shutdown_timeout=self.value(items, "shutdown-timeout", "", _non_negative_duration))

    def db_settings(self, items: Items, path: str, inherited: tuple) -> tuple:
        (snapshot_interval, checkpoint_pages, spool_max_size, retention, check_interval,
         compaction, validation_interval) = inherited
        return (self.value(items, "snapshot-interval", path, _positive_duration, snapshot_interval),
                self.value(items, "checkpoint-pages", path, _integer(1), checkpoint_pages),
                self.value(items, "spool-max-size", path, _positive_size, spool_max_size),
                self.value(items, "retention", path, _positive_duration, retention),
                self.value(items, "retention-check-interval", path, _positive_duration, check_interval),
                self.value(items, "compaction", path, _compaction, compaction),
                self.value(items, "validation-interval", path, _positive_duration, validation_interval))

    def logging(self, items: Items) -> LoggingConfig:
        default = LoggingConfig()
        if "logging" not in items:
            return default
        section = self.litestream_keys(self.mapping(items["logging"][1], "logging"), "logging",
                                       litestream.LOGGING_KEYS)
        self.check_keys(section, _LOGGING_KEYS, "logging")
        if "stream" in section and "stderr" in section:
            raise self.error("give either stream: or stderr:, not both", "logging", section["stderr"][0])
        # Litestream's ``stderr: true|false``; litesync's default stream is stderr all the same.
        to_stderr = self.value(section, "stderr", "logging", _bool)
        stream = default.stream if to_stderr is None else ("stderr" if to_stderr else "stdout")
        return LoggingConfig(
            level=self.value(section, "level", "logging", _choice(LOG_LEVELS), default.level),
            format=self.value(section, "format", "logging", _choice(LOG_FORMATS), default.format),
            stream=self.value(section, "stream", "logging", _choice(LOG_STREAMS), stream))

    def db(self, node: Node, path: str, defaults: tuple) -> DbConfig | DirConfig:
        """Return one entry of ``dbs``: a database (``path:``) or a directory (``dir:``)."""
        items = self.litestream_keys(self.mapping(node, path), path, litestream.DB_KEYS)
        self.check_keys(items, _DB_KEYS, path)
        if "path" in items and "dir" in items:
            raise self.error("give either path: or dir:, not both", path, items["dir"][0])
        kind = "dir" if "dir" in items else "path"
        if kind not in items:
            raise self.error("missing required key: 'path' or 'dir'", path, node)
        if kind == "path":
            for only in _DIR_ONLY_KEYS:
                if only in items:
                    raise self.error(f"key {only!r} applies only with dir:", path, items[only][0])
        db_path = self.required(items, kind, path, node, lambda t: _abspath(t, self.base_dir))
        if db_path in self.db_paths:
            what = "directory" if kind == "dir" else "database path"
            raise self.error(f"duplicate {what}: {db_path!r} (also {self.db_paths[db_path]})",
                             f"{path}.{kind}", items[kind][1])
        self.db_paths[db_path] = path
        replica_nodes, replica_paths = self.replica_nodes(items, path, node)
        items = self.replica_settings_to_db(items, replica_nodes, replica_paths, path)
        settings = self.db_settings(items, path, defaults)
        found = [self.replica(n, rpath) for n, rpath in zip(replica_nodes, replica_paths)]
        replicas = self.name_replicas(found, path)
        for rc, rnode, rpath in zip(replicas, replica_nodes, replica_paths):
            key = _destination_key(rc)
            if key in self.destinations:
                raise self.error(f"same destination as {self.destinations[key]}: {rc.destination!r}", rpath, rnode)
            self.destinations[key] = rpath
        db = DbConfig(db_path, tuple(replicas), *settings).with_id(self.db_id(items, path, kind, db_path))
        if kind == "path":
            return db
        return DirConfig(db, self.value(items, "pattern", path, _pattern, DEFAULT_PATTERN),
                         self.value(items, "recursive", path, _bool, False))

    def replica_nodes(self, items: Items, path: str, node: Node) -> tuple[list[Node], list[str]]:
        """Return the nodes of a database's replicas and their field paths: ``replicas:``, a
        list, or Litestream 0.5's ``replica:``, one."""
        if "replica" in items:
            if "replicas" in items:
                raise self.error("give either replica: or replicas:, not both", path, items["replica"][0])
            one = items["replica"][1]
            if isinstance(one, SequenceNode):
                raise self.error("replica: takes one replica (a mapping); write replicas: for a list",
                                 f"{path}.replica", one)
            return [one], [f"{path}.replica"]
        if "replicas" not in items:
            raise self.error("missing required key: 'replicas'", path, node)
        nodes = self.sequence(items["replicas"][1], f"{path}.replicas")
        if not nodes:
            raise self.error("at least one replica is required", f"{path}.replicas", items["replicas"][1])
        return nodes, [f"{path}.replicas[{i}]" for i in range(len(nodes))]

    def replica_settings_to_db(self, items: Items, nodes: list[Node], paths: list[str], path: str) -> Items:
        """Return the database's items with Litestream 0.3's per-replica settings (retention,
        snapshot-interval, ...) moved to it: litesync has one of each per database, so every
        replica must give the same value and the database none."""
        out = dict(items)
        for key in litestream.MOVED_TO_DB:
            given = [(_join(rpath, key), n) for rnode, rpath in zip(nodes, paths) if isinstance(rnode, MappingNode)
                     for k, n in self.mapping(rnode, rpath).items() if k == key]
            if not given:
                continue
            field, (key_node, value_node) = given[0]
            texts = {self.text(n[1], f) for f, n in given}
            if key in items or len(texts) > 1 or len(given) < len(nodes):
                raise self.error(f"litesync keeps one {key} per database, not one per replica: write it on "
                                 f"the database ({_join(path, key)}) alone", field, key_node)
            self.warn(f"Litestream's per-replica {key}: litesync applies it to the database", field, key_node)
            out[key] = (key_node, value_node)
        return out

    def litestream_keys(self, items: Items, path: str, rules: Mapping[str, "litestream.Rule"]) -> Items:
        """Return ``items`` with Litestream's keys read as litesync's (see litestream.py): an
        alias renamed, a key without effect dropped with a warning, a refused one an error
        saying what to write instead. Sections (``snapshot: {interval}``) are read flat."""
        out: Items = {}
        for key, item in items.items():
            field = _join(path, key)
            if path == "" and key in litestream.SECTIONS:
                names = litestream.SECTIONS[key]
                section = self.mapping(item[1], field)
                self.check_keys(section, tuple(names), field)
                renamed = [(names[k], sub) for k, sub in section.items()]
            elif key in rules:
                rule = rules[key]
                if isinstance(rule, litestream.Refused):
                    raise self.error(f"Litestream's {key!r} is not supported: {rule.instead}", field, item[0])
                if isinstance(rule, litestream.Ignored):
                    self.warn(f"Litestream's {key!r} has no effect: {rule.why}", field, item[0])
                    continue
                renamed = [(rule.to, item)]
            else:
                renamed = [(key, item)]
            for name, named in renamed:
                if name in out or (name != key and name in items):
                    raise self.error(f"{name!r} is given twice (as {key!r} too): keep one", path, named[0])
                out[name] = named
        return out

    def warn(self, message: str, path: str, node: Node) -> None:
        log.warning("%s", self.error(message, path, node))

    def db_id(self, items: Items, path: str, kind: str, db_path: str) -> str:
        """Return the id of a ``path:`` entry, or the prefix of a ``dir:`` entry's ids, checked
        against those of the entries before: no two databases may ever share one."""
        explicit = self.value(items, "id", path, _db_id)
        if explicit is None:
            try:
                db_id = check_db_id(default_db_id(db_path))
            except ValueError as e:
                raise self.error(f"{e} (give it one with id:)", f"{path}.{kind}", items[kind][1]) from None
        else:
            db_id = explicit
        node = items["id"][1] if explicit is not None else items[kind][1]
        for other, (other_kind, other_explicit, other_path) in self.db_ids.items():
            clash = other == db_id
            if not clash and (explicit is not None or other_explicit):
                # A path entry's id inside a directory's prefix: that directory may find a database with it.
                clash = (other_kind == "dir" and db_id.startswith(other + "/")) or \
                        (kind == "dir" and other.startswith(db_id + "/"))
            if clash:
                raise self.error(f"database id {db_id!r} {'is' if other == db_id else 'could be'} also "
                                 f"{other_path}'s", f"{path}.id" if explicit is not None else f"{path}.{kind}", node)
        self.db_ids[db_id] = (kind, explicit is not None, path)
        return db_id

    def name_replicas(self, found: list[tuple[ReplicaConfig, Node | None]], path: str) -> list[ReplicaConfig]:
        """Return the replicas with unique names: explicit names as given, others type, type-2, ..."""
        taken: dict[str, str] = {}
        for i, (rc, name_node) in enumerate(found):
            if name_node is None:
                continue
            rpath = f"{path}.replicas[{i}]"
            if rc.name in taken:
                raise self.error(f"duplicate replica name: {rc.name!r} (also {taken[rc.name]})",
                                 f"{rpath}.name", name_node)
            taken[rc.name] = rpath
        named = []
        for rc, name_node in found:
            if name_node is None:
                rc = replace(rc, name=_default_name(rc.type, taken))
                taken[rc.name] = ""
            named.append(rc)
        return named

    def replica(self, node: Node, path: str) -> tuple[ReplicaConfig, Node | None]:
        """Return one replica and the node of its explicit name (None when defaulted)."""
        items = self.litestream_keys(self.mapping(node, path), path, litestream.REPLICA_KEYS)
        items = {k: v for k, v in items.items() if k not in litestream.MOVED_TO_DB}  # see replica_settings_to_db
        if "url" in items and "type" in items:
            raise self.error("give either url: or type:, not both", path, items["type"][0])
        if "url" in items:
            from_url = self.required(items, "url", path, node, lambda u: parse_replica_url(u, base=self.base_dir))
            rtype, allowed = from_url.type, _URL_KEYS[from_url.type]
        elif "type" in items:
            from_url = None
            rtype = self.required(items, "type", path, node, _replica_type)
            allowed = _TYPE_KEYS[rtype]
        else:
            raise self.error("missing required key: 'url' or 'type'", path, node)
        for key, (key_node, _) in items.items():
            if key in allowed:
                continue
            if from_url is not None and key in _LOCATION_KEYS:
                raise self.error(f"key {key!r} cannot be combined with url: (put it in the URL)", path, key_node)
            if key in _ALL_REPLICA_KEYS:
                raise self.error(f"key {key!r} does not apply to type {rtype!r}", path, key_node)
            raise self.unknown_key(key, allowed, path, key_node)

        for first, second in _CREDENTIAL_PAIRS:
            given = [k for k in (first, second) if self.value(items, k, path, str) is not None]
            if len(given) == 1:
                missing = second if given == [first] else first
                raise self.error(f"{missing} is required with {given[0]}", path, items[given[0]][0])

        values = {attr: self.value(items, key, path, convert)
                  for key, (attr, convert) in _REPLICA_VALUES.items() if key in items}
        values["encryption_keys"] = self.encryption_keys(items, path)
        self.note_literal_secrets(items, path)
        name = values.pop("name", None)
        if from_url is not None:
            rc = replace(from_url, **{attr: v for attr, v in values.items() if v is not None})
        elif rtype == "file":
            rc = ReplicaConfig(rtype, rtype, self.required(items, "path", path, node,
                                                           lambda t: _abspath(t, self.base_dir)), **values)
        else:
            self.required(items, "bucket", path, node, _bucket)
            rc = ReplicaConfig(rtype, rtype, self.value(items, "path", path, _key_prefix, ""), **values)
        rc = with_litestream_credentials(rc, self.environ)
        if name is None:
            return rc, None
        return replace(rc, name=name), items["name"][1]

    def encryption_keys(self, items: Items, path: str) -> tuple[bytes, ...] | None:
        """Return the replica's keys, the one that encrypts first; None when it is not encrypted.

        A key that is given but empty after expansion is an error: leaving encryption off
        takes leaving the key out, never an unset variable.
        """
        given = sorted((k for k in ("encryption-key", "encryption-key-file") if k in items),
                       key=lambda k: items[k][0].start_mark.index)
        if len(given) == 2:
            raise self.error("give either encryption-key or encryption-key-file, not both", path, items[given[1]][0])
        if not given:
            if "decryption-keys" in items:
                raise self.error("decryption-keys needs encryption-key or encryption-key-file "
                                 "(the key that encrypts new objects)", path, items["decryption-keys"][0])
            return None
        key = given[0]
        field, node = _join(path, key), items[key][1]
        text = self.text(node, field)
        try:
            if text is None:
                raise ConfigError("a value is required (leave the key out to store objects unencrypted)")
            keys = [load_key(text)] if key == "encryption-key" else read_key_file(_abspath(text, self.base_dir))
        except ConfigError as e:
            raise self.error(str(e), field, node) from None
        return tuple(keys + self.decryption_keys(items, path))

    def decryption_keys(self, items: Items, path: str) -> list[bytes]:
        """Return the keys of decryption-keys: a list, or one value of keys separated by commas."""
        if "decryption-keys" not in items:
            return []
        field, node = _join(path, "decryption-keys"), items["decryption-keys"][1]
        listed = isinstance(node, SequenceNode)
        keys: list[bytes] = []
        for i, element in enumerate(node.value if listed else [node]):
            where = f"{field}[{i}]" if listed else field
            text = self.text(element, where)
            if text is None:  # ${OLD_KEY:-}: no old key
                continue
            try:
                keys += load_keys(text)
            except ConfigError as e:
                raise self.error(str(e), where, element) from None
        return keys

    def note_literal_secrets(self, items: Items, path: str) -> None:
        for key in _SECRET_KEYS:
            if key not in items:
                continue
            node = items[key][1]
            scalars = node.value if isinstance(node, SequenceNode) else [node]
            # Text left once every ${VAR} is taken out was written into the file.
            if any(isinstance(n, ScalarNode) and _REFERENCE.sub("", n.value).strip() for n in scalars):
                self.literal_secrets.append(f"{_join(path, key)} at line {node.start_mark.line + 1}")
