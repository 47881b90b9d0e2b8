"""Full disks: the agent's own (the spool), a file replica's, and the database's.

Each says so in one line naming the path and what litesync does, `litesync status` says
failed with that line, a metric counts it, no traceback is logged, nothing half written is
ever visible, and replication recovers by itself once space returns, with nothing lost.

The disks are real: small tmpfs mounts filled with a ballast file (tests/smalldisk.py),
with real writer processes and real `litesync replicate` processes. They need root (mount):
elsewhere they skip, saying so. The first test injects the fault instead and runs anywhere.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from dbcheck import content_digest, integrity
from proc import (HERE, clean_env, free_port, kill9, litesync, run_writer, start_agent_ready, start_litesync,
                  start_writer, stop, wait_for)
from smalldisk import mount_small_disk

from litesync import runner as runner_module
from litesync.config import load_config
from litesync.connections import WriteLockBusy
from litesync.runner import DbReplication

APP = os.path.join(HERE, "steady_app.py")
SPOOL_PAUSED = ("copying paused until space is freed (looked at every 1s); the WAL is released meanwhile: the "
                "application is not affected, and what it commits is copied when space returns")
# Seconds from the space freed until replication goes on: the agent looks every second;
# the margin is for a loaded machine (scripts/faults.py reports the figures).
RECOVERY = 5.0
START_WAITS = ("replication waits until space is freed (looked at every 1s); the application is not affected "
               "(litesync holds nothing meanwhile)")


def read(path) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def error_lines(log: str) -> list[str]:
    """The messages of the ERROR lines of an agent's log (after the time and the level)."""
    return [line.split(" ERROR ", 1)[1] for line in read(log).splitlines() if " ERROR " in line]


def status_of(db: str) -> dict:
    r = litesync("status", "--json", db)
    assert "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)["dbs"][0]


def restore_equals(db: str, replica: str, out: str) -> None:
    r = litesync("restore", "-o", out, f"file://{replica}")
    assert r.returncode == 0, r.stderr
    assert integrity(out) == "ok" and content_digest(out) == content_digest(db)


def temp_files(root) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".tmp")]


# --- the fault injected (runs anywhere) ------------------------------------------------------


