"""An in-memory file system that crashes like a real one, for storage tests.

Theory of operation. Every file has *durable* bytes (what the last ``sync``
covered) and *current* bytes (what a running process reads). Directory
entries are the same: creating, renaming or unlinking a file changes the
current namespace at once, the durable one only when ``sync_dir`` runs on the
directory. ``crash()`` returns a new file system made of durable state only:
everything written after the last sync is gone, as after a power cut on a
disk that honours fsync.

Faults can be injected: ``fail_after_bytes`` makes writes fail with ENOSPC
once that many bytes were written in total (a full disk; the failing write
may land partially), and ``fail_sync`` makes the next fsync fail with EIO.
"""

from __future__ import annotations

import errno
import posixpath
from dataclasses import dataclass, field

from sidecar.storage.errors import StorageIOError


@dataclass
class _Inode:
    current: bytearray = field(default_factory=bytearray)
    durable: bytes = b""


@dataclass
class _State:
    dirs: set[str] = field(default_factory=set)
    current: dict[str, _Inode] = field(default_factory=dict)  # path -> inode (live namespace)
    durable: dict[str, _Inode] = field(default_factory=dict)  # path -> inode (after a crash)


class CrashFile:
    def __init__(self, fs: CrashFileSystem, path: str, inode: _Inode) -> None:
        self._fs = fs
        self._path = path
        self._inode = inode
        self._closed = False

    def write(self, data: bytes) -> None:
        self._fs._check_open(self._closed, self._path)
        allowed = self._fs._take_budget(len(data))
        self._inode.current += data[:allowed]
        if allowed < len(data):
            full = OSError(errno.ENOSPC, "No space left on device")
            raise StorageIOError("write", self._path, full)

    def sync(self) -> None:
        self._fs._check_open(self._closed, self._path)
        if self._fs.fail_sync:
            self._fs.fail_sync = False
            raise StorageIOError("fsync", self._path, OSError(errno.EIO, "Input/output error"))
        self._fs.syncs += 1
        self._inode.durable = bytes(self._inode.current)

    def truncate(self, size: int) -> None:
        self._fs._check_open(self._closed, self._path)
        del self._inode.current[size:]

    def tell(self) -> int:
        return len(self._inode.current)

    def close(self) -> None:
        self._closed = True


class CrashFileSystem:
    def __init__(self) -> None:
        self._state = _State()
        self.fail_after_bytes: int | None = None
        self.fail_sync = False
        self.bytes_written = 0
        self.syncs = 0

    # ---- fault plumbing ------------------------------------------------------

    def _take_budget(self, n: int) -> int:
        if self.fail_after_bytes is None:
            self.bytes_written += n
            return n
        allowed = max(0, min(n, self.fail_after_bytes - self.bytes_written))
        self.bytes_written += allowed
        return allowed

    @staticmethod
    def _check_open(closed: bool, path: str) -> None:
        if closed:
            raise StorageIOError("write", path, OSError(errno.EBADF, "file is closed"))

    def crash(self) -> CrashFileSystem:
        """A new file system holding only what was durable: the machine after a power cut."""
        after = CrashFileSystem()
        for path, inode in self._state.durable.items():
            after._state.current[path] = _Inode(bytearray(inode.durable), inode.durable)
        after._state.durable = dict(after._state.current)
        after._state.dirs = set(self._state.dirs)
        return after

    # ---- FileSystem -----------------------------------------------------------

    def makedirs(self, path: str) -> None:
        path = posixpath.normpath(path)
        while path not in ("/", ".", ""):
            self._state.dirs.add(path)
            path = posixpath.dirname(path)

    def listdir(self, path: str) -> list[str]:
        path = posixpath.normpath(path)
        if path not in self._state.dirs:
            raise StorageIOError("list", path, OSError(errno.ENOENT, "No such directory"))
        return sorted(
            posixpath.basename(p) for p in self._state.current if posixpath.dirname(p) == path
        )

    def exists(self, path: str) -> bool:
        path = posixpath.normpath(path)
        return path in self._state.current or path in self._state.dirs

    def read_bytes(self, path: str) -> bytes:
        inode = self._state.current.get(posixpath.normpath(path))
        if inode is None:
            raise StorageIOError("read", path, OSError(errno.ENOENT, "No such file"))
        return bytes(inode.current)

    def _open(self, path: str, truncate: bool) -> CrashFile:
        path = posixpath.normpath(path)
        if posixpath.dirname(path) not in self._state.dirs:
            raise StorageIOError("open", path, OSError(errno.ENOENT, "No such directory"))
        inode = self._state.current.get(path)
        if inode is None:
            inode = _Inode()
            self._state.current[path] = inode
        elif truncate:
            del inode.current[:]
        return CrashFile(self, path, inode)

    def open_append(self, path: str) -> CrashFile:
        return self._open(path, truncate=False)

    def open_truncate(self, path: str) -> CrashFile:
        return self._open(path, truncate=True)

    def rename(self, src: str, dst: str) -> None:
        src, dst = posixpath.normpath(src), posixpath.normpath(dst)
        inode = self._state.current.pop(src, None)
        if inode is None:
            raise StorageIOError("rename", src, OSError(errno.ENOENT, "No such file"))
        self._state.current[dst] = inode

    def unlink(self, path: str) -> None:
        path = posixpath.normpath(path)
        if self._state.current.pop(path, None) is None:
            raise StorageIOError("unlink", path, OSError(errno.ENOENT, "No such file"))

    def sync_dir(self, path: str) -> None:
        """Make the directory's current entries durable (files keep their own durability)."""
        path = posixpath.normpath(path)
        if self.fail_sync:
            self.fail_sync = False
            raise StorageIOError("fsync directory", path, OSError(errno.EIO, "Input/output error"))
        self.syncs += 1
        durable = {p: i for p, i in self._state.durable.items() if posixpath.dirname(p) != path}
        durable.update(
            {p: i for p, i in self._state.current.items() if posixpath.dirname(p) == path}
        )
        self._state.durable = durable
