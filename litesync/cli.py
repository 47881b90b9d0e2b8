"""The command line: parse, call the library, print. Exit codes: 0 ok, 1 runtime failure,
2 usage or configuration error."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator, Sequence, TypeVar

from . import __version__
from .errors import LitesyncError, RestoreError, UsageError
from .notify import notify

log = logging.getLogger("litesync")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_SHUTDOWN_TIMEOUT = 30.0

T = TypeVar("T")


class ArgumentError(UsageError):
    """A command line argparse rejects; ``prog`` is the command it belongs to (``litesync restore``)."""

    def __init__(self, message: str, prog: str) -> None:
        self.prog = prog
        super().__init__(message)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 on usage errors: keep that, one line
        raise ArgumentError(message, self.prog)


def _is_url(text: str) -> bool:
    return "://" in text


def _option(args: argparse.Namespace, dest: str, parse: Callable[[str], T]) -> T | None:
    """Return the option's value read by ``parse``, None when not given; a bad value is a usage error."""
    text = getattr(args, dest, None)
    if text is None:
        return None
    try:
        return parse(text)
    except (ValueError, UsageError) as e:
        raise UsageError(f"--{dest.replace('_', '-')}: {e}") from None


def _max_bandwidth(args: argparse.Namespace) -> int | None:
    from .config import parse_bandwidth

    return _option(args, "max_bandwidth", parse_bandwidth)


def _load(args: argparse.Namespace, db: str | None, urls: Sequence[str]):
    from .config import resolve_config, with_max_bandwidth

    cfg = resolve_config(db, urls, args.config)
    rate = _max_bandwidth(args)
    return with_max_bandwidth(cfg, rate) if rate else cfg


def _setup_logging(cfg_logging, verbose: bool) -> None:
    level = "debug" if verbose else (cfg_logging.level if cfg_logging else "info")
    stream = sys.stdout if cfg_logging and cfg_logging.stream == "stdout" else sys.stderr
    handler = logging.StreamHandler(stream)
    from .logs import JsonFormatter, TextFormatter

    json_lines = cfg_logging is not None and cfg_logging.format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "b2sdk", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # watchdog logs an ERROR for events that race its own shutdown.
    logging.getLogger("watchdog").setLevel(logging.CRITICAL)


def cmd_replicate(args: argparse.Namespace) -> int:
    from .agent import economize_sqlite_memory
    from .runner import Runner

    economize_sqlite_memory()  # before any connection of this process opens

    positional = list(args.args)
    db = positional.pop(0) if positional and not _is_url(positional[0]) else None
    if positional and db is None:
        raise UsageError(f"replicate: a replica URL needs a database path first: {positional[0]!r}")
    cfg = _load(args, db, positional)
    if args.id is not None:
        if db is None:
            raise UsageError("replicate: --id needs the database path (DB) it names")
        cfg = dataclasses.replace(cfg, dbs=(cfg.dbs[0].with_id(_db_id_arg(args.id)),))
    _setup_logging(cfg.logging, args.verbose)
    if args.restore_if_db_not_exists:
        from .restore import restore_missing

        restore_missing(cfg)
    # With --exec the application may create the database after we start; so may a new
    # machine whose replica held no backup yet.
    command = args.exec or cfg.exec
    runner = Runner(cfg, wait_for_db=bool(command) or (args.restore_if_db_not_exists and not args.once))
    sup = Supervisor(runner, next(t for t in (args.shutdown_timeout, cfg.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT)
                                  if t is not None), command)
    signal.signal(signal.SIGTERM, sup.on_signal)
    signal.signal(signal.SIGINT, sup.on_signal)
    if args.exit_on_stdin_close:
        threading.Thread(target=_after_stdin_closes, args=(lambda: sup.on_signal(signal.SIGTERM, None),),
                         name="stdin", daemon=True).start()
    for d in cfg.dbs:
        log.info("replicating %s to %s", d.path, ", ".join(r.name for r in d.replicas), extra={"db": d.path})
    for w in cfg.dirs:
        log.info("replicating the databases matching %r in %s%s to %s", w.pattern, w.path,
                 " and below" if w.recursive else "", ", ".join(r.name for r in w.template.replicas))
    try:
        runner.start()
        return sup.run(args)
    except BaseException:
        sup.abort()
        raise


