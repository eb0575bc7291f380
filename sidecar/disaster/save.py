"""``raft-sidecar snapshot save --data-dir DIR FILE``: a backup from a stopped node.

The backup holds the elections state at the directory's commit index: its
newest snapshot plus its committed log, replayed as the node would replay
them at start. Only committed entries: a backup states what the cluster
agreed on, and a node's uncommitted tail may be overwritten by its leader.
(``recover``, which has no leader to ask, applies the tail too.) The
directory is only read (``sidecar.disaster.replay``); the file is written
to ``FILE.tmp``, fsynced and renamed over ``FILE``, so a crash leaves the
old file or the complete new one, as etcdctl's ``snapshot save`` does.
"""

from __future__ import annotations

import posixpath

from sidecar.backup import Backup, encode_backup
from sidecar.disaster import DisasterError
from sidecar.disaster.replay import read_stopped_directory, replay
from sidecar.storage.errors import StorageError
from sidecar.storage.fs import FileSystem, OsFileSystem
from sidecar.storage.hardstate import write_file_atomically


def backup_directory(directory: str, *, now_unix_ms: int, fs: FileSystem | None = None) -> Backup:
    """The backup of the stopped node's ``directory``. Raises DisasterError."""
    stopped = read_stopped_directory(directory, fs)
    replayed = replay(stopped, stopped.commit_index)
    return Backup(
        cluster_id=stopped.identity.cluster,
        index=replayed.index,
        term=replayed.term,
        created_at_unix_ms=now_unix_ms,
        state=replayed.state,
    )


def write_backup(path: str, backup: Backup, fs: FileSystem | None = None) -> None:
    """Write ``backup`` to ``path`` (absolute) atomically. Raises DisasterError."""
    fs = fs or OsFileSystem()
    if not fs.exists(posixpath.dirname(path)):
        raise DisasterError(f"{posixpath.dirname(path)} does not exist")
    try:
        write_file_atomically(fs, path, [encode_backup(backup)])
    except StorageError as exc:
        raise DisasterError(f"writing {path} failed: {exc}") from exc
