#!/usr/bin/env python3
"""A soak run: does the agent's use of memory, file descriptors, threads, spool and WAL
stay bounded over an hour of writes, kills, outages, snapshots, compaction and retention?

    python scripts/soak.py --minutes 62 --json soak.json       # the long run
    python scripts/soak.py --seconds 30 --sample-every 3 --kill-every 12 \\
        --outage-every 8 --outage 2-3 --snapshot-interval 5s ...  # a quick one (the smoke test)

What runs, all on loopback:
- a writer process committing ``--rate`` transactions a second: 1 to 3 inserts of
  incompressible 1 KiB blobs each, an update of a random row in 30% of them, a delete of a
  random row in 15%, and the oldest rows deleted past ``--max-rows`` (the database
  reaches a steady size, about 1.4 KiB a row);
- ``litesync replicate`` as a real process, to S3 (moto's server) through the fault proxy
  of tests/faultproxy.py, with short snapshot, compaction, retention and validation
  intervals so that each runs many times;
- every ``--kill-every`` seconds (drawn from a range) the agent is killed with SIGKILL and
  started again; every ``--outage-every`` seconds the network fails for ``--outage``
  seconds (blackhole, every request reset, connections refused, or 30% of responses cut).

Every ``--sample-every`` seconds (60) one row is printed: the agent's RSS, open file
descriptors, threads and CPU share (from /proc/PID), the spool's bytes and objects and the
state directory's bytes (``.NAME-litesync/``), the WAL's bytes, the replica's objects and
bytes (listed directly, not through the proxy), the replication lag from ``litesync
status``, and the writer's transactions. A sample that fails prints one line and the row
goes on without that figure.

At the end the writer stops, the network heals, the agent catches up and is stopped with
SIGTERM (which must exit 0), and ``litesync restore`` rebuilds the database from the
replica: it must equal the writer's final content and pass ``PRAGMA integrity_check``.
Then, per agent lifetime, each series' start, middle and end, slope, and the means of its
first, middle and last third; a series is flagged when it grows through a lifetime (every step
up) or its last third is above its middle third (the first is warm-up) by more than a
tolerance in most lifetimes, or when
its value at the end of each lifetime keeps rising across lifetimes. Spool, WAL and lag
are judged on calm samples only (no fault in the interval or the minute before), since an
outage fills them by design.

Exit status: 0 when the restore is exact, no agent died on its own, no log has a traceback
and nothing is flagged; 1 otherwise; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

ENV = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITESYNC_", "B2_"))}
ENV.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
BUCKET = "soak"
PREFIX = "app"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Network faults (proxy mode and parameters) an outage draws from.
FAULTS = {
    "blackhole": ("blackhole", {}),
    "reset": ("reset_request", {"after": 1}),
    "refuse": ("refuse", {}),
    "cut30": ("reset_response", {"p": 0.3}),
}
# Series judged for growth: (key, unit, tolerance: a rise smaller than this is noise, calm samples only).
SERIES = (
    ("rss_mib", "MiB", 4.0, False),
    ("fds", "", 4, False),
    ("threads", "", 2, False),
    ("spool_mib", "MiB", 8.0, True),
    ("state_mib", "MiB", 8.0, True),
    ("wal_mib", "MiB", 4.0, True),
    ("wal_live_mib", "MiB", 4.0, True),
    ("lag_s", "s", 5.0, True),
)
COLUMNS = (  # key, heading, format
    ("minute", "min", "{:5.1f}"), ("life", "life", "{:4d}"), ("age_s", "age s", "{:5.0f}"),
    ("rss_mib", "rss MiB", "{:7.1f}"), ("fds", "fds", "{:4d}"), ("threads", "thr", "{:4d}"),
    ("cpu_pct", "cpu%", "{:5.1f}"), ("spool_mib", "spool MiB", "{:9.2f}"), ("spool_objects", "spool obj", "{:9d}"),
    ("state_mib", "state MiB", "{:9.2f}"), ("wal_mib", "wal MiB", "{:7.2f}"), ("wal_live_mib", "wal live", "{:8.2f}"),
    ("db_mib", "db MiB", "{:6.1f}"), ("replica_objects", "rep obj", "{:7d}"), ("replica_mib", "rep MiB", "{:7.1f}"),
    ("generations", "gens", "{:4d}"), ("replica_snapshots", "snaps", "{:5d}"), ("lag_s", "lag s", "{:6.2f}"),
    ("tx", "tx", "{:8d}"), ("tx_s", "tx/s", "{:5.0f}"), ("harness_mib", "harness MiB", "{:11.1f}"),
    ("events", "events", "{}"),
)


# -- the writer (its own process: ``soak.py --writer DB``) ----------------------------------

def writer_main(db: str, rate: float, seed: int, max_rows: int, progress: str) -> int:
    """Commit the soak's mix until SIGTERM; keep ``progress`` holding "transactions lock-waits"."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rng = random.Random(seed)
    conn = sqlite3.connect(db, isolation_level=None, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, tx INTEGER, payload BLOB)")
    conn.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER)")
    conn.execute("INSERT OR IGNORE INTO counter VALUES (1, 0)")
    n = conn.execute("SELECT n FROM counter").fetchone()[0]
    rows = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    start, done, slow, last = time.monotonic(), 0, 0, 0.0
    while not stop.is_set():
        t0 = time.monotonic()
        rows += _one_tx(conn, n + 1, rng, max_rows, rows)
        n, done = n + 1, done + 1
        slow += time.monotonic() - t0 > 1.0
        if time.monotonic() - last >= 1.0:
            _write_atomic(progress, f"{n} {slow}\n")
            last = time.monotonic()
        delay = start + done / rate - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        elif delay < -1.0:  # starved of CPU: go on at the rate from here, not in a burst to catch up
            start -= delay
    _write_atomic(progress, f"{n} {slow}\n")
    conn.close()
    return 0


