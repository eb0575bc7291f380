"""The leader's view of one follower: how far it matches, what to send next.

Theory of operation (after etcd's tracker package). A follower is in one of
three states:

* PROBE: the leader does not know where the logs agree. It sends one append
  at a time and waits for the answer (or a heartbeat reply) before the next,
  so a follower with a diverging log costs one message per round trip.
* REPLICATE: the logs agree up to ``match``. The leader streams appends
  optimistically, advancing ``next`` as it sends, with at most
  ``max_inflight`` unacknowledged messages: the flow-control bound.
* SNAPSHOT: the entries the follower needs are compacted away; a snapshot is
  on its way and nothing else is sent until it is acknowledged (or the leader
  gives up waiting and probes again).

Invariant: ``match < next`` always.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from sidecar.raft.errors import InvariantViolation


class ProgressState(enum.Enum):
    PROBE = 1
    REPLICATE = 2
    SNAPSHOT = 3


@dataclass(slots=True)
class Progress:
    match: int
    next: int
    max_inflight: int
    is_learner: bool = False
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    """PROBE only: an append is out and unanswered; send no other."""
    pending_snapshot: int = 0
    """SNAPSHOT only: the index of the snapshot on its way."""
    snapshot_sent_tick: int = 0
    last_heard_tick: int = 0
    """When the leader last heard from this follower, for CheckQuorum."""
    inflight: deque[int] = field(default_factory=deque)
    """REPLICATE only: the last index of each unacknowledged append, ascending."""

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        if not self.match < self.next:
            raise InvariantViolation(f"progress match {self.match} >= next {self.next}")

    def become_probe(self) -> None:
        # Coming back from a snapshot, resume right after it.
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_snapshot(self, snapshot_index: int, now_tick: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.snapshot_sent_tick = now_tick
        self.probe_sent = False
        self.inflight.clear()

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def sent_entries(self, last_index: int) -> None:
        """Record an append carrying entries up to ``last_index``."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflight.append(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True
        self._check()

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged ``index``; False when that is old news."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        self._check()
        return updated

    def maybe_decrease_to(self, rejected: int, hint: int) -> bool:
        """The follower rejected an append at ``rejected``; step ``next`` back.

        Returns False when the rejection is stale (it answers an append sent
        before a newer decision) and must be ignored.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        if hint < self.match:
            # The follower's log no longer holds what it acknowledged (a disk
            # that lost synced writes under the same identity). Probing at
            # match + 1 forever would never repair it, and counting it at its
            # old match overstates the replicas. Lowering match is always
            # safe: the commit index never moves back, and a commit decision
            # then counts fewer acknowledgements, not more. A stale rejection
            # that gets here costs one re-send: the follower acknowledges again.
            self.match = hint
            self.next = hint + 1
        else:
            self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        self._check()
        return True
