"""choose_next: which spool object a replica ships next (pure)."""

import json
import threading

from litesync.layout import SegmentName, SnapshotName
from litesync.shipper import ReplicaPosition, Shipper, choose_next
from litesync.spool import sort_key

G, H = 0x10, 0x20


def objs(*names):
    return [(n, 1) for n in names]


def seg(gen, seq):
    return SegmentName(gen, seq, seq, 0)


def snap(gen, seq):
    return SnapshotName(gen, seq, 0)


def shipped(name):
    if isinstance(name, SnapshotName):
        return ReplicaPosition(sort_key(name), name.seq, name.key)
    return ReplicaPosition(sort_key(name), name.last_seq + 1)


def test_fresh_replica_starts_at_the_newest_snapshot_of_the_newest_generation():
    assert choose_next(objs(snap(G, 0), seg(G, 0), snap(H, 0), snap(H, 5)), ReplicaPosition()) == (snap(H, 5), False)


def test_next_segment_in_order_then_nothing():
    spool = objs(snap(G, 0), seg(G, 0), seg(G, 1))
    assert choose_next(spool, shipped(snap(G, 0))) == (seg(G, 0), False)
    assert choose_next(spool, shipped(seg(G, 0))) == (seg(G, 1), False)
    assert choose_next(spool, shipped(seg(G, 1))) == (None, False)


def test_dropped_segments_jump_to_a_later_snapshot_even_with_no_segment_left():
    # Segments 3 and 4 were dropped from the spool; only snapshot 5 remains.
    assert choose_next(objs(snap(G, 5)), shipped(seg(G, 2))) == (snap(G, 5), False)


def test_dropped_segments_without_a_snapshot_ask_for_one():
    assert choose_next(objs(seg(G, 7)), shipped(seg(G, 2))) == (None, True)


def test_old_generation_finished_moves_to_the_next():
    spool = objs(seg(G, 3), snap(H, 0), seg(H, 0))
    assert choose_next(spool, shipped(seg(G, 2))) == (seg(G, 3), False)
    assert choose_next(spool, shipped(seg(G, 3))) == (snap(H, 0), False)


def test_gap_in_an_old_generation_moves_on_instead_of_asking_for_a_snapshot():
    assert choose_next(objs(seg(G, 9), snap(H, 0)), shipped(seg(G, 2))) == (snap(H, 0), False)


def test_batch_takes_consecutive_segments_up_to_a_snapshot_or_gap():
    from litesync.shipper import batch_after

    objs = [(seg(1, 1), 10), (seg(1, 2), 10), (seg(1, 3), 10), (snap(1, 4), 10), (seg(1, 4), 10),
            (seg(1, 6), 10)]
    assert batch_after(objs, seg(1, 1)) == [seg(1, 1), seg(1, 2), seg(1, 3)]
    assert batch_after(objs, seg(1, 4)) == [seg(1, 4)]  # 5 is missing
    assert batch_after(objs, seg(1, 1), max_bytes=25) == [seg(1, 1), seg(1, 2)]
    assert batch_after(objs, seg(1, 1), max_parts=1) == [seg(1, 1)]
    other_gen = [(seg(1, 1), 10), (seg(2, 2), 10)]
    assert batch_after(other_gen, seg(1, 1)) == [seg(1, 1)]


def test_a_position_saved_for_another_destination_is_not_reused(tmp_path):
    """A replica keeps its name but moves (a new path): it starts over with a snapshot."""
    import threading

    from litesync.replica.file import FileReplicaClient
    from litesync.shipper import Shipper
    from litesync.spool import Spool

    spool = Spool(str(tmp_path / "spool"))
    state = str(tmp_path / "file.json")

    def shipper(destination):
        return Shipper(spool, FileReplicaClient(str(tmp_path / "r")), state, db="db", replica="file",
                       request_snapshot=threading.Event(), destination=destination)

    shipper("/a")._save(ReplicaPosition((G, 2, 1), 3))
    assert shipper("/a").pos == ReplicaPosition((G, 2, 1), 3)
    assert shipper("/b").pos == ReplicaPosition()
    with open(state, "w") as f:  # written before destinations were saved: taken as this replica's
        f.write('{"key": [16, 2, 1], "next_seq": 3}')
    assert shipper("/b").pos == ReplicaPosition((G, 2, 1), 3)


