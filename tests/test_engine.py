"""The scheduler: recurring tasks on bounded threads, never one task twice at once."""

from __future__ import annotations

import threading
import time

import pytest

from litesync import engine
from proc import wait_for


@pytest.fixture
def sched():
    s = engine.Scheduler({"work": 3, "io": 2})
    yield s
    s.stop()


def test_many_tasks_run_on_the_pools_threads_alone(sched):
    runs = [0] * 500
    tasks = []
    for i in range(500):
        def step(i=i):
            runs[i] += 1
            return None
        tasks.append(sched.task(step, "work" if i % 2 else "io", f"t{i}"))
    wait_for(lambda: all(runs), 10)
    assert sched.threads() == 3 + 2 + 1  # workers of both pools and the timer
    for t in tasks[:10]:
        t.wake()
    wait_for(lambda: all(runs[i] == 2 for i in range(10)), 10)
    time.sleep(0.05)
    assert runs[10:] == [1] * 490  # nothing runs unwoken


def test_a_task_woken_while_it_runs_runs_once_more_and_never_twice_at_once(sched):
    inside = threading.Lock()
    overlaps, turns = [], []
    release = threading.Event()

    def step():
        if not inside.acquire(blocking=False):
            overlaps.append(1)
            return None
        try:
            turns.append(time.monotonic())
            if len(turns) == 1:
                release.wait(5)
        finally:
            inside.release()
        return None

    t = sched.task(step, "work", "one")
    wait_for(lambda: turns, 5)
    for _ in range(20):  # woken many times during its first turn
        t.wake()
    release.set()
    wait_for(lambda: len(turns) == 2, 5)
    time.sleep(0.1)
    assert len(turns) == 2 and not overlaps


def test_a_delay_brings_the_task_back_and_a_wake_comes_before_it(sched):
    turns = []

    def step():
        turns.append(time.monotonic())
        return 0.2 if len(turns) < 3 else None

    t0 = time.monotonic()
    sched.task(step, "work", "delayed")
    wait_for(lambda: len(turns) == 3, 5)
    assert turns[1] - turns[0] >= 0.19 and turns[2] - turns[1] >= 0.19
    late = []
    t = sched.task(lambda: late.append(time.monotonic()) or 30.0, "work", "late")
    wait_for(lambda: late, 5)
    t.wake()  # long before its 30 s delay
    wait_for(lambda: len(late) == 2, 5)
    assert late[1] - t0 < 5


def test_a_cancelled_task_runs_no_more(sched):
    turns = []
    t = sched.task(lambda: turns.append(1) or 0.01, "work", "c")
    wait_for(lambda: len(turns) > 3, 5)
    t.cancel()
    n = len(turns)
    time.sleep(0.1)
    assert len(turns) <= n + 1 and not t.active  # at most the turn under way


def test_a_task_that_raises_runs_again_later(sched, monkeypatch, caplog):
    monkeypatch.setattr(engine, "ERROR_DELAY", 0.05)
    turns = []

    def step():
        turns.append(1)
        if len(turns) == 1:
            raise RuntimeError("boom")
        return None

    sched.task(step, "work", "raiser")
    wait_for(lambda: len(turns) == 2, 5)
    assert "raiser: unexpected error" in caplog.text


def test_a_loop_keeps_the_task_contract_on_its_own_thread():
    turns = []
    loop = engine.Loop(lambda: turns.append(1) or None, "loop").start()
    wait_for(lambda: turns, 5)
    loop.wake()
    wait_for(lambda: len(turns) == 2, 5)
    loop.cancel()
    loop.join(5)
    assert not loop.active


def test_a_lane_whose_tasks_hang_holds_only_its_share_of_the_pool():
    """A store that hangs every request: its tasks take at most lane_limit workers, the
    other stores' tasks still run."""
    s = engine.Scheduler({"ship": (4, 2)})
    hang = threading.Event()
    try:
        started = []
        for i in range(6):
            s.task(lambda i=i: started.append(i) or hang.wait(10) and None, "ship", f"dead{i}", lane="dead")
        done = []
        for i in range(20):
            s.task(lambda i=i: done.append(i) or None, "ship", f"ok{i}", lane="healthy")
        wait_for(lambda: len(done) == 20, 5)
        assert len(started) == 2  # the dead lane's share, no more
    finally:
        hang.set()
        s.stop()
