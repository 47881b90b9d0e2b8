"""The agent's own disk fails (the spool's file system full): one clear line, status failed
with the reason, a metric, no traceback, nothing half written shipped, and recovery."""

from __future__ import annotations

import errno
import logging
import os
import time

from dbcheck import content_digest, integrity
from proc import litesync, run_writer, wait_for

from litesync.config import load_config
from litesync.runner import DbReplication


def test_a_full_spool_disk_pauses_copying_in_one_line_and_recovers(tmp_path, caplog):
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
    caplog.set_level(logging.INFO)
    d.start()
    try:
        assert d.started.wait(30) and d.error is None
        full["on"] = True
        run_writer(db, "--count", "20", "--rate", "200")
        wait_for(lambda: d.state() == "failed", timeout=10)
        time.sleep(2.5)  # a few retries
        st = d.status()
        assert st["state"] == "failed" and "No space left on device" in st["error"] and st["errors"] >= 2
        lines = [r for r in caplog.records if "No space left on device" in r.getMessage()]
        assert len([r for r in lines if r.levelno == logging.ERROR]) == 1, [r.getMessage() for r in lines]
        assert lines[0].getMessage().endswith("copying paused (the application is not affected), "
                                              "retrying every second")
        assert not any(r.exc_info for r in caplog.records)  # no traceback
        assert not [n for n in os.listdir(spool.root) if n.endswith(".tmp")]  # nothing half written left
        full["on"] = False
        wait_for(lambda: d.state() == "replicating", timeout=10)
        run_writer(db, "--count", "3")
    finally:
        assert d.stop(30)
    out = str(tmp_path / "restored.db")
    r = litesync("restore", "-o", out, f"file://{tmp_path / 'rep'}")
    assert r.returncode == 0, r.stderr
    assert integrity(out) == "ok" and content_digest(out) == content_digest(db)
