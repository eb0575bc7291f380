"""Scripted lease scenarios: the orderings the random lease mode rarely plays.

The random lease mode catches a renewal by a stale leader late and through a
liveness failure, and the two renewal races not at all, because its
workload decides whether a holder keeps renewing at the wrong moment while
a fresh candidate waits. Each scenario here plays that moment on purpose,
on the same ``Simulation`` (real core, real ``ElectionsState``, real
``LeaderDeadlines`` and ``SafeDeadline``, the seed's clock drift) with the
lease checker after every step. Against the real ``LeaseCode`` it must end
quietly, having played as designed (the waiting worker was granted);
against the matching mutant the checker raises ``SafetyViolation``.
"""

from __future__ import annotations

import dataclasses

from tests.sim.cluster import Simulation
from tests.sim.leases import LeaseCode, LeaseLayer, NodeLeases, SimWorker
from tests.sim.scenarios import calm_settings, isolate_link, leader, run_until
from tests.sim.swarm import TICK_UNITS

ELECTION = "e0"
ELECTION_TIMEOUT_TICKS = 10
TTL_UNITS = 3 * ELECTION_TIMEOUT_TICKS * TICK_UNITS
"""3 s: three election timeouts, as the drawn TTLs are."""


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseScenarioOutcome:
    """What a scenario saw happen (with the real code, nothing unsafe)."""

    holder_token: int
    waiter_token: int
    """The token the waiting worker was granted (0: never granted)."""
    holder_lost: str
    """Why the holder dropped its lease, from the lease events ('' if it did not)."""
    timed_as_scripted: bool
    """The race the scenario sets up happened in that order (for the races)."""

    @property
    def played_as_designed(self) -> bool:
        return (
            self.waiter_token > self.holder_token > 0
            and bool(self.holder_lost)
            and self.timed_as_scripted
        )


def _stage(code: LeaseCode, seed: int, **swarm: object) -> tuple[Simulation, LeaseLayer]:
    settings = calm_settings(seed, election_timeout_ticks=ELECTION_TIMEOUT_TICKS, **swarm)
    sim = Simulation(seed, settings=settings, leases=code)
    sim.faults_enabled = False
    layer = sim.leases
    assert layer is not None
    layer.script(TTL_UNITS)
    return sim, layer


def _run_for(sim: Simulation, units: int) -> None:
    end = sim.now + units
    run_until(sim, lambda: sim.now >= end)


def _outcome(
    layer: LeaseLayer,
    holder: SimWorker,
    holder_token: int,
    waiter: SimWorker,
    timed: bool = True,
) -> LeaseScenarioOutcome:
    lost = [note for _, note in layer.notes if note.startswith(f"{holder.name} loses")]
    granted = waiter.token if waiter.token != holder_token else 0
    return LeaseScenarioOutcome(holder_token, granted, lost[0] if lost else "", timed)


def renewal_by_a_stale_leader(code: LeaseCode, seed: int = 1) -> LeaseScenarioOutcome:
    """A leader cut off from its peers keeps answering its own pod's keep-alives.

    CheckQuorum is off, so the isolated leader L never steps down. The holder
    H sits beside L (their link is a pod's, never cut); a waiter W, beside a
    follower, is queued behind H. L is cut off from both followers; they
    elect a new leader, which counts H's lease a full TTL from its election,
    expires it and grants W. Real code: L's renewals need a ReadIndex round
    that no quorum answers, so H's safe deadline runs out before that Expire.
    Mutant (renewal without the ReadIndex round): L keeps extending H's
    deadline, and H and W both believe they hold the election.
    """
    sim, layer = _stage(code, seed, check_quorum=False)
    run_until(sim, lambda: leader(sim) is not None)
    old = leader(sim)
    assert old is not None
    followers = sorted(set(sim.nodes) - {old.id})
    holder = layer.add_worker("w0", ELECTION, old.name)
    waiter = layer.add_worker("w1", ELECTION, sim.nodes[followers[0]].name)

    layer.campaign(holder)
    run_until(sim, lambda: holder.believes(sim.now))
    holder_token = holder.token
    layer.campaign(waiter)
    run_until(
        sim,
        lambda: all(
            any(q.candidate == waiter.candidate for q in leases.machine.queue(ELECTION))
            for leases in layer.nodes.values()
        ),
    )
    for follower in followers:
        isolate_link(sim, old.id, follower)
    run_until(sim, lambda: leader(sim, set(followers)) is not None)
    run_until(sim, lambda: waiter.believes(sim.now), limit=50_000)
    _run_for(sim, TTL_UNITS)  # both still judged: the holder renews on
    return _outcome(layer, holder, holder_token, waiter)


