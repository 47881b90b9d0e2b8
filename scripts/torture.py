#!/usr/bin/env python3
"""Seeded randomized torture runs: writers, agent, checkpointers and clocks misbehave; every restore is checked.

    python scripts/torture.py --runs 5 --seed 1            # five runs of 10-60 s each
    python scripts/torture.py --runs 1 --seed 7 --keep     # rerun one run exactly, keep its directory
    python scripts/torture.py --long --seed 3              # a database that grows past 1 GiB

Each run draws from its seed: page size, auto_vacuum, a file or S3 (moto) replica, the
agent on the command line or with a config file (compaction, retention, short snapshot
interval), a sequence of writer processes (tests/torture_app.py: profile, synchronous,
wal_autocheckpoint, cache_size, and a fault: SIGKILL at a random time, or killed by
strace at a random WAL write or sync), and events at random times: the agent killed -9
and restarted (with a libfaketime clock offset: a step forwards or backwards), the agent
stopped and continued, a checkpoint of every mode from another process, a restore, a
network fault between the agent and S3 for 1-8 s, the database file replaced between two
writers.

The oracle: the writers' history log says which attempt of each transaction committed
(acknowledged, or observed by the next writer); a restore is valid iff the (k, attempt)
in its meta row committed, its logical content equals the replay of the committed
transactions 1..k and integrity_check is ok. A mid-run restore may fail cleanly (exit
code != 0 and no output). At the end, with the agent running unharmed, the replica must
reach the last commit within the liveness deadline; stopped with everything shipped, the
agent's state directory must hold no more than spool-max-size plus two copies of the
largest database the run had (a bound only a leak can pass; the figure is reported).

What the world can do that a replication agent's model may not expect, and whether a run
draws it:
- SQLite: a writer killed after writing a commit's frames, before the wal-index counts
  them (strace at a WAL sync or write: drawn); wal-index recovery turning such frames into
  a commit when the next process opens the database first (drawn, with agent kills);
  checkpoints of every mode from another process (drawn), one killed between restarting
  the wal-index and truncating the WAL (drawn); the app's autocheckpoint on and off
  (drawn); a transaction spilling its cache, then shrinking the file with auto_vacuum
  (drawn); VACUUM, auto_vacuum changes, schema changes, page sizes 512..65536 (drawn);
  a database past 1 GiB, its lock-byte page (--long); a writer killed between the two
  wal-index header copies (not drawn: a memory write, out of strace's reach);
  locking_mode=EXCLUSIVE (not drawn: the agent cannot read such a database at all).
- The database file: replaced under the running agent as the README says to (the
  writers stopped, a copy of the committed state made with the backup API, the old -wal
  and -shm removed): renamed over the database, or the database deleted and the copy put
  at its path up to 1.5 s later, or (named through a symbolic link) the link pointed at
  the copy (drawn); rewritten in place, or replaced with its -wal left beside it (not
  drawn: the README says not to, and the agent refuses the second).
- The kernel: SIGKILL of the app and of the agent at any moment, SIGSTOP/SIGCONT of the
  agent (drawn); the agent reading the live database in its own process while it
  replicates (validation-interval: drawn); the disk of the agent's state directory (its
  spool and positions) full for a few seconds, ENOSPC on any write there (a real tmpfs
  filled with a ballast file: drawn where this process may mount one, i.e. as root); a
  machine crash losing the page cache (not drawn here: see the faults issue).
- The clock: the agent restarted with its clock an hour or a day ahead or behind
  (libfaketime: drawn); a host rolled back with its state (tests/test_correctness.py).
- The network and the store: S3 on loopback (drawn); between the agent and S3, the
  fault proxy of tests/faultproxy.py switched for 1-8 s to blackhole, refuse, a reset
  mid-request, a response cut after N bytes or with probability p, latency or a
  bandwidth cap, then back to pass (drawn in S3 runs; mid-run restores go through the
  proxy too, the final ones and the liveness check directly, after the network healed;
  the liveness deadline is then at least NET_SETTLE_SECONDS after the heal); the store
  itself failing, lying or losing objects (not drawn here: see the faults issue).

A failing run prints its seed and the command that reruns it, and keeps its directory.
The agent and restores run `python -m litesync` from this environment: to torture another
checkout, put its directory first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import apsw

from litesync.config import DEFAULT_SPOOL_MAX_SIZE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import torture_app  # noqa: E402 - the writer's history, shared with the checker
from faultproxy import FaultProxy  # noqa: E402
from smalldisk import MountRefused, SmallDisk  # noqa: E402

APP = os.path.join(ROOT, "tests", "torture_app.py")
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/faketime/libfaketimeMT.so.1", "/usr/local/lib/faketime/libfaketimeMT.so.1")
PAGE_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
CHECKPOINT_MODES = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")
CLOCK_OFFSETS = (0, 0, 90, -90, 3600, -3600, 86400, -86400)
LIVENESS_SECONDS = 15.0
# After the network heals, a correct agent may still wait out a request sent into the
# outage (litesync.replica.base.LARGE_READ_TIMEOUT, 30 s) and its shipper's backoff (at most
# 30 s) before it retries: the liveness deadline is never earlier than this after the heal.
NET_SETTLE_SECONDS = 30.0 + 30.0 + LIVENESS_SECONDS
NET_FAULT_KINDS = ("blackhole", "refuse", "reset_request", "reset_response", "latency", "bandwidth")
REPLACE_VARIANTS = ("mv", "delete")  # and "link" when the agent names the database through a link
RESTORE_TIMEOUT = 120.0
LONG_BYTES = (1 << 30) + (64 << 20)
MAX_DB_BYTES = 48 << 20   # past this, writers delete rather than add (except the --long writer)

CHECKPOINT_CODE = """
import sys, apsw
conn = apsw.Connection(sys.argv[1])
conn.setbusytimeout(int(sys.argv[3]))
try:
    print(conn.execute(f"PRAGMA wal_checkpoint({sys.argv[2]})").fetchall())
except apsw.BusyError:
    print("busy")
