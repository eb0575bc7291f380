"""The gRPC peer transport of one node: ``Transport``, the façade the runtime uses.

Theory of operation
-------------------
Raft tolerates lost, duplicated and delayed messages but not blocked ones: a
runtime loop that waits on a dead peer stops ticking and the whole node stalls.
So nothing here ever blocks the caller, and every buffer has a bound; when a
bound is hit, messages are dropped and counted, and the core's own timers
(heartbeats, append retries, snapshot resends) repair the loss.

``Transport`` owns one inbound server (``server.py``) and one outbound client
per peer (``client.py``), all configured by one ``TransportConfig``
(``config.py``); it is the only object the runtime talks to. The names of
those modules are re-exported here, so ``from sidecar.transport.peer import
...`` keeps working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import structlog

from sidecar.raft.messages import Message
from sidecar.raft.types import NodeId
from sidecar.serverid import node_name
from sidecar.transport.client import PeerClient, PeerStats
from sidecar.transport.config import TransportConfig
from sidecar.transport.errors import TransportUsageError
from sidecar.transport.server import (
    DeliverCallback,
    HelloAnswer,
    HelloCallback,
    Inbox,
    PeerServer,
    PeerServicer,
    ProposeCallback,
    ReadIndexCallback,
    RenewLeaseCallback,
)
from sidecar.transport.tls import PeerTls

__all__ = [
    "DeliverCallback",
    "HelloAnswer",
    "HelloCallback",
    "Inbox",
    "PeerClient",
    "PeerServer",
    "PeerServicer",
    "PeerStats",
    "Transport",
    "TransportConfig",
]

_log = structlog.get_logger("sidecar.transport")


class Transport:
    """The peer transport of one node: a server and a client per static peer.

    ``peers`` maps node *names* to ``host:port`` addresses; an entry for this
    node itself is ignored. ``node_id`` is this node's Raft server id, and
    messages are routed by the name of their recipient's server id
    (``sidecar.serverid``), so a peer that comes back as a new incarnation is
    reached at the same address. ``deliver`` receives every decoded inbound batch.
    With ``tls`` both directions use peer mTLS and check identities: the
    server refuses calls whose certificate does not name their ``from_node``
    of this cluster, each client accepts only its peer's certificate.
    """

    def __init__(
        self,
        *,
        node_id: NodeId,
        cluster_id: str,
        listen_address: str,
        peers: Mapping[NodeId, str],
        deliver: DeliverCallback,
        config: TransportConfig = TransportConfig(),
        tls: PeerTls | None = None,
        current_term: Callable[[], int] | None = None,
        propose: ProposeCallback | None = None,
        read_index: ReadIndexCallback | None = None,
        renew_lease: RenewLeaseCallback | None = None,
        hello: HelloCallback | None = None,
        on_peer_unreachable: Callable[[NodeId], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.servicer = PeerServicer(
            node_id=node_id,
            cluster_id=cluster_id,
            deliver=deliver,
            config=config,
            current_term=current_term,
            propose=propose,
            read_index=read_index,
            renew_lease=renew_lease,
            hello=hello,
            require_peer_identity=tls is not None,
        )
        self.server = PeerServer(
            self.servicer,
            listen_address,
            config=config,
            server_credentials=tls.server_credentials() if tls is not None else None,
        )
        self._cluster_id = cluster_id
        self._config = config
        self._tls = tls
        self._on_peer_unreachable = on_peer_unreachable
        self.clients: dict[NodeId, PeerClient] = {}
        for peer_id in sorted(peers):
            if peer_id != node_name(node_id):
                self._new_client(peer_id, peers[peer_id])
        self.unroutable = 0
        """Messages for a node that is not in the peer map (dropped)."""
        self._started = False

    @property
    def port(self) -> int:
        """The bound server port (0 before ``start``)."""
        return self.server.port

    async def start(self) -> None:
        """Start serving and sending. Raises ``TransportUsageError`` if already started."""
        if self._started:
            raise TransportUsageError("Transport already started")
        self._started = True
        await self.server.start()
        for peer_id in sorted(self.clients):
            await self.clients[peer_id].start()

    def _new_client(self, name: str, address: str) -> PeerClient:
        client = self.clients[name] = PeerClient(
            node_id=self.node_id,
            peer_id=name,
            address=address,
            cluster_id=self._cluster_id,
            config=self._config,
            tls=self._tls,
        )
        client.on_unreachable = self._on_peer_unreachable
        return client

    async def add_peer(self, name: str, address: str) -> bool:
        """Start sending to the node ``name`` at ``address`` (a node the
        static peer map did not list, e.g. after a scale-up). Returns False
        when ``name`` is this node or already known (its address is kept)."""
        if name == node_name(self.node_id) or name in self.clients or not address:
            return False
        client = self._new_client(name, address)
        if self._started:
            await client.start()
        _log.info("peer_added", node_id=self.node_id, peer=name, address=address)
        return True

    async def stop(self, grace_s: float | None = 0.5) -> None:
        """Stop every client task and the server; no task is left behind."""
        for peer_id in sorted(self.clients):
            await self.clients[peer_id].stop()
        await self.server.stop(grace_s)

    def send(self, messages: Iterable[Message]) -> None:
        """Route each message to its recipient's client; never blocks.

        Messages for unknown nodes are dropped and counted in ``unroutable``.
        """
        for msg in messages:
            client = self.clients.get(node_name(msg.recipient))
            if client is None:
                self.unroutable += 1
                _log.debug("unroutable_message", node_id=self.node_id, recipient=msg.recipient)
                continue
            client.send(msg)

    def stats(self) -> dict[NodeId, PeerStats]:
        """Per-peer counters and last Deliver RTT, sorted by node id."""
        return {peer_id: self.clients[peer_id].stats() for peer_id in sorted(self.clients)}
