"""The lease mode of the simulator: workers, the real lease code and drifting,
stalling clocks on top of the Raft swarm, the lease checker after every step.

``python -m tests.sim --leases --seeds N`` runs longer campaigns.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.leases import DRIFT_BOUND, LeaseCode
from tests.sim.runner import run_campaign, simulation
from tests.sim.test_simulation import CHUNK, STEPS

LEASE_SEEDS = int(os.environ.get("RAFT_SIM_LEASE_SEEDS", "100"))


@pytest.mark.parametrize("first", range(0, LEASE_SEEDS, CHUNK))
def test_lease_seeds_keep_one_believer_per_election(first: int) -> None:
    failures, _ = run_campaign(
        range(first, min(first + CHUNK, LEASE_SEEDS)), STEPS, leases=LeaseCode()
    )
    if failures:
        pytest.fail("\n\n".join(f.report for f in failures), pytrace=False)


def test_a_lease_seed_replays_identically() -> None:
    def fingerprint() -> tuple[object, ...]:
        sim = simulation(11, leases=LeaseCode())
        sim.run(1500)
        assert sim.leases is not None
        return (
            sim.now,
            tuple(sim.trace),
            tuple(sorted(sim.stats.items())),
            tuple(sim.leases.notes),
        )

    assert fingerprint() == fingerprint()


def test_lease_mode_exercises_the_faults_it_claims() -> None:
    """Guard against a lease layer that quietly stops granting, renewing or faulting."""
    totals: dict[str, int] = {}
    drifts = set()
    for seed in range(40):
        sim = simulation(seed, leases=LeaseCode())
        sim.run(STEPS)
        assert sim.leases is not None
        drifts.add(sim.leases.settings.drift)
        for key, value in sim.stats.items():
            totals[key] = totals.get(key, 0) + value
    for key in ("grants", "renewals", "expiries", "stalls", "pauses", "resigns", "lost_leases"):
        assert totals[key] > 0, f"no {key} in 40 seeds: {totals}"
    assert totals["renewals"] > 10 * totals["grants"] // 4, totals
    assert DRIFT_BOUND in drifts and 0.0 in drifts, drifts