"""


@dataclass(frozen=True)
class Tools:
    """The fault injectors this machine has."""

    strace: str | None
    faketime: str | None
    mount: bool = False  # may mount a tmpfs (a small disk to fill)

    @classmethod
    def find(cls) -> Tools:
        return cls(shutil.which("strace"), next((p for p in FAKETIME_LIBS if os.path.exists(p)), None),
                   can_mount())


def can_mount() -> bool:
    """Whether this process may mount a tmpfs: tried once, on a directory of its own."""
    probe = tempfile.mkdtemp(prefix="torture-mount-")
    try:
        SmallDisk(probe, "1m").unmount()
        return True
    except (MountRefused, OSError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


# --- the plan: everything a run does, drawn from its seed -------------------------------

@dataclass(frozen=True)
class AppSpec:
    """One writer process and its fault."""

    profile: str
    synchronous: str
    autocheckpoint: int
    cache_size: int
    life: float           # seconds of writing
    max_pause: float
    fault: str            # none, kill, strace-write, strace-sync
    fault_at: float       # seconds after start (kill) or the syscall count (strace)
    grow_to: int = 0      # the --long writer: stop once the database is this big
    max_tx: int = 1_000_000


# The writer that creates the database, and the one that makes the last commits: no faults.
FIRST_APP = AppSpec("small", "NORMAL", 1000, -2000, 1e9, 0.0, "none", 0.0, max_tx=5)
FINAL_APP = AppSpec("small", "NORMAL", 1000, -2000, 1e9, 0.01, "none", 0.0, max_tx=3)


@dataclass(frozen=True)
class Event:
    at: float             # seconds after the run starts
    action: str           # agent-kill, agent-stop, checkpoint, restore, disk-full, net-fault, replace
    param: object = None  # restart delay and clock offset / stop length / checkpoint mode / seconds full /
    #                       (proxy mode, its parameters as items, seconds) / how the file is replaced


@dataclass(frozen=True)
class Plan:
    seed: int
    duration: float
    page_size: int
    auto_vacuum: str
    replica: str          # file or s3
    config: dict | None   # litesync.yml settings, or None for `replicate DB URL`
    clock: bool           # agent restarts draw a clock offset
    first_offset: int
    events: tuple[Event, ...]
    long: bool
    via_link: bool = False  # the agent names the database through a symbolic link
    park: bool = False  # max-open-databases: 1 and a second database nudged: the first parks when idle
    small_disk: bool = False  # the agent's state directory is a small disk; "disk-full" events fill it
    net_faults: bool = False  # S3 through tests/faultproxy.py; "net-fault" events switch its mode for a while
    replace: bool = False  # "replace" events: the database file replaced between two writers

    def app(self, index: int, tools: Tools) -> AppSpec:
        """The index-th writer after the first: drawn from its own PRNG, so timing does not change the draws."""
        if self.long and index == 0:
            return AppSpec("grow", "NORMAL", 1000, -2000, 1e9, 0.0, "none", 0.0, grow_to=LONG_BYTES)
        return draw_app(random.Random(f"{self.seed}/app/{index}"), tools)


# Commits to the second database of a parking run now and then, from a PRNG of its own.
NUDGER = """
import random, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS n (id INTEGER PRIMARY KEY, t REAL)")
rng = random.Random(sys.argv[2] + "/nudge")
while True:
    conn.execute("INSERT INTO n (t) VALUES (?)", (time.time(),))
    time.sleep(rng.uniform(0.2, 3.0))
"""


def draw_plan(seed: int, tools: Tools, s3: bool, duration: float | None = None, long: bool = False) -> Plan:
    """Everything about a run that does not depend on timing."""
    rng = random.Random(seed)
    duration = duration or rng.uniform(10, 60) * (6 if long else 1)
    config = None
    if rng.random() < 0.5:
        config = {"snapshot-interval": rng.choice(["3s", "10s", "4h"]), "retention": rng.choice(["5s", "20s", "24h"]),
                  "retention-check-interval": "1s", "compaction": rng.choice(["1s, 3s", "2s", "500ms, 2s, 8s"]),
                  "checkpoint-pages": rng.choice([20, 200, 1000]), "sync-interval": rng.choice(["0s", "100ms", "1s"])}
        # Drawn apart, so that adding it left every other draw of a seed as it was.
        if random.Random(f"{seed}/validation").random() < 0.5:
            config["validation-interval"] = "2s"  # the agent reads the live database in its own process
        if random.Random(f"{seed}/truncate").random() < 0.5:
            # The WAL truncated after nearly every checkpoint, racing the app's commits.
            config["max-wal-size"] = random.Random(f"{seed}/truncate-size").choice(["64KiB", "256KiB", "1MiB"])
    clock = tools.faketime is not None and rng.random() < 0.6
    events = draw_events(rng, duration, clock)
    # Drawn apart, so that adding them left every other draw of a seed as it was.
    small_disk = tools.mount and random.Random(f"{seed}/disk").random() < 0.35
    if small_disk:
        disk = random.Random(f"{seed}/disk-events")
        events = tuple(sorted(events + tuple(Event(disk.uniform(0.5, duration), "disk-full", disk.uniform(1, 8))
                                             for _ in range(disk.randint(1, 2))), key=lambda e: e.at))
    page_size = rng.choice(PAGE_SIZES)
    auto_vacuum = rng.choice(["NONE", "FULL", "INCREMENTAL"])
    replica = "s3" if s3 and rng.random() < 0.5 else "file"
    first_offset = rng.choice(CLOCK_OFFSETS) if clock else 0
    via_link = random.Random(f"{seed}/link").random() < 0.3
    net_faults = replica == "s3" and random.Random(f"{seed}/net").random() < 0.7
    if net_faults:
        events = merge(events, draw_net_faults(random.Random(f"{seed}/net-events"), duration))
    replace = random.Random(f"{seed}/replace").random() < 0.4
    if replace:
        events = merge(events, draw_replacements(random.Random(f"{seed}/replace-events"), duration, via_link))
    return Plan(seed=seed, duration=duration, page_size=page_size, auto_vacuum=auto_vacuum, replica=replica,
                config=config, clock=clock, first_offset=first_offset, events=events, long=long, via_link=via_link,
                park=config is not None and random.Random(f"{seed}/park").random() < 0.5,
                small_disk=small_disk, net_faults=net_faults, replace=replace)


def merge(events: tuple[Event, ...], more: list[Event]) -> tuple[Event, ...]:
    return tuple(sorted(events + tuple(more), key=lambda e: e.at))


def draw_net_faults(rng: random.Random, duration: float) -> list[Event]:
    """Network faults between the agent and S3: (proxy mode, parameters, seconds) at random times."""
    events = []
    for _ in range(rng.randint(1, 1 + round(duration / 15))):
        at, kind, seconds = rng.uniform(0.5, duration), rng.choice(NET_FAULT_KINDS), rng.uniform(1, 8)
        params = {"reset_request": lambda: {"after": rng.randint(1, 64 << 10)},
                  "reset_response": lambda: rng.choice([{"after": rng.randint(0, 256 << 10)},
                                                        {"p": round(rng.uniform(0.1, 0.6), 2)}]),
                  "latency": lambda: {"seconds": round(rng.uniform(0.1, 1.5), 2)},
                  "bandwidth": lambda: {"rate": rng.choice([64 << 10, 256 << 10, 1 << 20])},
                  }.get(kind, dict)()
        events.append(Event(at, "net-fault", (kind, tuple(sorted(params.items())), seconds)))
    return events


def draw_replacements(rng: random.Random, duration: float, via_link: bool) -> list[Event]:
    """The database file replaced (between two writers) at random times, and how."""
    variants = REPLACE_VARIANTS + (("link",) if via_link else ())
    return [Event(rng.uniform(0.5, duration), "replace", rng.choice(variants)) for _ in range(rng.randint(1, 2))]


def draw_events(rng: random.Random, duration: float, clock: bool) -> tuple[Event, ...]:
    """Faults and restores at random times inside the run."""
    def times(per_10s: float, least: int = 0) -> list[float]:
        most = max(least, 1, round(duration / 10 * per_10s))
        return [rng.uniform(0.5, duration) for _ in range(rng.randint(least, most))]

    events = [Event(t, "agent-kill", (rng.choice([0.0, 0.2, 1.0, 3.0]), rng.choice(CLOCK_OFFSETS) if clock else 0))
              for t in times(rng.choice([1, 2, 3]))]
    events += [Event(t, "agent-stop", rng.uniform(0.2, 3.0)) for t in times(rng.choice([0.5, 1]))]
    events += [Event(t, "checkpoint", rng.choice(CHECKPOINT_MODES)) for t in times(rng.choice([1, 3, 6]))]
    events += [Event(t, "restore") for t in times(3, least=1 + round(duration / 10))]
    return tuple(sorted(events, key=lambda e: e.at))


def draw_app(rng: random.Random, tools: Tools) -> AppSpec:
    profile = rng.choices(["small", "mixed", "huge", "schema"], [3, 4, 2, 1])[0]
    synchronous = rng.choice(["OFF", "NORMAL", "FULL", "EXTRA"])
    faults = {"none": 3, "kill": 3}
    if tools.strace:
        faults["strace-write"] = 2
        if synchronous in ("FULL", "EXTRA"):  # the only levels that sync at every commit
            faults["strace-sync"] = 5  # all frames written, wal-index not yet: the phantom hazard
    fault = rng.choices(list(faults), list(faults.values()))[0]
    life = rng.uniform(0.5, 8)
    fault_at = {"none": 0.0, "kill": rng.uniform(0.05, life), "strace-write": rng.randint(1, 400),
                "strace-sync": rng.randint(1, 40)}[fault]
    return AppSpec(profile=profile, synchronous=synchronous, autocheckpoint=rng.choice([0, 1000, 1000, 20]),
                   cache_size=10 if profile == "huge" or rng.random() < 0.2 else -2000, life=life,
                   max_pause=rng.choice([0.0, 0.005, 0.05]), fault=fault, fault_at=fault_at)


# --- processes ------------------------------------------------------------------------

def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without AWS/B2/litesync settings (this machine exports AWS_CA_BUNDLE)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITESYNC_", "B2_"))}
    env.update(extra or {})
    return env


def alive(p: subprocess.Popen | None) -> bool:
    return p is not None and p.poll() is None


def kill9(p: subprocess.Popen | None) -> None:
    if alive(p):
        p.kill()
    if p is not None:
        p.wait()


# libfaketime 0.9.10 and Python 3.11 disagree about the monotonic clock. Faked (the default),
# it reads as the fake epoch time and every timed lock wait (sem_clockwait, not intercepted)
# sleeps for decades; left real (FAKETIME_DONT_FAKE_MONOTONIC=1), libfaketime rewrites
# time.sleep()'s absolute CLOCK_MONOTONIC deadline as if it were wall time: EINVAL. So the
# monotonic clock stays real and this shim makes time.sleep() a select() with a timeout.
SLEEP_SHIM = """
import select, time


