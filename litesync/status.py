"""What a running agent publishes about each database, and how to read it back.

The agent rewrites ``status.json`` in the database's state directory
(``.<name>-litesync/``) soon after a change, atomically (temp file and rename); never
just because time passed, so an agent of ten thousand idle databases writes nothing.
On a full disk it is rewritten in place instead (see ``write_status``), so that a reader
learns why replication is paused.
Whether an agent is running is not taken from that file, which a killed agent leaves
behind: the running agent holds a lock on ``.<name>-litesync/lock``. That it is alive
and publishing is shown by its process's control directory beside the database
(``.litesync-control-<pid>/``, ``control`` in the file; one per directory of databases):
the agent touches ``heartbeat`` there every few seconds, and a reader who wants a fresh
status of one database (times such as ``copied_through.at`` move without a change being
published) drops a request in ``requests/``; the agent then looks at that database at
once and rewrites its file (``ask_fresh``).

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

import errno
import fcntl
import hashlib
import json
import os
import shutil
import time

from .errors import LitesyncError
from .fsutil import no_room, unlink_quietly
from .layout import state_dir_for

LOCK_FILE = "lock"  # in the state directory; the running agent holds an exclusive flock on it
STATUS_FILE = "status.json"
FORMAT = 1
#: A running agent touches its heartbeat every few seconds; older than this, its status is stale.
STALE_AFTER = 10.0
HEARTBEAT = "heartbeat"
ASK_EVERY = 0.5  # a reader waiting for a fresh status asks again this often
REQUESTS = "requests"


CONTROL_PREFIX = ".litesync-control-"


class ProcessControl:
    """An agent process's control directory in ``root``, a directory of databases it
    replicates (see the module docstring): named by the process id, removed when the
    process stops; those of dead processes are removed when one starts."""

    def __init__(self, root: str) -> None:
        for name in os.listdir(root):
            if name.startswith(CONTROL_PREFIX) and not _alive(name[len(CONTROL_PREFIX):]):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        self.path = os.path.join(root, f"{CONTROL_PREFIX}{os.getpid()}")
        shutil.rmtree(self.path, ignore_errors=True)
        os.makedirs(os.path.join(self.path, REQUESTS), mode=0o700)
        self.heartbeat()

    def heartbeat(self) -> None:
        with open(os.path.join(self.path, HEARTBEAT), "w"):
            pass  # opened for writing and truncated: its mtime is now

    def requests(self) -> list[str]:
        """The database paths whose fresh status was asked for since the last call."""
        d = os.path.join(self.path, REQUESTS)
        paths: list[str] = []
        try:
            names = os.listdir(d)
        except FileNotFoundError:  # removed from under us: made again
            os.makedirs(d, mode=0o700, exist_ok=True)
            return paths
        for name in names:
            try:
                with open(os.path.join(d, name)) as f:
                    paths.append(f.read())
                os.remove(os.path.join(d, name))
            except OSError:
                continue
        return paths

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def ask_fresh(status: dict) -> bool:
    """Ask the agent that published ``status`` to rewrite it soon; False when it cannot be asked."""
    control = status.get("control")
    if not control:
        return False
    name = hashlib.sha256(status["db"].encode()).hexdigest()[:32]
    path = os.path.join(control, REQUESTS, name)
    try:
        with open(path + ".tmp", "w") as f:
            f.write(status["db"])
        os.replace(path + ".tmp", path)
    except OSError:
        return False
    return True


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


STATUS_BLOCK = 4096  # a status file is padded to whole blocks of this size, with room to spare
STATUS_SPARE = 2048


def write_status(db_path: str, data: dict) -> None:
    """Replace the status file atomically. No fsync: it is rewritten every second, and a
    file lost in a crash only means the next agent publishes a new one.

    The JSON is padded with spaces to whole blocks, with room to spare, which costs no disk
    space (a file takes whole blocks anyway): when the disk is full, so that a new file
    cannot be written, the status is rewritten in place within the blocks the file has."""
    path = status_path(db_path)
    text = json.dumps(data, indent=1).encode() + b"\n"
    size = -(-(len(text) + STATUS_SPARE) // STATUS_BLOCK) * STATUS_BLOCK
    tmp = path + ".tmp"
    try:
        # Owner-only, like everything in the state directory.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if os.write(fd, text.ljust(size)) != size:  # a disk all but full takes what fits
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        unlink_quietly(tmp)
        if not no_room(e) or not _rewrite_in_place(path, text):
            raise


def _rewrite_in_place(path: str, text: bytes) -> bool:
    """Overwrite the file at ``path`` with ``text`` padded to its size; False when it is
    too short for it (or gone). A reader may see the file half rewritten: see read_status."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        if len(text) > size:
            return False
        os.pwrite(fd, text.ljust(size), 0)
    finally:
        os.close(fd)
    return True


