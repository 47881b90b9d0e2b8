"""litesync.yml (and the command line) to a ``Config``: finding the file, reading its YAML
nodes into the dataclasses with errors that name the file, the field path and the line."""

from __future__ import annotations

import difflib
import logging
import os
import stat
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence, TypeVar, overload

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .. import litestream
from ..errors import ConfigError, UsageError
from ..layout import default_db_id
from ..replica.crypt import load_key, load_keys
from ..replica.registry import BACKENDS
from ..segment import check_db_id
from .keys import _REFERENCE, expand_env, keys_from_env, read_key_file
from .model import (DEFAULT_PATTERN, Config, DbConfig, DbSettings, DirConfig, LoggingConfig, LOG_FORMATS,
                    LOG_LEVELS, LOG_STREAMS, ReplicaConfig)
from .units import (_abspath, _key_prefix, _addr, _bool, _bucket, _choice, _compaction, _db_id, _endpoint, _integer,
                    _part_size, _pattern, _positive_duration, _positive_size,
                    _replica_name, _replica_type, parse_bandwidth, parse_duration, parse_timeout)
from .urls import _default_name, _destination_key, parse_replica_url

log = logging.getLogger("litesync.config")

CONFIG_ENV = "LITESYNC_CONFIG"
LOCAL_CONFIG = "litesync.yml"
SYSTEM_CONFIG = "/etc/litesync.yml"


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


_DB_SETTINGS = ("snapshot-interval", "checkpoint-pages", "max-wal-size", "spool-max-size", "retention",
                "retention-check-interval", "compaction", "validation-interval")
_TOP_KEYS = _DB_SETTINGS + ("logging", "addr", "max-open-databases", "dbs", "exec", "shutdown-timeout",
                             "restore-timeout")
_DIR_ONLY_KEYS = ("pattern", "recursive")
_DB_KEYS = ("path", "dir", "replicas", "replica", "id") + _DIR_ONLY_KEYS + _DB_SETTINGS
_LOGGING_KEYS = ("level", "format", "stream", "stderr")

_ENCRYPTION_KEYS = ("encryption-key", "encryption-key-file", "decryption-keys")
_COMMON_REPLICA_KEYS = ("name", "sync-interval", "priority", "max-bandwidth") + _ENCRYPTION_KEYS
# What each type takes is declared with its backend (replica/registry.py), read when a replica is.


def _type_keys(rtype: str) -> tuple[str, ...]:
    """Return the keys a replica of type ``rtype`` takes (with ``type:``)."""
    return ("type",) + BACKENDS[rtype].keys + _COMMON_REPLICA_KEYS


def _location_keys() -> tuple[str, ...]:
    """Return the keys a URL gives: with url: giving them again as keys would be ambiguous."""
    return tuple(dict.fromkeys(k for b in BACKENDS.values() for k in b.location_keys))


def _url_keys(rtype: str) -> tuple[str, ...]:
    """Return the keys a replica of type ``rtype`` takes with ``url:``."""
    return ("url",) + tuple(k for k in _type_keys(rtype) if k != "type" and k not in _location_keys())


def _all_replica_keys() -> frozenset[str]:
    """Return the keys some replica type takes."""
    return frozenset(k for t in BACKENDS for k in _type_keys(t)) | {"url"}


