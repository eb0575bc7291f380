"""Classic Raft bugs, re-introduced one at a time into subclasses of the core,
and lease bugs, planted into the lease code the simulator's lease mode runs.

Each Raft mutant overrides one small method of ``Raft`` with the buggy
variant; each lease mutant (``LEASE_MUTANTS``) swaps one piece of
``leases.LeaseCode``. ``test_mutants.py`` shows that the default seed budget
of the simulator turns red for every one of them: proof that the checkers
can fail. The catalogue, with the seed that first catches each bug, is in
docs/simulation.md.
"""

from __future__ import annotations

from typing import Any

from sidecar.lease_deadlines import LeaderDeadlines
from sidecar.raft import (
    AppendRequest,
    ConfChange,
    HardState,
    Message,
    Raft,
    ReadState,
    Role,
    VoteResponse,
)
from sidecar.raft.quorum import committed_index
from sidecar.safe_deadline import SafeDeadline
from tests.sim.amnesia import AmnesiaGuardOff
from tests.sim.leases import LeaseCode


class CommitsEarlierTermByCounting(Raft):
    """Raft §5.4.2 / Figure 8: commits an old-term entry once a majority stores it."""

    def _may_commit_at(self, index: int) -> bool:
        return True


class GrantsVoteWithoutPersisting(Raft):
    """Raft §5.2 + Figure 2 'persistent state': the vote lives only in memory."""

    def _hard_state(self) -> HardState:
        return HardState(self.term, None, self.log.commit)


class AcceptsAppendsFromStaleTerm(Raft):
    """Raft §5.1: an AppendEntries from an older term is obeyed instead of refused."""

    def _step_term(self, m: Message) -> bool:
        if isinstance(m, AppendRequest) and m.term < self.term:
            self._handle_append(m)
            return False
        return super()._step_term(m)


class CountsVotesFromAnotherTerm(Raft):
    """Raft §5.2: a candidate counts a vote granted for an earlier term."""

    def _step_term(self, m: Message) -> bool:
        if (
            isinstance(m, VoteResponse)
            and not m.pre_vote
            and m.term < self.term
            and self.role is Role.CANDIDATE
        ):
            self._handle_vote_response(m)
            return False
        return super()._step_term(m)


class ChangesMembershipBeforeOwnTermCommit(Raft):
    """Dissertation §4.1 (2015 erratum): a new leader changes membership before
    committing an entry of its own term."""

    def propose_conf_change(self, change: ConfChange) -> int:
        saved = self._term_start_index
        self._term_start_index = 0
        try:
            return super().propose_conf_change(change)
        finally:
            self._term_start_index = saved


class CountsLearnersTowardCommit(Raft):
    """Dissertation §4.2.1: learners (non-voting members) count toward the
    commit majority, so an entry commits on the leader and its learners alone."""

    def _maybe_commit(self) -> bool:
        match = {node: pr.match for node, pr in self.progress.items()}
        match[self.id] = self.log.unstable_from - 1
        index = committed_index(self.membership.members, match)
        if index > self.log.commit and self._may_commit_at(index):
            self.log.commit_to(index)
            return True
        return False


class ServesReadsWithoutQuorum(Raft):
    """Raft §6.4: ReadIndex answered without confirming leadership with a quorum."""

    def _register_read(self, request_id: int) -> None:
        self._read_states.append(ReadState(request_id, self.log.commit))


class RejoinsWithAmnesia(AmnesiaGuardOff, Raft):
    """Issue 11: a node that lost its disk keeps its old server id, so with
    term 0, no vote and an empty log it votes again in terms it voted in and
    counts toward majorities that lack committed entries. The core is
    untouched; the marker tells the simulator to restart it that way."""


MUTANTS: dict[str, type[Raft]] = {
    "figure-8 commit by counting": CommitsEarlierTermByCounting,
    "vote granted without persisting": GrantsVoteWithoutPersisting,
    "appends accepted from stale term": AcceptsAppendsFromStaleTerm,
    "votes counted from another term": CountsVotesFromAnotherTerm,
    "membership change before own-term commit": ChangesMembershipBeforeOwnTermCommit,
    "reads served without quorum": ServesReadsWithoutQuorum,
    "learners counted toward commit": CountsLearnersTowardCommit,
    "amnesia guard off": RejoinsWithAmnesia,
}


# ---- lease mutants ---------------------------------------------------------------------


class NoSafetyMargin(SafeDeadline):
    """The client counts a full TTL from the send time: no margin for clock drift."""

    __slots__ = ()

    def initial(self, first_sent_at: float | None) -> float:
        return float("-inf") if first_sent_at is None else first_sent_at + self.ttl_s

    def acknowledged(
        self, current: float, sent_at: float, ttl_ms: int, safety_margin_ms: int
    ) -> float:
        if ttl_ms == 0:
            return current
        return max(current, sent_at + min(self.ttl_s, ttl_ms / 1000))


class RenewsWhileExpiring(LeaderDeadlines):
    """The leader renews a lease whose Expire it already proposed (the runtime did
    until the simulator found it): the worker is told a full TTL, the Expire
    commits and grants the next candidate."""

    def renew(self, election: str, token: int, ttl_ms: int, now_s: float, *, term: int) -> bool:
        self._enter(term)
        self._deadlines[(election, token)] = now_s + ttl_ms / 1000
        return True


def _planted(name: str, **pieces: Any) -> tuple[str, LeaseCode]:
    return name, LeaseCode(mutant=name, **pieces)


LEASE_MUTANTS: dict[str, LeaseCode] = dict(
    [
        _planted("no safety margin", safe_deadline=NoSafetyMargin),
        _planted("renewal by a stale leader", confirm_renewals=False),
        _planted("new leader counts from the grant", new_leader_counts_from_grant=True),
        _planted("renewal while its Expire is in flight", leader_deadlines=RenewsWhileExpiring),
        _planted("renewal ahead of an appended revoke", renew_after_appended=False),
        _planted("resumed grant counted from the new campaign", resumed_grant_needs_ack=False),
    ]
)
"""Lease bugs planted into the simulator's lease mode; each must turn it red."""
