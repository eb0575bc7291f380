"""Which messages of a ready batch may leave before the batch is persisted
(dissertation §10.2.1: a leader replicates while it writes)."""

from __future__ import annotations

from sidecar.raft import (
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    HeartbeatRequest,
    Ready,
    Role,
    TimeoutNowRequest,
    VoteResponse,
    needs_sync,
    split_messages,
)
from sidecar.raft.messages import Message

APPEND = AppendRequest(
    term=3,
    sender="a",
    recipient="b",
    prev_log_index=0,
    prev_log_term=0,
    entries=(),
    leader_commit=0,
)
HEARTBEAT = HeartbeatRequest(term=3, sender="a", recipient="c", leader_commit=0, read_seq=1)
REJECTED_VOTE = VoteResponse(term=3, sender="a", recipient="d", granted=False)
ACK = AppendResponse(term=3, sender="a", recipient="b", success=True, index=4)
TIMEOUT_NOW = TimeoutNowRequest(term=3, sender="a", recipient="b")
DURABLE = HardState(term=3, voted_for="a", commit=2)


def ready(messages: tuple[Message, ...], hard_state: HardState | None = None) -> Ready:
    return Ready(
        soft_state=None,
        hard_state=hard_state,
        snapshot=None,
        entries=(),
        messages=messages,
        committed_entries=(),
        read_states=(),
        failed_reads=(),
    )


def test_a_leader_sends_appends_and_heartbeats_early_and_the_rest_after_the_write() -> None:
    rd = ready((APPEND, REJECTED_VOTE, HEARTBEAT, TIMEOUT_NOW))
    before, after = split_messages(rd, role=Role.LEADER, durable=DURABLE)
    assert before == (APPEND, HEARTBEAT)
    assert after == (REJECTED_VOTE, TIMEOUT_NOW)


def test_a_commit_only_change_still_lets_a_leader_send_early() -> None:
    rd = ready((APPEND,), HardState(term=3, voted_for="a", commit=5))
    assert split_messages(rd, role=Role.LEADER, durable=DURABLE) == ((APPEND,), ())


def test_a_batch_that_changes_term_or_vote_sends_nothing_early() -> None:
    for changed in (HardState(term=4, voted_for="a", commit=2), HardState(3, "b", 2)):
        rd = ready((APPEND, HEARTBEAT), changed)
        assert split_messages(rd, role=Role.LEADER, durable=DURABLE) == ((), (APPEND, HEARTBEAT))


def test_followers_and_candidates_send_only_after_the_write() -> None:
    for role in (Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE):
        rd = ready((ACK, APPEND))
        assert split_messages(rd, role=role, durable=DURABLE) == ((), (ACK, APPEND))


def test_only_a_commit_only_batch_skips_the_sync() -> None:
    entry = Entry(3, 4, EntryKind.NORMAL, b"x")
    assert not needs_sync(HardState(3, "a", 5), None, (), last=DURABLE)
    assert not needs_sync(None, None, (), last=DURABLE)
    assert needs_sync(None, None, (entry,), last=DURABLE)
    assert needs_sync(HardState(4, "a", 2), None, (), last=DURABLE)
    assert needs_sync(HardState(3, "b", 2), None, (), last=DURABLE)
