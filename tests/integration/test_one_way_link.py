"""A replica whose answers never reach the leader is not ready (issue 13 item 4).

With only what the follower sends cut, the follower keeps hearing
heartbeats, so it keeps its leader and its own commit and applied indices
agree, yet it commits nothing past what it acknowledged last: it serves
stale grants. Health compares its applied index with the commit index the
leader announces (``cluster_commit`` in every heartbeat) and reports it not
ready once it stays behind; the two others stay ready,
and the replica is ready again once the link heals.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from tests.integration import worker_api
from tests.integration.cluster import Cluster, Sidecar, eventually
from tests.integration.faultproxy import FaultNetwork, partitionable

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GRANTS = 200
"""More than the health's lag bound (64 entries) plus the leader's window of
unacknowledged appends (64), so the cut-off follower must fall behind."""
STEADY_CHECKS = 40
"""Consecutive NOT_SERVING answers (about 2 s) that count as "not ready for good"."""


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[Cluster, FaultNetwork]]:
    # 25 ms ticks (250 ms election timeout): on two loaded cores the harness's
    # 10 ms made Raft change leaders for nothing, and a new leader may catch
    # the follower up, which this test must not depend on.
    with partitionable(tmp_path, tick_ms=25) as (c, net):
        yield c, net


def _health(node: Sidecar, status: int) -> bool | None:
    return True if node.health() == status else None


def test_a_follower_whose_answers_are_lost_is_not_ready_until_the_link_heals(
    network: tuple[Cluster, FaultNetwork],
) -> None:
    cluster, net = network
    leader = cluster.leader()
    stale, other = [n for n in cluster.nodes if n is not leader]
    eventually(lambda: _health(stale, SERVING), "the follower ready before the cut")

    # Everything it sends is lost, to both peers, whichever of them leads.
    for peer in (leader, other):
        net.cut_one_way(stale.node_id, peer.node_id)
    for i in range(GRANTS):
        worker_api.campaign(leader.stub(), f"run-{i}", f"worker-{i}", ttl_ms=60_000)
    committed = cluster.leader([leader, other]).status().commit_index

    # Not ready for good while the cut lasts, although it keeps hearing the
    # leader's heartbeats and rejoins it after each attempt to campaign (its
    # pre-votes are refused, and a moment without a leader is NOT_SERVING
    # anyway): readiness follows the lag, so a long run of checks agrees.
    streak = [0]

    def steadily_not_ready() -> bool | None:
        streak[0] = streak[0] + 1 if stale.health() == NOT_SERVING else 0
        time.sleep(0.05)
        return True if streak[0] >= STEADY_CHECKS else None

    eventually(steadily_not_ready, "the cut-off follower steadily not ready", 60)
    assert stale.status().applied_index < committed - 64
    eventually(lambda: _health(leader, SERVING), "the leader ready")
    eventually(lambda: _health(other, SERVING), "the other follower ready")

    for peer in (leader, other):
        net.cut_one_way(stale.node_id, peer.node_id, cut=False)
    eventually(lambda: _health(stale, SERVING), "the follower ready after the heal", 30)
    assert stale.status().applied_index >= committed
