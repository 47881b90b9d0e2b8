"""``litesync restore``: rebuild a database from a replica, plan it (--dry-run) or follow it."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ..errors import LitesyncError, RestoreError, UsageError
from .common import EXIT_OK, Subparsers, generation_arg, global_options, option, replicas_of

if TYPE_CHECKING:
    from ..config import Config, ReplicaConfig
    from ..fetch import ObjectCache
    from ..history import Plan
    from ..replica import ReplicaClient
    from ..replica.resume import Deadline
    from ..restore import Result

log = logging.getLogger("litesync")


@dataclass(frozen=True)
class RestoreOptions:
    """What one ``litesync restore`` is asked to do: the command line and the config,
    resolved and checked once (``from_args``); nothing after this reads ``args``."""

    target: str  # as given: DB, replica directory or URL (for the hint a failure prints)
    replicas: tuple[ReplicaConfig, ...]  # in the order given (restore ranks them by priority)
    output: str | None  # None only for --dry-run from a URL
    db_id: str | None
    force: bool = False
    if_db_not_exists: bool = False
    if_replica_exists: bool = False
    integrity_check: bool = True
    until_ms: int | None = None
    generation: int | None = None
    dry_run: bool = False
    json: bool = False
    follow: bool = False
    interval: float = 0.0  # seconds between polls, with follow
    cache_dir: str | None = None
    timeout: float = math.inf  # the whole restore's deadline in seconds (from_args: at most 1h unless asked)
    timeout_origin: str = "--timeout"  # what set it, for the message when it passes

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RestoreOptions":
        from ..history import parse_time

        replicas, db_path, db_id, cfg = replicas_of(args, args.target)
        if db_path is None and not args.output and not args.dry_run:
            raise UsageError("restore: -o/--output is required when restoring from a URL")
        timeout, origin = _timeout(args, cfg)
        return cls(target=args.target, replicas=tuple(replicas), output=args.output or db_path, db_id=db_id,
                   force=args.force, if_db_not_exists=args.if_db_not_exists,
                   if_replica_exists=args.if_replica_exists, integrity_check=_integrity_check(args),
                   until_ms=option(args, "timestamp", parse_time), generation=generation_arg(args),
                   dry_run=args.dry_run, json=args.json, follow=args.follow, interval=_follow_interval(args),
                   cache_dir=args.cache_dir, timeout=timeout, timeout_origin=origin)

    def deadline(self) -> Deadline | None:
        """The restore's deadline, from now; None when it has none."""
        from ..replica.resume import Deadline

        return None if self.follow or math.isinf(self.timeout) else Deadline(self.timeout, "restore",
                                                                               self.timeout_origin)


def run(args: argparse.Namespace) -> int:
    return restore(RestoreOptions.from_args(args))


def restore(opts: RestoreOptions) -> int:
    """Do what ``opts`` asks; return the exit code."""
    from ..config import priority_order
    from ..fetch import ObjectCache
    from ..progress import terminal_printer
    from ..replica import open_replica
    from ..restore import choose, restore_any

    out = opts.output
    if not opts.follow and opts.if_db_not_exists and out and os.path.exists(out):
        log.info("database exists, nothing to do: %s", out)
        return EXIT_OK
    cache = ObjectCache(opts.cache_dir) if opts.cache_dir else None
    deadline = opts.deadline()
    clients = [open_replica(rc) for rc in priority_order(opts.replicas)]
    for client in clients:
        client.set_deadline(deadline)
    try:
        if opts.if_replica_exists and not _any_backup(clients):
            log.info("no replica holds a backup, nothing to do")
            return EXIT_OK
        if opts.dry_run:
            c = choose(clients, generation=opts.generation, until_ms=opts.until_ms)
            assert c.plan is not None  # choose raises when no replica can serve
            return _print_plan(c.client.name, c.plan, opts.until_ms, opts.json)
        assert out is not None  # from_args: only a dry run may lack an output
        if opts.follow:
            return _follow(clients, out, cache, opts)
        progress = None if opts.json else terminal_printer()
        with _parent_dirs(out):
            try:
                result = restore_any(clients, out, force=opts.force, check=opts.integrity_check,
                                     progress=progress, generation=opts.generation, until_ms=opts.until_ms,
                                     cache=cache, db_id=opts.db_id, deadline=deadline)
            except LitesyncError as e:
                intact = getattr(e, "intact_generation", None)
                if intact is None:
                    raise
                from .. import layout

                gen = layout.format_generation(intact)
                raise RestoreError(f"{e}; generation {gen} is intact, restore it with: litesync restore "
                                   f"--generation {gen} -o {out} {opts.target}") from e
    finally:
        for client in clients:
            client.close()
    _print_result(result, cached=cache is not None, as_json=opts.json)
    return EXIT_OK


