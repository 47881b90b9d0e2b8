"""Running litesync and the writer as real processes in tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "workload.py")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITESYNC_", "B2_"))}
    env.update(extra or {})
    return env


def litesync(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
             cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI to completion."""
    return subprocess.run([sys.executable, "-m", "litesync", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or clean_env(), cwd=cwd)


def start_litesync(*args: str, env: dict[str, str] | None = None, log_path: str | None = None) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "litesync", *args], stdout=out, stderr=out,
                            env=env or clean_env())


def start_agent_ready(*args: str, log_path: str, env: dict[str, str] | None = None,
                      timeout: float = 30) -> subprocess.Popen:
    """Start ``litesync replicate ...`` and wait until its first shipment is done."""
    start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    p = start_litesync("replicate", *args, env=env, log_path=log_path)

    def new_output() -> str:
        with open(log_path) as f:
            f.seek(start)
            return f.read()

    def ready() -> bool:
        if p.poll() is not None:
            raise AssertionError(f"agent exited with {p.returncode}: {new_output()}")
        return "up to date" in new_output()

    try:
        wait_for(ready, timeout)
    except BaseException:
        kill9(p)  # a test that fails here must not leave an agent running
        raise
    return p


def start_writer(db: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKLOAD, db, *args], env=clean_env())


def run_writer(db: str, *args: str, timeout: float = 300) -> None:
    subprocess.run([sys.executable, WORKLOAD, db, *args], check=True, timeout=timeout, env=clean_env())


def kill9(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()


def stop(p: subprocess.Popen, timeout: float = 60) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    return p.wait(timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
