"""Fenced elections: the replicated state machine (pure, standard library only).

See ``state`` for the theory of operation and ``docs/elections.md`` for how
the runtime drives it.
"""

from sidecar.elections.commands import (
    NAME_MAX_CHARS,
    TTL_MS_MAX,
    TTL_MS_MIN,
    Campaign,
    Command,
    Expire,
    Resign,
    Revoke,
    Withdraw,
    decode_command,
    encode_command,
    lease_key_digest,
    validate_lease_key,
    validate_name,
    validate_token,
    validate_ttl_ms,
)
from sidecar.elections.errors import (
    CommandError,
    ElectionsError,
    ElectionsUsageError,
    InvalidArgument,
    InvariantViolation,
    SnapshotError,
)
from sidecar.elections.state import ElectionsState
from sidecar.elections.types import (
    ApplyResult,
    Bounds,
    EndReason,
    Grant,
    GrantRecord,
    Lease,
    Outcome,
    QueuedCandidate,
    RejectReason,
)

__all__ = [
    "NAME_MAX_CHARS",
    "TTL_MS_MAX",
    "TTL_MS_MIN",
    "ApplyResult",
    "Bounds",
    "Campaign",
    "Command",
    "CommandError",
    "ElectionsError",
    "ElectionsState",
    "ElectionsUsageError",
    "EndReason",
    "Expire",
    "Grant",
    "GrantRecord",
    "InvalidArgument",
    "InvariantViolation",
    "Lease",
    "Outcome",
    "QueuedCandidate",
    "RejectReason",
    "Resign",
    "Revoke",
    "SnapshotError",
    "Withdraw",
    "decode_command",
    "encode_command",
    "lease_key_digest",
    "validate_lease_key",
    "validate_name",
    "validate_token",
    "validate_ttl_ms",
]
