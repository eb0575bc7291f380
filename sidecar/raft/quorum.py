"""Majority arithmetic, kept apart so it can be checked against naive versions."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

from sidecar.raft.types import NodeId


class VoteResult(enum.Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def committed_index(voters: Collection[NodeId], match_index: Mapping[NodeId, int]) -> int:
    """The largest index stored on a majority of ``voters`` (Raft §5.3, §5.4.2).

    A voter missing from ``match_index`` counts as holding nothing. With no
    voters nothing can be committed.
    """
    if not voters:
        return 0
    matched = sorted((match_index.get(v, 0) for v in voters), reverse=True)
    return matched[len(matched) // 2]


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer grant."""
    quorum = len(voters) // 2 + 1
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    if granted >= quorum:
        return VoteResult.WON
    if len(voters) - rejected < quorum:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[NodeId], responders: Collection[NodeId]) -> bool:
    """Whether the voters among ``responders`` form a majority."""
    return sum(1 for v in voters if v in responders) >= len(voters) // 2 + 1
