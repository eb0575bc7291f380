"""Peer links heal after a blackhole or a fast-failing link (issue 13, items 1 and 3).

Three real sidecars, each in its own network namespace (``tests/netlab.py``).
One node, a follower or the Raft leader, is cut off from both others for
``CUT_S`` seconds, either silently (blackhole: frames vanish, no RST) or
loudly (both link ends down: ENETUNREACH). After the heal the cluster must be
whole again within ``HEAL_BUDGET_S``: every node names the same leader, the
leader's ``raft_sidecar_peer_reachable`` is 1 for every peer, and a grant
made after the heal is applied on every node.

``CUT_S`` is 8 s by default: TCP retransmits an unacknowledged segment
after 0.2, 0.6, 1.4, 3.0, 6.2, 12.6 s, ... (the RTO doubles from its 200 ms
floor), so on a connection that nobody resets a heal at 8 s waits about 4.6 s
for the next retransmission, well beyond the budget. ``RAFT_SIDECAR_LONG=1``
makes it the issue's 30 s (the next retransmission comes 21 s after the heal,
and in practice the cluster was not whole after a minute).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests import netlab
from tests.integration import worker_api
from tests.integration.cluster import Cluster, eventually

CUT_S = 30.0 if os.environ.get("RAFT_SIDECAR_LONG") else 8.0
HEAL_BUDGET_S = 2.0

_unavailable = netlab.available()
pytestmark = pytest.mark.skipif(_unavailable is not None, reason=_unavailable or "")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Cluster, netlab.NetLab]]:
    """A fresh cluster per case: a case that fails leaves no broken links to the next."""
    yield from netlab.lab_cluster(tmp_path)


def whole_and_granting(cluster: Cluster, election: str, lease_key: str) -> str | None:
    """None while the cluster is not whole; else a line saying so. Whole: one
    leader named by all, reachable to it, and a grant of ``election`` made
    through it applied on every node."""
    leader = netlab.whole(cluster)
    if leader is None:
        return None
    try:
        granted = worker_api.campaign(
            leader.stub(), election, "w", ttl_ms=5000, timeout=0.5, lease_key=lease_key
        )
        for node in cluster.nodes:
            holder = node.stub().Leader(worker_pb2.LeaderRequest(election=election), timeout=1)
            if holder.holder.fencing_token != granted.fencing_token:
                return None
    except grpc.RpcError:
        return None
    return f"leader {leader.node_id}, token {granted.fencing_token} applied everywhere"


@pytest.mark.parametrize("mode", netlab.MODES)
@pytest.mark.parametrize("victim", ["follower", "leader"])
def test_cluster_is_whole_within_two_seconds_of_the_heal(
    lab: tuple[Cluster, netlab.NetLab], victim: str, mode: netlab.CutMode
) -> None:
    cluster, net = lab
    before = eventually(lambda: netlab.agreed_leader(cluster), "one agreed leader", seconds=60)
    target = before if victim == "leader" else next(n for n in cluster.nodes if n is not before)
    rest = [n for n in cluster.nodes if n is not target]

    net.isolate(target.node_id, mode)
    cut_at = time.monotonic()
    try:
        # The cut is seen: the majority has a leader that lost the target.
        def majority_lost_target() -> bool | None:
            leader = cluster.leader(among=rest)
            return True if netlab.peer_reachable(leader).get(target.node_id) == 0 else None

        eventually(majority_lost_target, f"the majority to lose {target.node_id}", seconds=30)
        time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))  # hold the cut
    finally:
        net.heal()
    healed_at = time.monotonic()

    election, key = f"heal-{victim}-{mode}", worker_api.new_key()
    outcome = eventually(
        lambda: whole_and_granting(cluster, election, key), "the cluster to be whole", seconds=60
    )
    took_s = time.monotonic() - healed_at
    print(f"{victim} {mode} cut {CUT_S:.0f} s: whole {took_s:.2f} s after the heal ({outcome})")
    assert took_s <= HEAL_BUDGET_S, (
        f"whole only {took_s:.2f} s after a {CUT_S:.0f} s {mode} of the {victim} "
        f"({outcome}); the goal is {HEAL_BUDGET_S} s"
    )
