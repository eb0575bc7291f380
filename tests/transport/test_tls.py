"""Peer mTLS with identities, over real grpc.aio servers on 127.0.0.1.

Certificates name ``<node>.<cluster>.raft-sidecar.internal`` (see
sidecar/transport/identity.py); they are made per test with ``cryptography``.
Servers refuse calls whose client certificate does not name the request's
``from_node`` of their cluster; clients accept only the peer they dial.
Reloading is driven by calling ``PeerTls.poll`` directly: no timing.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from sidecar.pb.raftsidecar.peer.v1 import peer_pb2, peer_pb2_grpc
from sidecar.raft.messages import HeartbeatRequest
from sidecar.transport.codec import snapshot_header, to_wire
from sidecar.transport.errors import ForwardRefused
from sidecar.transport.forward import Forwarder, ForwardUnavailable
from sidecar.transport.identity import identity_name, naming_problems, parse_identity, refusal
from sidecar.transport.peer import Inbox, Transport, TransportConfig
from sidecar.transport.tls import PeerTls, TlsEvent, TlsLoaded, TlsMaterialError, TlsRefused
from tests.integration.certs import CertificateAuthority, TlsFiles, write_atomically
from tests.transport.test_peer import big_snapshot, eventually, read_seqs, run

CLUSTER = "settlement-test"
CONFIG = TransportConfig(backoff_multiplier_s=0.02, backoff_max_s=0.2)


# ---- identity names -------------------------------------------------------------


def test_identity_names_split_one_way_only() -> None:
    name = identity_name("payments.rs-raft-sidecar", "rs-raft-sidecar-0")
    assert name == "rs-raft-sidecar-0.payments.rs-raft-sidecar.raft-sidecar.internal"
    assert parse_identity(name) == ("payments.rs-raft-sidecar", "rs-raft-sidecar-0")
    assert parse_identity(name.upper()) == ("payments.rs-raft-sidecar", "rs-raft-sidecar-0")
    for other in (
        "*.settlement-test.raft-sidecar.internal",  # a wildcard names no node
        "s0.raft-sidecar.internal",  # no cluster
        "s0.settlement-test.example.com",
        "localhost",
    ):
        assert parse_identity(other) is None, other
    assert naming_problems("payments.eu", ["s0", "rs-raft-sidecar-12"]) == []
    problems = naming_problems("Pay_ments", ["s_0", "ok", "x" * 64])
    assert len(problems) == 3


def context_of(files: TlsFiles) -> dict[str, list[bytes]]:
    """The auth context gRPC gives a handler for a client with these files."""
    return {"x509_pem_cert": [files.cert.read_bytes()]}


def test_refusal_names_what_the_certificate_says(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    a = ca.issue("a", CLUSTER)
    assert refusal(context_of(a), CLUSTER, "a") == ""
    assert refusal(context_of(a), CLUSTER, "b") == (
        "the client certificate names node 'a', not from_node 'b'"
    )
    other = ca.issue("a", "other-cluster")
    assert refusal(context_of(other), CLUSTER, "a") == (
        "the client certificate names no node of cluster 'settlement-test' "
        "(it names cluster 'other-cluster')"
    )
    both = ca.issue(
        "a", CLUSTER, names=[identity_name(CLUSTER, "a"), identity_name(CLUSTER, "b")], stem="ab"
    )
    assert "names several nodes (a, b)" in refusal(context_of(both), CLUSTER, "a")
    wildcard = ca.issue("w", CLUSTER, names=[f"*.{CLUSTER}.raft-sidecar.internal"])
    assert "names no node" in refusal(context_of(wildcard), CLUSTER, "a")
    assert refusal({}, CLUSTER, "a") == "no client certificate"


# ---- loading and reloading the files -------------------------------------------------


@dataclass
class Pki:
    root: Path
    ca: CertificateAuthority
    files: dict[str, TlsFiles] = field(default_factory=dict)
    """Each node's files in use (its own directory, so they can be rewritten)."""

    def node(self, node_id: str, cluster_id: str = CLUSTER) -> TlsFiles:
        issued = self.ca.issue(node_id, cluster_id)
        directory = self.root / "nodes" / node_id
        directory.mkdir(parents=True, exist_ok=True)
        files = TlsFiles(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
        files.replace_with(issued)
        self.files[node_id] = files
        return files


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path, CertificateAuthority(tmp_path / "ca"))