NETWORK_DELAY_UNITS = 15
"""A fixed one-way delay between sidecars, longer than a tick (at most 11
units): a heartbeat round then outlasts the tick that proposes an Expire."""


def _waiting(at_leader: NodeLeases, worker: SimWorker) -> int:
    """The sequence of the worker's keep-alive waiting for its ReadIndex round (0: none)."""
    return next((seq for _, w, _, seq in at_leader.reads.values() if w is worker), 0)


def _queued(layer: LeaseLayer, worker: SimWorker) -> bool:
    """Every node has applied the worker's place in the queue."""
    return all(
        any(q.candidate == worker.candidate for q in leases.machine.queue(ELECTION))
        for leases in layer.nodes.values()
    )


def renewal_while_its_expire_is_in_flight(code: LeaseCode, seed: int = 1) -> LeaseScenarioOutcome:
    """A keep-alive whose ReadIndex round ends after the leader proposed Expire.

    Leader L; the first holder P resigns while the next in the queue, H, sits
    beside a follower F whose loop is stalled (a slow disk), and a waiter W is
    queued behind H. L applies H's grant and times it a full TTL; F resumes
    just before that deadline, so H learns of its grant late (no safe deadline
    until a first acknowledgement) and its first keep-alive reaches L a few
    units before the tick that proposes Expire. The ReadIndex round (a fixed
    15-unit delay each way) confirms L's leadership after that tick and
    before the Expire commits. Once H has the answer F stalls again, so H
    does not learn from its own pod that the Expire committed. Real code:
    ``LeaderDeadlines.renew`` refuses a lease whose Expire is in flight, so H
    never gets a deadline. Mutant
    (``RenewsWhileExpiring``): H is told a full TTL, the Expire commits, W is
    granted, and both believe they hold the election.
    """
    delay = NETWORK_DELAY_UNITS
    sim, layer = _stage(code, seed, delay_min=delay, delay_max=delay)
    run_until(sim, lambda: leader(sim) is not None)
    old = leader(sim)
    assert old is not None
    follower = sorted(set(sim.nodes) - {old.id})[0]
    first = layer.add_worker("w0", ELECTION, old.name)
    holder = layer.add_worker("w1", ELECTION, sim.nodes[follower].name)
    waiter = layer.add_worker("w2", ELECTION, old.name)

    layer.campaign(first)
    run_until(sim, lambda: first.believes(sim.now))
    layer.campaign(holder)
    run_until(sim, lambda: _queued(layer, holder))
    layer.campaign(waiter)
    run_until(sim, lambda: _queued(layer, waiter))
    home = sim.nodes[follower]
    layer.stall(home, sim.now + 10 * TTL_UNITS)
    layer.resign(first)

    at_leader = layer.nodes[old.id]

    def holder_token() -> int:
        grant = at_leader.machine.holder(ELECTION)
        return grant.token if grant is not None and grant.holder == holder.candidate else 0

    def remaining_s() -> float | None:
        token = holder_token()
        clock = layer.node_clock(old).at(sim.now)
        return at_leader.deadlines.remaining_s(ELECTION, token, clock) if token else None

    run_until(sim, lambda: remaining_s() is not None)
    left = remaining_s()
    assert left is not None
    due = sim.now + layer.node_clock(old).units_for(left)
    # On resuming, F acknowledges the appends it missed (one delay), learns
    # the commit from L's next heartbeat (within a tick, at most 11 units, and
    # one delay), applies the grant; grant and keep-alive take 1-2 units each
    # in the pod, then one delay to L. So the keep-alive lands 2 to 15 units
    # before the due time: before the tick that proposes Expire (which comes
    # within a tick of the due time) and less than a heartbeat round (30
    # units) before it, so its round is confirmed after that tick.
    layer.stall(home, due - 3 * delay - 17)
    token = holder_token()

    def expiring() -> bool:
        return any(t == token for _, t, _ in at_leader.expiring.values())

    run_until(sim, lambda: _waiting(at_leader, holder) > 0)
    sequence = _waiting(at_leader, holder)
    arrived_first = not expiring() and at_leader.machine.is_current(ELECTION, token)
    run_until(sim, lambda: _waiting(at_leader, holder) == 0)
    confirmed_in_flight = expiring()
    # Once H has its answer, F stalls again: H's next keep-alive waits there
    # instead of learning from F that the Expire committed.
    run_until(sim, lambda: sequence not in holder.sent_at)
    layer.stall(home, sim.now + TTL_UNITS)
    run_until(sim, lambda: waiter.believes(sim.now), limit=50_000)
    _run_for(sim, TTL_UNITS)
    return _outcome(layer, holder, token, waiter, arrived_first and confirmed_in_flight)


