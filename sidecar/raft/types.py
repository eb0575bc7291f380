"""Value types of the Raft core: log entries, hard state, membership, snapshots.

Every type here is a frozen, slotted dataclass that checks its own invariants on
construction, so that a malformed value is rejected where it is made rather
than where it is used. None of them knows about protobuf: the codec that maps
them to the wire lives outside the core.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from sidecar.raft.errors import InvariantViolation

NodeId = str
"""A node's stable name, e.g. ``sidecar-0``. Sorted wherever order matters."""


class EntryKind(enum.Enum):
    """What an entry means to the node that applies it."""

    NORMAL = 1
    """A command for the replicated state machine."""
    CONF_CHANGE = 2
    """A membership change; its data encodes the change and the full new membership."""
    NOOP = 3
    """Appended by every new leader so that it can commit an entry of its own term."""


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def __post_init__(self) -> None:
        if self.term < 1 or self.index < 1:
            raise InvariantViolation(f"entry needs term >= 1 and index >= 1, got {self}")


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it leaves the node.

    ``commit`` is persisted too so that a restarted node can re-apply its
    committed prefix without waiting for a leader; it is never required for
    safety.
    """

    term: int = 0
    voted_for: NodeId | None = None
    commit: int = 0

    def __post_init__(self) -> None:
        if self.term < 0 or self.commit < 0:
            raise InvariantViolation(f"negative term or commit in {self}")

    def same_term_and_vote(self, other: HardState) -> bool:
        """Whether only ``commit`` may differ from ``other``."""
        return self.term == other.term and self.voted_for == other.voted_for


def needs_sync(
    hard_state: HardState | None,
    snapshot: Snapshot | None,
    entries: Sequence[Entry],
    *,
    last: HardState,
) -> bool:
    """Whether persisting a ready batch must reach the disk (fsync) before
    anything that depends on it: entries, a snapshot, or a new term or vote.
    A batch that only raises the commit index (relative to ``last``, the hard
    state written before) is recorded without a sync of its own, since Raft
    never needs the commit index for safety."""
    if entries or snapshot is not None:
        return True
    return hard_state is not None and not hard_state.same_term_and_vote(last)


@dataclass(frozen=True, slots=True)
class Membership:
    """The voters and learners of one configuration.

    Conf-change entries carry the whole resulting membership rather than a
    delta, so a node that joins late, or truncates its log, can always read the
    configuration off the last conf-change entry it holds.
    """

    voters: frozenset[NodeId]
    learners: frozenset[NodeId] = frozenset()

    def __post_init__(self) -> None:
        both = self.voters & self.learners
        if both:
            raise InvariantViolation(f"nodes both voter and learner: {sorted(both)}")

    @property
    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners

    def quorum(self) -> int:
        """The size of a majority of the voters."""
        return len(self.voters) // 2 + 1


EMPTY_MEMBERSHIP = Membership(voters=frozenset())


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    index: int
    term: int
    membership: Membership

    def __post_init__(self) -> None:
        if self.index < 0 or self.term < 0 or (self.index == 0) != (self.term == 0):
            raise InvariantViolation(f"bad snapshot position {self.index}/{self.term}")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine as of ``metadata.index``, opaque to the core."""

    metadata: SnapshotMetadata
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class PersistentState:
    """What a node recovered from its disk at start; the core's only input at birth."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()
