"""Rules of the Raft paper (§5) checked on small, hand-driven clusters.

Each test is named after the section and the sentence it checks. Clusters come
from ``tests.unit.cluster``: nothing moves unless the test ticks a node or
delivers a message, so every intermediate state can be asserted.
"""

from __future__ import annotations

import dataclasses

import pytest

from sidecar.raft import (
    AppendRequest,
    AppendResponse,
    CommittedLogContradicted,
    Entry,
    HardState,
    PersistentState,
    Role,
    VoteRequest,
    VoteResponse,
)
from sidecar.storage.memory import MemoryStorage
from tests.unit.cluster import Cluster


def _log(*terms: int) -> tuple[Entry, ...]:
    """Entries 1..n with the given terms."""
    return tuple(Entry(term, i) for i, term in enumerate(terms, start=1))


def _state(term: int, *log_terms: int, commit: int = 0) -> PersistentState:
    return PersistentState(HardState(term, None, commit), None, _log(*log_terms))


def _vote_request(sender: str, to: str, term: int, last_index: int, last_term: int) -> VoteRequest:
    return VoteRequest(
        term=term,
        sender=sender,
        recipient=to,
        last_log_index=last_index,
        last_log_term=last_term,
    )


# ---- §5.1 terms -------------------------------------------------------------------


def test_5_1_stale_term_message_is_rejected_and_sender_told_new_term() -> None:
    """§5.1: "If a server receives a request with a stale term number, it rejects
    the request", and "if a candidate or leader discovers that its term is out of
    date, it immediately reverts to follower state"."""
    c = Cluster(3, check_quorum=False)
    a = c.elect("a")
    assert a.term == 1
    # b moves to term 5 (a vote request from c, which it does not grant: c's log is stale).
    c.nodes["b"].step(_vote_request("c", "b", 5, 0, 0))
    c.process_ready("b")
    c.queue.clear()
    assert c["b"].term == 5

    c.propose("a", b"stale")
    to_b = c.take(AppendRequest, to="b")
    assert to_b and to_b[0].term == 1
    before = c["b"].log.last_index
    c.deliver(to_b[0])
    [answer] = c.take(AppendResponse, sender="b")
    assert not answer.success
    assert answer.term == 5
    assert c["b"].log.last_index == before, "a stale append must not touch the log"

    c.deliver(answer)
    assert a.role is Role.FOLLOWER
    assert a.term == 5


# ---- §5.2 leader election ------------------------------------------------------------


def test_5_2_follower_grants_at_most_one_vote_per_term() -> None:
    """§5.2: "Each server will vote for at most one candidate in a given term"."""
    c = Cluster(3)
    b = c["b"]
    b.step(_vote_request("a", "b", 1, 0, 0))
    c.process_ready("b")
    b.step(_vote_request("c", "b", 1, 0, 0))
    c.process_ready("b")
    b.step(_vote_request("a", "b", 1, 0, 0))  # a retry from the same candidate
    c.process_ready("b")
    answers = c.take(VoteResponse, sender="b")
    assert [(m.recipient, m.granted) for m in answers] == [("a", True), ("c", False), ("a", True)]
    assert c.disks["b"].hard_state == HardState(1, "a", 0)
    # A new term frees the vote.
    b.step(_vote_request("c", "b", 2, 0, 0))
    c.process_ready("b")
    [answer] = c.take(VoteResponse, sender="b")
    assert answer.granted
    assert c.disks["b"].hard_state == HardState(2, "c", 0)


def test_5_2_candidate_that_hears_from_leader_of_its_term_becomes_follower() -> None:
    """§5.2: a candidate that receives AppendEntries from a leader whose term is at
    least as large "recognizes the leader as legitimate and returns to follower"."""
    c = Cluster(3, pre_vote=False)
    c.tick("b", 2 * c.configs["b"].election_timeout_ticks)
    assert c["b"].role is Role.CANDIDATE
    term = c["b"].term
    c.drop_all()
    c["b"].step(
        AppendRequest(
            term=term,
            sender="c",
            recipient="b",
            prev_log_index=0,
            prev_log_term=0,
            entries=(),
            leader_commit=0,
        )
    )
    c.process_ready("b")
    assert c.role("b") is Role.FOLLOWER
    assert c["b"].leader_id == "c"
    assert c["b"].term == term


# ---- §5.3 log replication ---------------------------------------------------------------


