"""Follow mode: a follower process tracks a live writer while readers query its output;
it is killed -9 and resumed, survives a new generation, and ends equal to the source."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from dbcheck import content_digest, integrity
from litesync import history, journal, layout
from litesync.errors import ObjectNotFoundError, OutputExistsError
from litesync.follow import STATE_SUFFIX, Follower, LiveDatabase
from litesync.replica.file import FileReplicaClient
from litesync.restore import PageBatch
from proc import kill9, litesync, run_writer, start_agent_ready, start_litesync, start_writer, stop, wait_for

G = 0x0123456789ABCDEF


def check_prefix(conn: sqlite3.Connection) -> int:
    """Return k when the database holds exactly transactions 1..k of tests/workload.py, read
    in one read transaction; raise AssertionError on a torn or inconsistent state."""
    conn.execute("BEGIN")
    try:
        txs = [r[0] for r in conn.execute("SELECT tx FROM txlog ORDER BY tx")]
        k = len(txs)
        assert txs == list(range(1, k + 1)), f"not a prefix: {txs[:3]}..{txs[-3:]}"
        assert conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0] == k
        rows = dict(conn.execute("SELECT tx, count(*) FROM items GROUP BY tx"))
        assert rows == dict(conn.execute("SELECT tx, rows FROM txlog")), "row counts differ from txlog"
        return k
    finally:
        conn.execute("COMMIT")


class Reader(threading.Thread):
    """Opens the follower's output again and again and checks it.

    ``read_only`` readers open it with mode=ro: they may get SQLITE_READONLY_ROLLBACK while
    a killed follower's hot journal waits to be rolled back (they cannot roll it back), and
    nothing else. Other readers (query_only) roll such a journal back themselves and must
    never fail.
    """

    def __init__(self, path: str, read_only: bool) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.read_only = read_only
        self.stop_event = threading.Event()
        self.reads = 0
        self.rollback_waits = 0
        self.errors: list[str] = []
        self.seen: list[int] = []

    def run(self) -> None:
        uri = f"file:{self.path}?mode=ro" if self.read_only else f"file:{self.path}"
        while not self.stop_event.is_set():
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=20, isolation_level=None)
                try:
                    if not self.read_only:
                        conn.execute("PRAGMA query_only = 1")
                    for _ in range(3):
                        self.seen.append(check_prefix(conn))
                        self.reads += 1
                finally:
                    conn.close()
            except sqlite3.OperationalError as e:
                if self.read_only and getattr(e, "sqlite_errorname", "") == "SQLITE_READONLY_ROLLBACK":
                    self.rollback_waits += 1
                    time.sleep(0.02)
                    continue
                self.errors.append(f"{type(e).__name__}: {e}")
            except Exception as e:
                self.errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.005)


def _prefix(path):
    conn = sqlite3.connect(path, timeout=20, isolation_level=None)
    try:
        return check_prefix(conn)
    finally:
        conn.close()


def test_follower_tracks_a_live_writer_through_kills_and_a_new_generation(tmp_path):
    db = str(tmp_path / "app.db")
    rep = str(tmp_path / "rep")
    out = str(tmp_path / "follower.db")
    cfg = tmp_path / "litesync.yml"
    # Short windows: merged segments appear and their parts vanish while the follower runs.
    cfg.write_text(f"snapshot-interval: 3s\ncompaction: 1s\nretention: 6s\nretention-check-interval: 300ms\n"
                   f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{rep}\n")
    agent_log = str(tmp_path / "agent.log")
    follow_log = str(tmp_path / "follow.log")
    run_writer(db, "--count", "1")
    agent = start_agent_ready("--config", str(cfg), log_path=agent_log)
    follow_args = ("-v", "restore", "--follow", "-o", out, "--interval", "100ms", f"file://{rep}")
    follower = start_litesync(*follow_args, log_path=follow_log)
    wait_for(lambda: os.path.exists(out + STATE_SUFFIX), 30)
    readers = [Reader(out, read_only=False), Reader(out, read_only=True)]
    for r in readers:
        r.start()
    writer = start_writer(db, "--rate", "120", "--mixed", "--seconds", "9", "--seed", "5")
    rng = random.Random(11)
    kills = 0
    try:
        t_end = time.monotonic() + 4.5
        while time.monotonic() < t_end:
            time.sleep(rng.uniform(0.3, 0.9))
            kill9(follower)
            kills += 1
            time.sleep(rng.uniform(0.05, 0.4))
            follower = start_litesync(*follow_args, log_path=follow_log)
        # A new generation: the agent dies, the WAL restarts behind its back.
        kill9(agent)
        conn = sqlite3.connect(db, timeout=30)
        wait_for(lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0, 30)
        conn.close()
        agent = start_agent_ready("--config", str(cfg), log_path=agent_log)
        assert writer.wait(timeout=60) == 0
        expected = _prefix(db)
        wait_for(lambda: _prefix(out) == expected, 60)
    finally:
        for r in readers:
            r.stop_event.set()
        for r in readers:
            r.join()
        if writer.poll() is None:
            writer.kill()
        assert stop(follower) == 0, open(follow_log).read()[-3000:]
        assert stop(agent) == 0
    log = open(follow_log).read()
    assert kills >= 4
    assert "resuming at generation" in log
    assert "starting over from" in log and "a new generation began" in log, log[-3000:]
    assert "Traceback" not in log
    assert content_digest(out) == content_digest(db)
    assert integrity(out) == "ok"
    for r in readers:
        assert r.errors == [], r.errors[:5]
        assert r.reads > 20
        assert r.seen == sorted(r.seen), "a reader saw the follower go back in time"
    assert max(readers[0].seen) > 300
    assert not os.path.exists(out + "-journal")


# -- one update, interrupted ------------------------------------------------------------

def _rollback_db(tmp_path, rows=200):
    """A small rollback-journal database holding tests/workload.py transactions 1..rows/10."""
    path = str(tmp_path / "live.db")
    run_writer(path, "--count", str(rows // 10))
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    return path


def _crash_during_update(path: str, where: str) -> int:
    """Apply an update that rewrites every page but page 1 with garbage, in a child process
    that dies at ``where``; return its exit code."""
    code = f"""
