"""``raft-sidecar snapshot restore FILE --data-dir NEWDIR --cluster-id NEWID
--node-id NAME [--min-token N]``: the first node of a new cluster, from a backup.

The backup is verified whole before anything is written; the new directory
(``sidecar.disaster.fresh``) holds the backup's elections state unchanged, at
a log index above the backup's and above ``--min-token``, with NAME as the
sole voter of ``NEWID``. The other nodes start with empty directories and
the same cluster id and join through the usual admission (learner, caught up
by snapshot, promoted). ``NEWID`` must differ from the backup's cluster id:
members of the old cluster then cannot exchange a single message with the new
one (every peer request carries the cluster id and is refused on mismatch),
so an old node restarted by mistake can neither vote in the new cluster nor
hand it entries of the old history (etcd's restore makes a new cluster id
for the same reason).
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.backup import Backup, BackupError, decode_backup
from sidecar.disaster import DisasterError
from sidecar.disaster.fresh import check_names, start_index, write_fresh_directory
from sidecar.storage.fs import FileSystem
from sidecar.storage.identity import Identity


@dataclass(frozen=True, slots=True)
class Restored:
    backup: Backup
    identity: Identity
    start_index: int
    """The new log's snapshot index: every token issued from now on is above it."""


def restore_backup(
    data: bytes,
    directory: str,
    *,
    cluster_id: str,
    node: str,
    min_token: int = 0,
    fs: FileSystem | None = None,
) -> Restored:
    """Write ``directory`` from the backup file's bytes ``data``.

    Raises DisasterError (one line) for a corrupt or unknown backup, a reused
    cluster id, an invalid name or floor, a non-empty directory, or a failed
    write (nothing is then served from the directory: it has no identity).
    """
    try:
        backup = decode_backup(data)
    except BackupError as exc:
        raise DisasterError(f"the backup is refused: {exc}") from exc
    check_names(cluster_id, node)
    if cluster_id == backup.cluster_id:
        raise DisasterError(
            f"--cluster-id must differ from the backup's cluster id {backup.cluster_id!r}: "
            "members of the old cluster must not be able to talk to the restored one"
        )
    start = start_index(backup.index, min_token)
    identity = write_fresh_directory(
        directory,
        cluster_id=cluster_id,
        node=node,
        state=backup.state,
        index=start,
        term=max(backup.term, 1),
        fs=fs,
    )
    return Restored(backup, identity, start)