def load(files: TlsFiles, node_id: str, events: list[TlsEvent] | None = None) -> PeerTls:
    return PeerTls(
        str(files.cert),
        str(files.key),
        str(files.ca),
        node_id=node_id,
        cluster_id=CLUSTER,
        on_event=None if events is None else events.append,
    )


def test_a_file_set_must_parse_match_be_current_chain_and_name_this_node(pki: Pki) -> None:
    good = pki.node("a")
    events: list[TlsEvent] = []
    tls = load(good, "a", events)
    leaf = x509.load_pem_x509_certificate(good.cert.read_bytes())
    assert events == [TlsLoaded(leaf.not_valid_after_utc.timestamp(), 1)]
    assert tls.target_name("b") == "b.settlement-test.raft-sidecar.internal"

    ca = pki.ca
    other_key = ca.issue("a", CLUSTER, stem="other")
    expired = ca.issue("a", CLUSTER, valid_for=datetime.timedelta(minutes=-1), stem="expired")
    foreign = CertificateAuthority(pki.root / "foreign", "foreign CA").issue("a", CLUSTER)
    cases: dict[str, tuple[TlsFiles, str]] = {
        "unparsable": (TlsFiles(good.key, good.key, good.ca), "no PEM certificate parses"),
        "not a key": (TlsFiles(good.cert, good.cert, good.ca), "not an unencrypted PEM private"),
        "another key": (TlsFiles(good.cert, other_key.key, good.ca), "does not match"),
        "expired": (expired, "the certificate expired at"),
        "foreign CA": (TlsFiles(foreign.cert, foreign.key, good.ca), "does not chain"),
        "another node": (ca.issue("b", CLUSTER), "must name 'a.settlement-test.raft-sidecar"),
        "another cluster": (ca.issue("a", "elsewhere"), "it names no node"),
        "absent": (TlsFiles(good.cert, good.key, pki.root / "absent"), "cannot read"),
    }
    for what, (files, words) in cases.items():
        with pytest.raises(TlsMaterialError) as err:
            load(files, "a")
        message = str(err.value)
        assert words in message, (what, message)
        assert "\n" not in message, what
        assert "PRIVATE KEY" not in message, what


def rotate(tls: PeerTls) -> None:
    """Two polls: a changed file set is taken when it reads the same twice."""
    tls.poll()
    tls.poll()


def test_a_changed_file_set_is_taken_after_it_reads_the_same_twice(pki: Pki) -> None:
    files = pki.node("a")
    events: list[TlsEvent] = []
    tls = load(files, "a", events)
    tls.poll()
    assert tls.generation == 1 and len(events) == 1  # nothing changed

    fresh = pki.ca.issue("a", CLUSTER, valid_for=datetime.timedelta(days=2), stem="fresh")
    write_atomically(files.cert, fresh.cert.read_bytes())  # the key is not there yet
    tls.poll()
    write_atomically(files.key, fresh.key.read_bytes())
    tls.poll()  # changed again since the last poll: wait
    assert tls.generation == 1
    tls.poll()
    assert tls.generation == 2
    assert tls.material.cert_chain == fresh.cert.read_bytes()
    assert events[-1] == TlsLoaded(tls.material.not_after_s, 2)
    assert [type(e) for e in events] == [TlsLoaded, TlsLoaded]


