"""Rules of Ongaro's dissertation beyond the paper's §5, on hand-driven clusters.

§3.10 leadership transfer, §4.1 single-server membership changes, §6.2
CheckQuorum, §6.4 ReadIndex, §7 (paper) snapshots, §9.6 PreVote. Section
numbers are in the test names.
"""

from __future__ import annotations

import pytest

from sidecar.raft import (
    AppendRequest,
    AppendResponse,
    ConfChange,
    ConfChangeKind,
    ConfChangeRejected,
    HeartbeatRequest,
    HeartbeatResponse,
    Membership,
    NotLeader,
    ProposalDropped,
    ReadState,
    Role,
    SnapshotRequest,
    TimeoutNowRequest,
    VoteRequest,
    VoteResponse,
)
from tests.unit.cluster import Cluster

T = 10  # the default election_timeout_ticks


# ---- §9.6 PreVote ----------------------------------------------------------------


def test_9_6_prevote_does_not_increment_term() -> None:
    """§9.6: a node first asks whether it could win; it "only increments its term
    if it learns from a majority that it could win", so a partitioned node's
    repeated timeouts leave its term and vote unchanged."""
    c = Cluster(3)
    c.elect("a")
    c.isolate("c")
    hard_before = c.disks["c"].hard_state
    c.tick("c", 6 * T)
    c.deliver_all()
    assert c["c"].role is Role.PRE_CANDIDATE
    assert c["c"].term == hard_before.term == 1
    assert c.disks["c"].hard_state == hard_before
    pre_votes = [m for m in c.sent if isinstance(m, VoteRequest) and m.sender == "c"]
    assert pre_votes, "c did campaign"
    assert all(m.pre_vote and m.term == 2 for m in pre_votes)


def test_9_6_prevote_grant_changes_no_state_of_the_voter() -> None:
    """§9.6: a pre-vote is a probe; granting it records no vote and adopts no term."""
    c = Cluster(3)
    b = c["b"]
    b.step(
        VoteRequest(
            term=1, sender="a", recipient="b", last_log_index=0, last_log_term=0, pre_vote=True
        )
    )
    c.process_ready("b")
    [answer] = c.take(VoteResponse, sender="b")
    assert answer.granted and answer.pre_vote and answer.term == 1
    assert (b.term, b.voted_for) == (0, None)
    assert c.disks["b"].hard_state.term == 0


def test_9_6_partitioned_node_rejoining_does_not_depose_leader() -> None:
    """§9.6: with PreVote and CheckQuorum's leader lease, a node returning from a
    partition cannot disrupt a leader that still has a majority."""
    c = Cluster(3)
    c.elect("a")
    c.isolate("c")
    c.tick_all(8 * T)  # a keeps b; c times out again and again
    assert c.leader() == "a"
    term = c["a"].term
    c.heal()
    c.tick_all(4 * T)
    assert c["a"].role is Role.LEADER
    assert [c[i].term for i in c.ids] == [term, term, term]
    assert c["c"].role is Role.FOLLOWER and c["c"].leader_id == "a"
    c.propose("a", b"after the partition")
    c.deliver_all()
    c.tick_all(1)
    assert c.commands("c") == [b"after the partition"]


def test_9_6_vote_request_ignored_within_leader_lease() -> None:
    """§9.6/§4.2.3: a server that heard from a leader within the minimum election
    timeout neither grants a vote nor adopts the requester's term."""
    c = Cluster(3)
    c.elect("a")
    b = c["b"]
    b.step(VoteRequest(term=9, sender="c", recipient="b", last_log_index=99, last_log_term=9))
    c.process_ready("b")
    assert (b.term, b.voted_for, b.leader_id) == (1, "a", "a")
    assert not c.queue


# ---- §6.2 CheckQuorum ------------------------------------------------------------------


