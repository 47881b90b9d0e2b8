"""History: restore plans (latest, point in time), retention and compaction, as pure rules
and end to end against real writer and agent processes."""

from __future__ import annotations

import io
import os
import random
import sqlite3
import threading
import time

import pytest

from dbcheck import committed_prefix, content_digest, integrity
from litesync import history, layout
from litesync.compact import Maintainer, merge_segments
from litesync.errors import ChainError, RestoreError
from litesync.replica.base import ObjectInfo
from litesync.replica.file import FileReplicaClient
from litesync.restore import restore
from litesync.segment import SegmentReader
from proc import kill9, litesync, start_agent_ready, stop, run_writer

G = 0x0123456789ABCDEF


def snap(seq, ms, gen=G):
    return ObjectInfo(layout.SnapshotName(gen, seq, ms).key, 100)


def seg(first, last, ms, gen=G, size=10):
    return ObjectInfo(layout.SegmentName(gen, first, last, ms).key, size)


def chain(p):
    return [(n.first_seq, n.last_seq) for n, _ in p.segments]


# -- plans ---------------------------------------------------------------------------------

def test_plan_prefers_merged_segments_for_latest():
    objs = [snap(0, 1000)] + [seg(i, i, 2000 + i) for i in range(10)] + [seg(0, 4, 2004), seg(5, 9, 2009)]
    p = history.plan(history.catalog(objs))
    assert chain(p) == [(0, 4), (5, 9)]
    assert p.exact


def test_plan_descends_into_a_merged_segment_for_a_time_inside_it():
    objs = [snap(0, 1000)] + [seg(i, i, 2000 + i) for i in range(10)] + [seg(0, 4, 2004), seg(5, 9, 2009)]
    p = history.plan(history.catalog(objs), until_ms=2006)
    assert chain(p) == [(0, 4), (5, 5), (6, 6), (7, 7)]  # 7 is applied in part (none of it)
    assert p.exact


def test_plan_inexact_when_parts_are_gone():
    objs = [snap(0, 1000), seg(0, 4, 2004), seg(5, 9, 2009)]
    p = history.plan(history.catalog(objs), until_ms=2006)
    assert chain(p) == [(0, 4), (5, 9)]
    assert not p.exact


def test_plan_picks_the_generation_of_the_target_time():
    g1, g2 = 0x10, 0x20
    objs = [snap(0, 1000, g1), seg(0, 0, 1500, g1), seg(1, 1, 2500, g1), snap(0, 3000, g2), seg(0, 0, 3500, g2)]
    cat = history.catalog(objs)
    assert history.plan(cat).generation == g2
    p = history.plan(cat, until_ms=2999)
    assert p.generation == g1 and chain(p) == [(0, 0), (1, 1)]
    assert history.plan(cat, until_ms=3000).generation == g2


def test_plan_before_the_oldest_state_names_the_range():
    cat = history.catalog([snap(0, 1_700_000_000_000), seg(0, 0, 1_700_000_005_000)])
    with pytest.raises(RestoreError) as e:
        history.plan(cat, until_ms=1_600_000_000_000, replica="s3")
    assert str(e.value) == ("s3: nothing to restore at or before 2020-09-13T12:26:40.000Z; it holds "
                            "2023-11-14T22:13:20.000Z to 2023-11-14T22:13:25.000Z")


def test_plan_gap_names_the_missing_sequence():
    with pytest.raises(ChainError) as e:
        history.plan(history.catalog([snap(0, 1), seg(0, 0, 2), seg(2, 2, 3)]), replica="r")
    assert "segment 1 is missing (next present: generations/0123456789abcdef/segments/" in str(e.value)


def test_parse_time():
    assert history.parse_time("2026-11-22T14:01:00Z") == 1795356060000
    assert history.parse_time("2026-11-22T15:01:00+01:00") == 1795356060000
    assert history.parse_time("2026-11-22T14:01:00.250Z") == 1795356060250
    with pytest.raises(ValueError, match="without an offset"):
        history.parse_time("2026-11-22T14:01:00")
    with pytest.raises(ValueError, match="invalid time: 'yesterday'"):
        history.parse_time("yesterday")


# -- retention and compaction rules --------------------------------------------------------