def test_5_3_follower_rejects_append_with_mismatched_prev_and_hints_conflict() -> None:
    """§5.3: "If the follower does not find an entry in its log with the same index
    and term, then it refuses the new entries"; the hint names the last index
    whose term is at most the leader's prev_log_term (fast backtracking)."""
    c = Cluster(3, persisted={"b": _state(3, 1, 1, 3, 3)})
    b = c["b"]
    b.step(
        AppendRequest(
            term=3,
            sender="a",
            recipient="b",
            prev_log_index=4,
            prev_log_term=2,
            entries=(Entry(3, 5),),
            leader_commit=0,
        )
    )
    c.process_ready("b")
    [answer] = c.take(AppendResponse, sender="b")
    assert not answer.success
    assert answer.index == 4
    assert (answer.reject_hint_index, answer.reject_hint_term) == (2, 1)
    assert [e.term for e in c.disks["b"].entries()] == [1, 1, 3, 3], "log untouched"
    assert b.log.last_index == 4

    # prev beyond the end of the log: the hint is clamped to our last index.
    b.step(
        AppendRequest(
            term=3,
            sender="a",
            recipient="b",
            prev_log_index=9,
            prev_log_term=3,
            entries=(),
            leader_commit=0,
        )
    )
    c.process_ready("b")
    [answer] = c.take(AppendResponse, sender="b")
    assert not answer.success
    assert (answer.index, answer.reject_hint_index, answer.reject_hint_term) == (9, 4, 3)


def test_5_3_follower_deletes_conflicting_suffix_and_appends() -> None:
    """§5.3: "If an existing entry conflicts with a new one (same index but
    different terms), delete the existing entry and all that follow it"."""
    c = Cluster(3, persisted={"b": _state(3, 1, 2, 2, 2)})
    b = c["b"]
    b.step(
        AppendRequest(
            term=3,
            sender="a",
            recipient="b",
            prev_log_index=1,
            prev_log_term=1,
            entries=(Entry(3, 2), Entry(3, 3)),
            leader_commit=3,
        )
    )
    c.process_ready("b")
    [answer] = c.take(AppendResponse, sender="b")
    assert answer.success and answer.index == 3
    assert [(e.index, e.term) for e in c.disks["b"].entries()] == [(1, 1), (2, 3), (3, 3)]
    assert b.commit_index == 3


def test_5_3_leader_backtracks_and_repairs_divergent_follower_log() -> None:
    """§5.3: "the leader decrements nextIndex and retries ... Eventually nextIndex
    will reach a point where the leader and follower logs match", then the
    follower's conflicting entries are removed and the leader's appended."""
    c = Cluster(
        3,
        persisted={
            "a": _state(3, 1, 1, 3),
            "b": _state(2, 1, 2, 2, 2, 2),  # an old term-2 leader's uncommitted entries
            "c": _state(3, 1, 1),
        },
    )
    a = c.elect("a")
    c.deliver_all()
    assert a.term == 4
    expected = [(e.index, e.term) for e in c.disks["a"].entries()]
    assert expected == [(1, 1), (2, 1), (3, 3), (4, 4)]
    for node in ("b", "c"):
        assert [(e.index, e.term) for e in c.disks[node].entries()] == expected
        assert c[node].commit_index == 4 or c[node].log.last_index == 4
    rejections = [m for m in c.sent if isinstance(m, AppendResponse) and not m.success]
    assert 1 <= len(rejections) <= 3, "fast backtracking needs only a few round trips"
    # Heartbeats carry the commit index to everyone.
    c.tick("a")
    c.deliver_all()
    assert [c[i].commit_index for i in c.ids] == [4, 4, 4]


# ---- §5.4 safety ----------------------------------------------------------------------------


def test_5_4_1_vote_denied_to_candidate_with_stale_log() -> None:
    """§5.4.1: "the voter denies its vote if its own log is more up-to-date than
    that of the candidate", comparing last terms first, then lengths."""
    c = Cluster(3, persisted={"b": _state(1, 1, 1)})
    b = c["b"]
    b.step(_vote_request("c", "b", 2, 1, 1))  # same last term, shorter log
    c.process_ready("b")
    [answer] = c.take(VoteResponse, sender="b")
    assert not answer.granted
    assert b.term == 2, "the higher term is still adopted (§5.1)"
    assert b.voted_for is None

    b.step(_vote_request("a", "b", 2, 2, 1))  # same last term, as long
    c.process_ready("b")
    [answer] = c.take(VoteResponse, sender="b")
    assert answer.granted

    b.step(_vote_request("c", "b", 3, 1, 2))  # shorter but a later last term
    c.process_ready("b")
    [answer] = c.take(VoteResponse, sender="b")
    assert answer.granted


def test_5_4_2_leader_does_not_commit_earlier_term_entry_by_counting_replicas() -> None:
    """§5.4.2 / Figure 8: "Raft never commits log entries from previous terms by
    counting replicas. Only log entries from the leader's current term are
    committed by counting replicas"."""
    c = Cluster(
        3,
        max_entries_per_append=1,  # so entry 2 travels alone, before the leader's no-op
        persisted={"a": _state(2, 1, 2, commit=1), "b": _state(2, 1, commit=1)},
    )
    c.isolate("c")
    a = c["a"]
    c.tick("a", 2 * c.configs["a"].election_timeout_ticks)
    assert a.role is not Role.FOLLOWER
    commit_when_replicated: int | None = None
    while c.queue:
        m = c.queue.popleft()
        if c.connected(m):
            c.deliver(m)
        pr = a.progress.get("b")
        if a.role is Role.LEADER and pr is not None and pr.match == 2:
            commit_when_replicated = a.commit_index
    assert a.role is Role.LEADER and a.term == 3
    assert commit_when_replicated == 1, "entry 2 (term 2) sat on a majority, yet stays uncommitted"
    assert a.commit_index == 3, "committing the leader's own no-op commits entry 2 with it"
    assert [e.index for e in c.applied["a"]] == [1, 2, 3]


