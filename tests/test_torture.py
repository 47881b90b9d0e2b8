"""scripts/torture.py: a few short seeded runs pass, and the faults they draw really happen."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORTURE = os.path.join(ROOT, "scripts", "torture.py")
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import torture  # noqa: E402 (found through the sys.path entry above)

# The first seed of runs whose plans (torture.draw_plan) hold, between them, every kind of fault.
SEED, RUNS, SECONDS = 11, 3, 15
# What draw_plan(11, ..., duration=15) began with before network faults and replacements were drawn.
SEED_11_FIRST_EVENTS = [(1.363, "checkpoint"), (1.865, "agent-kill"), (5.231, "restore")]


def missing_tools() -> list[str]:
    tools = torture.Tools.find()
    return [name for name, path in (("strace", tools.strace), ("libfaketime", tools.faketime)) if not path]


@pytest.mark.slow
def test_short_seeded_runs_pass_and_draw_every_fault(tmp_path):
    report = tmp_path / "summary.json"
    p = subprocess.run([sys.executable, TORTURE, "--runs", str(RUNS), "--seed", str(SEED), "--duration",
                        str(SECONDS), "--workdir", str(tmp_path), "--json", str(report)],
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    s = json.loads(report.read_text())
    assert (s["runs"], s["failures"]) == (RUNS, 0), p.stdout
    counters = s["counters"]
    expected = ["agent kill -9", "agent SIGSTOP/SIGCONT", "app SIGKILL at random time", "restore latest ok (checked)",
                "restore mid-run", "restore to a point in time", "replica s3", "replica file"]
    expected += [f"checkpoint {mode}" for mode in torture.CHECKPOINT_MODES]
    if torture.can_mount():  # root: the agent's state directory on a small disk that fills
        expected += ["agent state disk full (ENOSPC)"]
    # The network faults and database replacements these seeds' plans hold (drawn apart,
    # in S3 runs and in any run): each happens whenever it is drawn.
    tools = torture.Tools.find()
    plans = [torture.draw_plan(seed, tools, s3=True, duration=SECONDS) for seed in range(SEED, SEED + RUNS)]
    expected += sorted({f"net fault {e.param[0]}" if e.action == "net-fault" else f"database file replaced ({e.param})"
                        for plan in plans for e in plan.events if e.action in ("net-fault", "replace")})
    if not missing_tools():
        expected += ["app killed at WAL write (strace)", "app killed at sync (strace)"]
        expected += ["clock step forwards", "clock step backwards"]
    # A delete waits for the agent to replicate; one that would hit a starting or stopped agent is done as mv.
    if "database file replaced (delete)" in expected and counters.get(
            "database replacement delete done as mv (the agent was starting)"):
        expected.remove("database file replaced (delete)")
    missing = [name for name in expected if not counters.get(name)]
    assert not missing, f"faults never drawn: {missing}\n{p.stdout}"
    assert not [n for n in os.listdir(tmp_path) if n.startswith("torture-")], "passing runs left their directories"
    if missing_tools():
        pytest.skip(f"ran without the faults that need {' and '.join(missing_tools())} (apt-get install strace faketime)")


def test_network_faults_and_replacements_leave_the_other_draws_of_a_seed_as_they_were():
    """Drawn from PRNGs of their own: without them, a plan is the one the seed drew before."""
    tools = torture.Tools("/usr/bin/strace", "/lib/faketime.so")
    kinds, variants = set(), set()
    for seed in range(200):
        plan = torture.draw_plan(seed, tools, s3=True)
        new = [e for e in plan.events if e.action in ("net-fault", "replace")]
        assert bool(plan.net_faults) == any(e.action == "net-fault" for e in new)
        assert not plan.net_faults or plan.replica == "s3"
        assert bool(plan.replace) == any(e.action == "replace" for e in new)
        assert all(e.param != "link" or plan.via_link for e in new)
        kinds |= {e.param[0] for e in new if e.action == "net-fault"}
        variants |= {e.param for e in new if e.action == "replace"}
        assert all(1 <= e.param[2] <= 8 for e in new if e.action == "net-fault")
    assert kinds == set(torture.NET_FAULT_KINDS) and variants == {"mv", "delete", "link"}
    # Seed 11's plan as it was drawn before these two families existed.
    plan = torture.draw_plan(11, tools, s3=True, duration=15)
    assert [(round(e.at, 3), e.action) for e in plan.events if e.action not in ("net-fault", "replace")][:3] == \
        SEED_11_FIRST_EVENTS


def test_plan_is_a_function_of_the_seed():
    tools = torture.Tools("/usr/bin/strace", "/lib/faketime.so")
    a = torture.draw_plan(7, tools, s3=True)
    assert a == torture.draw_plan(7, tools, s3=True)
    assert [a.app(i, tools) for i in range(5)] == [a.app(i, tools) for i in range(5)]
    assert a != torture.draw_plan(8, tools, s3=True)


def test_history_takes_the_acked_or_observed_attempt_and_flags_phantoms():
    log = [line.split() for line in [
        "start 1 small", "observed 0 0", "begin 1 1 init", "commit 1 1", "begin 2 1 small",  # killed
        "start 2 small", "observed 1 1", "begin 2 2 small",                                    # killed, recovered
        "start 3 small", "observed 2 2", "begin 3 1 kv", "commit 3 1", "exit 3"]]
    h = torture.History.from_log(log)
    assert h.problems == []
    assert h.committed == {1: (1, "init"), 2: (2, "small"), 3: (1, "kv")}
    assert h.explain((2, 2)) is None
    assert h.explain((2, 1)) == "a phantom: attempt 1 of transaction 2 never committed (attempt 2 did)"
    assert h.explain((4, 1)) == "transaction 4 never committed"


def test_history_flags_a_lost_acknowledged_commit():
    log = [line.split() for line in ["observed 0 0", "begin 1 1 init", "commit 1 1", "begin 2 1 small",
                                     "commit 2 1", "observed 1 1"]]
    assert torture.History.from_log(log).problems == [
        "live database lost acknowledged transactions: a writer observed 1 after 2 was committed"]


def test_replay_detects_wrong_content(tmp_path):
    """The checker is not fooled by a database whose meta row is right and whose rows are not."""
    import apsw
    import torture_app

    db = str(tmp_path / "db")
    conn = apsw.Connection(db)
    committed = {}
    for k, kind in enumerate(["init", "small", "kv", "schema", "update"], start=1):
        conn.execute("BEGIN")
        torture_app.run_tx(conn, 5, k, 1, kind)
        conn.execute("COMMIT")
        committed[k] = (1, kind)
    history = torture.History(committed, [], {})
    assert torture.replay_and_compare(5, history, {5: [("good", db)]}, str(tmp_path / "r1")) == []
    conn.execute("UPDATE items SET v = x'00' WHERE id = (SELECT min(id) FROM items)")
    conn.close()
    assert torture.replay_and_compare(5, history, {5: [("bad", db)]}, str(tmp_path / "r2")) == [
        "bad: content differs from the replay of transactions 1..5 (meta matches, rows do not)"]


def test_ci_installs_strace_and_faketime():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        text = f.read()
    assert "apt-get install" in text and "strace" in text and "faketime" in text