def test_a_full_spool_disk_pauses_copying_in_one_line_and_recovers(tmp_path, caplog, monkeypatch):
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "5")
    cfg_path = tmp_path / "litesync.yml"
    cfg_path.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{tmp_path / 'rep'}\n")
    d = DbReplication(load_config(str(cfg_path)).dbs[0])
    spool = d.agent.spool
    real = spool.writing
    full = {"on": False}

    def writing(name):  # the one fault injected: the disk is full
        if full["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), spool.path(name) + ".tmp")
        return real(name)

    spool.writing = writing
    # The free space does not change under an injected fault: tried again at this pace.
    monkeypatch.setattr(runner_module, "NO_ROOM_RETRY", 0.5)
    caplog.set_level(logging.INFO)
    d.start()
    try:
        assert d.started.wait(30) and d.error is None
        full["on"] = True
        run_writer(db, "--count", "20", "--rate", "200")
        wait_for(lambda: d.state() == "failed", timeout=90)
        time.sleep(2.5)  # a few retries
        st = d.status()
        line = f"spool {spool.root}: No space left on device; {SPOOL_PAUSED}"
        assert st["state"] == "failed" and st["error"] == line and st["errors"] >= 2
        lines = [r for r in caplog.records if "No space left on device" in r.getMessage()]
        assert [r.getMessage() for r in lines if r.levelno == logging.ERROR] == [f"{db}: {line}"]
        assert not any(r.exc_info for r in caplog.records)  # no traceback
        assert not temp_files(spool.root)  # nothing half written left
        full["on"] = False
        wait_for(lambda: d.state() == "replicating", timeout=90)
        assert any(r.getMessage().startswith(f"{db}: {spool.root}: space freed, copying resumed (paused ")
                   for r in caplog.records)
        run_writer(db, "--count", "3")
    finally:
        assert d.stop(30)
    restore_equals(db, str(tmp_path / "rep"), str(tmp_path / "restored.db"))


@pytest.mark.parametrize("freed_at", ["first failure", "a later failure", "first failure, then the lock busy"])
def test_space_freed_between_the_refused_write_and_the_look_at_the_disk_is_not_missed(tmp_path, monkeypatch,
                                                                                       freed_at):
    """The torture suite's seed 12: the disk was freed 76 ms before the agent looked at how much was
    free after its write failed; that look became the mark to beat, nothing freed beat it, and
    the agent waited out NO_ROOM_RETRY (30 s) with room to spare."""
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "5")
    cfg_path = tmp_path / "litesync.yml"
    cfg_path.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{tmp_path / 'rep'}\n")
    d = DbReplication(load_config(str(cfg_path)).dbs[0])
    spool = d.agent.spool
    real = spool.writing
    disk = {"full": False, "free": 1000, "refused": 0, "free_at_refusal": 3 if freed_at == "a later failure" else 1,
            "busy": 0}

    def writing(name):  # the one fault injected: the disk is full
        if disk["full"]:
            disk["refused"] += 1
            if disk["refused"] == 2:  # a little room freed, not enough: the next refusal is a later one
                disk["free"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), spool.path(name) + ".tmp")
        return real(name)

    def free_space(path):  # what statvfs would say; freed for good just before the look after a refusal
        if disk["full"] and disk["refused"] == disk["free_at_refusal"]:
            disk["full"] = False
            disk["free"] += 1000
        return disk["free"], 1000

    real_unpark = d.agent.unpark

    def unpark():  # the try after the refusal ends before writing, once: the app holds the write lock
        if freed_at.endswith("lock busy") and disk["refused"] and not disk["busy"]:
            disk["busy"] = 1
            raise WriteLockBusy(f"{db}: the application holds the write lock")
        return real_unpark()

    spool.writing = writing
    d.agent.unpark = unpark
    monkeypatch.setattr(runner_module, "free_space", free_space)
    d.start()
    try:
        assert d.started.wait(30) and d.error is None
        disk["full"] = True
        run_writer(db, "--count", "20", "--rate", "200")
        wait_for(lambda: disk["refused"] >= disk["free_at_refusal"] and not disk["full"], timeout=60)
        freed = time.monotonic()
        wait_for(lambda: d.state() == "replicating" and d.status()["error"] is None, timeout=60)
        # The agent looks every second; NO_ROOM_RETRY is 30 s.
        assert time.monotonic() - freed < RECOVERY
        assert disk["busy"] == freed_at.endswith("lock busy")
        run_writer(db, "--count", "3")
    finally:
        assert d.stop(30)
    restore_equals(db, str(tmp_path / "rep"), str(tmp_path / "restored.db"))


def shipped_history_on_a_full_disk(tmp_path):
    """A database whose spool holds a shipped snapshot of an older generation (as agents
    killed before they collected it leave it), whose next agent starts a new generation,
    and that agent's DbReplication (not started): its spool refuses writes for lack of room
    while that older snapshot is there. Returns (db, the replica, that DbReplication, the
    older snapshot's spool name)."""
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "5")
    cfg_path = tmp_path / "litesync.yml"
    cfg_path.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{tmp_path / 'rep'}\n")
    first = DbReplication(load_config(str(cfg_path)).dbs[0])
    first.start()
    assert first.started.wait(30) and first.error is None
    wait_for(lambda: first.status()["replicas"][0]["state"] == "completed", timeout=30)
    assert first.stop(30)
    [(newest, _)] = first.agent.spool.objects()
    older = newest.__class__(**{**newest.__dict__, "generation": newest.generation - 1})
    os.makedirs(os.path.dirname(first.agent.spool.path(older)), exist_ok=True)
    shutil.copyfile(first.agent.spool.path(newest), first.agent.spool.path(older))
    conn = sqlite3.connect(db)  # the WAL restarted while no agent ran: the next one starts a generation
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    run_writer(db, "--count", "3", "--seed", "2")
    d = DbReplication(load_config(str(cfg_path)).dbs[0])
    spool = d.agent.spool
    assert older in dict(spool.objects())
    real = spool.writing

    def writing(name):  # the one fault injected: no room while the older generation's snapshot is there
        if os.path.exists(spool.path(older)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), spool.path(name) + ".tmp")
        return real(name)

    spool.writing = writing
    return db, str(tmp_path / "rep"), d, older


