"""Snapshot codec of the elections state: canonical JSON, strictly parsed.

``dump`` writes sorted keys, no spaces and ASCII only, with elections sorted by
name and queues and audit trails in their own order, so the same state always
gives the same bytes (replicas can compare snapshots byte for byte). ``load``
accepts exactly that shape: every object must have exactly its fields, every
number must be an integer of the right range, every name must be valid;
anything else raises ``SnapshotError`` naming the path of the bad value. The
cross-field invariants (one open record, tokens increasing, ...) are checked
by ``ElectionsState.restore`` with the same code that checks a live state.

The checksum of the stored file is the storage layer's business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from sidecar.elections.commands import (
    UINT64_MAX,
    parse_strict_json,
    validate_key_digest,
    validate_name,
    validate_ttl_ms,
)
from sidecar.elections.errors import InvalidArgument, SnapshotError
from sidecar.elections.types import Bounds, EndReason, Grant, GrantRecord, QueuedCandidate

SNAPSHOT_FORMAT: Final = "raft-sidecar/elections"
SNAPSHOT_VERSION: Final = 2
"""2: lease key digests in grants, queue places and audit records (1 had none)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ElectionData:
    """One election as stored: everything else (idle since, last token) derives from it."""

    name: str
    holder: Grant | None
    queue: tuple[QueuedCandidate, ...]
    audit: tuple[GrantRecord, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotData:
    bounds: Bounds
    last_applied: int
    elections: tuple[ElectionData, ...]


def _grant_doc(grant: Grant) -> dict[str, Any]:
    return {
        "holder": grant.holder,
        "token": grant.token,
        "ttl_ms": grant.ttl_ms,
        "granted_index": grant.granted_index,
        "granted_at_unix_ms": grant.granted_at_unix_ms,
        "key_digest": grant.key_digest,
    }


def _queued_doc(queued: QueuedCandidate) -> dict[str, Any]:
    return {
        "candidate": queued.candidate,
        "ttl_ms": queued.ttl_ms,
        "queued_index": queued.queued_index,
        "queued_at_unix_ms": queued.queued_at_unix_ms,
        "key_digest": queued.key_digest,
    }


def _record_doc(record: GrantRecord) -> dict[str, Any]:
    return {
        "token": record.token,
        "holder": record.holder,
        "granted_index": record.granted_index,
        "granted_at_unix_ms": record.granted_at_unix_ms,
        "key_digest": record.key_digest,
        "ended_index": record.ended_index,
        "ended_at_unix_ms": record.ended_at_unix_ms,
        "end_reason": None if record.end_reason is None else record.end_reason.name,
    }


def dump(data: SnapshotData) -> bytes:
    """Encode ``data`` canonically (see the module docstring)."""
    document = {
        "format": SNAPSHOT_FORMAT,
        "v": SNAPSHOT_VERSION,
        "bounds": {
            "max_elections": data.bounds.max_elections,
            "max_queue_length": data.bounds.max_queue_length,
            "max_audit_records": data.bounds.max_audit_records,
        },
        "last_applied": data.last_applied,
        "elections": [
            {
                "name": election.name,
                "holder": None if election.holder is None else _grant_doc(election.holder),
                "queue": [_queued_doc(queued) for queued in election.queue],
                "audit": [_record_doc(record) for record in election.audit],
            }
            for election in sorted(data.elections, key=lambda e: e.name)
        ],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


class _Reader:
    """Typed access to a parsed JSON object; errors name the path of the value."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, dict):
            raise SnapshotError(f"{path}: expected an object, got {type(value).__name__}")
        self._doc: dict[str, Any] = value
        self._path = path

    def expect_fields(self, *names: str) -> None:
        keys = set(self._doc)
        missing, extra = sorted(set(names) - keys), sorted(keys - set(names))
        if missing:
            raise SnapshotError(f"{self._path}: missing {', '.join(missing)}")
        if extra:
            raise SnapshotError(f"{self._path}: unexpected field(s) {', '.join(extra)}")

    def raw(self, name: str) -> object:
        return self._doc[name]

    def path(self, name: str) -> str:
        return f"{self._path}.{name}"

    def uint(self, name: str, low: int = 0, high: int = UINT64_MAX) -> int:
        value = self._doc[name]
        if type(value) is not int or not low <= value <= high:
            raise SnapshotError(
                f"{self.path(name)}: expected an integer in [{low}, {high}], got {value!r}"
            )
        return value

    def optional_uint(self, name: str, low: int = 0) -> int | None:
        return None if self._doc[name] is None else self.uint(name, low)

    def name(self, name: str, kind: str) -> str:
        try:
            return validate_name(kind, self._doc[name])
        except InvalidArgument as exc:
            raise SnapshotError(f"{self.path(name)}: {exc}") from exc

    def ttl_ms(self, name: str) -> int:
        try:
            return validate_ttl_ms(self._doc[name])
        except InvalidArgument as exc:
            raise SnapshotError(f"{self.path(name)}: {exc}") from exc

    def key_digest(self, name: str) -> str:
        try:
            return validate_key_digest(self._doc[name])
        except InvalidArgument as exc:
            raise SnapshotError(f"{self.path(name)}: {exc}") from exc

    def list(self, name: str) -> list[object]:
        value = self._doc[name]
        if not isinstance(value, list):
            raise SnapshotError(f"{self.path(name)}: expected a list, got {type(value).__name__}")
        return value


def _load_grant(value: object, path: str, election: str) -> Grant:
    reader = _Reader(value, path)
    reader.expect_fields(
        "holder", "token", "ttl_ms", "granted_index", "granted_at_unix_ms", "key_digest"
    )
    return Grant(
        election=election,
        holder=reader.name("holder", "holder"),
        token=reader.uint("token", 1),
        ttl_ms=reader.ttl_ms("ttl_ms"),
        granted_index=reader.uint("granted_index", 1),
        granted_at_unix_ms=reader.uint("granted_at_unix_ms"),
        key_digest=reader.key_digest("key_digest"),
    )


def _load_queued(value: object, path: str) -> QueuedCandidate:
    reader = _Reader(value, path)
    reader.expect_fields("candidate", "ttl_ms", "queued_index", "queued_at_unix_ms", "key_digest")
    return QueuedCandidate(
        candidate=reader.name("candidate", "candidate"),
        ttl_ms=reader.ttl_ms("ttl_ms"),
        queued_index=reader.uint("queued_index", 1),
        queued_at_unix_ms=reader.uint("queued_at_unix_ms"),
        key_digest=reader.key_digest("key_digest"),
    )


def _load_record(value: object, path: str) -> GrantRecord:
    reader = _Reader(value, path)
    reader.expect_fields(
        "token",
        "holder",
        "granted_index",
        "granted_at_unix_ms",
        "key_digest",
        "ended_index",
        "ended_at_unix_ms",
        "end_reason",
    )
    reason_name = reader.raw("end_reason")
    if reason_name is None:
        end_reason = None
    elif isinstance(reason_name, str) and reason_name in EndReason.__members__:
        end_reason = EndReason[reason_name]
    else:
        raise SnapshotError(f"{reader.path('end_reason')}: unknown end reason {reason_name!r}")
    return GrantRecord(
        token=reader.uint("token", 1),
        holder=reader.name("holder", "holder"),
        granted_index=reader.uint("granted_index", 1),
        granted_at_unix_ms=reader.uint("granted_at_unix_ms"),
        key_digest=reader.key_digest("key_digest"),
        ended_index=reader.optional_uint("ended_index", 1),
        ended_at_unix_ms=reader.optional_uint("ended_at_unix_ms"),
        end_reason=end_reason,
    )


def _load_election(value: object, path: str) -> ElectionData:
    reader = _Reader(value, path)
    reader.expect_fields("name", "holder", "queue", "audit")
    name = reader.name("name", "election")
    holder_doc = reader.raw("holder")
    return ElectionData(
        name=name,
        holder=None if holder_doc is None else _load_grant(holder_doc, reader.path("holder"), name),
        queue=tuple(
            _load_queued(item, f"{reader.path('queue')}[{i}]")
            for i, item in enumerate(reader.list("queue"))
        ),
        audit=tuple(
            _load_record(item, f"{reader.path('audit')}[{i}]")
            for i, item in enumerate(reader.list("audit"))
        ),
    )


def load(data: bytes) -> SnapshotData:
    """Parse snapshot bytes written by ``dump``.

    Raises ``SnapshotError`` on malformed JSON, a wrong format or version tag,
    or any missing, unexpected or ill-typed field.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SnapshotError(f"snapshot must be bytes, got {type(data).__name__}")
    reader = _Reader(parse_strict_json(bytes(data), SnapshotError, "snapshot"), "snapshot")
    reader.expect_fields("format", "v", "bounds", "last_applied", "elections")
    if reader.raw("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"not an elections snapshot (format {reader.raw('format')!r})")
    if reader.raw("v") != SNAPSHOT_VERSION or type(reader.raw("v")) is not int:
        raise SnapshotError(
            f"unsupported snapshot version {reader.raw('v')!r} (expected {SNAPSHOT_VERSION})"
        )
    bounds_reader = _Reader(reader.raw("bounds"), reader.path("bounds"))
    bounds_reader.expect_fields("max_elections", "max_queue_length", "max_audit_records")
    bounds = Bounds(
        max_elections=bounds_reader.uint("max_elections", 1),
        max_queue_length=bounds_reader.uint("max_queue_length", 1),
        max_audit_records=bounds_reader.uint("max_audit_records", 1),
    )
    elections = tuple(
        _load_election(item, f"snapshot.elections[{i}]")
        for i, item in enumerate(reader.list("elections"))
    )
    names = [election.name for election in elections]
    if names != sorted(set(names)):
        raise SnapshotError("snapshot.elections: names must be unique and sorted")
    return SnapshotData(
        bounds=bounds, last_applied=reader.uint("last_applied"), elections=elections
    )
