"""Scaling a running cluster from 3 to 5 voters and back to 3 while a worker
holds an election through the client library (docs/membership.md).

Real processes: the two new nodes are started with a --peers that lists all
five (as the chart's new pods are), the three old ones keep their --peers of
three; scaling down kills the two new ones, as the StatefulSet controller
deletes the highest pods."""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

from sidecar.client import BlockingSidecarClient
from sidecar.membership import GONE_AFTER_S
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.integration.cluster import Cluster, Sidecar, eventually


def voters(node: Sidecar) -> set[str]:
    status = node.status()
    names = {p.id for p in status.peers if p.role == worker_pb2.PEER_ROLE_VOTER}
    if status.member_role == worker_pb2.PEER_ROLE_VOTER:
        names.add(status.node_id)
    return names


def test_three_to_five_to_three_voters_while_a_worker_holds(tmp_path: Path) -> None:
    # Five sidecars on two cores: a 250 ms election timeout (the harness's
    # default makes a loaded machine elect for nothing), and a lease of 10 s
    # that outlives a Raft election and two sidecars starting (Python and
    # gRPC imports take the cores for seconds): a 2 s lease was lost once on a
    # machine loaded by other work, with nothing wrong in the membership.
    cluster = Cluster(tmp_path, size=5, tick_ms=25)
    old, new = cluster.nodes[:3], cluster.nodes[3:]
    three = ",".join(f"{n.node_id}=127.0.0.1:{n.peer_port}" for n in old)
    cluster.peers_of = lambda node: three if node in old else cluster.peers
    for node in old:
        cluster.start(node)
    try:
        for node in old:
            eventually(node.answers, f"{node.node_id} to serve", seconds=60)
        leader = cluster.leader(old)
        home = next(n for n in old if n is not leader)
        with (
            BlockingSidecarClient(home.api) as client,
            client.leadership(
                "scaling", candidate_id="worker-a", ttl=timedelta(seconds=10)
            ) as lease,
        ):
            token = lease.fencing_token
            # Scale up: the new pods join as learners and are promoted.
            for node in new:
                cluster.start(node)
            eventually(
                lambda: voters(cluster.leader(old)) == {n.node_id for n in cluster.nodes} or None,
                "five voters",
                seconds=60,
            )
            lease.check()
            # Scale down: the highest pods are deleted (SIGTERM, as the StatefulSet
            # controller does: a leader among them hands over); the leader removes them once
            # they have been gone long enough, since its --peers never had them.
            for node in new:
                cluster.kill(node, signal.SIGTERM)
            eventually(
                lambda: voters(cluster.leader(old)) == {n.node_id for n in old} or None,
                "three voters again",
                seconds=GONE_AFTER_S + 60,
            )
            lease.check()  # the holder was never interrupted
            assert lease.fencing_token == token
            assert client.validate("scaling", token)
            # The three still commit: a new election's token is above the old one.
            with client.leadership("after", candidate_id="worker-b", ttl=timedelta(seconds=2)) as b:
                assert b.fencing_token > token
        removed = [
            server.split("~")[0]
            for change, server in cluster.leader(old).membership_changes()
            if change == "remove_node"
        ]
        assert sorted(removed) == ["s3", "s4"]
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()
