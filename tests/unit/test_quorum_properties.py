"""Majority arithmetic against brute force over every subset of the voters."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.raft.quorum import VoteResult, committed_index, has_quorum, vote_result

NODES = ("a", "b", "c", "d", "e", "f", "g")

voter_sets = st.frozensets(st.sampled_from(NODES), max_size=7)
others = st.sampled_from(("x", "y"))  # non-voters: their answers must not count


def _subsets(voters: frozenset[str]) -> list[frozenset[str]]:
    ordered = sorted(voters)
    return [
        frozenset(combo)
        for size in range(len(ordered) + 1)
        for combo in combinations(ordered, size)
    ]


def _is_majority(subset: frozenset[str], voters: frozenset[str]) -> bool:
    return 2 * len(subset) > len(voters)


@settings(max_examples=300, deadline=None)
@given(
    voters=voter_sets,
    match=st.dictionaries(st.sampled_from((*NODES, "x")), st.integers(0, 20)),
)
def test_committed_index_is_the_best_index_some_majority_holds(
    voters: frozenset[str], match: dict[str, int]
) -> None:
    """§5.3: an index is committed once a majority stores it; the result is the
    largest index held by every member of some majority of the voters."""
    expected = max(
        (
            min((match.get(v, 0) for v in subset), default=0)
            for subset in _subsets(voters)
            if subset and _is_majority(subset, voters)
        ),
        default=0,
    )
    assert committed_index(voters, match) == expected


@settings(max_examples=300, deadline=None)
@given(
    voters=voter_sets,
    votes=st.dictionaries(st.sampled_from((*NODES, "x", "y")), st.booleans()),
)
def test_vote_result_matches_every_possible_completion(
    voters: frozenset[str], votes: dict[str, bool]
) -> None:
    """§5.2: WON once a majority granted; LOST once no way of completing the
    missing votes can reach a majority; PENDING otherwise."""
    granted = frozenset(v for v in voters if votes.get(v) is True)
    missing = frozenset(v for v in voters if v not in votes)
    if any(_is_majority(s, voters) for s in _subsets(granted)):
        expected = VoteResult.WON
    elif not any(_is_majority(granted | extra, voters) for extra in _subsets(missing)):
        expected = VoteResult.LOST
    else:
        expected = VoteResult.PENDING
    assert vote_result(voters, votes) is expected


@settings(max_examples=300, deadline=None)
@given(voters=voter_sets, responders=st.frozensets(st.sampled_from((*NODES, "x", "y"))))
def test_has_quorum_iff_responders_contain_a_majority_of_voters(
    voters: frozenset[str], responders: frozenset[str]
) -> None:
    expected = any(_is_majority(s, voters) and s <= responders for s in _subsets(voters) if s)
    assert has_quorum(voters, responders) == expected


@settings(max_examples=200, deadline=None)
@given(voters=voter_sets.filter(bool), data=st.data())
def test_committed_index_is_monotonic_in_each_match(
    voters: frozenset[str], data: st.DataObject
) -> None:
    """Raising one node's match never lowers the commit index."""
    match = {v: data.draw(st.integers(0, 10)) for v in sorted(voters)}
    before = committed_index(voters, match)
    node = data.draw(st.sampled_from(sorted(voters)))
    match[node] += data.draw(st.integers(1, 5))
    assert committed_index(voters, match) >= before
