"""``Raft.idle_ticks``: the ticks the runtime sleeps through only count.

The runtime (sidecar/node.py) wakes for the tick ``idle_ticks`` names, not
for every tick, and makes up the ones it slept through right before the next
input. That is only sound if those ticks change nothing anyone can see: no
ready batch, no change of role, leader or term, nor of the set of peers
CheckQuorum counts. These tests drive small clusters through seeded random
histories (elections, proposals, lost messages, partitions) and check that,
at every point, for every node, on a copy of it.
"""

from __future__ import annotations

import copy
import random

from sidecar.raft import Raft, Role
from tests.unit.cluster import Cluster

SEEDS = range(40)


def observable(raft: Raft) -> tuple[object, ...]:
    return (raft.role, raft.leader_id, raft.term, raft.has_ready(), raft.recently_active())


def check_idle_ticks(raft: Raft) -> None:
    """Tick a copy through its idle ticks: nothing observable may change."""
    probe = copy.deepcopy(raft)
    assert not probe.has_ready()
    before = observable(probe)
    idle = probe.idle_ticks()
    assert idle >= 1
    for i in range(idle - 1):
        probe.tick()
        assert observable(probe) == before, f"tick {i + 1} of {idle - 1} idle ones acted"
    if raft.role is not Role.LEADER and raft.promotable():
        probe.tick()  # the due tick of a voter that is no leader: it campaigns
        assert probe.role in (Role.PRE_CANDIDATE, Role.CANDIDATE)
        assert probe.has_ready()


def random_history(seed: int) -> None:
    rng = random.Random(seed)
    c = Cluster(
        rng.choice((3, 5)),
        seed=seed,
        heartbeat_ticks=rng.randint(1, 3),
        election_timeout_ticks=10,
    )
    c.tick_until_leader()
    for step in range(80):
        action = rng.random()
        if action < 0.5:
            c.tick_all(rng.randint(1, 4))
        elif action < 0.65:
            leader = c.leader()
            if leader is not None:
                c.propose(leader, b"cmd-%d" % step)
                c.deliver_all(drop=lambda _m: rng.random() < 0.2)
        elif action < 0.75:
            c.isolate(rng.choice(c.ids))
        elif action < 0.85:
            c.heal()
        else:
            for node_id in c.ids:
                c.tick(node_id, rng.randint(0, 3))  # unequal clocks, nothing delivered
        c.process_all()
        for node_id in c.ids:
            check_idle_ticks(c[node_id])


def test_idle_ticks_only_count_in_random_histories() -> None:
    for seed in SEEDS:
        random_history(seed)


def test_a_follower_wakes_exactly_when_its_election_timer_runs_out() -> None:
    c = Cluster(3, seed=7, election_timeout_ticks=10)
    leader = c.tick_until_leader()
    follower = next(i for i in c.ids if i != leader)
    c.isolate(leader)
    c.drop_all()
    raft = c[follower]
    due = raft.idle_ticks()
    c.tick(follower, due - 1)
    assert raft.role is Role.FOLLOWER
    c.tick(follower)
    assert raft.role in (Role.PRE_CANDIDATE, Role.CANDIDATE)


def test_a_leader_wakes_for_its_heartbeats() -> None:
    c = Cluster(3, seed=3, election_timeout_ticks=10, heartbeat_ticks=3)
    leader = c.tick_until_leader()
    c.deliver_all()
    raft = c[leader]
    due = raft.idle_ticks()
    assert 1 <= due <= 3
    c.tick(leader, due - 1)
    assert not c.queue, "the ticks before the due one send nothing"
    c.tick(leader)
    assert c.queue, "the due tick of a leader with heartbeat_ticks 3 sends heartbeats"