def test_retention_keeps_the_floor_snapshot_and_everything_after():
    g1, g2 = 0x10, 0x20
    objs = [snap(0, 100, g1), seg(0, 0, 150, g1),
            snap(0, 200, g2), seg(0, 0, 250, g2), seg(1, 1, 260, g2), snap(2, 300, g2), seg(2, 2, 350, g2),
            snap(3, 500, g2), seg(3, 3, 550, g2)]
    dead = set(history.retention_deletes(history.catalog(objs), now_ms=1000, window_ms=600))  # cutoff 400
    assert dead == {o.key for o in objs[:5]}  # g1, and g2 before its snapshot at seq 2 (created 300)
    assert history.retention_deletes(history.catalog(objs), now_ms=1000, window_ms=950) == []


def test_retention_deletes_parts_only_of_merged_segments_that_end_before_the_window():
    objs = [snap(0, 100)] + [seg(i, i, 200 + i) for i in range(6)] + [seg(0, 2, 202), seg(3, 5, 205)]
    dead = history.retention_deletes(history.catalog(objs), now_ms=1000, window_ms=797)  # cutoff 203
    assert sorted(dead) == sorted(o.key for o in objs[1:4])


def test_compaction_runs_group_closed_windows_and_stop_at_snapshots():
    objs = ([snap(0, 0)] + [seg(i, i, 100 * i) for i in range(8)]  # windows of 300 ms: 0-2, 3-5, 6-7
            + [snap(4, 390)])
    runs = history.compaction_runs(history.catalog(objs), now_ms=1000, window_ms=300)
    assert [[(n.first_seq, n.last_seq) for n in r] for r in runs] == [[(0, 0), (1, 1), (2, 2)], [(4, 4), (5, 5)]]
    # The window 600-899 is not closed until 1050 (half a window later).
    assert len(history.compaction_runs(history.catalog(objs), now_ms=1100, window_ms=300)) == 3


# -- merging real segments ----------------------------------------------------------------

@pytest.fixture
def replicated(tmp_path):
    """A mixed workload (VACUUM shrinks the file, blobs, schema changes) replicated to a file replica."""
    db = str(tmp_path / "app.db")
    rep = str(tmp_path / "rep")
    log = str(tmp_path / "agent.log")
    run_writer(db, "--count", "1")
    agent = start_agent_ready(db, f"file://{rep}", log_path=log)
    try:
        run_writer(db, "--count", "520", "--mixed", "--rate", "400")
    finally:
        assert stop(agent) == 0
    return db, FileReplicaClient(rep)


def test_merging_changes_nothing_restored_and_shrinks_the_plan(replicated, tmp_path):
    db, client = replicated
    before = restore(client, str(tmp_path / "before.db"))
    assert before.transactions > 400
    m = Maintainer(client, db="t", replica="r", retention=None, compaction=(0.25, 600), interval=1,
                   work_dir=str(tmp_path), clock=lambda: time.time() + 1000)  # every window closed
    m.run_once()
    assert m.stats["compactions"] >= 2
    cat = history.catalog(client.list("generations/"))
    assert history.plan(cat).objects <= 3
    after = restore(client, str(tmp_path / "after.db"))
    assert content_digest(str(tmp_path / "after.db")) == content_digest(db) == content_digest(str(tmp_path / "before.db"))
    assert integrity(str(tmp_path / "after.db")) == "ok"
    assert after.bytes_read < before.bytes_read


