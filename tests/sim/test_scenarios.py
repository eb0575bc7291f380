"""Scripted scenarios that the checkers must accept on the real core.

``commit_under_uncommitted_removal`` is the situation behind issue 17 (seeds
201580 and 204694 of a long campaign): a leader commits by the majority of a
removal it has just appended, crashes in the write that records the commit,
and a follower that lacks the removal learns the commit. The checkers once
judged that commit by the follower's four voters and cried wolf; they now
judge a commit when and where the leader decides it.
"""

from __future__ import annotations

import pytest

from sidecar.raft import Raft
from tests.sim.checkers import SafetyViolation
from tests.sim.cluster import SimNode, Simulation
from tests.sim.scenarios import commit_under_uncommitted_removal

# Seeds whose schedule plays the choreography (the follower learns the commit
# from the crashed leader's appends); about four seeds in five do.
SEEDS = [1, 2, 4]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_commit_by_the_leaders_newest_configuration_is_accepted(seed: int) -> None:
    seen = commit_under_uncommitted_removal(Raft, seed)
    assert seen.played_as_designed, seen
    assert len(seen.leader_voters) == 3 and len(seen.follower_voters) == 4


@pytest.mark.parametrize("seed", SEEDS)
def test_judged_by_the_follower_the_same_commit_looks_unsafe(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scenario does reach the situation that fooled the old checker: with
    the leader's decision unobserved, the follower is the first committer."""

    def unobserved(self: Simulation, node: SimNode) -> None:
        return None

    monkeypatch.setattr(Simulation, "_observe_commit_decision", unobserved)
    with pytest.raises(SafetyViolation, match="held durably only by"):
        commit_under_uncommitted_removal(Raft, seed)