def test_the_position_file_is_rewritten_in_place(tmp_path):
    """One file for the shipper's life (no new inode per upload); a shorter position is
    padded over the longer one before it and still reads back."""
    import os
    import threading

    from litesync.replica.file import FileReplicaClient
    from litesync.shipper import Shipper
    from litesync.spool import Spool

    spool = Spool(str(tmp_path / "spool"))
    state = str(tmp_path / "replicas" / "file.json")
    s = Shipper(spool, FileReplicaClient(str(tmp_path / "r")), state, db="db", replica="file",
                request_snapshot=threading.Event(), destination="/r")
    s._save(ReplicaPosition((G, 123456789, 1), 123456790))
    inode = os.stat(state).st_ino
    s._save(ReplicaPosition((G, 2, 1), 3))
    assert os.stat(state).st_ino == inode
    again = Shipper(spool, FileReplicaClient(str(tmp_path / "r")), state, db="db", replica="file",
                    request_snapshot=threading.Event(), destination="/r")
    assert again.pos == ReplicaPosition((G, 2, 1), 3)
    assert not [f for f in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{f}") == state]


def test_sync_interval_ships_after_a_quiet_spell_at_once_then_spaces_uploads(tmp_path):
    """With sync-interval 2s: the first commit goes up at once, the next waits for the interval."""
    import os
    import threading
    import time

    from litesync.agent import DbAgent
    from litesync.replica.file import FileReplicaClient
    from litesync.shipper import Shipper
    from proc import run_writer

    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "1")
    agent = DbAgent(db)
    agent.open()
    rep = FileReplicaClient(str(tmp_path / "rep"))
    shipper = Shipper(agent.spool, rep, str(tmp_path / "pos.json"), db=db, replica="file",
                      request_snapshot=threading.Event(), sync_interval=2.0)

    def segments() -> int:
        return sum(1 for o in rep.list("generations/") if o.key.endswith(".seg"))

    def shipped_within(seconds: float) -> float:
        t0 = time.monotonic()
        while segments() < want and time.monotonic() - t0 < seconds:
            time.sleep(0.01)
        return time.monotonic() - t0

    try:
        agent.start()
        shipper.start()
        assert shipper.idle.wait(10)
        time.sleep(2.5)  # a quiet spell longer than the interval
        run_writer(db, "--count", "1")
        agent.sync()
        want = 1
        assert shipped_within(5) < 1.0, "after a quiet spell the commit goes up at once"
        run_writer(db, "--count", "1")
        agent.sync()
        want = 2
        waited = shipped_within(5)
        assert 1.0 < waited < 3.0, waited
    finally:
        shipper.stop()
        shipper.join(5)
        agent.close()
    assert os.path.exists(tmp_path / "pos.json")


def behind_a_gap(tmp_path):
    """A file replica's shipper at segment 2 of a spool that holds segment 7 (3..6 were
    dropped): (the shipper, a function publishing an object to its spool, the event it
    asks for a snapshot with)."""
    from litesync.replica.file import FileReplicaClient
    from litesync.spool import Spool

    spool = Spool(str(tmp_path / "spool"))

    def publish(name):
        with spool.writing(name) as f:
            f.write(b"x")
        spool.publish(name)

    publish(seg(G, 7))
    requested = threading.Event()
    s = Shipper(spool, FileReplicaClient(str(tmp_path / "r")), str(tmp_path / "pos.json"), db="db", replica="file",
                request_snapshot=requested)
    s.pos = shipped(seg(G, 2))
    return s, publish, requested


def test_a_replica_waiting_for_a_snapshot_asks_once_and_sleeps(tmp_path, monkeypatch):
    """The spool lacks what the replica needs next (segments 3..6 were dropped): the shipper
    asks the agent for a snapshot once for that position, then waits for the spool instead
    of spinning; a new position that needs one asks again."""
    import time

    from litesync import shipper as shipper_mod

    calls = []

    def counting(objects, pos):
        calls.append(pos)
        return choose_next(objects, pos)

    monkeypatch.setattr(shipper_mod, "choose_next", counting)
    s, publish, requested = behind_a_gap(tmp_path)
    s.start()
    try:
        assert requested.wait(5)
        requested.clear()
        calls.clear()
        time.sleep(1.0)
        assert len(calls) < 20, f"{len(calls)} choose_next calls in 1s"
        assert s.awaiting_snapshot and s.status == "pending"
        assert not requested.is_set(), "asked again for the same need"
        publish(seg(G, 8))  # the agent copies the WAL while it takes the snapshot
        time.sleep(0.2)
        assert not requested.is_set(), "asked again for the same need"
        publish(snap(G, 9))  # the snapshot: shipped, and the replica goes on from it
        publish(seg(G, 10))  # ... but segment 9 was dropped too: a new need
        assert requested.wait(5)
        assert s.pos == shipped(snap(G, 9))
    finally:
        s.stop()
        s.join(5)


