"""The checkers can fail: each classic bug, re-introduced, turns the simulator red.

Random-campaign mutants must be caught within a seed budget of the first
2,000 seeds, 2,000 steps each (three times the safety campaign's, because
two of the bugs need a rare interleaving); the search stops at the first
failing seed, so a mutant costs only the seeds up to its first catch. The membership erratum needs a
choreography too precise for random seeds and is caught by a scripted
scenario run on the same simulator and checkers. "amnesia guard off" (a node
that lost its disk back under its old server id) is a random-campaign mutant;
``test_disk_loss.py`` also plays it scripted.

Lease mutants (``LEASE_MUTANTS``) run the simulator's lease mode with one
planted bug each: three within the same budget, caught by a lease checker,
the real lease code passing every seed that first catches one; the other
three, whose moment the random workload rarely or never plays, by a scripted
lease scenario each (``lease_scenarios.py``).
"""

from __future__ import annotations

import os

import pytest

from sidecar.raft import Raft
from tests.sim.checkers import SafetyViolation
from tests.sim.lease_scenarios import (
    renewal_ahead_of_an_appended_revoke,
    renewal_by_a_stale_leader,
    renewal_while_its_expire_is_in_flight,
)
from tests.sim.leases import LeaseCode
from tests.sim.mutants import LEASE_MUTANTS, MUTANTS, ChangesMembershipBeforeOwnTermCommit
from tests.sim.runner import run_campaign
from tests.sim.scenarios import membership_change_before_own_term_commit
from tests.sim.test_simulation import STEPS

SEEDS = 2000

RANDOM_CAMPAIGN_MUTANTS = [
    name for name, cls in MUTANTS.items() if cls is not ChangesMembershipBeforeOwnTermCommit
]


# The first seed that catches each random-campaign mutant (docs/simulation.md).
FIRST_SEEDS = {
    "figure-8 commit by counting": 144,
    "vote granted without persisting": 0,
    "appends accepted from stale term": 75,
    "votes counted from another term": 18,
    "reads served without quorum": 115,
    "learners counted toward commit": 9,
    "amnesia guard off": 6,
}

SEARCH = bool(os.environ.get("RAFT_SIDECAR_LONG"))
"""``RAFT_SIDECAR_LONG=1`` (``make sim-mutants``): search every seed from 0
instead of replaying the recorded first one. The search for "reads served
without quorum" once cost 1,599 seeds, six minutes of a core, which was
most of the default run's wall time."""


@pytest.mark.parametrize("name", RANDOM_CAMPAIGN_MUTANTS)
def test_the_recorded_first_seed_catches(name: str) -> None:
    """The checker can fail: the mutant's recorded first seed turns red (a run
    is deterministic, so this is the search's own verdict at that seed)."""
    seed = FIRST_SEEDS[name]
    failures, _ = run_campaign(range(seed, seed + 1), STEPS, MUTANTS[name])
    assert failures, (
        f"mutant {name!r} survived its recorded first seed {seed}: a change moved it; "
        "find the new one with `make sim-mutants` and update FIRST_SEEDS and docs/simulation.md"
    )


@pytest.mark.parametrize("seed", sorted(set(FIRST_SEEDS.values())))
def test_the_real_core_passes_the_seeds_that_catch_mutants(seed: int) -> None:
    failures, _ = run_campaign(range(seed, seed + 1), STEPS)
    if failures:
        pytest.fail(failures[0].report, pytrace=False)


# A search costs up to the CPU time of its first catching seed's predecessors
# (about 65 ms a seed); under load a test gets a fraction of a core, so give
# it room. A campaign is deterministic: only the timeout could fail it.
@pytest.mark.skipif(
    not SEARCH, reason="the full search runs with RAFT_SIDECAR_LONG=1 (make sim-mutants)"
)
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", RANDOM_CAMPAIGN_MUTANTS)
def test_default_seed_budget_catches_first_at_the_recorded_seed(name: str) -> None:
    failures, _ = run_campaign(range(SEEDS), STEPS, MUTANTS[name], stop_at_first=True)
    assert failures, f"mutant {name!r} survived {SEEDS} seeds x {STEPS} steps"
    assert failures[0].seed == FIRST_SEEDS[name], failures[0].report


