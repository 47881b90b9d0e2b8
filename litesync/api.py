"""The Python API: replicate and restore from inside an application.

litesync reads databases through apsw, which carries its own SQLite. Two SQLite libraries
in one process must not open the same database (each keeps its own locks, and one can
delete the WAL under the other), and the application likely uses stdlib ``sqlite3``. So
the work happens in child processes: ``Replicator`` runs ``litesync replicate`` and
``restore_db`` runs ``litesync restore``. A restore only opens its own temp file, but a child
also keeps a long restore's memory, a crash and apsw itself out of the application. This
module loads neither apsw nor the agent; arguments are checked here, before any child
starts, so a configuration error is raised with its file, field and line.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from types import TracebackType
from datetime import datetime
from typing import IO, Mapping, Sequence

from .config import Config, parse_replica_url, resolve_config
from .dirwatch import find_databases
from .errors import LitesyncError, UsageError
from .notify import ENV as NOTIFY_ENV
from .notify import Listener

__all__ = ["Replicator", "restore_db", "read_db_status"]

log = logging.getLogger(__name__)

# The CLI's final line: "litesync: error: ...", or "litesync replicate: error: ..." for a usage error.
_ERROR_LINE = re.compile(r"^litesync(?: [a-z]+)?: error: (.*)$")
_TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$")
_KEPT_LINES = 200


def read_db_status(db_path: str) -> dict:
    """Return what the agent replicating ``db_path`` publishes, and whether one runs
    (``litesync.status.read_status``: ``running``, ``published``, ``stale``, ``replicas``, ...)."""
    from .status import read_status

    return read_status(db_path)


def _parse_line(line: str) -> tuple[int, str]:
    """Return the level and message of a line the child wrote (text or JSON log, or its final error)."""
    m = _ERROR_LINE.match(line)
    if m:
        return logging.ERROR, m[1]
    m = _TEXT_LINE.match(line)
    if m:
        return int(logging.getLevelName(m[1])), m[2]
    if line.startswith("{"):
        try:
            record = json.loads(line)
            return int(logging.getLevelName(record["level"].upper())), record["msg"]
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    return logging.INFO, line


def _last_error(lines: Sequence[str]) -> str | None:
    """Return the child's final error line, else its last error log line, else its last line."""
    for line in reversed(lines):
        m = _ERROR_LINE.match(line)
        if m:
            return m[1]
    for line in reversed(lines):
        level, message = _parse_line(line)
        if level >= logging.ERROR:
            return message
    return lines[-1] if lines else None


def _exit_error(code: int, lines: Sequence[str]) -> LitesyncError:
    """Return the exception for a child's exit code: 2 a usage or configuration error, else a failure."""
    last = _last_error(lines)
    if code < 0:
        message = f"litesync killed by signal {-code}" + (f" (last output: {last})" if last else "")
    else:
        message = last or f"litesync exited with code {code}"
    return UsageError(message) if code == 2 else LitesyncError(message)


