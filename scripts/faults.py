#!/usr/bin/env python3
"""The network fault matrix: each fault of tests/faultproxy.py against replication, restore
and follow on S3 (moto's real server on loopback, the proxy in front of it), and restores
from B2 (b2sdk's simulator) with downloads cut mid-body. Prints one table row per case:

    fault | what ran | result | recovery | lost

    python scripts/faults.py                       # the whole matrix, a 50 MB database
    python scripts/faults.py --mb 1024 --ops restore --faults reset_response   # the 1 GB case
    python scripts/faults.py --mb 1024 --ops restore --faults reset_every_32MB # every response cut at 32 MB
    python scripts/faults.py --outage 60           # faults that last a minute

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

Tracebacks in any log count as a failure. Runs `python -m litesync` from this environment:
to measure another checkout, put its directory first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
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
        from litesync.status import read_status

        st = read_status(self.db)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=50, help="database size in MB (default 50)")
    ap.add_argument("--outage", type=float, default=10.0, help="seconds each fault lasts (default 10)")
    ap.add_argument("--faults", default=",".join(f for f in FAULTS if f != "reset_every_32MB"),
                    help="comma-separated subset of: " + ", ".join(FAULTS))
    ap.add_argument("--ops", default=",".join(OPS) + ",b2", help="comma-separated subset of: replicate, restore, "
                                                                 "follow, b2")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    work = tempfile.mkdtemp(prefix="litesync-faults-")
    bench = Bench(work, args.mb, args.outage)
    rows = []
    failed = False
    try:
        ops = args.ops.split(",")
        for name in args.faults.split(","):
            for op in (o for o in OPS if o in ops):
                t0 = time.monotonic()
                result, recovery, lost = _case(getattr(bench, op), name)
                failed |= not result.startswith("ok")
                rows.append((name, f"{op} S3", result, recovery, lost))
                print(f"# {name} / {op}: {result} ({time.monotonic() - t0:.0f}s)", flush=True)
        if "b2" in ops:
            result, recovery, lost = _case(b2_restore, bench, 0.2)
            failed |= not result.startswith("ok")
            rows.append(("reset_response (20% of downloads cut)", "restore B2 (simulator)", result, recovery, lost))
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"# kept {work}")
    print(f"\n{args.mb} MB database, faults of {args.outage:g}s\n")
    print("| fault | what ran | result | recovery | lost |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    threading.current_thread().name = "faults"
    sys.exit(main())