def test_an_agent_starting_on_a_disk_full_of_shipped_history_frees_it_and_starts(tmp_path):
    """Torture seed 1302: agents killed one after another, each starting a new generation,
    left each generation's shipped snapshot in the spool (the next agent collects them once
    it runs); on a small disk the next start could not write its own snapshot and waited
    for room only it could free."""
    db, rep, d, older = shipped_history_on_a_full_disk(tmp_path)
    d.start()
    try:
        assert d.started.wait(30) and d.error is None  # waited before: the disk stayed full
        assert not os.path.exists(d.agent.spool.path(older))
    finally:
        assert d.stop(30)
    restore_equals(db, rep, str(tmp_path / "restored.db"))


def test_an_agent_that_let_go_of_the_lock_while_waiting_for_room_leaves_the_spool_alone(tmp_path):
    """From a review: waiting for room at start, the agent lets go of its lock; another
    agent may hold the spool by then, and what is shipped by the first one's positions
    (read when it was made) may be what the other still ships."""
    import fcntl

    db, rep, d, older = shipped_history_on_a_full_disk(tmp_path)
    real_close = d.agent.close
    holder: dict = {}

    def close():  # another agent takes the lock as soon as this one lets go
        real_close()
        if "fd" not in holder:
            holder["fd"] = os.open(os.path.join(d.agent.state_dir, "lock"), os.O_RDWR)
            fcntl.flock(holder["fd"], fcntl.LOCK_EX)

    d.agent.close = close
    d.start()
    try:
        wait_for(lambda: d.error is not None or d.state() == "failed", timeout=30)
        time.sleep(2.5)  # the turns that follow, each a second apart
        assert os.path.exists(d.agent.spool.path(older))
    finally:
        d.stop(5)
        if "fd" in holder:
            os.close(holder["fd"])


# --- fsutil and the status file on a real full disk ----------------------------------------


def test_a_write_that_fills_the_disk_leaves_no_temp_file_and_names_it(tmp_path):
    """Closing a file whose buffered bytes cannot be written fails again: the temp file
    goes all the same, and the error names it (a flush names no file)."""
    from litesync.fsutil import atomic_file

    disk = mount_small_disk(str(tmp_path / "disk"), "1m")
    try:
        target = os.path.join(disk.path, "object")
        with pytest.raises(OSError) as e:
            with atomic_file(target) as f:
                for _ in range(300):
                    f.write(os.urandom(5000))  # buffered: some fail only at close
        assert e.value.errno == errno.ENOSPC and e.value.filename == target + ".tmp"
        assert os.listdir(disk.path) == []
        assert disk.free_bytes() > 1_000_000  # nothing of it left taking room
    finally:
        disk.unmount()


