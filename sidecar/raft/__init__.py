"""The Raft core: pure, deterministic, no I/O. See ``core`` for the theory of operation."""

from sidecar.raft.config import RaftConfig
from sidecar.raft.core import Raft, RandomSource
from sidecar.raft.errors import (
    CommittedLogContradicted,
    ConfChangeRejected,
    InvariantViolation,
    NotLeader,
    ProposalDropped,
    RaftError,
    RaftUsageError,
)
from sidecar.raft.membership import ConfChange, ConfChangeKind, decode_conf_entry
from sidecar.raft.messages import (
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    SnapshotRequest,
    TimeoutNowRequest,
    VoteRequest,
    VoteResponse,
)
from sidecar.raft.ready import ReadState, Ready, Role, SoftState, split_messages
from sidecar.raft.types import (
    Entry,
    EntryKind,
    HardState,
    Membership,
    NodeId,
    PersistentState,
    Snapshot,
    SnapshotMetadata,
    needs_sync,
)

__all__ = [
    "AppendRequest",
    "AppendResponse",
    "CommittedLogContradicted",
    "ConfChange",
    "ConfChangeKind",
    "ConfChangeRejected",
    "Entry",
    "EntryKind",
    "HardState",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "InvariantViolation",
    "Membership",
    "Message",
    "NodeId",
    "NotLeader",
    "PersistentState",
    "ProposalDropped",
    "Raft",
    "RaftConfig",
    "RaftError",
    "RaftUsageError",
    "RandomSource",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotRequest",
    "SoftState",
    "TimeoutNowRequest",
    "VoteRequest",
    "VoteResponse",
    "decode_conf_entry",
    "needs_sync",
    "split_messages",
]