class Supervisor:
    """What one ``litesync replicate`` run does around the runner: signals (a first one stops
    with a final sync, a second stops at once), the ``--exec`` child, readiness for systemd."""

    def __init__(self, runner, shutdown_timeout: float, command: str | None) -> None:  # noqa: ANN001
        self.runner = runner
        self.shutdown_timeout = shutdown_timeout
        self.command = command  # --exec's (or the config's exec:)
        self.stop = threading.Event()  # the first signal: shut down
        self.hurry = threading.Event()  # a signal while shutting down: stop waiting for the replicas
        self.shutting_down = False
        self.child: subprocess.Popen | None = None
        self.announced = False

    def on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.child is not None and self.child.poll() is None:
            log.info("%s: passed on to the application (pid %d)", name, self.child.pid)
            self.child.send_signal(signum)
        elif not (self.shutting_down or self.stop.is_set()):
            log.info("%s: shutting down: final sync, then up to %gs for the replicas to receive everything "
                     "(%s again stops at once)", name, self.shutdown_timeout, name)
            self.stop.set()
        elif not self.hurry.is_set():
            log.warning("%s again: stopping now, without waiting for the replicas", name)
            self.hurry.set()

    def run(self, args: argparse.Namespace) -> int:
        """Replicate until the --exec child exits, everything was shipped once (--once) or a
        signal; then shut down. Return the exit code."""
        exit_code = EXIT_OK
        if self.command:
            exit_code = self.run_child(self.command)
        elif args.once:
            self.runner.wait_started()
            # Give every replica its first contact before the final sync, so a misconfigured one
            # fails here rather than after the shutdown timeout.
            for d in self.runner.databases():
                for s in d.shippers:
                    while s.is_alive() and s.status == "pending" and s.fatal is None and not s.uploaded_objects:
                        time.sleep(0.01)
            _raise_startup_errors(self.runner)
        else:
            while not self.stop.wait(0.2):
                _raise_startup_errors(self.runner)
                self.announce_ready()
        if not args.once:
            notify("STOPPING=1")
            self.runner.wait_started(timeout=0)
        ok = self.shut_down()
        _raise_startup_errors(self.runner)
        return EXIT_FAILURE if not ok and exit_code == EXIT_OK else exit_code

    def abort(self) -> None:
        """Stop at once (a start failed): no final sync, no wait for the replicas."""
        if not self.shutting_down:
            self.shutting_down = True
            self.runner.stop(timeout=0)

    def announce_ready(self) -> None:
        if not self.announced and self.runner.ready():
            self.announced = True
            notify("READY=1")

    def run_child(self, command: str) -> int:
        """Start ``command``, replicate while it runs; return its exit code."""
        try:
            self.child = subprocess.Popen(shlex.split(command))
        except OSError as e:
            self.shut_down()  # what was replicated before goes out all the same
            raise LitesyncError(f"--exec: cannot start {command!r}: {e.strerror}") from e
        while self.child.poll() is None and not self.stop.is_set():
            time.sleep(0.05)
            self.announce_ready()
            if self.runner.fatal_errors():
                self.child.terminate()  # replication cannot work as configured: stop the app too
                self.child.wait()
                _raise_startup_errors(self.runner)  # the caller stops the runner (abort)
        code = self.child.wait()
        log.info("application exited with code %d; final sync", code)
        return code

    def shut_down(self) -> bool:
        """Final sync and shipping (cut short by a further signal); True when every replica has everything."""
        self.shutting_down = True
        ok = self.runner.stop(timeout=self.shutdown_timeout, hurry=self.hurry)
        if ok:
            log.info("stopped: every replica has everything committed")
        return ok