def _any_backup(clients: Sequence[ReplicaClient]) -> bool:
    """True when a replica holds anything; a replica that cannot be listed is an error."""
    from .. import layout
    from ..fetch import list_all

    listings = list_all(clients, layout.GENERATIONS + "/")
    if any(isinstance(x, list) and x for x in listings):
        return True
    errors = [x for x in listings if isinstance(x, LitesyncError)]
    if errors:
        raise errors[0]
    return False


@contextlib.contextmanager
def _parent_dirs(path: str) -> Iterator[None]:
    """Create the missing directories above ``path``; remove them again if the body fails."""
    missing = []
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    made: list[str] = []
    try:
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except OSError as e:
                raise UsageError(f"cannot create the output's directory {d}: {e.strerror}") from None
            made.append(d)
        yield
    except BaseException:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise


def _print_result(result: Result, *, cached: bool, as_json: bool) -> None:
    """Print what a restore did: one line (and one per replica passed over), or a JSON object."""
    from .. import layout
    from ..history import format_ms
    from ..progress import format_rate, format_size, plural
    from ..restore import named_reason

    last = format_ms(result.last_commit_ms) if result.last_commit_ms else None
    if as_json:
        import json

        print(json.dumps({
            "path": result.path, "replica": result.replica, "generation": layout.format_generation(result.generation),
            "bytes": result.db_bytes, "transactions": result.transactions, "last_commit": last,
            "seconds": round(result.seconds, 3), "bytes_read": result.bytes_read,
            "cached_objects": result.cached_objects,
            "skipped": [{"replica": name, "reason": why} for name, why in result.skipped]}, indent=2))
        return
    state = f", last commit {last}" if last else ""
    from_cache = f", {plural(result.cached_objects, 'object')} from the cache" if cached else ""
    print(f"restored {result.path} from {result.replica}: {format_size(result.db_bytes)}, "
          f"{plural(result.transactions, 'transaction')} after the snapshot{state}, {result.seconds:.2f}s "
          f"({format_rate(result.bytes_read, result.seconds)} read{from_cache})")
    for name, why in result.skipped:
        print(f"  not from {named_reason(name, why)}")


def _integrity_check(args: argparse.Namespace) -> bool:
    """True when the restored database is to go through PRAGMA integrity_check."""
    if args.no_integrity_check and args.integrity_check not in (None, "none"):
        raise UsageError(f"restore: --no-integrity-check contradicts --integrity-check {args.integrity_check}")
    return not args.no_integrity_check and args.integrity_check != "none"


def _timeout(args: argparse.Namespace, cfg: Config | None) -> tuple[float, str]:
    """The restore's total deadline in seconds (inf: none), and what set it."""
    from ..config import DEFAULT_RESTORE_TIMEOUT, parse_timeout

    if args.timeout is not None:
        return option(args, "timeout", parse_timeout), f"--timeout {args.timeout}"  # type: ignore[return-value]
    if cfg is not None and cfg.restore_timeout is not None:
        return cfg.restore_timeout, f"restore-timeout in {cfg.source}"
    return DEFAULT_RESTORE_TIMEOUT, "--timeout's default"


def _follow_interval(args: argparse.Namespace) -> float:
    """Validate the follow options; return the poll interval in seconds."""
    from ..config import parse_duration

    if not args.follow:
        if args.interval is not None:
            raise UsageError("restore: --interval needs --follow")
        return 0.0
    for flag, given in (("--timestamp", args.timestamp), ("--generation", args.generation),
                        ("--dry-run", args.dry_run), ("--json", args.json),
                        ("--if-db-not-exists", args.if_db_not_exists), ("--timeout", args.timeout)):
        if given:
            raise UsageError(f"restore: {flag} cannot be combined with --follow")
    try:
        interval = parse_duration(args.interval or "1s")
    except LitesyncError as e:
        raise UsageError(f"--interval: {e}") from None
    if interval <= 0:
        raise UsageError(f"--interval: must be more than zero: {args.interval!r}")
    return interval


def _follow(clients: Sequence[ReplicaClient], out: str, cache: ObjectCache | None, opts: RestoreOptions) -> int:
    from ..follow import Follower

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Follower(clients, out, interval=opts.interval, stop=stop, cache=cache, force=opts.force,
             check=opts.integrity_check, db_id=opts.db_id).run()
    log.info("%s: follower stopped", os.path.abspath(out))
    return EXIT_OK