def test_6_2_leader_without_quorum_steps_down_within_election_timeout() -> None:
    """§6.2: "the leader steps down if an election timeout elapses without a
    successful round of heartbeats to a majority of its cluster"."""
    c = Cluster(3)
    a = c.elect("a")
    c.tick_all(3 * T)
    assert a.role is Role.LEADER, "a leader that hears from a majority stays"
    c.isolate("a")
    c.tick("a", T - 1)
    assert a.role is Role.LEADER, "not before an election timeout"
    c.tick("a")
    assert c.role("a") is Role.FOLLOWER
    assert a.leader_id is None
    with pytest.raises(NotLeader):
        a.propose(b"x")


# ---- §6.4 ReadIndex ---------------------------------------------------------------------


def test_6_4_read_index_waits_for_heartbeat_quorum() -> None:
    """§6.4: the leader records its commit index, then "sends a new round of
    heartbeats" and answers only after a majority acknowledged them."""
    c = Cluster(3)
    a = c.elect("a")
    c.tick_all(1)
    commit = a.commit_index
    a.read_index(7)
    c.process_ready("a")
    beats = c.take(HeartbeatRequest, sender="a")
    assert sorted(m.recipient for m in beats) == ["b", "c"]
    assert c.read_states["a"] == []
    c.deliver(next(m for m in beats if m.recipient == "b"))
    assert c.read_states["a"] == []
    c.deliver_all()  # b's acknowledgement: a and b are a majority
    assert c.read_states["a"] == [ReadState(7, commit)]


def test_6_4_read_index_not_answered_without_majority() -> None:
    """§6.4: without a majority's acknowledgement, a leader cannot know it is
    still the leader, so the read stays pending."""
    c = Cluster(3)
    a = c.elect("a")
    c.isolate("b")
    c.isolate("c")
    a.read_index(1)
    c.deliver_all()
    c.tick("a", T - 1)
    c.deliver_all()
    assert c.read_states["a"] == []


def test_6_4_new_leader_defers_reads_until_own_term_commit() -> None:
    """§6.4: a new leader's commit index may lag; it must first commit an entry
    of its own term (its no-op) before it can serve a read."""
    c = Cluster(3)
    a = c["a"]
    c.tick("a", 2 * T)
    c.deliver_all(drop=lambda m: isinstance(m, AppendRequest))
    assert a.role is Role.LEADER and a.commit_index == 0
    a.read_index(1)
    c.process_ready("a")
    c.tick("a")  # a heartbeat round is acknowledged, but the no-op is not committed
    c.deliver_all(drop=lambda m: isinstance(m, AppendRequest))
    assert c.read_states["a"] == []
    c.tick("a")
    c.deliver_all()
    assert a.commit_index == 1
    assert c.read_states["a"] == [ReadState(1, 1)]


def test_6_4_reads_registered_during_a_round_share_the_next_one() -> None:
    """§6.4 batching ("the leader can amortize the cost ... by confirming many
    reads with one round of heartbeats"): while a round is unconfirmed, new
    reads start none of their own; they share the next round, which leaves
    once the first is confirmed, and each is still confirmed by heartbeats
    sent after it was registered."""
    c = Cluster(3)
    a = c.elect("a")
    c.tick_all(1)
    commit = a.commit_index
    a.read_index(1)
    first = c.take(HeartbeatRequest, sender="a")
    assert len(first) == 2
    a.read_index(2)
    a.read_index(3)
    assert c.take(HeartbeatRequest, sender="a") == [], "a round is already in flight"
    for m in first:
        c.deliver(m)
    for r in c.take(HeartbeatResponse, to="a"):
        c.deliver(r)
    assert c.read_states["a"] == [ReadState(1, commit)]
    second = c.take(HeartbeatRequest, sender="a")
    assert len(second) == 2
    assert all(m.read_seq > max(f.read_seq for f in first) for m in second)
    for m in second:
        c.deliver(m)
    c.deliver_all()
    assert c.read_states["a"] == [ReadState(1, commit), ReadState(2, commit), ReadState(3, commit)]
    assert c.take(HeartbeatRequest, sender="a") == [], "no round without reads"