def _one_tx(conn: sqlite3.Connection, n: int, rng: random.Random, max_rows: int, rows: int) -> int:
    """Commit transaction ``n``; return how many rows it added (negative: removed)."""
    conn.execute("BEGIN IMMEDIATE")
    added = rng.randint(1, 3)
    conn.executemany("INSERT INTO items (tx, payload) VALUES (?, ?)",
                     [(n, rng.randbytes(1024)) for _ in range(added)])
    lo, hi = conn.execute("SELECT min(id), max(id) FROM items").fetchone()
    if rng.random() < 0.30:
        conn.execute("UPDATE items SET tx = ?, payload = ? WHERE id = (SELECT id FROM items WHERE id >= ? "
                     "ORDER BY id LIMIT 1)", (n, rng.randbytes(1024), rng.randint(lo, hi)))
    if rng.random() < 0.15:
        added -= conn.execute("DELETE FROM items WHERE id = (SELECT id FROM items WHERE id >= ? ORDER BY id "
                              "LIMIT 1)", (rng.randint(lo, hi),)).rowcount
    if rows + added > max_rows:
        added -= conn.execute("DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY id LIMIT ?)",
                              (rows + added - max_rows,)).rowcount
    conn.execute("UPDATE counter SET n = ? WHERE id = 1", (n,))
    conn.execute("COMMIT")
    return added


def _write_atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# -- what a sample reads ----------------------------------------------------------------

