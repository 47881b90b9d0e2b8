"""Operations: `litesync status`, `litesync verify`, periodic validation, Prometheus metrics,
progress display and labelled logging, on real agent processes and real SQLite files."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request

import pytest

from proc import free_port, kill9, litesync, run_writer, start_agent_ready, start_writer, stop, wait_for
from litesync.logs import JsonFormatter, Labelled
from litesync.metrics import render
from litesync.progress import LogProgress, format_progress, format_rate, format_size, plural, terminal_printer
from litesync.status import caught_up, read_status


def write_config(tmp_path, extra: str = "", replicas: str = "") -> str:
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"compaction: off\n{extra}dbs:\n  - path: app.db\n    replicas:\n"
                   f"      - url: file://{tmp_path}/rep\n{replicas}")
    return str(cfg)


def status_json(cfg: str, *dbs: str) -> tuple[int, list[dict]]:
    r = litesync("--config", cfg, "status", "--json", *dbs)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)["dbs"]


def published(cfg: str, pred) -> dict:
    """Wait until the published status of the one database satisfies ``pred``; return it."""
    seen: list[dict] = []

    def check() -> bool:
        seen[:] = status_json(cfg)[1]
        return seen[0]["published"] and pred(seen[0])

    wait_for(check, timeout=30, interval=0.2)
    return seen[0]


def scrape(port: int) -> dict[str, float]:
    """GET /metrics; return {'name{labels}': value} for every sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


# --- litesync status ----------------------------------------------------------------------


def test_an_idle_agent_writes_no_status_yet_status_shows_it_alive_and_current(tmp_path):
    """The status file is rewritten on a change, not as time passes: the heartbeat in the
    process's control directory shows the agent alive, and `litesync status` asks for the
    counters that move with each commit."""
    from litesync.runner import PUBLISH_INTERVAL
    from litesync.status import read_status, status_path

    db = str(tmp_path / "app.db")
    cfg = write_config(tmp_path)
    run_writer(db, "--count", "5")
    agent = start_agent_ready("--config", cfg, log_path=str(tmp_path / "agent.log"))
    try:
        st = published(cfg, lambda s: s["replicas"][0]["state"] == "completed")
        assert os.path.isdir(st["control"]) and os.path.basename(st["control"]) == f".litesync-control-{agent.pid}"
        time.sleep(0.5)
        before = os.stat(status_path(db)).st_mtime_ns
        time.sleep(2 * PUBLISH_INTERVAL)
        assert os.stat(status_path(db)).st_mtime_ns == before  # nothing changed: nothing written
        st = read_status(db)
        assert st["running"] and not st["stale"] and st["age_seconds"] < PUBLISH_INTERVAL + 1
        transactions = st["transactions"]
        run_writer(db, "--count", "7")
        _, (st,) = status_json(cfg)  # asks the agent for a fresh status
        assert st["transactions"] >= transactions + 7
    finally:
        assert stop(agent) == 0
    assert not os.path.exists(st["control"])  # removed by the agent on its way out
    assert read_status(db)["stale"]


def test_status_of_a_live_agent_then_of_a_killed_one(tmp_path):
    db = str(tmp_path / "app.db")
    cfg = write_config(tmp_path)
    run_writer(db, "--count", "5")
    never = str(tmp_path / "other.db")
    code, (st,) = status_json(cfg, never)
    assert code == 1 and not st["running"] and not st["published"]

    log = str(tmp_path / "agent.log")
    agent = start_agent_ready("--config", cfg, log_path=log)
    try:
        run_writer(db, "--count", "20", "--rate", "200")
        st = published(cfg, lambda s: s["replicas"][0]["state"] == "completed"
                       and s["replicas"][0]["uploaded_objects"] >= 2 and s["transactions"] >= 20)
        assert st["running"] and not st["stale"] and st["state"] == "replicating" and st["pid"] == agent.pid
        gen = os.listdir(tmp_path / "rep" / "generations")
        rep = st["replicas"][0]
        assert st["generation"] == rep["generation"] and gen == [st["generation"]]
        assert (rep["name"], rep["lag_seconds"], rep["lag_bytes"], rep["last_error"]) == ("file", 0.0, 0, None)
        assert rep["destination"] == str(tmp_path / "rep") and st["spool_bytes"] > 0 and st["last_snapshot_at"]
        code, _ = status_json(cfg)
        assert code == 0
        r = litesync("--config", cfg, "status")
        assert r.returncode == 0, r.stderr
        assert f"{db}: replicating, agent pid {agent.pid}" in r.stdout
        assert re.search(r"^  file +completed +lag 0\.0s, 0 B; shipped \d+ objects", r.stdout, re.M), r.stdout
    finally:
        kill9(agent)
    # The status file outlives a killed agent; the lock does not.
    code, (st,) = status_json(cfg)
    assert code == 1
    assert not st["running"] and st["published"] and st["stale"] and st["state"] == "replicating"
    r = litesync("--config", cfg, "status")
    assert r.returncode == 1
    assert f"{db}: no agent running (last status" in r.stdout and "stale" in r.stdout
    # Without a config and without a database, status cannot know what to look at.
    r = litesync("status", cwd=str(tmp_path / "rep"))
    assert r.returncode == 2 and "no database given" in r.stderr


