"""``raft-sidecar serve``: storage, core, transport, state machine and API, wired.

Process life: start everything, then wait for SIGTERM/SIGINT or for the node
to stop by itself (a storage error). On SIGTERM a leader first hands Raft
leadership to the most caught-up peer, so a rolling restart costs one
election round trip, not an election timeout. The exit status is 0 after a
clean shutdown and 1 when the node stopped on an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import grpc  # type: ignore[import-untyped]
import structlog

from sidecar import logging as sidecar_logging
from sidecar.api.service import ElectionService
from sidecar.config import SidecarConfig
from sidecar.machine import ElectionsMachine
from sidecar.node import NodeError, NodeSettings, RaftNode
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2_grpc
from sidecar.raft import Membership, Message, NotLeader, RaftConfig, Role
from sidecar.storage.disk import DiskStorage
from sidecar.storage.errors import StorageError
from sidecar.transport.errors import ForwardRefused
from sidecar.transport.forward import Forwarder
from sidecar.transport.peer import Transport

_log = structlog.get_logger("sidecar.app")

TRANSFER_WAIT_SECONDS = 2.0


async def serve(config: SidecarConfig) -> int:
    machine = ElectionsMachine()
    raft_config = RaftConfig(
        node_id=config.node_id,
        initial_membership=Membership(frozenset(config.peers)),
        election_timeout_ticks=config.election_timeout_ticks,
        heartbeat_ticks=config.heartbeat_ticks,
    )
    try:
        storage = DiskStorage(config.data_dir)
        holder: list[RaftNode] = []

        async def deliver(messages: list[Message]) -> None:
            if holder:
                holder[0].deliver(messages)

        async def propose_for_peer(command: bytes) -> tuple[int, int]:
            try:
                return await holder[0].append_for_peer(command)
            except NotLeader as exc:
                raise ForwardRefused(str(exc), exc.leader_hint) from exc
            except NodeError as exc:
                raise ForwardRefused(f"{config.node_id} cannot take proposals: {exc}") from exc

        async def read_for_peer() -> int:
            try:
                return await holder[0].read_barrier()
            except (NotLeader, NodeError) as exc:
                raise ForwardRefused(str(exc)) from exc

        others = {k: v for k, v in config.peers.items() if k != config.node_id}
        transport = Transport(
            node_id=config.node_id,
            cluster_id=config.cluster_id,
            listen_address=config.peer_listen,
            peers=others,
            deliver=deliver,
            current_term=lambda: holder[0].raft.term if holder else 0,
            propose=propose_for_peer,
            read_index=read_for_peer,
        )
        forwarder = Forwarder(node_id=config.node_id, cluster_id=config.cluster_id, peers=others)
        node = RaftNode(
            raft_config,
            storage,
            transport,
            machine,
            settings=NodeSettings(tick_seconds=config.tick_ms / 1000),
        )
    except StorageError as exc:
        _log.critical("storage_unusable", error=str(exc))
        print(f"raft-sidecar: cannot start: {exc}", file=sys.stderr)
        return 1
    holder.append(node)
    node.forwarder = forwarder

    api = grpc.aio.server()
    worker_pb2_grpc.add_ElectionServiceServicer_to_server(
        ElectionService(config, node, machine), api
    )
    try:
        bound = api.add_insecure_port(config.api_listen)
    except RuntimeError:
        bound = 0
    if bound == 0:
        print(f"raft-sidecar: cannot listen on {config.api_listen} (in use?)", file=sys.stderr)
        await node.stop()
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        _log.info("signal_received", signal=sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    await transport.start()
    node.start()
    await api.start()
    _log.info(
        "sidecar_started",
        peers=sorted(config.peers),
        peer_listen=config.peer_listen,
        api_listen=config.api_listen,
    )
    node_ended = asyncio.create_task(node.wait())
    stop_requested = asyncio.create_task(stop.wait())
    await asyncio.wait({node_ended, stop_requested}, return_when=asyncio.FIRST_COMPLETED)

    status = 0
    if node_ended.done():
        status = 1
        print(f"raft-sidecar: stopped: {node.failure}", file=sys.stderr)
    else:
        await _hand_over_leadership(node)
    stop_requested.cancel()
    node_ended.cancel()
    await api.stop(grace=0.5)
    await node.stop()
    await transport.stop()
    await forwarder.close()
    _log.info("sidecar_stopped", status=status)
    return status


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
        return asyncio.run(serve(config))
    return 0
