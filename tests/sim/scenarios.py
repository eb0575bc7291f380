"""Scripted fault scenarios: orderings too precise for random seeds to find.

The random campaign explores broadly; a handful of published counterexamples
need a specific choreography of partitions, crashes and proposals. Each
scenario here drives the same ``Simulation`` (same disks, network and
checkers) through one such choreography. Against the real core it must end
quietly; against the matching mutant the checkers must fire.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sidecar.raft import ConfChange, ConfChangeKind, ConfChangeRejected, Role
from tests.sim.cluster import RaftFactory, SimNode, Simulation
from tests.sim.swarm import SwarmSettings


def calm_settings(seed: int, **overrides: object) -> SwarmSettings:
    """No random faults: the scenario script is the only nemesis."""
    quiet = {f.name: 0.0 for f in dataclasses.fields(SwarmSettings) if f.name.startswith("p_")}
    base: dict[str, object] = {
        "voters": 3,
        "spares": 0,
        "election_timeout_ticks": 10,
        "heartbeat_ticks": 1,
        "pre_vote": True,
        "check_quorum": True,
        "max_entries_per_append": 64,
        "max_inflight_appends": 8,
        "clock_skew": 0.1,
        "delay_min": 1,
        "delay_max": 5,
        "loss": 0.0,
        "long_delay": 0.0,
        "duplication": 0.0,
        "eager_reconfig": False,
        **quiet,
    }
    base.update(overrides)
    return dataclasses.replace(SwarmSettings.draw(seed), **base)  # type: ignore[arg-type]


def run_until(sim: Simulation, done: Callable[[], bool], limit: int = 20_000) -> None:
    for _ in range(limit):
        if done():
            return
        sim.step()
    raise AssertionError("scenario: the cluster did not reach the expected state")


def leader(sim: Simulation, among: set[str] | None = None) -> SimNode | None:
    for node_id in sorted(among or sim.nodes):
        node = sim.nodes[node_id]
        if node.raft is not None and node.raft.role is Role.LEADER:
            return node
    return None


def isolate_link(sim: Simulation, a: str, b: str) -> None:
    sim.cut.add((a, b))
    sim.cut.add((b, a))


def membership_change_before_own_term_commit(raft_factory: RaftFactory, seed: int = 1) -> bool:
    """Ongaro's 2015 counterexample to single-server changes (raft-dev, "bug in
    single-server membership changes"), on four voters and one learner.

    1. Leader L promotes learner S; the entry reaches only S (L and S are cut
       off from the other voters F), then L crashes.
    2. F elects L2 among the three remaining voters. L2 at once removes F_a
       (cut off from L2) and commits that with F_b: a majority of the
       three-voter configuration.
    3. L restarts and, with the votes of S and F_a, wins in its own
       five-voter configuration, whose majorities do not meet L2's.

    With the rule "a new leader commits an entry of its term before changing
    membership", step 2 is refused and nothing goes wrong. Returns whether L2's
    change was accepted; the checkers raise if safety broke.
    """
    sim = Simulation(seed, raft_factory, settings=calm_settings(seed, voters=4, spares=1))
    sim.faults_enabled = False
    learner = "n5"

    run_until(sim, lambda: leader(sim) is not None)
    first = leader(sim)
    assert first is not None and first.raft is not None
    l_raft = first.raft

    def try_conf(node: SimNode, change: ConfChange) -> bool:
        assert node.raft is not None
        try:
            node.raft.propose_conf_change(change)
        except ConfChangeRejected:
            return False
        sim.drain(node)
        return True

    run_until(sim, lambda: try_conf(first, ConfChange(ConfChangeKind.ADD_LEARNER, learner)))
    run_until(
        sim,
        lambda: (
            l_raft.commit_index >= l_raft.log.last_conf_index()
            and l_raft.progress[learner].match >= l_raft.commit_index
        ),
    )

    followers = sorted(l_raft.membership.voters - {first.id})
    for f in followers:
        isolate_link(sim, first.id, f)
        isolate_link(sim, learner, f)
    assert try_conf(first, ConfChange(ConfChangeKind.PROMOTE_LEARNER, learner))
    promoted_at = l_raft.log.last_index
    run_until(sim, lambda: sim.nodes[learner].disk.last_index() >= promoted_at)
    sim.crash(first)

    run_until(sim, lambda: leader(sim, set(followers)) is not None)
    second = leader(sim, set(followers))
    assert second is not None
    f_a, f_b = sorted(set(followers) - {second.id})
    isolate_link(sim, second.id, f_a)
    isolate_link(sim, f_b, f_a)
    accepted = try_conf(second, ConfChange(ConfChangeKind.REMOVE_NODE, f_a))
    for _ in range(500):
        sim.step()

    sim.start(first)
    sim.cut -= {(first.id, f_a), (f_a, first.id)}
    for _ in range(5_000):  # L may or may not win; the checkers judge either way
        sim.step()
    return accepted
