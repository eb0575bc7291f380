"""Every command and every refusal of the elections state machine, one at a time.

Indices are chosen with gaps on purpose: other entries (NOOPs, membership
changes) sit between elections commands in a real log.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sidecar.elections import (
    ApplyResult,
    Campaign,
    ElectionsState,
    ElectionsUsageError,
    EndReason,
    Expire,
    Grant,
    GrantRecord,
    InvalidArgument,
    Lease,
    Outcome,
    RejectReason,
    Resign,
    Revoke,
    Withdraw,
    lease_key_digest,
)

E = "settlement-eur"


def key(candidate: str) -> str:
    """The lease key digest each test candidate campaigns with."""
    return lease_key_digest(f"lease-key-of-{candidate}".ljust(22, "-"))


def campaign(
    candidate: str, ttl_ms: int = 5000, election: str = E, at: int = 0, by: str | None = None
) -> Campaign:
    """``by`` names whose key to campaign with (default: the candidate's own)."""
    return Campaign(
        election=election,
        candidate=candidate,
        ttl_ms=ttl_ms,
        key_digest=key(by or candidate),
        proposed_at_unix_ms=at,
    )


def resign(token: int | None, election: str = E, at: int = 0, by: str = "w0") -> Resign:
    """Resign with the key of candidate ``by`` (and the token, unless None)."""
    return Resign(election=election, key_digest=key(by), token=token, proposed_at_unix_ms=at)


def leave(candidate: str, election: str = E) -> Resign:
    """Resign by key only: a queued candidate leaves the queue."""
    return resign(None, election=election, by=candidate)


def withdraw(candidate: str, election: str = E) -> Withdraw:
    return Withdraw(election=election, candidate=candidate, proposed_at_unix_ms=0)


def revoke(token: int, election: str = E, at: int = 0) -> Revoke:
    return Revoke(election=election, token=token, proposed_at_unix_ms=at, reason="stream broke")


def expire(token: int, election: str = E, at: int = 0) -> Expire:
    return Expire(election=election, token=token, proposed_at_unix_ms=at)


def queued_names(state: ElectionsState, election: str = E) -> list[str]:
    return [q.candidate for q in state.queue(election)]


def assert_unchanged(state: ElectionsState, before: bytes, result: ApplyResult) -> None:
    """A refusal or no-op changes nothing but ``last_applied``."""
    after = ElectionsState.restore(state.snapshot())
    restored_before = ElectionsState.restore(before)
    for name in after.elections():
        assert after.holder(name) == restored_before.holder(name)
        assert after.queue(name) == restored_before.queue(name)
        assert after.audit(name, limit=10_000) == restored_before.audit(name, limit=10_000)
    assert after.elections() == restored_before.elections()
    assert state.last_applied == result.index


# --------------------------------------------------------------------- campaign


def test_first_campaign_is_granted_with_its_index_as_token() -> None:
    state = ElectionsState()
    result = state.apply(7, campaign("w0", ttl_ms=3000, at=1_700_000_000_000))
    grant = Grant(
        election=E,
        holder="w0",
        token=7,
        ttl_ms=3000,
        granted_index=7,
        granted_at_unix_ms=1_700_000_000_000,
        key_digest=key("w0"),
    )
    assert result == ApplyResult(
        index=7, election=E, outcome=Outcome.GRANTED, holder=grant, granted=grant
    )
    assert state.holder(E) == grant
    assert state.is_current(E, 7)
    assert not state.is_current(E, 6)
    assert state.elections() == [E]
    assert state.last_applied == 7


def test_later_campaigns_queue_in_order() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    r2 = state.apply(2, campaign("w1", ttl_ms=100, at=5))
    r3 = state.apply(4, campaign("w2"))
    assert (r2.outcome, r2.queue_position, r3.outcome, r3.queue_position) == (
        Outcome.QUEUED,
        1,
        Outcome.QUEUED,
        2,
    )
    assert r2.holder == state.holder(E)
    assert r2.granted is None
    assert queued_names(state) == ["w1", "w2"]
    first = state.queue(E)[0]
    assert (first.ttl_ms, first.queued_index, first.queued_at_unix_ms) == (100, 2, 5)


def test_campaign_is_idempotent_for_the_holder() -> None:
    state = ElectionsState()
    granted = state.apply(1, campaign("w0", ttl_ms=1000))
    before = state.snapshot()
    # A retry with another TTL still returns the existing grant, unchanged.
    retry = state.apply(2, campaign("w0", ttl_ms=9000))
    assert retry.outcome is Outcome.ALREADY_HOLDER
    assert retry.holder == granted.granted
    assert retry.granted is None
    assert_unchanged(state, before, retry)
    assert state.audit(E) == [
        GrantRecord(
            token=1, holder="w0", granted_index=1, granted_at_unix_ms=0, key_digest=key("w0")
        )
    ]


def test_campaign_is_idempotent_for_a_queued_candidate() -> None:
    state = ElectionsState(max_queue_length=2)
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    state.apply(3, campaign("w2"))
    before = state.snapshot()
    # Even with the queue full, a retry keeps its place rather than being refused.
    retry = state.apply(4, campaign("w2"))
    assert (retry.outcome, retry.queue_position) == (Outcome.ALREADY_QUEUED, 2)
    assert_unchanged(state, before, retry)
    assert queued_names(state) == ["w1", "w2"]


def test_campaign_into_a_full_queue_is_rejected() -> None:
    state = ElectionsState(max_queue_length=1)
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    before = state.snapshot()
    result = state.apply(3, campaign("w2"))
    assert result.outcome is Outcome.REJECTED
    assert result.rejected
    assert result.reason is RejectReason.QUEUE_FULL
    assert_unchanged(state, before, result)


def test_too_many_active_elections_is_rejected() -> None:
    state = ElectionsState(max_elections=2)
    state.apply(1, campaign("w0", election="a"))
    state.apply(2, campaign("w0", election="b"))
    before = state.snapshot()
    result = state.apply(3, campaign("w0", election="c"))
    assert (result.outcome, result.reason) == (Outcome.REJECTED, RejectReason.TOO_MANY_ELECTIONS)
    assert_unchanged(state, before, result)
    assert state.elections() == ["a", "b"]
    # Campaigns in existing elections still work at the bound.
    assert state.apply(4, campaign("w1", election="a")).outcome is Outcome.QUEUED


def test_idle_elections_keep_their_audit_until_room_is_needed() -> None:
    state = ElectionsState(max_elections=2)
    state.apply(1, campaign("w0", election="a"))
    state.apply(2, campaign("w0", election="b"))
    state.apply(3, resign(2, election="b"))  # b idle since 3
    state.apply(4, resign(1, election="a"))  # a idle since 4
    assert state.elections() == ["a", "b"]
    assert state.audit("b")[0].end_reason is EndReason.RESIGNED
    # Room for c: the election idle the longest (b) goes.
    assert state.apply(5, campaign("w0", election="c")).outcome is Outcome.GRANTED
    assert state.elections() == ["a", "c"]
    assert state.audit("b") == []
    # An evicted election starts afresh, with a larger token than any before.
    state.apply(6, resign(5, election="c"))  # c idle since 6; a since 4
    assert state.apply(7, campaign("w9", election="b")).granted == Grant(
        election="b",
        holder="w9",
        token=7,
        ttl_ms=5000,
        granted_index=7,
        granted_at_unix_ms=0,
        key_digest=key("w9"),
    )
    assert state.elections() == ["b", "c"]


def test_an_idle_election_grants_the_next_campaign_at_once() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, resign(1))
    assert state.holder(E) is None
    result = state.apply(3, campaign("w0"))
    assert result.outcome is Outcome.GRANTED
    assert result.granted is not None
    assert result.granted.token == 3
    assert [r.token for r in state.audit(E)] == [1, 3]