def _sleep(seconds, _select=select.select, _monotonic=time.monotonic):
    deadline = _monotonic() + seconds
    while (left := deadline - _monotonic()) > 0:
        _select([], [], [], left)


time.sleep = _sleep
"""


def faketime_env(lib: str, offset: int, shim_dir: str) -> dict[str, str]:
    """Environment that shifts a Python process's wall clock by ``offset`` seconds (and only that)."""
    os.makedirs(shim_dir, exist_ok=True)
    with open(os.path.join(shim_dir, "sitecustomize.py"), "w") as f:
        f.write(SLEEP_SHIM)
    python_path = os.pathsep.join(filter(None, [shim_dir, os.environ.get("PYTHONPATH")]))
    return {"LD_PRELOAD": lib, "FAKETIME": f"{offset:+d}", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "PYTHONPATH": python_path}


class S3Server:
    """moto's S3 server on loopback, shared by all runs; one bucket per run."""

    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.address = (host, port)
        self.endpoint = f"http://{host}:{port}"
        self.env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}

    def new_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket=name)

    @staticmethod
    def url(bucket: str, endpoint: str) -> str:
        """The replica URL of a prefix in ``bucket``, reached at ``endpoint`` (the server or a proxy)."""
        return f"s3://{bucket}/db?endpoint={endpoint}&region=us-east-1&force-path-style=true"

    def stop(self) -> None:
        self.server.stop()