def read_statuses(db_paths: list[str], fresh: float = 0.0) -> list[dict]:
    """``read_status`` of each database; with ``fresh`` (seconds), ask each running agent to
    rewrite its status first, and wait up to that long in all for the new ones."""
    statuses = [read_status(p) for p in db_paths]
    if fresh <= 0:
        return statuses
    asked = time.time()
    pending = [i for i, st in enumerate(statuses) if st["running"] and not st["stale"] and ask_fresh(st)]
    deadline = time.monotonic() + fresh
    while pending and time.monotonic() < deadline:
        time.sleep(0.02)
        for i in list(pending):
            statuses[i] = read_status(db_paths[i])
            if float(statuses[i].get("updated_at") or 0) >= asked:
                pending.remove(i)
    return statuses


def read_status(db_path: str, now: float | None = None) -> dict:
    """Return what the agent replicating ``db_path`` publishes (see the module docstring)."""
    db = os.path.abspath(db_path)
    now = time.time() if now is None else now
    running = agent_running(db)
    path = status_path(db)
    try:
        data = _load_status(path)
    except FileNotFoundError:
        return {"db": db, "running": running, "published": False, "stale": False, "age_seconds": None,
                "replicas": []}
    except ValueError as e:
        # A file cut short by a crash; the agent replaces it within a second if it runs.
        return {"db": db, "running": running, "published": False, "stale": True, "age_seconds": None,
                "error": f"unreadable status file: {path}: {e}", "replicas": []}
    except OSError as e:
        raise LitesyncError(f"cannot read the agent status: {path}: {e.strerror}") from None
    confirmed = float(data.get("updated_at") or 0)
    if data.get("control"):
        try:
            confirmed = os.stat(os.path.join(data["control"], HEARTBEAT)).st_mtime
        except OSError:
            confirmed = 0.0
    age = max(0.0, now - confirmed)
    stale = not running or age > STALE_AFTER or data.get("state") == "stopped"
    if not stale:
        # A lag grows while nothing else changes, and the file is rewritten on changes only.
        waited = max(0.0, now - float(data.get("updated_at") or now))
        for r in data.get("replicas", []):
            if r.get("state") == "pending" and r.get("lag_seconds"):
                r["lag_seconds"] = round(r["lag_seconds"] + waited, 3)
    return {**data, "db": db, "running": running, "published": True, "stale": stale,
            "age_seconds": round(age, 3)}


def _load_status(path: str, attempts: int = 3) -> dict:
    """The status file's JSON object. On a full disk the agent rewrites it in place, so a
    read may catch it half written: it is read again (up to ``attempts`` times) before
    ValueError says it is unreadable."""
    for _ in range(attempts - 1):
        try:
            return _parse_status(path)
        except ValueError:
            time.sleep(0.05)
    return _parse_status(path)


def _parse_status(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


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
    asked = 0.0
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
            if time.monotonic() - asked >= ASK_EVERY and ask_fresh(st):
                asked = time.monotonic()
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