# ---- commit index notifications (not in the paper) ------------------------------------------


def test_commit_only_append_spreads_the_commit_index_and_is_answered_only_on_mismatch() -> None:
    """Once an entry commits, the leader tells each follower it replicates to
    with an empty, commit-only append. A follower whose log matches learns the
    commit index and sends nothing back (its answer would repeat its last
    one); a follower whose log does not match still rejects, so the leader
    can repair it."""
    c = Cluster(3)
    a = c.elect("a")
    c.deliver_all()
    c.propose("a", b"x")
    c.deliver_all()
    notes = [m for m in c.sent if isinstance(m, AppendRequest) and m.commit_only]
    assert {m.recipient for m in notes} == {"b", "c"}
    assert all(not m.entries for m in notes)
    assert max(m.leader_commit for m in notes) == a.commit_index
    assert [c[i].commit_index for i in c.ids] == [a.commit_index] * 3
    b = c["b"]
    note = AppendRequest(
        term=a.term,
        sender="a",
        recipient="b",
        prev_log_index=b.log.last_index,
        prev_log_term=b.log.last_term,
        entries=(),
        leader_commit=a.commit_index,
        commit_only=True,
    )
    c.deliver(note)
    assert c.take(AppendResponse, sender="b") == []
    c.deliver(dataclasses.replace(note, prev_log_index=b.log.last_index + 2))
    [rejection] = c.take(AppendResponse, sender="b")
    assert not rejection.success


# ---- committed entries never change: a contradiction stops the follower -----------


def _append(
    term: int, prev: tuple[int, int], entries: tuple[Entry, ...], commit: int
) -> AppendRequest:
    return AppendRequest(
        term=term,
        sender="a",
        recipient="b",
        prev_log_index=prev[0],
        prev_log_term=prev[1],
        entries=entries,
        leader_commit=commit,
    )


def test_5_4_a_follower_stops_when_an_append_contradicts_its_committed_prefix() -> None:
    """§5.4 (State Machine Safety): "once a server has applied a log entry at a
    given index, no other server will ever apply a different log entry for the
    same index". An append whose entries give a committed index another term
    is evidence that this promise broke; the follower refuses to answer
    success over it."""
    c = Cluster(3, check_quorum=False, persisted={"b": _state(2, 1, 2, 2, commit=3)})
    b = c.nodes["b"]
    with pytest.raises(CommittedLogContradicted, match="entry 3 has term 3"):
        b.step(_append(3, (1, 1), (Entry(2, 2), Entry(3, 3)), commit=3))


def test_5_4_a_follower_stops_when_prev_contradicts_its_committed_prefix() -> None:
    c = Cluster(3, check_quorum=False, persisted={"b": _state(2, 1, 2, 2, commit=3)})
    with pytest.raises(CommittedLogContradicted, match="entry 2 has term 1"):
        c.nodes["b"].step(_append(3, (2, 1), (), commit=3))


def test_5_3_an_append_that_agrees_with_the_committed_prefix_is_still_acknowledged() -> None:
    """The check never refuses a leader that agrees: the follower answers with
    its commit index, as before."""
    c = Cluster(3, check_quorum=False, persisted={"b": _state(2, 1, 2, 2, commit=3)})
    b = c.nodes["b"]
    b.step(_append(3, (1, 1), (Entry(2, 2), Entry(2, 3)), commit=3))
    c.process_ready("b")
    (answer,) = c.take(AppendResponse, sender="b")
    assert answer.success and answer.index == 3


def test_a_leader_repairs_a_follower_whose_log_is_shorter_than_its_match() -> None:
    """A follower whose disk lost acknowledged entries under the same identity
    rejects every probe at its old match + 1. The leader lowers its match to
    where the follower's log really ends and sends the rest again, so that
    follower counts toward a quorum again (with the other follower cut off,
    nothing would commit otherwise)."""
    c = Cluster(3)
    a = c.elect("a")
    for i in range(5):
        c.propose("a", b"x%d" % i)
        c.deliver_all()
    assert c["c"].log.last_index == a.log.last_index
    kept = c.disks["c"].entries()[:2]
    lost = dataclasses.replace(c.disks["c"].hard_state, commit=kept[-1].index)
    c.disks["c"] = MemoryStorage(PersistentState(hard_state=lost, entries=kept))
    c.restart("c")
    c.isolate("b")

    index = c.propose("a", b"after")
    for _ in range(10):
        c.tick("a", c.configs["a"].heartbeat_ticks)
        c.deliver_all()

    assert a.commit_index >= index
    assert c["c"].log.last_index == a.log.last_index
    assert a.progress["c"].match == a.log.last_index
