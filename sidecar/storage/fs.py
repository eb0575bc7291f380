"""The few file-system operations storage needs, behind one small interface.

Why an interface: the crash tests swap in a file system that keeps only what
was fsynced (and directory entries only once their directory was fsynced),
then "crashes" at random points; they also inject ENOSPC and EIO. Production
uses ``OsFileSystem``. Every ``OSError`` from a mutating operation becomes a
``StorageIOError`` naming the operation and the path, so no caller can
swallow a failed write by accident.

Paths are plain strings; directories are created by ``makedirs``. Durability
rules the implementations share:

* ``WritableFile.write`` may be lost on a crash until ``WritableFile.sync``
  returns;
* creating, renaming or unlinking a file may be lost on a crash until
  ``sync_dir`` of its directory returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from sidecar.storage.errors import StorageIOError


class WritableFile(Protocol):
    def write(self, data: bytes) -> None: ...
    def sync(self) -> None: ...
    def truncate(self, size: int) -> None: ...
    def tell(self) -> int: ...
    def close(self) -> None: ...


class FileSystem(Protocol):
    def makedirs(self, path: str) -> None: ...
    def listdir(self, path: str) -> list[str]:
        """Names in ``path``, sorted."""
        ...

    def exists(self, path: str) -> bool: ...
    def read_bytes(self, path: str) -> bytes: ...
    def open_append(self, path: str) -> WritableFile:
        """Open for appending, creating the file if missing."""
        ...

    def open_truncate(self, path: str) -> WritableFile:
        """Open empty for writing, creating or truncating the file."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` with ``src``."""
        ...

    def unlink(self, path: str) -> None: ...
    def sync_dir(self, path: str) -> None: ...


@contextmanager
def _io(operation: str, path: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StorageIOError(operation, path, exc) from exc


class _OsFile:
    def __init__(self, path: str, flags: int) -> None:
        self._path = path
        with _io("open", path):
            self._fd = os.open(path, flags | os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._offset = os.lseek(self._fd, 0, os.SEEK_END)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        with _io("write", self._path):
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self._offset += written

    def sync(self) -> None:
        with _io("fsync", self._path):
            os.fsync(self._fd)

    def truncate(self, size: int) -> None:
        with _io("truncate", self._path):
            os.ftruncate(self._fd, size)
            self._offset = os.lseek(self._fd, size, os.SEEK_SET)

    def tell(self) -> int:
        return self._offset

    def close(self) -> None:
        with _io("close", self._path):
            os.close(self._fd)


class OsFileSystem:
    """The real file system."""

    def makedirs(self, path: str) -> None:
        with _io("mkdir", path):
            os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        with _io("list", path):
            return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def read_bytes(self, path: str) -> bytes:
        with _io("read", path), open(path, "rb") as f:
            return f.read()

    def open_append(self, path: str) -> WritableFile:
        return _OsFile(path, os.O_APPEND)

    def open_truncate(self, path: str) -> WritableFile:
        return _OsFile(path, os.O_TRUNC)

    def rename(self, src: str, dst: str) -> None:
        with _io("rename", src):
            os.replace(src, dst)

    def unlink(self, path: str) -> None:
        with _io("unlink", path):
            os.unlink(path)

    def sync_dir(self, path: str) -> None:
        with _io("fsync directory", path):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
