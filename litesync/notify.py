"""Readiness notification, systemd's ``sd_notify`` protocol: a datagram such as ``READY=1``
sent to the Unix socket named by ``$NOTIFY_SOCKET``. ``litesync replicate`` sends READY=1
once every database replicates and every replica was checked; a systemd unit of
``Type=notify`` and the Python API (``Listener``) both wait for it."""

from __future__ import annotations

import logging
import os
import select
import shutil
import socket
import tempfile

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``) to ``$NOTIFY_SOCKET``; False when there is none."""
    address = os.environ.get(ENV)
    if not address:
        return False
    if address.startswith("@"):  # Linux abstract namespace
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.debug("%s: unsupported address: %r", ENV, address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError as e:  # the listener may be gone already (a parent that stopped waiting)
        log.debug("%s: cannot notify %r: %s", ENV, address, e.strerror)
        return False
    return True


class Listener:
    """A private notification socket for a child process: put ``path`` in its ``$NOTIFY_SOCKET``."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="litesync-notify-")
        self.path = os.path.join(self._dir, "socket")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.bind(self.path)

    def receive(self, timeout: float) -> list[str]:
        """Return the assignments (``READY=1``, ...) received within ``timeout`` seconds."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return []
        return self._sock.recv(4096).decode(errors="replace").splitlines()

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)
