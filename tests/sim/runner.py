"""Run many seeds and report failures with a replay command and a trace.

A campaign may spread its seeds over worker processes (``jobs``). Each seed
is a whole run on its own (``Simulation`` draws everything from the seed), so
the outcome of a seed does not depend on the worker that ran it, and the
failures come back in seed order whatever ``jobs`` is.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from sidecar.raft import Raft
from tests.sim.cluster import RaftFactory, Simulation
from tests.sim.leases import LeaseCode, calm
from tests.sim.scenarios import calm_settings
from tests.sim.swarm import SwarmSettings
from tests.sim.trace import describe


@dataclass(frozen=True, slots=True)
class SeedFailure:
    seed: int
    steps: int
    error: str
    report: str


def replay_command(seed: int, steps: int, leases: LeaseCode | None = None) -> str:
    mode = (
        ""
        if leases is None
        else f" --lease-mutant '{leases.mutant}'"
        if leases.mutant
        else " --leases"
    )
    return f"python -m tests.sim{mode} --seed {seed} --steps {steps}"


def simulation(
    seed: int, raft_factory: RaftFactory = Raft, leases: LeaseCode | None = None
) -> Simulation:
    """The simulation a seed runs: in lease mode, some seeds on a calm swarm (``leases.calm``)."""
    settings = (
        calm_settings(
            seed,
            p_propose=0.05,
            p_isolate_new_leader=0.3,
            p_heal=0.002,
            check_quorum=SwarmSettings.draw(seed).check_quorum,
        )
        if leases is not None and calm(seed)
        else None
    )
    return Simulation(seed, raft_factory=raft_factory, settings=settings, leases=leases)


def run_seed(
    seed: int, steps: int, raft_factory: RaftFactory = Raft, leases: LeaseCode | None = None
) -> SeedFailure | None:
    """Run one seed; ``leases`` (lease mode) adds workers and the lease code under test."""
    sim = simulation(seed, raft_factory, leases)
    try:
        sim.run(steps)
    except (AssertionError, Exception) as exc:  # any failure of the core is a finding
        lines = [
            f"seed {seed} FAILED after {steps} steps: {type(exc).__name__}: {exc}",
            f"replay: {replay_command(seed, steps, leases)}",
            f"settings: {sim.settings}",
            *([] if sim.leases is None else sim.leases.report()),
            "last events (time: event):",
            *(f"  {t:>8}: {describe(event)}" for t, event in sim.trace),
        ]
        if not isinstance(exc, AssertionError):
            lines.append("".join(traceback.format_exception(exc)))
        return SeedFailure(seed, steps, f"{type(exc).__name__}: {exc}", "\n".join(lines))
    return None


def run_campaign(
    seeds: range,
    steps: int,
    raft_factory: RaftFactory = Raft,
    stop_at_first: bool = False,
    *,
    leases: LeaseCode | None = None,
    jobs: int = 1,
    progress: Callable[[int, list[SeedFailure]], None] | None = None,
) -> tuple[list[SeedFailure], float]:
    """Run ``seeds``; returns the failures in seed order and the wall time.

    ``jobs`` > 1 runs seeds in that many worker processes. ``stop_at_first``
    stops at the lowest failing seed either way. ``progress(done, failures)``
    is called after each seed, in seed order.
    """
    failures: list[SeedFailure] = []
    started = time.perf_counter()
    one = partial(run_seed, steps=steps, raft_factory=raft_factory, leases=leases)
    if jobs <= 1:
        _collect(map(one, seeds), failures, stop_at_first, progress)
    else:
        # Small chunks keep both the load balanced and stop_at_first prompt;
        # imap hands the results back in seed order.
        chunk = max(1, min(50, len(seeds) // (jobs * 8)))
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            _collect(pool.imap(one, seeds, chunksize=chunk), failures, stop_at_first, progress)
    return failures, time.perf_counter() - started


def _collect(
    results: Iterable[SeedFailure | None],
    failures: list[SeedFailure],
    stop_at_first: bool,
    progress: Callable[[int, list[SeedFailure]], None] | None,
) -> None:
    for done, failure in enumerate(results, start=1):
        if failure is not None:
            failures.append(failure)
        if progress is not None:
            progress(done, failures)
        if failure is not None and stop_at_first:
            return
