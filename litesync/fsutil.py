"""Durable files and directories: fsync of a directory, private directories, writes that
are whole or absent (temp file, fsync, rename, fsync of the directory), and what a full
disk looks like (``no_room``, ``free_space``)."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import BinaryIO, Iterator

__all__ = ["COPY_CHUNK", "TMP_SUFFIX", "atomic_file", "free_space", "fsync_dir", "makedirs_private", "no_room",
           "publish_temp", "same_file_system", "temp_file", "unlink_quietly", "write_file_atomic"]

TMP_SUFFIX = ".tmp"
COPY_CHUNK = 1 << 20
# A file system out of space or out of inodes (ENOSPC), or the user's quota (EDQUOT).
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


def no_room(e: BaseException) -> bool:
    """True when ``e`` is a write refused for lack of room: the disk (or its inodes) full, or a quota."""
    return isinstance(e, OSError) and e.errno in _NO_ROOM


def free_space(path: str) -> tuple[int, int] | None:
    """(bytes, inodes) an unprivileged writer may still use on ``path``'s file system, or
    None when it cannot be told (``path`` gone)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_favail


def same_file_system(a: str, b: str) -> bool:
    """True when the existing paths ``a`` and ``b`` lie on one file system (False when either is gone)."""
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def fsync_dir(path: str) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_private(path: str) -> None:
    """Create the directory ``path`` and missing parents, readable by the owner only (0700).

    Directories that exist already are left as they are: they may be shared on purpose.
    """
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        makedirs_private(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


@contextlib.contextmanager
def temp_file(path: str, mode: int = 0o600, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield ``path.tmp`` for writing; fsync it on success (when ``durable``), remove it on failure."""
    makedirs_private(os.path.dirname(os.path.abspath(path)))
    tmp = path + TMP_SUFFIX
    f = open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb")
    try:
        yield f
        f.flush()
        if durable:
            os.fsync(f.fileno())
        f.close()
    except BaseException as e:
        # Closing flushes what is buffered, which fails again on a full disk (the
        # descriptor is closed all the same): the temp file goes whatever close says.
        with contextlib.suppress(OSError):
            f.close()
        unlink_quietly(tmp)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            # A write or flush names no file: name the one it was for.
            raise OSError(e.errno, e.strerror, tmp) from e
        raise


def publish_temp(path: str, durable: bool = True) -> None:
    """Rename ``path.tmp`` to ``path`` and (when ``durable``) make the rename durable."""
    os.replace(path + TMP_SUFFIX, path)
    if durable:
        fsync_dir(os.path.dirname(path) or ".")


@contextlib.contextmanager
def atomic_file(path: str, mode: int = 0o600, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a file to write ``path`` through ``path.tmp``; on success fsync, rename, fsync the
    dir (without the fsyncs when not ``durable``: the file is whole or absent, maybe older)."""
    with temp_file(path, mode, durable) as f:
        yield f
    publish_temp(path, durable)


def write_file_atomic(path: str, src: BinaryIO, size: int | None = None, mode: int = 0o600) -> None:
    """Write ``src`` to ``path`` atomically (see ``atomic_file``)."""
    with atomic_file(path, mode) as out:
        written = 0
        while True:
            chunk = src.read(COPY_CHUNK)
            if not chunk:
                break
            out.write(chunk)
            written += len(chunk)
        if size is not None and written != size:
            raise ValueError(f"{path}: expected {size} bytes from source, got {written}")


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
