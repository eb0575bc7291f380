"""Write a new data directory whose Raft log starts above every old token.

Theory of operation
-------------------
Fencing tokens are Raft log indices. A new cluster whose log *begins* with a
snapshot at index ``M`` gives its first entry index ``M + 1``, so its first
grant's token exceeds every token the old cluster issued as long as ``M`` is
at least the highest of them. ``start_index`` picks
``M = max(old index, --min-token) + TOKEN_MARGIN``:

* the old index (the backup's, or the survivor's last log index) bounds
  every token the state knows of;
* ``--min-token`` is the operator's floor, read from the ledger's fence table
  (the highest token any resource accepted): it covers tokens the old cluster
  issued after the backup was taken, or that the lost majority committed and
  the survivor never received;
* ``TOKEN_MARGIN`` (10^9) is the net under a forgotten or stale
  ``--min-token``: the old cluster would have had to write a billion log
  entries after the backup (years of grants at hundreds per second) for a
  new token to collide. It costs nothing: tokens are unsigned 64-bit, ledger
  columns signed 64-bit (BIGINT), so 9 * 10^9 restores fit, and tokens stay
  below 2^53, exact in every JSON consumer, for nine million restores. etcd's
  ``etcdutl snapshot restore --bump-revision`` is the same idea (revisions
  must not go back for watchers); there the operator must choose the bump.

The directory gets, in this order: a snapshot at ``M`` whose membership is
the new server alone (``<node>~<new incarnation>``, a voter) and whose data
is the elections state unchanged; a write-ahead log reset to ``M``; a hard
state at the snapshot's term with no vote; and **last** the identity file,
already decided (``initial_voters`` = that server), so ``decide_entry`` never
asks the peers and the node elects itself at once. The identity is the
commit point: a crash before it leaves Raft state without an identity, which
``serve`` refuses to start (``IdentityStore``) and this writer refuses to
overwrite, so a half-written directory is never served.
"""

from __future__ import annotations

import secrets

from sidecar.config import valid_node_id
from sidecar.disaster import DisasterError
from sidecar.raft import HardState, Membership, Snapshot, SnapshotMetadata
from sidecar.serverid import server_id
from sidecar.storage.disk import DiskStorage
from sidecar.storage.errors import StorageError
from sidecar.storage.fs import FileSystem, OsFileSystem
from sidecar.storage.identity import Identity, IdentityStore

TOKEN_MARGIN = 1_000_000_000
"""Added above the highest known index or token (see the module docstring)."""
_MAX_START_INDEX = 1 << 62
"""Leaves 2^62 tokens of room below a signed 64-bit ledger column."""


def start_index(old_index: int, min_token: int) -> int:
    """The index ``M`` the new log's snapshot sits at; the first token is above it.

    Raises DisasterError for a negative floor, or one so high that tokens
    would no longer fit a signed 64-bit ledger column.
    """
    if old_index < 0 or min_token < 0:
        raise DisasterError("--min-token and the old index must not be negative")
    index = max(old_index, min_token) + TOKEN_MARGIN
    if index > _MAX_START_INDEX:
        raise DisasterError(f"start index {index} leaves too little room below 2^63 for tokens")
    return index


def check_names(cluster_id: str, node: str) -> None:
    """Raises DisasterError when the cluster id or node name cannot be served."""
    if not cluster_id or any(c.isspace() for c in cluster_id):
        raise DisasterError(f"cluster id {cluster_id!r}: must be non-empty, without spaces")
    if not valid_node_id(node):
        raise DisasterError(f"node id {node!r}: use 1-63 of [A-Za-z0-9._-], starting alphanumeric")


def is_empty(directory: str, fs: FileSystem) -> bool:
    """Whether ``directory`` is missing or empty. Raises DisasterError when it
    cannot be listed (a file, no permission)."""
    try:
        return not fs.exists(directory) or not fs.listdir(directory)
    except StorageError as exc:
        raise DisasterError(f"{directory} cannot be used: {exc}") from exc


def write_fresh_directory(
    directory: str,
    *,
    cluster_id: str,
    node: str,
    state: bytes,
    index: int,
    term: int,
    fs: FileSystem | None = None,
) -> Identity:
    """Write a new node's data directory holding ``state`` at log ``index``.

    The node is the sole voter of a new cluster ``cluster_id``, under a new
    incarnation. Returns its identity. Raises DisasterError when
    ``directory`` is not empty or a name is invalid, and when writing fails
    (then the directory has no identity and is refused at start).
    """
    fs = fs or OsFileSystem()
    check_names(cluster_id, node)
    if not is_empty(directory, fs):
        raise DisasterError(f"{directory} is not empty: restore writes only into a new directory")
    if index < 1 or term < 1:
        raise DisasterError(f"cannot start a log at index {index} term {term}")
    incarnation = secrets.token_hex(8)
    me = server_id(node, incarnation)
    snapshot = Snapshot(SnapshotMetadata(index, term, Membership(frozenset({me}))), state)
    try:
        storage = DiskStorage(directory, fs)
        try:
            storage.recover()
            storage.persist(HardState(term, None, index), snapshot, [])
        finally:
            storage.close()
        identity = Identity(cluster_id, node, incarnation, initial_voters=(me,))
        IdentityStore(directory, fs).write(identity)  # last: the commit point
    except StorageError as exc:
        raise DisasterError(f"writing {directory} failed: {exc}") from exc
    return identity