class Agent:
    """`litesync replicate` as a process that can be killed, stopped and restarted with another clock."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.proc: subprocess.Popen | None = None
        self.offset = run.plan.first_offset
        self.stopped = False

    def command(self) -> list[str]:
        if self.run.config_path:
            return [sys.executable, "-m", "litesync", "--config", self.run.config_path, "replicate"]
        return [sys.executable, "-m", "litesync", "replicate", self.run.agent_db, self.run.url]

    def start(self) -> None:
        env = clean_env(self.run.replica_env)
        if self.offset:
            env.update(faketime_env(self.run.tools.faketime, self.offset, self.run.path("faketime-shim")))
        self.run.note(f"agent start, clock offset {self.offset:+d}s")
        with open(self.run.path("agent.log"), "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=out, env=env, cwd=self.run.dir)
        self.stopped = False

    def kill(self) -> None:
        self.run.note("agent kill -9")
        kill9(self.proc)
        self.stopped = False

    def stop(self) -> None:
        if alive(self.proc) and not self.stopped:
            self.run.note("agent SIGSTOP")
            self.proc.send_signal(signal.SIGSTOP)
            self.stopped = True

    def cont(self) -> None:
        if alive(self.proc) and self.stopped:
            self.run.note("agent SIGCONT")
            self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def set_offset(self, offset: int) -> None:
        """A restart with another offset is a clock step, as the new process sees it."""
        if offset != self.offset:
            self.run.count("clock step forwards" if offset > self.offset else "clock step backwards")
            self.offset = offset

    def terminate(self, timeout: float = 60) -> int | None:
        """SIGTERM (final sync) and wait; None if it had to be killed."""
        self.cont()
        if not alive(self.proc):
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill9(self.proc)
            return None


class App:
    """One writer process (tests/torture_app.py), maybe under strace's fault injection."""

    def __init__(self, run: Run, spec: AppSpec, index: int, until: float) -> None:
        self.run, self.spec, self.index = run, spec, index
        self.started = time.monotonic()
        cmd = [sys.executable, APP, run.db, run.log, "--seed", str(run.plan.seed), "--profile", spec.profile,
               "--page-size", str(run.plan.page_size), "--auto-vacuum", run.plan.auto_vacuum,
               "--synchronous", spec.synchronous, "--autocheckpoint", str(spec.autocheckpoint),
               "--cache-size", str(spec.cache_size), "--max-pause", str(spec.max_pause),
               "--max-tx", str(spec.max_tx), "--grow-to", str(spec.grow_to),
               "--max-db-bytes", str(0 if run.plan.long else MAX_DB_BYTES)]
        if not spec.grow_to:  # the --long writer runs until the database is big enough
            cmd += ["--until", str(min(until, time.time() + spec.life))]
        if spec.fault in ("strace-write", "strace-sync"):
            calls = "pwrite64" if spec.fault == "strace-write" else "fdatasync,fsync"
            # No --seccomp-bpf: strace 6.1 then never reaches the injection point.
            cmd = [run.tools.strace, "-f", "-qq", "-o", "/dev/null", "-e", f"trace={calls}",
                   "-e", f"inject={calls}:signal=KILL:when={int(spec.fault_at)}", *cmd]
        run.note(f"app {index} start: {spec}")
        with open(run.path("app.log"), "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=clean_env(), cwd=run.dir)
        self.killed = False

    def tick(self) -> None:
        """Deliver a plain SIGKILL when it is due."""
        if self.spec.fault == "kill" and not self.killed and time.monotonic() - self.started >= self.spec.fault_at:
            self.kill()
            self.killed = True

    def kill(self) -> None:
        """SIGKILL the writer; under strace the traced child first (strace killed alone detaches it)."""
        if alive(self.proc):
            for pid in child_pids(self.proc.pid) if self.spec.fault.startswith("strace") else ():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        kill9(self.proc)

    def outcome(self) -> str:
        """How it ended, as a counter name; an unexpected exit is a failure."""
        rc = self.proc.returncode
        if rc == 0:
            return "app exit (fault not reached)" if self.spec.fault.startswith("strace") else "app exit"
        if rc in (-signal.SIGKILL, 128 + signal.SIGKILL):
            return {"kill": "app SIGKILL at random time", "strace-write": "app killed at WAL write (strace)",
                    "strace-sync": "app killed at sync (strace)"}.get(self.spec.fault, "app killed")
        self.run.fail(f"app {self.index} exited {rc} ({self.spec}); see app.log")
        return "app error"


def child_pids(pid: int) -> list[int]:
    """The children of a process we started, from /proc."""
    pids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


@dataclass
class Restore:
    """One `litesync restore -o` and what came of it."""

    label: str
    out: str
    proc: subprocess.Popen
    started: float
    final: bool
    options: str = ""     # --generation G or --timestamp T: a state from the replica's history
    rc: int | None = None
    meta: tuple[int, int] | None = None

    def wait(self, timeout: float) -> int | None:
        """Wait for the exit code; None (and the process killed) after ``timeout``."""
        try:
            self.rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill9(self.proc)
            self.rc = self.proc.returncode
            return None
        return self.rc


# --- one run ------------------------------------------------------------------------

@dataclass
class Run:
    plan: Plan
    tools: Tools
    dir: str
    s3: S3Server | None
    counters: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    clean_failures: list[str] = field(default_factory=list)  # restores that failed as allowed: why
    catchup: float | None = None  # seconds from the last commit to a restore that holds it
    wall: float = 0.0

    def __post_init__(self) -> None:
        self.db = self.path("app.db")
        # The name the agent is given: the database, or a symbolic link to it.
        self.agent_db = self.path("link.db") if self.plan.via_link else self.db
        if self.plan.via_link:
            os.symlink("app.db", self.agent_db)
        self.log = self.path("history.log")
        self.replica_env: dict[str, str] = {}
        # The agent and mid-run restores use url; the final checks direct_url (not through the proxy).
        self.proxy: FaultProxy | None = None  # between the agent and S3 (Plan.net_faults)
        if self.plan.replica == "s3":
            bucket = f"torture-{self.plan.seed}-{os.getpid()}-{int(time.time() * 1000)}"
            self.s3.new_bucket(bucket)
            self.direct_url = self.url = self.s3.url(bucket, self.s3.endpoint)
            if self.plan.net_faults:
                self.proxy = FaultProxy(self.s3.address, seed=self.plan.seed)
                self.url = self.s3.url(bucket, self.proxy.url)
            self.replica_env = dict(self.s3.env)
        else:
            self.direct_url = self.url = "file://" + self.path("replica")
        self.config_path = self.write_config() if self.plan.config else None
        self.t0 = time.monotonic()
        self.restores: list[Restore] = []
        self.agent = Agent(self)
        self.app: App | None = None
        self.checkpointer: subprocess.Popen | None = None
        self.nudger: subprocess.Popen | None = None  # commits to the second database (Plan.park)
        self.pending_restart: tuple[float, int] | None = None  # (when, clock offset) after a kill -9
        self.pending_cont: float | None = None                 # when to SIGCONT a stopped agent
        self.state_dir = os.path.join(self.dir, "." + os.path.basename(self.agent_db) + "-litesync")
        self.disk: SmallDisk | None = None  # mounted on state_dir (Plan.small_disk)
        self.pending_free: float | None = None  # when to free the full disk
        self.pending_heal: float | None = None  # when the proxy goes back to pass
        self.healed_at: float | None = None     # when it last did
        self.pending_replace: list[str] = []    # replacements due, done once the writer has stopped
        self.replaced = 0                       # how many (names the copies)
        self.final_meta: tuple[int, int] = (0, 0)
        self.state_bytes: tuple[int, int] | None = None  # (state directory, database) at the end
        self.largest_db = 0  # bytes, looked at between events

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def note(self, text: str) -> None:
        """A line in events.log, the run's own story for whoever debugs a failure."""
        with open(self.path("events.log"), "a") as f:
            f.write(f"{time.monotonic() - self.t0:8.3f} {text}\n")

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] += n

    def fail(self, text: str) -> None:
        self.note(f"FAILURE: {text}")
        self.failures.append(text)

    def write_config(self) -> str:
        cfg = dict(self.plan.config)
        sync_interval = cfg.pop("sync-interval")
        lines = [f"{key}: {value}" for key, value in cfg.items()]
        lines += ["logging:", "  level: info", "dbs:", f"  - path: {self.agent_db}", "    replicas:",
                  f"      - url: {json.dumps(self.url)}", f"        sync-interval: {sync_interval}"]
        if self.plan.park:
            # One open database at a time: the nudged one reopening makes the other park
            # whenever it has been idle a second (see runner.OpenBudget).
            lines[:0] = ["max-open-databases: 1"]
            lines += [f"  - path: {self.path('other.db')}", "    replicas:",
                      f"      - url: {json.dumps('file://' + self.path('replica-other'))}"]
        path = self.path("litesync.yml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def describe(self) -> None:
        p = self.plan
        self.count(f"page size {p.page_size}")
        self.count(f"auto_vacuum {p.auto_vacuum}")
        self.count(f"replica {p.replica}")
        self.count("agent with config (compaction, retention)" if p.config else "agent with DB URL")
        if p.via_link:
            self.count("agent names the database through a symbolic link")
        if p.config and "validation-interval" in p.config:
            self.count("agent validating the live database")
        if p.park:
            self.count("agent parks the database (max-open-databases: 1, a second database nudged)")
        if p.small_disk:
            self.count("agent state directory on a small disk")
        if p.net_faults:
            self.count("agent reaches S3 through the fault proxy")
        if p.replace:
            self.count("database file replaced in this run")
        self.note(f"plan: {p}")

    # --- the main loop

    def execute(self) -> None:
        """Run the plan, then the final checks; failures are collected, not raised."""
        self.describe()
        self.app = App(self, FIRST_APP, 0, float("inf"))
        self.wait_app(self.app)  # creates the database: the agent needs one to start
        if self.plan.park:
            conn = sqlite3.connect(self.path("other.db"), isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS n (id INTEGER PRIMARY KEY, t REAL)")
            conn.close()
            self.nudger = subprocess.Popen([sys.executable, "-c", NUDGER, self.path("other.db"), str(self.plan.seed)],
                                           env=clean_env())
        if self.plan.small_disk:
            self.disk = SmallDisk(self.state_dir, "128m")
        self.agent.start()
        try:
            self.main_loop()
            self.final_phase()
        finally:
            self.cleanup()
            if self.plan.park:
                self.count_parks()
            self.count_new_generations()
        self.check()

    def main_loop(self) -> None:
        events = list(self.plan.events)
        app_index = 1
        deadline = self.t0 + self.plan.duration
        while time.monotonic() < deadline or (self.app is not None and self.app.spec.grow_to):
            now = time.monotonic()
            while events and self.t0 + events[0].at <= now:
                self.fire(events.pop(0))
            self.tick_agent(now)
            if self.app is not None:
                self.app.tick()
                if not alive(self.app.proc):
                    self.count(self.app.outcome())
                    self.app = None
            if self.app is None and self.pending_replace:
                self.replace_database(self.pending_replace.pop(0))  # between two writers
            if self.app is None and now < deadline:
                self.app = App(self, self.plan.app(app_index - 1, self.tools), app_index,
                               time.time() + deadline - now)
                self.count_app(self.app.spec)
                app_index += 1
            self.poll_restores()
            with contextlib.suppress(FileNotFoundError):  # replaced by a delete, for a moment
                self.largest_db = max(self.largest_db, os.path.getsize(self.db))
            time.sleep(0.05)

    def count_app(self, spec: AppSpec) -> None:
        self.count(f"app profile {spec.profile}")
        self.count(f"app synchronous {spec.synchronous}")
        self.count(f"app wal_autocheckpoint {spec.autocheckpoint or 'off'}")
        self.count(f"app cache_size {'10 (spills)' if spec.cache_size == 10 else 'default'}")
        self.count(f"app fault drawn: {spec.fault}")

    def fire(self, event: Event) -> None:
        if event.action == "agent-kill":
            if alive(self.agent.proc):
                self.count("agent kill -9")
                self.agent.kill()
                delay, offset = event.param
                self.pending_restart = (time.monotonic() + delay, offset)
                # Now and then the state directory is lost with the agent (a new host, a
                # wiped volume): the spool, the positions, the last generation id.
                if random.Random(f"{self.plan.seed}/lose-state/{event.at}").random() < 0.2:
                    self.count("agent state directory lost")
                    self.note("agent state directory removed")
                    # A mounted one stays, empty: its ballast is gone too, so the disk is free.
                    shutil.rmtree(self.state_dir, ignore_errors=True)
        elif event.action == "agent-stop":
            if alive(self.agent.proc) and not self.agent.stopped:
                self.count("agent SIGSTOP/SIGCONT")
                self.agent.stop()
                self.pending_cont = time.monotonic() + event.param
        elif event.action == "checkpoint":
            # A TRUNCATE checkpoint killed between restarting the wal-index and truncating
            # the WAL leaves them disagreeing; drawn apart (see draw_plan).
            killed = (event.param == "TRUNCATE" and self.tools.strace is not None
                      and random.Random(f"{self.plan.seed}/ckpt-kill/{event.at}").random() < 0.5)
            self.start_checkpoint(event.param, killed=killed)
        elif event.action == "disk-full" and self.disk is not None and self.pending_free is None:
            self.count("agent state disk full (ENOSPC)")
            self.note(f"state disk filled for {event.param:.1f}s ({self.disk.fill()} bytes of ballast)")
            self.pending_free = time.monotonic() + event.param
        elif event.action == "net-fault" and self.proxy is not None:
            kind, params, seconds = event.param
            self.count(f"net fault {kind}")
            self.note(f"net fault {kind} {dict(params)} for {seconds:.1f}s")
            self.proxy.set(kind, **dict(params))  # replaces one still on
            self.pending_heal = time.monotonic() + seconds
        elif event.action == "replace":
            self.pending_replace.append(event.param)
        elif event.action == "restore" and not any(r.rc is None for r in self.restores):
            self.count("restore mid-run")
            self.start_restore(final=False)

    def free_disk(self) -> None:
        if self.disk is not None and self.pending_free is not None:
            self.note("state disk freed")
            with contextlib.suppress(FileNotFoundError):  # removed with the state directory
                self.disk.free()
        self.pending_free = None

    def heal_network(self) -> None:
        if self.proxy is not None and self.pending_heal is not None:
            self.proxy.set("pass")
            self.healed_at = time.monotonic()
            self.note(f"net ok (proxy counts {self.proxy.counts})")
        self.pending_heal = None

    def tick_agent(self, now: float) -> None:
        if self.pending_free is not None and now >= self.pending_free:
            self.free_disk()
        if self.pending_heal is not None and now >= self.pending_heal:
            self.heal_network()
        if self.pending_cont is not None and now >= self.pending_cont:
            self.agent.cont()
            self.pending_cont = None
        if self.pending_restart is not None and now >= self.pending_restart[0]:
            if self.plan.clock:
                self.agent.set_offset(self.pending_restart[1])
            self.agent.start()
            self.pending_restart = None
        if self.agent.proc.poll() is not None and self.pending_restart is None:
            self.fail(f"agent exited by itself with {self.agent.proc.returncode}; see agent.log")
            self.pending_restart = (now + 1.0, self.agent.offset)  # keep going: later restores still count

    def replace_database(self, variant: str) -> None:
        """Replace the database file with the writers stopped, as the README says to: a copy
        of its committed state (a new inode), the old -wal and -shm removed, then the copy
        renamed over the database (mv), or the database deleted and the copy put at its path
        a moment later (delete), or the symbolic link the agent names pointed at the copy (link)."""
        if alive(self.checkpointer):  # another process's connection to the database
            self.checkpointer.wait(30)
        if variant == "delete" and not self.agent_past_open():
            # An agent that starts while there is no database exits 1 (documented: "A start
            # that fails (the database does not exist ...)"); one that runs goes on.
            self.count("database replacement delete done as mv (the agent was starting)")
            variant = "mv"
        self.replaced += 1
        copy = self.path(f"app-{self.replaced}.db") if variant == "link" else self.db + ".replacement"
        meta = copy_database(self.db, copy)
        if variant == "link":
            link = self.agent_db + ".tmp"
            os.symlink(os.path.basename(copy), link)
            os.rename(link, self.agent_db)  # the old file and its WAL stay where they are
            self.db = copy
        else:
            gone = [self.db] if variant == "delete" else []
            for path in gone + [self.db + "-wal", self.db + "-shm"]:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            if variant == "delete":  # the agent may look while there is no file at all
                time.sleep(random.Random(f"{self.plan.seed}/replace-gap/{self.replaced}").uniform(0, 1.5))
            os.rename(copy, self.db)
        self.count(f"database file replaced ({variant})")
        self.note(f"database file replaced ({variant}): {os.path.basename(self.db)} now a copy holding {meta}")

    def agent_past_open(self, timeout: float = 20.0) -> bool:
        """Whether the agent is down or has opened the database (its status says it replicates),
        waited for up to ``timeout`` seconds (the status is written every 3 s)."""
        deadline = time.monotonic() + timeout
        while alive(self.agent.proc) and not self.agent.stopped:
            try:
                with open(os.path.join(self.state_dir, "status.json")) as f:
                    status = json.load(f)
                if status.get("pid") == self.agent.proc.pid and status.get("state") == "replicating":
                    return True
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return not alive(self.agent.proc)

    def count_new_generations(self) -> None:
        """Why the agent started each new generation (its log line), numbers and details left out."""
        try:
            with open(self.path("agent.log"), errors="replace") as f:
                reasons = [line.split("starting a new generation: ", 1)[1] for line in f
                           if "starting a new generation: " in line]
        except OSError:
            return
        for reason in reasons:
            reason = re.sub(r"\s*\([^)]*\)", "", reason.strip())
            reason = re.sub(r"\b(?:[0-9a-f]{16}|\d+)\b", "N", reason)[:100]
            self.count(f"agent new generation: {reason}")

    def start_checkpoint(self, mode: str, busy_ms: int = 2000, killed: bool = False) -> None:
        if alive(self.checkpointer):
            return
        what = f"checkpoint {mode}" + (" killed at the WAL truncate (strace)" if killed else "")
        self.count(what)
        self.note(what)
        cmd = [sys.executable, "-c", CHECKPOINT_CODE, self.db, mode, str(busy_ms)]
        if killed:
            cmd = [self.tools.strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=ftruncate",
                   "-e", "inject=ftruncate:signal=KILL", *cmd]
        with open(self.path("checkpoint.log"), "ab") as out:
            self.checkpointer = subprocess.Popen(cmd, stdout=out, stderr=out, env=clean_env())

    def start_restore(self, final: bool, *options: str, direct: bool = False) -> Restore:
        """Start `litesync restore -o restore-N.db [options] URL` in the background (``direct``:
        not through the fault proxy)."""
        n = len(self.restores)
        out = self.path(f"restore-{n:03d}.db")
        url = self.direct_url if direct else self.url
        self.note(f"restore {n} started {' '.join(options)}{' through the proxy' if url != self.direct_url else ''}")
        with open(self.path(f"restore-{n:03d}.log"), "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "litesync", "restore", "-o", out, *options, url],
                                    stdout=log, stderr=log, env=clean_env(self.replica_env), cwd=self.dir)
        restore = Restore(f"restore-{n:03d}", out, proc, time.monotonic(), final, " ".join(options))
        self.restores.append(restore)
        return restore

    def poll_restores(self) -> None:
        for r in self.restores:
            if r.rc is None and r.proc.poll() is not None:
                r.rc = r.proc.returncode
                self.note(f"{r.label} exited {r.rc}")
            elif r.rc is None and time.monotonic() - r.started > RESTORE_TIMEOUT:
                kill9(r.proc)
                r.rc = r.proc.returncode
                self.fail(f"{r.label} hung: still running after {RESTORE_TIMEOUT:.0f}s")

    # --- the end: no more faults, the replica must catch up

    def final_phase(self) -> None:
        """Let the last writer finish, heal the agent, commit a last few transactions, wait for the replica."""
        self.heal_network()  # first: restores through the proxy wait for it
        if self.app is not None:
            self.wait_app(self.app)
        for r in self.restores:
            if r.rc is None and r.wait(RESTORE_TIMEOUT) is None:
                self.fail(f"{r.label} hung: still running after {RESTORE_TIMEOUT:.0f}s")
        if alive(self.checkpointer):
            self.checkpointer.wait(30)
        self.free_disk()
        for variant in self.pending_replace:  # due after the last writer: done before the final one
            self.replace_database(variant)
        self.pending_replace = []
        self.agent.cont()
        if not alive(self.agent.proc):
            if self.pending_restart is not None and self.plan.clock:
                self.agent.set_offset(self.pending_restart[1])
            self.agent.start()
        self.app = App(self, FINAL_APP, -1, float("inf"))
        self.wait_app(self.app)
        self.final_meta = self.last_acked()
        self.note(f"final commit {self.final_meta}")
        self.largest_db = max(self.largest_db, os.path.getsize(self.db))
        self.wait_for_replica()
        rc = self.agent.terminate()
        if rc != 0:
            self.fail(f"agent exited {rc} on SIGTERM at the end (expected 0); see agent.log")
        self.measure_state_dir()
        self.restore_history()

    def measure_state_dir(self) -> None:
        """The agent's state directory once it stopped with everything shipped: a failure past
        what the README allows it (spool-max-size plus one compressed copy of the database),
        with room for one validation's restore left by a kill and for the largest database
        of the run rather than the last."""
        files = [os.path.join(d, n) for d, _, names in os.walk(self.state_dir) for n in names]
        used = sum(os.lstat(f).st_size for f in files if os.path.exists(f))
        db = os.path.getsize(self.db)
        self.state_bytes = (used, db)
        self.note(f"state directory at the end: {used} bytes in {len(files)} files; database {db} bytes")
        bound = DEFAULT_SPOOL_MAX_SIZE + 2 * (self.largest_db + (self.largest_db >> 4)) + (4 << 20)
        if used > bound:
            self.fail(f"the agent's state directory holds {used} bytes at the end, more than {bound} (spool-max-size "
                      f"{DEFAULT_SPOOL_MAX_SIZE}, largest database {self.largest_db}); listed in events.log")
        for f in sorted(files)[:30]:
            with contextlib.suppress(OSError):
                self.note(f"    {os.path.relpath(f, self.state_dir)} {os.lstat(f).st_size}")

    def restore_history(self, most: int = 4) -> None:
        """Restore older states too: the last state of each generation, and points in time.

        The latest state hides what an older generation ended with (a phantom the agent
        shipped, then abandoned for a new generation): every state a restore can reach
        must be a committed one.
        """
        rng = random.Random(f"{self.plan.seed}/history")
        generations = self.list_generations()
        older = [g for g in generations if not g["current"]]
        for g in rng.sample(older, min(most, len(older))):
            self.count("restore of an older generation")
            self.start_restore(False, "--generation", g["generation"], direct=True).wait(RESTORE_TIMEOUT)
        spans = [(g["start"], g["end"]) for g in generations if "-" not in (g["start"], g["end"])]
        for _ in range(most if spans else 0):
            start, end = (parse_rfc3339(t) for t in rng.choice(spans))
            self.count("restore to a point in time")
            self.start_restore(False, "--timestamp", format_rfc3339(rng.uniform(start, end)),
                               direct=True).wait(RESTORE_TIMEOUT)

    def list_generations(self) -> list[dict]:
        p = subprocess.run([sys.executable, "-m", "litesync", "generations", "--json", self.direct_url],
                           capture_output=True, text=True, env=clean_env(self.replica_env), timeout=120, check=False)
        if p.returncode != 0:
            self.fail(f"litesync generations exited {p.returncode}: {p.stderr.strip()[-500:]}")
            return []
        generations = json.loads(p.stdout)["generations"]
        self.count("generations in the replica", len(generations))
        return generations

    def wait_app(self, app: App) -> None:
        try:
            app.proc.wait(600 if app.spec.grow_to else 120)
        except subprocess.TimeoutExpired:
            app.kill()
            self.fail(f"app {app.index} still running long after its deadline ({app.spec})")
        self.count(app.outcome())
        self.app = None

    def last_acked(self) -> tuple[int, int]:
        commits = [(int(w[1]), int(w[2])) for w in torture_app.read_log(self.log) if w[0] == "commit"]
        return commits[-1]

    def wait_for_replica(self) -> None:
        """Restore until the replica holds the final commit; a stall past the deadline is a failure."""
        started = time.monotonic()
        allowed = LIVENESS_SECONDS * (4 if self.plan.long else 1)  # restoring 1 GiB alone takes seconds
        if self.healed_at is not None:
            allowed = max(allowed, self.healed_at + NET_SETTLE_SECONDS - started)
        while True:
            r = self.start_restore(final=True, direct=True)
            r.wait(RESTORE_TIMEOUT)
            r.meta = read_meta(r.out) if r.rc == 0 else None
            if r.meta == self.final_meta:
                self.catchup = time.monotonic() - started
                self.note(f"replica reached {self.final_meta} in {self.catchup:.1f}s")
                return
            if time.monotonic() > started + allowed:
                self.fail(f"liveness: the replica did not reach the final commit {self.final_meta} within "
                          f"{allowed:.0f}s of the last commit; last restore: exit {r.rc}, meta {r.meta} "
                          f"({r.label}.log)")
                return
            time.sleep(0.3)

    def count_parks(self) -> None:
        """How often the agent parked the database (its status file, as the agent left it)."""
        name = os.path.basename(self.agent_db)
        try:
            with open(self.path(f".{name}-litesync/status.json")) as f:
                parks = json.load(f).get("parks", 0)
        except (OSError, ValueError):
            return
        self.count("database parked by the agent (times)", parks)

    def cleanup(self) -> None:
        """End every process this run started (by its handle, never by name)."""
        if self.app is not None:
            self.app.kill()
        procs = [self.agent.proc, self.checkpointer, self.nudger] + [r.proc for r in self.restores]
        self.agent.cont()
        for p in procs:
            kill9(p)
        if self.disk is not None:
            self.disk.unmount()
        if self.proxy is not None:
            self.proxy.close()

    # --- the oracle

    def check(self) -> None:
        """Check every restore and the live database against the replayed committed history."""
        history = History.from_log(torture_app.read_log(self.log))
        self.failures += history.problems
        self.counters.update(history.stats)
        targets: dict[int, list[tuple[str, str]]] = {}  # k -> [(what, path)]
        for r in self.restores:
            self.check_restore(r, history, targets)
        live = read_meta(self.db)
        if live != self.final_meta:
            self.fail(f"live database: meta {live}, expected the last commit {self.final_meta}")
        targets.setdefault(self.final_meta[0], []).append(("live database", self.db))
        self.failures += replay_and_compare(self.plan.seed, history, targets, self.path("replay.db"))

    def check_restore(self, r: Restore, history: History, targets: dict) -> None:
        leftovers = [p for p in (r.out, r.out + ".tmp") if os.path.exists(p)]
        flavour = r.options.split()[0] if r.options else "latest"
        if r.rc != 0:
            self.count(f"restore {flavour} failed cleanly" if not leftovers else "restore failed, left output")
            last = last_error_line(self.path(r.label + '.log'))
            self.clean_failures.append(f"seed {self.plan.seed} {r.label}: {last}")
            if leftovers:
                self.fail(f"{r.label}: exit {r.rc} but left {', '.join(map(os.path.basename, leftovers))}")
            elif r.final:
                self.note(f"{r.label} (liveness poll) failed: exit {r.rc}")
            return
        self.count(f"restore {flavour} ok (checked)")
        meta = read_meta(r.out)
        if isinstance(meta, str):
            self.fail(f"{r.label}: exit 0 but unreadable: {meta}")
            return
        problem = history.explain(meta)
        if problem:
            self.fail(f"{r.label}: holds {meta}: {problem}")
            return
        targets.setdefault(meta[0], []).append((r.label, r.out))


def copy_database(path: str, copy: str) -> tuple[int, int]:
    """Copy the committed state of the database at ``path`` (its WAL applied) into the new file
    ``copy`` with SQLite's backup API; return the copy's meta row."""
    src = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        src.setbusytimeout(10_000)
        for attempt in range(50):
            with contextlib.suppress(FileNotFoundError):
                os.remove(copy)
            dst = apsw.Connection(copy)
            try:
                with dst.backup("main", src, "main") as b:
                    b.step()  # every page, under one read transaction of the source
                # Read here: a later connection of its own would leave a -wal and -shm beside the copy.
                return torture_app.observe(dst)
            except (apsw.BusyError, apsw.LockedError):
                if attempt == 49:
                    raise
                time.sleep(0.1)
            finally:
                dst.close()
    finally:
        src.close()
    raise AssertionError("unreachable")


def parse_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def format_rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def read_meta(path: str) -> tuple[int, int] | str:
    """(k, attempt) from a database's meta row ((0, 0) without one), or the error as text."""
    try:
        conn = apsw.Connection(f"file:{path}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            return torture_app.observe(conn)
        finally:
            conn.close()
    except apsw.Error as e:
        return f"{type(e).__name__}: {e}"


# --- the committed history and the replay -------------------------------------------

@dataclass
class History:
    """Which attempt of each transaction committed, according to the writers' log."""

    committed: dict[int, tuple[int, str]]   # k -> (attempt, kind)
    problems: list[str]
    stats: Counter

    @classmethod
    def from_log(cls, lines: list[list[str]]) -> History:
        kinds, committed, problems, stats = {}, {}, [], Counter()
        acked_k = 0
        for words in lines:
            op = words[0]
            if op == "begin":
                kinds[int(words[1]), int(words[2])] = words[3]
            elif op in ("commit", "observed"):
                k, a = int(words[1]), int(words[2])
                if op == "observed" and k < acked_k:
                    problems.append(f"live database lost acknowledged transactions: a writer observed {k} "
                                    f"after {acked_k} was committed")
                if op == "commit":
                    acked_k = k
                if k == 0:
                    continue
                if committed.get(k, (a,))[0] != a:
                    problems.append(f"transaction {k}: attempts {committed[k][0]} and {a} both committed")
                committed.setdefault(k, (a, kinds.get((k, a), "?")))
        acked = {(int(w[1]), int(w[2])) for w in lines if w[0] == "commit"}
        begun = [(k, a) for (k, a) in kinds]
        stats["killed attempts that committed (recovered)"] = sum(
            1 for (k, a) in begun if (k, a) not in acked and committed.get(k, (None,))[0] == a)
        stats["killed attempts discarded"] = sum(1 for (k, a) in begun if committed.get(k, (None,))[0] != a)
        missing = [k for k in range(1, max(committed, default=0) + 1) if k not in committed]
        if missing:
            problems.append(f"history has gaps: no committed attempt of transactions {missing[:10]}")
        stats["transactions committed"] = len(committed)
        return cls(committed, problems, stats)

    def explain(self, meta: tuple[int, int]) -> str | None:
        """Why a restore claiming ``meta`` cannot be a committed state, or None."""
        k, a = meta
        if k == 0:
            return None
        if k not in self.committed:
            return f"transaction {k} never committed"
        if self.committed[k][0] != a:
            return f"a phantom: attempt {a} of transaction {k} never committed (attempt {self.committed[k][0]} did)"
        return None


def replay_and_compare(seed: int, history: History, targets: dict[int, list[tuple[str, str]]],
                       scratch: str) -> list[str]:
    """Replay the committed history once, in order; compare each target with the state at its k."""
    failures = []
    conn = apsw.Connection(scratch)
    conn.execute("PRAGMA journal_mode=OFF").fetchall()
    conn.execute("PRAGMA synchronous=OFF")
    try:
        for k in range(max(targets, default=0) + 1):
            if k > 0:
                attempt, kind = history.committed[k]
                conn.execute("BEGIN")
                torture_app.run_tx(conn, seed, k, attempt, kind)
                conn.execute("COMMIT")
            if k in targets:
                expected = torture_app.logical_digest(conn)
                failures += [f"{what}: {problem}" for what, path in targets[k]
                             if (problem := compare(path, expected, k))]
    finally:
        conn.close()
        os.remove(scratch)
    return failures


def compare(path: str, expected: str, k: int) -> str | None:
    """What is wrong with the database at ``path``, expected to hold the state after transaction k."""
    try:
        conn = apsw.Connection(f"file:{path}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            integrity = conn.execute("PRAGMA integrity_check").fetchall()
            if integrity != [("ok",)]:
                return f"integrity_check after transaction {k}: {integrity[:5]}"
            digest = torture_app.logical_digest(conn)
        finally:
            conn.close()
    except apsw.Error as e:
        return f"unreadable ({type(e).__name__}: {e})"
    if digest != expected:
        return f"content differs from the replay of transactions 1..{k} (meta matches, rows do not)"
    return None


# --- runs and the summary ------------------------------------------------------------

def run_one(seed: int, args: argparse.Namespace, tools: Tools, s3: S3Server | None) -> Run:
    plan = draw_plan(seed, tools, s3 is not None, args.duration, args.long)
    workdir = tempfile.mkdtemp(prefix=f"torture-{seed}-", dir=args.workdir)
    run = Run(plan, tools, workdir, s3)
    started = time.monotonic()
    try:
        run.execute()
    except Exception as e:  # a harness error fails the run: keep its directory, show the seed
        run.note(traceback.format_exc())
        run.fail(f"harness error: {type(e).__name__}: {e} (traceback in events.log)")
        run.cleanup()
    run.wall = time.monotonic() - started
    return run


def rerun_command(seed: int, args: argparse.Namespace) -> str:
    extra = (f" --duration {args.duration:g}" if args.duration else "") + (" --long" if args.long else "")
    return f"python scripts/torture.py --runs 1 --seed {seed}{extra} --keep"


def report(run: Run, args: argparse.Namespace) -> None:
    p = run.plan
    status = "FAIL" if run.failures else "ok"
    print(f"seed {p.seed}: {status} in {run.wall:.0f}s ({p.duration:.0f}s planned, page size {p.page_size}, "
          f"auto_vacuum {p.auto_vacuum}, {p.replica}, {'config' if p.config else 'url'}, "
          f"{run.counters['transactions committed']} transactions, {len(run.restores)} restores{drawn_faults(run)})",
          flush=True)
    if run.failures:
        for text in run.failures[:20]:
            print(f"    {text}")
        print(f"    kept {run.dir}; rerun: {rerun_command(p.seed, args)}", flush=True)
    elif not args.keep:
        shutil.rmtree(run.dir, ignore_errors=True)


def drawn_faults(run: Run) -> str:
    """The run's network faults and database replacements, as a phrase for its report line."""
    nets = sum(n for name, n in run.counters.items() if name.startswith("net fault "))
    replaced = sum(n for name, n in run.counters.items() if name.startswith("database file replaced ("))
    return ((f", {nets} net faults" if run.plan.net_faults else "")
            + (f", database replaced {replaced}x" if run.plan.replace else ""))


def last_error_line(log_path: str) -> str:
    """The error a failed restore printed (its last line starting with 'litesync: error'), or its last line."""
    try:
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "(no log)"
    errors = [line for line in lines if line.startswith("litesync: error")]
    return (errors or lines or ["(empty log)"])[-1][:300]


def summary(runs: list[Run], wall: float) -> dict:
    totals = Counter()
    for run in runs:
        totals.update(run.counters)
    catchups = [r.catchup for r in runs if r.catchup is not None]
    states = [r.state_bytes for r in runs if r.state_bytes is not None]
    return {"runs": len(runs), "failures": sum(1 for r in runs if r.failures), "wall_seconds": round(wall, 1),
            "catchup_max_seconds": round(max(catchups), 2) if catchups else None,
            "state_dir_max_bytes": max((used for used, _ in states), default=None),
            "state_dir_max_over_db": round(max(used / db for used, db in states), 3) if states else None,
            "failed_seeds": [r.plan.seed for r in runs if r.failures], "counters": dict(sorted(totals.items())),
            "clean_restore_failures": [text for r in runs for text in r.clean_failures]}


def print_summary(s: dict) -> None:
    print(f"\n{'runs':<48} {s['runs']:>8}")
    print(f"{'failures':<48} {s['failures']:>8}")
    print(f"{'wall time (s)':<48} {s['wall_seconds']:>8}")
    print(f"{'last commit to restorable, slowest run (s)':<48} {s['catchup_max_seconds']!s:>8}")
    print(f"{'state directory at the end, largest (bytes)':<48} {s['state_dir_max_bytes']!s:>8}")
    print(f"{'  largest relative to its database':<48} {s['state_dir_max_over_db']!s:>8}")
    for name, n in s["counters"].items():
        print(f"{name:<48} {n:>8}")
    for text in s["clean_restore_failures"]:
        print(f"restore failed cleanly (allowed mid-run): {text}")
    if s["failed_seeds"]:
        print(f"failed seeds: {' '.join(map(str, s['failed_seeds']))}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="number of runs (default 5)")
    p.add_argument("--seed", type=int, default=None, help="seed of the first run; run i uses seed+i (default: random)")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default: drawn, 10-60)")
    p.add_argument("--keep", action="store_true", help="keep the directories of passing runs too")
    p.add_argument("--long", action="store_true", help="grow the database past 1 GiB in each run")
    p.add_argument("--no-s3", action="store_true", help="file replicas only (no moto server)")
    p.add_argument("--workdir", default=None, help="where run directories go (default: the temp directory)")
    p.add_argument("--json", default=None, help="also write the summary to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    tools = Tools.find()
    if not tools.strace:
        print("strace not found: no app kills at a WAL write or sync (apt-get install strace)")
    if not tools.faketime:
        print("libfaketime not found: no clock steps (apt-get install faketime)")
    s3 = None if args.no_s3 else S3Server()
    started, runs = time.monotonic(), []
    try:
        for i in range(args.runs):
            runs.append(run_one(seed + i, args, tools, s3))
            report(runs[-1], args)
    finally:
        if s3:
            s3.stop()
    s = summary(runs, time.monotonic() - started)
    s["tools"] = {"strace": bool(tools.strace), "faketime": bool(tools.faketime)}
    print_summary(s)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)
    return 1 if s["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
