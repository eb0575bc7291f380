"""Value types of the elections state machine: grants, audit records, results.

Frozen, slotted dataclasses and enums; nothing here knows about protobuf (the
API layer translates). ``token`` is always a fencing token, i.e. the Raft log
index of the entry whose application granted it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sidecar.elections.errors import ElectionsUsageError

DEFAULT_MAX_ELECTIONS = 256
DEFAULT_MAX_QUEUE_LENGTH = 256
DEFAULT_MAX_AUDIT_RECORDS = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class Bounds:
    """Memory bounds of the state; part of the replicated state (and snapshot).

    Every replica must use the same bounds, since they decide rejections.
    Worst case the state holds ``max_elections * (max_queue_length +
    max_audit_records)`` small records.
    """

    max_elections: int = DEFAULT_MAX_ELECTIONS
    max_queue_length: int = DEFAULT_MAX_QUEUE_LENGTH
    max_audit_records: int = DEFAULT_MAX_AUDIT_RECORDS

    def __post_init__(self) -> None:
        for name in ("max_elections", "max_queue_length", "max_audit_records"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ElectionsUsageError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """The current holder of an election."""

    election: str
    holder: str
    """The holder's candidate id."""
    token: int
    """The fencing token: the log index of the granting entry."""
    ttl_ms: int
    granted_index: int
    """Log index at which the grant was applied; equals ``token`` today."""
    granted_at_unix_ms: int
    """Proposer's wall clock in the granting command; for humans only."""
    key_digest: str
    """SHA-256 (hex) of the holder's secret lease key; the key itself is never stored."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedCandidate:
    """A candidate waiting for an election, in FIFO order."""

    candidate: str
    ttl_ms: int
    queued_index: int
    """Log index of the Campaign that queued it."""
    queued_at_unix_ms: int
    key_digest: str
    """SHA-256 (hex) of the candidate's secret lease key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """What a new Raft leader needs to extend a lease by a full TTL."""

    election: str
    holder: str
    token: int
    ttl_ms: int


class EndReason(enum.Enum):
    """Why a grant ended (``GrantEndReason`` in the worker API)."""

    RESIGNED = 1
    """The holder resigned with its token."""
    EXPIRED = 2
    """The TTL passed without keep-alive on the Raft leader's clock."""
    REVOKED = 3
    """The holder's keep-alive stream broke; its sidecar revoked at once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantRecord:
    """One record of an election's audit trail; open (``end_reason is None``) while current."""

    token: int
    holder: str
    granted_index: int
    granted_at_unix_ms: int
    key_digest: str
    """The grant's lease key digest: what makes a retried Resign idempotent."""
    ended_index: int | None = None
    ended_at_unix_ms: int | None = None
    end_reason: EndReason | None = None

    @property
    def current(self) -> bool:
        return self.end_reason is None


class Outcome(enum.Enum):
    """What applying one command did."""

    GRANTED = "granted"
    """Campaign: the candidate became holder (``granted`` is its new grant)."""
    ALREADY_HOLDER = "already_holder"
    """Campaign retry of the holder: nothing changed; ``holder`` is its grant."""
    QUEUED = "queued"
    """Campaign: the candidate joined the queue at ``queue_position``."""
    ALREADY_QUEUED = "already_queued"
    """Campaign retry of a queued candidate: nothing changed; ``queue_position`` is its place."""
    RESIGNED = "resigned"
    """Resign of the key's grant: ``ended`` is the closed record, ``granted`` the next holder."""
    ALREADY_RESIGNED = "already_resigned"
    """Resign retry of a grant this key already resigned: nothing changed; ``ended`` is the
    record that the first Resign closed (its ``ended_index`` is the answer)."""
    LEFT_QUEUE = "left_queue"
    """Resign by the key of a queued candidate: it left the queue (``candidate``)."""
    WITHDRAWN = "withdrawn"
    """Withdraw: the queued ``candidate``, whose Campaign call ended, left the queue."""
    REVOKED = "revoked"
    """Revoke of the current token: ``ended`` and, on handover, ``granted``."""
    EXPIRED = "expired"
    """Expire of the current token: ``ended`` and, on handover, ``granted``."""
    STALE = "stale"
    """Revoke, Expire or Withdraw that found nothing to act on: a no-op, not an error."""
    REJECTED = "rejected"
    """The command was refused (``reason``); the state did not change."""


class RejectReason(enum.Enum):
    """Why a command was refused. The API reports ``name`` as the error reason."""

    LEASE_NOT_FOUND = "lease_not_found"
    """Resign: the key holds no grant or queue place of the election, and no kept grant
    carries the given token (never granted, or its record fell off the trail)."""
    LEASE_KEY_MISMATCH = "lease_key_mismatch"
    """Resign with a token whose grant was made to another lease key."""
    LEASE_ENDED = "lease_ended"
    """Resign of a grant that ended otherwise (expired, revoked): stop acting as leader."""
    CANDIDATE_ID_IN_USE = "candidate_id_in_use"
    """Campaign with a candidate id that holds or waits under another lease key."""
    LEASE_KEY_IN_USE = "lease_key_in_use"
    """Campaign with a lease key that another candidate of the election holds or waits with."""
    QUEUE_FULL = "queue_full"
    """Campaign into a queue of ``max_queue_length`` candidates."""
    TOO_MANY_ELECTIONS = "too_many_elections"
    """Campaign for a new election while ``max_elections`` are active."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    """What applying the command at ``index`` did to ``election``.

    ``granted`` is set whenever this command made a new grant: a Campaign into
    an empty election, or the handover to the next candidate inside a Resign,
    Revoke or Expire (then ``granted.token == index``). ``ended`` is the closed
    audit record of a grant this command ended (for ALREADY_RESIGNED: the record
    an earlier Resign closed). ``holder`` is the holder after
    the command. ``reason`` is set exactly when ``outcome`` is ``REJECTED``.
    """

    index: int
    election: str
    outcome: Outcome
    reason: RejectReason | None = None
    holder: Grant | None = None
    granted: Grant | None = None
    ended: GrantRecord | None = None
    queue_position: int | None = None
    """1-based place in the queue (1 = next in line) for QUEUED and ALREADY_QUEUED."""
    candidate: str | None = None
    """The candidate that joined or left the queue (QUEUED, ALREADY_QUEUED, LEFT_QUEUE,
    WITHDRAWN); None otherwise."""

    @property
    def rejected(self) -> bool:
        return self.outcome is Outcome.REJECTED

    @property
    def holder_changed(self) -> bool:
        """True when the holder changed (what Observe streams and metrics count).

        An ALREADY_RESIGNED retry carries the earlier record in ``ended`` but changed nothing.
        """
        if self.outcome is Outcome.ALREADY_RESIGNED:
            return False
        return self.granted is not None or self.ended is not None