class Replicator:
    """Continuous replication of databases by ``litesync replicate`` in a child process.

    ``Replicator("app.db", ["s3://bucket/app"])`` replicates one database to the replica
    URLs; ``Replicator("app.db")`` to its configured replicas (or ``app.db.backups/``);
    ``Replicator(config="litesync.yml")`` every database of a config file. The child stops
    with a final sync on ``stop()``, and by itself when this process exits or dies.
    """

    def __init__(self, db: str | None = None, replicas: Sequence[str] = (), *, config: str | None = None,
                 restore_if_missing: bool = False, shutdown_timeout: float = 30.0,
                 env: Mapping[str, str] | None = None, python: str = sys.executable) -> None:
        if isinstance(replicas, str):
            raise UsageError(f"replicas: expected a list of URLs, got one string: {replicas!r}")
        if replicas and config is not None:
            raise UsageError("give replica URLs or a config file, not both")
        self.env = dict(os.environ if env is None else env)
        self.shutdown_timeout = shutdown_timeout
        self.config: Config = resolve_config(db, list(replicas), config, environ=self.env)
        args = ["replicate", "--exit-on-stdin-close", "--shutdown-timeout", str(shutdown_timeout)]
        if self.config.source is not None:
            args[1:1] = ["--config", os.path.abspath(self.config.source)]
        if restore_if_missing:
            args.append("--restore-if-db-not-exists")
        if db is not None:
            args.append(os.path.abspath(db))
        self.command = [python, "-m", "litesync", *args, *replicas]
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=_KEPT_LINES)
        self._stopped = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60.0) -> "Replicator":
        """Start the child; return once it sends READY=1 (every database replicates or waits to be
        created, every replica checked). Raise the child's one-line error if it exits, or after ``timeout``."""
        if self.running:
            raise UsageError(f"replicator already running (pid {self.pid})")
        listener = Listener()
        try:
            self._lines.clear()
            self._stopped = False
            self._proc = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env={**self.env, NOTIFY_ENV: listener.path}, start_new_session=True)
            self._reader = threading.Thread(target=self._read_output, args=(self._proc.stdout,),
                                            name=f"litesync {self._proc.pid} output", daemon=True)
            self._reader.start()
            deadline = time.monotonic() + timeout
            while "READY=1" not in listener.receive(0.1):
                if self._proc.poll() is not None:
                    raise self._exit_error()
                if time.monotonic() > deadline:
                    self._end(self.shutdown_timeout + 30)
                    raise LitesyncError(f"replication not ready within {timeout:g}s: "
                                        f"{_last_error(list(self._lines)) or 'no error reported'}")
        finally:
            listener.close()
        log.info("litesync replicate running (pid %d)", self._proc.pid)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop with a final sync (SIGTERM). Raise ``LitesyncError`` when the child exits non-zero (1: a
        replica did not receive everything within the shutdown timeout) or does not exit within
        ``timeout`` (default: the shutdown timeout plus 30 s; it is then killed)."""
        if self._proc is None or self._stopped:
            return
        self._stopped = True
        wait = self.shutdown_timeout + 30 if timeout is None else timeout
        if not self._end(wait):
            raise LitesyncError(f"litesync replicate (pid {self._proc.pid}) did not stop within {wait:g}s; killed")
        if self._proc.returncode != 0:
            raise self._exit_error()

    def status(self) -> dict:
        """Return whether the child runs, its pid and exit code, and each database's published status."""
        running = self.running
        return {
            "running": running,
            "pid": self.pid,
            "exit_code": None if self._proc is None or running else self._proc.returncode,
            "databases": {path: read_db_status(path) for path in self._databases()},
        }

    def _databases(self) -> list[str]:
        paths = [d.path for d in self.config.dbs]
        for d in self.config.dirs:
            paths += find_databases(d)
        return paths

    def _end(self, timeout: float) -> bool:
        """SIGTERM the child and wait for it; kill it after ``timeout``. Return False if it had to be killed."""
        p = self._proc
        assert p is not None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return False
        finally:
            if p.stdin is not None:
                p.stdin.close()
            if self._reader is not None:
                self._reader.join(5)

    def _exit_error(self) -> LitesyncError:
        if self._reader is not None:
            self._reader.join(5)  # the child's last lines
        assert self._proc is not None and self._proc.returncode is not None
        return _exit_error(self._proc.returncode, list(self._lines))

    def _read_output(self, stream: IO[bytes]) -> None:
        """Forward the child's output to this module's logger, keeping the last lines for errors."""
        with stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip()
                if line:
                    self._lines.append(line)
                    log.log(*_parse_line(line))

    def __enter__(self) -> "Replicator":
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.stop()
            return
        try:
            self.stop()
        except LitesyncError as e:  # do not hide the exception that is propagating
            log.error("stopping litesync replicate: %s", e)


def restore_db(source: str, output: str | None = None, *, config: str | None = None,
            timestamp: str | datetime | None = None, generation: str | None = None, db_id: str | None = None,
            force: bool = False, if_db_not_exists: bool = False, if_replica_exists: bool = False,
            integrity_check: bool = True,
            timeout: float | None = None, env: Mapping[str, str] | None = None,
            python: str = sys.executable) -> str | None:
    """Rebuild a database with ``litesync restore`` in a child process; return the path written,
    None when there was nothing to do (``if_db_not_exists``, ``if_replica_exists``).

    ``source`` is a replica URL (then ``output`` is required) or a configured database path
    (``output`` defaults to it). ``timestamp`` is RFC 3339 text or an aware datetime.
    ``db_id`` is the id of the database wanted (``--id``): a replica holding another is refused.
    ``timeout`` (seconds) is the restore's total deadline (``--timeout``; default: the
    config's ``restore-timeout``, else an hour): past it the restore writes nothing and
    raises ``LitesyncError`` naming what it waited for.
    """
    environ = dict(os.environ if env is None else env)
    args = ["restore"]
    if "://" in source:
        parse_replica_url(source)
        if output is None:
            raise UsageError(f"restore: an output path is required when restoring from a URL: {source!r}")
    else:
        cfg = resolve_config(source, [], config, environ=environ)
        if cfg.source is not None:
            args += ["--config", os.path.abspath(cfg.source)]
        source = os.path.abspath(source)
    out = os.path.abspath(output or source)
    if if_db_not_exists and os.path.exists(out):
        return None
    args += [source, "-o", out]
    if timestamp is not None:
        args += ["--timestamp", timestamp.isoformat() if isinstance(timestamp, datetime) else timestamp]
    if generation is not None:
        args += ["--generation", generation]
    if db_id is not None:
        args += ["--id", db_id]
    for flag, given in (("--force", force), ("--if-db-not-exists", if_db_not_exists),
                        ("--if-replica-exists", if_replica_exists), ("--no-integrity-check", not integrity_check)):
        if given:
            args.append(flag)
    if timeout is not None:
        args += ["--timeout", f"{timeout}s"]  # the child stops itself, writing nothing
    r = subprocess.run([python, "-m", "litesync", *args], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, errors="replace", env=environ, timeout=None if timeout is None else timeout + 30)
    lines = [line for line in (r.stderr + r.stdout).splitlines() if line.strip()]
    for line in lines:
        log.log(*_parse_line(line))
    if r.returncode != 0:
        raise _exit_error(r.returncode, lines)
    return out if os.path.exists(out) else None
