#!/usr/bin/env python3
"""What an application that sets no busy timeout sees beside a replication agent.

    python scripts/locks.py [--seconds S] [--rates 200,max] [--runs N] [--litestream [PATH]]
                            [--with-timeout MS] [--no-app]
                            [--speedtest1 PATH [--speedtest1-runs K] [--speedtest1-size N]]
                            [--workdir DIR] [--keep] [--json PATH]
    python scripts/locks.py app DB [--seconds S] [--rate R] [--busy-timeout MS] [--immediate]
                                   [--read-first] [--seed N]

A replication agent that takes SQLite's write lock, even for a few milliseconds, makes a
writer that does not wait for locks fail with `database is locked` (SQLITE_BUSY) when
its write comes inside that window. This measures how often, beside no agent (the
baseline), beside `litesync replicate` and, with --litestream, beside `litestream
replicate` (each a real process, default settings, a local directory replica).

app        The application, in a process of its own: Python's sqlite3 with `timeout=0` (no
           busy handler; --busy-timeout sets one), default synchronous (FULL), each write
           transaction opened by a deferred BEGIN (--immediate: BEGIN IMMEDIATE). It
           inserts 3 rows of 1 KB of random bytes (after a SELECT with --read-first) and,
           every 4th, updates a random earlier row; every 10th transaction is a read
           (count and max) instead.
           At --rate R transactions a second, or as fast as it can (--rate 0). A busy
           failure is counted (with the statement it hit), rolled back and not retried;
           the app carries on with the next transaction. It prints one JSON object:
           commits, failures (writes) and read_failures, and the blocked spans: a run
           of failed writes up to the next write that commits is one span, measured from
           the first failed write's start to that commit's start (at full speed the
           app retries at once, so a span is about how long the lock was held).
trials     For each tool, rate and run: a new WAL database (100 rows), the agent started
           and waited for until its replica holds an object, the app run for --seconds,
           then litesync's own count of its write-lock holds read back with `litesync
           status --json` (seals, seal_seconds, max_seal_seconds; count and total are
           those of the app's run, the longest is the agent's whole life). Litestream
           publishes no such figure: its column shows the app's side only.
           --with-timeout MS adds, at full speed, three apps with that busy timeout:
           BEGIN then a write, BEGIN then a read then a write (SQLite does not call the
           busy handler when a read transaction must become a write transaction), and
           BEGIN IMMEDIATE then a read then a write.
speedtest1 (--speedtest1 PATH) SQLite's test program (test/speedtest1.c in SQLite's
           source tree; it sets no busy timeout and stops at the first SQL error) is run
           --speedtest1-runs times beside each agent, as `PATH --journal wal --size N
           DIR/st.db`. speedtest1 deletes and re-creates its database when it starts, so
           each agent replicates the directory (litesync: a `dir:` entry; Litestream: `dir:`
           with `watch: true`) and picks the database up as it appears, the way it would
           pick up an application's new database. A run fails when speedtest1 exits
           non-zero; the table counts those whose output says `database is locked`.

Prints progress to stderr and the tables to stdout; --json writes every run's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench import (BenchError, Litesync, Litestream, Replica, Tool, find_litestream, reap_children,  # noqa: E402
                   spawn, tail, wait_ready)
from proc import clean_env  # noqa: E402  (bench put tests/ on the path)

SQLITE_BUSY = 5  # the primary result code; extended codes (BUSY_SNAPSHOT, ...) share its low byte
ROW_BYTES = 1024
ROWS_PER_TX = 3
BASE_ROWS = 100
READY_TIMEOUT = 60.0
LOCKED = "database is locked"


@dataclass(frozen=True)
class Variant:
    """How the application opens its write transactions."""

    busy_timeout_ms: int = 0
    immediate: bool = False  # BEGIN IMMEDIATE instead of a deferred BEGIN
    read_first: bool = False  # a SELECT before the first write, in the same transaction

    @property
    def label(self) -> str:
        begin = "BEGIN IMMEDIATE" if self.immediate else "BEGIN"
        return f"busy timeout {self.busy_timeout_ms} ms, {begin}, {'read' if self.read_first else 'write'} first"

    def args(self) -> list[str]:
        return (["--busy-timeout", str(self.busy_timeout_ms)] + ["--immediate"] * self.immediate
                + ["--read-first"] * self.read_first)


NO_TIMEOUT = Variant()


class LocksError(Exception):
    """A run could not be measured; the message says which command or check failed."""


def progress(msg: str) -> None:
    print(f"[locks {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the application -------------------------------------------------------------------------


def make_app_db(path: str) -> None:
    """Create the app's WAL database with BASE_ROWS rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    rng = random.Random(0)
    with conn:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO items (payload) VALUES (?)",
                         [(rng.randbytes(ROW_BYTES),) for _ in range(BASE_ROWS)])
    conn.close()


