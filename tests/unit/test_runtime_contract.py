"""The contract between the core and its runtime: durability, flow control,
usage errors, refusals and restart.

These are not rules of the paper but of the Ready/advance interface
(``sidecar.raft.ready``): what must be on disk before a message leaves, what
bounds the core keeps, and how it tells a misuse from an ordinary refusal.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from sidecar.raft import (
    AppendRequest,
    Entry,
    EntryKind,
    HardState,
    HeartbeatRequest,
    InvariantViolation,
    Membership,
    NotLeader,
    PersistentState,
    ProposalDropped,
    Raft,
    RaftConfig,
    RaftUsageError,
    Role,
    VoteRequest,
    VoteResponse,
)
from tests.unit.cluster import Cluster

T = 10


# ---- durability --------------------------------------------------------------------


def test_durability_vote_is_in_same_ready_as_vote_response() -> None:
    """A granted vote is persisted (term and voted_for) in the very batch that
    carries the VoteResponse, so the runtime fsyncs it before sending (§5.2,
    Figure 2: "updated on stable storage before responding to RPCs")."""
    c = Cluster(3)
    b = c["b"]
    b.step(VoteRequest(term=4, sender="a", recipient="b", last_log_index=0, last_log_term=0))
    [rd] = c.process_ready("b")
    [answer] = rd.messages
    assert isinstance(answer, VoteResponse) and answer.granted and answer.term == 4
    assert rd.hard_state is not None
    assert (rd.hard_state.term, rd.hard_state.voted_for) == (4, "a")


def test_durability_candidate_term_and_self_vote_precede_vote_requests() -> None:
    c = Cluster(3, pre_vote=False)
    c.tick("a", 2 * T)
    for rd in c.readies["a"]:
        if any(isinstance(m, VoteRequest) for m in rd.messages):
            assert rd.hard_state is not None
            assert (rd.hard_state.term, rd.hard_state.voted_for) == (1, "a")
            break
    else:
        pytest.fail("a never campaigned")


def test_durability_entries_precede_the_acknowledgement() -> None:
    """A follower acknowledges an append in the batch that persists the entries."""
    c = Cluster(3)
    c.elect("a")
    c.propose("a", b"x")
    [to_b] = c.take(AppendRequest, to="b")
    c["b"].step(to_b)
    [rd] = c.process_ready("b")
    assert [e.data for e in rd.entries] == [b"x"]
    assert any(getattr(m, "success", False) for m in rd.messages)


def test_durability_single_node_leader_commits_only_after_advance() -> None:
    """The leader's own copy counts toward the majority only once persisted: a
    single node must not commit (nor hand out for applying) an entry in the
    same batch that asks the runtime to write it."""
    c = Cluster(1)
    a = c["a"]
    c.tick("a", 2 * T)
    assert a.role is Role.LEADER
    rd_noop = next(rd for rd in c.readies["a"] if rd.entries)
    assert [e.kind for e in rd_noop.entries] == [EntryKind.NOOP]
    assert rd_noop.committed_entries == ()
    assert rd_noop.hard_state is None or rd_noop.hard_state.commit == 0
    assert a.commit_index == 1

    index = a.propose(b"x")
    assert a.commit_index == index - 1
    rd = a.ready()
    assert [e.data for e in rd.entries] == [b"x"]
    assert rd.committed_entries == ()
    assert a.commit_index == index - 1
    a.advance(rd)
    assert a.commit_index == index
    rd = a.ready()
    assert rd.entries == ()
    assert [e.data for e in rd.committed_entries] == [b"x"]
    assert rd.hard_state is not None and rd.hard_state.commit == index
    a.advance(rd)


# ---- flow control -------------------------------------------------------------------


def _appends_to(c: Cluster, to: str) -> list[AppendRequest]:
    return [m for m in c.queue if isinstance(m, AppendRequest) and m.recipient == to]


def test_flow_control_inflight_appends_are_bounded() -> None:
    """In REPLICATE, at most ``max_inflight_appends`` appends are unacknowledged."""
    c = Cluster(3, max_inflight_appends=4, max_entries_per_append=1)
    a = c.elect("a")
    c.tick_all(1)
    for i in range(20):
        c.propose("a", b"%d" % i)
    carrying = [m for m in _appends_to(c, "b") if m.entries]
    assert len(carrying) == 4
    c.deliver_all()
    c.tick_all(1)
    assert c.commands("b") == [b"%d" % i for i in range(20)]
    assert c["b"].commit_index == a.commit_index == 21


def test_flow_control_batch_size_is_bounded() -> None:
    """Appends carry at most ``max_entries_per_append`` entries and, past the
    first entry, at most ``max_bytes_per_append`` bytes."""
    c = Cluster(3, max_entries_per_append=3, max_bytes_per_append=10)
    c.elect("a")
    c["a"].propose_batch([b"12345"] * 2 + [b"1"] * 7)
    c.process_ready("a")
    c["a"].propose(b"x" * 50)  # larger than a whole batch: still moves, alone
    c.deliver_all()
    c.tick_all(1)
    sent = [m for m in c.sent if isinstance(m, AppendRequest) and m.entries]
    assert sent
    for m in sent:
        assert len(m.entries) <= 3
        size = sum(len(e.data) for e in m.entries)
        assert size <= 10 or len(m.entries) == 1
    assert any(len(m.entries) == 1 and len(m.entries[0].data) == 50 for m in sent)
    assert len(c.commands("c")) == 10


def test_flow_control_probe_sends_one_append_per_round_trip() -> None:
    """A follower whose match is unknown (PROBE, as every follower of a new
    leader is) gets one append at a time until it answers."""
    c = Cluster(3)
    c.tick("a", 2 * T)
    c.deliver_all(drop=lambda m: isinstance(m, AppendRequest))
    assert c["a"].role is Role.LEADER
    for i in range(5):
        c.propose("a", b"%d" % i)
    assert _appends_to(c, "b") == [], "the no-op's probe is still unanswered"
    c.tick("a")  # a heartbeat answer re-opens the probe: one append, no more
    c.take(HeartbeatRequest, to="c")
    [beat] = c.take(HeartbeatRequest, to="b")
    c.deliver(beat)
    c.deliver(c.queue.popleft())
    [probe] = _appends_to(c, "b")
    assert [e.index for e in probe.entries] == [1, 2, 3, 4, 5, 6]
    c.deliver_all()
    c.tick_all(1)
    assert c.commands("b") == [b"%d" % i for i in range(5)]


# ---- usage errors ---------------------------------------------------------------------


def test_usage_stepping_before_advance_raises() -> None:
    c = Cluster(3)
    b = c["b"]
    rd = b.ready()
    m = VoteRequest(term=1, sender="a", recipient="b", last_log_index=0, last_log_term=0)
    with pytest.raises(RaftUsageError):
        b.step(m)
    with pytest.raises(RaftUsageError):
        b.tick()
    with pytest.raises(RaftUsageError):
        b.ready()
    with pytest.raises(RaftUsageError):
        b.propose(b"x")
    b.advance(rd)
    b.step(m)  # accepted now
    with pytest.raises(RaftUsageError):
        b.advance(rd)  # not the last batch


def test_usage_message_for_another_node_raises() -> None:
    c = Cluster(3)
    m = VoteRequest(term=1, sender="a", recipient="c", last_log_index=0, last_log_term=0)
    with pytest.raises(RaftUsageError, match="for c"):
        c["b"].step(m)


@pytest.mark.parametrize(
    "overrides",
    [
        {"node_id": ""},
        {"heartbeat_ticks": 0},
        {"election_timeout_ticks": 1, "heartbeat_ticks": 1},
        {"election_timeout_ticks": 3, "heartbeat_ticks": 5},
        {"max_inflight_appends": 0},
        {"max_entries_per_append": 0},
        {"max_bytes_per_append": 0},
        {"max_uncommitted_entries": 0},
        {"max_committed_per_ready": 0},
        {"max_pending_reads": 0},
    ],
)
def test_usage_config_validation_raises(overrides: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"node_id": "a", "initial_membership": Membership(frozenset("a"))}
    kwargs.update(overrides)
    with pytest.raises(RaftUsageError):
        RaftConfig(**kwargs)


# ---- refusals ------------------------------------------------------------------------------


def test_not_leader_carries_leader_hint() -> None:
    c = Cluster(3)
    with pytest.raises(NotLeader) as fresh:
        c["b"].propose(b"x")
    assert fresh.value.leader_hint is None
    c.elect("a")
    with pytest.raises(NotLeader) as known:
        c["b"].propose(b"x")
    assert known.value.leader_hint == "a"
    assert "a" in str(known.value)


def test_proposal_dropped_when_uncommitted_backlog_full() -> None:
    c = Cluster(3, max_uncommitted_entries=5)
    a = c.elect("a")
    c.isolate("b")
    c.isolate("c")
    a.propose_batch([b"1", b"2", b"3", b"4"])
    with pytest.raises(ProposalDropped):
        a.propose_batch([b"5", b"6"])
    a.propose(b"5")
    with pytest.raises(ProposalDropped):
        a.propose(b"6")
    c.heal()
    c.tick_all(1)
    assert a.commit_index == 6
    a.propose(b"6")


def test_read_index_dropped_when_too_many_reads_wait() -> None:
    c = Cluster(3, max_pending_reads=2)
    a = c.elect("a")
    c.isolate("b")
    c.isolate("c")
    a.read_index(1)
    a.read_index(2)
    with pytest.raises(ProposalDropped):
        a.read_index(3)


# ---- restart --------------------------------------------------------------------------------


def test_restart_from_persistent_state_restores_term_vote_commit_and_reapplies() -> None:
    c = Cluster(3)
    c.elect("a")
    for i in range(3):
        c.propose("a", b"%d" % i)
    c.deliver_all()
    c.tick_all(1)
    b = c["b"]
    before = (b.term, b.voted_for, b.commit_index, b.log.last_index)
    assert before == (1, "a", 4, 4)
    applied_before = list(c.applied["b"])
    # A batch that only raises the commit index is staged, not synced; the
    # next write carries it. Idle heartbeats ask for no answer, so none came.
    assert c.disks["b"].has_staged
    c.disks["b"].sync()

    restarted = c.restart("b")
    assert (
        restarted.term,
        restarted.voted_for,
        restarted.commit_index,
        restarted.log.last_index,
    ) == before
    assert restarted.role is Role.FOLLOWER
    assert restarted.applied_index == 0
    rd = restarted.ready()
    assert rd.committed_entries == tuple(applied_before)
    assert rd.hard_state is None, "nothing new to persist"
    assert rd.entries == (), "the log is already on disk"
    restarted.advance(rd)
    assert restarted.applied_index == 4


def test_restart_from_snapshot_reapplies_only_entries_after_it() -> None:
    c = Cluster(1)
    c.tick("a", 2 * T)
    for i in range(4):
        c.propose("a", b"%d" % i)
        c.process_ready("a")
    snap = c.compact("a", data=b"sm")
    c.propose("a", b"tail")
    c.process_ready("a")
    c.disks["a"].sync()  # a clean shutdown flushes the queued commit index
    r = c.restart("a")
    assert r.log.first_index == snap.metadata.index + 1
    rd = r.ready()
    assert [e.data for e in rd.committed_entries] == [b"tail"]
    r.advance(rd)


def test_a_crash_may_lose_a_commit_only_change_but_never_an_entry() -> None:
    """Storage queues a change of the commit index alone without an fsync of
    its own: after a crash the node restarts with a lower commit index, keeps
    every entry, and re-learns the commit as leader."""
    c = Cluster(1)
    c.tick("a", 2 * T)
    c.process_ready("a")
    c.propose("a", b"x")
    c.process_ready("a")
    index = c["a"].log.last_index
    assert c["a"].commit_index == index
    assert c.disks["a"].hard_state.commit < index, "the commit alone waits for the next fsync"
    c.disks["a"] = c.disks["a"].crash()
    r = c.restart("a")
    assert r.log.last_index == index and r.log.entry(index).data == b"x"
    assert r.commit_index < index
    c.tick("a", 2 * T)
    c.process_ready("a")
    assert c["a"].commit_index > index, "re-committed under the new term's no-op"


def test_restart_rejects_commit_beyond_log() -> None:
    cfg = RaftConfig("a", Membership(frozenset("a")))
    state = PersistentState(HardState(1, None, 3), None, (Entry(1, 1),))
    with pytest.raises(InvariantViolation):
        Raft(cfg, random.Random(0), state)


def test_heartbeat_commit_never_exceeds_follower_match() -> None:
    """Heartbeats carry min(match, commit): a follower must not learn a commit index
    for entries the leader does not know it holds."""
    c = Cluster(3)
    a = c.elect("a")
    c.isolate("c")
    c.propose("a", b"x")
    c.deliver_all()
    c.heal()
    c.tick("a")
    beats = [m for m in c.queue if isinstance(m, HeartbeatRequest)]
    to_c = next(m for m in beats if m.recipient == "c")
    assert a.commit_index == 2
    assert to_c.leader_commit == a.progress["c"].match == 1
