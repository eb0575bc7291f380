"""Errors of the Raft core.

Split as h11 does: ``RaftUsageError`` means the caller broke the contract (a
bug in the runtime); the others are ordinary refusals a runtime must expect
and map to answers (for example a gRPC status code in the API layer).
"""

from __future__ import annotations


class RaftError(Exception):
    """Root of every error the core raises."""


class NotLeader(RaftError):
    """The request needs the leader; ``leader_hint`` names the last leader known."""

    def __init__(self, leader_hint: str | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


class ProposalDropped(RaftError):
    """The leader will not take the proposal now (transfer in progress, backlog full)."""


class ConfChangeRejected(RaftError):
    """The membership change breaks a rule of single-server changes."""


class RaftUsageError(RaftError):
    """The runtime broke the core's contract, e.g. stepped before ``advance``."""


class InvariantViolation(RaftError):
    """State the core must never reach; the node has to stop rather than go on."""


class CommittedLogContradicted(InvariantViolation):
    """A leader's message contradicts an entry this node holds as committed.

    Raft promises a committed entry never changes; a contradiction means some
    server lost what it acknowledged or two leaders shared a term. The node
    stops instead of answering "success" over a log it cannot trust.
    """