def test_its_own_snapshot_dropped_from_the_spool_is_not_taken_for_a_foreign_one(tmp_path):
    """Snapshot S shipped, then dropped from the spool once segment S followed it; the agent
    restarts before segment S goes up. The replica's snapshot at S is this agent's (the
    position file says so): no needless new generation."""
    from litesync.replica.file import FileReplicaClient
    from litesync.spool import Spool

    spool = Spool(str(tmp_path / "spool"))
    client = FileReplicaClient(str(tmp_path / "replica"))
    G = 1 << 40
    snapshot = SnapshotName(G, 3, 1000)
    client.write_bytes(snapshot.key, b"the snapshot")
    state = str(tmp_path / "state.json")
    with open(state, "w") as f:
        json.dump({"key": list(sort_key(snapshot)), "next_seq": 3, "snapshot": snapshot.key,
                   "destination": None}, f)
    with spool.writing(seg(G, 3)) as f:
        f.write(b"segment")
    spool.publish(seg(G, 3))
    outbid = []
    s = Shipper(spool, client, state, db="db", replica="r", request_snapshot=threading.Event(),
                newer_generation=outbid.append)
    assert not s._replica_is_ahead(seg(G, 3))
    assert outbid == []
    other = SnapshotName(G, 3, 2000)  # the same sequence, another history's snapshot
    client.write_bytes(other.key, b"another")
    s = Shipper(spool, client, state, db="db", replica="r", request_snapshot=threading.Event(),
                newer_generation=outbid.append)
    assert s._replica_is_ahead(seg(G, 3))
    assert outbid == [G]


def test_spool_changes_do_not_bring_a_retry_after_a_failure_closer(tmp_path):
    """Found in review: every commit woke a failing shipper, which tried at once (123
    errors in 20 s where the backoff allows 6). A failure sets the next try's time; commits
    meanwhile wait for it."""
    import threading
    import time

    from litesync.errors import TransientReplicaError
    from litesync.replica.file import FileReplicaClient
    from litesync.shipper import Shipper
    from litesync.spool import Spool

    class Down(FileReplicaClient):
        def write(self, key, src, size):
            raise TransientReplicaError(self.name, "connection refused")

        def write_file(self, key, path):
            raise TransientReplicaError(self.name, "connection refused")

    spool = Spool(str(tmp_path / "spool"))
    G = 1 << 40

    def publish(name):
        with spool.writing(name) as f:
            f.write(b"x")
        spool.publish(name)

    publish(snap(G, 0))
    s = Shipper(spool, Down(str(tmp_path / "r")), str(tmp_path / "pos.json"), db="db", replica="r",
                request_snapshot=threading.Event())
    s.start()
    try:
        deadline = time.monotonic() + 2.0
        seq = 0
        while time.monotonic() < deadline:  # a commit every 20 ms
            publish(seg(G, seq))
            seq += 1
            time.sleep(0.02)
        # Backoff 0.5 s doubling (times 0.5 to 1): at most about 5 tries in 2 s.
        assert 1 <= s.errors <= 6, f"{s.errors} tries in 2 s"
    finally:
        s.stop()
        s.join(5)


def test_the_spool_bound_drops_the_oldest_unshipped_and_keeps_the_bridging_snapshot():
    """Past the bound, unshipped objects go oldest first; the newest snapshot stays, whatever
    its size, and is not counted: it is what a replica behind the dropped ones ships next."""
    from litesync.spool import over_bound

    spool = [(seg(G, 1), 10), (seg(G, 2), 10), (snap(G, 3), 1000), (seg(G, 3), 10), (seg(G, 4), 10),
             (seg(G, 5), 10)]
    behind = shipped(seg(G, 0))
    done, dropped, left = over_bound(spool, lambda n: sort_key(n) <= behind.key, 25)
    assert done == [] and dropped == [seg(G, 1), seg(G, 2), seg(G, 3)] and left == 20
    # Then the replica behind ships the snapshot, and goes on from it.
    assert choose_next([o for o in spool if o[0] not in dropped], behind) == (snap(G, 3), False)
    # Under the bound, only what every replica has goes (never the newest object).
    done, dropped, left = over_bound(spool, lambda n: True, 25)
    assert done == [n for n, _ in spool[:-1]] and dropped == [] and left == 10
    done, dropped, left = over_bound(spool, lambda n: sort_key(n) <= sort_key(seg(G, 2)), 1000)
    assert done == [seg(G, 1), seg(G, 2)] and dropped == [] and left == 30


def test_a_snapshot_dropped_before_the_replica_reached_it_is_asked_for_again(tmp_path):
    """A replica asks for a snapshot once per need; when the one taken is gone from the
    spool before the replica got to it, that is a new need (else it waits for ever)."""
    s, publish, requested = behind_a_gap(tmp_path)
    assert not s.ship_one() and requested.is_set() and s.awaiting_snapshot
    requested.clear()
    assert not s.ship_one() and not requested.is_set()  # the same need: asked once
    publish(snap(G, 8))
    s.spool.delete([snap(G, 8)])  # dropped before this replica's turn
    publish(seg(G, 8))
    assert not s.ship_one() and requested.is_set()
