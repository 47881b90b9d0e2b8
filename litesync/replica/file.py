"""A replica in a local directory: atomic writes by temp file, fsync and rename."""

from __future__ import annotations

import errno
import os
import shutil
from typing import BinaryIO, Iterable, Iterator

from ..errors import LocalWriteError, ObjectNotFoundError, ReplicaError
from ..fsutil import (COPY_CHUNK, TMP_SUFFIX, atomic_file, fsync_dir, makedirs_private, publish_temp,  # noqa: F401 (modules import these from here too)
                      temp_file, unlink_quietly, write_file_atomic)
from .base import ObjectInfo, ReplicaClient

class FileReplicaClient(ReplicaClient):
    """Objects are files under ``root``; a key's '/' separators become directories."""

    def __init__(self, root: str, name: str | None = None) -> None:
        self.root = os.path.abspath(root)
        self.name = name or f"file://{self.root}"

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise ReplicaError(self.name, f"invalid object key: {key!r}")
        return os.path.join(self.root, *parts)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        found: list[ObjectInfo] = []
        # Only walk the directory the prefix points into.
        base_dir = self.root
        if "/" in prefix:
            base_dir = os.path.join(self.root, *prefix.rsplit("/", 1)[0].split("/"))
        try:
            for dirpath, _dirnames, filenames in os.walk(base_dir, onerror=self._walk_error):
                for fn in filenames:
                    if fn.endswith(TMP_SUFFIX):
                        continue
                    full = os.path.join(dirpath, fn)
                    key = os.path.relpath(full, self.root).replace(os.sep, "/")
                    if key.startswith(prefix):
                        try:
                            size = os.stat(full).st_size
                        except FileNotFoundError:
                            continue
                        found.append(ObjectInfo(key, size))
        except OSError as e:
            raise ReplicaError(self.name, f"cannot list {base_dir!r}: {e.strerror}") from e
        found.sort(key=lambda o: o.key)
        return iter(found)

    @staticmethod
    def _walk_error(e: OSError) -> None:
        if e.errno != errno.ENOENT:
            raise e

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise ObjectNotFoundError(self.name, key) from None
        except OSError as e:
            raise ReplicaError(self.name, f"cannot read {key!r}: {e.strerror}") from e

    def write(self, key: str, src: BinaryIO, size: int) -> None:
        path = self._path(key)
        try:
            write_file_atomic(path, src, size)  # a failed write leaves no temp file behind
        except OSError as e:
            raise LocalWriteError(self.name, self.root, e, key) from e

    def write_file(self, key: str, path: str) -> int:
        """Hard-link ``path`` into place when it lies on the same file system (no copy, no
        new inode; ``path`` is already durable and never changes), else copy it."""
        dest = self._path(key)
        tmp = dest + TMP_SUFFIX
        try:
            makedirs_private(os.path.dirname(dest))
            unlink_quietly(tmp)
            os.link(path, tmp)
        except OSError:  # another file system, or no hard links here: copy
            return super().write_file(key, path)
        try:
            publish_temp(dest)
            return os.stat(dest).st_size
        except OSError as e:
            unlink_quietly(tmp)
            raise LocalWriteError(self.name, self.root, e, key) from e

    def delete(self, keys: Iterable[str], durable: bool = True) -> None:
        """Delete the files; with ``durable`` the deletions are fsynced."""
        dirs = set()
        for key in keys:
            path = self._path(key)
            try:
                os.unlink(path)
                dirs.add(os.path.dirname(path))
            except FileNotFoundError:
                pass
            except OSError as e:
                raise ReplicaError(self.name, f"cannot delete {key!r}: {e.strerror}") from e
        for d in dirs if durable else ():
            fsync_dir(d)
        # Remove directories left empty, up to the root.
        for d in sorted(dirs, key=len, reverse=True):
            while d.startswith(self.root + os.sep):
                try:
                    os.rmdir(d)
                except OSError:
                    break
                d = os.path.dirname(d)

    def copy_to(self, key: str, dest: str) -> None:
        """Copy one object to a local path (used by tests and restore caching)."""
        with self.open(key) as f, open(dest, "wb") as out:
            shutil.copyfileobj(f, out, COPY_CHUNK)