def test_status_and_metrics_of_a_failing_replica_show_no_secret(tmp_path):
    """A real agent with a healthy replica and one whose S3 endpoint is down: status and
    metrics report both, while the writer runs; no credential appears anywhere."""
    secret = "sEcReT-in-config-9876"
    db = str(tmp_path / "app.db")
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = write_config(tmp_path, f"addr: 127.0.0.1:{port}\n",
                       f"      - type: s3\n        name: offsite\n        bucket: b\n        endpoint: {dead}\n"
                       f"        access-key-id: AKIAEXAMPLE\n        secret-access-key: {secret}\n")
    run_writer(db, "--count", "3")
    log = str(tmp_path / "agent.log")
    agent = start_agent_ready("--config", cfg, "--shutdown-timeout", "1", log_path=log)
    writer = start_writer(db, "--rate", "100", "--seconds", "3")
    try:
        first = scrape(port)
        st = published(cfg, lambda s: s["replicas"][1]["state"] == "failed" and s["replicas"][1]["retries"] >= 1)
        offsite = st["replicas"][1]
        assert offsite["last_error"].startswith("replica offsite (s3://b/ at 127.0.0.1:")
        assert offsite["lag_bytes"] > 0 and offsite["lag_seconds"] > 0 and offsite["uploaded_objects"] == 0
        writer.wait(timeout=60)
        wait_for(lambda: scrape(port)['litesync_transactions_total{db="%s"}' % db] >= 300, timeout=30)
        second = scrape(port)

        def grew(name: str) -> bool:
            key = f'{name}{{db="{db}",replica="file"}}'
            return second[key] > first[key]

        def s3(name: str) -> float:
            return second[f'{name}{{db="{db}",replica="offsite"}}']

        assert grew("litesync_shipped_objects_total") and grew("litesync_shipped_bytes_total")
        assert s3("litesync_shipped_objects_total") == 0
        assert s3("litesync_replica_errors_total") >= 1 and s3("litesync_replica_retries_total") >= 1
        assert s3("litesync_replica_lag_seconds") > 0 and s3("litesync_replica_lag_bytes") > 0
        assert second['litesync_replica_state{db="%s",replica="offsite",state="failed"}' % db] == 1
        assert second[f'litesync_spool_bytes{{db="{db}"}}'] > 0
        assert second[f'litesync_snapshots_total{{db="{db}"}}'] >= 1
        assert f'litesync_snapshot_duration_seconds{{db="{db}"}}' in second
        assert f'litesync_checkpoints_total{{db="{db}"}}' in second
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert e.value.code == 404
        r = litesync("--config", cfg, "status")
        assert r.returncode == 1  # a replica failed
        assert "offsite    failed" in r.stdout and "last error: replica offsite" in r.stdout
        text = r.stdout + json.dumps(st) + json.dumps(second)
    finally:
        stop(writer)
        code = stop(agent)
    assert code == 1  # the S3 replica could not receive everything
    assert secret not in text + open(log).read()


# --- litesync verify and validation-interval -------------------------------------------------


