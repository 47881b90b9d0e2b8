"""What every command shares: exit codes, the parser class and its one-line errors, global
options, logging set-up, and resolving a DB path or replica URL into replica configs."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import TYPE_CHECKING, Callable, NamedTuple, NoReturn, Sequence, TypeVar

from ..errors import UsageError

log = logging.getLogger("litesync")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_SHUTDOWN_TIMEOUT = 30.0

T = TypeVar("T")
Subparsers = argparse._SubParsersAction  # what add_subparsers returns: each command adds its parser to it

if TYPE_CHECKING:
    from ..config import Config, LoggingConfig, ReplicaConfig


class ArgumentError(UsageError):
    """A command line argparse rejects; ``prog`` is the command it belongs to (``litesync restore``)."""

    def __init__(self, message: str, prog: str) -> None:
        self.prog = prog
        super().__init__(message)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are ``ArgumentError`` (one line, exit 2), not an exit."""

    def error(self, message: str) -> NoReturn:  # argparse exits 2 on usage errors: keep that, one line
        raise ArgumentError(message, self.prog)


def is_url(text: str) -> bool:
    return "://" in text


def option(args: argparse.Namespace, dest: str, parse: Callable[[str], T]) -> T | None:
    """Return the option's value read by ``parse``, None when not given; a bad value is a usage error."""
    text = getattr(args, dest, None)
    if text is None:
        return None
    try:
        return parse(text)
    except (ValueError, UsageError) as e:
        raise UsageError(f"--{dest.replace('_', '-')}: {e}") from None


def max_bandwidth(args: argparse.Namespace) -> int | None:
    from ..config import parse_bandwidth

    return option(args, "max_bandwidth", parse_bandwidth)


def load(args: argparse.Namespace, db: str | None, urls: Sequence[str]) -> Config:
    from ..config import resolve_config, with_max_bandwidth

    cfg = resolve_config(db, urls, args.config)
    rate = max_bandwidth(args)
    return with_max_bandwidth(cfg, rate) if rate else cfg


def setup_logging(cfg_logging: LoggingConfig | None, verbose: bool) -> None:
    level = "debug" if verbose else (cfg_logging.level if cfg_logging else "info")
    stream = sys.stdout if cfg_logging and cfg_logging.stream == "stdout" else sys.stderr
    handler = logging.StreamHandler(stream)
    from ..logs import JsonFormatter, TextFormatter

    json_lines = cfg_logging is not None and cfg_logging.format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "b2sdk", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # watchdog logs an ERROR for events that race its own shutdown.
    logging.getLogger("watchdog").setLevel(logging.CRITICAL)



def db_id_arg(text: str) -> str:
    from ..segment import check_db_id

    try:
        return check_db_id(text)
    except ValueError as e:
        raise UsageError(f"--id: {e}") from None


class Target(NamedTuple):
    """What a command's DB|URL argument resolves to."""

    replicas: list[ReplicaConfig]
    db_path: str | None  # None for a replica URL or directory
    db_id: str | None  # of the database wanted, None for any
    config: Config | None  # the configuration DB was found in (None for a URL or directory)


def replicas_of(args: argparse.Namespace, target: str) -> Target:
    """Resolve a DB path, a replica directory or a replica URL; ``--id`` given overrides the
    configured id. A replica the command line names (or DB's default, ``DB.backups/``) is
    called by where it is, so every message says where litesync looked."""
    from ..config import command_line_replica

    wanted = db_id_arg(args.id) if getattr(args, "id", None) is not None else None
    if is_url(target) or os.path.isdir(target):
        rate = max_bandwidth(args)
        rc = command_line_replica(target)
        rc = dataclasses.replace(rc, name=target if is_url(target) else rc.destination,
                                 max_bandwidth=rate or rc.max_bandwidth)
        return Target([_existing(rc, args, f"from {target!r}")], None, wanted, None)
    cfg = load(args, target, [])
    setup_logging(cfg.logging, args.verbose)
    db = cfg.dbs[0]
    replicas = list(db.replicas)
    if cfg.source is None:  # no config file: DB's default replica
        replicas = [_existing(dataclasses.replace(rc, name=rc.destination), args,
                              f"the default replica of {db.path}; no config file names it") for rc in replicas]
    return Target(replicas, db.path, wanted or db.id or None, cfg)


def _existing(rc: ReplicaConfig, args: argparse.Namespace, origin: str) -> ReplicaConfig:
    """Return ``rc``; a file replica whose directory does not exist is a usage error (a
    mistyped path), unless --if-replica-exists makes an absent replica a normal case."""
    if rc.type == "file" and not os.path.isdir(rc.path) and not getattr(args, "if_replica_exists", False):
        raise UsageError(f"replica directory does not exist: {rc.path} ({origin})")
    return rc


def generation_arg(args: argparse.Namespace) -> int | None:
    from ..layout import parse_generation

    return option(args, "generation", parse_generation)


def global_options(p: argparse.ArgumentParser, config: bool = True) -> None:
    """Accept the global options after the command too (given there, they win)."""
    if config:
        p.add_argument("--config", default=argparse.SUPPRESS, help="config file (also accepted before the command)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging (also accepted before the command)")


