"""Peer mutual TLS with per-node identities, certificate reloading, the
plaintext rules, and the probe-only health port, on real sidecar processes.

Certificates name ``<node>.raft-sidecar.raft-sidecar.internal`` (the default
cluster id); ``tests/integration/certs.py`` makes them. Reloads are awaited
through what a node exports (its metrics, its log), never by sleeping.
"""

from __future__ import annotations

import datetime
import json
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from sidecar.api.health import LIVENESS_SERVICE
from sidecar.pb.raftsidecar.peer.v1 import peer_pb2, peer_pb2_grpc
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc
from sidecar.transport.identity import identity_name
from tests.integration import worker_api
from tests.integration.certs import DEFAULT_CLUSTER, CertificateAuthority, TlsFiles
from tests.integration.cluster import Cluster, Sidecar, eventually, free_port


@dataclass
class TlsCluster:
    cluster: Cluster
    ca: CertificateAuthority
    files: dict[str, TlsFiles]
    """Each node's files, in a directory of its own (rewritten by rotations)."""


def per_node_files(ca: CertificateAuthority, root: Path, size: int = 3) -> dict[str, TlsFiles]:
    files = {}
    for i in range(size):
        node_id = f"s{i}"
        directory = root / "tls" / node_id
        directory.mkdir(parents=True)
        files[node_id] = TlsFiles(
            directory / "tls.crt", directory / "tls.key", directory / "ca.crt"
        )
        files[node_id].replace_with(ca.issue(node_id))
    return files


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[TlsCluster]:
    ca = CertificateAuthority(tmp_path / "pki")
    files = per_node_files(ca, tmp_path)
    cluster = Cluster(tmp_path, 3)
    cluster.extra_args = lambda node: files[node.node_id].flags()
    cluster.start_all()
    try:
        yield TlsCluster(cluster, ca, files)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()


@pytest.fixture
def tls_cluster(tls: TlsCluster) -> Cluster:
    return tls.cluster


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


def _deliver(channel: grpc.Channel, to_node: str, from_node: str = "intruder") -> None:
    stub = peer_pb2_grpc.RaftPeerServiceStub(channel)
    stub.Deliver(
        peer_pb2.DeliverRequest(cluster_id=DEFAULT_CLUSTER, from_node=from_node, to_node=to_node),
        timeout=3,
    )


def _channel(files: TlsFiles, node: Sidecar, ca: bytes | None = None) -> grpc.Channel:
    """A client channel with ``files`` that expects ``node``'s identity."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca or files.ca.read_bytes(),
        private_key=files.key.read_bytes(),
        certificate_chain=files.cert.read_bytes(),
    )
    override = ("grpc.ssl_target_name_override", identity_name(DEFAULT_CLUSTER, node.node_id))
    return grpc.secure_channel(f"127.0.0.1:{node.peer_port}", credentials, options=[override])


def test_the_peer_port_refuses_plaintext_and_certificates_that_do_not_name_the_sender(
    tls: TlsCluster, tmp_path: Path
) -> None:
    node = tls.cluster.nodes[0]
    address = f"127.0.0.1:{node.peer_port}"
    with grpc.insecure_channel(address) as plain, pytest.raises(grpc.RpcError) as refused:
        _deliver(plain, node.server_id())
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

    # A certificate from another CA: the server does not accept it as a client.
    foreign = CertificateAuthority(tmp_path / "foreign", "another CA").issue("s1")
    with (
        _channel(foreign, node, ca=tls.ca.pem) as channel,
        pytest.raises(grpc.RpcError) as e,
    ):
        _deliver(channel, node.server_id(), from_node="s1")
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE

    # Right CA, but for another node than the sender, or of another cluster.
    for files, from_node, words in (
        (tls.files["s1"], "s2", "names node 's1', not from_node 's2'"),
        (tls.ca.issue("intruder"), "s2", "names node 'intruder', not from_node 's2'"),
        (tls.ca.issue("s1", "another-cluster"), "s1", "names no node of cluster 'raft-sidecar'"),
    ):
        with _channel(files, node) as channel, pytest.raises(grpc.RpcError) as e:
            _deliver(channel, node.server_id(), from_node=from_node)
        assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED, e.value
        assert words in e.value.details()
    # A peer's own certificate passes (an empty batch is delivered as nothing).
    with _channel(tls.files["s1"], node) as channel:
        _deliver(channel, node.server_id(), from_node="s1")
    # The cluster is unharmed.
    assert tls.cluster.leader().status().role == worker_pb2.RAFT_ROLE_LEADER


def test_a_node_without_tls_cannot_join_a_tls_cluster(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    files = {f"s{i}": ca.issue(f"s{i}") for i in range(3)}
    cluster = Cluster(tmp_path, 3)
    # The three bootstrap the cluster with TLS (a new cluster forms only when
    # every initial voter answers); then s2 comes back speaking plaintext:
    # s0 and s1 are still a quorum and keep a leader, and s2 never learns
    # one (its messages and theirs are refused).
    plaintext: set[str] = set()
    cluster.extra_args = lambda node: (
        [] if node.node_id in plaintext else files[node.node_id].flags()
    )
    cluster.start_all()
    try:
        cluster.leader()
        outsider = cluster.nodes[2]
        cluster.kill(outsider, signal.SIGKILL)
        plaintext.add(outsider.node_id)
        cluster.start(outsider)
        eventually(outsider.answers, "s2 to serve its API in plaintext")
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


def test_the_health_port_serves_only_health(cluster: Cluster) -> None:
    cluster.leader()
    for node in cluster.nodes:
        eventually(
            lambda n=node: n.health() == health_pb2.HealthCheckResponse.SERVING or None,
            f"{node.node_id} SERVING on its health port",
        )
    node = cluster.nodes[0]
    assert node.health(LIVENESS_SERVICE) == health_pb2.HealthCheckResponse.SERVING
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
        result = serve_once(
            tmp_path,
            "--peer-listen", f"127.0.0.1:{free_port()}",
            "--health-listen", f"127.0.0.1:{busy}",
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot serve health on 127.0.0.1:{busy}" in result.stderr


def test_a_sidecar_without_quorum_is_not_ready_but_still_alive(cluster: Cluster) -> None:
    """Readiness follows the leader; liveness only the loop: restarting a
    sidecar that lost its quorum would not bring the quorum back."""
    survivor = cluster.nodes[0]
    for node in cluster.nodes[1:]:
        cluster.kill(node)
    eventually(
        lambda: survivor.health() == health_pb2.HealthCheckResponse.NOT_SERVING or None,
        "the survivor to stop being ready",
    )
    assert survivor.health(LIVENESS_SERVICE) == health_pb2.HealthCheckResponse.SERVING


# ---- reloading certificates on running sidecars ------------------------------------------


def metric(node: Sidecar, name: str) -> float | None:
    """The value of the unlabelled sample ``name`` on the node's /metrics."""
    for family in text_string_to_metric_families(node.metrics()):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


