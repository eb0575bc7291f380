"""Errors of the elections state machine.

Split as h11 and the Raft core do. ``InvalidArgument`` is bad input from a
worker (the API maps it to INVALID_ARGUMENT before anything is proposed);
``CommandError`` and ``SnapshotError`` mean bytes that do not decode (a
committed entry or a stored snapshot that this version cannot read: stop the
node rather than guess); ``ElectionsUsageError`` is a runtime bug (an index
applied out of order); ``InvariantViolation`` is state that must never exist.

Refusals that depend on the replicated state (a stale token, a full queue)
are *not* exceptions: they are ``ApplyResult`` values with a ``RejectReason``,
because every replica must reach the same answer and keep going.
"""

from __future__ import annotations


class ElectionsError(Exception):
    """Root of every error the elections package raises."""


class InvalidArgument(ElectionsError):
    """A name, TTL, token or timestamp is out of range; ``field`` names which one."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class CommandError(ElectionsError):
    """Encoded command bytes are malformed: not JSON, unknown type, missing or bad field."""


class SnapshotError(ElectionsError):
    """Snapshot bytes are malformed or describe a state that breaks an invariant."""


class ElectionsUsageError(ElectionsError):
    """The caller broke the contract, e.g. applied a non-increasing log index."""


class InvariantViolation(ElectionsError):
    """The state reached something that must never happen; stop the node."""
