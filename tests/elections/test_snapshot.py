"""Snapshots round-trip exactly, are deterministic, and refuse malformed bytes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.elections import (
    Campaign,
    Command,
    ElectionsState,
    ElectionsUsageError,
    Expire,
    Outcome,
    RejectReason,
    Resign,
    Revoke,
    SnapshotError,
    lease_key_digest,
)


def key(candidate: str) -> str:
    return lease_key_digest(f"snapshot-key-of-{candidate}".ljust(22, "-"))


def busy_state() -> ElectionsState:
    state = ElectionsState(max_elections=5, max_queue_length=3, max_audit_records=2)
    commands: list[Command] = [
        Campaign(
            election="eur",
            candidate="w0",
            ttl_ms=1000,
            key_digest=key("w0"),
            proposed_at_unix_ms=10,
        ),
        Campaign(
            election="eur",
            candidate="w1",
            ttl_ms=2000,
            key_digest=key("w1"),
            proposed_at_unix_ms=11,
        ),
        Campaign(
            election="eur",
            candidate="w2",
            ttl_ms=3000,
            key_digest=key("w2"),
            proposed_at_unix_ms=12,
        ),
        Campaign(
            election="usd",
            candidate="w1",
            ttl_ms=4000,
            key_digest=key("w1"),
            proposed_at_unix_ms=13,
        ),
        Resign(election="eur", key_digest=key("w0"), token=1, proposed_at_unix_ms=14),
        Revoke(election="eur", token=5, proposed_at_unix_ms=15, reason="gone"),
        Campaign(
            election="eur",
            candidate="w3",
            ttl_ms=1500,
            key_digest=key("w3"),
            proposed_at_unix_ms=16,
        ),
        Campaign(
            election="gbp",
            candidate="w4",
            ttl_ms=1500,
            key_digest=key("w4"),
            proposed_at_unix_ms=17,
        ),
        Expire(election="gbp", token=8, proposed_at_unix_ms=18),
    ]
    for index, command in enumerate(commands, start=1):
        state.apply(index * 2 - 1 if index > 8 else index, command)
    return state


def test_round_trip_keeps_everything() -> None:
    state = busy_state()
    restored = ElectionsState.restore(state.snapshot())
    assert restored.snapshot() == state.snapshot()
    assert restored.bounds == state.bounds
    assert restored.last_applied == state.last_applied == 17
    assert restored.elections() == state.elections() == ["eur", "gbp", "usd"]
    for name in state.elections():
        assert restored.holder(name) == state.holder(name)
        assert restored.queue(name) == state.queue(name)
        assert restored.audit(name) == state.audit(name)
    assert restored.leases() == state.leases()
    # Key digests survive (never the keys: a snapshot holds none).
    holder = restored.holder("eur")
    assert holder is not None and holder.key_digest == key("w2")
    assert restored.queue("eur")[0].key_digest == key("w3")
    assert [r.key_digest for r in restored.audit("eur")] == [key("w1"), key("w2")]
    # ... so the key checks and an idempotent resign retry work after a restore.
    ended = restored.apply(
        19, Resign(election="eur", key_digest=key("w1"), token=5, proposed_at_unix_ms=0)
    )
    assert ended.reason is RejectReason.LEASE_ENDED
    resigned = restored.apply(
        20, Resign(election="usd", key_digest=key("w1"), token=4, proposed_at_unix_ms=0)
    )
    assert resigned.outcome is Outcome.RESIGNED
    again = ElectionsState.restore(restored.snapshot())
    retry = again.apply(
        21, Resign(election="usd", key_digest=key("w1"), token=4, proposed_at_unix_ms=0)
    )
    assert retry.outcome is Outcome.ALREADY_RESIGNED
    assert retry.ended is not None and retry.ended.ended_index == 20
    # The audit bound survives: eur had 3 grants, keeps 2.
    assert [r.token for r in restored.audit("eur")] == [5, 6]
    # So do the other bounds: the restored state still refuses a fourth queued candidate.
    assert [q.candidate for q in restored.queue("eur")] == ["w3"]
    for index, candidate in [(30, "w7"), (31, "w8")]:
        restored.apply(
            index,
            Campaign(
                election="eur",
                candidate=candidate,
                ttl_ms=1,
                key_digest=key(candidate),
                proposed_at_unix_ms=0,
            ),
        )
    result = restored.apply(
        32,
        Campaign(
            election="eur", candidate="w9", ttl_ms=1, key_digest=key("w9"), proposed_at_unix_ms=0
        ),
    )
    assert result.rejected


def test_restored_state_refuses_old_indices() -> None:
    restored = ElectionsState.restore(busy_state().snapshot())
    with pytest.raises(ElectionsUsageError):
        restored.apply(17, Expire(election="eur", token=6, proposed_at_unix_ms=0))


def test_same_state_same_bytes_whatever_the_insertion_order() -> None:
    one, two = ElectionsState(), ElectionsState()
    a = Campaign(election="a", candidate="w", ttl_ms=1, key_digest=key("w"), proposed_at_unix_ms=0)
    b = Campaign(election="b", candidate="w", ttl_ms=1, key_digest=key("w"), proposed_at_unix_ms=0)
    one.apply(1, a)
    one.apply(2, b)
    two.apply(1, a)
    two.apply(2, b)
    assert one.snapshot() == two.snapshot()
    # Snapshots are canonical JSON: sorted keys, no whitespace, ASCII.
    data = one.snapshot()
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    assert ElectionsState().snapshot() == ElectionsState().snapshot()


def test_empty_state_round_trips() -> None:
    state = ElectionsState(max_elections=3)
    assert ElectionsState.restore(state.snapshot()).snapshot() == state.snapshot()


def mutate(edit: Callable[[dict[str, Any]], None]) -> bytes:
    document = json.loads(busy_state().snapshot())
    edit(document)
    return json.dumps(document).encode()


def eur(document: dict[str, Any]) -> dict[str, Any]:
    election: dict[str, Any] = document["elections"][0]
    assert election["name"] == "eur"
    return election


def setitem(target: Callable[[dict[str, Any]], Any], key: Any, value: Any) -> Any:
    def edit(document: dict[str, Any]) -> None:
        container = target(document)
        if value is ...:
            del container[key]
        else:
            container[key] = value

    return edit


def top(document: dict[str, Any]) -> dict[str, Any]:
    return document


MALFORMED: list[tuple[str, bytes, str]] = [
    ("empty", b"", "not valid UTF-8 JSON"),
    ("garbage", b"\x00\x01snap", "not valid UTF-8 JSON"),
    ("truncated", busy_state().snapshot()[:-5], "not valid UTF-8 JSON"),
    ("list", b"[]", "expected an object"),
    ("format", mutate(setitem(top, "format", "etcd")), "not an elections snapshot"),
    ("version", mutate(setitem(top, "v", 1)), "unsupported snapshot version 1"),
    ("missing", mutate(setitem(top, "bounds", ...)), "snapshot: missing bounds"),
    ("extra", mutate(setitem(top, "x", 1)), "unexpected field(s) x"),
    ("bound", mutate(setitem(lambda d: d["bounds"], "max_elections", 0)), "max_elections"),
    ("applied", mutate(setitem(top, "last_applied", -1)), "snapshot.last_applied"),
    ("float", mutate(setitem(top, "last_applied", 1.5)), "must be integers"),
    ("elections", mutate(setitem(top, "elections", {})), "expected a list"),
    ("name", mutate(setitem(eur, "name", "e u r")), "snapshot.elections[0].name"),
    (
        "unsorted",
        mutate(lambda d: d["elections"].reverse()),
        "names must be unique and sorted",
    ),
    ("ttl", mutate(lambda d: eur(d)["holder"].update(ttl_ms=0)), ".holder.ttl_ms"),
    (
        "reason",
        mutate(lambda d: eur(d)["audit"][0].update(end_reason="FIRED")),
        "unknown end reason 'FIRED'",
    ),
    (
        "queue item",
        mutate(lambda d: eur(d)["queue"][0].pop("ttl_ms")),
        "queue[0]: missing ttl_ms",
    ),
    ("bool", mutate(lambda d: eur(d)["holder"].update(token=True)), ".holder.token"),
    (
        "digest",
        mutate(lambda d: eur(d)["queue"][0].update(key_digest="KEY")),
        "queue[0].key_digest: key_digest must be 64 lowercase hex",
    ),
    (
        "no digest",
        mutate(lambda d: eur(d)["audit"][0].pop("key_digest")),
        "audit[0]: missing key_digest",
    ),
    (
        "holder digest",
        mutate(lambda d: eur(d)["holder"].update(key_digest=key("w1"))),
        "does not match its record",
    ),
    (
        "shared key",
        mutate(lambda d: eur(d)["queue"][0].update(key_digest=eur(d)["holder"]["key_digest"])),
        "a lease key is shared by two candidates",
    ),
    # Well-formed, but breaking an invariant:
    (
        "holder record",
        mutate(lambda d: eur(d)["holder"].update(token=5)),
        "does not match its record",
    ),
    ("no holder", mutate(setitem(eur, "holder", None)), "open record"),
    (
        "half ended",
        mutate(lambda d: eur(d)["audit"][0].update(end_reason=None)),
        "half ended",
    ),
    (
        "holder queued",
        mutate(lambda d: eur(d)["queue"][0].update(candidate="w2")),
        "also queued",
    ),
    (
        "queued twice",
        mutate(lambda d: eur(d)["queue"].append(dict(eur(d)["queue"][0]))),
        "queued twice",
    ),
    (
        "audit order",
        mutate(lambda d: eur(d)["audit"].reverse()),
        "breaks an invariant",
    ),
    (
        "future",
        mutate(setitem(top, "last_applied", 3)),
        "beyond last_applied",
    ),
    (
        "audit bound",
        mutate(setitem(lambda d: d["bounds"], "max_audit_records", 1)),
        "more than max_audit_records=1",
    ),
    (
        "election bound",
        mutate(setitem(lambda d: d["bounds"], "max_elections", 2)),
        "3 elections, more than 2",
    ),
    (
        "queue bound",
        mutate(setitem(lambda d: d["bounds"], "max_queue_length", 0)),
        "max_queue_length",
    ),
]


@pytest.mark.parametrize(
    ("data", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_snapshots_raise_snapshot_error(data: bytes, fragment: str) -> None:
    with pytest.raises(SnapshotError) as info:
        ElectionsState.restore(data)
    assert fragment in str(info.value)


def test_restore_refuses_non_bytes() -> None:
    with pytest.raises(SnapshotError, match="must be bytes"):
        ElectionsState.restore("{}")  # type: ignore[arg-type]
