"""A stopped node's data directory written through the real storage code."""

from __future__ import annotations

from pathlib import Path

from sidecar.machine import ElectionsMachine
from sidecar.raft import Entry, EntryKind, HardState, Membership, Snapshot, SnapshotMetadata
from sidecar.storage.disk import DiskStorage
from sidecar.storage.identity import Identity, IdentityStore
from tests.disaster.states import campaign, resign

OLD_INCARNATION = "0123456789abcdef"
TERM = 2

COMMANDS: dict[int, bytes] = {
    2: campaign("eur", "a"),
    3: campaign("eur", "b"),
    4: resign("eur", "a"),  # b is granted token 4
    6: campaign("usd", "c"),  # token 6
    7: campaign("gbp", "d"),  # token 7
}
"""Index 1 is the first leader's no-op, 5 a membership-free no-op too."""


def entries(last: int) -> list[Entry]:
    return [
        Entry(TERM, i, EntryKind.NORMAL, COMMANDS[i])
        if i in COMMANDS
        else Entry(TERM, i, EntryKind.NOOP)
        for i in range(1, last + 1)
    ]


def state_at(index: int) -> bytes:
    machine = ElectionsMachine()
    for entry in entries(index):
        if entry.kind is EntryKind.NORMAL:
            machine.apply(entry.index, entry.data)
    return machine.snapshot()


def make_node_dir(
    path: Path,
    *,
    last: int = 7,
    commit: int = 7,
    snapshot_at: int | None = None,
    cluster: str = "old",
    node: str = "s0",
) -> Identity:
    """A directory of a node of ``cluster`` whose log holds 1..``last``, committed
    up to ``commit``, compacted by a snapshot at ``snapshot_at``."""
    identity = Identity(cluster, node, OLD_INCARNATION)
    identity = Identity(cluster, node, OLD_INCARNATION, initial_voters=(identity.server_id,))
    IdentityStore(str(path)).write(identity)
    storage = DiskStorage(str(path))
    storage.recover()
    storage.persist(HardState(TERM + 1, identity.server_id, commit), None, entries(last))
    if snapshot_at is not None:
        meta = SnapshotMetadata(snapshot_at, TERM, Membership(frozenset({identity.server_id})))
        storage.save_snapshot(Snapshot(meta, state_at(snapshot_at)))
    storage.close()
    return identity
