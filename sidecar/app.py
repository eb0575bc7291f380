"""``raft-sidecar serve``: storage, core, transport, state machine and API, wired.

Process life: start everything, then wait for SIGTERM/SIGINT or for the node
to stop by itself (a storage error). On SIGTERM the sidecar reports
NOT_SERVING, revokes the grants its own workers hold (they go away with the
pod, so the next candidates are granted at once), and, if it is the Raft
leader, hands leadership to the most caught-up peer, so a rolling restart
costs one election round trip, not an election timeout. The exit status is 0 after a
clean shutdown and 1 when the node stopped on an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any

import structlog

from sidecar import logging as sidecar_logging
from sidecar.admin.backup import live_backup
from sidecar.admin.operator import MembershipAdmin
from sidecar.admin.server import AdminSocketError, admin_server, remove_stale_socket
from sidecar.api.health import (
    entering,
    health_servicer,
    register_health_and_reflection,
    serve_health_only,
)
from sidecar.api.servers import api_server, probe_server
from sidecar.api.service import ElectionService
from sidecar.config import SidecarConfig
from sidecar.leases import LeaseKeeper
from sidecar.machine import ElectionsMachine
from sidecar.membership import MembershipManager, decide_entry
from sidecar.metrics import RpcMetricsInterceptor, SidecarMetrics, TimedStorage, cancel_quietly
from sidecar.node import InvalidProposal, NodeError, NodeSettings, RaftNode
from sidecar.pb.raftsidecar.peer.v1 import peer_pb2
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2_grpc
from sidecar.raft import Membership, Message, NotLeader, RaftConfig, Role
from sidecar.serverid import node_name
from sidecar.storage.disk import DiskStorage
from sidecar.storage.errors import StorageError
from sidecar.storage.identity import Identity, IdentityMismatch, IdentityStore
from sidecar.transport.errors import ForwardInvalid, ForwardRefused, TransportUsageError
from sidecar.transport.forward import Forwarder
from sidecar.transport.peer import HelloAnswer, Transport, TransportConfig
from sidecar.transport.tls import PeerTls, TlsMaterialError

_log = structlog.get_logger("sidecar.app")

TRANSFER_WAIT_SECONDS = 2.0


async def serve(config: SidecarConfig) -> int:
    machine = ElectionsMachine(ttl_min_ms=config.ttl_min_ms, ttl_max_ms=config.ttl_max_ms)
    metrics = SidecarMetrics(peer_tls=config.tls is not None)
    machine.listeners.append(metrics.on_apply)
    # machine.state, read at each call: a snapshot install replaces it.
    machine.listeners.append(lambda result: metrics.on_applied(result.index, machine.state))
    machine.skip_listeners.append(metrics.on_skip)
    tls: PeerTls | None = None
    if config.tls is not None:
        try:
            tls = PeerTls(
                config.tls.cert_file,
                config.tls.key_file,
                config.tls.ca_file,
                node_id=config.node_id,
                cluster_id=config.cluster_id,
                on_event=metrics.on_peer_tls,
            )
        except TlsMaterialError as exc:
            print(f"raft-sidecar: peer TLS: {exc}", file=sys.stderr)
            return 2
    elif config.insecure_plaintext_peers:
        _log.warning(
            "insecure_plaintext_peers",
            flag="--insecure-plaintext-peers",
            peer_listen=config.peer_listen,
            message="peer traffic is plaintext and unauthenticated: anyone who reaches "
            "the peer port can speak Raft to this node",
        )
    store = IdentityStore(config.data_dir)
    try:
        identity, created = store.load_or_create(cluster=config.cluster_id, node=config.node_id)
    except IdentityMismatch as exc:
        print(f"raft-sidecar: refusing the data directory: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        _log.critical("storage_unusable", error=str(exc))
        print(f"raft-sidecar: cannot start: {exc}", file=sys.stderr)
        return 1
    me = identity.server_id
    if created:
        _log.warning(
            "new_incarnation",
            server_id=me,
            hint="a new data directory: this node joins as a new Raft server (docs/membership.md)",
        )
    handlers = _PeerHandlers(identity)
    others = {k: v for k, v in config.peers.items() if k != config.node_id}
    # Reconnect backoff, stall deadline and keepalive follow the Raft timings.
    links = TransportConfig.for_raft(config.tick_ms * config.election_timeout_ticks / 1000)
    transport = Transport(
        node_id=me,
        cluster_id=config.cluster_id,
        listen_address=config.peer_listen,
        peers=others,
        deliver=handlers.deliver,
        current_term=handlers.current_term,
        propose=handlers.propose,
        read_index=handlers.read_index,
        renew_lease=handlers.renew_lease,
        hello=handlers.hello,
        on_peer_unreachable=handlers.peer_unreachable,
        tls=tls,
        config=links,
    )
    forwarder = Forwarder(
        node_id=me,
        cluster_id=config.cluster_id,
        peers=others,
        tls=tls,
        advertise_address=config.peers[config.node_id],
        config=links,
    )

    handlers.forwarder = forwarder
    # Before the transport answers any hello: a server removed while it was
    # down must say at once that it was a member, or the leader may re-add it.
    forwarder.admitted_index = identity.admitted_index
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        _log.info("signal_received", signal=sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    try:
        await transport.start()
    except TransportUsageError as exc:
        print(f"raft-sidecar: {exc} (is another process using the peer port?)", file=sys.stderr)
        await forwarder.close()
        return 1
    # The probe port answers from here on: alive while we wait for our peers
    # to decide how to enter the cluster (a new cluster waits for every
    # initial voter), not ready until the Raft node runs.
    servicer = health_servicer()
    try:
        probes = _health_server(config.health_listen, servicer)
    except OSError as exc:
        print(f"raft-sidecar: {exc}", file=sys.stderr)
        await _abandon_start(transport, forwarder)
        return 1
    if probes is not None:
        await probes.start()
    await entering(servicer)

    # Peers ask who we are while we decide how to enter the cluster.
    deciding = asyncio.create_task(decide_entry(store, identity, forwarder, config.peers))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({deciding, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not deciding.done():
        deciding.cancel()
        await _abandon_start(transport, forwarder, probes=probes)
        return 0
    try:
        identity = handlers.identity = deciding.result()
    except StorageError as exc:
        print(f"raft-sidecar: cannot record the bootstrap decision: {exc}", file=sys.stderr)
        await _abandon_start(transport, forwarder, probes=probes)
        return 1
    raft_config = RaftConfig(
        node_id=me,
        initial_membership=Membership(frozenset(identity.initial_voters or ())),
        election_timeout_ticks=config.election_timeout_ticks,
        heartbeat_ticks=config.heartbeat_ticks,
    )
    try:
        storage = TimedStorage(DiskStorage(config.data_dir), metrics)
        node = RaftNode(
            raft_config,
            storage,
            transport,
            machine,
            settings=NodeSettings(tick_seconds=config.tick_ms / 1000),
            on_soft_state=metrics.on_soft_state,
        )
    except StorageError as exc:
        _log.critical("storage_unusable", error=str(exc))
        print(f"raft-sidecar: cannot start: {exc}", file=sys.stderr)
        await _abandon_start(transport, forwarder, probes=probes)
        return 1
    node.forwarder = forwarder
    node.on_proposal_latency = metrics.proposal_seconds.observe
    leases = LeaseKeeper(node, machine)

    async def add_peer(name: str, address: str) -> None:
        forwarder.add_peer(name, address)
        await transport.add_peer(name, address)

    removed: list[str] = []

    def on_removed(why: str) -> None:
        removed.append(why)
        stop.set()

    membership = MembershipManager(
        node,
        forwarder,
        config.peers,
        add_peer=add_peer,
        identity=(store, identity),
        on_removed=on_removed,
        auto=config.auto_membership,
        recheck_s=config.membership_recheck_ms / 1000,
    )
    handlers.node, handlers.leases, handlers.membership = node, leases, membership
    try:
        admin = start_admin(
            config, node, machine, membership=membership, forwarder=forwarder, transport=transport
        )
    except AdminSocketError as exc:
        print(f"raft-sidecar: {exc}", file=sys.stderr)
        await _abandon_start(transport, forwarder, probes=probes, node=node)
        return 1

    try:
        metrics.serve(config.metrics_listen)
    except OSError as exc:
        print(
            f"raft-sidecar: cannot serve metrics on {config.metrics_listen}: {exc}", file=sys.stderr
        )
        await _abandon_start(transport, forwarder, probes=probes, node=node)
        return 1
    api = api_server(interceptors=[RpcMetricsInterceptor(metrics)])  # bounds: servers.py
    service = ElectionService(config, node, machine, leases)
    worker_pb2_grpc.add_ElectionServiceServicer_to_server(service, api)
    health_updater = register_health_and_reflection(api, node, servicer)
    try:
        bound = api.add_insecure_port(config.api_listen)
    except RuntimeError:
        bound = 0
    if bound == 0:
        print(f"raft-sidecar: cannot listen on {config.api_listen} (in use?)", file=sys.stderr)
        await _abandon_start(transport, forwarder, probes=probes, node=node)
        return 1

    node.start()
    leases.start()
    membership.start()
    health_updater.start()
    sampler = asyncio.create_task(
        metrics.run_sampler(node, machine, transport.stats), name="metrics-sampler"
    )
    tls_reloader = (
        asyncio.create_task(tls.run(), name="peer-tls-reloader") if tls is not None else None
    )
    await api.start()
    await admin.start()
    _log.info(
        "sidecar_started",
        peers=sorted(config.peers),
        server_id=me,
        peer_listen=config.peer_listen,
        api_listen=config.api_listen,
        peer_tls=tls is not None,
        event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
    )
    node_ended = asyncio.create_task(node.wait())
    stop_requested = asyncio.create_task(stop.wait())
    await asyncio.wait({node_ended, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    await health_updater.stop()  # probes see NOT_SERVING while we hand over
    if not node_ended.done():
        await service.release_local_grants()

    status = 0
    if removed:
        status = 1
        print(f"raft-sidecar: stopped: this server was removed: {removed[0]}", file=sys.stderr)
    if node_ended.done():
        status = 1
        print(f"raft-sidecar: stopped: {node.failure}", file=sys.stderr)
    else:
        await _hand_over_leadership(node)
    stop_requested.cancel()
    node_ended.cancel()
    await api.stop(grace=0.5)
    await stop_admin(admin, config.admin_socket)
    await _stop_probes(probes)
    await leases.stop()
    await membership.stop()
    await cancel_quietly(sampler)
    await cancel_quietly(tls_reloader)
    await node.stop()
    await transport.stop()
    await forwarder.close()
    _log.info("sidecar_stopped", status=status)
    return status


def start_admin(
    config: SidecarConfig,
    node: RaftNode,
    machine: ElectionsMachine,
    *,
    membership: MembershipManager,
    forwarder: Forwarder,
    transport: Transport,
) -> Any:
    """The operators' admin server on its Unix socket (not started), and the
    peer transport's ForwardAdmin wired to the same requests. Raises
    AdminSocketError."""
    operator = MembershipAdmin(node, membership, forwarder, config.peers)

    async def serve_local(
        request: peer_pb2.ForwardAdminRequest,
    ) -> peer_pb2.ForwardAdminResponse:
        return await operator.serve(request, forwarded=False)

    async def serve_forwarded(
        request: peer_pb2.ForwardAdminRequest,
    ) -> peer_pb2.ForwardAdminResponse:
        return await operator.serve(request, forwarded=True)

    async def save_backup() -> bytes:
        return await live_backup(node, machine, config.cluster_id)

    server = admin_server(config.admin_socket, serve_local, save_backup)
    transport.servicer.admin = serve_forwarded
    return server


async def stop_admin(server: Any, path: str) -> None:
    """Stop the admin server and remove its socket file."""
    await server.stop(grace=0.5)
    with contextlib.suppress(OSError):
        remove_stale_socket(path)


def _health_server(address: str, servicer: Any) -> Any:
    """The probe-only server on ``address`` (not started); None when disabled.
    Raises OSError when the address cannot be bound."""
    if not address:
        return None
    server = probe_server()
    serve_health_only(server, servicer)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot serve health on {address} (in use?)")
    return server


class _PeerHandlers:
    """What this node does for its peers; bound to the node once it exists
    (the transport, which calls these, is built before the node)."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.node: RaftNode | None = None
        self.leases: LeaseKeeper | None = None
        self.membership: MembershipManager | None = None
        self.forwarder: Forwarder | None = None

    async def deliver(self, messages: list[Message]) -> None:
        if self.node is not None:
            self.node.deliver(messages)

    def current_term(self) -> int:
        return self.node.raft.term if self.node is not None else 0

    def peer_unreachable(self, peer: str) -> None:
        """The transport lost the node *named* ``peer``; the core hears of it
        only if that is its leader's name."""
        if self.node is None:
            return
        leader = self.node.raft.leader_id
        if leader is not None and node_name(leader) == peer:
            self.node.peer_unreachable(leader)

    def hello(self, caller: str, address: str, admitted_index: int = 0) -> HelloAnswer:
        removed = False
        if self.membership is not None:
            self.membership.on_hello(caller, address, admitted_index)
            removed = self.membership.caller_removed(caller, admitted_index)
        leader = self.node.raft.leader_id if self.node is not None else None
        return HelloAnswer(
            server_id=self.identity.server_id,
            decided=self.identity.initial_voters is not None,
            initial_voters=self.identity.initial_voters or (),
            leader_id=leader,
            admitted_index=self._forwarder_admitted(),
            caller_removed=removed,
        )

    def _forwarder_admitted(self) -> int:
        return self.forwarder.admitted_index if self.forwarder is not None else 0

    def _require(self) -> tuple[RaftNode, LeaseKeeper]:
        if self.node is None or self.leases is None:
            raise ForwardRefused("this sidecar is still starting")
        return self.node, self.leases

    async def propose(self, command: bytes) -> tuple[int, int]:
        node, _ = self._require()
        try:
            return await node.append_for_peer(command)
        except InvalidProposal as exc:
            raise ForwardInvalid(str(exc)) from exc
        except NotLeader as exc:
            raise ForwardRefused(str(exc), exc.leader_hint) from exc
        except NodeError as exc:
            raise ForwardRefused(f"{node.id} cannot take proposals: {exc}") from exc

    async def read_index(self) -> int:
        node, _ = self._require()
        try:
            return await node.read_barrier()
        except (NotLeader, NodeError) as exc:
            raise ForwardRefused(str(exc)) from exc

    async def renew_lease(self, election: str, token: int) -> tuple[bool, int]:
        node, leases = self._require()
        try:
            return await leases.renew(election, token)
        except NotLeader as exc:
            raise ForwardRefused(str(exc), exc.leader_hint) from exc
        except NodeError as exc:
            raise ForwardRefused(f"{node.id} cannot confirm its leadership: {exc}") from exc