def test_the_status_file_is_rewritten_in_place_on_a_full_disk(tmp_path):
    """A full disk leaves no room for the new status file: the old one (padded to whole
    blocks, which costs no room) is rewritten in place, and readers see the new status."""
    from litesync.status import read_status, status_path, write_status

    disk = mount_small_disk(str(tmp_path / ".app.db-litesync"), "1m")
    try:
        db = str(tmp_path / "app.db")
        write_status(db, {"state": "replicating", "error": None})
        assert os.path.getsize(status_path(db)) == 4096
        disk.fill()
        reason = "spool ...: No space left on device; " + "x" * 1500
        write_status(db, {"state": "failed", "error": reason})
        st = read_status(db)
        assert st["published"] and (st["state"], st["error"]) == ("failed", reason)
        assert sorted(os.listdir(disk.path)) == ["ballast", "status.json"]  # no temp file left
        with pytest.raises(OSError) as e:  # too long for the blocks the file has: said, not cut short
            write_status(db, {"state": "failed", "error": "y" * 5000})
        assert e.value.errno == errno.ENOSPC
        assert read_status(db)["error"] == reason
        # A disk all but full takes part of a write (a page or two here): never published cut short.
        os.truncate(disk.ballast, (os.path.getsize(disk.ballast) // 4096 - 1) * 4096)
        with pytest.raises(OSError) as e:
            write_status(db, {"state": "failed", "error": "z" * 9000})
        assert e.value.errno == errno.ENOSPC
        assert read_status(db)["error"] == reason
        assert sorted(os.listdir(disk.path)) == ["ballast", "status.json"]
    finally:
        disk.unmount()


# --- a file replica's disk full -----------------------------------------------------------------


def test_a_full_file_replica_pauses_shipping_in_one_line_and_catches_up(tmp_path):
    db = str(tmp_path / "app.db")
    rep = str(tmp_path / "rep")
    disk = mount_small_disk(rep, "4m")
    port = free_port()
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"addr: 127.0.0.1:{port}\ndbs:\n  - path: {db}\n    replicas:\n      - url: file://{rep}\n")
    log = str(tmp_path / "agent.log")
    run_writer(db, "--count", "5")
    try:
        agent = start_agent_ready("--config", str(cfg), log_path=log)
        try:
            fill_a_replica_disk_and_free_it(db, rep, disk, port, log)
        except BaseException:
            kill9(agent)  # the failure shows as itself, not as the exit of an agent stopped mid-test
            raise
        assert stop(agent) == 0 and "Traceback" not in read(log), read(log)
        assert sorted(os.listdir(rep)) == ["generations"]
        restore_equals(db, rep, str(tmp_path / "restored.db"))
    finally:
        disk.unmount()


def replica_state(db: str) -> str | None:
    """The first replica's state in the agent's status file; None until the agent published one."""
    replicas = status_of(db).get("replicas") or [{}]
    return replicas[0].get("state")


def fill_a_replica_disk_and_free_it(db: str, rep: str, disk, port: int, log: str) -> None:
    disk.fill()
    writer = start_writer(db, "--count", "300", "--rate", "100")
    line = (f"replica file: {rep}: No space left on device; shipping paused, retrying every 1s (the application "
            "is not affected; the spool keeps what is not shipped)")
    wait_for(lambda: replica_state(db) == "failed", timeout=90, interval=0.2)
    st = status_of(db)
    assert st["replicas"][0]["last_error"] == line and st["state"] == "replicating"
    assert litesync("status", db).returncode == 1  # a failed replica is not healthy
    from test_ops import scrape

    samples = scrape(port)
    labels = f'db="{db}",replica="file"'
    assert samples[f"litesync_replica_errors_total{{{labels}}}"] >= 1
    assert samples[f'litesync_replica_state{{{labels},state="failed"}}'] == 1
    assert writer.wait(60) == 0  # the application never noticed
    time.sleep(2)  # more tries, said no more
    assert error_lines(log) == [f"{db} -> file: {line}"]
    # Nothing half written is visible: every file there is a whole object or the ballast.
    assert not temp_files(rep)
    r = litesync("snapshots", f"file://{rep}")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    freed = time.monotonic()
    disk.free()
    wait_for(lambda: "-> file: up to date (shipping failed for " in read(log), timeout=90)
    recovery = time.monotonic() - freed
    assert recovery < RECOVERY, recovery
    assert status_of(db)["replicas"][0]["state"] == "completed"


def test_a_temp_file_left_in_a_file_replica_is_never_listed_or_restored(tmp_path):
    """A crash mid-write leaves a temp file: listings and restores never see it."""
    from litesync.replica.file import FileReplicaClient

    db = str(tmp_path / "app.db")
    rep = tmp_path / "rep"
    run_writer(db, "--count", "5")
    assert litesync("replicate", "--once", db, f"file://{rep}").returncode == 0
    seg = next(p for p in rep.rglob("*") if p.is_file())
    half = seg.parent / "ffffffffffffffff-ffffffffffffffff-ffffffffffff.seg.tmp"
    half.write_bytes(b"half written")
    assert not [o for o in FileReplicaClient(str(rep)).list() if o.key.endswith(".tmp")]
    restore_equals(db, str(rep), str(tmp_path / "restored.db"))


# --- litesync started on a full disk ---------------------------------------------------------


@pytest.mark.parametrize("earlier_run", [False, True], ids=["first-start", "restart-with-commits-to-copy"])
def test_litesync_started_on_a_full_spool_disk_waits_in_one_line_and_starts_when_space_returns(tmp_path, earlier_run):
    """The spool's own disk (a small disk mounted on the state directory) is full when the
    agent starts: not fatal; one line, status failed (once a status file exists: it cannot
    be created on a full disk), nothing held, and replication starts when space returns.
    After a restart, the commits made while the agent was stopped are copied then."""
    db = str(tmp_path / "app.db")
    rep = str(tmp_path / "rep")
    log = str(tmp_path / "agent.log")
    run_writer(db, "--count", "50")
    disk = mount_small_disk(str(tmp_path / ".app.db-litesync"), "1m")
    app = agent = None
    try:
        if earlier_run:
            # An application that stays open, not checkpointing: the WAL goes on from where
            # the first agent stopped, and keeps what the second one has to copy.
            app = sqlite3.connect(db, isolation_level=None)
            app.execute("PRAGMA wal_autocheckpoint=0")
            app.execute("INSERT INTO items (tx, payload) VALUES (999, x'00')")
            first = start_agent_ready(db, f"file://{rep}", log_path=log)
            app.execute("INSERT INTO items (tx, payload) VALUES (999, x'01')")
            time.sleep(1)
            assert stop(first) == 0
            for i in range(30):
                app.execute("INSERT INTO items (tx, payload) VALUES (?, ?)", (1000 + i, os.urandom(100)))
        started_at = os.path.getsize(log) if os.path.exists(log) else 0
        disk.fill()
        agent = start_litesync("replicate", db, f"file://{rep}", log_path=log)
        spool = os.path.join(disk.path, "spool")
        line = f"{db}: spool {spool}: No space left on device; {START_WAITS}"
        wait_for(lambda: line in read(log), timeout=90)
        time.sleep(2.5)  # the agent waits; looked at every second, said once
        assert agent.poll() is None
        new = read(log)[started_at:]
        assert [m for m in error_lines(log) if "No space" in m] == [line] and "Traceback" not in new
        st = status_of(db)
        if earlier_run:
            assert (st["state"], st["error"]) == ("failed", line.split(": ", 1)[1])
        else:
            assert st["running"] and not st["published"]
        assert litesync("status", db).returncode == 1
        if app is not None:
            app.execute("INSERT INTO items (tx, payload) VALUES (2000, x'00')")  # the app is not affected
        freed = time.monotonic()
        disk.free()
        wait_for(lambda: "space freed, replication started (paused " in read(log), timeout=90)
        wait_for(lambda: "-> file: up to date" in read(log)[started_at:], timeout=90)
        recovery = time.monotonic() - freed
        assert recovery < RECOVERY, recovery
        new = read(log)[started_at:]
        assert ("resumed generation" in new) == earlier_run, new  # commits copied, not a new generation
        wait_for(lambda: status_of(db).get("state") == "replicating", timeout=90)  # no key until published
        if app is not None:
            app.close()
        assert stop(agent) == 0
        assert "Traceback" not in read(log)
        restore_equals(db, rep, str(tmp_path / "restored.db"))
    finally:
        if app is not None:
            app.close()
        if agent is not None:
            kill9(agent)  # when the test failed before stopping it
        disk.unmount()


def test_replicate_once_on_a_full_spool_disk_exits_1_naming_it(tmp_path):
    """--once syncs and exits: it does not wait for space as a lasting agent does."""
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "5")
    disk = mount_small_disk(str(tmp_path / ".app.db-litesync"), "1m")
    try:
        disk.fill()
        r = litesync("replicate", "--once", db, f"file://{tmp_path / 'rep'}", timeout=60)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.splitlines()[-1] == (f"litesync: error: spool {disk.path}/spool: No space left on device "
                                             "(--once does not wait for space)")
    finally:
        disk.unmount()


