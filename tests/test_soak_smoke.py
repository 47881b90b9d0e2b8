"""scripts/soak.py runs a short soak end to end (a kill, an outage, snapshots, compaction,
retention) and its restore check passes; its growth verdict tells a leak from noise."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOAK = os.path.join(ROOT, "scripts", "soak.py")


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_soak_kills_and_cuts_the_network_and_its_restore_is_exact(tmp_path):
    report = tmp_path / "soak.json"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # A validation waits for the replica to catch up, then restores; an outage in between
    # (a blackhole costs a 5 s read timeout) delays it. With 7-8 s lifetimes and an outage
    # every 3-4 s, most runs ended every lifetime before a validation finished; 11-12 s
    # lifetimes and an outage every 5-6 s finished one in 15 of 18 lifetimes measured (every run had one).
    p = subprocess.run([sys.executable, SOAK, "--seconds", "28", "--sample-every", "2", "--kill-every", "11-12",
                        "--outage-every", "5-6", "--outage", "2", "--faults", "blackhole,reset",
                        "--snapshot-interval", "4s", "--retention", "8s", "--retention-check-interval", "2s",
                        "--compaction", "2s, 4s", "--validation-interval", "2s", "--calm-after", "0",
                        "--min-samples", "1000", "--workdir", str(tmp_path / "work"), "--json", str(report)],
                       capture_output=True, text=True, timeout=80, env=env, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    data = json.loads(report.read_text())
    restore = data["restore"]
    assert restore["ok"] and restore["integrity"] == "ok" and restore["same_content"], restore
    assert restore["restored_tx"] == restore["writer_tx"] > 1000, restore
    assert restore["agent_exit"] == 0
    samples = data["samples"]
    assert len(samples) >= 6
    with_agent = [s for s in samples if "rss_mib" in s]
    assert len(with_agent) >= 6, [s["errors"] for s in samples]
    assert all(s["rss_mib"] > 0 and s["fds"] > 0 and s["threads"] > 0 for s in with_agent)
    settled = [s for s in with_agent if s["age_s"] >= 3]  # the agent has started: its imports, connections, threads
    assert settled and all(s["rss_mib"] > 20 and s["fds"] > 5 and s["threads"] > 2 for s in settled), settled
    assert any(s.get("replica_objects", 0) > 0 for s in samples)
    assert any(s.get("wal_live_mib", 0) > 0 for s in samples)
    assert max(s.get("replica_snapshots", 0) for s in samples) >= 2
    assert max(s["tx"] for s in samples if "tx" in s) > 1000
    lifetimes = data["lifetimes"]
    assert [lt["ended"] for lt in lifetimes[:-1]] == ["SIGKILL"] * (len(lifetimes) - 1) and len(lifetimes) >= 3
    assert lifetimes[-1]["ended"] == "SIGTERM at the end"
    assert all(lt["tracebacks"] == 0 for lt in lifetimes)
    assert sum(lt["snapshots"] for lt in lifetimes) >= 3
    assert sum(lt["validations_ok"] for lt in lifetimes) >= 1
    assert {f[2] for f in data["faults"]} <= {"blackhole", "reset"} and len(data["faults"]) >= 2
    rows = [line for line in p.stdout.splitlines() if line.count(" | ") > 10 and line.split("|")[0].strip()[:1].isdigit()]
    assert len(rows) == len(samples)
    assert "# restore: OK" in p.stdout


def row(minute, life, rss, calm=True):
    return {"minute": minute, "life": life, "age_s": 120 + minute * 60, "calm": calm, "rss_mib": rss, "fds": 12,
            "threads": 38, "spool_mib": 0.1, "state_mib": 0.1, "wal_mib": 3.9, "lag_s": 0.2}


def test_verdict_flags_memory_that_rises_at_every_sample_and_passes_noise():
    soak = load_soak()
    leak = [row(m, 1, 80 + 2 * m) for m in range(10)]
    judged = soak.verdict(leak, min_samples=6, warmup=60)
    assert judged["rss_mib"]["verdict"] == "GROWS"
    assert judged["rss_mib"]["flags"][0] == "life 1: every step up, 80.0 to 98.0MiB"
    assert judged["fds"]["verdict"] == "bounded" and judged["threads"]["verdict"] == "bounded"
    noise = [row(m, 1 + m // 10, 90 + (3 if m % 2 else -3)) for m in range(30)]
    assert soak.verdict(noise, min_samples=6, warmup=60)["rss_mib"]["verdict"] == "bounded"


def test_verdict_takes_a_warm_up_for_what_it_is_and_flags_growth_after_it():
    soak = load_soak()
    noise = [1, -1, 2, -2, 0, 1]
    # The hour-long soak's shape: up 12 MiB over the first third, then flat.
    warm = [row(m, 1, min(73 + m, 85) + noise[m % 6]) for m in range(36)]
    assert soak.verdict(warm, min_samples=6, warmup=60)["rss_mib"]["verdict"] == "bounded"
    # Flat, then 0.5 MiB a minute after the first third, with noise: not every step up.
    slow = [row(m, 1, 85 + max(0, m - 12) * 0.5 + noise[m % 6]) for m in range(36)]
    judged = soak.verdict(slow, min_samples=6, warmup=60)["rss_mib"]
    assert judged["flags"] == ["last third above the middle third by more than 4.0MiB: life 1"]


def test_verdict_flags_a_peak_that_rises_from_one_lifetime_to_the_next():
    soak = load_soak()
    samples = [row(m, 1 + m // 8, 80 + 10 * (m // 8) + (1 if m % 2 else -1)) for m in range(32)]
    flags = soak.verdict(samples, min_samples=6, warmup=60)["rss_mib"]["flags"]
    assert flags == ["each lifetime's peak above the last: 81.0, 91.0, 101.0, 111.0MiB"]


def test_verdict_leaves_out_a_starting_agent_and_outage_samples_for_the_spool():
    soak = load_soak()
    samples = [row(m, 1, 90) for m in range(8)]
    samples[0]["age_s"] = 5  # just started: 20 MiB
    samples[0]["rss_mib"] = 20
    for s in samples[4:]:
        s["calm"] = False
        s["spool_mib"] = 50.0 + s["minute"]  # an outage fills the spool
    judged = soak.verdict(samples, min_samples=3, warmup=60)
    assert judged["rss_mib"]["verdict"] == "bounded"
    assert judged["spool_mib"]["verdict"] == "bounded"
    assert judged["spool_mib"]["judged"]["the whole run"]["n"] == 3
