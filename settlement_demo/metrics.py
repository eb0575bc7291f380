"""The worker's Prometheus metrics (its own registry: one process, one worker)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

STEPS = ("raise_fence", "claim", "write_chunk", "settle")


class WorkerMetrics:
    def __init__(self, election: str) -> None:
        r = self.registry = CollectorRegistry()
        self.runs_started = Counter(
            "settlement_worker_runs_started",
            "Settlement runs this worker claimed (new or resumed from an earlier holder)",
            ["election"],
            registry=r,
        ).labels(election)
        self.runs_settled = Counter(
            "settlement_worker_runs_settled", "Runs this worker settled", ["election"], registry=r
        ).labels(election)
        steps = Counter(
            "settlement_worker_steps",
            "Fenced ledger steps committed by this worker",
            ["election", "step"],
            registry=r,
        )
        self.steps = {step: steps.labels(election, step) for step in STEPS}
        self.stale_token_rejections = Counter(
            "settlement_worker_stale_token_rejections",
            "Writes the ledger refused because a newer holder raised the fence",
            ["election"],
            registry=r,
        ).labels(election)
        self.fence_holder_conflicts = Counter(
            "settlement_worker_fence_holder_conflicts",
            "Writes the ledger refused because another holder had presented the same "
            "fencing token: the election service lost safety (never expected)",
            ["election"],
            registry=r,
        ).labels(election)
        self.is_leader = Gauge(
            "settlement_worker_is_leader",
            "1 while this worker holds the election's lease",
            ["election"],
            registry=r,
        ).labels(election)
        self.leadership_seconds = Counter(
            "settlement_worker_leadership_seconds",
            "Seconds this worker has held the lease, summed over its terms",
            ["election"],
            registry=r,
        ).labels(election)
