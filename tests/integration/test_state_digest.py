"""Real sidecars publish equal state digests for equal applied indices: what
the RaftSidecarReplicasDisagree alert compares stays quiet on a healthy
cluster (the digest itself, and a diverged replica's, are unit-tested in
tests/unit/test_metrics_state_digest.py)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sidecar.metrics import STATE_DIGEST_EVERY_ENTRIES
from tests.integration import worker_api
from tests.integration.cluster import Cluster, eventually


def published(text: str) -> tuple[float, float]:
    values = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in {"raft_sidecar_state_digest_index", "raft_sidecar_state_digest"}
    }
    return values["raft_sidecar_state_digest_index"], values["raft_sidecar_state_digest"]


def test_every_replica_publishes_the_same_digest_at_the_same_index(cluster: Cluster) -> None:
    leader = cluster.leader()
    stub = leader.stub()
    # One log entry per grant: enough to cross the first block of indices.
    for i in range(STATE_DIGEST_EVERY_ENTRIES + 6):
        worker_api.campaign(stub, f"digest-{i}", f"w{i % 3}", ttl_ms=30_000)

    def agreed() -> tuple[float, float] | None:
        views = {published(node.metrics()) for node in cluster.nodes}
        if len(views) != 1:
            return None  # a follower still applying, or diverged (then this times out)
        view = views.pop()
        return view if view[0] >= STATE_DIGEST_EVERY_ENTRIES else None

    index, digest = eventually(agreed, "every sidecar to publish one (index, digest)", seconds=30)
    assert digest > 0
    assert index % STATE_DIGEST_EVERY_ENTRIES < 8, "taken at the first command of its block"