class App:
    """The application's transactions and what became of them."""

    def __init__(self, db: str, variant: Variant, seed: int) -> None:
        self.conn = sqlite3.connect(db, timeout=variant.busy_timeout_ms / 1000, isolation_level=None)
        self.variant = variant
        self.rng = random.Random(seed)
        self.last_id = self.conn.execute("SELECT max(id) FROM items").fetchone()[0] or 0
        self.commits = self.reads = self.read_failures = 0
        self.failures: dict[str, int] = {}  # statement -> failed writes
        self.stage = ""
        self.spans: list[float] = []
        self._blocked_since: float | None = None

    def write(self, n: int) -> None:
        """Run write transaction ``n``; ``stage`` names the statement under way."""
        # A deferred BEGIN takes no lock: the first statement takes a read snapshot, the
        # first write the write lock (and a busy handler is not called for an upgrade).
        self.stage = "BEGIN"
        self.conn.execute("BEGIN IMMEDIATE" if self.variant.immediate else "BEGIN")
        if self.variant.read_first:
            self.stage = "SELECT"
            self.conn.execute("SELECT max(id) FROM items").fetchone()
        self.stage = "INSERT"
        ids = [self.conn.execute("INSERT INTO items (payload) VALUES (?)", (self.rng.randbytes(ROW_BYTES),)).lastrowid
               for _ in range(ROWS_PER_TX)]
        if n % 4 == 0:
            self.stage = "UPDATE"
            self.conn.execute("UPDATE items SET payload = ? WHERE id = ?",
                              (self.rng.randbytes(ROW_BYTES), self.rng.randint(1, self.last_id)))
        self.stage = "COMMIT"
        self.conn.execute("COMMIT")
        self.last_id = max(i for i in ids if i is not None)

    def transaction(self, n: int) -> None:
        """Run transaction ``n`` (a read every 10th), counting a busy failure and carrying on."""
        started = time.monotonic()
        read = n % 10 == 0
        try:
            if read:
                self.conn.execute("SELECT count(*), max(length(payload)) FROM items").fetchone()
                self.reads += 1
                return
            self.write(n)
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF != SQLITE_BUSY:
                raise
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if read:
                self.read_failures += 1
                return
            self.failures[self.stage] = self.failures.get(self.stage, 0) + 1
            if self._blocked_since is None:
                self._blocked_since = started
            return
        self.commits += 1
        if self._blocked_since is not None:
            self.spans.append(started - self._blocked_since)
            self._blocked_since = None

    def report(self, seconds: float) -> dict:
        failures = sum(self.failures.values())
        return {"seconds": round(seconds, 3), "commits": self.commits, "failures": failures,
                "failures_by_statement": self.failures, "reads": self.reads, "read_failures": self.read_failures,
                "blocked_spans": len(self.spans) + (self._blocked_since is not None),
                "longest_blocked_ms": round(max(self.spans, default=0.0) * 1000, 2),
                "blocked_ms": round(sum(self.spans) * 1000, 2)}