def test_litesync_started_on_a_read_only_state_directory_exits_1_naming_it(tmp_path):
    """A read-only file system is no full disk that space may cure: exit 1, one line naming the path."""
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "5")
    state = str(tmp_path / ".app.db-litesync")
    disk = mount_small_disk(state, "1m", "ro")
    try:
        r = litesync("replicate", db, f"file://{tmp_path / 'rep'}", timeout=60)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.splitlines()[-1] == f"litesync: error: {state}/spool: Read-only file system"
    finally:
        disk.unmount()


# --- the database's own disk full -----------------------------------------------------------------


def run_app_through_a_full_disk(work: str, with_litesync: bool, full_seconds: float = 4.0, grow: bool = False,
                                mount=mount_small_disk, disk_size: str = "24m") -> dict:
    """An application on a small disk, with or without an agent beside it (replicating to
    a directory on another disk); the disk full for ``full_seconds``, then freed. Return
    what each saw (see the keys of ``out``); used by scripts/faults.py too.

    The application updates rows in place (its database keeps its size) while another file
    fills the disk; or, with ``grow``, inserts rows until it fills the disk itself (a
    ballast file takes room first, and is deleted to free it) and stops before the space is
    freed (else it takes the space back at once)."""
    os.makedirs(work)
    disk = mount(os.path.join(work, "fs"), disk_size)
    db = os.path.join(disk.path, "app.db")
    log = os.path.join(work, "agent.log")
    out: dict = {"db": db, "log": log, "rep": os.path.join(work, "rep")}
    agent = None
    try:
        subprocess.run([sys.executable, APP, db, "--prepare", "1000" if grow else "4000"], check=True,
                       env=clean_env())
        if grow:
            disk.reserve(4 << 20)
        agent = start_agent_ready(db, f"file://{out['rep']}", log_path=log) if with_litesync else None
        args = ["--grow", "--rate", "500"] if grow else ["--rate", "200"]
        app = subprocess.Popen([sys.executable, APP, db, *args], stdout=subprocess.PIPE, env=clean_env())

        def stop_app() -> None:
            if "app" not in out:
                app.send_signal(signal.SIGTERM)
                out["app"] = json.loads(app.communicate(timeout=60)[0])

        try:
            if grow:
                wait_for(lambda: disk.free_bytes() < 64 << 10, timeout=120, interval=0.05)
            else:
                time.sleep(3)  # more than the WAL's 1000 pages: it reached its size
                disk.fill()
            filled = time.time()
            time.sleep(full_seconds)
            if agent is not None:  # the agent may not need room: when its spool and the WAL reuse theirs
                out["status"] = status_of(db)
                out["agent_paused"] = "until space is freed" in read(log)
            if grow:
                stop_app()
            disk.free()
            out["freed"] = time.monotonic()
            if out.get("agent_paused"):
                try:
                    wait_for(lambda: "space freed" in read(log), timeout=90)
                except AssertionError:
                    raise AssertionError(f"no recovery 30s after the space was freed: {read(log)[-2000:]}") from None
                out["recovery"] = time.monotonic() - out["freed"]
            time.sleep(1)
        finally:
            stop_app()
        out["app"]["first_error_after_fill"] = (out["app"]["first_error_at"] or filled) - filled
        if agent is not None:
            out["agent_exit"] = stop(agent)
            out["restore"] = os.path.join(work, "restored.db")
            r = litesync("restore", "-o", out["restore"], f"file://{out['rep']}")
            out["restore_same"] = (r.returncode == 0 and integrity(out["restore"]) == "ok"
                                   and content_digest(out["restore"]) == content_digest(db))
    finally:
        if agent is not None:
            kill9(agent)  # when something failed before it was stopped
        disk.unmount()
    return out