EXPIRY = "raft_sidecar_peer_certificate_expiry_timestamp_seconds"


def not_after(files: TlsFiles) -> float:
    return x509.load_pem_x509_certificate(files.cert.read_bytes()).not_valid_after_utc.timestamp()


def served_certificate(node: Sidecar, client: TlsFiles, ca: bytes) -> bytes:
    """DER of the certificate ``node``'s peer port shows a new connection that
    trusts only ``ca`` and expects the node's identity; raises ssl.SSLError."""
    context = ssl.create_default_context(cadata=ca.decode())
    context.load_cert_chain(client.cert, client.key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", node.peer_port), timeout=5) as raw,
        context.wrap_socket(
            raw, server_hostname=identity_name(DEFAULT_CLUSTER, node.node_id)
        ) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(files: TlsFiles) -> bytes:
    return ssl.PEM_cert_to_DER_cert(files.cert.read_text())


def logged(node: Sidecar, event: str, **fields: object) -> bool | None:
    """True once the node logged ``event`` with these fields (for ``eventually``)."""
    for line in node.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
            return True
    return None


def campaign(node: Sidecar, candidate: str) -> int:
    """A grant through ``node`` (an election per candidate: no one waits out a
    TTL). Retried while the answer is UNAVAILABLE (a Raft election under way),
    as a worker would; Campaign is idempotent per candidate."""
    request = worker_pb2.CampaignRequest(
        election=f"settlement-{candidate}", candidate_id=candidate, ttl_ms=5000
    )

    def attempt() -> int | None:
        try:
            return worker_api.campaign(
                node.stub(), request.election, candidate, ttl_ms=request.ttl_ms
            ).fencing_token
        except grpc.RpcError as e:
            if e.code() is grpc.StatusCode.UNAVAILABLE:
                return None
            raise

    token = eventually(attempt, f"a grant through {node.node_id}")
    assert token > 0
    return token


def reloaded(cluster: Cluster, generation: int) -> None:
    for node in cluster.nodes:
        eventually(
            lambda n=node: logged(n, "peer_tls_reloaded", generation=generation),
            f"{node.node_id} to take file set {generation}",
        )


def test_rotated_certificates_and_ca_are_picked_up_by_a_running_cluster(
    tls: TlsCluster, tmp_path: Path
) -> None:
    cluster = tls.cluster
    leader = cluster.leader()
    first = campaign(next(n for n in cluster.nodes if n is not leader), "w1")

    # A CA rotation, in the order docs/sidecar.md gives: every node trusts the
    # old and the new CA first, then gets a new key and certificate of the
    # new CA (written over the files in use), then trusts the new CA alone.
    new_ca = CertificateAuthority(tmp_path / "pki2", "new CA")
    for files in tls.files.values():
        files.ca.write_bytes(tls.ca.pem + new_ca.pem)
    reloaded(cluster, 2)
    later = datetime.timedelta(days=2)
    new = {n: new_ca.issue(n, valid_for=later) for n in tls.files}
    for node_id, files in tls.files.items():
        files.replace_with(new[node_id], ca_bundle=tls.ca.pem + new_ca.pem)
    for node in cluster.nodes:
        expected = not_after(new[node.node_id])
        eventually(lambda n=node, e=expected: metric(n, EXPIRY) == e or None, f"{node} reload")
    # Quorum kept, grants go on, forwarded through a follower's channels.
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    assert campaign(follower, "w2") > first
    # New connections see the new certificate, trusted through the new CA alone.
    for node in cluster.nodes:
        assert served_certificate(node, new["s0"], new_ca.pem) == der(new[node.node_id])

    # The old CA is retired: every node reloads again, and its clients dial anew.
    for files in tls.files.values():
        files.ca.write_bytes(new_ca.pem)
    reloaded(cluster, 4)
    with pytest.raises(ssl.SSLError):
        served_certificate(cluster.nodes[0], tls.ca.issue("s1", stem="old-s1"), tls.ca.pem)
    # The leader dies; the survivors elect one over connections made with the
    # new files alone, the restarted node joins with them, and grants go on.
    cluster.kill(leader)
    survivors = [n for n in cluster.nodes if n is not leader]
    new_leader = cluster.leader(among=survivors)
    other = next(n for n in survivors if n is not new_leader)
    assert campaign(other, "w3") > first
    cluster.start(leader)
    eventually(leader.answers, "the restarted node to serve")
    cluster.leader()  # every node, the restarted one too, follows one leader
    assert campaign(leader, "w4") > first


def test_a_broken_replacement_keeps_the_old_certificate_and_raises_the_metric(
    tls: TlsCluster,
) -> None:
    cluster = tls.cluster
    node = cluster.nodes[0]
    files = tls.files[node.node_id]
    before = der(files)
    expiry = metric(node, EXPIRY)
    assert expiry == not_after(files)
    assert metric(node, "raft_sidecar_peer_tls_files_refused") == 0
    good = files.key.read_bytes()
    files.key.write_bytes(tls.ca.issue("s0", stem="other-key").key.read_bytes())  # mismatch

    eventually(
        lambda: metric(node, "raft_sidecar_peer_tls_files_refused") == 1 or None,
        "the refused set to show in the metrics",
    )
    assert metric(node, "raft_sidecar_peer_tls_reload_failures_total") == 1
    assert metric(node, EXPIRY) == expiry
    assert logged(node, "peer_tls_reload_refused")
    # The old certificate still serves new connections, and the cluster grants.
    assert served_certificate(node, tls.files["s1"], tls.ca.pem) == before
    cluster.leader()
    campaign(node, "w1")
    # Putting the good key back clears the alarm.
    files.key.write_bytes(good)
    eventually(
        lambda: metric(node, "raft_sidecar_peer_tls_files_refused") == 0 or None,
        "the alarm to clear",
    )


# ---- what the sidecar refuses at start ------------------------------------------------------


def serve_once(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` for a one-node cluster that is expected to stop at start."""
    peer = f"127.0.0.1:{free_port()}"
    command = [
        sys.executable, "-m", "sidecar.cli", "serve",
        "--node-id", "s0", "--peers", f"s0={peer}",
        "--data-dir", str(tmp_path / "s0"),
        "--api-listen", f"127.0.0.1:{free_port()}",
        "--metrics-listen", f"127.0.0.1:{free_port()}",
        "--health-listen", "",
        *flags,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_plaintext_on_a_non_loopback_address_is_refused_at_start(tmp_path: Path) -> None:
    result = serve_once(tmp_path, "--peer-listen", f"0.0.0.0:{free_port()}")
    assert result.returncode == 2, result.stderr
    header, line = result.stderr.strip().splitlines()
    assert header == "raft-sidecar serve: invalid settings:"
    assert line.startswith("plaintext peer traffic must stay on loopback (--peer-listen=0.0.0.0:")
    assert "--insecure-plaintext-peers" in line


def test_a_certificate_for_another_node_is_refused_at_start(tmp_path: Path) -> None:
    files = CertificateAuthority(tmp_path / "pki").issue("s1")
    result = serve_once(tmp_path, "--peer-listen", f"127.0.0.1:{free_port()}", *files.flags())
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("raft-sidecar: peer TLS: --tls-cert-file=")
    assert "must name 's0.raft-sidecar.raft-sidecar.internal'" in line


def test_the_insecure_flag_is_stated_loudly_at_start(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 1)
    cluster.extra_args = lambda node: ["--insecure-plaintext-peers"]
    cluster.start_all()
    try:
        node = cluster.nodes[0]
        assert eventually(
            lambda: logged(node, "insecure_plaintext_peers", flag="--insecure-plaintext-peers"),
            "the warning",
        )
        record = next(
            json.loads(line)
            for line in node.log_path.read_text().splitlines()
            if '"insecure_plaintext_peers"' in line
        )
        assert record["level"] == "warning"
    finally:
        cluster.stop_all()
