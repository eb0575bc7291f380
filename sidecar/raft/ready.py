"""The core's one output: a batch of work for the runtime.

The runtime handles a Ready in this order, then calls ``Raft.advance``:

1. persist ``snapshot`` (if any), then ``entries`` (truncating the stored log
   from ``entries[0].index`` first), then ``hard_state``, and fsync;
2. send ``messages`` (they may depend on what step 1 made durable; a
   leader may send its appends before step 1, see ``split_messages``);
3. install ``snapshot`` into the state machine, then apply
   ``committed_entries`` in order;
4. answer the reads in ``read_states`` once the state machine has applied
   up to their index, and fail those in ``failed_reads``.

The core takes no other input between ``ready()`` and ``advance()``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sidecar.raft.messages import AppendRequest, HeartbeatRequest, Message
from sidecar.raft.types import Entry, HardState, NodeId, Snapshot


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting (metrics, logs, leader forwarding)."""

    role: Role
    leader_id: NodeId | None
    term: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``."""

    request_id: int
    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None
    hard_state: HardState | None
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    failed_reads: tuple[int, ...]
    """Read requests this node can no longer confirm (it lost leadership)."""


def split_messages(
    rd: Ready, *, role: Role, durable: HardState
) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
    """Split ``rd.messages`` into those that may leave before the batch is
    persisted and those that must wait until it is.

    A leader may replicate entries it has not yet made durable itself (Raft
    dissertation §10.2.1): its own copy counts toward a commit only once the
    runtime has persisted it, because the runtime steps the followers'
    answers only after this batch's persist and ``advance``. Writing locally
    in parallel with the round trip takes one fsync off every commit.

    The exception is a batch that changes this node's term or vote (for
    example a single-voter node that campaigned and won in one step): a
    message of a term not yet durable could be repeated differently after a
    crash, so then everything waits. Everything but appends and heartbeats
    (vote answers, append answers, snapshots, TimeoutNow) waits too.
    """
    if role is not Role.LEADER or not rd.messages:
        return (), rd.messages
    hs = rd.hard_state
    if hs is not None and not hs.same_term_and_vote(durable):
        return (), rd.messages
    before = tuple(m for m in rd.messages if isinstance(m, AppendRequest | HeartbeatRequest))
    if len(before) == len(rd.messages):
        return before, ()
    return before, tuple(
        m for m in rd.messages if not isinstance(m, AppendRequest | HeartbeatRequest)
    )