def proc_figures(pid: int) -> dict:
    """RSS (MiB), threads, open descriptors and CPU seconds of a live process, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "VmRSS":
                out["rss_mib"] = int(value.split()[0]) / 1024
            elif key == "Threads":
                out["threads"] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return out


def wal_live_bytes(db: str) -> int:
    """Bytes of the WAL that hold frames of the current WAL (mxFrame of the wal-index header in
    ``-shm``); the file itself keeps its largest size until a checkpoint truncates it."""
    try:
        with open(db + "-shm", "rb") as f:
            head = f.read(24)
    except FileNotFoundError:
        return 0
    if len(head) < 24:
        return 0
    page_size, = struct.unpack("=H", head[14:16])
    frames, = struct.unpack("=I", head[16:20])
    page_size = 65536 if page_size == 1 else page_size
    return 32 + frames * (24 + page_size) if frames else 0


def tree_size(path: str, suffix: str = "") -> tuple[int, int]:
    """Bytes and number of the files under ``path`` whose names end with ``suffix``."""
    size = count = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            if name.endswith(suffix):
                try:
                    size += os.lstat(os.path.join(dirpath, name)).st_size
                    count += 1
                except FileNotFoundError:
                    pass  # shipped and removed while we looked
    return size, count


def parse_range(text: str) -> tuple[float, float]:
    """"30" or "20-60" (seconds) as (low, high)."""
    low, _, high = text.partition("-")
    try:
        lo, hi = float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not seconds or a range of seconds: {text!r}") from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"not a range of positive seconds: {text!r}")
    return lo, hi


# -- the run ----------------------------------------------------------------------------

class Soak:
    """The S3 server, the proxy, the writer and the agent, and the schedule of kills and outages."""

    def __init__(self, args: argparse.Namespace, work: str) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.db = os.path.join(work, "app.db")
        self.log = os.path.join(work, "agent.log")
        self.progress = os.path.join(work, "writer.progress")
        self.samples: list[dict] = []
        self.events: list[str] = []  # since the last sample
        self.lifetimes: list[dict] = []  # pid, start, end, how it ended
        self.faults: list[tuple[float, float, str]] = []  # (start, end, name) in run seconds
        self.agent: subprocess.Popen | None = None
        self.writer: subprocess.Popen | None = None
        self._start_store()

    def _start_store(self) -> None:
        import boto3
        from moto.server import ThreadedMotoServer

        from faultproxy import FaultProxy

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.proxy = FaultProxy((host, port), seed=self.args.seed)
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                               aws_access_key_id="test", aws_secret_access_key="test")
        self.s3.create_bucket(Bucket=BUCKET)

    def url(self, direct: bool) -> str:
        endpoint = self.endpoint if direct else self.proxy.url
        return f"s3://{BUCKET}/{PREFIX}?endpoint={endpoint}&region=us-east-1&force-path-style=true"

    def write_config(self) -> str:
        a = self.args
        lines = [f"snapshot-interval: {a.snapshot_interval}", f"retention: {a.retention}",
                 f"retention-check-interval: {a.retention_check_interval}", f"compaction: {a.compaction}",
                 f"spool-max-size: {a.spool_max_size}", "shutdown-timeout: 120s"]
        if a.validation_interval != "off":
            lines.append(f"validation-interval: {a.validation_interval}")
        lines += ["dbs:", f"  - path: {self.db}", "    replicas:", f"      - url: {self.url(direct=False)}"]
        path = os.path.join(self.work, "litesync.yml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    # -- processes ----------------------------------------------------------------------

    def start_writer(self) -> None:
        cmd = [sys.executable, os.path.abspath(__file__), "--writer", self.db, "--rate", str(self.args.rate),
               "--seed", str(self.args.seed), "--max-rows", str(self.args.max_rows)]
        self.writer = subprocess.Popen(cmd, env=ENV)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.progress):  # the database exists once the writer reports
            if self.writer.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"soak: the writer did not start (exit {self.writer.poll()})")
            time.sleep(0.05)

    def start_agent(self, now: float) -> None:
        with open(self.log, "ab") as out:
            out.write(f"--- soak: agent lifetime {len(self.lifetimes) + 1} at {now:.1f}s\n".encode())
            out.flush()
            program = [self.args.agent_wrapper] if self.args.agent_wrapper else ["-m", "litesync"]
            env = {**ENV, **dict(kv.split("=", 1) for kv in self.args.agent_env)}
            self.agent = subprocess.Popen([sys.executable, *program, "--config", self.config, "replicate"],
                                          stdout=out, stderr=out, env=env, cwd=self.work)
        self.lifetimes.append({"life": len(self.lifetimes) + 1, "pid": self.agent.pid, "start_s": round(now, 1),
                               "log_offset": os.path.getsize(self.log)})

    def end_agent(self, now: float, how: str, sig: int = signal.SIGKILL, timeout: float = 60) -> int:
        """Signal the agent and reap it; return its exit code."""
        assert self.agent is not None
        if self.agent.poll() is None:
            self.agent.send_signal(sig)
        try:
            code = self.agent.wait(timeout)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            code = self.agent.wait()
            how += f" (no exit within {timeout:.0f}s: killed)"
        self.lifetimes[-1].update(end_s=round(now, 1), ended=how, exit=code)
        return code

    # -- the schedule -------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        self.config = self.write_config()
        self.start_writer()
        t0 = time.monotonic()
        self.start_agent(0.0)
        duration = a.seconds or a.minutes * 60
        next_sample = a.sample_every
        next_kill = self.rng.uniform(*a.kill_every)
        next_outage = self.rng.uniform(*a.outage_every)
        outage_end = None
        self.prev_cpu: dict[int, tuple[float, float]] = {}
        self.prev_tx = (0.0, 0)
        while (now := time.monotonic() - t0) < duration:
            if self.agent is not None and self.agent.poll() is not None:  # died on its own: a bug
                code = self.agent.returncode
                self.lifetimes[-1].update(end_s=round(now, 1), ended=f"exited by itself ({code})", exit=code)
                self.note(f"AGENT EXITED {code}")
                self.start_agent(now)
            if outage_end is not None and now >= outage_end:
                self.proxy.set("pass")
                self.faults[-1] = (self.faults[-1][0], now, self.faults[-1][2])
                self.note("net ok")
                outage_end = None
                next_outage = now + self.rng.uniform(*a.outage_every)
            elif outage_end is None and now >= next_outage:
                outage_end = now + self.start_outage(now)
            if now >= next_kill:
                self.end_agent(now, "SIGKILL")
                self.note("kill -9")
                time.sleep(a.restart_delay)
                self.start_agent(time.monotonic() - t0)
                next_kill = now + self.rng.uniform(*a.kill_every)
            if now >= next_sample:
                self.take_sample(now)
                next_sample += a.sample_every
            time.sleep(0.2)
        if outage_end is not None:
            self.proxy.set("pass")
            self.faults[-1] = (self.faults[-1][0], time.monotonic() - t0, self.faults[-1][2])
        self.take_sample(time.monotonic() - t0)
        self.elapsed = time.monotonic() - t0

    def start_outage(self, now: float) -> float:
        """Begin a network fault; return how long it lasts."""
        name = self.rng.choice([f for f in self.args.faults.split(",")])
        mode, params = FAULTS[name]
        self.proxy.set(mode, **params)
        length = self.rng.uniform(*self.args.outage)
        self.faults.append((now, now + length, name))
        self.note(f"net {name} {length:.0f}s")
        return length

    def note(self, event: str) -> None:
        self.events.append(event)

    # -- samples ------------------------------------------------------------------------

    def take_sample(self, now: float) -> None:
        row: dict = {"t": round(now, 1), "minute": round(now / 60, 2), "life": len(self.lifetimes),
                     "age_s": round(now - self.lifetimes[-1]["start_s"], 1)}
        errors = []
        for name, read in (("agent", self._agent_figures), ("disk", self._disk_figures),
                           ("replica", self._replica_figures), ("lag", self._lag), ("writer", self._writer_figures),
                           ("harness", self._harness)):
            try:
                row.update(read(now))
            except Exception as e:  # one bad sample must not end the soak
                errors.append(f"{name}: {type(e).__name__}: {e}")
        since = now - self.args.sample_every
        faulted = [f for f in self.faults if f[1] > since - self.args.calm_after and f[0] < now]
        row["calm"] = not faulted
        row["net"] = ",".join(sorted({f[2] for f in faulted})) or "ok"
        row["events"] = "; ".join(self.events)
        row["errors"] = errors
        self.events = []
        self.samples.append(row)
        print(format_row(row), flush=True)
        for e in errors:
            print(f"# sample at {now:.0f}s: {e}", flush=True)

    def _agent_figures(self, now: float) -> dict:
        assert self.agent is not None
        pid = self.agent.pid
        f = proc_figures(pid)
        prev = self.prev_cpu.get(pid)
        self.prev_cpu = {pid: (now, f["cpu_seconds"])}
        if prev is None:  # a new agent: its share since it started
            prev = (self.lifetimes[-1]["start_s"], 0.0)
        f["cpu_pct"] = 100 * (f["cpu_seconds"] - prev[1]) / max(now - prev[0], 1e-3)
        return f

    def _disk_figures(self, _now: float) -> dict:
        from litesync.layout import state_dir_for

        state = state_dir_for(self.db)
        spool_bytes, spool_objects = tree_size(os.path.join(state, "spool"))
        state_bytes, _ = tree_size(state)
        wal = self.db + "-wal"
        return {"spool_mib": spool_bytes / 2**20, "spool_objects": spool_objects, "state_mib": state_bytes / 2**20,
                "wal_mib": (os.path.getsize(wal) if os.path.exists(wal) else 0) / 2**20,
                "wal_live_mib": wal_live_bytes(self.db) / 2**20, "db_mib": os.path.getsize(self.db) / 2**20}

    def _replica_figures(self, _now: float) -> dict:
        from litesync import layout

        count = size = snapshots = merged = 0
        gens = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX + "/"):
            for o in page.get("Contents", []):
                count, size = count + 1, size + o["Size"]
                name = layout.parse_key(o["Key"][len(PREFIX) + 1:])
                if name is not None:
                    gens.add(name.generation)
                    snapshots += isinstance(name, layout.SnapshotName)
                    merged += isinstance(name, layout.SegmentName) and name.last_seq != name.first_seq
        return {"replica_objects": count, "replica_mib": size / 2**20, "generations": len(gens),
                "replica_snapshots": snapshots, "replica_merged_segments": merged}

    def _lag(self, _now: float) -> dict:
        from litesync.status import read_statuses

        st = read_statuses([self.db], fresh=1.0)[0]
        reps = st.get("replicas") or []
        if st.get("stale") or not reps or reps[0].get("lag_seconds") is None:
            return {}
        return {"lag_s": float(reps[0]["lag_seconds"])}

    def _writer_figures(self, now: float) -> dict:
        with open(self.progress) as f:
            tx, slow = (int(x) for x in f.read().split())
        prev_t, prev_tx = self.prev_tx
        self.prev_tx = (now, tx)
        return {"tx": tx, "tx_s": (tx - prev_tx) / max(now - prev_t, 1e-3), "writer_slow_commits": slow}

    def _harness(self, _now: float) -> dict:
        return {"harness_mib": proc_figures(os.getpid())["rss_mib"]}

    # -- the end --------------------------------------------------------------------------

    def finish(self) -> dict:
        """Stop the writer, let the agent catch up and stop, restore and compare."""
        from dbcheck import content_digest, integrity

        out: dict = {"ok": False}
        self.proxy.set("pass")
        assert self.writer is not None
        self.writer.send_signal(signal.SIGTERM)
        out["writer_exit"] = self.writer.wait(60)
        with open(self.progress) as f:
            out["writer_tx"] = int(f.read().split()[0])
        t0 = time.monotonic()
        out["caught_up_s"] = self._wait_caught_up(self.args.catch_up_timeout)
        end = time.monotonic() - t0 + self.elapsed
        out["agent_exit"] = self.end_agent(end, "SIGTERM at the end", signal.SIGTERM, timeout=180)
        out["stop_s"] = round(time.monotonic() - t0, 1)
        restored = os.path.join(self.work, "restored.db")
        r = subprocess.run([sys.executable, "-m", "litesync", "restore", "-o", restored, self.url(direct=True)],
                           capture_output=True, text=True, env=ENV, timeout=600)
        out["restore_exit"] = r.returncode
        out["restore_output"] = (r.stdout + r.stderr).strip()[-2000:]
        if r.returncode == 0:
            out["integrity"] = integrity(restored)
            out["same_content"] = content_digest(restored) == content_digest(self.db)
            out["restored_tx"] = _counter(restored)
            out["ok"] = (out["integrity"] == "ok" and out["same_content"] and out["restored_tx"] == out["writer_tx"]
                         and out["agent_exit"] == 0)
        return out

    def _wait_caught_up(self, timeout: float) -> float | None:
        """Seconds until the replica's lag is 0 (None: not within ``timeout``)."""
        from litesync.status import read_statuses

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                st = read_statuses([self.db], fresh=1.0)[0]
                reps = st.get("replicas") or []
                if not st.get("stale") and reps and reps[0].get("lag_seconds") == 0 and not reps[0].get("lag_bytes"):
                    return round(time.monotonic() - t0, 1)
            except Exception as e:  # keep waiting
                print(f"# status: {type(e).__name__}: {e}", flush=True)
            time.sleep(0.5)
        return None

    def log_counts(self) -> None:
        """Tracebacks and ERROR lines in each lifetime's part of the agent log."""
        with open(self.log, "rb") as f:
            raw = f.read()
        offsets = [lt["log_offset"] for lt in self.lifetimes] + [len(raw)]
        for lt, a, b in zip(self.lifetimes, offsets, offsets[1:]):
            part = raw[a:b].decode(errors="replace")
            lines = part.splitlines()
            lt["tracebacks"] = part.count("Traceback")
            lt["error_lines"] = sum(" ERROR " in line for line in lines)
            lt["snapshots"] = sum(": snapshot " in line and " written " in line for line in lines)
            lt["validations_ok"] = sum("validation ok:" in line for line in lines)
            lt["validations_failed"] = [line for line in lines if "validation failed:" in line]
            lt["retention_runs"] = sum("retention deleted" in line for line in lines)

    def close(self) -> None:
        for p in (self.writer, self.agent):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        self.proxy.close()
        self.server.stop()