def _after_stdin_closes(then) -> None:  # noqa: ANN001
    """Read standard input to its end (the parent closed it, or died), then call ``then``."""
    try:
        while os.read(0, 1 << 16):
            pass
    except OSError:
        pass
    log.info("standard input closed; shutting down")
    then()


def _raise_startup_errors(runner) -> None:  # noqa: ANN001
    """Fail fast on a database that cannot be opened or a replica that is misconfigured."""
    errors = runner.fatal_errors()
    if errors:
        raise errors[0]


def _db_id_arg(text: str) -> str:
    from .segment import check_db_id

    try:
        return check_db_id(text)
    except ValueError as e:
        raise UsageError(f"--id: {e}") from None


def _replicas_of(args: argparse.Namespace, target: str):  # noqa: ANN202
    """Return (replica configs, database path or None, id of the database wanted or None)
    for a DB path, a replica directory or a replica URL; ``--id`` given overrides the
    configured id. A replica the command line names (or DB's default, ``DB.backups/``) is
    called by where it is, so every message says where litesync looked."""
    from .config import command_line_replica

    wanted = _db_id_arg(args.id) if getattr(args, "id", None) is not None else None
    if _is_url(target) or os.path.isdir(target):
        rate = _max_bandwidth(args)
        rc = command_line_replica(target)
        rc = dataclasses.replace(rc, name=target if _is_url(target) else rc.destination,
                                 max_bandwidth=rate or rc.max_bandwidth)
        return [_existing(rc, args, f"from {target!r}")], None, wanted
    cfg = _load(args, target, [])
    _setup_logging(cfg.logging, args.verbose)
    db = cfg.dbs[0]
    replicas = list(db.replicas)
    if cfg.source is None:  # no config file: DB's default replica
        replicas = [_existing(dataclasses.replace(rc, name=rc.destination), args,
                              f"the default replica of {db.path}; no config file names it") for rc in replicas]
    return replicas, db.path, wanted or db.id or None


def _existing(rc, args: argparse.Namespace, origin: str):  # noqa: ANN001, ANN202
    """Return ``rc``; a file replica whose directory does not exist is a usage error (a
    mistyped path), unless --if-replica-exists makes an absent replica a normal case."""
    if rc.type == "file" and not os.path.isdir(rc.path) and not getattr(args, "if_replica_exists", False):
        raise UsageError(f"replica directory does not exist: {rc.path} ({origin})")
    return rc


def _until_ms(args: argparse.Namespace) -> int | None:
    from .history import parse_time

    return _option(args, "timestamp", parse_time)


def _generation_arg(args: argparse.Namespace) -> int | None:
    from .layout import parse_generation

    return _option(args, "generation", parse_generation)


