"""The two gates around the log (sidecar/machine.py): what may be proposed,
and what a replica does with a committed entry it cannot decode."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from sidecar.elections import (
    Campaign,
    Expire,
    Outcome,
    Resign,
    Revoke,
    Withdraw,
    encode_command,
    lease_key_digest,
)
from sidecar.machine import ElectionsMachine, SkippedEntry

GARBAGE = b"\xffPLANTED-\x00-BYTES"


def key(candidate: str) -> str:
    return lease_key_digest(f"machine-key-of-{candidate}".ljust(22, "-"))


def campaign(candidate: str = "w1", ttl_ms: int = 5000) -> bytes:
    return encode_command(
        Campaign(
            election="eur",
            candidate=candidate,
            ttl_ms=ttl_ms,
            key_digest=key(candidate),
            proposed_at_unix_ms=1,
        )
    )


def test_valid_commands_may_be_proposed_locally_and_forwarded() -> None:
    machine = ElectionsMachine(ttl_min_ms=1000, ttl_max_ms=60_000)
    for data in (
        campaign(),
        encode_command(
            Resign(election="eur", key_digest=key("w1"), token=7, proposed_at_unix_ms=1)
        ),
        encode_command(Withdraw(election="eur", candidate="w1", proposed_at_unix_ms=1)),
        encode_command(
            Revoke(election="eur", token=7, reason="stream ended", proposed_at_unix_ms=1)
        ),
    ):
        assert machine.refusal(data, forwarded=False) is None
        assert machine.refusal(data, forwarded=True) is None


@pytest.mark.parametrize(
    "data",
    [GARBAGE, b"", b"{}", b'{"v":2,"type":"campaign"}', b'{"v":2,"type":"nope"}', b"[1]"],
)
def test_bytes_that_do_not_decode_are_refused_with_one_line(data: bytes) -> None:
    reason = ElectionsMachine().refusal(data, forwarded=True)
    assert reason is not None and reason.startswith("not a valid elections command")
    assert "\n" not in reason and "Traceback" not in reason and "<class" not in reason


def test_a_peer_may_not_forward_expire() -> None:
    data = encode_command(Expire(election="eur", token=7, proposed_at_unix_ms=1))
    machine = ElectionsMachine()
    assert machine.refusal(data, forwarded=False) is None, "the leader's own lease keeper"
    reason = machine.refusal(data, forwarded=True)
    assert reason is not None and "only by the Raft leader" in reason


@pytest.mark.parametrize("ttl_ms", [999, 60_001, 86_400_000])
def test_campaign_ttl_outside_the_configured_range_is_refused(ttl_ms: int) -> None:
    machine = ElectionsMachine(ttl_min_ms=1000, ttl_max_ms=60_000)
    reason = machine.refusal(campaign(ttl_ms=ttl_ms), forwarded=True)
    assert reason is not None and "ttl" in reason.lower()
    assert machine.refusal(campaign(ttl_ms=1000), forwarded=True) is None
    assert machine.refusal(campaign(ttl_ms=60_000), forwarded=True) is None


def test_an_undecodable_committed_entry_is_skipped_logged_and_counted() -> None:
    machine = ElectionsMachine()
    seen: list[SkippedEntry] = []
    machine.skip_listeners.append(seen.append)
    applied: list[object] = []
    machine.listeners.append(applied.append)
    before = machine.snapshot()
    with capture_logs() as logs:
        result = machine.apply(1, GARBAGE)
    assert isinstance(result, SkippedEntry) and result.index == 1
    assert seen == [result] and applied == [], "apply listeners see only real results"
    assert machine.skipped_entries == 1
    assert machine.snapshot() == before, "nothing changed"
    (event,) = [e for e in logs if e["event"] == "undecodable_entry_skipped"]
    assert event["log_level"] == "error" and event["index"] == 1
    assert event["size_bytes"] == len(GARBAGE)
    assert "PLANTED" not in repr(logs), "unvalidated bytes never reach a log line"

    # The log goes on: the next valid entry applies and grants at its index.
    granted = machine.apply(2, campaign())
    assert not isinstance(granted, SkippedEntry)
    assert granted.outcome is Outcome.GRANTED and granted.granted is not None
    assert granted.granted.token == 2


def test_every_replica_skips_the_same_entries() -> None:
    """Skipping depends on the bytes alone, so replicas stay identical."""
    log = [
        campaign("a"),
        GARBAGE,
        campaign("b"),
        b"{}",
        encode_command(Resign(election="eur", key_digest=key("a"), token=1, proposed_at_unix_ms=1)),
    ]
    replicas = [ElectionsMachine(), ElectionsMachine(ttl_min_ms=1000, ttl_max_ms=2000)]
    for machine in replicas:
        for index, data in enumerate(log, start=1):
            machine.apply(index, data)
    assert replicas[0].snapshot() == replicas[1].snapshot()
    assert [m.skipped_entries for m in replicas] == [2, 2]
    holder = replicas[0].state.holder("eur")
    assert holder is not None and holder.holder == "b" and holder.token == 5
