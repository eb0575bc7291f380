"""Settings of one Raft node, validated where they are made."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.raft.errors import RaftUsageError
from sidecar.raft.types import Membership, NodeId


@dataclass(frozen=True, slots=True)
class RaftConfig:
    node_id: NodeId
    initial_membership: Membership
    """The bootstrap configuration, used only while neither the snapshot nor
    the log holds one. A node joining an existing cluster passes the empty
    membership and learns the real one from the leader."""
    election_timeout_ticks: int = 10
    """Followers wait a random time in [this, 2 * this) ticks before campaigning."""
    heartbeat_ticks: int = 1
    max_inflight_appends: int = 64
    max_entries_per_append: int = 256
    max_bytes_per_append: int = 1 << 20
    max_uncommitted_entries: int = 10_000
    """Proposals beyond this many uncommitted entries are dropped (back-pressure)."""
    max_committed_per_ready: int = 1_024
    max_pending_reads: int = 4_096
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        if not self.node_id:
            raise RaftUsageError("node_id must not be empty")
        if self.heartbeat_ticks < 1:
            raise RaftUsageError("heartbeat_ticks must be >= 1")
        if self.election_timeout_ticks <= self.heartbeat_ticks:
            raise RaftUsageError("election_timeout_ticks must exceed heartbeat_ticks")
        for name in (
            "max_inflight_appends",
            "max_entries_per_append",
            "max_bytes_per_append",
            "max_uncommitted_entries",
            "max_committed_per_ready",
            "max_pending_reads",
        ):
            if getattr(self, name) < 1:
                raise RaftUsageError(f"{name} must be >= 1")