# ----------------------------------------------------------- resign / handover


def test_resign_hands_over_to_the_head_of_the_queue_in_the_same_command() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0", at=100))
    state.apply(2, campaign("w1", ttl_ms=700))
    state.apply(3, campaign("w2"))
    result = state.apply(10, resign(1, at=200))
    assert result.outcome is Outcome.RESIGNED
    assert result.ended == GrantRecord(
        token=1,
        holder="w0",
        granted_index=1,
        granted_at_unix_ms=100,
        key_digest=key("w0"),
        ended_index=10,
        ended_at_unix_ms=200,
        end_reason=EndReason.RESIGNED,
    )
    expected = Grant(
        election=E,
        holder="w1",
        token=10,
        ttl_ms=700,
        granted_index=10,
        granted_at_unix_ms=200,
        key_digest=key("w1"),
    )
    assert result.granted == expected
    assert result.holder == expected
    assert result.holder_changed
    assert state.holder(E) == expected
    assert queued_names(state) == ["w2"]
    assert not state.is_current(E, 1)
    assert state.is_current(E, 10)


def test_resign_without_queue_leaves_the_election_idle() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    result = state.apply(2, resign(1))
    assert (result.outcome, result.granted, result.holder) == (Outcome.RESIGNED, None, None)
    assert state.holder(E) is None
    assert state.leases() == []
    assert state.elections() == [E]


