"""A follower answers a heartbeat only when the leader has something to learn.

``Raft._heartbeat_answer_needed`` (docs/raft-core.md, "heartbeat answers"):
on an idle cluster most heartbeats carry ``answer_optional`` and go
unanswered, which removes most of an idle cluster's messages; every case in
which the leader acts on an answer still gets one.
"""

from __future__ import annotations

from sidecar.raft import AppendRequest, HeartbeatRequest, HeartbeatResponse, ReadState, Role
from tests.unit.cluster import Cluster


def _beats(c: Cluster, to: str, since: int) -> list[HeartbeatRequest]:
    return [m for m in c.sent[since:] if isinstance(m, HeartbeatRequest) and m.recipient == to]


def _answers(c: Cluster, sender: str, since: int) -> list[HeartbeatResponse]:
    return [m for m in c.sent[since:] if isinstance(m, HeartbeatResponse) and m.sender == sender]


def test_an_idle_follower_answers_once_a_third_of_an_election_timeout() -> None:
    c = Cluster(3)  # heartbeat every tick, election timeout 10 ticks
    a = c.elect("a")
    c.deliver_all()
    start = len(c.sent)
    c.tick_all(30)

    beats, answers = _beats(c, "b", start), _answers(c, "b", start)
    assert len(beats) == 30
    asked = [m for m in beats if not m.answer_optional]
    assert len(asked) == len(answers) == 10  # every third heartbeat, each answered
    assert a.role is Role.LEADER
    assert a.recently_active() == {"a", "b", "c"}


def test_a_follower_whose_answers_are_lost_is_asked_every_heartbeat_until_one_arrives() -> None:
    c = Cluster(3)
    a = c.elect("a")
    c.deliver_all()
    c.tick_all(3)  # b was just heard

    start = len(c.sent)
    for _ in range(6):  # drop b's answers for 6 ticks: within the 10-tick CheckQuorum window
        c.tick("a")
        c.deliver_all(drop=lambda m: isinstance(m, HeartbeatResponse) and m.sender == "b")
    flags = [m.answer_optional for m in _beats(c, "b", start)]
    assert flags == [True, True, False, False, False, False]
    assert a.role is Role.LEADER

    start = len(c.sent)
    c.tick_all(1)  # the next answer gets through: b is quiet again
    assert [m.answer_optional for m in _beats(c, "b", start)] == [False]
    assert len(_answers(c, "b", start)) == 1
    c.tick_all(1)
    assert _beats(c, "b", len(c.sent) - 2)[-1].answer_optional
    assert a.recently_active() == {"a", "b", "c"}


def test_a_leader_that_hears_nobody_still_steps_down() -> None:
    c = Cluster(3)
    a = c.elect("a")
    c.deliver_all()
    c.isolate("b")
    c.isolate("c")
    c.tick("a", c.configs["a"].election_timeout_ticks)
    assert a.role is Role.FOLLOWER


def test_a_follower_behind_the_leaders_log_is_asked_every_heartbeat() -> None:
    c = Cluster(3)
    a = c.elect("a")
    c.deliver_all()
    c.tick_all(3)
    c.propose("a", b"x")
    c.deliver_all(drop=lambda m: isinstance(m, AppendRequest) and m.recipient == "b")
    assert a.progress["b"].match < a.log.last_index

    start = len(c.sent)
    c.tick("a")
    (beat,) = _beats(c, "b", start)
    assert not beat.answer_optional
    c.deliver_all()  # b answers, and the answer prompts the append it lacks
    assert a.progress["b"].match == a.log.last_index


def test_a_waiting_read_asks_every_follower_and_is_served_at_once() -> None:
    c = Cluster(3)
    a = c.elect("a")
    c.deliver_all()
    c.tick_all(1)  # an idle round that asked nobody to answer
    assert all(m.answer_optional for m in _beats(c, "b", len(c.sent) - 4))
    commit = a.commit_index

    start = len(c.sent)
    a.read_index(7)
    c.process_ready("a")  # the read's own round leaves now, not at the next tick
    beats = [m for m in c.sent[start:] if isinstance(m, HeartbeatRequest)]
    assert sorted(m.recipient for m in beats) == ["b", "c"]
    assert not any(m.answer_optional for m in beats)
    c.deliver_all()
    assert c.read_states["a"] == [ReadState(7, commit)]


def test_a_follower_that_ignores_the_flag_is_still_understood() -> None:
    """An older follower answers every heartbeat: the leader takes the answer."""
    c = Cluster(3)
    a = c.elect("a")
    c.deliver_all()
    c.tick_all(1)
    heard = a.progress["b"].last_heard_tick
    c.tick("a")
    c.take(HeartbeatRequest, sender="a")
    assert a.progress["b"].last_heard_tick == heard
    c.deliver(HeartbeatResponse(term=a.term, sender="b", recipient="a", read_seq=0))
    assert a.progress["b"].last_heard_tick > heard
    assert a.role is Role.LEADER
