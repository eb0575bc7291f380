"""A running sidecar exports the metrics operators rely on, with true values."""

from __future__ import annotations

import re

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration import worker_api
from tests.integration.cluster import Cluster, eventually


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_reflect_raft_and_elections(cluster: Cluster) -> None:
    leader = cluster.leader()
    stub = leader.stub()
    granted = worker_api.campaign(stub, "settlement-eur", "w1")
    token = granted.token
    with pytest.raises(grpc.RpcError):  # an INVALID_ARGUMENT, counted by code
        worker_api.campaign(stub, "", "w1")

    def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        got = samples(leader.metrics())
        key = ("raft_sidecar_fencing_token", (("election", "settlement-eur"),))
        return got if got.get(key) == token.fencing_token else None

    got = eventually(scraped, "the sampler to publish the token")
    assert got[("raft_sidecar_raft_role", (("role", "leader"),))] == 1
    assert got[("raft_sidecar_raft_has_leader", ())] == 1
    assert got[("raft_sidecar_raft_term", ())] >= 1
    assert got[("raft_sidecar_raft_applied_index", ())] >= token.fencing_token
    assert got[("raft_sidecar_grants_total", (("election", "settlement-eur"),))] == 1
    # The election's other counters exist at 0 from its first command on, so
    # that increase() in the alerts sees their first event.
    for counter in ("expirations", "revocations", "resignations"):
        assert got[(f"raft_sidecar_{counter}_total", (("election", "settlement-eur"),))] == 0
    holder = (
        "raft_sidecar_election_holder_info",
        (("election", "settlement-eur"), ("holder", "w1")),
    )
    assert got[holder] == 1
    # Campaign is a server stream: counted when it opens, as streams are.
    campaigns = ("raft_sidecar_rpc_requests_total", (("code", "STREAM"), ("method", "Campaign")))
    assert got[campaigns] == 2
    # The lease key never shows in the metrics.
    assert granted.lease_key not in leader.metrics()
    assert got[("raft_sidecar_fsync_duration_seconds_count", ())] > 0
    assert got[("raft_sidecar_proposal_duration_seconds_count", ())] >= 1
    peers = {labels for name, labels in got if name == "raft_sidecar_peer_reachable"}
    assert len(peers) == 2

    follower = next(n for n in cluster.nodes if n is not leader)

    def follower_role() -> str | None:
        # A follower that missed heartbeats on a loaded machine is briefly a
        # pre-candidate (PreVote) until the leader's next heartbeat.
        text = follower.metrics()
        return text if re.search(r'raft_sidecar_raft_role\{role="follower"\} 1\.0', text) else None

    eventually(follower_role, "the follower to report the follower role")