REVOKE_NOTICED_AFTER_UNITS = 30
"""How long the holder's sidecar takes to notice the broken stream and revoke."""
FILLERS = 10
"""Entries proposed between the Campaign and the Revoke. With one entry per
append and one append in flight they commit about a tick apart, so the
Revoke commits some ten ticks after the Campaign: after the ReadIndex round
of H's first keep-alive (the scenario checks it)."""


def renewal_ahead_of_an_appended_revoke(code: LeaseCode, seed: int = 1) -> LeaseScenarioOutcome:
    """A keep-alive whose ReadIndex round ends before a Revoke appended ahead of it commits.

    The holder H, beside a follower F, loses its stream but not its process:
    it campaigns again at once with the same key and is answered with its
    current grant (ALREADY_HOLDER), which it may use only after a first
    acknowledgement. Its sidecar notices the broken stream later and
    proposes Revoke, which L appends behind ten other entries; with one
    entry per append and one append in flight (and a fixed 15-unit delay)
    the Revoke stays uncommitted while H's first keep-alive arrives and its
    ReadIndex round completes (the scenario checks that order). Then F
    stalls so H does not learn of the Revoke from its own pod. Real code: the
    renewal also waits until everything appended before it arrived is
    applied, so H is told the lease ended. Mutant (the renewal waits for the
    ReadIndex round only): H is told a full TTL, the Revoke commits and
    grants a waiter W, and both believe they hold the election.
    """
    delay = NETWORK_DELAY_UNITS
    sim, layer = _stage(
        code,
        seed,
        delay_min=delay,
        delay_max=delay,
        max_entries_per_append=1,
        max_inflight_appends=1,
    )
    run_until(sim, lambda: leader(sim) is not None)
    old = leader(sim)
    assert old is not None and old.raft is not None
    raft = old.raft
    follower = sorted(set(sim.nodes) - {old.id})[0]
    holder = layer.add_worker("w0", ELECTION, sim.nodes[follower].name)
    waiter = layer.add_worker("w1", ELECTION, old.name)

    layer.campaign(holder)
    run_until(sim, lambda: holder.believes(sim.now))
    token = holder.token
    layer.campaign(waiter)
    run_until(sim, lambda: _queued(layer, waiter))
    run_until(sim, lambda: raft.commit_index == raft.log.last_index)

    at_leader = layer.nodes[old.id]
    layer.drop(holder, revoke_after=REVOKE_NOTICED_AFTER_UNITS)
    before = raft.log.last_index
    layer.campaign(holder)
    run_until(sim, lambda: raft.log.last_index > before)  # H's Campaign
    raft.propose_batch([b"filler-%d" % i for i in range(FILLERS)])
    sim.drain(old)
    revoke_index = raft.log.last_index + 1
    run_until(sim, lambda: raft.log.last_index >= revoke_index)

    run_until(sim, lambda: _waiting(at_leader, holder) > 0)
    sequence = _waiting(at_leader, holder)
    arrived_behind = at_leader.machine.is_current(ELECTION, token)
    run_until(sim, lambda: _waiting(at_leader, holder) == 0)
    confirmed_before_commit = raft.commit_index < revoke_index
    run_until(sim, lambda: sequence not in holder.sent_at)
    layer.stall(sim.nodes[follower], sim.now + TTL_UNITS)
    run_until(sim, lambda: waiter.believes(sim.now), limit=50_000)
    _run_for(sim, TTL_UNITS)
    return _outcome(layer, holder, token, waiter, arrived_behind and confirmed_before_commit)