def test_6_4_reads_fail_when_leadership_lost() -> None:
    """§6.4: a read whose leadership check cannot complete must not be answered
    as if it had; the core reports it failed when the leader steps down."""
    c = Cluster(3)
    a = c.elect("a")
    a.read_index(5)
    c.isolate("a")
    c.deliver_all()
    c.tick("a", T)
    assert a.role is Role.FOLLOWER
    assert c.failed_reads["a"] == [5]
    assert c.read_states["a"] == []
    with pytest.raises(NotLeader) as info:
        c["b"].read_index(6)
    assert info.value.leader_hint == "a"


# ---- §3.10 leadership transfer ------------------------------------------------------------


def test_3_10_leadership_transfer_timeout_now() -> None:
    """§3.10: the leader brings the target up to date, then sends TimeoutNow; the
    target starts an election at once, which voters honour despite their lease."""
    c = Cluster(3)
    a = c.elect("a")
    c.tick_all(1)
    a.transfer_leadership("b")
    c.process_ready("a")
    assert [type(m) for m in c.queue] == [TimeoutNowRequest]
    c.deliver_all()
    assert c["b"].role is Role.LEADER
    assert c["b"].term == 2
    assert a.role is Role.FOLLOWER and a.leader_id == "b"
    pre_votes = [m for m in c.sent if isinstance(m, VoteRequest) and m.sender == "b"]
    assert pre_votes and all(m.transfer and not m.pre_vote for m in pre_votes)


def test_3_10_leadership_transfer_catches_up_target_first() -> None:
    """§3.10: "the prior leader ... [sends] the target server's log entries"
    before TimeoutNow, so the target can win."""
    c = Cluster(3)
    a = c.elect("a")
    c.isolate("b")
    for i in range(3):
        c.propose("a", b"%d" % i)
    c.deliver_all()
    c.heal()
    a.transfer_leadership("b")
    c.process_ready("a")
    assert not c.take(TimeoutNowRequest), "b lags: no TimeoutNow yet"
    c.tick_all(2)
    assert c.leader() == "b"
    assert c["b"].log.last_index >= 4


def test_3_10_leadership_transfer_refuses_proposals_meanwhile() -> None:
    """§3.10: "the prior leader stops accepting new client requests" during a
    transfer."""
    c = Cluster(3)
    a = c.elect("a")
    c.isolate("b")
    c.propose("a", b"x")
    c.deliver_all()
    a.transfer_leadership("b")
    with pytest.raises(ProposalDropped):
        a.propose(b"y")
    with pytest.raises(ProposalDropped):
        a.propose_conf_change(ConfChange(ConfChangeKind.REMOVE_NODE, "c"))
    c.heal()
    c.tick_all(2)
    assert c.leader() == "b"


def test_3_10_leadership_transfer_aborts_after_election_timeout() -> None:
    """§3.10: "If the transfer does not complete within an election timeout, the
    prior leader aborts the transfer and resumes accepting client requests"."""
    c = Cluster(3)
    a = c.elect("a")
    c.isolate("b")
    c.propose("a", b"x")
    c.deliver_all()
    a.transfer_leadership("b")
    for _ in range(T - 1):
        c.tick("a")
        c.deliver_all()
    with pytest.raises(ProposalDropped):
        a.propose(b"too early")
    c.tick("a")
    c.deliver_all()
    assert a.role is Role.LEADER
    assert a.lead_transferee is None
    assert a.propose(b"resumed") > 0


def test_3_10_transfer_to_non_voter_is_refused() -> None:
    c = Cluster(3, voters=["a", "b"], learners=["c"])
    a = c.elect("a")
    with pytest.raises(ProposalDropped):
        a.transfer_leadership("c")
    with pytest.raises(NotLeader):
        c["b"].transfer_leadership("a")


# ---- §7 log compaction ----------------------------------------------------------------------


