"""Real small disks for disk-full tests and scripts/faults.py: a tmpfs of a few MB mounted
at a directory (root only), filled with a ballast file until writes fail with ENOSPC, and
freed by deleting it."""

from __future__ import annotations

import errno
import os
import subprocess

BALLAST = "ballast"


class MountRefused(Exception):
    """This machine does not let us mount a tmpfs (not root, or in a container without the right)."""


class SmallDisk:
    """A tmpfs of ``size`` (``8m``) mounted at ``path`` (created if need be)."""

    def __init__(self, path: str, size: str = "8m", options: str = "") -> None:
        os.makedirs(path, exist_ok=True)
        opts = f"size={size}" + (f",{options}" if options else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path], capture_output=True, text=True)
        if r.returncode:
            raise MountRefused(f"mount -t tmpfs -o {opts} tmpfs {path}: {r.stderr.strip() or r.returncode}")
        self.path = path
        self.ballast = os.path.join(path, BALLAST)

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Grow the ballast file until the disk is full (down to the last page); return its size."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 16, 1 << 12, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def reserve(self, size: int) -> None:
        """Take ``size`` bytes with the ballast file (the disk fills that much sooner)."""
        with open(self.ballast, "ab") as f:
            f.write(b"\0" * size)

    def free(self) -> None:
        """Delete the ballast: the space is back at once."""
        os.unlink(self.ballast)

    def unmount(self) -> None:
        # Lazily: a process of a failed test may still hold a file open there.
        subprocess.run(["umount", "-l", self.path], capture_output=True)


def mount_small_disk(path: str, size: str = "8m", options: str = "") -> SmallDisk:
    """Mount a SmallDisk; pytest skips the test (saying why) where mounting is not permitted."""
    import pytest

    try:
        return SmallDisk(path, size, options)
    except (MountRefused, FileNotFoundError) as e:  # FileNotFoundError: no mount(8)
        pytest.skip(f"a real small disk (tmpfs) cannot be mounted here: {e}")
