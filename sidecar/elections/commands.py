"""Commands of the elections state machine, their validation and their codec.

Every command is a frozen, slotted dataclass that validates itself on
construction (h11's events do the same), so a malformed command cannot be
proposed, and ``decode_command`` rejects any byte string that does not come
back to exactly such a command. The wire form is canonical JSON (sorted keys,
no spaces, ASCII only) with a version tag ``v`` and a ``type`` tag, so that
the same command always encodes to the same bytes.

Limits checked here are the *hard* limits every replica agrees on. The API
layer checks the operator's configured TTL range on top (``validate_ttl_ms``
with explicit bounds) before it proposes; the replicated state never depends
on a node's configuration.

``proposed_at_unix_ms`` is the proposer's wall clock, kept for the audit
trail only: the state machine never decides anything on it.

Lease keys. A holder proves itself with a secret lease key that only it and
its sidecar know. The key never enters the log: commands carry its SHA-256
digest (``key_digest``, 64 lowercase hex characters), which the API computes
with ``lease_key_digest`` from the key the worker presented. Knowing a digest
(every replica does) does not let anyone present the key.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from sidecar.elections.errors import CommandError, InvalidArgument

NAME_MAX_CHARS: Final = 128
"""Longest election name or candidate id."""
TTL_MS_MIN: Final = 1
"""Hard lower bound of a lease TTL; the API enforces its configured, tighter range."""
TTL_MS_MAX: Final = 86_400_000
"""Hard upper bound of a lease TTL (one day)."""
UINT64_MAX: Final = 2**64 - 1
"""Largest fencing token, log index or timestamp (unsigned 64-bit, as on the wire)."""
REASON_MAX_CHARS: Final = 256
"""Longest free-text revocation reason."""
COMMAND_VERSION: Final = 2
"""Value of the ``v`` tag this version writes and reads (2: lease key digests; the
pre-release version 1 had none and is not read)."""
LEASE_KEY_MIN_CHARS: Final = 22
"""Shortest lease key a worker may choose (22 URL-safe characters carry 132 bits)."""
LEASE_KEY_MAX_CHARS: Final = 128
"""Longest lease key."""
MAX_COMMAND_BYTES: Final = 4096
"""Longest encoded command ``decode_command`` accepts (a valid one is well below 1 KiB)."""

_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]*")
_BAD_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_KEY_CHARS = re.compile(r"[A-Za-z0-9_-]*")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _show(value: str) -> str:
    """A short, printable rendering of user input for error messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_name(kind: str, value: object) -> str:
    """Check an election name or candidate id and return it.

    ``kind`` is the noun used in the message (``"election"``, ``"candidate"``).
    Raises ``InvalidArgument`` unless ``value`` is a string of 1 to 128
    characters of ``[A-Za-z0-9._-]``.
    """
    if not isinstance(value, str):
        raise InvalidArgument(kind, f"{kind} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidArgument(kind, f"{kind} must not be empty")
    if len(value) > NAME_MAX_CHARS:
        raise InvalidArgument(
            kind, f"{kind} must be at most {NAME_MAX_CHARS} characters, got {len(value)}"
        )
    if not _NAME_CHARS.fullmatch(value):
        bad = _BAD_CHAR.search(value)
        where = f" ({bad.group()!r} at position {bad.start()})" if bad else ""
        raise InvalidArgument(
            kind,
            f"{kind} may only contain letters, digits, '.', '_' and '-', got {_show(value)}{where}",
        )
    return value


def validate_lease_key(value: object, field: str = "lease_key") -> str:
    """Check a worker-chosen lease key and return it.

    Raises ``InvalidArgument`` unless ``value`` is a string of 22 to 128
    characters of ``[A-Za-z0-9_-]`` (what ``secrets.token_urlsafe`` makes). The
    message never repeats the key: it is a secret.
    """
    if not isinstance(value, str):
        raise InvalidArgument(field, f"{field} must be a string, got {type(value).__name__}")
    if not LEASE_KEY_MIN_CHARS <= len(value) <= LEASE_KEY_MAX_CHARS:
        raise InvalidArgument(
            field,
            f"{field} must be {LEASE_KEY_MIN_CHARS} to {LEASE_KEY_MAX_CHARS} characters, "
            f"got {len(value)}",
        )
    if not _KEY_CHARS.fullmatch(value):
        raise InvalidArgument(field, f"{field} may only contain letters, digits, '_' and '-'")
    return value


def lease_key_digest(key: str) -> str:
    """The SHA-256 hex digest of a valid lease key: what commands and the state carry.

    Raises ``InvalidArgument`` if ``key`` is not a valid lease key.
    """
    return hashlib.sha256(validate_lease_key(key).encode("ascii")).hexdigest()


def validate_key_digest(value: object, field: str = "key_digest") -> str:
    """Check a lease key digest (64 lowercase hex characters) and return it."""
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise InvalidArgument(field, f"{field} must be 64 lowercase hex characters")
    return value


def _validate_uint(field: str, value: object, low: int, high: int) -> int:
    # bool is an int subclass; True is not a TTL.
    if type(value) is not int:
        raise InvalidArgument(field, f"{field} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidArgument(field, f"{field} must be between {low} and {high}, got {value}")
    return value


def validate_ttl_ms(
    value: object, *, min_ttl_ms: int = TTL_MS_MIN, max_ttl_ms: int = TTL_MS_MAX
) -> int:
    """Check a lease TTL in milliseconds and return it.

    The defaults are the hard limits of the replicated state; the API passes
    its configured range. Raises ``InvalidArgument`` when out of range.
    """
    return _validate_uint("ttl_ms", value, min_ttl_ms, max_ttl_ms)


def validate_token(value: object, field: str = "fencing_token") -> int:
    """Check a fencing token (1 to 2**64-1; 0 is never a token) and return it.

    Raises ``InvalidArgument``.
    """
    return _validate_uint(field, value, 1, UINT64_MAX)


def validate_unix_ms(value: object, field: str = "proposed_at_unix_ms") -> int:
    """Check a wall-clock time in ms since the epoch (0 = unknown); raises ``InvalidArgument``."""
    return _validate_uint(field, value, 0, UINT64_MAX)


def validate_reason(value: object) -> str:
    """Check a free-text revocation reason (printable, at most 256 characters)."""
    if not isinstance(value, str):
        raise InvalidArgument("reason", f"reason must be a string, got {type(value).__name__}")
    if len(value) > REASON_MAX_CHARS:
        raise InvalidArgument(
            "reason", f"reason must be at most {REASON_MAX_CHARS} characters, got {len(value)}"
        )
    if not value.isprintable():
        raise InvalidArgument("reason", f"reason must be printable, got {_show(value)}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Campaign:
    """Queue ``candidate`` for ``election``, or grant at once if nobody holds it.

    Idempotent per (election, candidate, key_digest): a retry returns the
    existing grant or queue place, with the TTL of the first campaign. The
    same candidate under another key is refused (CANDIDATE_ID_IN_USE).
    """

    election: str
    candidate: str
    ttl_ms: int
    key_digest: str
    proposed_at_unix_ms: int

    def __post_init__(self) -> None:
        validate_name("election", self.election)
        validate_name("candidate", self.candidate)
        validate_ttl_ms(self.ttl_ms)
        validate_key_digest(self.key_digest)
        validate_unix_ms(self.proposed_at_unix_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class Resign:
    """Give up the grant or the queue place that the lease key ``key_digest`` holds.

    With ``token``, only that grant: a late resign of an old grant can never
    end a newer one. A retry of a Resign that already ended the key's grant is
    answered ALREADY_RESIGNED with the first one's index. Refusals (another
    key's token, nothing held, a grant that ended otherwise) are rejections:
    the worker asked.
    """

    election: str
    key_digest: str
    proposed_at_unix_ms: int
    token: int | None = None

    def __post_init__(self) -> None:
        validate_name("election", self.election)
        validate_key_digest(self.key_digest)
        validate_unix_ms(self.proposed_at_unix_ms)
        if self.token is not None:
            validate_token(self.token)


@dataclass(frozen=True, slots=True, kw_only=True)
class Withdraw:
    """Remove a queued ``candidate`` whose worker is gone (proposed by the runtime).

    A no-op (``STALE``) if the candidate is not queued; it never ends a grant.
    """

    election: str
    candidate: str
    proposed_at_unix_ms: int

    def __post_init__(self) -> None:
        validate_name("election", self.election)
        validate_name("candidate", self.candidate)
        validate_unix_ms(self.proposed_at_unix_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class Revoke:
    """End the grant ``token`` because its worker's keep-alive stream broke.

    Proposed by the holder's sidecar; a no-op (``STALE``) unless ``token`` is
    still current. ``reason`` is free text for logs (it is in the Raft log, not
    in the state).
    """

    election: str
    token: int
    proposed_at_unix_ms: int
    reason: str = ""

    def __post_init__(self) -> None:
        validate_name("election", self.election)
        validate_token(self.token)
        validate_unix_ms(self.proposed_at_unix_ms)
        validate_reason(self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class Expire:
    """End the grant ``token`` because its TTL passed on the Raft leader's clock.

    Proposed by the Raft leader; a no-op (``STALE``) unless ``token`` is still
    current.
    """

    election: str
    token: int
    proposed_at_unix_ms: int

    def __post_init__(self) -> None:
        validate_name("election", self.election)
        validate_token(self.token)
        validate_unix_ms(self.proposed_at_unix_ms)


Command = Campaign | Resign | Withdraw | Revoke | Expire
"""Every command the elections state machine applies."""

_TYPE_TAGS: Final[dict[type[Command], str]] = {
    Campaign: "campaign",
    Resign: "resign",
    Withdraw: "withdraw",
    Revoke: "revoke",
    Expire: "expire",
}
_CLASSES: Final[dict[str, type[Command]]] = {tag: cls for cls, tag in _TYPE_TAGS.items()}
# Fields each type must carry on the wire, and those it may carry.
_REQUIRED: Final[dict[str, frozenset[str]]] = {
    "campaign": frozenset({"election", "candidate", "ttl_ms", "key_digest", "proposed_at_unix_ms"}),
    "resign": frozenset({"election", "key_digest", "proposed_at_unix_ms"}),
    "withdraw": frozenset({"election", "candidate", "proposed_at_unix_ms"}),
    "revoke": frozenset({"election", "token", "reason", "proposed_at_unix_ms"}),
    "expire": frozenset({"election", "token", "proposed_at_unix_ms"}),
}
_OPTIONAL: Final[dict[str, frozenset[str]]] = {"resign": frozenset({"token"})}


def _fields(command: Command) -> dict[str, Any]:
    match command:
        case Campaign():
            return {
                "election": command.election,
                "candidate": command.candidate,
                "ttl_ms": command.ttl_ms,
                "key_digest": command.key_digest,
                "proposed_at_unix_ms": command.proposed_at_unix_ms,
            }
        case Resign():
            fields: dict[str, Any] = {
                "election": command.election,
                "key_digest": command.key_digest,
                "proposed_at_unix_ms": command.proposed_at_unix_ms,
            }
            if command.token is not None:
                fields["token"] = command.token
            return fields
        case Withdraw():
            return {
                "election": command.election,
                "candidate": command.candidate,
                "proposed_at_unix_ms": command.proposed_at_unix_ms,
            }
        case Revoke():
            return {
                "election": command.election,
                "token": command.token,
                "reason": command.reason,
                "proposed_at_unix_ms": command.proposed_at_unix_ms,
            }
        case Expire():
            return {
                "election": command.election,
                "token": command.token,
                "proposed_at_unix_ms": command.proposed_at_unix_ms,
            }


def encode_command(command: Command) -> bytes:
    """Encode a command as canonical JSON: same command, same bytes.

    Raises ``CommandError`` if ``command`` is not one of the command types.
    """
    tag = _TYPE_TAGS.get(type(command))
    if tag is None:
        raise CommandError(f"not an elections command: {type(command).__name__}")
    document = {"v": COMMAND_VERSION, "type": tag, **_fields(command)}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise CommandError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_float(text: str) -> Any:
    raise CommandError(f"numbers must be integers, got {text}")


def parse_strict_json(data: bytes, error: type[Exception], what: str) -> Any:
    """Parse UTF-8 JSON refusing duplicate keys, floats, NaN and Infinity.

    Shared with the snapshot codec; raises ``error`` with ``what`` in the message.
    """
    try:
        text = bytes(data).decode("utf-8")
        return json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_float=_reject_float,
            parse_constant=_reject_float,
        )
    except CommandError as exc:
        raise error(f"malformed {what}: {exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"malformed {what}: not valid UTF-8 JSON ({exc})") from exc


def decode_command(data: bytes) -> Command:
    """Decode bytes written by ``encode_command``.

    Raises ``CommandError`` on anything else: not UTF-8 JSON, an unknown
    version or type, a missing or unexpected field, or a field that fails
    validation (the message names it).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CommandError(f"command must be bytes, got {type(data).__name__}")
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandError(f"command is {len(data)} bytes, more than {MAX_COMMAND_BYTES}")
    document = parse_strict_json(bytes(data), CommandError, "command")
    if not isinstance(document, dict):
        raise CommandError("malformed command: not a JSON object")
    version = document.pop("v", None)
    if type(version) is not int or version != COMMAND_VERSION:
        raise CommandError(f"unsupported command version {version!r} (expected {COMMAND_VERSION})")
    tag = document.pop("type", None)
    if not isinstance(tag, str) or tag not in _CLASSES:
        raise CommandError(f"unknown command type {tag!r}")
    required, optional = _REQUIRED[tag], _OPTIONAL.get(tag, frozenset())
    keys = set(document)
    missing = sorted(required - keys)
    if missing:
        raise CommandError(f"{tag} command is missing {', '.join(missing)}")
    unexpected = sorted(keys - required - optional)
    if unexpected:
        raise CommandError(f"{tag} command has unexpected field(s) {', '.join(unexpected)}")
    nulls = sorted(key for key, value in document.items() if value is None)
    if nulls:
        raise CommandError(f"{tag} command has null field(s) {', '.join(nulls)}")
    try:
        return _CLASSES[tag](**document)
    except InvalidArgument as exc:
        raise CommandError(f"invalid {tag} command: {exc}") from exc
