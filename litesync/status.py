"""What a running agent publishes about each database, and how to read it back.

The agent rewrites ``status.json`` in the database's state directory
(``.<name>-litesync/``) about once a second and soon after a change, atomically (temp
file and rename). Whether an agent is running is not taken from that file, which a killed
agent leaves behind: the running agent holds a lock on ``.<name>-litesync/lock``.

``read_status(db_path)`` returns a dict: ``db``, ``running`` (an agent holds the lock),
``published`` (a status file exists), ``stale`` (the file is not a live agent's current
view) and ``age_seconds``, then what the agent published: ``pid``, ``started_at``,
``updated_at`` (Unix times in seconds), ``state`` (starting, waiting, replicating,
failed, stopped), ``error``, ``generation``, ``last_snapshot_at``, ``snapshot_seconds``,
``spool_bytes``, ``checkpoints``, ... and ``replicas``: one dict per replica with
``name``, ``destination``, ``state`` (pending, completed, failed), ``last_error``,
``lag_seconds``, ``lag_bytes``, ``generation``, ``uploaded_objects``, ``uploaded_bytes``,
``errors``, ``retries``, ``validation``, ...
"""

from __future__ import annotations

import fcntl
import json
import os
import time

from .errors import LitesyncError
from .layout import state_dir_for

LOCK_FILE = "lock"  # in the state directory; the running agent holds an exclusive flock on it
STATUS_FILE = "status.json"
FORMAT = 1
#: A running agent rewrites its status at least every second; older than this, it is stale.
STALE_AFTER = 10.0


def status_path(db_path: str) -> str:
    return os.path.join(state_dir_for(db_path), STATUS_FILE)


def agent_running(db_path: str) -> bool:
    """True when an agent holds the lock of ``db_path``'s state directory."""
    try:
        fd = os.open(os.path.join(state_dir_for(db_path), LOCK_FILE), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we got
    return False


def write_status(db_path: str, data: dict) -> None:
    """Replace the status file atomically. No fsync: it is rewritten every second, and a
    file lost in a crash only means the next agent publishes a new one."""
    path = status_path(db_path)
    tmp = path + ".tmp"
    # Owner-only, like everything in the state directory.
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def read_status(db_path: str, now: float | None = None) -> dict:
    """Return what the agent replicating ``db_path`` publishes (see the module docstring)."""
    db = os.path.abspath(db_path)
    now = time.time() if now is None else now
    running = agent_running(db)
    path = status_path(db)
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return {"db": db, "running": running, "published": False, "stale": False, "age_seconds": None,
                "replicas": []}
    except ValueError as e:
        # A file cut short by a crash; the agent replaces it within a second if it runs.
        return {"db": db, "running": running, "published": False, "stale": True, "age_seconds": None,
                "error": f"unreadable status file: {path}: {e}", "replicas": []}
    except OSError as e:
        raise LitesyncError(f"cannot read the agent status: {path}: {e.strerror}") from None
    age = max(0.0, now - float(data.get("updated_at") or 0))
    stale = not running or age > STALE_AFTER or data.get("state") == "stopped"
    return {**data, "db": db, "running": running, "published": True, "stale": stale,
            "age_seconds": round(age, 3)}


def healthy(status: dict) -> bool:
    """True when a live agent publishes a current status, is not stopping, and no replica has failed."""
    return (status["running"] and status["published"] and not status["stale"]
            and status.get("state") in ("starting", "waiting", "replicating")
            and all(r.get("state") != "failed" for r in status.get("replicas", [])))


def caught_up(copied: tuple[float, int, int], replica: tuple[int | None, int], since: float) -> bool:
    """True when a replica holds every transaction committed before ``since`` (pure).

    ``copied`` is the agent's (t, generation, next_seq): everything committed before t is
    in the spool before next_seq of that generation; ``replica`` the replica's position.
    """
    at, generation, next_seq = copied
    return at > since and replica[0] is not None and (replica[0], replica[1]) >= (generation, next_seq)


def wait_replica(db_path: str, replica: str, since: float, timeout: float, *, destination: str | None = None,
                 poll: float = 0.1) -> bool:
    """Wait until the running agent reports that ``replica`` (at ``destination``, when given)
    holds every transaction committed before ``since``; False at once when no agent runs or
    it ships to no such replica, False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        st = read_status(db_path)
        if not st["running"]:
            return False
        if st["published"] and not st["stale"]:  # else the agent is starting: wait for it
            r = next((r for r in st.get("replicas", []) if r.get("name") == replica
                      and destination in (None, r.get("destination"))), None)
            if r is None:
                return False  # the agent does not ship to this replica
            copied = st.get("copied_through") or {}
            if copied.get("generation") and r.get("generation") and caught_up(
                    (copied["at"], int(copied["generation"], 16), copied["next_seq"]),
                    (int(r["generation"], 16), r["next_seq"]), since):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
