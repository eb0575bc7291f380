"""Raft.leader_unreachable: a lost connection to the leader shortens the wait
for an election without ever letting a healthy leader be deposed."""

from __future__ import annotations

from sidecar.raft import Role, VoteRequest
from tests.unit.cluster import Cluster

T = 10  # election_timeout_ticks of the unit cluster


def ticks_to_new_leader(seed: int, *, signal: bool) -> int:
    """Ticks (of both followers) from losing leader a until b or c leads."""
    c = Cluster(3, seed=seed)
    c.elect("a")
    c.isolate("a")  # the leader is gone; its sockets were closed
    if signal:
        for follower in ("b", "c"):
            c.nodes[follower].leader_unreachable("a")
    rounds = 0
    while c.leader() in (None, "a"):
        c.tick("b")
        c.tick("c")
        c.deliver_all()
        rounds += 1
        assert rounds <= 10 * T, f"seed {seed}: no new leader"
    return rounds


def test_followers_that_lost_the_leader_elect_sooner() -> None:
    seeds = range(30)
    without = [ticks_to_new_leader(s, signal=False) for s in seeds]
    with_signal = [ticks_to_new_leader(s, signal=True) for s in seeds]
    # Without the signal nobody may campaign inside the lease (T ticks).
    assert min(without) >= T
    # With it the first campaign comes within T ticks; a tie (both followers
    # on the same tick, common with whole ticks) costs one more timeout.
    assert sum(r <= T for r in with_signal) >= len(seeds) * 3 // 4, with_signal
    assert max(with_signal) <= 3 * T, with_signal
    assert sorted(with_signal)[len(seeds) // 2] < sorted(without)[len(seeds) // 2]


def test_one_follower_alone_cannot_depose_a_leader_the_other_still_hears() -> None:
    c = Cluster(3, seed=1)
    c.elect("a")
    term = c.nodes["a"].term
    c.nodes["b"].leader_unreachable("a")  # a wrong signal: a is fine
    for _ in range(3 * T):
        c.tick_all()
    assert c.leader() == "a" and c.nodes["a"].term == term
    assert c.role("b") is Role.FOLLOWER


def test_the_signal_ends_the_lease_only_for_the_leader_it_names() -> None:
    c = Cluster(3, seed=2)
    c.elect("a")
    b = c.nodes["b"]
    b.leader_unreachable("c")  # not b's leader: nothing changes
    assert b.election_elapsed == 0
    c.nodes["a"].leader_unreachable("b")  # the leader itself ignores it
    assert c.role("a") is Role.LEADER
    b.leader_unreachable("a")
    assert b.election_elapsed >= T
    # Out of lease now: b would answer c's pre-vote rather than ignore it.
    c.nodes["c"].leader_unreachable("a")
    c.tick("c", 2 * T)
    pre_votes = [m for m in c.sent if isinstance(m, VoteRequest) and m.sender == "c"]
    assert pre_votes, "c campaigned within a timeout of losing its leader"
