"""Messages between Raft peers.

One frozen dataclass per kind, all sharing ``term``, ``sender`` and
``recipient``. The transport translates them to protobuf at the boundary; the
core only ever sees these.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.raft.types import Entry, NodeId, Snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class _Envelope:
    term: int
    sender: NodeId
    recipient: NodeId


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRequest(_Envelope):
    """RequestVote (Raft §5.2) or its PreVote probe (dissertation §9.6).

    A pre-vote carries the term the candidate *would* use and changes nobody's
    state. ``transfer`` marks a campaign started by TimeoutNow, which voters
    honour even while they still hear from a leader.
    """

    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResponse(_Envelope):
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendRequest(_Envelope):
    """AppendEntries (Raft §5.3) carrying entries; heartbeats are separate."""

    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    commit_only: bool = False
    """Sent without entries, only to spread a new commit index to a follower
    in replicate state: the follower answers it only when its log does not
    match (the answer would tell the leader nothing new otherwise)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResponse(_Envelope):
    """Answer to AppendRequest and SnapshotRequest.

    On success ``index`` is the last index the follower now shares with the
    leader. On rejection ``index`` is the rejected ``prev_log_index`` and the
    hint names the follower's best guess of where the logs may agree: the
    largest index at or below it whose term is at most the leader's
    ``prev_log_term`` (fast backtracking, as in etcd).
    """

    success: bool
    index: int
    reject_hint_index: int = 0
    reject_hint_term: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatRequest(_Envelope):
    """Keeps followers quiet and confirms leadership for ReadIndex (``read_seq``).

    ``leader_commit`` is capped by the follower's match index, so the follower
    may commit it; ``cluster_commit`` is the leader's own commit index, which
    the follower only *learns*: it tells a replica how far behind the cluster
    it is even when its acknowledgements never reach the leader (health).
    ``answer_optional``: the leader has nothing to learn from an answer, so
    the follower sends none (see ``Raft._heartbeat_answer_needed``).
    """

    leader_commit: int
    read_seq: int
    cluster_commit: int = 0
    answer_optional: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResponse(_Envelope):
    read_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRequest(_Envelope):
    """InstallSnapshot (Raft §7); chunking is the transport's business."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNowRequest(_Envelope):
    """Leadership transfer (dissertation §3.10): campaign now, skipping PreVote."""


Message = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | HeartbeatRequest
    | HeartbeatResponse
    | SnapshotRequest
    | TimeoutNowRequest
)