async def _stop_probes(probes: Any) -> None:
    if probes is not None:
        await probes.stop(grace=0)


async def _abandon_start(
    transport: Transport,
    forwarder: Forwarder,
    *,
    probes: Any = None,
    node: RaftNode | None = None,
) -> None:
    """Undo a start that failed part way: whatever was started, in reverse."""
    await _stop_probes(probes)
    if node is not None:
        await node.stop()
    await transport.stop()
    await forwarder.close()


async def _hand_over_leadership(node: RaftNode) -> None:
    raft = node.raft
    if raft.role is not Role.LEADER:
        return
    candidates = sorted(
        ((pr.match, peer) for peer, pr in raft.progress.items() if not pr.is_learner),
        reverse=True,
    )
    if not candidates:
        return
    target = candidates[0][1]
    _log.info("transferring_leadership", target=target)
    node.transfer_leadership(target)
    deadline = asyncio.get_running_loop().time() + TRANSFER_WAIT_SECONDS
    while raft.role is Role.LEADER and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


def run(config: SidecarConfig) -> int:
    sidecar_logging.configure(config.node_id, config.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        if config.event_loop == "uvloop":
            # Imported only here: the asyncio fallback must not load it at all.
            import uvloop  # noqa: PLC0415

            return uvloop.run(serve(config))
        return asyncio.run(serve(config))
    return 0
