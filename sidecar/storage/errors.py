"""Errors of the storage layer.

Every one of them is fatal to the node: the runtime stops with the message
(and a non-zero exit) instead of serving a log it cannot trust, or retrying a
write into an unknown state.
"""

from __future__ import annotations


class StorageError(Exception):
    """Root of the storage errors."""


class CorruptionError(StorageError):
    """Stored data failed verification: a checksum, a gap, a missing file.

    Names the file and the byte offset so an operator can look at it with
    ``raft-sidecar storage inspect``.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path} at byte {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class StorageIOError(StorageError):
    """A write, fsync, rename or directory sync failed (disk full, I/O error).

    After this the files may hold a partial write that was never
    acknowledged; the node must stop and recover from disk on restart.
    """

    def __init__(self, operation: str, path: str, cause: OSError) -> None:
        super().__init__(f"{operation} {path} failed: {cause.strerror or cause}")
        self.operation = operation
        self.path = path
        self.cause = cause
