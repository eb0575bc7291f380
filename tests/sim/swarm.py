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
    pre_vote: bool
    check_quorum: bool
    """Both are on in production; turning them off in some seeds makes split
    votes and deposed-but-unaware leaders common, which other bugs hide behind."""
    max_entries_per_append: int
    max_inflight_appends: int
    clock_skew: float
    """Each node's tick interval is scaled by a factor in [1 - skew, 1 + skew]."""
    delay_min: int
    delay_max: int
    loss: float
    long_delay: float
    """Share of messages held back for one to five election timeouts (retransmits, stalls)."""
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
    p_kill_new_leader: float
    """Chance that a node which just became leader is killed shortly after (nemesis)."""
    p_isolate_new_leader: float
    """Chance that a node which just became leader is cut off shortly after (nemesis)."""
    p_disk_loss: float
    """Chance per step that a node loses its disk and restarts empty (a
    re-created volume). Drawn last, so adding it left every other setting of
    every seed as it was."""

    @classmethod
    def draw(cls, seed: int) -> SwarmSettings:
        r = random.Random(f"swarm:{seed}")

        def maybe(p_on: float, lo: float, hi: float) -> float:
            return r.uniform(lo, hi) if r.random() < p_on else 0.0

        delay_min = r.choice([1, 1, 2, 5])
        election_timeout_ticks = r.choice([5, 8, 10, 15])
        # The spread of delays relative to the election timeout decides how
        # often replies arrive after their sender moved on to a new term.
        spread = r.choice([0.05, 0.2, 0.5, 1.0])
        return cls(
            voters=r.choice([3, 3, 4, 5]),
            spares=r.choice([0, 1, 2]),
            election_timeout_ticks=election_timeout_ticks,
            heartbeat_ticks=r.choice([1, 1, 2]),
            pre_vote=r.random() < 0.6,
            check_quorum=r.random() < 0.6,
            max_entries_per_append=r.choice([1, 2, 8, 64]),
            max_inflight_appends=r.choice([1, 2, 8, 64]),
            clock_skew=r.choice([0.0, 0.05, 0.2, 0.4]),
            delay_min=delay_min,
            delay_max=delay_min + max(2, round(spread * election_timeout_ticks * TICK_UNITS)),
            loss=maybe(0.6, 0.0, 0.2),
            long_delay=maybe(0.5, 0.005, 0.05),
            duplication=maybe(0.5, 0.0, 0.1),
            p_propose=r.uniform(0.02, 0.2),
            p_read=maybe(0.6, 0.0, 0.05),
            p_crash=maybe(0.7, 0.0, 0.01),
            p_torn_crash=maybe(0.5, 0.0, 0.01),
            p_restart=r.uniform(0.005, 0.03),
            p_partition=maybe(0.7, 0.0, 0.01),
            p_heal=r.uniform(0.005, 0.02),
            p_compact=maybe(0.6, 0.0, 0.01),
            p_reconfig=maybe(0.5, 0.0, 0.02),
            eager_reconfig=r.random() < 0.4,
            p_transfer=maybe(0.5, 0.0, 0.004),
            p_kill_new_leader=maybe(0.7, 0.2, 0.9),
            p_isolate_new_leader=maybe(0.6, 0.1, 0.7),
            p_disk_loss=maybe(0.5, 0.0005, 0.003),
        )