def check_full_database_disk(out: dict) -> None:
    """What litesync must do when the database's disk is full: one line (the spool's write
    or the agent's checkpoint refused, whichever its turn reached first), status failed
    with it, no traceback, recovery within seconds of space returning, nothing lost. (When
    the spool and the WAL both go on reusing their own room, nothing fails: nothing to say.)"""
    db, log = out["db"], out["log"]
    spool = os.path.join(os.path.dirname(db), ".app.db-litesync", "spool")
    errors = error_lines(log)
    assert len(errors) <= 1 and "Traceback" not in read(log), read(log)
    assert out["agent_exit"] == 0 and out["restore_same"]
    if not errors:
        assert out["status"]["state"] == "replicating" and out["app"]["errors"] == 0, out
        return
    refused = (f"(spool {re.escape(spool)}: No space left on device|"
               + re.escape(f"{db}: database or disk is full (a checkpoint writes into the database file)")
               + ")" + re.escape(f"; {SPOOL_PAUSED}"))
    assert re.fullmatch(re.escape(f"{db}: ") + refused, errors[0]), errors[0]
    # The status names the latest refusal: the other write of the two, when a little room
    # came back meanwhile (one episode, one line in the log).
    assert out["status"]["state"] == "failed" and re.fullmatch(refused, out["status"]["error"]), out["status"]
    assert out["status"]["errors"] >= 1
    assert out["recovery"] < RECOVERY, out["recovery"]