@pytest.mark.parametrize("seed", [1, 3, 4])
def test_membership_erratum_scenario_holds_on_the_real_core(seed: int) -> None:
    accepted = membership_change_before_own_term_commit(Raft, seed)
    assert not accepted, "the new leader must refuse a change before committing its own entry"


# Seeds whose schedule reaches step 2 with the mutant (L2 proposes the change).
# The schedule follows every message the core sends: since matching followers
# no longer answer commit-only appends, seed 3 gets L2's change refused for
# another reason (an uncommitted configuration), so it tests nothing there.
@pytest.mark.parametrize("seed", [1, 4, 5])
def test_membership_erratum_scenario_catches_the_mutant(seed: int) -> None:
    with pytest.raises(SafetyViolation, match="Leader Completeness"):
        membership_change_before_own_term_commit(ChangesMembershipBeforeOwnTermCommit, seed)


# The first seed that catches each lease mutant (docs/simulation.md). The
# other LEASE_MUTANTS are caught late or not at all within the budget by this
# version of the lease mode (the table there says how far they were
# searched): the scripted lease scenarios below pin them.
LEASE_FIRST_SEEDS = {
    "no safety margin": 23,
    "new leader counts from the grant": 24,
    "resumed grant counted from the new campaign": 171,
}


@pytest.mark.parametrize("name", sorted(LEASE_FIRST_SEEDS))
def test_the_recorded_first_seed_catches_lease_mutant(name: str) -> None:
    seed = LEASE_FIRST_SEEDS[name]
    failures, _ = run_campaign(range(seed, seed + 1), STEPS, leases=LEASE_MUTANTS[name])
    assert failures, (
        f"lease mutant {name!r} survived its recorded first seed {seed}: find the new one "
        "with `make sim-mutants` and update LEASE_FIRST_SEEDS and docs/simulation.md"
    )
    assert "Lease" in failures[0].error, failures[0].report


@pytest.mark.skipif(
    not SEARCH, reason="the full search runs with RAFT_SIDECAR_LONG=1 (make sim-mutants)"
)
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", sorted(LEASE_FIRST_SEEDS))
def test_default_seed_budget_catches_lease_mutant(name: str) -> None:
    failures, _ = run_campaign(range(SEEDS), STEPS, leases=LEASE_MUTANTS[name], stop_at_first=True)
    assert failures, f"lease mutant {name!r} survived {SEEDS} seeds x {STEPS} steps"
    assert "Lease" in failures[0].error, failures[0].report
    assert failures[0].seed == LEASE_FIRST_SEEDS[name], failures[0].report


@pytest.mark.parametrize("seed", sorted(set(LEASE_FIRST_SEEDS.values())))
def test_the_real_lease_code_passes_the_seeds_that_catch_lease_mutants(seed: int) -> None:
    failures, _ = run_campaign(range(seed, seed + 1), STEPS, leases=LeaseCode())
    if failures:
        pytest.fail(failures[0].report, pytrace=False)


# Scripted lease scenarios (``lease_scenarios.py``): the lease mutants the
# random seeds catch late or not at all, each pinned by its choreography.
LEASE_SCENARIO_SEEDS = [1, 2, 3]
LEASE_SCENARIOS = {
    "renewal by a stale leader": renewal_by_a_stale_leader,
    "renewal while its Expire is in flight": renewal_while_its_expire_is_in_flight,
    "renewal ahead of an appended revoke": renewal_ahead_of_an_appended_revoke,
}


@pytest.mark.parametrize("seed", LEASE_SCENARIO_SEEDS)
@pytest.mark.parametrize("name", sorted(LEASE_SCENARIOS))
def test_lease_scenario_catches_its_mutant(name: str, seed: int) -> None:
    with pytest.raises(SafetyViolation, match="Lease safety"):
        LEASE_SCENARIOS[name](LEASE_MUTANTS[name], seed)


@pytest.mark.parametrize("seed", LEASE_SCENARIO_SEEDS)
@pytest.mark.parametrize("name", sorted(LEASE_SCENARIOS))
def test_lease_scenario_holds_with_the_real_lease_code(name: str, seed: int) -> None:
    outcome = LEASE_SCENARIOS[name](LeaseCode(), seed)
    assert outcome.played_as_designed, outcome


def test_every_lease_mutant_is_caught_at_random_or_by_a_scenario() -> None:
    assert sorted(LEASE_MUTANTS) == sorted([*LEASE_FIRST_SEEDS, *LEASE_SCENARIOS])