def _print_plan(replica: str, p: Plan, until_ms: int | None, as_json: bool) -> int:
    import json

    from .. import history, layout
    from ..progress import format_size, plural

    last_ms = p.segments[-1][0].last_commit_ms if p.segments else p.snapshot.created_ms
    if until_ms is not None:
        last_ms = min(last_ms, until_ms)
    info: dict[str, Any] = {
        "replica": replica, "generation": layout.format_generation(p.generation),
        "snapshot": {"key": p.snapshot.key, "bytes": p.snapshot_size,
                     "created": history.format_ms(p.snapshot.created_ms)},
        "segments": [{"key": n.key, "bytes": size, "last_commit": history.format_ms(n.last_commit_ms)}
                     for n, size in p.segments],
        "objects": p.objects, "bytes": p.total_bytes,
        "target": history.format_ms(until_ms) if until_ms is not None else "latest",
        "state_at_or_before": history.format_ms(last_ms), "exact": p.exact,
    }
    if as_json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"replica     {replica}")
    print(f"generation  {info['generation']}")
    print(f"target      {info['target']}")
    print(f"snapshot    {p.snapshot.key}  {format_size(p.snapshot_size)}  created {info['snapshot']['created']}")
    if p.segments:
        first, last = p.segments[0][0], p.segments[-1][0]
        print(f"segments    {plural(len(p.segments), 'object')}, seq {first.first_seq}..{last.last_seq}, "
              f"{format_size(sum(s for _, s in p.segments))}, last commit {history.format_ms(last.last_commit_ms)}")
    else:
        print("segments    none")
    print(f"total       {plural(p.objects, 'object')}, {format_size(p.total_bytes)}")
    if not p.exact:
        print("note        the target falls inside a segment covering several shipments; if compaction "
              "merged it (its parts deleted), the restore stops before it")
    return EXIT_OK



def add_parser(sub: Subparsers) -> None:
    """Add the command's parser to ``sub``."""
    s = sub.add_parser("restore", help="rebuild a database from a replica",
                       description="Restore the latest state of DB (from its configured replica) or of a replica URL.")
    s.add_argument("target", metavar="DB|URL")
    global_options(s)
    s.add_argument("-o", "--output", help="output path (default: the database path)")
    s.add_argument("--force", action="store_true", help="replace an existing output file")
    s.add_argument("--if-db-not-exists", action="store_true", help="do nothing (exit 0) if the output exists")
    s.add_argument("--if-replica-exists", action="store_true", help="do nothing (exit 0) if the replica is empty")
    s.add_argument("--no-integrity-check", action="store_true",
                   help="skip PRAGMA integrity_check on the result (checksums are still verified)")
    s.add_argument("--integrity-check", choices=("none", "quick", "full"),
                   help="Litestream's spelling: none is --no-integrity-check; quick and full run the full check")
    s.add_argument("--timestamp", metavar="TIME",
                   help="restore the state after the last transaction committed at or before TIME "
                        "(RFC 3339: 2026-11-22T14:01:00Z or 2026-11-22T15:01:00+01:00)")
    s.add_argument("--generation", metavar="GEN", help="restore from this generation (16 hex digits)")
    s.add_argument("--id", metavar="ID", help="the id of the database wanted (default: the configured one; "
                                            "from a URL, any): a replica holding another is refused")
    s.add_argument("--dry-run", action="store_true", help="print the plan (snapshot, segments, bytes); write nothing")
    s.add_argument("--json", action="store_true", help="print the plan (--dry-run) or what was restored as JSON")
    s.add_argument("--follow", action="store_true",
                   help="after restoring, keep applying new segments to the output (a read replica); "
                        "runs until SIGTERM/SIGINT, resumes where it stopped")
    s.add_argument("--interval", metavar="DURATION", help="with --follow: how often to poll (default 1s)")
    s.add_argument("--cache-dir", metavar="DIR",
                   help="keep downloaded objects in DIR; later restores read them from there (verified again)")
    s.add_argument("--max-bandwidth", metavar="RATE", help="limit the download to RATE (5MB/s, 512KiB/s)")
    s.add_argument("--timeout", metavar="DURATION",
                   help="give up the whole restore after DURATION (30m, 2h; none: never), writing nothing "
                        "(default: the config's restore-timeout, else 1h)")
    s.set_defaults(func=run)
