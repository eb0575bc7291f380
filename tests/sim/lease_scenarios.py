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
from tests.sim.leases import LeaseCode, LeaseLayer, SimWorker
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

    @property
    def played_as_designed(self) -> bool:
        return self.waiter_token > self.holder_token > 0 and bool(self.holder_lost)


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
    layer: LeaseLayer, holder: SimWorker, holder_token: int, waiter: SimWorker
) -> LeaseScenarioOutcome:
    lost = [note for _, note in layer.notes if note.startswith(f"{holder.name} loses")]
    granted = waiter.token if waiter.token != holder_token else 0
    return LeaseScenarioOutcome(holder_token, granted, lost[0] if lost else "")


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
