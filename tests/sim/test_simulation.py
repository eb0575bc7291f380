"""The default simulation campaign: 500 seeds x 2,000 steps, every checker on.

Seeds are split into chunks so pytest-xdist can spread them over the cores.
``python -m tests.sim --seeds N --steps M`` runs longer campaigns.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.cluster import Simulation
from tests.sim.mutants import CountsLearnersTowardCommit
from tests.sim.runner import run_campaign

SEEDS = int(os.environ.get("RAFT_SIM_SEEDS", "500"))
STEPS = int(os.environ.get("RAFT_SIM_STEPS", "2000"))
CHUNK = 25


@pytest.mark.parametrize("first", range(0, SEEDS, CHUNK))
def test_seeds_hold_every_safety_and_liveness_property(first: int) -> None:
    failures, _ = run_campaign(range(first, min(first + CHUNK, SEEDS)), STEPS)
    if failures:
        pytest.fail("\n\n".join(f.report for f in failures), pytrace=False)


def test_a_seed_replays_identically() -> None:
    """One seed reproduces the whole run, fault settings included."""

    def fingerprint() -> tuple[object, ...]:
        sim = Simulation(seed=7)
        sim.run(1500)
        return (
            sim.now,
            tuple(sim.trace),
            tuple(sorted(sim.stats.items())),
            len(sim.check.committed),
        )

    assert fingerprint() == fingerprint()


def test_campaign_exercises_the_faults_it_claims() -> None:
    """Guard against a simulator that quietly stops injecting faults."""
    totals: dict[str, int] = {}
    committed = 0
    for seed in range(40):
        sim = Simulation(seed)
        sim.run(STEPS)
        committed += len(sim.check.committed) - 1
        for key, value in sim.stats.items():
            totals[key] = totals.get(key, 0) + value
    for key in (
        "elections",
        "crashes",
        "torn_crashes",
        "conf_changes",
        "transfers",
        "reads",
        "disk_losses",
        "admissions",
    ):
        assert totals[key] > 0, f"no {key} in 40 seeds: {totals}"
    assert totals["snapshots_sent"] > 0, totals
    assert committed > 40 * 50, committed


@pytest.mark.parametrize("seed", [201580, 204694])
def test_seeds_of_issue_17(seed: int) -> None:
    """A leader committed by the majority of a removal it had just appended and
    crashed before recording the commit; a follower lacking the removal learnt
    it. The checker judged it by the follower's configuration."""
    failures, _ = run_campaign(range(seed, seed + 1), STEPS)
    if failures:
        pytest.fail(failures[0].report, pytrace=False)


def test_a_campaign_finds_the_same_failures_with_any_number_of_jobs() -> None:
    """Worker processes change the wall time, not the outcome of a seed."""
    seeds = range(16)
    alone, _ = run_campaign(seeds, STEPS, CountsLearnersTowardCommit)
    spread, _ = run_campaign(seeds, STEPS, CountsLearnersTowardCommit, jobs=2)
    assert len(alone) > 1, "the mutant should fail several of these seeds"
    assert [(f.seed, f.report) for f in spread] == [(f.seed, f.report) for f in alone]
    first, _ = run_campaign(seeds, STEPS, CountsLearnersTowardCommit, True, jobs=2)
    assert [f.seed for f in first] == [alone[0].seed]
