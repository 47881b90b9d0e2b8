"""Durable files and directories: fsync of a directory, private directories, and writes
that are whole or absent (temp file, fsync, rename, fsync of the directory)."""

from __future__ import annotations

import contextlib
import os
from typing import BinaryIO, Iterator

__all__ = ["COPY_CHUNK", "TMP_SUFFIX", "atomic_file", "fsync_dir", "makedirs_private", "publish_temp", "temp_file",
           "unlink_quietly", "write_file_atomic"]

TMP_SUFFIX = ".tmp"
COPY_CHUNK = 1 << 20


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
    except BaseException:
        f.close()
        unlink_quietly(tmp)
        raise
    f.close()


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