def cmd_restore(args: argparse.Namespace) -> int:
    from .config import priority_order
    from .fetch import ObjectCache
    from .progress import terminal_printer
    from .replica import open_replica
    from .restore import choose, restore_any

    replicas, db_path, db_id = _replicas_of(args, args.target)
    if db_path is None and not args.output and not args.dry_run:
        raise UsageError("restore: -o/--output is required when restoring from a URL")
    out = args.output or db_path
    until_ms = _until_ms(args)
    generation = _generation_arg(args)
    interval = _follow_interval(args)
    if not args.follow and args.if_db_not_exists and out and os.path.exists(out):
        log.info("database exists, nothing to do: %s", out)
        return EXIT_OK
    cache = ObjectCache(args.cache_dir) if args.cache_dir else None
    clients = [open_replica(rc) for rc in priority_order(replicas)]
    try:
        if args.if_replica_exists:
            from . import layout
            from .fetch import list_all

            listings = list_all(clients, layout.GENERATIONS + "/")
            if not any(isinstance(x, list) and x for x in listings):
                errors = [x for x in listings if isinstance(x, LitesyncError)]
                if errors:
                    raise errors[0]
                log.info("no replica holds a backup, nothing to do")
                return EXIT_OK
        if args.follow:
            return _follow(clients, out, interval, cache, args, db_id)
        if args.dry_run:
            c = choose(clients, generation=generation, until_ms=until_ms)
            return _print_plan(c.client.name, c.plan, until_ms, args.json)
        progress = None if args.json else terminal_printer()
        with _parent_dirs(out):
            try:
                result = restore_any(clients, out, force=args.force, check=_integrity_check(args),
                                     progress=progress, generation=generation, until_ms=until_ms, cache=cache,
                                     db_id=db_id)
            except LitesyncError as e:
                intact = getattr(e, "intact_generation", None)
                if intact is None:
                    raise
                from . import layout

                gen = layout.format_generation(intact)
                raise RestoreError(f"{e}; generation {gen} is intact, restore it with: litesync restore "
                                   f"--generation {gen} -o {out} {args.target}") from e
    finally:
        for client in clients:
            client.close()
    _print_result(result, cached=cache is not None, as_json=args.json)
    return EXIT_OK


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


def _print_result(result, *, cached: bool, as_json: bool) -> None:  # noqa: ANN001
    """Print what a restore did: one line (and one per replica passed over), or a JSON object."""
    from . import layout
    from .history import format_ms
    from .progress import format_rate, format_size, plural
    from .restore import named_reason

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


def _follow_interval(args: argparse.Namespace) -> float:
    """Validate the follow options; return the poll interval in seconds."""
    from .config import parse_duration

    if not args.follow:
        if args.interval is not None:
            raise UsageError("restore: --interval needs --follow")
        return 0.0
    for flag, given in (("--timestamp", args.timestamp), ("--generation", args.generation),
                        ("--dry-run", args.dry_run), ("--json", args.json),
                        ("--if-db-not-exists", args.if_db_not_exists)):
        if given:
            raise UsageError(f"restore: {flag} cannot be combined with --follow")
    try:
        interval = parse_duration(args.interval or "1s")
    except LitesyncError as e:
        raise UsageError(f"--interval: {e}") from None
    if interval <= 0:
        raise UsageError(f"--interval: must be more than zero: {args.interval!r}")
    return interval


def _follow(clients, out: str, interval: float, cache, args: argparse.Namespace,  # noqa: ANN001
            db_id: str | None) -> int:
    from .follow import Follower

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Follower(clients, out, interval=interval, stop=stop, cache=cache, force=args.force,
             check=_integrity_check(args), db_id=db_id).run()
    log.info("%s: follower stopped", os.path.abspath(out))
    return EXIT_OK


