"""The identity of a data directory: which cluster and node it belongs to, and
which incarnation of that node it is.

Theory of operation
-------------------
``DIR/identity`` is written once, when the directory is first used, before
anything else of Raft is stored there. It names the cluster and the node the
operator configured and carries a random *incarnation* id. A node whose
directory was lost (a PersistentVolumeClaim re-created, a disk replaced)
starts with a new incarnation, hence a new Raft server id
(``sidecar.serverid``): to the cluster it is a new server that has voted for
nobody and acknowledged nothing, and it must be admitted through the log
before it counts for anything (docs/membership.md).

It also records how the node entered the cluster (``initial_voters``):
``None`` while undecided (a fresh directory asks its peers first), the list
of server ids of the initial voters when this node bootstrapped a new
cluster with them, or an empty list when it joins an existing cluster and
learns the membership from the leader's log. The decision is written before
the node takes part in Raft, so a restart never decides differently.

A directory that holds Raft state but no identity file (written by a build
that predates this file) or an identity of another cluster or node is refused
at start: serving it under the wrong name could make one node two voters.
The file is canonical JSON with a CRC-32C, replaced atomically (write a
temporary file, fsync, rename, fsync the directory).
"""

from __future__ import annotations

import json
import posixpath
import secrets
from dataclasses import dataclass, replace

from sidecar.serverid import server_id
from sidecar.storage.checksum import crc32c
from sidecar.storage.errors import CorruptionError, StorageError
from sidecar.storage.fs import FileSystem, OsFileSystem

IDENTITY_FILE = "identity"
FORMAT = 1
_RAFT_STATE = ("hardstate", "wal", "snapshots")


class IdentityMismatch(StorageError):
    """The data directory belongs to another cluster or node, or predates identities."""


class ServerRemoved(IdentityMismatch):
    """The directory's server was removed from its cluster: it never serves again."""


@dataclass(frozen=True, slots=True)
class Identity:
    cluster: str
    """The operator's cluster id (``--cluster-id``)."""
    node: str
    """The node name (``--node-id``)."""
    incarnation: str
    """16 hex digits, random, made with the directory."""
    initial_voters: tuple[str, ...] | None = None
    """None: undecided; (): joined an existing cluster; else the bootstrap voters."""
    admitted_index: int = 0
    """0 until this server first saw itself a member in its committed log; then
    that commit index (at least 1). A server admitted once and not a member
    later was removed (docs/membership.md, "A removed member stays removed")."""
    removed: str = ""
    """Empty, or why this server learned it was removed from the cluster: it
    never starts again on this directory."""

    @property
    def server_id(self) -> str:
        return server_id(self.node, self.incarnation)


def _encode(identity: Identity) -> bytes:
    body = {
        "cluster": identity.cluster,
        "format": FORMAT,
        "incarnation": identity.incarnation,
        "initial_voters": None
        if identity.initial_voters is None
        else list(identity.initial_voters),
        "node": identity.node,
    }
    # Written only once set, so a directory that never saw them keeps the
    # same bytes (and an older build reads it).
    if identity.admitted_index:
        body["admitted_index"] = identity.admitted_index
    if identity.removed:
        body["removed"] = identity.removed
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return json.dumps(
        {"body": body, "crc32c": crc32c(text.encode())}, sort_keys=True, separators=(",", ":")
    ).encode()


def _decode(path: str, data: bytes) -> Identity:
    try:
        document = json.loads(data)
        body = document["body"]
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        if crc32c(text.encode()) != document["crc32c"]:
            raise CorruptionError(path, 0, "identity checksum mismatch")
        if body["format"] != FORMAT:
            raise CorruptionError(path, 0, f"unknown identity format {body['format']!r}")
        voters = body["initial_voters"]
        identity = Identity(
            cluster=str(body["cluster"]),
            node=str(body["node"]),
            incarnation=str(body["incarnation"]),
            initial_voters=None if voters is None else tuple(str(v) for v in voters),
            admitted_index=int(body.get("admitted_index", 0)),
            removed=str(body.get("removed", "")),
        )
        if identity.admitted_index < 0:
            raise ValueError(f"admitted_index {identity.admitted_index} is negative")
        server_id(identity.node, identity.incarnation)  # validates both
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptionError(path, 0, f"malformed identity file: {exc}") from exc
    return identity


