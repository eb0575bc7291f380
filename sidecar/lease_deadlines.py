"""The Raft leader's lease deadlines, as a pure function of the times it is given.

Theory of operation. The replicated state records who holds each election
and with what TTL; *when* a lease runs out is decided by the Raft leader
alone, on its own monotonic clock, and acted on through the log (an Expire
command). This class is that bookkeeping with nothing else: no asyncio, no
clock, no I/O. ``sidecar.leases.LeaseKeeper`` feeds it the leader's
``time.monotonic()`` and its events; the deterministic simulator
(``tests/sim/leases.py``) feeds it drifting, stalling simulated clocks.

* Leadership is entered per Raft term. The first call of a term (``review``
  or ``renew``) forgets every deadline of an earlier term: a new leader
  extends every lease by a full TTL from its own "now", so no lease ever
  expires early because the Raft leader changed, also when this same node
  lost and regained leadership between two reviews.
* ``renew`` sets the deadline to now + TTL. The caller must call it only
  after a ReadIndex round confirmed that this node still leads (see
  ``LeaseKeeper.renew``): this class cannot check it. A lease whose Expire
  this leader already proposed is *not* renewed: the Expire is in the log
  and will end the grant when it commits, whatever the deadline says, so
  acknowledging a full TTL would let the worker act after the next holder
  was granted (the simulator found this race, docs/simulation.md).
* ``review`` gives a lease it has no deadline for yet (a fresh grant, or
  every lease after a new term began) now + TTL, forgets deadlines of grants
  that ended, and returns the leases that are due: each is returned once,
  then counts as *expiring* until ``expire_finished``.
* ``step_down`` (this node is not the leader) forgets every deadline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.elections import Lease

LeaseId = tuple[str, int]
"""(election, fencing token)."""


@dataclass(frozen=True, slots=True)
class Review:
    due: tuple[Lease, ...]
    """Leases past their deadline, not already being expired: propose Expire for each."""
    next_due_s: float
    """Seconds until the earliest deadline still to act on (infinity when none)."""


class LeaderDeadlines:
    def __init__(self) -> None:
        self._term: int | None = None
        """The Raft term these deadlines were set in; None while not leading."""
        self._deadlines: dict[LeaseId, float] = {}
        """Invariant: every deadline was set in ``_term``, on this leader's clock."""
        self._expiring: set[LeaseId] = set()
        """Leases returned as due whose Expire has not finished: never returned twice."""

    def _enter(self, term: int) -> None:
        if term != self._term:
            self._deadlines.clear()
            self._term = term

    def step_down(self) -> None:
        """This node does not lead: its deadlines mean nothing to the next leader."""
        self._deadlines.clear()
        self._term = None

    def renew(self, election: str, token: int, ttl_ms: int, now_s: float, *, term: int) -> bool:
        """A keep-alive of (election, token), confirmed by ReadIndex in ``term``: now + TTL.

        Returns False, and renews nothing, while the lease's Expire is in flight."""
        self._enter(term)
        key = (election, token)
        if key in self._expiring:
            return False
        self._deadlines[key] = now_s + ttl_ms / 1000
        return True

    def remaining_s(self, election: str, token: int, now_s: float) -> float | None:
        """Lease time left; None when no deadline is set for this lease."""
        deadline = self._deadlines.get((election, token))
        return None if deadline is None else max(0.0, deadline - now_s)

    def review(self, leases: Iterable[Lease], now_s: float, *, term: int) -> Review:
        """One pass over the current grants (``ElectionsState.leases()``) at ``now_s``."""
        self._enter(term)
        live: set[LeaseId] = set()
        due: list[Lease] = []
        next_due_s = float("inf")
        for lease in leases:
            key = (lease.election, lease.token)
            live.add(key)
            deadline = self._deadlines.setdefault(key, now_s + lease.ttl_ms / 1000)
            if key in self._expiring:
                continue
            if now_s >= deadline:
                self._expiring.add(key)
                due.append(lease)
            else:
                next_due_s = min(next_due_s, deadline - now_s)
        for key in sorted(set(self._deadlines) - live):
            del self._deadlines[key]
        return Review(tuple(due), next_due_s)

    def expire_finished(self, election: str, token: int, *, committed: bool) -> None:
        """The Expire of a due lease ended: ``committed``, the grant is gone (or was
        already); otherwise the deadline stays and the next review returns it again."""
        key = (election, token)
        if committed:
            self._deadlines.pop(key, None)
        self._expiring.discard(key)
