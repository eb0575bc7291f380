"""The core's one output: a batch of work for the runtime.

The runtime handles a Ready in this order, then calls ``Raft.advance``:

1. persist ``snapshot`` (if any), then ``entries`` (truncating the stored log
   from ``entries[0].index`` first), then ``hard_state``, and fsync;
2. send ``messages`` (they may depend on what step 1 made durable);
3. install ``snapshot`` into the state machine, then apply
   ``committed_entries`` in order;
4. answer the reads in ``read_states`` once the state machine has applied
   up to their index, and fail those in ``failed_reads``.

The core takes no other input between ``ready()`` and ``advance()``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sidecar.raft.messages import Message
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