import os, sys
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
from litesync.follow import LiveDatabase
from litesync.restore import PageBatch
db = LiveDatabase({path!r})
batch = PageBatch(db.page_size, db.pages)
for p in range(2, db.pages + 1):
    batch.write(p, bytes([0xAA]) * db.page_size)
batch.set_size(db.pages + 3)
if {where!r} == "writing":
    os.ftruncate = lambda fd, n: os._exit(9)  # after the pages, before the sync and the commit
db.apply(batch, (lambda: os._exit(9)) if {where!r} == "journal" else (lambda: None))
os._exit(0)
"""
    return subprocess.run([sys.executable, "-c", code], timeout=60).returncode


@pytest.mark.parametrize("where", ["journal", "writing"])
def test_an_interrupted_update_never_shows(tmp_path, where):
    path = _rollback_db(tmp_path)
    before = content_digest(path)
    assert _crash_during_update(path, where) == 9
    hot = where == "writing"
    assert os.path.exists(path + "-journal")
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    if hot:
        # A read-only connection cannot roll the journal back: it refuses to read.
        with pytest.raises(sqlite3.OperationalError) as e:
            ro.execute("SELECT count(*) FROM txlog").fetchone()
        assert e.value.sqlite_errorname == "SQLITE_READONLY_ROLLBACK"
    else:
        assert ro.execute("SELECT count(*) FROM txlog").fetchone()[0] == 20  # an unarmed journal is ignored
    ro.close()
    # Any connection that may write (here the follower's own) rolls it back first.
    db = LiveDatabase(path)
    with db.locked(exclusive=False):
        pass
    db.close()
    assert not hot or not os.path.exists(path + "-journal")
    assert content_digest(path) == before
    assert integrity(path) == "ok"


def test_an_update_is_one_atomic_change_for_readers(tmp_path):
    """A batch that shrinks, regrows and rewrites pages gives exactly the replayed result."""
    path = _rollback_db(tmp_path, rows=400)
    src = str(tmp_path / "src.db")
    run_writer(src, "--count", "70", "--mixed", "--seed", "3")  # a different database, same page size
    conn = sqlite3.connect(src)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    db = LiveDatabase(path)
    ps = db.page_size
    with open(src, "rb") as f:
        data = f.read()
    n = len(data) // ps
    batch = PageBatch(ps, db.pages)
    batch.set_size(3)  # shrink first: pages past 3 are gone unless written again
    for p in range(n, 0, -1):  # pages in any order
        batch.write(p, data[(p - 1) * ps:p * ps])
    batch.set_size(n)
    saved = []
    db.apply(batch, lambda: saved.append(True))
    db.close()
    assert saved == [True]
    out = open(path, "rb").read()
    assert len(out) == len(data)
    assert out[100:] == data[100:]
    page1 = journal.unpatch(out[:ps], journal.patched_bytes(data[:ps]))
    assert page1 == data[:ps]
    assert content_digest(path) == content_digest(src)
    assert integrity(path) == "ok"


# -- decisions (pure) ---------------------------------------------------------------------

def _cat(*objs):
    from litesync.replica.base import ObjectInfo

    infos = []
    for o in objs:
        if o[0] == "snap":
            infos.append(ObjectInfo(layout.SnapshotName(o[1], o[2], 1000).key, 10))
        else:
            infos.append(ObjectInfo(layout.SegmentName(o[1], o[2], o[3], 2000 + o[3]).key, 10))
    return history.catalog(infos)


def test_follow_step_continues_skips_merged_history_and_starts_over_when_it_must():
    base = [("snap", G, 0)] + [("seg", G, i, i) for i in range(6)]
    step = history.follow_step(_cat(*base), G, 3)
    assert [(n.first_seq, n.last_seq) for n, _ in step.segments] == [(3, 3), (4, 4), (5, 5)]
    # A merged segment over applied history is skipped; one that starts where we are is taken.
    step = history.follow_step(_cat(*base, ("seg", G, 0, 2), ("seg", G, 3, 5)), G, 3)
    assert [(n.first_seq, n.last_seq) for n, _ in step.segments] == [(3, 5)]
    assert history.follow_step(_cat(*base), G, 6) == history.FollowStep()
    # The parts we need were merged into a segment that starts before us and deleted.
    step = history.follow_step(_cat(("snap", G, 0), ("seg", G, 0, 5)), G, 3)
    assert step.restart is not None and "segment 3 is gone" in step.reason
    # A newer generation with a snapshot wins.
    step = history.follow_step(_cat(*base, ("snap", G + 1, 0)), G, 6)
    assert step.restart.generation == G + 1 and "new generation" in step.reason
    assert history.follow_step(_cat(*base), None, 0).restart.snapshot.seq == 0


# -- command line -------------------------------------------------------------------------

def test_follow_refuses_a_foreign_output_and_stops_cleanly(tmp_path):
    db = str(tmp_path / "app.db")
    rep = f"file://{tmp_path / 'rep'}"
    run_writer(db, "--count", "5")
    assert litesync("replicate", "--once", db, rep).returncode == 0
    out = str(tmp_path / "out.db")
    shutil.copy(db, out)
    r = litesync("restore", "--follow", "-o", out, rep)
    assert r.returncode == 2 and "is not a follower's output" in r.stderr
    r = litesync("restore", "--follow", "--timestamp", "2026-01-01T00:00:00Z", "-o", out, rep)
    assert r.returncode == 2 and "--timestamp cannot be combined with --follow" in r.stderr
    r = litesync("restore", "--interval", "1s", "-o", out, rep)
    assert r.returncode == 2 and "--interval needs --follow" in r.stderr
    r = litesync("restore", "--follow", "--timeout", "1m", "-o", out, rep)
    assert r.returncode == 2 and "--timeout cannot be combined with --follow" in r.stderr
    r = litesync("restore", "--timeout", "0s", "-o", out + "2", rep)
    assert r.returncode == 2 and r.stderr == "litesync: error: --timeout: must be greater than zero (or none): '0s'\n"
    os.unlink(out)
    log = str(tmp_path / "f.log")
    p = start_litesync("restore", "--follow", "-o", out, "--interval", "50ms", rep, log_path=log)
    wait_for(lambda: os.path.exists(out + STATE_SUFFIX), 30)
    second = litesync("restore", "--follow", "-o", out, rep)
    assert second.returncode == 2 and "another follower is running" in second.stderr
    assert stop(p) == 0
    assert content_digest(out) == content_digest(db)
    with pytest.raises(OutputExistsError):
        Follower([FileReplicaClient(str(tmp_path / "rep"))], db, interval=1, stop=threading.Event()).start()


def test_follower_survives_compaction_and_retention_under_it(tmp_path):
    """Segments merged and their parts deleted while the follower reads them: the update in
    flight fails and changes nothing, the next poll continues with the merged segments."""
    from litesync.compact import Maintainer

    db = str(tmp_path / "app.db")
    rep = str(tmp_path / "rep")
    run_writer(db, "--count", "1")
    agent = start_agent_ready(db, f"file://{rep}", log_path=str(tmp_path / "agent.log"))
    run_writer(db, "--count", "200", "--rate", "400")
    assert stop(agent) == 0
    client = FileReplicaClient(rep)
    now = [time.time() + 3600]
    m = Maintainer(client, db="t", replica="r", retention=60, compaction=(600,), interval=1, work_dir=str(tmp_path),
                   grace=0, clock=lambda: now[0])
    segs = [o.key for o in client.list("generations/") if o.key.endswith(".seg")]
    # The follower starts from the snapshot alone: its first restore sees no segment.
    hidden = str(tmp_path / "hidden")
    for key in segs:
        os.renames(os.path.join(rep, *key.split("/")), os.path.join(hidden, *key.split("/")))

    class Maintained(FileReplicaClient):
        opened = 0

        def open(self, key):
            f = super().open(key)
            Maintained.opened += 1
            if Maintained.opened == 3:  # mid-update: merge everything, delete the parts
                m.run_once()
            return f

    out = str(tmp_path / "out.db")
    f = Follower([Maintained(rep, name="rep")], out, interval=0.01, stop=threading.Event())
    f.start()
    assert f.pos is not None and f.pos.next_seq == 0
    for key in segs:
        os.renames(os.path.join(hidden, *key.split("/")), os.path.join(rep, *key.split("/")))
    with pytest.raises(ObjectNotFoundError):  # the update in flight loses its objects
        f.poll()
    assert f.pos.next_seq == 0 and m.stats["compactions"] >= 1 and m.stats["deleted"] > 0
    before = f.applied
    while f.poll():
        pass
    assert f.applied > before
    merged = [o.key for o in client.list("generations/") if o.key.endswith(".seg")]
    assert len(merged) < len(segs)
    f.db.close()
    assert content_digest(out) == content_digest(db)
    assert integrity(out) == "ok"
