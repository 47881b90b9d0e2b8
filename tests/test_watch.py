"""The inotify observer: changed files are delivered, repeated writes fold into few events."""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest

from litesync import watch

pytestmark = pytest.mark.skipif(not watch.available(), reason="inotify is Linux only")


class Recorder:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.seen = threading.Event()

    def on_any_event(self, event) -> None:
        self.paths.append(event.src_path)
        self.seen.set()


def test_parse_events_reads_names_and_padding():
    def event(wd, mask, name):
        raw = name.encode() + b"\0"
        raw += b"\0" * (-len(raw) % 16)
        return struct.pack("iIII", wd, mask, 0, len(raw)) + raw

    data = event(1, watch.IN_MODIFY, "app.db-wal") + event(2, watch.IN_CREATE, "x.db") + event(1, watch.IN_IGNORED, "")
    assert watch.parse_events(data) == [(1, watch.IN_MODIFY, "app.db-wal"), (2, watch.IN_CREATE, "x.db"),
                                        (1, watch.IN_IGNORED, "")]


def test_changed_files_are_delivered_and_repeated_writes_fold(tmp_path):
    rec = Recorder()
    obs = watch.InotifyObserver(pause=0.2)
    obs.schedule(rec, str(tmp_path))
    obs.start()
    try:
        path = tmp_path / "app.db-wal"
        with open(path, "wb") as f:
            for _ in range(2000):  # within one pause: folded by the kernel and by the reader
                f.write(b"x" * 64)
                f.flush()
        assert rec.seen.wait(5)
        time.sleep(0.5)
        assert set(rec.paths) == {str(path)}
        assert len(rec.paths) <= 5, len(rec.paths)
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "inner").write_bytes(b"y")  # not watched: a subdirectory
        (tmp_path / "new.db").write_bytes(b"z")
        deadline = time.monotonic() + 5
        while str(tmp_path / "new.db") not in rec.paths and time.monotonic() < deadline:
            time.sleep(0.02)
        assert str(tmp_path / "new.db") in rec.paths
        assert str(tmp_path / "sub" / "inner") not in rec.paths
    finally:
        obs.stop()
        obs.join(5)
    assert not obs.is_alive() and obs.fd == -1


def test_unscheduled_directory_is_quiet(tmp_path):
    rec = Recorder()
    obs = watch.InotifyObserver(pause=0.01)
    wd = obs.schedule(rec, str(tmp_path))
    obs.start()
    try:
        obs.unschedule(wd)
        (tmp_path / "a").write_bytes(b"1")
        time.sleep(0.3)
        assert rec.paths == []
    finally:
        obs.stop()
        obs.join(5)


def test_missing_directory_is_an_os_error(tmp_path):
    obs = watch.InotifyObserver()
    try:
        with pytest.raises(OSError, match="inotify watch .*missing"):
            obs.schedule(Recorder(), str(tmp_path / "missing"))
    finally:
        os.close(obs.fd)