def _counter(path: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT n FROM counter").fetchone()[0]
    finally:
        conn.close()


# -- the report -------------------------------------------------------------------------

def format_row(row: dict) -> str:
    cells = []
    for key, heading, fmt in COLUMNS:
        width = max(len(heading), len(fmt.format(0)) if key != "events" else 0)
        value = row.get(key)
        if key == "events":
            text = "; ".join(x for x in (row.get("net") != "ok" and f"[{row['net']}]", value) if x)
        else:
            text = "-" if value is None else fmt.format(value)
        cells.append(text.rjust(width) if key != "events" else text)
    return " | ".join(cells)


def header() -> str:
    cells = []
    for key, heading, fmt in COLUMNS:
        width = max(len(heading), len(fmt.format(0)) if key != "events" else 0)
        cells.append(heading.rjust(width) if key != "events" else heading)
    return " | ".join(cells)


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, value) points."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def summarize(values: list[tuple[float, float]], tolerance: float) -> dict:
    """Start, middle, end, slope and thirds of one series within one lifetime."""
    ys = [v for _, v in values]
    third = max(1, len(ys) // 3)
    first, last = statistics.fmean(ys[:third]), statistics.fmean(ys[-third:])
    middle = statistics.fmean(ys[third:-third]) if len(ys) > 2 * third else first
    steps = [b - a for a, b in zip(ys, ys[1:])]
    return {"n": len(ys), "start": ys[0], "middle": ys[len(ys) // 2], "end": ys[-1], "min": min(ys), "max": max(ys),
            "slope_per_min": slope_per_minute(values), "first_third": first, "middle_third": middle,
            "last_third": last,
            # Against the middle third: the first is warm-up (the first snapshot, validation,
            # compaction and retention all come in it; the hour-long single lifetime rose
            # 73 -> 85 MiB over its first 12 minutes, then held 89.4 MiB in both later thirds).
            "rises": last - middle > tolerance,
            "monotonic": len(ys) >= 4 and all(s >= 0 for s in steps) and ys[-1] - ys[0] > tolerance}


def verdict(samples: list[dict], min_samples: int, warmup: float) -> dict:
    """Per series: each lifetime's summary, the flags, and one word (bounded, GROWS, too few samples).
    Samples of an agent younger than ``warmup`` seconds are left out (it is still starting).
    Spool, WAL and lag (calm samples only) are judged over the whole run: disk state outlives the agent."""
    out = {}
    samples = [s for s in samples if s["age_s"] >= warmup]
    for key, unit, tol, calm_only in SERIES:
        per_life: dict = {}
        for s in samples:
            if s.get(key) is not None and (s["calm"] or not calm_only):
                per_life.setdefault(s["life"], []).append((s["minute"], s[key]))
        per_life = {life: summarize(pts, tol) for life, pts in per_life.items()}
        if calm_only:
            pts = [(s["minute"], s[key]) for s in samples if s.get(key) is not None and s["calm"]]
            judged = {"the whole run": summarize(pts, tol)} if len(pts) >= min_samples else {}
        else:
            judged = {f"life {k}": v for k, v in per_life.items() if v["n"] >= min_samples}
        flags = _flags(judged, unit, tol)
        word = "too few samples" if not judged else ("GROWS" if flags else "bounded")
        out[key] = {"verdict": word, "flags": flags, "lifetimes": per_life, "judged": judged}
    return out


def _flags(judged: dict, unit: str, tol: float) -> list[str]:
    """Why a series looks unbounded: it rose at every sample of a span, its last third is above
    its middle third in most spans, or its peak rose from each lifetime to the next."""
    flags = [f"{k}: every step up, {v['start']:.1f} to {v['end']:.1f}{unit}" for k, v in judged.items()
             if v["monotonic"]]
    rising = [k for k, v in judged.items() if v["rises"]]
    if judged and len(rising) * 2 > len(judged):
        flags.append(f"last third above the middle third by more than {tol}{unit}: {', '.join(rising)}")
    peaks = [v["max"] for v in judged.values()]
    if len(peaks) >= 3 and all(b > a for a, b in zip(peaks, peaks[1:])) and peaks[-1] - peaks[0] > tol:
        flags.append(f"each lifetime's peak above the last: {', '.join(f'{e:.1f}' for e in peaks)}{unit}")
    return flags


def print_report(soak: Soak, result: dict, judged: dict) -> None:
    print("\n# per agent lifetime: start / middle / end (slope per minute); first -> middle -> last third's mean")
    for key, unit, _tol, calm_only in SERIES:
        v = judged[key]
        print(f"{key}{' (calm samples)' if calm_only else ''}: {v['verdict']}")
        spans = [(f"life {life:2d}", s) for life, s in v["lifetimes"].items()]
        spans += [(k, s) for k, s in v["judged"].items() if not k.startswith("life")]
        for name, s in spans:
            print(f"  {name} ({s['n']:2d} samples): {s['start']:.2f} / {s['middle']:.2f} / {s['end']:.2f}"
                  f" ({s['slope_per_min']:+.3f}/min); {s['first_third']:.2f} -> {s['middle_third']:.2f} -> "
                  f"{s['last_third']:.2f}{unit}")
        for flag in v["flags"]:
            print(f"  FLAG {flag}")
    print("\n# agent lifetimes")
    for lt in soak.lifetimes:
        print(f"  life {lt['life']:2d}: pid {lt['pid']}, {lt['start_s']:.0f}s to {lt.get('end_s', 0):.0f}s, "
              f"ended: {lt.get('ended', '?')} (exit {lt.get('exit')}), tracebacks {lt.get('tracebacks')}, "
              f"ERROR lines {lt.get('error_lines')}; snapshots {lt.get('snapshots')}, validations ok "
              f"{lt.get('validations_ok')}, failed {len(lt.get('validations_failed') or [])}, retention deletes "
              f"{lt.get('retention_runs')}")
        for line in (lt.get("validations_failed") or [])[:3]:
            print(f"    {line[:300]}")
    print(f"# faults: {len(soak.faults)}: " + ", ".join(f"{n} at {a:.0f}s for {b - a:.0f}s" for a, b, n in soak.faults))
    print(f"\n# restore: {'OK' if result['ok'] else 'FAILED'}: writer committed {result.get('writer_tx')} "
          f"transactions; caught up {result.get('caught_up_s')}s after it stopped; agent exit "
          f"{result.get('agent_exit')} after SIGTERM ({result.get('stop_s')}s); restore exit "
          f"{result.get('restore_exit')}, integrity {result.get('integrity')!r}, same content "
          f"{result.get('same_content')}, restored transactions {result.get('restored_tx')}")
    if result.get("restore_exit"):
        print(f"# restore said: {result['restore_output']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=62, help="how long the soak runs (default 62)")
    ap.add_argument("--seconds", type=float, default=0, help="or this many seconds (short runs, tests)")
    ap.add_argument("--workdir", help="working directory (default: a new temporary one, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--json", help="write samples, lifetimes, verdict and restore result to this file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=100, help="writer transactions per second (default 100)")
    ap.add_argument("--max-rows", type=int, default=20000, help="rows the writer keeps (default 20000, ~28 MB)")
    ap.add_argument("--sample-every", type=float, default=60, help="seconds between samples (default 60)")
    ap.add_argument("--kill-every", type=parse_range, default=(420, 600),
                    help="seconds between kill -9 of the agent, a range (default 420-600)")
    ap.add_argument("--restart-delay", type=float, default=1.0, help="seconds before the killed agent starts again")
    ap.add_argument("--outage-every", type=parse_range, default=(150, 270),
                    help="seconds from one outage's end to the next's start, a range (default 150-270)")
    ap.add_argument("--outage", type=parse_range, default=(20, 60), help="seconds an outage lasts (default 20-60)")
    ap.add_argument("--faults", default=",".join(FAULTS), help="outage kinds to draw from: " + ", ".join(FAULTS))
    ap.add_argument("--calm-after", type=float, default=60,
                    help="seconds after an outage before samples count as calm (default 60)")
    ap.add_argument("--snapshot-interval", default="2m")
    ap.add_argument("--retention", default="6m")
    ap.add_argument("--retention-check-interval", default="20s")
    ap.add_argument("--compaction", default="10s, 1m")
    ap.add_argument("--validation-interval", default="4m", help="or off (default 4m: runs within each lifetime)")
    ap.add_argument("--spool-max-size", default="64MiB")
    ap.add_argument("--catch-up-timeout", type=float, default=300)
    ap.add_argument("--agent-env", action="append", default=[], metavar="NAME=VALUE",
                    help="set in the agent's environment (repeatable), e.g. MALLOC_ARENA_MAX=2")
    ap.add_argument("--agent-wrapper", metavar="SCRIPT",
                    help="run the agent as `python SCRIPT --config ... replicate` instead of `python -m litesync`")
    ap.add_argument("--warmup", type=float, default=60,
                    help="seconds after an agent starts before its samples are judged (default 60)")
    ap.add_argument("--min-samples", type=int, default=6, help="samples a lifetime needs to be judged (default 6)")
    args = ap.parse_args(argv)
    if any("=" not in kv for kv in args.agent_env):
        ap.error(f"--agent-env takes NAME=VALUE, not {next(kv for kv in args.agent_env if '=' not in kv)!r}")
    unknown = set(args.faults.split(",")) - set(FAULTS)
    if unknown:
        ap.error(f"unknown fault: {sorted(unknown)[0]!r} (known: {', '.join(FAULTS)})")
    return args


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--writer"]:
        w = argparse.ArgumentParser()
        for flag, typ in (("--writer", str), ("--rate", float), ("--seed", int), ("--max-rows", int)):
            w.add_argument(flag, type=typ, required=True)
        wa = w.parse_args()
        return writer_main(wa.writer, wa.rate, wa.seed, wa.max_rows, os.path.join(os.path.dirname(wa.writer),
                                                                                  "writer.progress"))
    args = parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    work = args.workdir or tempfile.mkdtemp(prefix="litesync-soak-")
    os.makedirs(work, exist_ok=True)
    soak = Soak(args, work)
    print(f"# soak: {args.seconds or args.minutes * 60:.0f}s in {work}; writer {args.rate:g} tx/s; agent killed every "
          f"{args.kill_every[0]:g}-{args.kill_every[1]:g}s; outages of {args.outage[0]:g}-{args.outage[1]:g}s every "
          f"{args.outage_every[0]:g}-{args.outage_every[1]:g}s", flush=True)
    print(header(), flush=True)
    try:
        soak.run()
        result = soak.finish()
        soak.log_counts()
    finally:
        soak.close()
    judged = verdict(soak.samples, args.min_samples, args.warmup)
    print_report(soak, result, judged)
    crashed = [lt for lt in soak.lifetimes if "by itself" in lt.get("ended", "")]
    tracebacks = sum(lt.get("tracebacks") or 0 for lt in soak.lifetimes)
    grows = [k for k, v in judged.items() if v["verdict"] == "GROWS"]
    ok = result["ok"] and not crashed and not tracebacks and not grows
    print(f"# verdict: {'OK' if ok else 'FAILED'}; growth flagged: {', '.join(grows) or 'none'}; agents that died "
          f"on their own: {len(crashed)}; tracebacks: {tracebacks}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "samples": soak.samples,
                       "lifetimes": soak.lifetimes, "faults": soak.faults, "verdict": judged, "restore": result,
                       "ok": ok}, f, indent=1, default=str)
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    elif ok is False or args.keep:
        print(f"# kept {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
