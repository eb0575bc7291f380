"""What the node runtime needs from storage, and the order it relies on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sidecar.raft import Entry, HardState, PersistentState, Snapshot


class RaftStorage(Protocol):
    """The durable home of one node's Raft state.

    Implementations: ``DiskStorage`` (segment files, fsync) and
    ``MemoryStorage`` (the same semantics in memory, with crash points that
    lose unsynced writes, for the simulator and unit tests).
    """

    def recover(self) -> PersistentState:
        """Read what is durable. Raises CorruptionError when it cannot be trusted."""
        ...

    def persist(
        self,
        hard_state: HardState | None,
        snapshot: Snapshot | None,
        entries: Sequence[Entry],
    ) -> None:
        """Make one ready batch durable; nothing is acknowledged before this returns.

        Order: a received ``snapshot`` replaces the whole log; ``entries``
        truncate the log from ``entries[0].index`` and are appended; then
        ``hard_state``. Raises StorageIOError (fatal) when a write or sync fails.

        A batch that only raises the commit index (no snapshot, no entries,
        same term and vote) must not sync or block: it becomes durable with
        the next batch (Raft never needs it for safety), and the runtime
        records it on its event loop instead of the disk thread.
        """
        ...

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Durably store a snapshot of our own state machine, then drop the log it covers."""
        ...

    def close(self) -> None: ...