def run_app(db: str, seconds: float, rate: float, variant: Variant = NO_TIMEOUT, seed: int = 1) -> dict:
    """Run the application for ``seconds`` at ``rate`` transactions a second (0: full speed)."""
    app = App(db, variant, seed)
    t0 = time.monotonic()
    end = t0 + seconds
    n = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if rate > 0:
            due = t0 + n / rate
            if due > now:
                time.sleep(min(due, end) - now)
                continue
        n += 1
        app.transaction(n)
    app.conn.close()
    out = app.report(time.monotonic() - t0)
    out.update(rate=rate, **asdict(variant))
    return out


def app_in_process(db: str, seconds: float, rate: float, variant: Variant = NO_TIMEOUT, seed: int = 1) -> dict:
    """Run the application in a process of its own; return its report."""
    cmd = [sys.executable, os.path.abspath(__file__), "app", db, "--seconds", str(seconds), "--rate", str(rate),
           "--seed", str(seed), *variant.args()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, env=clean_env(), check=False)
    if p.returncode != 0:
        raise LocksError(f"the app exited with {p.returncode}: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout)


# --- the agents ------------------------------------------------------------------------------


def seal_figures(db: str) -> dict:
    """The seal figures litesync publishes for ``db`` (``litesync status --json``), once it
    has published a status."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        p = subprocess.run([sys.executable, "-m", "litesync", "status", "--json", db], capture_output=True,
                           text=True, timeout=60, env=clean_env(), check=False)
        try:
            st = json.loads(p.stdout)["dbs"][0]
        except (ValueError, KeyError, IndexError):
            raise LocksError(f"litesync status --json {db}: exit code {p.returncode}: {p.stderr.strip()}") from None
        if st["published"]:
            break
        if time.monotonic() > deadline:
            raise LocksError(f"litesync status --json {db}: no status published within {READY_TIMEOUT:.0f}s")
        time.sleep(0.1)
    if "seals" not in st:
        raise LocksError(f"litesync status --json {db}: no seal figures in {sorted(st)}")
    return {k: st[k] for k in ("seals", "seal_seconds", "max_seal_seconds", "wal_truncations", "checkpoints")}


def start_agent(tool: Tool, db: str, replica: Replica, log: str) -> subprocess.Popen:
    """Start continuous replication of ``db`` and wait until the replica holds an object."""
    agent = spawn(tool.replicate(db, replica), log, cwd=os.path.dirname(db))
    wait_ready(tool, agent, lambda: replica.has_objects(None), "shipped nothing", log, READY_TIMEOUT)
    return agent


def stop_agent(tool: Tool, agent: subprocess.Popen, log: str) -> None:
    """SIGTERM the agent; it must still have been running (a crash spoils the run)."""
    if agent.poll() is not None:
        raise LocksError(f"{tool.name} exited during the run with {agent.returncode}: {tail(log)}")
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=60)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()


def dir_config(tool: Tool, dbdir: str, replica_dir: str) -> str:
    """A config that replicates each *.db that appears in ``dbdir``, for ``tool``."""
    if isinstance(tool, Litestream):
        # Litestream scans a directory once at start unless told to watch it.
        return "\n".join(["dbs:", f"  - dir: {json.dumps(dbdir)}", '    pattern: "*.db"', "    watch: true",
                          "    replica:", "      type: file", f"      path: {json.dumps(replica_dir)}"]) + "\n"
    return tool.dir_config(dbdir, replica_dir)


def start_dir_agent(tool: Tool, d: str, log: str) -> subprocess.Popen:
    """Start ``tool`` on the (empty) directory ``d``/dbs; wait until it says it watches it."""
    dbdir, replica_dir, config = os.path.join(d, "dbs"), os.path.join(d, "replica"), os.path.join(d, "agent.yml")
    os.makedirs(dbdir)
    os.makedirs(replica_dir)
    with open(config, "w") as f:
        f.write(dir_config(tool, dbdir, replica_dir))
    agent = spawn(tool.replicate_config(config), log, cwd=d)
    line = "found databases in directory" if isinstance(tool, Litestream) else "replicating the databases matching"
    wait_ready(tool, agent, lambda: line in open(log, errors="replace").read(), "did not start", log, READY_TIMEOUT)
    return agent


# --- the measurements ------------------------------------------------------------------------


class Locks:
    def __init__(self, args: argparse.Namespace, work: str, tools: dict[str, Tool | None]) -> None:
        self.args, self.work, self.tools = args, work, tools
        self.trials: list[dict] = []
        self.speedtest1: list[dict] = []
        self.failed = False

    def cases(self) -> list[tuple[float, Variant]]:
        """(rate, variant) of every app measured: busy timeout 0 at each rate; with
        --with-timeout, three ways of opening transactions with that timeout, at full speed."""
        cases = [(rate, NO_TIMEOUT) for rate in self.args.rates]
        if self.args.with_timeout is not None:
            ms = self.args.with_timeout
            cases += [(0.0, Variant(ms)), (0.0, Variant(ms, read_first=True)),
                      (0.0, Variant(ms, immediate=True, read_first=True))]
        return cases

    def trial(self, name: str, tool: Tool | None, rate: float, variant: Variant, run: int) -> dict:
        d = tempfile.mkdtemp(prefix=f"{name.replace(' ', '-')}-", dir=self.work)
        db, log = os.path.join(d, "app.db"), os.path.join(d, "agent.log")
        make_app_db(db)
        agent, before = None, None
        if tool is not None:
            os.makedirs(os.path.join(d, "replica"))
            agent = start_agent(tool, db, Replica("file", os.path.join(d, "replica")), log)
            if isinstance(tool, Litesync):
                before = seal_figures(db)
        try:
            out = app_in_process(db, self.args.seconds, rate, variant, seed=run)
            if before is not None:
                after = seal_figures(db)
                out["agent"] = {**after, "seals": after["seals"] - before["seals"],
                                "seal_seconds": round(after["seal_seconds"] - before["seal_seconds"], 6)}
            if agent is not None:
                stop_agent(tool, agent, log)  # type: ignore[arg-type]  # agent implies tool
        finally:
            reap_children()
        return out

    def measured(self, label: str, measure: Callable[[], dict]) -> dict | None:
        """Run one measurement; one that fails is reported, left out and fails the command."""
        try:
            return measure()
        except (LocksError, BenchError, sqlite3.Error, OSError, ValueError, subprocess.TimeoutExpired) as e:
            self.failed = True
            progress(f"{label}: FAILED to measure: {e}")
            return None

    def app_trials(self) -> None:
        for rate, variant in self.cases():
            for name, tool in self.tools.items():
                for run in range(1, self.args.runs + 1):
                    label = f"{name}, app at {rate_label(rate)} ({variant.label}), run {run}"
                    out = self.measured(label, partial(self.trial, name, tool, rate, variant, run))
                    if out is not None:
                        self.trials.append({"tool": name, "rate": rate, "run": run, **out})
                        progress(f"{label}: {out['commits']} commits, {out['failures']} failures")

    def speedtest1_run(self, name: str, tool: Tool | None, run: int) -> dict:
        d = tempfile.mkdtemp(prefix=f"speedtest1-{name.replace(' ', '-')}-", dir=self.work)
        log = os.path.join(d, "agent.log")
        agent = start_dir_agent(tool, d, log) if tool is not None else None
        dbdir = os.path.join(d, "dbs")
        os.makedirs(dbdir, exist_ok=True)
        db = os.path.join(dbdir, "st.db")
        try:
            p = subprocess.run([self.args.speedtest1, "--journal", "wal", "--size", str(self.args.speedtest1_size),
                                db], capture_output=True, text=True, timeout=1800, check=False)
            # speedtest1 prints each test's name on stdout, then its time; a fatal SQL error
            # goes to stderr in place of the time.
            last = (p.stdout.splitlines() or [""])[-1]
            error = (p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[0]
            res = {"tool": name, "run": run, "exit_code": p.returncode, "locked": LOCKED in p.stderr,
                   "failed_at": last.split("...")[0].strip() if p.returncode else "",
                   "error": error if p.returncode else ""}
            if isinstance(tool, Litesync) and agent is not None and os.path.exists(db):
                res["agent"] = seal_figures(db)
            if agent is not None:
                stop_agent(tool, agent, log)  # type: ignore[arg-type]  # agent implies tool
        finally:
            reap_children()
        return res

    def speedtest1_runs(self) -> None:
        for name, tool in self.tools.items():
            for run in range(1, self.args.speedtest1_runs + 1):
                label = f"speedtest1 beside {name}, run {run}"
                res = self.measured(label, partial(self.speedtest1_run, name, tool, run))
                if res is not None:
                    self.speedtest1.append(res)
                    verdict = f"failed: {res['error']} (at {res['failed_at']})" if res["exit_code"] else "ok"
                    progress(f"{label}: {verdict}")

    def tables(self) -> str:
        out = [trials_table(self.trials)]
        if self.trials:
            out.append(summary_table(self.trials, list(self.tools), self.cases()))
        if self.speedtest1:
            out.append(speedtest1_table(self.speedtest1, list(self.tools), self.args.speedtest1_size))
        return "\n\n".join(out)


def rate_label(rate: float) -> str:
    return "full speed" if rate == 0 else f"{rate:g} tx/s"


def per_10k(failures: int, commits: int) -> str:
    return f"{failures * 10000 / commits:.1f}" if commits else "-"


def seals_cell(agent: dict | None) -> str:
    if not agent:
        return "n/a"
    return (f"{agent['seals']} / {agent['seal_seconds'] * 1000:.1f} ms / "
            f"{agent['max_seal_seconds'] * 1000:.1f} ms")


def app_label(t: dict) -> str:
    return f"{rate_label(t['rate'])}, {Variant(t['busy_timeout_ms'], t['immediate'], t['read_first']).label}"


def trials_table(trials: list[dict]) -> str:
    head = ("tool", "app", "run", "commits", "failures", "per 10,000 commits", "failure rate",
            "blocked spans", "longest span ms", "seals / total / longest (litesync)")
    rows = [head, tuple("---" for _ in head)]
    for t in trials:
        attempts = t["commits"] + t["failures"]
        rows.append((t["tool"], app_label(t), str(t["run"]), str(t["commits"]), str(t["failures"]),
                     per_10k(t["failures"], t["commits"]),
                     f"{100 * t['failures'] / attempts:.2f}%" if attempts else "-",
                     str(t["blocked_spans"]), f"{t['longest_blocked_ms']:.1f}", seals_cell(t.get("agent"))))
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def summary_table(trials: list[dict], tools: list[str], cases: list[tuple[float, Variant]]) -> str:
    """Per app, the tools side by side: failures per 10,000 commits, every run."""
    head = ("app", *(f"{tool}: failures per 10,000 commits, each run" for tool in tools))
    rows = [head, tuple("---" for _ in head)]
    for rate, variant in cases:
        cells = []
        for tool in tools:
            runs = [t for t in trials if t["tool"] == tool and t["rate"] == rate
                    and Variant(t["busy_timeout_ms"], t["immediate"], t["read_first"]) == variant]
            cells.append(", ".join(per_10k(t["failures"], t["commits"]) for t in runs) or "-")
        rows.append((f"{rate_label(rate)}, {variant.label}", *cells))
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def speedtest1_table(results: list[dict], tools: list[str], size: int) -> str:
    head = ("tool", f"speedtest1 --size {size} runs failed", "of which `database is locked`", "where",
            "seals / total / longest (litesync, each run)")
    rows = [head, tuple("---" for _ in head)]
    for tool in tools:
        runs = [r for r in results if r["tool"] == tool]
        failed = [r for r in runs if r["exit_code"]]
        where = sorted({r["failed_at"] for r in failed})
        rows.append((tool, f"{len(failed)} of {len(runs)}", str(sum(r["locked"] for r in failed)),
                     "; ".join(where) or "-", ", ".join(seals_cell(r.get("agent")) for r in runs if r.get("agent"))
                     or "n/a"))
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


# --- the command line ------------------------------------------------------------------------


def parse_rates(text: str) -> list[float]:
    rates = []
    for part in text.split(","):
        part = part.strip()
        rate = 0.0 if part in ("max", "0") else float(part)
        if rate < 0:
            raise ValueError(part)
        rates.append(rate)
    return rates


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="how long the app runs in each trial (default 10)")
    p.add_argument("--rates", default="200,max", help="app transactions a second, comma-separated; max: full speed")
    p.add_argument("--runs", type=int, default=3, help="trials per tool and rate (default 3)")
    p.add_argument("--litestream", nargs="?", const="", metavar="PATH",
                   help="also measure beside Litestream (default binary: the one on PATH)")
    p.add_argument("--speedtest1", metavar="PATH", help="also run SQLite's speedtest1 program beside each agent")
    p.add_argument("--speedtest1-runs", type=int, default=6, help="speedtest1 runs per tool (default 6)")
    p.add_argument("--speedtest1-size", type=int, default=100, help="speedtest1's --size (default 100)")
    p.add_argument("--with-timeout", type=int, metavar="MS",
                   help="also measure, at full speed, apps with a busy timeout of MS: BEGIN writing first, "
                        "BEGIN reading first, BEGIN IMMEDIATE reading first")
    p.add_argument("--no-app", action="store_true", help="skip the app trials (speedtest1 only)")
    p.add_argument("--json", help="also write every run's figures to this file")
    p.add_argument("--workdir", help="directory for databases and replicas (default: a new temp directory)")
    p.add_argument("--keep", action="store_true", help="keep the working files")
    args = p.parse_args(argv)
    try:
        args.rates = parse_rates(args.rates)
    except ValueError:
        p.error(f"--rates: not a list of rates (numbers or max): {args.rates!r}")
    if args.runs < 1 or args.speedtest1_runs < 1:
        p.error("--runs and --speedtest1-runs: must be at least 1")
    if args.speedtest1 and not os.access(args.speedtest1, os.X_OK):
        p.error(f"--speedtest1: not an executable: {args.speedtest1!r}")
    return args


def app_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="locks.py app", description="the application alone; prints its report")
    p.add_argument("db")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=0.0, help="transactions a second (0: full speed)")
    p.add_argument("--busy-timeout", type=int, default=0, metavar="MS", help="busy timeout (default 0: none)")
    p.add_argument("--immediate", action="store_true", help="BEGIN IMMEDIATE instead of BEGIN")
    p.add_argument("--read-first", action="store_true", help="read before the first write of each transaction")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    variant = Variant(args.busy_timeout, args.immediate, args.read_first)
    print(json.dumps(run_app(args.db, args.seconds, args.rate, variant, args.seed)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["app"]:
        return app_main(argv[1:])
    args = parse_args(argv)
    tools: dict[str, Tool | None] = {"no agent": None, "litesync": Litesync()}
    version = ""
    if args.litestream is not None:
        binary = find_litestream(args.litestream or None)
        if binary is None:
            print(f"locks: litestream binary not found: {args.litestream or 'on PATH'}", file=sys.stderr)
            return 2
        tools["litestream"] = Litestream(binary)
        version = subprocess.run([binary, "version"], capture_output=True, text=True, check=False).stdout.strip()
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="locks-", dir=args.workdir)
    progress(f"working in {work}; tools: {', '.join(tools)}" + (f" (litestream {version})" if version else ""))
    locks = Locks(args, work, tools)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if not args.no_app:
            locks.app_trials()
        if args.speedtest1:
            locks.speedtest1_runs()
    except KeyboardInterrupt:
        print("locks: interrupted", file=sys.stderr)
        return 130
    finally:
        reap_children()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(locks.tables())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"litestream_version": version, "settings": vars(args), "trials": locks.trials,
                       "speedtest1": locks.speedtest1}, f, indent=2)
    return 1 if locks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