def test_compaction_rides_on_shipping_and_a_quiet_replica_gets_no_upload(replicated, tmp_path):
    """Closed windows are merged only in a round that follows an upload; while nothing is
    shipped the maintainer makes no upload, only the hourly retention listing."""
    _db, client = replicated
    writes, lists = [], []

    class Counting(FileReplicaClient):
        def write(self, key, src, size):
            writes.append(key)
            return super().write(key, src, size)

        def list(self, prefix=""):
            lists.append(prefix)
            return super().list(prefix)

    now = [time.time() + 1000]  # every 0.25 s window is closed
    shipped = [0]
    m = Maintainer(Counting(client.root), db="t", replica="r", retention=10**9, compaction=(0.25,), interval=1,
                   work_dir=str(tmp_path), tick=0.01, clock=lambda: now[0], activity=lambda: shipped[0])

    def settle():
        for _ in range(20):  # many ticks of the maintainer's thread
            time.sleep(0.01)

    m.start()
    try:
        for _ in range(5):  # quiet minutes: nothing at all
            now[0] += 60
            settle()
        assert (writes, lists) == ([], [])
        now[0] += 3600  # the hourly look: retention lists, nothing is merged
        settle()
        assert writes == [] and len(lists) == 1 and m.stats["compactions"] == 0
        assert m.stats["rounds"] == 1
        now[0] += 60
        shipped[0] += 1  # an upload an interval later: the next tick compacts the closed windows
        deadline = time.monotonic() + 20
        while m.stats["rounds"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert m.stats["compactions"] >= 1 and writes
        n = len(writes)
        shipped[0] += 1  # another upload inside the interval: no round
        settle()
        assert len(writes) == n
    finally:
        m.stop()
        m.join()


def test_merged_segment_is_verified_on_restore(replicated, tmp_path):
    _db, client = replicated
    cat = history.catalog(client.list("generations/"))
    g = cat.newest()
    names = [n for n, _ in g.segments][:50]
    out = io.BytesIO()
    merged, size = merge_segments(client, names, out)
    assert (merged.first_seq, merged.last_seq) == (names[0].first_seq, names[-1].last_seq)
    data = bytearray(out.getvalue())
    hdr = SegmentReader(io.BytesIO(bytes(data)), "m").header
    assert [t.page_count for t in hdr.txs][0] == 0 and len(hdr.txs) == 2
    data[len(data) // 2] ^= 0xFF
    client.write_bytes(merged.key, bytes(data))
    for n in names:  # only the damaged merged segment can bridge this range now
        os.unlink(os.path.join(client.root, *n.key.split("/")))
    with pytest.raises(Exception) as e:
        restore(client, str(tmp_path / "x.db"))
    assert merged.key in str(e.value)
    assert not os.path.exists(tmp_path / "x.db")


# -- end to end ----------------------------------------------------------------------------

def _config(tmp_path, db, rep, **settings):
    lines = [f"{k}: {v}" for k, v in settings.items()]
    path = tmp_path / "litesync.yml"
    path.write_text("\n".join(lines) + f"\ndbs:\n  - path: {db}\n    replicas:\n      - url: file://{rep}\n")
    return str(path)


class TxTimes:
    """Polls a replica and records each writer transaction's commit time from segment headers.

    Transaction n of tests/workload.py is the (n - k0)-th transaction after the first
    snapshot, which holds k0; the writer writes one WAL transaction per workload transaction.
    """

    def __init__(self, client, k0):
        self.client = client
        self.k0 = k0
        self.by_seq = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.2):
            self.poll()

    def poll(self):
        for info in self.client.list("generations/"):
            name = layout.parse_key(info.key)
            if isinstance(name, layout.SegmentName) and (name.first_seq, name.last_seq) not in self.by_seq:
                try:
                    with self.client.open(info.key) as f:
                        h = SegmentReader(f, info.key).header
                except Exception:  # deleted meanwhile: it was covered and out of the window
                    continue
                if not h.merged:  # shipped as written (one or several shipments): every commit
                    self.by_seq[(name.first_seq, name.last_seq)] = [t.commit_ms for t in h.txs]

    def close(self):
        self.stop.set()
        self.thread.join()
        self.poll()

    def commit_ms(self):
        """n -> recorded commit time, for every transaction after the first snapshot."""
        out = {}
        n = self.k0
        seq = 0
        ranges = {r: self.by_seq[r] for r in sorted(self.by_seq)}
        while True:
            nxt = [r for r in ranges if r[0] == seq]
            if not nxt:
                break
            for ms in ranges[nxt[0]]:
                n += 1
                out[n] = ms
            seq = nxt[0][1] + 1
        assert all(r[1] < seq for r in ranges), "a segment was missed"
        return out


def _writer_times(path):
    with open(path) as f:
        return {int(a): float(b) for a, b in (line.split() for line in f)}


def test_point_in_time_restore_is_exact_at_random_times(tmp_path):
    db = str(tmp_path / "app.db")
    rep = str(tmp_path / "rep")
    log = str(tmp_path / "agent.log")
    commits = str(tmp_path / "commits.log")
    cfg = _config(tmp_path, db, rep, compaction="1s, 3s", **{"retention-check-interval": "500ms"})
    run_writer(db, "--count", "1")
    agent = start_agent_ready("--config", cfg, log_path=log)
    client = FileReplicaClient(rep)
    times = TxTimes(client, k0=1)
    try:
        run_writer(db, "--seconds", "8", "--rate", "150", "--commit-log", commits)
        time.sleep(2.5)  # let the last windows close and merge
    finally:
        assert stop(agent) == 0
        times.close()
    recorded = times.commit_ms()
    written = _writer_times(commits)
    assert set(recorded) == set(written), "every transaction was recorded exactly once"
    # Recorded times are the agent's view of the commit: close to the writer's own clock.
    skew = [recorded[n] / 1000 - written[n] for n in written]
    assert max(abs(s) for s in skew) < 2.0, max(skew, key=abs)
    cat = history.catalog(client.list("generations/"))
    assert any(n.first_seq != n.last_seq for n, _ in cat.newest().segments), "compaction ran"

    first, last = min(recorded.values()), max(recorded.values())
    rng = random.Random(7)
    targets = [rng.randint(first - 200, last + 200) for _ in range(20)]
    targets += [recorded[n] for n in rng.sample(sorted(recorded), 8)]  # exactly at a commit
    targets += [recorded[n] - 1 for n in rng.sample(sorted(recorded), 4)]
    for i, t in enumerate(targets):
        out = str(tmp_path / f"pitr{i}.db")
        restore(client, out, until_ms=t)
        k = committed_prefix(out)
        expected = max([1] + [n for n, ms in recorded.items() if ms <= t])
        assert k == expected, f"target {history.format_ms(t)}: restored {k}, expected {expected}"
        assert integrity(out) == "ok"
        os.unlink(out)


def test_point_in_time_across_generations_by_cli(tmp_path):
    db = str(tmp_path / "app.db")
    rep = str(tmp_path / "rep")
    log = str(tmp_path / "agent.log")
    run_writer(db, "--count", "1")
    agent = start_agent_ready(db, f"file://{rep}", log_path=log)
    run_writer(db, "--count", "50", "--rate", "200")
    time.sleep(0.5)
    kill9(agent)
    mid = int(time.time() * 1000)
    time.sleep(0.05)
    run_writer(db, "--count", "30")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL restarts: continuity is lost
    conn.close()
    agent = start_agent_ready(db, f"file://{rep}", log_path=log)
    run_writer(db, "--count", "20", "--rate", "200")
    assert stop(agent) == 0
    gens = litesync("generations", "--json", f"file://{rep}")
    assert gens.returncode == 0, gens.stderr
    import json

    listed = json.loads(gens.stdout)
    assert listed["count"] == 2 and listed["generations"][-1]["current"]
    out = str(tmp_path / "mid.db")
    stamp = history.format_ms(mid)
    r = litesync("restore", "--timestamp", stamp, "-o", out, f"file://{rep}")
    assert r.returncode == 0, r.stderr
    assert committed_prefix(out) == 51  # everything before the kill, nothing written after it
    dry = litesync("restore", "--dry-run", "--timestamp", stamp, f"file://{rep}")
    assert dry.returncode == 0 and listed["generations"][0]["generation"] in dry.stdout
    early = litesync("restore", "--timestamp", "2001-01-01T00:00:00Z", "-o", str(tmp_path / "e.db"), f"file://{rep}")
    assert early.returncode == 1
    assert "nothing to restore at or before 2001-01-01T00:00:00.000Z; it holds 2" in early.stderr
    assert not os.path.exists(tmp_path / "e.db")
    bad = litesync("restore", "--timestamp", "14:01", "-o", str(tmp_path / "e.db"), f"file://{rep}")
    assert bad.returncode == 2 and "--timestamp: invalid time: '14:01'" in bad.stderr
    for what in ("snapshots", "segments"):
        r = litesync(what, f"file://{rep}")
        assert r.returncode == 0 and "total: " in r.stdout and what in r.stdout


def test_retention_and_compaction_under_a_writer_then_pitr_inside_the_window(tmp_path):
    db = str(tmp_path / "app.db")
    rep = str(tmp_path / "rep")
    log = str(tmp_path / "agent.log")
    commits = str(tmp_path / "commits.log")
    cfg = _config(tmp_path, db, rep, retention="4s", compaction="1s, 2s", **{
        "snapshot-interval": "2s", "retention-check-interval": "300ms"})
    run_writer(db, "--count", "1")
    agent = start_agent_ready("--config", cfg, log_path=log)
    client = FileReplicaClient(rep)
    times = TxTimes(client, k0=1)
    try:
        run_writer(db, "--seconds", "12", "--rate", "100", "--commit-log", commits)
        time.sleep(1.0)
    finally:
        assert stop(agent) == 0
        times.close()
    stopped = int(time.time() * 1000)
    recorded = times.commit_ms()
    cat = history.catalog(client.list("generations/"))
    g = cat.newest()
    assert len(cat.generations) == 1
    # Old history is gone: the oldest snapshot is at most a window (plus a few checks) old.
    assert min(s.created_ms for s, _ in g.snapshots) >= stopped - 4000 - 2000 - 3000
    assert min(n.first_seq for n, _ in g.segments) > 0
    assert any(n.first_seq != n.last_seq for n, _ in g.segments)
    # Every moment inside the window restores exactly.
    window_start = stopped - 4000 + 1500
    inside = sorted(ms for ms in recorded.values() if ms >= window_start)
    assert len(inside) > 100
    checks = [ms for ms in inside[::15]] + [ms - 1 for ms in inside[7::40]] + [stopped]
    for i, t in enumerate(checks):
        out = str(tmp_path / f"w{i}.db")
        restore(client, out, until_ms=t, check=(i % 5 == 0))
        expected = max(n for n, ms in recorded.items() if ms <= t)
        assert committed_prefix(out) == expected, history.format_ms(t)
        os.unlink(out)
    latest = str(tmp_path / "latest.db")
    restore(client, latest)
    assert content_digest(latest) == content_digest(db)


def test_retention_waits_for_a_restore_that_planned_with_old_objects(replicated, tmp_path, caplog):
    """Retention deletes only what has been unneeded for a grace period; a restore whose
    objects vanish mid-way plans again rather than failing or restoring less."""
    db, client = replicated
    now = [time.time() + 3600]  # an hour later: merged segments end before the window
    m = Maintainer(client, db="t", replica="r", retention=60, compaction=(600,), interval=1,
                   work_dir=str(tmp_path), grace=5, clock=lambda: now[0])

    class RetentionMidway(FileReplicaClient):
        """Compacts, then deletes the parts, just after the restore opened its snapshot."""
        opened = 0

        def open(self, key):
            f = super().open(key)
            RetentionMidway.opened += 1
            if RetentionMidway.opened == 1:
                m.run_once()
                assert m.stats["compactions"] >= 1 and m.stats["deleted"] == 0  # grace period
                now[0] += 6
                assert m.apply_retention() > 0
            return f

    before = {o.key for o in client.list("generations/")}
    caplog.set_level("INFO")
    r = restore(RetentionMidway(client.root), str(tmp_path / "out.db"))
    after = {o.key for o in client.list("generations/")}
    assert len(after - before) >= 1 and len(before - after) >= 10  # merged in, parts out
    assert "planning the restore again" in caplog.text
    assert content_digest(str(tmp_path / "out.db")) == content_digest(db)
    assert integrity(str(tmp_path / "out.db")) == "ok"
    assert r.transactions >= 1


def test_waiting_segments_ship_as_one_object_and_keep_every_commit(tmp_path):
    """A replica that uploads at most every 300 ms gets the commits of that time in one
    object; restores to the latest state and to every recorded commit are still exact."""
    db = str(tmp_path / "app.db")
    rep = str(tmp_path / "rep")
    cfg = tmp_path / "litesync.yml"
    cfg.write_text(f"compaction: off\ndbs:\n  - path: {db}\n    replicas:\n"
                   f"      - url: file://{rep}\n        sync-interval: 300ms\n")
    run_writer(db, "--count", "1")
    agent = start_agent_ready("--config", str(cfg), log_path=str(tmp_path / "agent.log"))
    client = FileReplicaClient(rep)
    times = TxTimes(client, k0=1)
    try:
        run_writer(db, "--seconds", "3", "--rate", "100")
    finally:
        assert stop(agent) == 0
        times.close()
    segments = history.catalog(client.list("generations/")).newest().segments
    transactions = committed_prefix(db) - 1
    batched = [n for n, _ in segments if n.last_seq > n.first_seq]
    assert batched, "segments waiting in the spool went up together"
    assert len(segments) < transactions / 5, (len(segments), transactions)
    recorded = times.commit_ms()
    assert sorted(recorded) == list(range(2, transactions + 2)), "every commit is listed once"
    out = str(tmp_path / "latest.db")
    restore(client, out)
    assert content_digest(out) == content_digest(db)
    for n in random.Random(3).sample(sorted(recorded), 6):
        out = str(tmp_path / f"at{n}.db")
        restore(client, out, until_ms=recorded[n])
        # Commits in the same millisecond restore together.
        assert committed_prefix(out) == max(k for k, ms in recorded.items() if ms <= recorded[n])