def test_resign_with_another_keys_token_is_refused_as_a_key_mismatch() -> None:
    """The token is public; only the holder's key ends its grant."""
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    before = state.snapshot()
    for index, by in [(3, "w1"), (4, "mallory")]:
        result = state.apply(index, resign(1, by=by))
        assert (result.outcome, result.reason) == (
            Outcome.REJECTED,
            RejectReason.LEASE_KEY_MISMATCH,
        )
        assert_unchanged(state, before, result)
    assert state.is_current(E, 1)
    assert state.apply(5, resign(1)).outcome is Outcome.RESIGNED


def test_resign_retry_is_idempotent_with_the_first_index() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    first = state.apply(5, resign(1))
    assert (first.outcome, first.granted.token if first.granted else None) == (
        Outcome.RESIGNED,
        5,
    )
    before = state.snapshot()
    for index, command in [(6, resign(1)), (7, resign(None))]:
        retry = state.apply(index, command)
        assert retry.outcome is Outcome.ALREADY_RESIGNED
        assert retry.ended is not None and retry.ended.ended_index == 5
        assert not retry.holder_changed, "a retry ends nothing and grants nothing"
        assert_unchanged(state, before, retry)
    assert state.is_current(E, 5), "w1's newer grant is untouched"
    # Someone else retrying w0's resignation learns nothing and changes nothing.
    other = state.apply(8, resign(1, by="w1"))
    assert other.reason is RejectReason.LEASE_KEY_MISMATCH


@pytest.mark.parametrize("end", [revoke, expire])
def test_resign_of_a_grant_that_ended_otherwise_says_it_ended(
    end: Callable[..., Revoke | Expire],
) -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, end(1))
    before = state.snapshot()
    for index, command in [(3, resign(1)), (4, resign(None))]:
        result = state.apply(index, command)
        assert (result.outcome, result.reason) == (Outcome.REJECTED, RejectReason.LEASE_ENDED)
        assert_unchanged(state, before, result)


@pytest.mark.parametrize("token", [2, 99, None])
def test_resign_of_nothing_the_key_holds_is_not_found(token: int | None) -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    before = state.snapshot()
    result = state.apply(3, resign(token, by="stranger"))
    assert (result.outcome, result.reason) == (Outcome.REJECTED, RejectReason.LEASE_NOT_FOUND)
    assert_unchanged(state, before, result)


def test_resign_with_a_token_that_fell_off_the_audit_trail_is_not_found() -> None:
    state = ElectionsState(max_audit_records=1)
    state.apply(1, campaign("w0"))
    state.apply(2, resign(1))
    state.apply(3, campaign("w1"))
    result = state.apply(4, resign(1))
    assert result.reason is RejectReason.LEASE_NOT_FOUND


def test_resign_in_an_unknown_election_is_not_found() -> None:
    state = ElectionsState()
    for index, command in enumerate([resign(1), leave("w0")], start=1):
        result = state.apply(index, command)
        assert (result.outcome, result.reason) == (
            Outcome.REJECTED,
            RejectReason.LEASE_NOT_FOUND,
        )
    assert state.elections() == []


def test_resign_by_key_of_a_queued_candidate_leaves_the_queue() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    state.apply(3, campaign("w2"))
    result = state.apply(4, leave("w1"))
    assert (result.outcome, result.candidate) == (Outcome.LEFT_QUEUE, "w1")
    assert not result.holder_changed
    assert queued_names(state) == ["w2"]
    # The next handover skips the one who left.
    assert state.apply(5, resign(1)).granted == Grant(
        election=E,
        holder="w2",
        token=5,
        ttl_ms=5000,
        granted_index=5,
        granted_at_unix_ms=0,
        key_digest=key("w2"),
    )


def test_resign_by_key_only_of_the_holder_ends_its_grant() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    result = state.apply(2, resign(None))
    assert result.outcome is Outcome.RESIGNED
    assert result.ended is not None and result.ended.token == 1


# ------------------------------------------------------------- lease keys