def flip_byte_in_a_segment(replica_dir: str) -> str:
    """Damage the payload of a stored segment; return its key."""
    segs = sorted(os.path.join(root, f) for root, _d, files in os.walk(replica_dir) for f in files
                  if f.endswith(".seg"))
    seg = segs[len(segs) // 2]
    data = bytearray(open(seg, "rb").read())
    data[len(data) // 2] ^= 0x40
    open(seg, "wb").write(bytes(data))
    return os.path.relpath(seg, replica_dir)


def test_verify_healthy_replica_under_writes_behind_and_tampered(tmp_path):
    db = str(tmp_path / "app.db")
    cfg = write_config(tmp_path)
    run_writer(db, "--count", "5")
    agent = start_agent_ready("--config", cfg, log_path=str(tmp_path / "agent.log"))
    writer = start_writer(db, "--rate", "150", "--seconds", "4")
    try:
        # The writer keeps going: the live read and the replica meet at the same position.
        r = litesync("--config", cfg, "verify", db)
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.match(r"ok      file: generation [0-9a-f]{16}, \d+ transactions after the snapshot, \d+ bytes, "
                        r"integrity_check ok, checksum [0-9a-f]{16} equals the live database's$", r.stdout)
        assert "\r" not in r.stderr and "MB/s" not in r.stderr  # no progress line without a terminal
    finally:
        writer.wait(timeout=60)
        assert stop(agent) == 0
    # No agent, nothing written since: the replica holds the latest state.
    url = f"file://{tmp_path}/rep"
    r = litesync("verify", db, url)
    assert r.returncode == 0 and r.stdout.startswith("ok      file:"), r.stdout + r.stderr
    r = litesync("verify", url)  # a replica on its own: restored and checked, nothing to compare
    assert r.returncode == 0 and "no live database to compare with" in r.stdout
    # Written while no agent runs: the live database is ahead of the replica.
    run_writer(db, "--count", "2")
    r = litesync("--config", cfg, "verify", db)
    assert r.returncode == 1
    assert re.search(r"^FAILED  file: the live database \(checksum [0-9a-f]{16}, \d+ pages\) matches no state "
                     r"restored from generation", r.stdout), r.stdout
    assert "no running agent reported it caught up" in r.stdout
    # A damaged object fails the verification and is named.
    key = flip_byte_in_a_segment(str(tmp_path / "rep"))
    r = litesync("verify", url)
    assert r.returncode == 1 and r.stdout.startswith("FAILED  file: ") and key in r.stdout, r.stdout
    r = litesync("--config", cfg, "verify", "--replica", "nope", db)
    assert r.returncode == 2 and "--replica: no replica named 'nope'" in r.stderr


def test_validation_interval_reports_ok_then_the_tampered_object(tmp_path):
    db = str(tmp_path / "app.db")
    cfg = write_config(tmp_path, "validation-interval: 500ms\n")
    run_writer(db, "--count", "5")
    log = str(tmp_path / "agent.log")
    agent = start_agent_ready("--config", cfg, log_path=log)
    try:
        run_writer(db, "--count", "30", "--rate", "200")
        st = published(cfg, lambda s: (s["replicas"][0]["validation"]["last"] or {}).get("ok")
                       and s["transactions"] >= 30)
        assert st["replicas"][0]["validation"]["failed"] == 0
        assert "equals the live database's" in st["replicas"][0]["validation"]["last"]["message"]
        key = flip_byte_in_a_segment(str(tmp_path / "rep"))
        st = published(cfg, lambda s: s["replicas"][0]["validation"]["failed"] >= 1)
        assert key in st["replicas"][0]["validation"]["last"]["message"]
        r = litesync("--config", cfg, "status")
        assert "validation" in r.stdout and key in r.stdout
    finally:
        stop(agent)
    text = open(log).read()
    assert f"{db} -> file: validation ok: generation" in text
    assert re.search(rf"ERROR {re.escape(db)} -> file: validation failed: .*{re.escape(key)}", text)


# --- progress, logging, metrics format (pure) ----------------------------------------------


def test_progress_format():
    assert format_progress(25_000_000, 100_000_000, 2.0) == "25.0 / 100.0 MB (25%), 12.5 MB/s, ETA 6.0s"
    assert format_progress(0, 10, 0.0) == "0 / 10 B (0%), 0 B/s, ETA ?"
    assert format_progress(10_000_000, 10_000_000, 4.0).endswith("2.5 MB/s, done")
    assert format_progress(1_000_000, 2_000_000_000, 1.0).endswith("ETA 33m19s")
    # A small restore: its own unit, never "0.0 / 0.0 MB" or "0 MB/s".
    assert format_progress(20_480, 20_480, 0.004) == "20.5 / 20.5 kB (100%), 5.1 MB/s, done"


@pytest.mark.parametrize("n,text", [(None, "0 B"), (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"),
                                    (999_999, "1.0 MB"), (1_234_567, "1.2 MB"), (5_600_000_000, "5.6 GB"),
                                    (7.8e12, "7.8 TB")])
def test_one_size_format(n, text):
    assert format_size(n) == text


def test_rates_and_counts_read_as_english():
    assert format_rate(2_048, 0.001) == "2.0 MB/s" and format_rate(0, 0.0) == "0 B/s"
    assert format_rate(10, 0.0) == "- B/s"
    assert [plural(n, "generation") for n in (0, 1, 2)] == ["0 generations", "1 generation", "2 generations"]


class FakeTerminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_only_on_a_terminal():
    assert terminal_printer(FakeTerminal(False)) is None
    clock = [0.0]
    out = FakeTerminal(True)
    show = terminal_printer(out, clock=lambda: clock[0])
    for done in (0, 1, 2):
        clock[0] += 0.05
        show(done * 1_000_000, 4_000_000)  # throttled: only the first line is drawn
    clock[0] += 1.0
    show(4_000_000, 4_000_000)
    lines = out.getvalue().split("\r")[1:]
    assert len(lines) == 2 and lines[0].startswith("0.0 / 4.0 MB (0%)")
    assert lines[1].startswith("4.0 / 4.0 MB (100%)") and lines[1].rstrip().endswith("done")
    assert out.getvalue().endswith("\n")


def test_snapshot_progress_is_logged_sparingly(caplog):
    clock = [0.0]
    log = Labelled(logging.getLogger("litesync.agent"), "/d/app.db")
    p = LogProgress(log, "snapshot 1/0", 100_000_000, interval=60, clock=lambda: clock[0])
    caplog.set_level("INFO")
    for step in range(1, 11):
        clock[0] = step * 15.0
        p(step * 10_000_000)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["/d/app.db: snapshot 1/0: 40.0 / 100.0 MB (40%), 666.7 kB/s, ETA 1m30s",
                     "/d/app.db: snapshot 1/0: 80.0 / 100.0 MB (80%), 666.7 kB/s, ETA 30.0s"]
    assert caplog.records[0].db == "/d/app.db"


def test_json_lines_name_db_and_replica(tmp_path):
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "3")
    cfg = write_config(tmp_path, "logging: {format: json}\n")
    r = litesync("--config", cfg, "replicate", "--once")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stderr.splitlines()]
    snap = next(x for x in lines if "snapshot" in x["msg"])
    assert snap["db"] == db and "replica" not in snap and snap["msg"].startswith(f"{db}: snapshot ")
    shipped = next(x for x in lines if "up to date" in x["msg"])
    assert (shipped["db"], shipped["replica"], shipped["msg"]) == (db, "file", f"{db} -> file: up to date")
    record = logging.LogRecord("x", logging.INFO, "f", 1, "plain", None, None)
    assert "db" not in json.loads(JsonFormatter().format(record))


def test_metrics_render_escapes_labels_and_counts():
    st = {"db": 'C:\\a "b"\nc', "spool_bytes": 10, "checkpoints": 2, "snapshots": 1, "snapshot_seconds": 0.25,
          "transactions": 7, "seals": 4, "seal_seconds": 0.0125, "max_seal_seconds": 0.005,
          "replicas": [{"name": "r", "state": "failed", "lag_seconds": 1.5, "lag_bytes": 3, "uploaded_bytes": 4,
                        "uploaded_objects": 5, "errors": 6, "retries": 7, "validation": {"ok": 1, "failed": 0}}]}
    text = render([st])
    labels = '{db="C:\\\\a \\"b\\"\\nc",replica="r"}'
    assert f"litesync_replica_lag_seconds{labels} 1.5\n" in text
    assert f"litesync_replica_errors_total{labels} 6.0\n" in text
    assert 'litesync_snapshot_duration_seconds{db="C:\\\\a \\"b\\"\\nc"} 0.25\n' in text
    assert 'litesync_seals_total{db="C:\\\\a \\"b\\"\\nc"} 4.0\n' in text
    assert 'litesync_seal_max_seconds{db="C:\\\\a \\"b\\"\\nc"} 0.005\n' in text
    assert 'litesync_replica_state{db="C:\\\\a \\"b\\"\\nc",replica="r",state="failed"} 1.0\n' in text
    assert "# TYPE litesync_shipped_bytes_total counter" in text
    assert text.count("\n") == len(text.splitlines())


def test_caught_up_and_unreadable_status(tmp_path):
    assert caught_up((10.0, 5, 3), (5, 3), since=9.0)
    assert not caught_up((10.0, 5, 3), (5, 2), since=9.0)  # the replica lacks segment 2
    assert not caught_up((10.0, 5, 3), (5, 3), since=10.0)  # nothing proves what came after 10.0
    assert caught_up((10.0, 5, 3), (6, 0), since=9.0)  # a newer generation holds it all
    assert not caught_up((10.0, 5, 3), (None, 0), since=9.0)
    db = tmp_path / "app.db"
    state = tmp_path / ".app.db-litesync"
    state.mkdir()
    (state / "status.json").write_text('{"pid": 1, "upd')
    st = read_status(str(db))
    assert not st["running"] and st["stale"] and st["error"].startswith("unreadable status file: ")


def test_addr_is_checked_in_config_and_at_start(tmp_path):
    import socket

    from litesync.config import load_config
    from litesync.errors import ConfigError

    cfg = write_config(tmp_path, "addr: 9090\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert str(e.value) == f"{cfg}:2: addr: expected host:port with a port from 1 to 65535: '9090'"
    cfg = write_config(tmp_path, "validation-interval: 0s\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert str(e.value) == f"{cfg}:2: validation-interval: must be greater than zero: '0s'"
    cfg = write_config(tmp_path, "", "      - type: s3\n        bucket: b\n"
                                     "        endpoint: https://AKIA:s3cr3t@s3.example.com\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert str(e.value).endswith("dbs[0].replicas[1].endpoint: endpoint must not contain credentials "
                                 "(give them as keys or in the environment)")
    assert "s3cr3t" not in str(e.value)
    run_writer(str(tmp_path / "app.db"), "--count", "1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = write_config(tmp_path, f"addr: 127.0.0.1:{port}\n")
        assert load_config(cfg).addr == f"127.0.0.1:{port}"
        r = litesync("--config", cfg, "replicate", "--once")
    assert r.returncode == 1
    assert f"litesync: error: addr: cannot serve metrics on '127.0.0.1:{port}': Address already in use" in r.stderr


def test_status_while_exec_waits_for_the_database(tmp_path):
    import sys

    from proc import WORKLOAD, start_litesync

    db = str(tmp_path / "app.db")
    go = tmp_path / "go"
    app = tmp_path / "app.py"
    app.write_text(f"import os, subprocess, sys, time\n"
                   f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\n"
                   f"subprocess.run([sys.executable, {WORKLOAD!r}, {db!r}, '--count', '3'], check=True)\n")
    p = start_litesync("replicate", db, f"file://{tmp_path}/rep", "--exec", f"{sys.executable} {app}",
                       log_path=str(tmp_path / "agent.log"))
    try:
        wait_for(lambda: read_status(db)["published"], timeout=30)
        st = read_status(db)
        assert st["running"] and st["state"] == "waiting" and st["replicas"][0]["state"] == "pending"
        r = litesync("status", db)
        assert r.returncode == 0 and f"{db}: waiting, agent pid {p.pid}" in r.stdout, r.stdout
        go.touch()
        assert p.wait(timeout=60) == 0
    finally:
        kill9(p)
    st = read_status(db)
    assert (st["running"], st["state"], st["transactions"] + st["snapshots"] > 0) == (False, "stopped", True)
