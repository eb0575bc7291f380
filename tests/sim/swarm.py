"""Fault settings drawn from the seed (swarm testing).

Each seed runs under its own mix of faults instead of one fixed average mix:
some seeds hammer a cluster with partitions and no crashes, others with torn
writes and tiny append batches. A bug that hides under one mix shows under
another, and the seed alone reproduces both the mix and the run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TICK_UNITS = 10
"""Simulated time units per nominal tick; message delays are in the same units."""


@dataclass(frozen=True, slots=True)
class SwarmSettings:
    voters: int
    spares: int
    election_timeout_ticks: int
    heartbeat_ticks: int
    max_entries_per_append: int
    max_inflight_appends: int
    clock_skew: float
    """Each node's tick interval is scaled by a factor in [1 - skew, 1 + skew]."""
    delay_min: int
    delay_max: int
    loss: float
    duplication: float
    p_propose: float
    p_read: float
    p_crash: float
    p_torn_crash: float
    """Chance per persisted batch that the node dies half way through writing it."""
    p_restart: float
    p_partition: float
    p_heal: float
    p_compact: float
    p_reconfig: float
    eager_reconfig: bool
    """Try a membership change the moment a node becomes leader."""
    p_transfer: float

    @classmethod
    def draw(cls, seed: int) -> SwarmSettings:
        r = random.Random(f"swarm:{seed}")

        def maybe(p_on: float, lo: float, hi: float) -> float:
            return r.uniform(lo, hi) if r.random() < p_on else 0.0

        delay_min = r.choice([1, 1, 2, 5])
        return cls(
            voters=r.choice([3, 3, 5]),
            spares=r.choice([0, 1, 2]),
            election_timeout_ticks=r.choice([5, 8, 10, 15]),
            heartbeat_ticks=r.choice([1, 1, 2]),
            max_entries_per_append=r.choice([1, 2, 8, 64]),
            max_inflight_appends=r.choice([1, 2, 8, 64]),
            clock_skew=r.choice([0.0, 0.05, 0.2, 0.4]),
            delay_min=delay_min,
            delay_max=delay_min + r.choice([2, 10, 30, 80]),
            loss=maybe(0.6, 0.0, 0.2),
            duplication=maybe(0.5, 0.0, 0.1),
            p_propose=r.uniform(0.02, 0.2),
            p_read=maybe(0.6, 0.0, 0.05),
            p_crash=maybe(0.7, 0.0, 0.004),
            p_torn_crash=maybe(0.5, 0.0, 0.01),
            p_restart=r.uniform(0.002, 0.02),
            p_partition=maybe(0.7, 0.0, 0.004),
            p_heal=r.uniform(0.002, 0.01),
            p_compact=maybe(0.6, 0.0, 0.01),
            p_reconfig=maybe(0.5, 0.0, 0.01),
            eager_reconfig=r.random() < 0.3,
            p_transfer=maybe(0.5, 0.0, 0.004),
        )