def test_campaign_with_a_candidate_id_in_use_under_another_key_is_refused() -> None:
    """Knowing the holder's candidate id gets nobody its grant or its key."""
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    before = state.snapshot()
    for index, candidate in [(3, "w0"), (4, "w1")]:
        result = state.apply(index, campaign(candidate, by="impostor"))
        assert (result.outcome, result.reason) == (
            Outcome.REJECTED,
            RejectReason.CANDIDATE_ID_IN_USE,
        )
        assert result.granted is None and result.queue_position is None
        assert_unchanged(state, before, result)


def test_campaign_with_a_key_in_use_by_another_candidate_is_refused() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    before = state.snapshot()
    for index, by in [(3, "w0"), (4, "w1")]:
        result = state.apply(index, campaign("w2", by=by))
        assert result.reason is RejectReason.LEASE_KEY_IN_USE
        assert_unchanged(state, before, result)


def test_grant_queue_place_and_audit_record_carry_the_key_digest() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    holder = state.holder(E)
    assert holder is not None and holder.key_digest == key("w0")
    assert state.queue(E)[0].key_digest == key("w1")
    assert state.grant_record(E, 1) == GrantRecord(
        token=1, holder="w0", granted_index=1, granted_at_unix_ms=0, key_digest=key("w0")
    )
    assert state.grant_record(E, 2) is None and state.grant_record("other", 1) is None
    handover = state.apply(3, resign(1))
    assert handover.granted is not None and handover.granted.key_digest == key("w1")


def test_a_key_may_campaign_again_after_its_grant_ended() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, resign(1))
    again = state.apply(3, campaign("w0"))
    assert again.outcome is Outcome.GRANTED
    # Resign by key only now ends the new grant; a token names the old one.
    assert state.apply(4, resign(1)).outcome is Outcome.ALREADY_RESIGNED
    assert state.is_current(E, 3)
    assert state.apply(5, resign(None)).ended is not None


# ---------------------------------------------------------------- withdraw


def test_withdraw_removes_a_queued_candidate() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    state.apply(3, campaign("w2"))
    result = state.apply(4, withdraw("w1"))
    assert (result.outcome, result.candidate) == (Outcome.WITHDRAWN, "w1")
    assert queued_names(state) == ["w2"]


@pytest.mark.parametrize(("candidate", "election"), [("w0", E), ("w9", E), ("w1", "other")])
def test_withdraw_of_anyone_not_queued_is_a_stale_no_op(candidate: str, election: str) -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    before = state.snapshot()
    result = state.apply(2, withdraw(candidate, election=election))
    assert (result.outcome, result.reason) == (Outcome.STALE, None)
    assert not result.rejected
    assert_unchanged(state, before, result)
    assert state.is_current(E, 1)


# --------------------------------------------------------- revoke and expire


@pytest.mark.parametrize(
    ("make", "outcome", "reason"),
    [(revoke, Outcome.REVOKED, EndReason.REVOKED), (expire, Outcome.EXPIRED, EndReason.EXPIRED)],
)
def test_revoke_and_expire_end_the_current_grant_and_hand_over(
    make: Callable[..., Revoke | Expire], outcome: Outcome, reason: EndReason
) -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    result = state.apply(8, make(1, at=55))
    assert result.outcome is outcome
    assert result.ended is not None
    assert (result.ended.end_reason, result.ended.ended_index, result.ended.ended_at_unix_ms) == (
        reason,
        8,
        55,
    )
    assert result.granted is not None
    assert (result.granted.holder, result.granted.token) == ("w1", 8)
    assert state.audit(E)[0].end_reason is reason


@pytest.mark.parametrize("make", [revoke, expire])
@pytest.mark.parametrize(("token", "election"), [(1, E), (2, E), (3, "other")])
def test_stale_revoke_and_expire_are_no_ops(
    make: Callable[..., Revoke | Expire], token: int, election: str
) -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    state.apply(3, resign(1))  # w1 holds token 3; token 1 ended, token 2 never existed
    before = state.snapshot()
    stale_token = token if election == E else 3
    result = state.apply(4, make(stale_token, election=election))
    assert (result.outcome, result.reason, result.ended, result.granted) == (
        Outcome.STALE,
        None,
        None,
        None,
    )
    assert_unchanged(state, before, result)
    assert state.is_current(E, 3)


def test_revoke_applies_to_the_holder_only_queued_candidates_stay() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0"))
    state.apply(2, campaign("w1"))
    state.apply(3, campaign("w2"))
    result = state.apply(4, revoke(1))
    assert result.granted is not None
    assert result.granted.holder == "w1"
    assert queued_names(state) == ["w2"]