def test_a_broken_replacement_is_refused_once_and_the_old_set_stays(pki: Pki) -> None:
    files = pki.node("a")
    events: list[TlsEvent] = []
    tls = load(files, "a", events)
    in_use = tls.material
    good_cert = files.cert.read_bytes()
    write_atomically(files.cert, b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    for _ in range(5):
        tls.poll()
    assert tls.material is in_use and tls.generation == 1
    refused = [e for e in events if isinstance(e, TlsRefused)]
    assert len(refused) == 1  # one line per bad set, not one per poll
    assert "no PEM certificate parses" in refused[0].reason
    write_atomically(files.cert, good_cert)  # back to the set in use
    tls.poll()
    assert events[-1] == TlsLoaded(in_use.not_after_s, 1)
    files.key.unlink()
    rotate(tls)
    assert isinstance(events[-1], TlsRefused) and "cannot read" in events[-1].reason


# ---- servers refuse callers whose certificate does not name them ----------------------


def secure_channel(files: TlsFiles, port: int, node_id: str) -> Any:
    """A raw client channel that expects the server to be ``node_id`` of CLUSTER."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=files.ca.read_bytes(),
        private_key=files.key.read_bytes(),
        certificate_chain=files.cert.read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", identity_name(CLUSTER, node_id))]
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options)


@dataclass
class Server:
    transport: Transport
    inbox: Inbox
    forwarded: list[str]


async def start_server(tls: PeerTls, node_id: str = "b") -> Server:
    inbox = Inbox()
    forwarded: list[str] = []

    async def propose(command: bytes) -> tuple[int, int]:
        forwarded.append("propose")
        return 7, 1

    async def read_index() -> int:
        forwarded.append("read_index")
        return 7

    async def renew_lease(election: str, token: int) -> tuple[bool, int]:
        forwarded.append("renew_lease")
        return True, 1000

    transport = Transport(
        node_id=node_id,
        cluster_id=CLUSTER,
        listen_address="127.0.0.1:0",
        peers={},
        deliver=inbox.deliver,
        config=CONFIG,
        tls=tls,
        propose=propose,
        read_index=read_index,
        renew_lease=renew_lease,
    )
    await transport.start()
    return Server(transport, inbox, forwarded)


def node_a(peers: dict[str, str], tls: PeerTls) -> Transport:
    """The sending node ``a`` (not started), with mTLS."""
    return Transport(
        node_id="a",
        cluster_id=CLUSTER,
        listen_address="127.0.0.1:0",
        peers=peers,
        deliver=Inbox().deliver,
        config=CONFIG,
        tls=tls,
    )


def addressing(from_node: str) -> dict[str, str]:
    return {"cluster_id": CLUSTER, "from_node": from_node, "to_node": "b"}


async def call_deliver(stub: Any, from_node: str) -> None:
    await stub.Deliver(peer_pb2.DeliverRequest(**addressing(from_node)), timeout=5)


async def call_stream(stub: Any, from_node: str) -> None:
    msg = HeartbeatRequest(sender=from_node, recipient="b", term=1, leader_commit=0, read_seq=1)
    call = stub.DeliverStream()
    await call.write(
        peer_pb2.DeliverStreamRequest(
            **addressing(from_node), messages=[to_wire(msg)], sequence=1, ack_requested=True
        )
    )
    response = await call.read()  # raises the refusal
    assert response.sequence == 1
    await call.done_writing()
    assert await call.code() is grpc.StatusCode.OK


async def call_snapshot(stub: Any, from_node: str) -> None:
    header = snapshot_header(big_snapshot(10))

    async def requests() -> AsyncIterator[peer_pb2.InstallSnapshotRequest]:
        yield peer_pb2.InstallSnapshotRequest(**addressing(from_node), header=header)

    await stub.InstallSnapshot(requests(), timeout=5)


async def call_propose(stub: Any, from_node: str) -> None:
    await stub.Propose(peer_pb2.ProposeRequest(**addressing(from_node), command=b"x"), timeout=5)


async def call_read_index(stub: Any, from_node: str) -> None:
    await stub.ReadIndex(peer_pb2.ReadIndexRequest(**addressing(from_node)), timeout=5)


async def call_renew_lease(stub: Any, from_node: str) -> None:
    request = peer_pb2.RenewLeaseRequest(**addressing(from_node), election="e", fencing_token=1)
    await stub.RenewLease(request, timeout=5)


CALLS: dict[str, Callable[[Any, str], Awaitable[None]]] = {
    "Deliver": call_deliver,
    "DeliverStream": call_stream,
    "InstallSnapshot": call_snapshot,
    "Propose": call_propose,
    "ReadIndex": call_read_index,
    "RenewLease": call_renew_lease,
}


@pytest.mark.parametrize("rpc", sorted(CALLS))
def test_every_peer_rpc_refuses_a_certificate_that_does_not_name_its_sender(
    pki: Pki, rpc: str
) -> None:
    server_files = pki.node("b")
    a = pki.node("a")
    other_node = pki.ca.issue("c", CLUSTER)  # right CA, another node of this cluster
    other_cluster = pki.ca.issue("a", "another-cluster")  # right CA, right node id
    call = CALLS[rpc]

    async def main() -> None:
        server = await start_server(load(server_files, "b"))
        try:
            for files, from_node, words in (
                (other_node, "a", "names node 'c', not from_node 'a'"),
                (other_cluster, "a", "names no node of cluster 'settlement-test'"),
                (a, "c", "names node 'a', not from_node 'c'"),
            ):
                async with secure_channel(files, server.transport.port, "b") as channel:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call(peer_pb2_grpc.RaftPeerServiceStub(channel), from_node)
                assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED, err.value
                assert words in (err.value.details() or "")
            assert server.transport.servicer.delivered_messages == 0
            assert server.forwarded == []
            # The sender's own certificate passes (the InstallSnapshot stream
            # then ends short of data: accepted=False, which is not a refusal).
            async with secure_channel(a, server.transport.port, "b") as channel:
                await call(peer_pb2_grpc.RaftPeerServiceStub(channel), "a")
        finally:
            await server.transport.stop()

    run(main)


def test_a_certificate_of_another_ca_does_not_get_through_the_handshake(pki: Pki) -> None:
    server_files = pki.node("b")
    foreign = CertificateAuthority(pki.root / "foreign", "foreign CA").issue("a", CLUSTER)
    # It trusts the server's CA, so only the server's check of the client fails.
    trusting = TlsFiles(foreign.cert, foreign.key, server_files.ca)

    async def main() -> None:
        server = await start_server(load(server_files, "b"))
        try:
            async with secure_channel(trusting, server.transport.port, "b") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call_propose(peer_pb2_grpc.RaftPeerServiceStub(channel), "a")
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert server.forwarded == []
        finally:
            await server.transport.stop()

    run(main)


# ---- clients accept only the peer they dial --------------------------------------------


def test_a_client_accepts_only_the_peer_it_dials(pki: Pki) -> None:
    """Node a believes b lives where c answers (a stale address): neither the
    replication stream nor a forwarded call reaches c, and c delivers nothing."""
    a_tls = load(pki.node("a"), "a")
    c_files = pki.node("c")

    async def main() -> None:
        c = await start_server(load(c_files, "c"), node_id="c")
        wrong = f"127.0.0.1:{c.transport.port}"
        a = node_a({"b": wrong, "c": wrong}, a_tls)
        forwarder = Forwarder(
            node_id="a", cluster_id=CLUSTER, peers={"b": wrong, "c": wrong}, tls=a_tls
        )
        await a.start()
        try:
            a.send([_hb("b")])
            await eventually(lambda: a.clients["b"].failed_rpcs >= 2, "a's stream to b to fail")
            with pytest.raises(ForwardUnavailable, match="UNAVAILABLE"):
                await forwarder.propose("b", b"x")
            # The same address under its own name is fine, both ways.
            assert await forwarder.propose("c", b"x") == (7, 1)
            a.send([_hb("c")])
            await eventually(lambda: c.transport.servicer.delivered_messages == 1, "c to hear a")
            assert c.forwarded == ["propose"]
            with pytest.raises(ForwardRefused, match="unknown leader"):
                await forwarder.propose("d", b"x")
        finally:
            await forwarder.close()
            await a.stop()
            await c.transport.stop()

    run(main)


def _hb(recipient: str, seq: int = 1) -> HeartbeatRequest:
    return HeartbeatRequest(sender="a", recipient=recipient, term=1, leader_commit=0, read_seq=seq)


# ---- rotation on a running pair ---------------------------------------------------------


def served_certificate(port: int, node_id: str, client: TlsFiles, ca: bytes) -> bytes:
    """DER of the certificate the server at ``port`` presents to a new
    connection that trusts ``ca`` and expects ``node_id``; raises ssl.SSLError."""
    context = ssl.create_default_context(cadata=ca.decode())
    context.load_cert_chain(client.cert, client.key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=identity_name(CLUSTER, node_id)) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def der(files: TlsFiles) -> bytes:
    return ssl.PEM_cert_to_DER_cert(files.cert.read_text())


def test_rotated_files_serve_new_connections_and_the_stream_moves_over_cleanly(
    pki: Pki,
) -> None:
    """b takes a certificate of a new CA and trusts only that CA; established
    connections go on; then a takes its new files too and its next stream,
    opened with them, is accepted. Nothing is lost or counted as failed."""
    a_files, b_files = pki.node("a"), pki.node("b")
    a_tls, b_tls = load(a_files, "a"), load(b_files, "b")
    new_ca = CertificateAuthority(pki.root / "ca2", "new CA")
    a_new, b_new = new_ca.issue("a", CLUSTER), new_ca.issue("b", CLUSTER)

    async def main() -> None:
        b = await start_server(b_tls)
        a = node_a({"b": f"127.0.0.1:{b.transport.port}"}, a_tls)
        await a.start()
        received: list[int] = []

        def arrived(n: int) -> bool:
            received.extend(read_seqs(b.inbox.drain()))
            return len(received) >= n

        try:
            a.send([_hb("b", 1)])
            await eventually(lambda: arrived(1), "the first heartbeat")
            old_b = der(b_files)

            b_files.replace_with(b_new)  # new key, certificate and CA
            rotate(b_tls)
            assert b_tls.generation == 2
            port = b.transport.port
            assert await asyncio.to_thread(served_certificate, port, "b", a_new, new_ca.pem) == (
                der(b_new)
            )
            with pytest.raises(ssl.SSLError):  # the old client certificate is not trusted now
                await asyncio.to_thread(served_certificate, port, "b", a_files, pki.ca.pem)
            assert der(b_files) != old_b
            a.send([_hb("b", 2)])  # the established stream goes on
            await eventually(lambda: arrived(2), "a heartbeat on the old connection")

            failed = a.clients["b"].failed_rpcs
            a_files.replace_with(a_new)
            rotate(a_tls)
            assert a_tls.generation == 2
            for seq in range(3, 13):
                a.send([_hb("b", seq)])
            await eventually(lambda: arrived(12), "heartbeats over a stream with the new files")
            assert received == list(range(1, 13))
            client = a.clients["b"]
            assert client.failed_rpcs == failed and client.dropped == 0
            assert client._link is not None and not client._link.outdated
        finally:
            await a.stop()
            await b.transport.stop()

    run(main)


def test_a_broken_replacement_keeps_serving_the_old_certificate(pki: Pki) -> None:
    b_files, a_files = pki.node("b"), pki.node("a")
    events: list[TlsEvent] = []
    b_tls = load(b_files, "b", events)
    old = der(b_files)

    async def main() -> None:
        b = await start_server(b_tls)
        try:
            b_files.key.write_bytes(pki.ca.issue("b", CLUSTER, stem="b2").key.read_bytes())
            rotate(b_tls)
            assert isinstance(events[-1], TlsRefused) and "does not match" in events[-1].reason
            served = await asyncio.to_thread(
                served_certificate, b.transport.port, "b", a_files, pki.ca.pem
            )
            assert served == old
            async with secure_channel(a_files, b.transport.port, "b") as channel:
                await call_propose(peer_pb2_grpc.RaftPeerServiceStub(channel), "a")
        finally:
            await b.transport.stop()

    run(main)