class IdentityStore:
    """Reads and writes ``DIR/identity``."""

    def __init__(self, directory: str, fs: FileSystem | None = None) -> None:
        self.directory = directory
        self.path = posixpath.join(directory, IDENTITY_FILE)
        self._fs = fs or OsFileSystem()

    def read(self) -> Identity | None:
        """The stored identity, or None when the file does not exist.

        Raises CorruptionError when it exists but does not verify.
        """
        if not self._fs.exists(self.path):
            return None
        return _decode(self.path, self._fs.read_bytes(self.path))

    def write(self, identity: Identity) -> None:
        """Replace the file atomically and durably. Raises StorageIOError."""
        self._fs.makedirs(self.directory)
        tmp = self.path + ".tmp"
        f = self._fs.open_truncate(tmp)
        try:
            f.write(_encode(identity))
            f.sync()
        finally:
            f.close()
        self._fs.rename(tmp, self.path)
        self._fs.sync_dir(self.directory)

    def load_or_create(self, *, cluster: str, node: str) -> tuple[Identity, bool]:
        """The directory's identity, creating a new incarnation for a new directory.

        Returns (identity, created). Raises IdentityMismatch when the
        directory belongs to another cluster or node, or holds Raft state
        without an identity; CorruptionError when the file does not verify.
        """
        existing = self.read()
        if existing is None:
            self._refuse_orphaned_state()
            identity = Identity(cluster=cluster, node=node, incarnation=secrets.token_hex(8))
            self.write(identity)
            return identity, True
        if existing.cluster != cluster:
            raise IdentityMismatch(
                f"{self.directory} belongs to cluster {existing.cluster!r}, "
                f"not {cluster!r} (--cluster-id)"
            )
        if existing.node != node:
            raise IdentityMismatch(
                f"{self.directory} belongs to node {existing.node!r}, not {node!r} (--node-id)"
            )
        if existing.removed:
            raise ServerRemoved(
                f"{self.directory}: server {existing.server_id} was removed from the cluster "
                f"({existing.removed}); a removed server never rejoins: wipe the whole "
                "directory to join as a new incarnation (docs/runbooks.md)"
            )
        return existing, False

    def record_admitted(self, identity: Identity, commit_index: int) -> Identity:
        """Record, once, that this server saw itself a member at ``commit_index``.
        Raises StorageIOError."""
        admitted = replace(identity, admitted_index=max(1, commit_index))
        self.write(admitted)
        return admitted

    def record_removed(self, identity: Identity, why: str) -> Identity:
        """Record that this server was removed; ``load_or_create`` refuses it from
        now on. Raises StorageIOError."""
        removed = replace(identity, removed=why or "removed")
        self.write(removed)
        return removed

    def decide(self, identity: Identity, initial_voters: tuple[str, ...]) -> Identity:
        """Record how this node entered the cluster (once). Raises StorageIOError."""
        decided = replace(identity, initial_voters=tuple(sorted(initial_voters)))
        self.write(decided)
        return decided

    def _refuse_orphaned_state(self) -> None:
        if not self._fs.exists(self.directory):
            return
        found = [n for n in self._fs.listdir(self.directory) if n in _RAFT_STATE]
        if found:
            raise IdentityMismatch(
                f"{self.directory} holds Raft state ({', '.join(found)}) but no identity file: "
                "it was written by an older build or only partly wiped. Wipe the whole "
                "directory to rejoin as a new incarnation (docs/membership.md)"
            )
