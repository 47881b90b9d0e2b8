"""litesync.yml to frozen dataclasses: ``${VAR}`` expansion, units, validation.

Durations are seconds (float), sizes bytes (int). An optional setting that is absent,
null, or empty after ``${VAR}`` expansion is unset (None), which is not the same as zero.
Every error from a file names the file, the field path and the line.

The package: ``model`` (the dataclasses and defaults), ``units`` (scalar values), ``urls``
(replica URLs), ``keys`` (``${VAR}`` expansion and encryption keys), ``reader`` (the file
and the command line). What each replica type accepts is declared with its backend, in
``litesync.replica.registry``.
"""

from __future__ import annotations

from .keys import KEY_ENV, KEY_FILE_ENV, expand_env, keys_from_env, read_key_file
from .model import (DEFAULT_CHECKPOINT_PAGES, DEFAULT_COMPACTION, DEFAULT_PATTERN, DEFAULT_RESTORE_TIMEOUT,
                    DEFAULT_RETENTION,
                    DEFAULT_RETENTION_CHECK_INTERVAL, DEFAULT_SNAPSHOT_INTERVAL, DEFAULT_SPOOL_MAX_SIZE,
                    DEFAULT_MAX_WAL_SIZE,
                    DEFAULT_SYNC_INTERVAL, LOG_FORMATS, LOG_LEVELS, LOG_STREAMS, MAX_PART_SIZE, MIN_PART_SIZE,
                    REPLICA_TYPES, Config, DbConfig, DbSettings, DirConfig, LoggingConfig, ReplicaConfig,
                    priority_order)
from .reader import (_DB_KEYS, _LOGGING_KEYS, _TOP_KEYS, CONFIG_ENV, LOCAL_CONFIG,
                     SYSTEM_CONFIG, command_line_replica, config_from_args, find_config, load_config,
                     resolve_config, with_litestream_credentials, with_max_bandwidth, _all_replica_keys)
from .units import parse_bandwidth, parse_duration, parse_size, parse_timeout, split_addr
from .urls import parse_replica_url

__all__ = [
    "Config", "DbConfig", "DbSettings", "DirConfig", "LoggingConfig", "ReplicaConfig",
    "command_line_replica", "config_from_args", "expand_env", "find_config", "keys_from_env",
    "load_config", "parse_bandwidth", "parse_duration", "parse_replica_url", "parse_size", "parse_timeout",
    "priority_order", "read_key_file", "resolve_config", "split_addr", "with_litestream_credentials",
    "with_max_bandwidth",
    "CONFIG_ENV", "KEY_ENV", "KEY_FILE_ENV", "LOCAL_CONFIG", "SYSTEM_CONFIG", "REPLICA_TYPES",
    "DEFAULT_CHECKPOINT_PAGES", "DEFAULT_COMPACTION", "DEFAULT_PATTERN", "DEFAULT_RESTORE_TIMEOUT", "DEFAULT_RETENTION",
    "DEFAULT_RETENTION_CHECK_INTERVAL", "DEFAULT_SNAPSHOT_INTERVAL", "DEFAULT_SPOOL_MAX_SIZE",
    "DEFAULT_MAX_WAL_SIZE",
    "DEFAULT_SYNC_INTERVAL", "LOG_FORMATS", "LOG_LEVELS", "LOG_STREAMS", "MAX_PART_SIZE", "MIN_PART_SIZE",
    # The key lists, for the test that the example file documents every key.
    "_all_replica_keys", "_DB_KEYS", "_LOGGING_KEYS", "_TOP_KEYS",
]