def _print_plan(replica: str, p, until_ms: int | None, as_json: bool) -> int:  # noqa: ANN001
    import json

    from . import history, layout

    last_ms = p.segments[-1][0].last_commit_ms if p.segments else p.snapshot.created_ms
    if until_ms is not None:
        last_ms = min(last_ms, until_ms)
    info = {
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
    print(f"snapshot    {p.snapshot.key}  {p.snapshot_size} bytes  created {info['snapshot']['created']}")
    if p.segments:
        first, last = p.segments[0][0], p.segments[-1][0]
        print(f"segments    {len(p.segments)} objects, seq {first.first_seq}..{last.last_seq}, "
              f"{sum(s for _, s in p.segments)} bytes, last commit {history.format_ms(last.last_commit_ms)}")
    else:
        print("segments    none")
    print(f"total       {p.objects} objects, {p.total_bytes} bytes")
    if not p.exact:
        print("note        the target falls inside a segment covering several shipments; if compaction "
              "merged it (its parts deleted), the restore stops before it")
    return EXIT_OK


def _listing(args: argparse.Namespace, what: str) -> int:
    import json

    from . import history, layout
    from .progress import format_size, plural
    from .replica import open_replica

    replicas, _db, _id = _replicas_of(args, args.target)
    generation = _generation_arg(args)
    client = open_replica(replicas[0])
    try:
        cat = history.catalog(client.list(layout.GENERATIONS + "/"))
    finally:
        client.close()
    gens = [g for g in cat.generations.values() if generation is None or g.generation == generation]
    rows: list[dict] = []
    if what == "generations":
        newest = cat.newest()
        for g in gens:
            rows.append({"generation": layout.format_generation(g.generation), "start": history.format_ms(g.start_ms),
                         "end": history.format_ms(g.end_ms), "snapshots": len(g.snapshots),
                         "segments": len(g.segments), "bytes": g.size,
                         "current": newest is not None and g.generation == newest.generation})
        cols = ["generation", "start", "end", "snapshots", "segments", "bytes"]
    elif what == "snapshots":
        for g in gens:
            for n, size in g.snapshots:
                rows.append({"generation": layout.format_generation(n.generation), "seq": n.seq,
                             "created": history.format_ms(n.created_ms), "bytes": size, "key": n.key})
        cols = ["generation", "seq", "created", "bytes"]
    else:
        for g in gens:
            for n, size in g.segments:
                rows.append({"generation": layout.format_generation(n.generation), "first_seq": n.first_seq,
                             "last_seq": n.last_seq, "last_commit": history.format_ms(n.last_commit_ms),
                             "kind": "merged" if n.last_seq != n.first_seq else "tx", "bytes": size, "key": n.key})
        cols = ["generation", "first_seq", "last_seq", "last_commit", "kind", "bytes"]
    total = sum(r["bytes"] for r in rows)
    if args.json:
        print(json.dumps({"replica": client.name, what: rows, "count": len(rows), "bytes": total}, indent=2))
        return EXIT_OK
    table = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    print(f"total: {plural(len(rows), what[:-1])}, {format_size(total)} ({client.name})")
    return EXIT_OK


def cmd_generations(args: argparse.Namespace) -> int:
    return _listing(args, "generations")


def cmd_snapshots(args: argparse.Namespace) -> int:
    return _listing(args, "snapshots")


def cmd_segments(args: argparse.Namespace) -> int:
    return _listing(args, "segments")


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from .status import healthy, read_status

    paths = [os.path.abspath(p) for p in args.dbs] if args.dbs else [d.path for d in _load(args, None, []).dbs]
    statuses = [read_status(p) for p in paths]
    if args.json:
        print(json.dumps({"dbs": statuses}, indent=2))
    else:
        now = time.time()
        for st in statuses:
            print(_format_status(st, now))
    return EXIT_OK if all(healthy(st) for st in statuses) else EXIT_FAILURE


def _ago(t: float | None, now: float) -> str:
    if not t:
        return "never"
    from .progress import format_duration

    return f"{format_duration(max(0.0, now - t))} ago"


def _format_status(st: dict, now: float) -> str:
    """Return the text `litesync status` prints for one database."""
    from .progress import format_duration, format_size, plural

    lines = []
    if not st["running"]:
        if st["published"]:
            head = (f"no agent running (last status {_ago(st.get('updated_at'), now)}, from pid {st.get('pid')}, "
                    f"state {st.get('state')}; stale)")
        else:
            head = "no agent running (no status published)"
    elif not st["published"]:
        head = "agent running, no status published yet" + (f" ({st['error']})" if st.get("error") else "")
    else:
        head = f"{st.get('state')}, agent pid {st.get('pid')} up {format_duration(now - st['started_at'])}"
        if st["stale"]:
            head += f"; status not updated for {format_duration(st['age_seconds'])} (stale)"
    lines.append(f"{st['db']}: {head}")
    if st["published"]:
        lines.append(f"  generation {st.get('generation') or '-'}, "
                     f"last snapshot {_ago(st.get('last_snapshot_at'), now)}, "
                     f"spool {format_size(st.get('spool_bytes'))} ({plural(st.get('spool_objects', 0), 'object')})")
        if st.get("error"):
            lines.append(f"  error: {st['error']}")
    for r in st.get("replicas", []):
        lines.append(f"  {r['name']:<10} {r['state']:<9}  lag {r['lag_seconds']:.1f}s, {format_size(r['lag_bytes'])}; "
                     f"shipped {plural(r['uploaded_objects'], 'object')}, {format_size(r['uploaded_bytes'])}; "
                     f"generation {r.get('generation') or '-'}  -> {r.get('destination')}")
        if r.get("last_error"):
            lines.append(f"  {'':<10} last error: {r['last_error']}")
        for unsound in r.get("unsound_objects") or ():
            lines.append(f"  {'':<10} unsound object, left alone: {unsound}")
        last = (r.get("validation") or {}).get("last")
        if last:
            verdict = "ok" if last["ok"] else f"FAILED: {last['message']}"
            lines.append(f"  {'':<10} validation {_ago(last['at'], now)}: {verdict}")
    return "\n".join(lines)


def cmd_verify(args: argparse.Namespace) -> int:
    from .agent import state_dir_for
    from .progress import terminal_printer
    from .replica import open_replica
    from .status import wait_replica
    from .verify import verify_replica

    positional = list(args.args)
    db = positional.pop(0) if not _is_url(positional[0]) else None
    if db is None:
        from .config import parse_replica_url

        replicas, db_path, db_id = [parse_replica_url(u) for u in positional], None, None
    else:
        cfg = _load(args, db, positional)
        _setup_logging(cfg.logging, args.verbose)
        replicas, db_path, db_id = list(cfg.dbs[0].replicas), cfg.dbs[0].path, cfg.dbs[0].id
    if args.replica:
        replicas = [rc for rc in replicas if rc.name == args.replica]
        if not replicas:
            raise UsageError(f"--replica: no replica named {args.replica!r}")
    work_dir = state_dir_for(db_path) if db_path and os.path.isdir(state_dir_for(db_path)) else None
    failed = 0
    for rc in replicas:
        def wait(since: float, rc=rc) -> bool:  # noqa: ANN001
            assert db_path is not None
            return wait_replica(db_path, rc.name, since, args.timeout, destination=rc.destination)

        try:
            client = open_replica(rc)
            try:
                v = verify_replica(client, db_path, work_dir=work_dir, wait=wait if db_path else None,
                                   progress=terminal_printer(), db_id=db_id)
            finally:
                client.close()
            print(f"ok      {rc.name}: {v.describe()}")
        except UsageError:
            raise
        except LitesyncError as e:
            failed += 1
            print(f"FAILED  {rc.name}: {e}")
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from .replica import open_replica
    from .replica.check import check_replica

    positional = list(args.args)
    db = positional.pop(0) if positional and not _is_url(positional[0]) else None
    if positional:
        from .config import command_line_replica

        replicas = [command_line_replica(u) for u in positional]
    else:
        replicas = _load(args, db, []).replicas
    failed = 0
    for rc in replicas:
        try:
            client = open_replica(rc)
            try:
                seconds = check_replica(client, rc.db_id)
            finally:
                client.close()
            print(f"ok      {rc.name}: list, write, read back, delete ({seconds * 1000:.0f} ms)")
        except LitesyncError as e:
            failed += 1
            print(f"FAILED  {rc.name}: {e}")
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_databases(args: argparse.Namespace) -> int:
    """List the configured databases (and directories) with their replicas."""
    cfg = _load(args, None, [])
    rows = [("path", "replicas")]
    rows += [(d.path, ", ".join(f"{r.name} ({r.destination})" for r in d.replicas)) for d in cfg.dbs]
    rows += [(os.path.join(w.path, ("**/" if w.recursive else "") + w.pattern),
              ", ".join(f"{r.name} ({r.destination}/...)" for r in w.template.replicas)) for w in cfg.dirs]
    width = max(len(path) for path, _ in rows)
    for path, replicas in rows:
        print(f"{path.ljust(width)}  {replicas}")
    return EXIT_OK


def cmd_keygen(_args: argparse.Namespace) -> int:
    from .replica.crypt import generate_key

    print(generate_key())
    return EXIT_OK


def _version_text() -> str:
    import apsw

    return f"litesync {__version__} (SQLite {apsw.sqlite_lib_version()} via apsw {apsw.apsw_version()})"


def cmd_version(_args: argparse.Namespace) -> int:
    print(_version_text())
    return EXIT_OK


def _global_options(p: argparse.ArgumentParser, config: bool = True) -> None:
    """Accept the global options after the command too (given there, they win)."""
    if config:
        p.add_argument("--config", default=argparse.SUPPRESS, help="config file (also accepted before the command)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging (also accepted before the command)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="litesync", description="Streaming replication for SQLite databases in WAL mode.")
    p.add_argument("--config", help="config file (default: $LITESYNC_CONFIG, ./litesync.yml, /etc/litesync.yml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=_version_text())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("replicate", help="replicate databases continuously",
                       description="Replicate DB to the replica URLs, or every database in the config file.")
    r.add_argument("args", nargs="*", metavar="DB [URL ...]",
                   help="database path and replica URLs (file:///dir, s3://bucket/path, b2://bucket/path); "
                        "without URLs: the config's replicas, or DB.backups/ next to the database")
    _global_options(r)
    r.add_argument("--id", metavar="ID", help="the database's id, written into every object (default: its "
                                            "configured id, else its path)")
    r.add_argument("--exec", metavar="CMD", help="start CMD, replicate while it runs, exit with its code")
    r.add_argument("--once", action="store_true", help="sync everything once and exit")
    r.add_argument("--shutdown-timeout", type=float, metavar="SECONDS",
                   help="how long to wait for replicas to receive everything on exit (default: the config's "
                        "shutdown-timeout, else 30)")
    r.add_argument("--restore-if-db-not-exists", action="store_true",
                   help="first restore each database that does not exist from its replica (if it holds a backup)")
    r.add_argument("--exit-on-stdin-close", action="store_true",
                   help="shut down (final sync) when standard input is closed, e.g. when the parent dies")
    r.add_argument("--max-bandwidth", metavar="RATE",
                   help="limit each replica's uploads to RATE (5MB/s, 512KiB/s), instead of its max-bandwidth")
    r.set_defaults(func=cmd_replicate)

    s = sub.add_parser("restore", help="rebuild a database from a replica",
                       description="Restore the latest state of DB (from its configured replica) or of a replica URL.")
    s.add_argument("target", metavar="DB|URL")
    _global_options(s)
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
    s.set_defaults(func=cmd_restore)

    for name, func, text in (("generations", cmd_generations, "list generations: time range, objects, bytes"),
                             ("snapshots", cmd_snapshots, "list snapshots: sequence, time, bytes"),
                             ("segments", cmd_segments, "list segments: sequence range, last commit, bytes")):
        g = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]} (of DB's first "
                                                        f"replica, or of a replica URL), with totals.")
        g.add_argument("target", metavar="DB|URL")
        _global_options(g)
        g.add_argument("--generation", metavar="GEN", help="only this generation")
        g.add_argument("--json", action="store_true", help="print JSON")
        g.set_defaults(func=func)

    c = sub.add_parser("check", help="test each replica: credentials, bucket, write/read/delete",
                       description="For each replica (of DB, of the config, or the URLs given): list, write a "
                                   "probe object, read it back, delete it.")
    _global_options(c)
    c.add_argument("args", nargs="*", metavar="DB|URL", help="a configured database, or replica URLs")
    c.set_defaults(func=cmd_check)

    k = sub.add_parser("keygen", help="print a new encryption key",
                       description="Print a new random encryption key (64 hex digits) for encryption-key.")
    k.set_defaults(func=cmd_keygen)

    st = sub.add_parser("status", help="what the running agent reports: state, lag, generation, spool",
                        description="For each database (those given, or every configured one) and each of its "
                                    "replicas: state, lag, generation, last snapshot, spool size, as the "
                                    "running agent publishes them. Exit 0 when an agent runs for every "
                                    "database and no replica failed, else 1.")
    st.add_argument("dbs", nargs="*", metavar="DB", help="database paths (default: every configured database)")
    _global_options(st)
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=cmd_status)

    vf = sub.add_parser("verify", help="restore a replica to a temporary file and compare it with the database",
                        description="Restore each replica of DB (or the replica URLs given) to a temporary file, "
                                    "run integrity_check, and compare its checksum with the live database at the "
                                    "same position. Exit 0 only when every replica matches.")
    vf.add_argument("args", nargs="+", metavar="DB|URL", help="a database (its replicas, or the URLs that follow "
                                                             "it), or replica URLs alone (no live comparison)")
    _global_options(vf)
    vf.add_argument("--replica", metavar="NAME", help="verify only this replica of DB")
    vf.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="how long to wait for a running agent to ship the live state (default 60)")
    vf.set_defaults(func=cmd_verify)

    db = sub.add_parser("databases", help="list the configured databases and their replicas",
                        description="List the databases of the config file (and its dir: entries) with their "
                                    "replicas, as Litestream's `databases` does.")
    _global_options(db)
    db.set_defaults(func=cmd_databases)

    v = sub.add_parser("version", help="print the version")
    for name in ("keygen", "version"):
        _global_options(sub.choices[name], config=False)
    v.set_defaults(func=cmd_version)
    return p


