"""Peer mutual TLS and the probe-only health port, on real sidecar processes."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.api.health import LIVENESS_SERVICE
from sidecar.pb.raftsidecar.peer.v1 import peer_pb2, peer_pb2_grpc
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc
from tests.integration import worker_api
from tests.integration.certs import CertificateAuthority
from tests.integration.cluster import Cluster, Sidecar, eventually, free_port


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[Cluster]:
    ca = CertificateAuthority(tmp_path / "pki")
    files = {f"s{i}": ca.issue(f"s{i}") for i in range(3)}
    cluster = Cluster(tmp_path, 3)
    cluster.extra_args = lambda node: files[node.node_id].flags()
    cluster.start_all()
    try:
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()


def test_a_cluster_with_peer_mtls_elects_forwards_and_grants(tls_cluster: Cluster) -> None:
    leader = tls_cluster.leader()
    follower = next(n for n in tls_cluster.nodes if n is not leader)
    # Campaign on a follower is forwarded to the leader over the TLS peer port.
    token = worker_api.campaign(follower.stub(), "settlement-eur", "w1").token
    assert token.fencing_token > 0
    answer = follower.stub().ValidateToken(
        worker_pb2.ValidateTokenRequest(
            election="settlement-eur", fencing_token=token.fencing_token
        ),
        timeout=5,
    )
    assert answer.valid


def _deliver(channel: grpc.Channel, to_node: str) -> None:
    stub = peer_pb2_grpc.RaftPeerServiceStub(channel)
    stub.Deliver(
        peer_pb2.DeliverRequest(cluster_id="raft-sidecar", from_node="intruder", to_node=to_node),
        timeout=3,
    )


def test_the_peer_port_refuses_plaintext_and_foreign_certificates(
    tls_cluster: Cluster, tmp_path: Path
) -> None:
    node = tls_cluster.nodes[0]
    address = f"127.0.0.1:{node.peer_port}"
    with grpc.insecure_channel(address) as plain, pytest.raises(grpc.RpcError) as refused:
        _deliver(plain, node.node_id)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

    # A certificate from another CA: the server does not accept it as a client.
    foreign = CertificateAuthority(tmp_path / "foreign", "another CA").issue("intruder")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls_cluster_ca(tmp_path).read_bytes(),
        private_key=foreign.key.read_bytes(),
        certificate_chain=foreign.cert.read_bytes(),
    )
    with grpc.secure_channel(address, credentials) as channel, pytest.raises(grpc.RpcError) as e:
        _deliver(channel, node.node_id)
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    # The cluster is unharmed.
    assert tls_cluster.leader().status().role == worker_pb2.RAFT_ROLE_LEADER


def tls_cluster_ca(tmp_path: Path) -> Path:
    return tmp_path / "pki" / "ca.crt"


def test_a_node_without_tls_cannot_join_a_tls_cluster(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    files = {f"s{i}": ca.issue(f"s{i}") for i in range(3)}
    cluster = Cluster(tmp_path, 3)
    # s2 speaks plaintext: with s0 and s1 still a quorum, they elect a leader,
    # and s2 never learns one (its messages and theirs are refused).
    cluster.extra_args = lambda node: files[node.node_id].flags() if node.node_id != "s2" else []
    cluster.start_all()
    try:
        leader = cluster.leader(among=cluster.nodes[:2])
        assert leader.node_id in {"s0", "s1"}
        outsider = cluster.nodes[2]
        status = outsider.status()
        assert status.leader_id == ""
        assert status.role != worker_pb2.RAFT_ROLE_LEADER
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()


def health(node: Sidecar, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{node.health_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=3).status)


def test_the_health_port_serves_only_health(cluster: Cluster) -> None:
    cluster.leader()
    for node in cluster.nodes:
        eventually(
            lambda n=node: health(n) == health_pb2.HealthCheckResponse.SERVING or None,
            f"{node.node_id} SERVING on its health port",
        )
    node = cluster.nodes[0]
    assert health(node, LIVENESS_SERVICE) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(f"127.0.0.1:{node.health_port}") as channel:
        stub = worker_pb2_grpc.ElectionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.Status(worker_pb2.StatusRequest(), timeout=3)
    assert e.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_a_busy_health_port_stops_start_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        command = [
            sys.executable, "-m", "sidecar.cli", "serve",
            "--node-id", "a", "--peers", f"a=127.0.0.1:{free_port()}",
            "--data-dir", str(tmp_path / "a"),
            "--peer-listen", f"127.0.0.1:{free_port()}",
            "--api-listen", f"127.0.0.1:{free_port()}",
            "--metrics-listen", f"127.0.0.1:{free_port()}",
            "--health-listen", f"127.0.0.1:{busy}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert f"cannot serve health on 127.0.0.1:{busy}" in result.stderr


def test_a_sidecar_without_quorum_is_not_ready_but_still_alive(cluster: Cluster) -> None:
    """Readiness follows the leader; liveness only the loop: restarting a
    sidecar that lost its quorum would not bring the quorum back."""
    survivor = cluster.nodes[0]
    for node in cluster.nodes[1:]:
        cluster.kill(node)
    eventually(
        lambda: health(survivor) == health_pb2.HealthCheckResponse.NOT_SERVING or None,
        "the survivor to stop being ready",
    )
    assert health(survivor, LIVENESS_SERVICE) == health_pb2.HealthCheckResponse.SERVING