def test_7_lagging_follower_receives_snapshot_and_catches_up() -> None:
    """Paper §7: "the leader must occasionally send snapshots to followers that lag
    behind", when the entries they need were discarded."""
    c = Cluster(3)
    a = c.elect("a")
    c.isolate("c")
    for i in range(10):
        c.propose("a", b"before-%d" % i)
    c.deliver_all()
    snapshot = c.compact("a", data=b"sm@11")
    assert snapshot.metadata.index == 11
    assert a.log.first_index == 12
    c.propose("a", b"after")
    c.deliver_all()
    c.heal()
    c.tick_all(3)
    sent = [m for m in c.sent if isinstance(m, SnapshotRequest)]
    assert [m.recipient for m in sent] == ["c"]
    assert c.installed["c"] == [snapshot]
    assert c.disks["c"].snapshot == snapshot
    assert c["c"].log.last_index == a.log.last_index == 12
    assert c["c"].commit_index == a.commit_index == 12
    assert c.commands("c") == [b"after"], "only what follows the snapshot is applied"
    assert [e.index for e in c.disks["c"].entries()] == [12]


# ---- §4.1 membership changes ------------------------------------------------------------------


def test_4_1_learner_does_not_vote_or_count_in_quorum() -> None:
    """§4.2.1: a learner (non-voting member) receives the log but takes no part
    in elections and does not count toward the commit majority."""
    c = Cluster(3, voters=["a", "b"], learners=["c"])
    a = c.elect("a")
    votes = [m for m in c.sent if isinstance(m, VoteRequest)]
    assert votes and all(m.recipient == "b" for m in votes)
    c.isolate("b")
    c.propose("a", b"x")
    c.deliver_all()
    assert c["c"].log.last_index == a.log.last_index == 2, "the learner has the entry"
    assert a.commit_index == 1, "the learner's copy does not commit it"
    c.heal()
    c.tick_all(1)
    assert a.commit_index == 2
    c.isolate("a")
    c.isolate("b")
    c.tick("c", 6 * T)
    assert c["c"].role is Role.FOLLOWER
    assert not [m for m in c.sent if isinstance(m, VoteRequest) and m.sender == "c"]


def test_4_1_promotion_requires_caught_up_learner() -> None:
    """§4.2.1: a new server joins as a non-voter until it has caught up; only then
    may it be promoted to voter."""
    c = Cluster(3, voters=["a", "b"])  # c starts outside the cluster
    a = c.elect("a")
    c.isolate("c")
    a.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "c"))
    c.deliver_all()
    assert a.membership == Membership(frozenset({"a", "b"}), frozenset({"c"}))
    assert a.commit_index == 2
    with pytest.raises(ConfChangeRejected, match="caught up"):
        a.propose_conf_change(ConfChange(ConfChangeKind.PROMOTE_LEARNER, "c"))
    c.heal()
    c.tick_all(2)
    assert c["c"].log.last_index == a.log.last_index
    index = a.propose_conf_change(ConfChange(ConfChangeKind.PROMOTE_LEARNER, "c"))
    c.deliver_all()
    c.tick_all(1)
    full = Membership(frozenset({"a", "b", "c"}))
    assert [c[i].membership for i in c.ids] == [full, full, full]
    assert [c[i].commit_index >= index for i in c.ids] == [True, True, True]


def test_4_1_new_leader_rejects_conf_change_before_committing_own_term_entry() -> None:
    """§4.1 (the 2015 errata): a leader may not propose a membership change until
    it has committed an entry of its current term."""
    c = Cluster(4, voters=["a", "b", "c"])
    a = c["a"]
    c.tick("a", 2 * T)
    c.deliver_all(drop=lambda m: isinstance(m, AppendRequest))
    assert a.role is Role.LEADER and a.commit_index == 0
    with pytest.raises(ConfChangeRejected, match="entry of its term"):
        a.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "d"))
    c.tick("a")
    c.deliver_all()
    assert a.commit_index == 1
    assert a.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "d")) == 2


def test_4_1_one_uncommitted_conf_change_at_a_time() -> None:
    """§4.1: "a leader [must] not begin a new configuration change until the
    previous one has committed"."""
    c = Cluster(5, voters=["a", "b", "c"])
    a = c.elect("a")
    c.isolate("b")
    c.isolate("c")
    a.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "d"))
    c.deliver_all()
    with pytest.raises(ConfChangeRejected, match="not yet committed"):
        a.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "e"))
    c.heal()
    c.tick_all(1)
    assert a.commit_index == 2
    a.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "e"))
    c.deliver_all()
    assert a.membership.learners == frozenset({"d", "e"})