def _from_litestream(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Return ``argv`` with Litestream's flags read as litesync's (see litestream.py): Go's
    single-dash long flags (``-timestamp T``) as ``--timestamp T``, each with a warning; a
    flag without effect dropped with a warning, a refused one a usage error."""
    from . import litestream

    longs = {opt for p in [parser, *_subparsers(parser).values()] for a in p._actions
             for opt in a.option_strings if opt.startswith("--")}
    argv, rewritten = litestream.go_style_flags(argv, longs)
    for flag in rewritten:
        print(f"litesync: warning: {flag} is Litestream's spelling; litesync's is -{flag}", file=sys.stderr)
    out: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        name, has_value = arg.lstrip("-").partition("=")[0], "=" in arg
        rule = litestream.FLAGS.get(name) if arg.startswith("-") and f"--{name}" not in longs else None
        if isinstance(rule, litestream.Refused):
            command = next((a for a in argv if a in _subparsers(parser)), None)
            raise ArgumentError(f"Litestream's {arg.partition('=')[0]} is not supported: {rule.instead}",
                                f"litesync {command}" if command else "litesync")
        if isinstance(rule, litestream.Ignored):
            print(f"litesync: warning: {arg.partition('=')[0]} has no effect: {rule.why}", file=sys.stderr)
            skip_value = not has_value
            continue
        out.append(arg)
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(_from_litestream(parser, list(sys.argv[1:] if argv is None else argv)))
        if extra:  # argparse names the top-level command for these; name the subcommand
            prog = f"litesync {args.command}" if getattr(args, "command", None) else "litesync"
            raise ArgumentError(f"unrecognized arguments: {' '.join(extra)}", prog)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if not logging.getLogger().handlers:
            _setup_logging(None, args.verbose)
        return args.func(args)
    except ArgumentError as e:
        print(f"{e.prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except LitesyncError as e:
        print(f"litesync: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # The reader went away (| head): the rest of the output has nowhere to go. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
