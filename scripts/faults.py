#!/usr/bin/env python3
"""The fault matrix: each fault of tests/faultproxy.py against replication, restore and
follow on S3 (moto's real server on loopback, the proxy in front of it), restores from B2
(b2sdk's simulator) with downloads cut mid-body, and full disks (real tmpfs mounts, root
only). Prints one table row per case:

    fault | what ran | result | recovery | lost

    python scripts/faults.py                       # the whole matrix, a 50 MB database
    python scripts/faults.py --mb 1024 --ops restore --faults reset_response   # the 1 GB case
    python scripts/faults.py --mb 1024 --ops restore --faults reset_every_32MB # every response cut at 32 MB
    python scripts/faults.py --outage 60           # faults that last a minute
    python scripts/faults.py --ops disk            # the full disks alone (no S3 server)
    python scripts/faults.py --mb 1 --ops slow_store --slow-minutes 5   # a slow store, five minutes

- replicate: an agent replicates through the proxy while a writer commits; the fault lasts
  ``--outage`` seconds in the middle. Recovery: from the end of the fault until the
  replica is within a second of the writer. Lost: committed transactions missing from a
  restore made afterwards (through the proxy with the fault still on for continuous
  faults: a restore right after replication under resets; directly for outages).
- restore: `litesync restore` of the whole database through the proxy. Continuous faults
  (resets of 20% of responses mid-body, latency, a bandwidth cap) last the whole restore;
  outages (blackhole, refuse, reset of every request) begin a second in and last
  ``--outage`` seconds. Recovery: from the end of the outage until the restore completes.
  Lost: whether the output differs from the source (content of every table,
  integrity_check).
- follow: a follower reads through the proxy while the agent (direct) ships a writer's
  commits; the fault lasts ``--outage`` seconds. Recovery: from the end of the fault until
  the follower's output equals the source.
- b2: b2sdk's simulator runs in this process, so its faults are made at its boundary
  (tests/test_faults.py's FlakyDownloads and B2Faults): a restore with 20% of downloads
  cut mid-body; replication (an agent in this process) while 70% of upload requests fail
  (half after the upload was kept) or every request is refused for ``--outage`` seconds
  (recovery: until the replica is within a second of the writer; the result says when the
  status showed failed); a restore that begins while B2 refuses everything.
- deadline: `restore --timeout` with the store blackholed mid-restore past the deadline
  (the result is the exit code, the time and the error line; recovery column: how long
  after the deadline it stopped), and for ``--outage`` seconds inside a deadline three
  times as long (it must wait, say so once, and complete exact).
- slow_store: the proxy holds each answer 300 ms and the link to 1 MB/s while a writer
  commits 500 tx/s of incompressible 3 kB rows (about twice what the link carries) for
  ``--slow-minutes``, the spool bounded by ``--slow-spool``. Result: the writer's longest
  commit (and, for comparison, the same writer's alone on this machine, up to a minute),
  the largest WAL and spool seen, the spool warnings and bridging snapshots. Recovery: from
  the writer's end until the replica has everything. Lost: transactions missing from a
  restore made afterwards.

- disk (``--disks``), each disk full for ``--outage`` seconds, then freed:
  spool_full: the agent's spool (a small disk mounted on the state directory) under a
  writer; replica_full: a file replica's disk under a writer. Recovery: from the space
  freed until the agent copies again and the replica is within a second of the writer.
  Lost: committed transactions missing from a restore made afterwards. The error lines
  of the agent's log are counted (one is the aim). database_disk_full: an application
  that updates in place on a small disk that another file fills, alone and with an agent
  beside it (the spool shares the disk, as by default); database_disk_grown: one that
  inserts until it fills its disk itself, then stops before the space is freed. What the
  application saw is in the result: commits failed (the aim: none more than alone).
  Recovery: from the space freed until the agent copies again. Lost: whether a restore
  differs from the database.

Tracebacks in any log count as a failure. Runs `python -m litesync` from this environment:
to measure another checkout, put its directory first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from dbcheck import committed_prefix, content_digest, integrity  # noqa: E402
from litesync.progress import plural  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from test_faults import make_database  # noqa: E402

FAULTS = {  # name: (proxy mode, parameters, continuous during a restore)
    "blackhole": ("blackhole", {}, False),
    "refuse": ("refuse", {}, False),
    "reset_request": ("reset_request", {"after": 1}, False),
    "reset_response": ("reset_response", {"p": 0.2}, True),
    "reset_every_32MB": ("reset_response", {"after": 32 << 20}, True),  # not in the default matrix
    "latency": ("latency", {"seconds": 0.3}, True),
    "bandwidth": ("bandwidth", {"rate": 1 << 20}, True),
}
OPS = ("replicate", "restore", "follow")
DISKS = ("spool_full", "replica_full", "database_disk_full", "database_disk_grown")
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITESYNC_", "B2_"))}
ENV.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
for _k in [k for k in os.environ if k.startswith("AWS_")]:  # this process's own boto3 clients too
    del os.environ[_k]
os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
WORKLOAD = os.path.join(HERE, "..", "tests", "workload.py")


def litesync(*args: str, log: str) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "litesync", *args], stdout=out, stderr=out, env=ENV)


def url(endpoint: str, bucket: str) -> str:
    return f"s3://{bucket}/app?endpoint={endpoint}&region=us-east-1&force-path-style=true"


def wait_for(pred, timeout: float, interval: float = 0.1) -> float | None:  # noqa: ANN001
    """Seconds until ``pred()`` held, or None after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(interval)
    return None


