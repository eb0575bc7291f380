"""Classic Raft bugs, re-introduced one at a time into subclasses of the core.

Each mutant overrides one small method of ``Raft`` with the buggy variant.
``test_mutants.py`` shows that the default seed budget of the simulator turns
red for every one of them: proof that the checkers can fail. The catalogue,
with the seed that first catches each bug, is in docs/simulation.md.
"""

from __future__ import annotations

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
from tests.sim.amnesia import AmnesiaGuardOff


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