def test_4_1_conf_change_takes_effect_on_append_and_reverts_on_truncation() -> None:
    """§4.1: "a server always uses the latest configuration in its log, regardless
    of whether the entry is committed", and falls back to the previous one when
    a new leader truncates the entry away."""
    c = Cluster(6, voters=["a", "b", "c", "d", "e"])  # f is outside the cluster
    a = c.elect("a")
    c.tick_all(1)
    old = a.membership
    index = a.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "f"))
    new = Membership(old.voters, frozenset({"f"}))
    assert a.membership == new, "the leader uses it on append"
    [to_b] = c.take(AppendRequest, to="b")
    c.drop_all()
    c.deliver(to_b)
    c.drop_all()  # b's acknowledgement is lost
    assert c["b"].membership == new, "a follower uses it on append"
    assert c["b"].commit_index < index
    c.isolate("a")
    c.isolate("b")
    winner = c.tick_until_leader(not_="a")
    assert winner in ("c", "d", "e")
    c.propose(winner, b"new leader's entry")
    c.deliver_all()
    c.heal()
    c.tick_all(3)
    assert c.leader() == winner
    assert c["a"].membership == old, "truncating the entry reverts the configuration"
    assert c["b"].membership == old
    assert all(e.index != index or e.term != 1 for e in c.disks["a"].entries())


def test_4_1_leader_cannot_remove_itself() -> None:
    c = Cluster(3)
    a = c.elect("a")
    with pytest.raises(ConfChangeRejected, match="transfer"):
        a.propose_conf_change(ConfChange(ConfChangeKind.REMOVE_NODE, "a"))


def test_4_1_removed_voter_shrinks_quorum() -> None:
    """§4.1: once the change is in the leader's log, the new majority applies."""
    c = Cluster(3)
    a = c.elect("a")
    c.tick_all(1)
    a.propose_conf_change(ConfChange(ConfChangeKind.REMOVE_NODE, "c"))
    c.deliver_all()
    c.isolate("c")
    c.propose("a", b"x")
    c.deliver_all()
    assert a.membership.voters == frozenset({"a", "b"})
    assert a.commit_index == a.log.last_index


def test_4_1_leader_commits_by_its_newest_configuration_also_entries_before_the_change() -> None:
    """§4.1: "a server always uses the latest configuration in its log". A leader
    that has appended the removal of d counts a majority of {a, b, c} for every
    entry, also one appended before the removal: x commits on a and b, while b,
    which has x but not the removal, still knows four voters. Safe, because every
    majority of the old configuration meets {a, b}: whoever leads next holds x.
    (Issue 17: the simulator's checker once judged b's view instead of a's.)"""
    c = Cluster(4)
    a = c.elect("a")
    c.tick_all(1)
    c.isolate("c")
    c.isolate("d")
    x = c.propose("a", b"x")
    removal = a.propose_conf_change(ConfChange(ConfChangeKind.REMOVE_NODE, "d"))
    c.process_ready("a")
    assert a.membership.voters == frozenset({"a", "b", "c"})
    [append_x] = [m for m in c.take(AppendRequest, to="b") if m.entries[-1].index == x]
    c.drop_all()
    c.deliver(append_x)
    [ack] = c.take(AppendResponse, to="a")
    c.deliver(ack)
    c.drop_all()  # the removal never reaches b
    assert a.commit_index == x < removal
    c.tick("a", c.configs["a"].heartbeat_ticks)
    c.deliver_all(drop=lambda m: isinstance(m, AppendRequest))
    b = c["b"]
    assert b.commit_index == x, "b learns the commit from the heartbeat (min(match, commit))"
    assert b.membership.voters == frozenset({"a", "b", "c", "d"}), "b lacks the removal"

    c.heal()
    c.isolate("a")  # the leader is lost before anyone else has the removal
    assert c.tick_until_leader(not_="a") == "b", "only b, holding x, can win"
    assert b.log.term(x) == a.log.term(x)