def tracebacks(*logs: str) -> int:
    n = 0
    for log in logs:
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                n += f.read().count("Traceback")
    return n


class Bench:
    def __init__(self, work: str, megabytes: int, outage: float) -> None:
        from moto.server import ThreadedMotoServer

        import boto3

        self.work = work
        self.outage = outage
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.proxy = FaultProxy((host, port), seed=1)
        self.bucket = "faults"
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=self.bucket)
        self.db = os.path.join(work, "app.db")
        t0 = time.monotonic()
        subprocess.run([sys.executable, WORKLOAD, self.db, "--count", "1"], check=True, env=ENV)
        make_database(self.db, megabytes)
        self.writes = 1  # transactions of tests/workload.py committed so far
        agent = self.agent(direct=True)
        self.stop(agent)
        print(f"# {os.path.getsize(self.db) / 1e6:.0f} MB database, replicated in {time.monotonic() - t0:.1f}s",
              flush=True)

    def agent(self, direct: bool = False) -> subprocess.Popen:
        log = os.path.join(self.work, "agent.log")
        start = os.path.getsize(log) if os.path.exists(log) else 0
        p = litesync("replicate", self.db, url(self.endpoint if direct else self.proxy.url, self.bucket), log=log)

        def ready() -> bool:
            with open(log, errors="replace") as f:
                f.seek(start)
                return "up to date" in f.read()

        if wait_for(ready, 600) is None:
            raise SystemExit("the agent did not start")
        return p

    @staticmethod
    def stop(p: subprocess.Popen) -> int:
        p.terminate()
        return p.wait(120)

    def writer(self, count: int, rate: int) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, WORKLOAD, self.db, "--count", str(count), "--rate", str(rate),
                              "--seed", str(self.writes)], env=ENV)
        self.writes += count
        return p

    def fault(self, name: str) -> None:
        mode, params, _ = FAULTS[name]
        self.proxy.set(mode, **params)

    def lag(self) -> float:
        from litesync.status import read_statuses

        # Asked for: the status file is rewritten unasked only when a state changes, so the
        # lag it holds can be as old as the last change (a slow link changes no state).
        st = read_statuses([self.db], fresh=1.0)[0]
        reps = st.get("replicas") or [{}]
        return float("inf") if reps[0].get("lag_seconds") is None else reps[0]["lag_seconds"]

    def restore_check(self, out: str, through_proxy: bool) -> int:
        """Restore the latest state (through the proxy, with whatever fault it has, or
        directly); return the transactions of tests/workload.py it holds."""
        endpoint = self.proxy.url if through_proxy else self.endpoint
        r = subprocess.run([sys.executable, "-m", "litesync", "restore", "-o", out, url(endpoint, self.bucket)],
                           capture_output=True, text=True, env=ENV)
        if r.returncode:
            raise RuntimeError(f"the restore after replication failed: {r.stderr.strip()}")
        return committed_prefix(out)

    # -- the three operations -------------------------------------------------------------

    def replicate(self, name: str) -> tuple[str, str, str]:
        self.proxy.set("pass")
        agent = self.agent()
        writer = self.writer(count=int((self.outage + 6) * 50), rate=50)
        time.sleep(2)
        self.fault(name)
        time.sleep(self.outage)
        self.proxy.set("pass")
        recovered = wait_for(lambda: self.lag() <= 1.0, 120)
        writer.wait()
        code = self.stop(agent)
        out = os.path.join(self.work, f"check-{name}.db")
        # A continuous fault stays on for the restore after the replication it troubled.
        continuous = FAULTS[name][2]
        if continuous:
            self.fault(name)
        k = self.restore_check(out, through_proxy=continuous)
        self.proxy.set("pass")
        os.unlink(out)
        lost = self.writes - k
        tb = tracebacks(os.path.join(self.work, "agent.log"))
        result = "ok" if code == 0 and not lost and not tb else f"FAILED (exit {code}, {tb} tracebacks)"
        return result, _seconds(recovered), f"{lost} transactions"

    def restore(self, name: str) -> tuple[str, str, str]:
        out = os.path.join(self.work, f"restore-{name}.db")
        log = os.path.join(self.work, f"restore-{name}.log")
        continuous = FAULTS[name][2]
        self.proxy.set("pass")
        if continuous:
            self.fault(name)
        cuts = self.proxy.counts["cut"]
        t0 = time.monotonic()
        p = litesync("restore", "-o", out, url(self.proxy.url, self.bucket), log=log)
        healed = t0
        if not continuous:
            # Slowed to about 4 s for the whole database, so the outage begins mid-restore.
            self.proxy.set("bandwidth", rate=max(1 << 20, os.path.getsize(self.db) // 4))
            time.sleep(1)
            self.fault(name)
            time.sleep(self.outage)
            self.proxy.set("pass")
            healed = time.monotonic()
        code = p.wait(3600)
        took = time.monotonic() - healed
        self.proxy.set("pass")
        if code:
            return f"FAILED (exit {code})", "-", "-"
        same = content_digest(out) == content_digest(self.db) and integrity(out) == "ok"
        os.unlink(out)
        tb = tracebacks(log)
        result = "ok" if same and not tb else f"FAILED ({tb} tracebacks)"
        cut = self.proxy.counts["cut"] - cuts
        note = f" (whole restore, {cut} responses cut)" if continuous else ""
        return result, f"{took:.1f}s{note}", "nothing" if same else "DIFFERS"

    def follow(self, name: str) -> tuple[str, str, str]:
        out = os.path.join(self.work, f"follow-{name}.db")
        log = os.path.join(self.work, f"follow-{name}.log")
        self.proxy.set("pass")
        follower = litesync("restore", "--follow", "--interval", "200ms", "-o", out,
                            url(self.proxy.url, self.bucket), log=log)
        agent = self.agent(direct=True)

        def same() -> bool:
            try:
                return os.path.exists(out) and content_digest(out) == content_digest(self.db)
            except sqlite3.Error:
                return False

        if wait_for(same, 600, 0.5) is None:
            return "FAILED (never caught up before the fault)", "-", "-"
        writer = self.writer(count=int((self.outage + 4) * 50), rate=50)
        time.sleep(2)
        self.fault(name)
        time.sleep(self.outage)
        self.proxy.set("pass")
        healed = time.monotonic()
        writer.wait()
        self.stop(agent)
        caught = wait_for(same, 120, 0.2)
        took = None if caught is None else time.monotonic() - healed
        self.stop(follower)
        tb = tracebacks(log)
        result = "ok" if caught is not None and not tb else f"FAILED ({tb} tracebacks)"
        if os.path.exists(out):
            os.unlink(out)
        return result, _seconds(took), "nothing" if caught is not None else "not caught up"

    def close(self) -> None:
        self.proxy.close()
        self.server.stop()


def _case(run, *args) -> tuple[str, str, str]:  # noqa: ANN001, ANN002
    """Run one case; an exception is its result (the other cases still run)."""
    try:
        return run(*args)
    except Exception as e:  # reported in the table
        return f"FAILED ({type(e).__name__}: {e})", "-", "-"


class DiskBench:
    """The full disks: small tmpfs mounts (tests/smalldisk.py) filled with a ballast file
    for ``outage`` seconds, under real writer and agent processes."""

    def __init__(self, work: str, outage: float) -> None:
        self.work = work
        self.outage = outage

    def _dir(self, name: str) -> str:
        path = os.path.join(self.work, name)
        os.makedirs(path)
        return path

    @staticmethod
    def _agent(db: str, url: str, log: str) -> subprocess.Popen:
        p = litesync("replicate", db, url, log=log)
        if wait_for(lambda: "up to date" in open(log, errors="replace").read(), 120) is None:
            raise RuntimeError("the agent did not start")
        return p

    @staticmethod
    def _error_lines(log: str) -> int:
        with open(log, errors="replace") as f:
            return sum(" ERROR " in line for line in f)

    @staticmethod
    def _copying(db: str) -> bool:
        """True when the agent copies again and its replica is within a second of the writer."""
        from litesync.status import read_statuses

        st = read_statuses([db], fresh=1.0)[0]
        reps = st.get("replicas") or [{}]
        at = (st.get("copied_through") or {}).get("at") or 0
        return (st.get("state") == "replicating" and time.time() - at <= 1.0
                and reps[0].get("state") != "failed" and (reps[0].get("lag_seconds") or 0) <= 1.0)

    def _under_a_writer(self, name: str, full: str) -> tuple[str, str, str]:
        """A writer and an agent replicating to a directory; the ``full`` disk (the spool's
        or the replica's) full for the outage in the middle."""
        from smalldisk import SmallDisk

        work = self._dir(name)
        db, rep, log = (os.path.join(work, n) for n in ("app.db", "rep", "agent.log"))
        subprocess.run([sys.executable, WORKLOAD, db, "--count", "1"], check=True, env=ENV)
        disk = SmallDisk(os.path.join(work, ".app.db-litesync") if full == "spool" else rep, "4m")
        try:
            agent = self._agent(db, f"file://{rep}", log)
            count = int((self.outage + 6) * 50)
            writer = subprocess.Popen([sys.executable, WORKLOAD, db, "--count", str(count), "--rate", "50",
                                       "--seed", "2"], env=ENV)
            time.sleep(2)
            disk.fill()
            time.sleep(self.outage)
            disk.free()
            recovered = wait_for(lambda: self._copying(db), 120)
            writer.wait()
            code = Bench.stop(agent)
            out = os.path.join(work, "restored.db")
            r = subprocess.run([sys.executable, "-m", "litesync", "restore", "-o", out, f"file://{rep}"],
                               capture_output=True, text=True, env=ENV)
            if r.returncode:
                raise RuntimeError(f"the restore failed: {r.stderr.strip()}")
            lost = 1 + count - committed_prefix(out)
        finally:
            disk.unmount()
        tb, lines = tracebacks(log), self._error_lines(log)
        ok = code == 0 and not lost and not tb and recovered is not None
        result = f"{'ok' if ok else 'FAILED'} (exit {code}, {plural(lines, 'error line')}, {tb} tracebacks)"
        return result, _seconds(recovered), f"{lost} transactions"

    def spool_full(self) -> tuple[str, str, str]:
        return self._under_a_writer("spool_full", "spool")

    def replica_full(self) -> tuple[str, str, str]:
        return self._under_a_writer("replica_full", "replica")

    def _app(self, name: str, with_litesync: bool, grow: bool) -> tuple[str, str, str]:
        from smalldisk import SmallDisk
        from test_disk_faults import run_app_through_a_full_disk

        out = run_app_through_a_full_disk(os.path.join(self.work, name), with_litesync, self.outage, grow=grow,
                                          mount=SmallDisk, disk_size="16m" if grow else "24m")
        app = out["app"]
        if grow:  # the app fills its disk: it fails, with litesync or without; how soon is the measure
            saw = f"{app['commits_before_first_error']} commits before its first error"
        else:
            saw = f"{app['errors']} of {app['commits'] + app['errors']} commits failed"
        if not with_litesync:
            return f"ok (app alone: {saw})", "-", "-"
        tb, lines = tracebacks(out["log"]), self._error_lines(out["log"])
        ok = out["agent_exit"] == 0 and out["restore_same"] and not tb and (grow or not app["errors"])
        result = (f"{'ok' if ok else 'FAILED'} (app: {saw}; litesync: exit {out['agent_exit']}, "
                  f"{plural(lines, 'error line')}, {tb} tracebacks)")
        # No recovery when the agent never paused (its spool and the WAL reused their room).
        recovery = _seconds(out["recovery"]) if "recovery" in out else "not paused"
        return result, recovery, "nothing" if out["restore_same"] else "DIFFERS"

    def database_disk_full(self) -> list[tuple[str, str, str, str]]:
        return [("database_disk_full", "app updating in place, alone", *self._app("full-alone", False, False)),
                ("database_disk_full", "app updating in place + replicate file",
                 *self._app("full-with", True, False))]

    def database_disk_grown(self) -> list[tuple[str, str, str, str]]:
        return [("database_disk_grown", "app inserting, alone", *self._app("grown-alone", False, True)),
                ("database_disk_grown", "app inserting + replicate file", *self._app("grown-with", True, True))]

    def rows(self, names: list[str]) -> list[tuple[str, str, str, str]]:
        """The table rows of the disk cases ``names`` (a case that cannot run says why)."""
        from smalldisk import MountRefused, SmallDisk

        probe = self._dir("probe")
        try:
            SmallDisk(probe, "1m").unmount()
        except (MountRefused, OSError) as e:
            return [(name, "-", f"skipped: {e}", "-", "-") for name in names]
        rows: list[tuple[str, str, str, str, str]] = []
        for name in names:
            t0 = time.monotonic()
            if name in ("spool_full", "replica_full"):
                what = f"replicate file, writer at 50 tx/s, {'spool' if name == 'spool_full' else 'replica'} 4 MB"
                rows.append((name, what, *_case(getattr(self, name))))
            else:
                try:
                    rows += [(f, w, *rest) for f, w, *rest in getattr(self, name)()]
                except Exception as e:  # reported in the table
                    rows.append((name, "-", f"FAILED ({type(e).__name__}: {e})", "-", "-"))
            print(f"# {name}: {rows[-1][2]} ({time.monotonic() - t0:.0f}s)", flush=True)
        return rows


def _seconds(t: float | None) -> str:
    return "never" if t is None else f"{t:.1f}s"


def b2_restore(bench: Bench, p: float) -> tuple[str, str, str]:
    """Copy the S3 replica's objects into b2sdk's simulator; restore from it in this process
    with a share ``p`` of downloads cut mid-body (the simulator has no network to break)."""
    import boto3
    from b2sdk.v2 import B2Api, B2HttpApiConfig, InMemoryAccountInfo, InMemoryCache, RawSimulator

    from litesync.replica.b2 import B2ReplicaClient
    from litesync.restore import restore_any
    from test_faults import FlakyDownloads
    from conftest import replica_cfg

    api = B2Api(InMemoryAccountInfo(), cache=InMemoryCache(), api_config=B2HttpApiConfig(_raw_api_class=RawSimulator))
    key_id, key = api.session.raw_api.create_account()
    api.authorize_account("production", key_id, key)
    bucket = api.create_bucket("faults", "allPrivate")
    s3 = boto3.client("s3", endpoint_url=bench.endpoint, region_name="us-east-1")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bench.bucket, Prefix="app/"):
        for o in page.get("Contents", []):
            bucket.upload_bytes(s3.get_object(Bucket=bench.bucket, Key=o["Key"])["Body"].read(), o["Key"])
    client = B2ReplicaClient(replica_cfg(type="b2", name="b2", bucket="faults", path="app"), api=api)
    flaky = FlakyDownloads(api.session.raw_api, p=p)
    out = os.path.join(bench.work, "restore-b2.db")
    t0 = time.monotonic()
    restore_any([client], out)
    took = time.monotonic() - t0
    same = content_digest(out) == content_digest(bench.db) and integrity(out) == "ok"
    os.unlink(out)
    return ("ok" if same else "FAILED"), f"{took:.1f}s (whole restore, {flaky.cut} cuts)", \
        "nothing" if same else "DIFFERS"


def _simulator():  # noqa: ANN202
    """b2sdk's simulator, authorized, with the bucket tests/test_faults.py's B2 helpers use."""
    from b2sdk.v2 import B2Api, B2HttpApiConfig, InMemoryAccountInfo, InMemoryCache, RawSimulator

    api = B2Api(InMemoryAccountInfo(), cache=InMemoryCache(), api_config=B2HttpApiConfig(_raw_api_class=RawSimulator))
    key_id, key = api.session.raw_api.create_account()
    api.authorize_account("production", key_id, key)
    api.create_bucket("litesync-test", "allPrivate")
    return api


class _Tracebacks(logging.Handler):
    """Counts log records of this process that carry a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += bool(record.exc_info) or "Traceback" in record.getMessage()


def b2_replicate(bench: Bench, name: str) -> tuple[str, str, str]:
    """An agent (in this process, where the simulator is) replicates to B2 while a writer
    commits 50 tx/s; for ``--outage`` seconds in the middle, 70% of upload requests fail
    (``uploads``: half after the upload was kept) or every request is refused (``outage``).
    Recovery: from the fault's end until the replica is within a second of the writer."""
    from test_faults import B2Faults, b2_replication, b2_restore_exact, replica_state, synced

    api = _simulator()
    work = os.path.join(bench.work, f"b2-{name}")
    os.makedirs(work)
    db = os.path.join(work, "app.db")
    subprocess.run([sys.executable, WORKLOAD, db, "--count", "1"], check=True, env=ENV)
    count = int((bench.outage + 6) * 50)
    faults = B2Faults(api.session.raw_api)
    tracebacks = _Tracebacks()
    logging.getLogger().addHandler(tracebacks)
    try:
        with b2_replication(db, api) as runner:
            if wait_for(lambda: synced(replica_state(runner)), 60) is None:
                return "FAILED (never up to date before the fault)", "-", "-"
            writer = subprocess.Popen([sys.executable, WORKLOAD, db, "--count", str(count), "--rate", "50",
                                       "--seed", "2"], env=ENV)
            time.sleep(2)
            t0 = time.monotonic()
            if name == "outage":
                faults.down = True
            else:
                faults.upload_p = 0.7
            shown = wait_for(lambda: replica_state(runner)["state"] == "failed", bench.outage)
            time.sleep(max(0.0, bench.outage - (time.monotonic() - t0)))
            faults.down, faults.upload_p = False, 0.0
            recovered = wait_for(lambda: replica_state(runner)["lag_seconds"] <= 1.0, 120)
            errors = replica_state(runner)["errors"]
            writer.wait()
            wait_for(lambda: synced(replica_state(runner)), 120)
        out = os.path.join(work, "out.db")
        same = b2_restore_exact(api, db, out)
        lost = count + 1 - committed_prefix(out)
    finally:
        logging.getLogger().removeHandler(tracebacks)
    ok = same and not lost and recovered is not None and not tracebacks.count
    seen = (f"failed shown after {shown:.1f}s" if shown is not None else "never shown as failed") + \
        f", {errors} failed uploads; {faults.counts}"
    result = ("ok" if ok else f"FAILED ({tracebacks.count} tracebacks)") + f" ({seen})"
    return result, _seconds(recovered), f"{lost} transactions" + ("" if same else " (DIFFERS)")


def b2_restore_outage(bench: Bench) -> tuple[str, str, str]:
    """A restore from B2 begins while B2 refuses every request and goes on for ``--outage``
    seconds. Recovery: from B2's return until the restore is done."""
    import threading

    from test_faults import B2Faults, b2_replication, b2_restore_exact, replica_state, synced

    api = _simulator()
    work = os.path.join(bench.work, "b2-restore-outage")
    os.makedirs(work)
    db = os.path.join(work, "app.db")
    subprocess.run([sys.executable, WORKLOAD, db, "--count", "200"], check=True, env=ENV)
    with b2_replication(db, api) as runner:
        wait_for(lambda: synced(replica_state(runner)), 60)
    faults = B2Faults(api.session.raw_api)
    faults.down = True
    healed: list[float] = []
    threading.Timer(bench.outage, lambda: (setattr(faults, "down", False), healed.append(time.monotonic()))).start()
    same = b2_restore_exact(api, db, os.path.join(work, "out.db"))
    took = time.monotonic() - healed[0] if healed else None
    return ("ok" if same else "FAILED") + f" ({faults.counts['refused']} requests refused)", _seconds(took), \
        "nothing" if same else "DIFFERS"


def deadline(bench: Bench, name: str) -> tuple[str, str, str]:
    """``restore --timeout``: the store goes silent mid-restore for longer than the deadline
    (``past``: the restore must stop by the deadline plus a request's timeout, with one line,
    writing nothing), or for ``--outage`` seconds inside a deadline three times as long
    (``inside``: it must wait and complete, exact)."""
    out = os.path.join(bench.work, f"deadline-{name}.db")
    log = os.path.join(bench.work, f"deadline-{name}.log")
    limit = 10.0 if name == "past" else 3 * bench.outage + 30
    bench.proxy.set("bandwidth", rate=max(1 << 20, os.path.getsize(bench.db) // 4))
    t0 = time.monotonic()
    p = litesync("restore", "--timeout", f"{limit:g}s", "-o", out, url(bench.proxy.url, bench.bucket), log=log)
    wait_for(lambda: os.path.exists(out + ".tmp"), 30)  # the download is under way
    bench.proxy.set("blackhole")
    if name == "past":
        code = p.wait(600)
        took = time.monotonic() - t0
        bench.proxy.set("pass")
        text = open(log, errors="replace").read()
        last = text.strip().splitlines()[-1] if text.strip() else ""
        ok = (code == 1 and took < limit + 8 and last.startswith("litesync: error: restore timed out after")
              and not os.path.exists(out) and not os.path.exists(out + ".tmp") and "Traceback" not in text)
        result = ("ok" if ok else f"FAILED (exit {code})") + f": exit {code} after {took:.1f}s: {last}"
        return result, f"{took - limit:+.1f}s past the {limit:g}s deadline", \
            "nothing written" if not os.path.exists(out) else "OUTPUT WRITTEN"
    time.sleep(bench.outage)
    bench.proxy.set("pass")
    healed = time.monotonic()
    code = p.wait(600)
    took = time.monotonic() - healed
    text = open(log, errors="replace").read()
    same = code == 0 and content_digest(out) == content_digest(bench.db) and integrity(out) == "ok"
    ok = same and text.count("waiting for the store") == 1 and "Traceback" not in text
    if os.path.exists(out):
        os.unlink(out)
    said = text.count("waiting for the store")
    result = ("ok" if ok else f"FAILED (exit {code})") + f" (deadline {limit:g}s, waiting said {said}x)"
    return result, f"{took:.1f}s", "nothing" if same else "DIFFERS"


def slow_store(bench: Bench, minutes: float, spool_max: str) -> tuple[str, str, str, str]:
    """A slow store (300 ms before each answer, 1 MB/s) under a writer at 500 tx/s of rows
    it cannot keep up with, for ``minutes``; the writer alone first, for its own figures."""
    import boto3

    from test_faults import slow_store as run

    seconds = minutes * 60
    rows = ("--row-size", "1000", "--incompressible")
    alone = os.path.join(bench.work, "alone.db")
    waits = os.path.join(bench.work, "alone.txt")
    subprocess.run([sys.executable, WORKLOAD, alone, "--seconds", str(min(seconds, 60)), "--rate", "500",
                    "--max-wait-log", waits, *rows], check=True, env=ENV)
    alone_longest, _, alone_done = open(waits).read().split()
    alone = f"{float(alone_longest) * 1000:.0f} ms at {int(alone_done) / min(seconds, 60):.0f}/s"
    os.unlink(os.path.join(bench.work, "alone.db"))
    work = os.path.join(bench.work, "slow")
    os.makedirs(work)
    bucket = "slow-store"
    boto3.client("s3", endpoint_url=bench.endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    m = run(bench.proxy, bench.endpoint, bucket, work, seconds=seconds, spool_max=spool_max, rate=1 << 20,
            writer=rows, env=ENV, catch_up_timeout=3600)
    ok = (m.locked == 0 and m.catch_up is not None and m.same and m.restored == m.transactions
          and not m.tracebacks)
    result = ("ok" if ok else f"FAILED ({m.tracebacks} tracebacks)") + (
        f": {m.transactions} tx in {m.seconds:.0f}s ({m.transactions / m.seconds:.0f}/s), longest commit "
        f"{m.longest_commit * 1000:.0f} ms (the writer alone: {alone}), {m.locked} locked, the agent held the "
        f"write lock at most {m.max_seal * 1000:.0f} ms; WAL at most {m.max_wal / 1e6:.1f} MB "
        f"({m.max_wal_at:.0f}s in); spool at most {m.max_segments / 1e6:.1f} MB of segments, "
        f"{m.max_spool / 1e6:.1f} MB with the snapshot; {m.spool_warnings} spool warning(s), "
        f"{m.bridges} bridging snapshots, {m.errors} error lines")
    lost = f"{m.transactions - m.restored} transactions" + ("" if m.same else " (content DIFFERS)")
    what = f"replicate S3, writer 500 tx/s x {minutes:g} min, spool-max-size {spool_max}"
    return result, f"{_seconds(m.catch_up)} after the writer stopped", lost, what


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=50, help="database size in MB (default 50)")
    ap.add_argument("--outage", type=float, default=10.0, help="seconds each fault lasts (default 10)")
    ap.add_argument("--faults", default=",".join(f for f in FAULTS if f != "reset_every_32MB"),
                    help="comma-separated subset of: " + ", ".join(FAULTS))
    ap.add_argument("--ops", default=",".join(OPS) + ",b2,deadline,slow_store,disk",
                    help="comma-separated subset of: replicate, restore, follow, b2, deadline, slow_store, disk")
    ap.add_argument("--disks", default=",".join(DISKS), help="comma-separated subset of: " + ", ".join(DISKS))
    ap.add_argument("--slow-minutes", type=float, default=3.0, help="slow_store: minutes of writing (default 3)")
    ap.add_argument("--slow-spool", default="32MiB", help="slow_store: the spool-max-size (default 32MiB)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    args = ap.parse_args()

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    work = tempfile.mkdtemp(prefix="litesync-faults-")
    ops = args.ops.split(",")
    network = any(op in ops for op in (*OPS, "b2", "deadline", "slow_store"))
    bench = Bench(work, args.mb, args.outage) if network else None
    rows = []
    failed = False
    try:
        for name in args.faults.split(",") if bench is not None else ():
            for op in (o for o in OPS if o in ops):
                t0 = time.monotonic()
                result, recovery, lost = _case(getattr(bench, op), name)
                failed |= not result.startswith("ok")
                rows.append((name, f"{op} S3", result, recovery, lost))
                print(f"# {name} / {op}: {result} ({time.monotonic() - t0:.0f}s)", flush=True)
        if "b2" in ops and bench is not None:
            result, recovery, lost = _case(b2_restore, bench, 0.2)
            failed |= not result.startswith("ok")
            rows.append(("reset_response (20% of downloads cut)", "restore B2 (simulator)", result, recovery, lost))
            for name, fault in (("uploads", f"70% of upload requests reset for {args.outage:g}s"),
                                ("outage", f"every request refused for {args.outage:g}s")):
                result, recovery, lost = _case(b2_replicate, bench, name)
                failed |= not result.startswith("ok")
                rows.append((fault, "replicate B2 (simulator)", result, recovery, lost))
            result, recovery, lost = _case(b2_restore_outage, bench)
            failed |= not result.startswith("ok")
            rows.append((f"every request refused for the first {args.outage:g}s", "restore B2 (simulator)", result,
                         recovery, lost))
            print("# b2: done", flush=True)
        if "deadline" in ops:
            for name, fault in (("past", "blackhole past restore --timeout 10s"),
                                ("inside", f"blackhole for {args.outage:g}s inside restore --timeout")):
                result, recovery, lost = _case(deadline, bench, name)
                failed |= not result.startswith("ok")
                rows.append((fault, "restore S3", result, recovery, lost))
                print(f"# deadline / {name}: {result}", flush=True)
        if "slow_store" in ops:
            t0 = time.monotonic()
            try:
                result, recovery, lost, what = slow_store(bench, args.slow_minutes, args.slow_spool)
            except Exception as e:  # reported in the table
                result, recovery, lost, what = f"FAILED ({type(e).__name__}: {e})", "-", "-", "replicate S3"
            failed |= not result.startswith("ok")
            rows.append(("slow store: 300 ms latency + 1 MB/s", what, result, recovery, lost))
            print(f"# slow store: {result} ({time.monotonic() - t0:.0f}s)", flush=True)
        if "disk" in ops:
            disk_rows = DiskBench(os.path.join(work, "disk"), args.outage).rows(args.disks.split(","))
            failed |= any(row[2].startswith("FAILED") for row in disk_rows)
            rows += disk_rows
    finally:
        if bench is not None:
            bench.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"# kept {work}")
    print(f"\n{f'{args.mb} MB database, ' if bench is not None else ''}faults of {args.outage:g}s\n")
    print("| fault | what ran | result | recovery | lost |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    threading.current_thread().name = "faults"
    sys.exit(main())
