"""scripts/bench.py runs end to end in its quick mode and prints figures for both tools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "scripts", "bench.py")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def table_rows(stdout: str) -> dict[str, list[str]]:
    """figure -> [litesync, Litestream, ratio] cells of the printed table."""
    rows = {}
    for line in stdout.splitlines()[2:]:
        cells = [c.strip() for c in line.split(" | ")]
        if len(cells) == 4:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.skipif(shutil.which("litestream") is None, reason="litestream binary not on PATH")
def test_quick_lag_and_restore(tmp_path):
    report = tmp_path / "figures.json"
    p = subprocess.run([sys.executable, BENCH, "--quick", "--only", "lag,restore", "--workdir", str(tmp_path),
                        "--json", str(report)], capture_output=True, text=True, timeout=240, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.splitlines()[0].split(" | ")[0].strip() == "figure"
    rows = table_rows(p.stdout)
    expected = [f"lag {kind}: {what}" for kind in ("file", "s3")
                for what in ("lost tx, median", "lost tx, max", "loss window ms, median", "loss window ms, max")]
    expected += [f"restore 20 MB {kind}: {what}" for kind in ("file", "s3") for what in ("MB/s", "peak RSS MiB")]
    for figure in expected:
        assert figure in rows, f"missing row {figure!r} in:\n{p.stdout}"
        litesync, litestream, ratio = rows[figure]
        assert NUMBER.match(litesync) and NUMBER.match(litestream), f"{figure}: {rows[figure]}"
        assert ratio == "-" or NUMBER.match(ratio), f"{figure}: {rows[figure]}"
    for figure in expected[-4:]:
        assert all(float(v) > 0 for v in rows[figure][:2]), f"{figure}: {rows[figure]}"
    assert report.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith("bench-")], "working files left behind"


def test_missing_litestream_exits_2(tmp_path):
    p = subprocess.run([sys.executable, BENCH, "--quick", "--litestream", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert "litestream binary not found" in p.stderr


@pytest.mark.skipif(shutil.which("litestream") is None, reason="litestream binary not on PATH")
def test_fleet_of_20_databases_prints_figures_for_both_tools(tmp_path):
    report = tmp_path / "figures.json"
    p = subprocess.run([sys.executable, BENCH, "--fleet", "20", "--fleet-idle-seconds", "1", "--fleet-busy-seconds",
                        "2", "--workdir", str(tmp_path), "--json", str(report)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = table_rows(p.stdout)
    expected = [f"fleet 20: {what}" for what in (
        "agent threads, max", "s until every database is on the replica", "idle CPU % of one core",
        "RSS MiB at the end of idle", "busy CPU % of one core", "busy commit-to-replica lag ms, median",
        "busy commit-to-replica lag ms, p95", "peak RSS MiB (VmHWM, whole run)", "busy commits")]
    for figure in expected:
        assert figure in rows, f"missing row {figure!r} in:\n{p.stdout}"
        assert all(NUMBER.match(v) for v in rows[figure][:2]), f"{figure}: {rows[figure]}"
    for figure in ("agent threads, max", "s until every database is on the replica", "busy commits"):
        assert all(float(v) > 0 for v in rows[f"fleet 20: {figure}"][:2]), f"{figure}: {rows[f'fleet 20: {figure}']}"
    assert report.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith("bench-")], "working files left behind"
