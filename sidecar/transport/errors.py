"""Errors of the peer transport.

Split as h11 does: ``TransportUsageError`` means the local runtime misused the
API (a bug here); ``WireFormatError`` means a peer sent something malformed
(the peer misbehaved). Neither ever reaches a peer as a stack trace: the
server maps them to gRPC status codes at the boundary.
"""

from __future__ import annotations


class TransportError(Exception):
    """Root of every error the transport raises."""


class TransportUsageError(TransportError):
    """The runtime broke the transport's contract, e.g. ``send`` before ``start``."""


class WireFormatError(TransportError):
    """A peer sent a message that does not decode to a valid Raft message."""


class InboxFull(TransportError):
    """The local inbox cannot take the batch now; the server answers RESOURCE_EXHAUSTED."""


class ForwardRefused(TransportError):
    """The node asked to act as leader is not the leader (``leader_hint`` may name it)."""

    def __init__(self, message: str, leader_hint: str | None = None) -> None:
        super().__init__(message)
        self.leader_hint = leader_hint


class ForwardInvalid(TransportError):
    """The leader refused a forwarded command as invalid; the server answers
    INVALID_ARGUMENT and the forwarder raises this again on the follower."""


class AdminRefused(TransportError):
    """An operator's request was refused (``code``: a gRPC status code name such
    as NOT_FOUND); the peer server answers with that code and the forwarder
    raises this again on the node that forwarded it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
