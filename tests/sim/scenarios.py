"""Scripted fault scenarios: orderings too precise for random seeds to find.

The random campaign explores broadly; a handful of published counterexamples
need a specific choreography of partitions, crashes and proposals. Each
scenario here drives the same ``Simulation`` (same disks, network and
checkers) through one such choreography. Against the real core it must end
quietly; against the matching mutant the checkers must fire. Some scenarios
instead pin down a safe situation the checkers once misjudged
(``commit_under_uncommitted_removal``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sidecar.raft import ConfChange, ConfChangeKind, ConfChangeRejected, Ready, Role
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


@dataclasses.dataclass(frozen=True, slots=True)
class CommitUnderRemoval:
    """What ``commit_under_uncommitted_removal`` saw happen."""

    index: int
    """The entry the leader committed with a majority of its new configuration only."""
    leader_voters: frozenset[str]
    """The configuration the leader counted: the newest in its log, not committed."""
    follower_voters: frozenset[str]
    """The configuration of the follower when it learnt that commit."""
    leader_persisted_commit: bool
    """Whether the leader's disk ever recorded the commit (it crashed in that write)."""
    learnt_from_the_leader: bool
    """Whether the follower learnt the commit in the leader's term, from its
    appends, rather than later from another leader."""

    @property
    def played_as_designed(self) -> bool:
        return (
            self.learnt_from_the_leader
            and not self.leader_persisted_commit
            and self.leader_voters < self.follower_voters
        )


def commit_under_uncommitted_removal(
    raft_factory: RaftFactory, seed: int = 1
) -> CommitUnderRemoval:
    """A leader commits by the majority of a configuration it has just
    appended, then crashes in the write that records the commit; a follower
    that has not yet received the change learns the commit from the appends
    that left before that write (``split_messages``). Seeds 201580 and 204694
    of a long campaign (issue 17) played this at random.

    Four voters L, F_fast, F_slow, F_gone; flow control lets one entry per
    append and one append in flight. L, cut off from F_slow and F_gone,
    appends x and y, then removes F_gone (three voters: a majority is two).
    F_fast acknowledges x; L commits x with itself and F_fast, a majority of
    {L, F_fast, F_slow} but not of the four voters F_fast still knows, sends
    F_fast y with the new commit index, and tears its write. Single-server
    changes make this safe: every majority of the old configuration meets
    every majority of the new one (dissertation §4.1), so whoever leads next
    holds x. The checkers must accept it, and still judge everything after.
    """
    settings = calm_settings(
        seed, voters=4, spares=0, max_entries_per_append=1, max_inflight_appends=1
    )
    sim = Simulation(seed, raft_factory, settings=settings)
    sim.faults_enabled = False

    def settled() -> bool:
        node = leader(sim)
        if node is None or node.raft is None:
            return False
        raft = node.raft
        return raft.commit_index == raft.log.last_index and all(
            n.disk.last_index() == raft.log.last_index for n in sim.nodes.values()
        )

    run_until(sim, settled)
    first = leader(sim)
    assert first is not None and first.raft is not None
    l_raft = first.raft
    f_fast, f_slow, f_gone = sorted(l_raft.membership.voters - {first.id})
    isolate_link(sim, first.id, f_slow)
    isolate_link(sim, first.id, f_gone)

    x_index, _ = l_raft.propose_batch([b"x", b"y"])
    l_raft.propose_conf_change(ConfChange(ConfChangeKind.REMOVE_NODE, f_gone))
    sim.drain(first)
    leader_voters = l_raft.membership.voters

    def tear(node: SimNode, rd: Ready) -> bool:
        return node.id == first.id and rd.hard_state is not None and rd.hard_state.commit >= x_index

    sim.tear_write = tear
    fast = sim.nodes[f_fast]
    run_until(sim, lambda: fast.raft is not None and fast.raft.commit_index >= x_index)
    assert fast.raft is not None
    follower_voters = fast.raft.membership.voters
    learnt = fast.raft.term == l_raft.term and fast.raft.leader_id == first.id
    leader_persisted_commit = first.disk.hard_state.commit >= x_index

    sim.cut.clear()
    if first.raft is None:
        sim.start(first)
    for _ in range(5_000):  # a new leader, the restarted one, everything judged
        sim.step()
    return CommitUnderRemoval(
        x_index, leader_voters, follower_voters, leader_persisted_commit, learnt
    )


@dataclasses.dataclass(frozen=True, slots=True)
class DiskLossOutcome:
    """What ``disk_loss_needed_for_majority`` saw happen."""

    committed: int
    """The last index the first leader committed with the follower that then lost its disk."""
    new_server: str
    """The server id the wiped node came back under."""
    leader_without_the_entries: bool
    """Whether a leader was elected while the first leader was down (only the
    follower that lacks the entries and the wiped node were up)."""
    admitted: bool
    """Whether the new server ended as a caught-up voter."""
    admissions: tuple[tuple[ConfChangeKind, str], ...]
    """The changes the leader proposed for it (``plan_change``), in order."""
    old_server_removed: bool
    """Whether the final configuration no longer holds the old incarnation."""


def disk_loss_needed_for_majority(raft_factory: RaftFactory, seed: int = 1) -> DiskLossOutcome:
    """Issue 11: the node that lost its disk is needed for a majority.

    Three voters L, A, B. B is cut off; L commits grants with A. A loses its
    disk and L crashes; B comes back. Only B (without the grants) and A's
    empty disk are up. With the amnesia guard A is a new server that no
    configuration counts, so no leader can be elected until L returns; then
    L replaces A's old incarnation by the new one through the log. Without
    the guard A votes for B, and B leads without the committed grants
    (Leader Completeness), so their fencing tokens would be granted again.
    """
    sim = Simulation(seed, raft_factory, settings=calm_settings(seed))
    sim.faults_enabled = False
    run_until(sim, lambda: leader(sim) is not None)
    first = leader(sim)
    assert first is not None and first.raft is not None
    l_raft = first.raft
    a, b = sorted(l_raft.membership.voters - {first.id})
    isolate_link(sim, first.id, b)
    isolate_link(sim, a, b)
    last = l_raft.propose_batch([b"grant-1", b"grant-2", b"grant-3"])[-1]
    sim.drain(first)
    run_until(sim, lambda: l_raft.commit_index >= last)

    fresh = sim.lose_disk(sim.nodes[a])
    sim.crash(first)
    sim.cut.clear()
    elected = False
    for _ in range(3_000):  # B and the wiped node alone
        sim.step()
        elected = elected or leader(sim) is not None
    sim.start(first)
    for _ in range(20_000):
        if sim.admitted():
            break
        sim.step()
    final = leader(sim)
    removed = (
        final is not None and final.raft is not None and a not in final.raft.membership.members
    )
    return DiskLossOutcome(last, fresh.id, elected, sim.admitted(), tuple(sim.admissions), removed)
