"""A sidecar whose data directory is lost comes back as a new Raft server:
it never votes or counts until the leader has replaced its old incarnation
through the log, and committed grants never disappear (docs/membership.md).

Real processes on loopback, killed with SIGKILL, directories really wiped."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.integration import worker_api
from tests.integration.cluster import Cluster, Sidecar, eventually

ELECTION = "settlement-eur"


def campaign(node: Sidecar, candidate: str, election: str = ELECTION, timeout: float = 10) -> Any:
    return worker_api.campaign(
        node.stub(), election, candidate, ttl_ms=60_000, timeout=timeout
    ).token


def holder(node: Sidecar) -> int | None:
    try:
        response = node.stub().Leader(worker_pb2.LeaderRequest(election=ELECTION), timeout=2)
    except grpc.RpcError:
        return None
    return int(response.holder.fencing_token) or None


def wipe_and_restart(cluster: Cluster, node: Sidecar) -> str:
    cluster.kill(node, signal.SIGKILL)
    old = node.incarnation()
    shutil.rmtree(node.data_dir)
    cluster.start(node)
    eventually(node.answers, f"{node.node_id} to serve again")
    assert node.incarnation() != old, "a wiped directory is a new incarnation"
    return old


def test_a_follower_that_lost_its_disk_is_replaced_and_counts_again(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.start_all()
    try:
        leader = cluster.leader()
        token = campaign(leader, "worker-a").fencing_token
        wiped, other = [n for n in cluster.nodes if n is not leader]
        old = wipe_and_restart(cluster, wiped)
        new = wiped.incarnation()

        # It catches up on the grants it forgot, through the log.
        eventually(lambda: holder(wiped) == token or None, "the wiped node to learn the grant")
        # The leader replaced it one change at a time: old out, new in as a
        # learner, then promoted once caught up.
        name = wiped.node_id
        expected = [
            ("remove_node", f"{name}~{old}"),
            ("add_learner", f"{name}~{new}"),
            ("promote_learner", f"{name}~{new}"),
        ]
        eventually(
            lambda: leader.membership_changes() == expected or None,
            "the leader to replace the old incarnation",
        )
        # The new incarnation is a voter: with the other follower gone, the
        # leader and it still commit.
        cluster.kill(other, signal.SIGKILL)
        second = eventually(
            lambda: _try(lambda: campaign(cluster.leader([leader, wiped]), "worker-b", "usd")),
            "a grant with the new incarnation's vote",
            seconds=30,
        )
        assert second.fencing_token > token
        assert holder(wiped) == token, "the old grant is intact"
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()


def test_a_wiped_node_never_makes_up_a_quorum(tmp_path: Path) -> None:
    """The grant is committed on the leader and one follower; the other
    follower missed it. Both nodes that hold it go down and one of them
    comes back wiped. The follower that missed the grant and the wiped node
    are two of three, but the wiped one has forgotten what it promised: it
    must not help elect a leader whose log lacks the grant (which would then
    hand the same token to another worker). Nothing may happen until a node
    that holds the log is back; then the grant is still there."""
    cluster = Cluster(tmp_path)
    cluster.start_all()
    try:
        leader = cluster.leader()
        behind, wiped = [n for n in cluster.nodes if n is not leader]
        cluster.kill(behind, signal.SIGKILL)
        grant = eventually(
            lambda: _try(lambda: campaign(leader, "worker-a")), "a grant by leader and one follower"
        )
        cluster.kill(leader, signal.SIGKILL)
        cluster.kill(wiped, signal.SIGKILL)
        old = wiped.incarnation()
        shutil.rmtree(wiped.data_dir)
        for node in (behind, wiped):
            cluster.start(node)
            eventually(node.answers, f"{node.node_id} to serve")
        assert wiped.incarnation() != old

        refused = _try(lambda: campaign(behind, "worker-b", timeout=5))
        assert refused is None, f"granted {refused} without a quorum that holds the log"
        assert holder(behind) is None and holder(wiped) is None, "nobody knows the grant yet"
        status = wiped.status()
        assert status.member_role == worker_pb2.PEER_ROLE_UNSPECIFIED, "not admitted"
        assert wiped.health() == health_pb2.HealthCheckResponse.NOT_SERVING

        cluster.start(leader)
        eventually(leader.answers, "the node that holds the log to serve again")
        for node in cluster.nodes:
            eventually(
                lambda n=node: holder(n) == grant.fencing_token or None,
                f"{node.node_id} to learn the grant",
                seconds=30,
            )
        second = eventually(
            lambda: _try(lambda: campaign(cluster.leader(), "worker-b", "usd")),
            "a grant once a real quorum is back",
            seconds=30,
        )
        assert second.fencing_token > grant.fencing_token, "tokens never go backwards"
        # Admitted and promoted, the new incarnation is ready.
        eventually(
            lambda: wiped.status().member_role == worker_pb2.PEER_ROLE_VOTER or None,
            "the wiped node to be a voter again",
            seconds=30,
        )
        eventually(
            lambda: wiped.health() == health_pb2.HealthCheckResponse.SERVING or None,
            "the wiped node to be ready",
        )
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()


def test_two_followers_lose_their_disks_in_turn_then_the_leader_crashes(tmp_path: Path) -> None:
    """Each follower in turn comes back empty and is replaced (old incarnation
    out, new in, promoted); then the leader dies. The two replaced nodes are
    now the only ones up: they must hold the grant committed before any of
    it, elect a leader between them, and give the next worker a higher token.
    The second disk is lost only once the first node counts again, as a
    voter under its new incarnation that holds the log."""
    cluster = Cluster(tmp_path)
    cluster.start_all()
    try:
        leader = cluster.leader()
        token = campaign(leader, "worker-a").fencing_token
        first, second = [n for n in cluster.nodes if n is not leader]
        expected = []
        for node in (first, second):
            old = wipe_and_restart(cluster, node)
            new = node.incarnation()
            expected += [
                ("remove_node", f"{node.node_id}~{old}"),
                ("add_learner", f"{node.node_id}~{new}"),
                ("promote_learner", f"{node.node_id}~{new}"),
            ]
            # One replacement at a time: the second disk is lost only once
            # the first node counts again.
            eventually(
                lambda e=list(expected): leader.membership_changes() == e or None,
                f"the leader to replace {node.node_id}'s old incarnation",
                seconds=60,
            )
            eventually(lambda n=node: holder(n) == token or None, f"{node.node_id} to hold it")
        cluster.kill(leader, signal.SIGKILL)

        survivors = [first, second]
        new_leader = cluster.leader(survivors)
        assert new_leader in survivors
        for node in survivors:
            assert holder(node) == token, "the grant survived both replacements"
        later = eventually(
            lambda: _try(lambda: campaign(cluster.leader(survivors), "worker-b", "usd")),
            "a grant from the two replaced nodes",
            seconds=30,
        )
        assert later.fencing_token > token, "tokens never go backwards"
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()


def _try(call: Any) -> Any:
    try:
        return call()
    except grpc.RpcError:
        return None