def test_a_checkpoint_that_cannot_grow_the_database_file_is_a_full_disk_said_once(tmp_path, caplog):
    """The agent copied a transaction that grows the database, then the disk fills: its
    checkpoint cannot write those pages into the database file (SQLite's FULL). That was an
    'unexpected error' with a traceback at every retry; it is a full disk like any other."""
    disk = mount_small_disk(str(tmp_path / "fs"), "2m")
    db = os.path.join(disk.path, "app.db")
    cfg_path = tmp_path / "litesync.yml"
    cfg_path.write_text(f"dbs:\n  - path: {db}\n    checkpoint-pages: 50\n"
                        f"    replicas:\n      - url: file://{tmp_path / 'rep'}\n")
    app = sqlite3.connect(db, isolation_level=None)
    d = None
    try:
        app.execute("PRAGMA journal_mode=WAL")
        app.execute("PRAGMA wal_autocheckpoint=0")
        app.execute("CREATE TABLE t (x BLOB)")
        caplog.set_level(logging.INFO)
        d = DbReplication(load_config(str(cfg_path)).dbs[0])
        d._open_turn()  # the turns run here, one by one, with no thread of the agent's own
        assert d.started.is_set() and d.error is None
        app.execute("BEGIN")
        app.executemany("INSERT INTO t VALUES (?)", [(os.urandom(3000),) for _ in range(100)])
        app.execute("COMMIT")
        assert d.agent.sync() == 1  # copied into the spool
        disk.fill()
        assert d._run_turn() == 1.0  # the checkpoint the 100 pages call for: refused
        line = f"{db}: database or disk is full (a checkpoint writes into the database file); {SPOOL_PAUSED}"
        assert d.turn_error == line and d.state() == "failed" and d.agent.stats["errors"] == 1
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [f"{db}: {line}"]
        assert not any(r.exc_info for r in caplog.records)
        assert d._run_turn() <= 1.0 and d.agent.stats["errors"] == 1  # no space freed: not tried again
        disk.free()
        time.sleep(1)
        d._run_turn()
        assert d.turn_error is None and d.state() == "replicating" and d.agent.stats["checkpoints"] > 0
        assert any(r.getMessage().startswith(f"{db}: {os.path.dirname(db)}: space freed, copying resumed (paused ")
                   for r in caplog.records)
        app.execute("INSERT INTO t VALUES (x'00')")
        d.agent.sync()
    finally:
        app.close()
        try:
            assert d is None or d.stop(30)
        finally:
            disk.unmount()


@pytest.fixture(scope="module")
def full_database_disk(tmp_path_factory):
    """The application through a full disk with litesync beside it (run once for the tests below)."""
    return run_app_through_a_full_disk(str(tmp_path_factory.mktemp("dbdisk") / "with"), with_litesync=True)


def test_a_full_database_disk_is_said_in_one_line_and_replication_recovers(full_database_disk):
    check_full_database_disk(full_database_disk)


def test_an_app_that_fills_its_database_disk_gets_one_line_from_litesync_and_no_traceback(tmp_path):
    """The application fills the disk itself: the agent's checkpoint cannot grow the
    database file (SQLite's FULL; it was an 'unexpected error' with a traceback at every
    retry), or its spool cannot be written; said once either way."""
    out = run_app_through_a_full_disk(str(tmp_path / "grow"), with_litesync=True, grow=True, disk_size="12m")
    assert out["app"]["errors"] > 0  # the app's own disk is full: its inserts fail, with litesync or without
    check_full_database_disk(out)


def test_a_full_database_disk_fails_the_app_no_more_with_litesync_than_without(full_database_disk, tmp_path):
    """Without litesync, an app that updates in place goes through a full disk unharmed:
    SQLite reuses its WAL after each checkpoint. With litesync it must too."""
    alone = run_app_through_a_full_disk(str(tmp_path / "alone"), with_litesync=False)
    assert alone["app"]["errors"] == 0 and alone["app"]["commits"] > 1000
    assert full_database_disk["app"]["errors"] == 0, full_database_disk["app"]


# --- a spool that fills its own disk ---------------------------------------------------------