# Replica keys whose value converts on its own (path depends on the type, type and url are special);
# a backend's own keys are converted as it declares (Backend.options).
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

    @overload
    def value(self, items: Items, key: str, path: str, convert: Callable[[str], T], default: T) -> T: ...

    @overload
    def value(self, items: Items, key: str, path: str, convert: Callable[[str], T],
              default: None = None) -> T | None: ...

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
        defaults = self.db_settings(items, "", DbSettings())
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
                      shutdown_timeout=self.value(items, "shutdown-timeout", "", parse_duration),  # never negative
                      restore_timeout=self.value(items, "restore-timeout", "", parse_timeout),
                      max_open=self.value(items, "max-open-databases", "", _integer(1)))

    def db_settings(self, items: Items, path: str, inherited: DbSettings) -> DbSettings:
        """Return the database settings ``items`` give, the ``inherited`` ones for those they do not."""
        return DbSettings(
            snapshot_interval=self.value(items, "snapshot-interval", path, _positive_duration,
                                         inherited.snapshot_interval),
            checkpoint_pages=self.value(items, "checkpoint-pages", path, _integer(1), inherited.checkpoint_pages),
            max_wal_size=self.value(items, "max-wal-size", path, _positive_size, inherited.max_wal_size),
            spool_max_size=self.value(items, "spool-max-size", path, _positive_size, inherited.spool_max_size),
            retention=self.value(items, "retention", path, _positive_duration, inherited.retention),
            retention_check_interval=self.value(items, "retention-check-interval", path, _positive_duration,
                                                inherited.retention_check_interval),
            compaction=self.value(items, "compaction", path, _compaction, inherited.compaction),
            validation_interval=self.value(items, "validation-interval", path, _positive_duration,
                                           inherited.validation_interval))

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

    def db(self, node: Node, path: str, defaults: DbSettings) -> DbConfig | DirConfig:
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
        db = DbConfig(db_path, tuple(replicas), **settings.as_fields()).with_id(self.db_id(items, path, kind, db_path))
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
            rtype, allowed = from_url.type, _url_keys(from_url.type)
        elif "type" in items:
            from_url = None
            rtype = self.required(items, "type", path, node, _replica_type)
            allowed = _type_keys(rtype)
        else:
            raise self.error("missing required key: 'url' or 'type'", path, node)
        for key, (key_node, _) in items.items():
            if key in allowed:
                continue
            if from_url is not None and key in _location_keys():
                raise self.error(f"key {key!r} cannot be combined with url: (put it in the URL)", path, key_node)
            if key in _all_replica_keys():
                raise self.error(f"key {key!r} does not apply to type {rtype!r}", path, key_node)
            raise self.unknown_key(key, allowed, path, key_node)

        backend = BACKENDS[rtype]
        for first, second in backend.credentials:
            given = [k for k in (first, second) if self.value(items, k, path, str) is not None]
            if len(given) == 1:
                missing = second if given == [first] else first
                raise self.error(f"{missing} is required with {given[0]}", path, items[given[0]][0])

        values: dict[str, Any] = {attr: self.value(items, key, path, convert) for key, (attr, convert)
                                  in _REPLICA_VALUES.items() if key in items and key not in backend.options}
        values["encryption_keys"] = self.encryption_keys(items, path)
        values["options"] = self.options(items, path, backend.options, from_url)
        self.note_literal_secrets(items, path, backend.secret_keys)
        name = values.pop("name", None)
        if from_url is not None:
            rc = replace(from_url, **{attr: v for attr, v in values.items() if v is not None})
        elif rtype == "file":
            rc = ReplicaConfig(rtype, rtype, self.required(items, "path", path, node,
                                                           lambda t: _abspath(t, self.base_dir)), **values)
        else:
            if "bucket" in backend.keys:
                self.required(items, "bucket", path, node, _bucket)
            rc = ReplicaConfig(rtype, rtype, self.value(items, "path", path, _key_prefix, ""), **values)
        rc = with_litestream_credentials(rc, self.environ)
        if name is None:
            return rc, None
        return replace(rc, name=name), items["name"][1]

    def options(self, items: Items, path: str, converters: Mapping[str, Callable[[str], Any]],
                from_url: ReplicaConfig | None) -> tuple[tuple[str, Any], ...]:
        """Return the backend's own keys that are given (its URL's first), each through its converter."""
        given = tuple((key, self.value(items, key, path, convert)) for key, convert in converters.items())
        return (from_url.options if from_url else ()) + tuple((k, v) for k, v in given if v is not None)

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

    def note_literal_secrets(self, items: Items, path: str, backend_secrets: Sequence[str]) -> None:
        """Note the secrets written into the file itself (the warning about a world-readable file names them)."""
        for key in tuple(backend_secrets) + ("encryption-key", "decryption-keys"):
            if key not in items:
                continue
            node = items[key][1]
            scalars = node.value if isinstance(node, SequenceNode) else [node]
            # Text left once every ${VAR} is taken out was written into the file.
            if any(isinstance(n, ScalarNode) and _REFERENCE.sub("", n.value).strip() for n in scalars):
                self.literal_secrets.append(f"{_join(path, key)} at line {node.start_mark.line + 1}")
