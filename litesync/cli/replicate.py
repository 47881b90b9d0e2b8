"""``litesync replicate``: replicate databases until stopped; its supervision of signals, the
--exec child and readiness."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Callable

from ..errors import LitesyncError, UsageError
from ..notify import notify
from .common import (DEFAULT_SHUTDOWN_TIMEOUT, EXIT_FAILURE, EXIT_OK, Subparsers, db_id_arg, global_options, is_url,
                     load, setup_logging)

if TYPE_CHECKING:
    from ..runner import Runner

log = logging.getLogger("litesync")


def run(args: argparse.Namespace) -> int:
    from ..agent import economize_sqlite_memory
    from ..runner import Runner, tune_malloc

    economize_sqlite_memory()  # before any connection of this process opens
    tune_malloc()  # before its threads start

    positional = list(args.args)
    db = positional.pop(0) if positional and not is_url(positional[0]) else None
    if positional and db is None:
        raise UsageError(f"replicate: a replica URL needs a database path first: {positional[0]!r}")
    cfg = load(args, db, positional)
    if args.id is not None:
        if db is None:
            raise UsageError("replicate: --id needs the database path (DB) it names")
        cfg = dataclasses.replace(cfg, dbs=(cfg.dbs[0].with_id(db_id_arg(args.id)),))
    setup_logging(cfg.logging, args.verbose)
    if args.restore_if_db_not_exists:
        from ..restore import restore_missing

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
        return sup.run(once=args.once)
    except BaseException:
        sup.abort()
        raise


class Supervisor:
    """What one ``litesync replicate`` run does around the runner: signals (a first one stops
    with a final sync, a second stops at once), the ``--exec`` child, readiness for systemd."""

    def __init__(self, runner: Runner, shutdown_timeout: float, command: str | None) -> None:
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

    def run(self, *, once: bool) -> int:
        """Replicate until the --exec child exits, everything was shipped once (--once) or a
        signal; then shut down. Return the exit code."""
        exit_code = EXIT_OK
        if self.command:
            exit_code = self.run_child(self.command)
        elif once:
            self.wait_started_once()
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
        if not once:
            notify("STOPPING=1")
            self.runner.wait_started(timeout=0)
        ok = self.shut_down()
        _raise_startup_errors(self.runner)
        return EXIT_FAILURE if not ok and exit_code == EXIT_OK else exit_code

    def wait_started_once(self) -> None:
        """Wait until every database started (--once); one that cannot for lack of room
        fails the run, rather than wait for space as a lasting agent does."""
        for d in self.runner.databases():
            while not d.started.wait(0.05):
                if d.room_error is not None:
                    raise LitesyncError(f"{d.room_error} (--once does not wait for space)")
        self.runner.wait_started(timeout=0)  # raises a database's error

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


def _after_stdin_closes(then: Callable[[], None]) -> None:
    """Read standard input to its end (the parent closed it, or died), then call ``then``."""
    try:
        while os.read(0, 1 << 16):
            pass
    except OSError:
        pass
    log.info("standard input closed; shutting down")
    then()


def _raise_startup_errors(runner: Runner) -> None:
    """Fail fast on a database that cannot be opened or a replica that is misconfigured."""
    errors = runner.fatal_errors()
    if errors:
        raise errors[0]



def add_parser(sub: Subparsers) -> None:
    """Add the command's parser to ``sub``."""
    r = sub.add_parser("replicate", help="replicate databases continuously",
                       description="Replicate DB to the replica URLs, or every database in the config file.")
    r.add_argument("args", nargs="*", metavar="DB [URL ...]",
                   help="database path and replica URLs (file:///dir, s3://bucket/path, b2://bucket/path); "
                        "without URLs: the config's replicas, or DB.backups/ next to the database")
    global_options(r)
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
    r.set_defaults(func=run)
