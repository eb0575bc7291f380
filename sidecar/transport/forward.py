"""Forwarding a follower's writes and linearizable reads to the Raft leader.

A worker talks to the sidecar in its own pod, which is usually a follower.
The follower sends the encoded command to the leader (``Propose``); the
leader appends it and answers with (index, term) at once. The follower then
waits until *it* applies that index: the outcome is whatever its own state
machine computes there, the same on every replica. Reads work alike: the
leader confirms a read point (``ReadIndex``), the follower answers once it
has applied it.

Refusals come back as ``ForwardRefused`` (the target is not the leader; the
message names the leader it knows), ``ForwardInvalid`` (the leader found
the command invalid, e.g. a TTL outside its configured range) or
``ForwardUnavailable`` (the leader cannot be reached in time); the caller
retries or reports UNAVAILABLE.

Channels come from ``channels.PeerChannel``, like the replication stream's:
with peer TLS the leader must present a certificate naming it in this
cluster, and after a reload of the files the next call dials anew with them.
"""

from __future__ import annotations

import grpc  # type: ignore[import-untyped]

from sidecar.pb.raftsidecar.peer.v1 import peer_pb2, peer_pb2_grpc
from sidecar.raft.types import NodeId
from sidecar.serverid import node_name
from sidecar.transport.channels import PeerChannel
from sidecar.transport.config import TransportConfig
from sidecar.transport.errors import (
    AdminRefused,
    ForwardInvalid,
    ForwardRefused,
    TransportError,
)
from sidecar.transport.server import HelloAnswer
from sidecar.transport.tls import PeerTls


class ForwardUnavailable(TransportError):
    """The leader could not be reached, or did not answer in time."""


class Forwarder:
    def __init__(
        self,
        *,
        node_id: NodeId,
        cluster_id: str,
        peers: dict[NodeId, str],
        timeout_s: float = 5.0,
        tls: PeerTls | None = None,
        advertise_address: str = "",
        config: TransportConfig = TransportConfig(),
    ) -> None:
        self._node_id = node_id
        self.admitted_index = 0
        """Told to peers in ``hello`` (see HelloRequest.admitted_index)."""
        self.advertise_address = advertise_address
        """This node's own peer address, told to peers in ``hello``."""
        self._cluster_id = cluster_id
        self._peers = dict(peers)
        self._timeout_s = timeout_s
        self._config = config
        self._tls = tls
        self._links: dict[NodeId, PeerChannel] = {}

    def _stub(self, leader: NodeId) -> peer_pb2_grpc.RaftPeerServiceStub:
        """A stub to ``leader``'s address, by node name (``sidecar.serverid``);
        raises ForwardRefused for a node not in the peer map."""
        name = node_name(leader)
        link = self._links.get(name)
        if link is None:
            address = self._peers.get(name)
            if address is None:
                raise ForwardRefused(f"unknown leader {leader!r}")
            # The replication stream's options (channels.py): capped
            # reconnect backoff, keepalive, quick DNS re-resolution.
            link = self._links[name] = PeerChannel(
                peer_id=name,
                address=address,
                tls=self._tls,
                config=self._config,
                retire_grace_s=self._timeout_s,
            )
        return link.stub()

    async def propose(self, leader: NodeId, command: bytes) -> tuple[int, int]:
        """Have ``leader`` append ``command``; returns (index, term)."""
        request = peer_pb2.ProposeRequest(
            cluster_id=self._cluster_id, from_node=self._node_id, to_node=leader, command=command
        )
        try:
            response = await self._stub(leader).Propose(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as e:
            raise self._translate(leader, e) from e
        return int(response.index), int(response.term)

    async def read_index(self, leader: NodeId) -> int:
        """A read point confirmed by ``leader`` with a quorum."""
        request = peer_pb2.ReadIndexRequest(
            cluster_id=self._cluster_id, from_node=self._node_id, to_node=leader
        )
        try:
            response = await self._stub(leader).ReadIndex(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as e:
            raise self._translate(leader, e) from e
        return int(response.index)

    async def renew_lease(self, leader: NodeId, election: str, token: int) -> tuple[bool, int]:
        """Renew a lease on ``leader``'s clock: (still current, remaining ms)."""
        request = peer_pb2.RenewLeaseRequest(
            cluster_id=self._cluster_id,
            from_node=self._node_id,
            to_node=leader,
            election=election,
            fencing_token=token,
        )
        try:
            response = await self._stub(leader).RenewLease(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as e:
            raise self._translate(leader, e) from e
        return bool(response.current), int(response.remaining_ttl_ms)

    def add_peer(self, name: str, address: str) -> None:
        """Learn the address of a node the static peer map did not list."""
        if address:
            self._peers.setdefault(name, address)

    async def hello(self, peer: str, timeout_s: float = 1.0) -> HelloAnswer:
        """Ask the node named ``peer`` who it is (``Hello``). Raises ForwardUnavailable."""
        request = peer_pb2.HelloRequest(
            cluster_id=self._cluster_id,
            from_node=self._node_id,
            to_node=peer,
            advertise_address=self.advertise_address,
            admitted_index=self.admitted_index,
        )
        try:
            response = await self._stub(peer).Hello(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            self._reset_if_silent(peer, e)
            raise ForwardUnavailable(f"{peer}: {e.code().name}: {e.details()}") from e
        return HelloAnswer(
            server_id=response.server_id,
            decided=response.decided,
            initial_voters=tuple(response.initial_voters),
            leader_id=response.leader_id or None,
            admitted_index=int(response.admitted_index),
            caller_removed=response.caller_removed,
        )

    async def admin(
        self, leader: NodeId, request: peer_pb2.ForwardAdminRequest, timeout_s: float
    ) -> peer_pb2.ForwardAdminResponse:
        """Have ``leader`` serve an operator's request (addressing filled in here).

        Raises AdminRefused with the leader's status code (UNAVAILABLE when it
        cannot be reached).
        """
        request.cluster_id = self._cluster_id
        request.from_node = self._node_id
        request.to_node = leader
        try:
            response: peer_pb2.ForwardAdminResponse = await self._stub(leader).ForwardAdmin(
                request, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as e:
            self._reset_if_silent(leader, e)
            code = e.code().name if e.code() != grpc.StatusCode.CANCELLED else "UNAVAILABLE"
            raise AdminRefused(code, e.details() or f"leader {node_name(leader)}: {code}") from e
        except ForwardRefused as e:
            raise AdminRefused("UNAVAILABLE", str(e)) from e
        return response

    def _reset_if_silent(self, node: NodeId, e: grpc.aio.AioRpcError) -> None:
        """A call past its deadline may be stuck behind a silent connection
        (a blackholed link TCP has not given up on): dial anew next time."""
        link = self._links.get(node_name(node))
        if link is not None and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            link.reset()

    def _translate(self, leader: NodeId, e: grpc.aio.AioRpcError) -> TransportError:
        self._reset_if_silent(leader, e)
        if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
            return ForwardRefused(e.details() or f"{leader} refused")
        if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return ForwardInvalid(e.details() or f"{leader} refused the command as invalid")
        return ForwardUnavailable(f"leader {leader}: {e.code().name}: {e.details()}")

    async def close(self) -> None:
        for leader in sorted(self._links):
            await self._links[leader].close()
        self._links.clear()