def test_history_no_replica_will_take_is_dropped_to_make_room_for_the_new_generation(tmp_path):
    """The replica holds a generation from a clock an hour ahead; the state directory was
    lost, so the agent's first generation is older and it must start one after the
    replica's. On a spool disk with room for one snapshot, the history of the generation
    it leaves behind (which no replica will ever take) goes first: the agent used to wait
    for space that only it could free (the torture suite's disk-full draw found it)."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "scripts"))
    import torture

    lib = torture.Tools.find().faketime
    if lib is None:
        pytest.skip("needs libfaketime (.ci/run installs the faketime package)")
    db = str(tmp_path / "app.db")
    rep = str(tmp_path / "rep")
    log = str(tmp_path / "agent.log")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (x BLOB)")
    c.executemany("INSERT INTO t VALUES (?)", [(os.urandom(50_000),) for _ in range(60)])  # 3 MB, incompressible
    ahead = clean_env(torture.faketime_env(lib, 3600, str(tmp_path / "faketime-shim")))
    r = litesync("replicate", "--once", db, f"file://{rep}", env=ahead)
    assert r.returncode == 0, r.stderr
    (newer,) = os.listdir(os.path.join(rep, "generations"))
    state = tmp_path / ".app.db-litesync"
    subprocess.run(["rm", "-rf", str(state)], check=True)  # lost with the host
    c.execute("INSERT INTO t VALUES (x'01')")
    disk = mount_small_disk(str(state), "8m")
    agent = None
    try:
        disk.reserve(disk.free_bytes() - (5 << 20))  # room for one 3 MB snapshot, not two
        agent = start_litesync("replicate", db, f"file://{rep}", log_path=log)
        wait_for(lambda: "newer than this database's" in read(log), timeout=60)
        wait_for(lambda: len(os.listdir(os.path.join(rep, "generations"))) == 2 and "-> file: up to date" in
                 read(log).split("newer than this database's", 1)[1], timeout=60)
        c.execute("INSERT INTO t VALUES (x'02')")
        gens = sorted(os.listdir(os.path.join(rep, "generations")))
        assert gens[0] == newer and len(gens) == 2, gens  # the agent's generation is the newest
        assert "No space" not in read(log) and "Traceback" not in read(log), read(log)
        assert stop(agent) == 0, read(log)
        agent = None
        restore_equals(db, rep, str(tmp_path / "restored.db"))
    finally:
        c.close()
        if agent is not None:
            kill9(agent)
        disk.unmount()


HOLD_WRITE_LOCK = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
sys.stdin.readline()
c.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_replica_waiting_for_the_generation_after_its_own_is_not_up_to_date(tmp_path, monkeypatch, caplog):
    """Outbid, with the left generation's history dropped from the spool and the new one's
    snapshot not written yet (the application holds the write lock): the spool is empty, yet
    the replica lacks this database's commits. It is pending with a lag, and a stop says
    that not everything was shipped (it said "up to date" and "everything committed")."""
    from litesync import livedb
    from litesync.config import load_config

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "scripts"))
    import torture

    lib = torture.Tools.find().faketime
    if lib is None:
        pytest.skip("needs libfaketime (.ci/run installs the faketime package)")
    monkeypatch.setattr(livedb, "SEAL_TIMEOUT_MS", 200)  # the seal refused sooner
    db, rep = str(tmp_path / "app.db"), str(tmp_path / "rep")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (x)")
    c.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    ahead = clean_env(torture.faketime_env(lib, 3600, str(tmp_path / "faketime-shim")))
    r = litesync("replicate", "--once", db, f"file://{rep}", env=ahead)
    assert r.returncode == 0, r.stderr
    subprocess.run(["rm", "-rf", str(tmp_path / ".app.db-litesync")], check=True)
    c.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100, 200)])  # what the replica lacks
    (tmp_path / "litesync.yml").write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{rep}\n")
    d = DbReplication(load_config(str(tmp_path / "litesync.yml")).dbs[0])
    shipper = d.shippers[0]
    told = shipper.newer_generation
    # Another process: locks taken in this one would not exclude the agent's.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, db], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def outbid(generation: int) -> None:  # the app takes the write lock as the agent is outbid
        if holder.stdin is not None and not holder.stdin.closed:
            holder.stdin.write("lock\n")
            holder.stdin.flush()
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        told(generation)

    shipper.newer_generation = outbid
    caplog.set_level(logging.INFO)
    d.start()
    try:
        assert d.started.wait(30) and d.error is None
        wait_for(lambda: "which no replica will take" in caplog.text, timeout=30)
        time.sleep(2)
        assert d.agent.spool.objects() == []
        replica = d.status()["replicas"][0]
        assert replica["state"] == "pending" and replica["lag_seconds"] > 1, replica
        assert "-> file: up to date" not in caplog.text.split("which no replica will take", 1)[1]
        assert d.stop(timeout=2) is False
        assert "stopped before everything was shipped: the replica holds a newer generation" in caplog.text
    finally:
        kill9(holder)
        d.stop(timeout=5)
    # Started again with the write lock free, it writes the generation after the replica's.
    r = litesync("replicate", "--once", db, f"file://{rep}")
    assert r.returncode == 0, r.stderr
    c.close()
    restore_equals(db, rep, str(tmp_path / "restored.db"))
