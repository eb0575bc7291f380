"""Run many seeds and report failures with a replay command and a trace."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

from sidecar.raft import Raft
from tests.sim.cluster import RaftFactory, Simulation
from tests.sim.trace import describe


@dataclass(frozen=True, slots=True)
class SeedFailure:
    seed: int
    steps: int
    error: str
    report: str


def run_seed(seed: int, steps: int, raft_factory: RaftFactory = Raft) -> SeedFailure | None:
    sim = Simulation(seed, raft_factory=raft_factory)
    try:
        sim.run(steps)
    except (AssertionError, Exception) as exc:  # any failure of the core is a finding
        lines = [
            f"seed {seed} FAILED after {steps} steps: {type(exc).__name__}: {exc}",
            f"replay: python -m tests.sim --seed {seed} --steps {steps}",
            f"settings: {sim.settings}",
            "last events (time: event):",
            *(f"  {t:>8}: {describe(event)}" for t, event in sim.trace),
        ]
        if not isinstance(exc, AssertionError):
            lines.append("".join(traceback.format_exception(exc)))
        return SeedFailure(seed, steps, f"{type(exc).__name__}: {exc}", "\n".join(lines))
    return None


def run_campaign(
    seeds: range, steps: int, raft_factory: RaftFactory = Raft, stop_at_first: bool = False
) -> tuple[list[SeedFailure], float]:
    failures: list[SeedFailure] = []
    started = time.perf_counter()
    for seed in seeds:
        failure = run_seed(seed, steps, raft_factory)
        if failure is not None:
            failures.append(failure)
            if stop_at_first:
                break
    return failures, time.perf_counter() - started