# ------------------------------------------------------------ leases, audit


def test_leases_list_every_holder_for_a_new_raft_leader() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0", ttl_ms=1000, election="b"))
    state.apply(2, campaign("w1", ttl_ms=2000, election="a"))
    state.apply(3, campaign("w2", election="c"))
    state.apply(4, resign(3, election="c", by="w2"))
    assert state.leases() == [
        Lease(election="a", holder="w1", token=2, ttl_ms=2000),
        Lease(election="b", holder="w0", token=1, ttl_ms=1000),
    ]


def test_queued_candidates_keep_their_own_ttl_when_granted() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0", ttl_ms=1000))
    state.apply(2, campaign("w1", ttl_ms=2500))
    state.apply(3, expire(1))
    assert state.leases() == [Lease(election=E, holder="w1", token=3, ttl_ms=2500)]


def test_audit_trail_records_every_grant_and_why_it_ended() -> None:
    state = ElectionsState()
    state.apply(1, campaign("w0", at=10))
    state.apply(2, campaign("w1", at=20))
    state.apply(3, campaign("w2", at=30))
    state.apply(4, campaign("w3", at=35))
    state.apply(5, resign(1, at=40))
    state.apply(6, revoke(5, at=50))
    state.apply(7, expire(6, at=60))
    records = state.audit(E)
    assert records == [
        GrantRecord(
            token=1,
            holder="w0",
            granted_index=1,
            granted_at_unix_ms=10,
            key_digest=key("w0"),
            ended_index=5,
            ended_at_unix_ms=40,
            end_reason=EndReason.RESIGNED,
        ),
        GrantRecord(
            token=5,
            holder="w1",
            granted_index=5,
            granted_at_unix_ms=40,
            key_digest=key("w1"),
            ended_index=6,
            ended_at_unix_ms=50,
            end_reason=EndReason.REVOKED,
        ),
        GrantRecord(
            token=6,
            holder="w2",
            granted_index=6,
            granted_at_unix_ms=50,
            key_digest=key("w2"),
            ended_index=7,
            ended_at_unix_ms=60,
            end_reason=EndReason.EXPIRED,
        ),
        GrantRecord(
            token=7, holder="w3", granted_index=7, granted_at_unix_ms=60, key_digest=key("w3")
        ),
    ]
    assert records[-1].current
    assert not records[0].current
    # Paging by token.
    assert state.audit(E, limit=2) == records[:2]
    assert state.audit(E, after_token=5, limit=2) == records[2:]
    assert state.audit(E, after_token=7) == []
    assert state.audit("unknown") == []


def test_audit_trail_is_bounded_and_keeps_the_newest() -> None:
    state = ElectionsState(max_audit_records=3)
    index = 0
    for _ in range(10):  # grant, resign, grant, resign, ...
        index += 1
        state.apply(index, campaign("w0"))
        index += 1
        state.apply(index, resign(index - 1))
    index += 1
    state.apply(index, campaign("w0"))
    assert [r.token for r in state.audit(E)] == [17, 19, 21]
    assert state.audit(E)[-1].current  # the holder's record is never dropped


@pytest.mark.parametrize(("after_token", "limit"), [(0, 0), (0, -1), (-1, 10)])
def test_audit_query_validates_its_arguments(after_token: int, limit: int) -> None:
    with pytest.raises(InvalidArgument):
        ElectionsState().audit(E, after_token=after_token, limit=limit)


# --------------------------------------------------------------- misuse


@pytest.mark.parametrize("index", [5, 4, 0, -1])
def test_non_increasing_index_is_a_usage_error_and_changes_nothing(index: int) -> None:
    state = ElectionsState()
    state.apply(5, campaign("w0"))
    before = state.snapshot()
    with pytest.raises(ElectionsUsageError):
        state.apply(index, campaign("w1"))
    assert state.snapshot() == before


def test_apply_refuses_non_commands() -> None:
    with pytest.raises(ElectionsUsageError, match="not an elections command"):
        ElectionsState().apply(1, "campaign")  # type: ignore[arg-type]
    with pytest.raises(ElectionsUsageError):
        ElectionsState().apply(True, campaign("w0"))


@pytest.mark.parametrize("bound", ["max_elections", "max_queue_length", "max_audit_records"])
@pytest.mark.parametrize("value", [0, -1])
def test_bounds_must_be_positive(bound: str, value: int) -> None:
    with pytest.raises(ElectionsUsageError, match=bound):
        ElectionsState(**{bound: value})
