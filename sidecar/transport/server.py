"""The inbound side of the peer transport: ``PeerServicer`` on a ``PeerServer``.

Theory of operation
-------------------
The rule of the whole transport (``peer.py``): nothing blocks the caller, and
every buffer has a bound.

Inbound (``PeerServicer`` on a ``grpc.aio`` server):

* With peer mTLS, the caller's certificate must name the request's
  ``from_node`` of this cluster (``identity.py``), else PERMISSION_DENIED;
  checked per unary call, on a stream's first batch, on a snapshot's header.
* ``cluster_id`` and ``to_node`` must match this node, else
  FAILED_PRECONDITION; a batch that does not decode is INVALID_ARGUMENT and
  nothing of it is delivered; the decoded batch goes to the injected async
  ``deliver`` callback, which may raise ``InboxFull``. ``Inbox`` is a bounded
  ready-made callback. On a ``DeliverStream`` a refusal ends the stream; a
  full inbox drops that batch (counted in ``dropped_batches``) and the stream
  goes on. A unary ``Deliver`` answers a full inbox with RESOURCE_EXHAUSTED.
* The server is built by ``sidecar.grpcserver.new_server`` with
  ``TransportConfig.server_bounds()``: bytes that do not parse as the request
  are INVALID_ARGUMENT before the servicer runs, streams are bounded per method.
* ``InstallSnapshot`` reads the header, refuses an announced size above
  ``max_snapshot_bytes`` before reading any data, collects chunks, refuses
  more bytes than announced, and delivers a ``SnapshotRequest`` only when the
  byte count matches exactly (``accepted=False`` otherwise).

``PeerServer`` owns the ``grpc.aio`` server and waits for the handlers of
peers' streams when it stops. All of it runs on one event loop; none of it is
thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]
import structlog

from sidecar.grpcserver import new_server
from sidecar.pb.raftsidecar.peer.v1 import peer_pb2, peer_pb2_grpc
from sidecar.raft.messages import Message
from sidecar.raft.types import NodeId
from sidecar.serverid import node_name
from sidecar.transport.codec import (
    check_snapshot_header,
    from_wire,
    snapshot_from_header_and_data,
)
from sidecar.transport.config import TransportConfig
from sidecar.transport.errors import (
    AdminRefused,
    ForwardInvalid,
    ForwardRefused,
    InboxFull,
    TransportUsageError,
    WireFormatError,
)
from sidecar.transport.identity import refusal

_log = structlog.get_logger("sidecar.transport")

DeliverCallback = Callable[[list[Message]], Awaitable[None]]
"""Hands a decoded batch to the local node; may raise ``InboxFull``."""
ProposeCallback = Callable[[bytes], Awaitable[tuple[int, int]]]
"""Append a command on the leader; returns (index, term). Raises ForwardRefused,
or ForwardInvalid for a command that must not enter the log."""
ReadIndexCallback = Callable[[], Awaitable[int]]
"""A linearizable read point from the leader. Raises ForwardRefused."""
RenewLeaseCallback = Callable[[str, int], Awaitable[tuple[bool, int]]]
"""Renew (election, token) on the leader's clock: (still current, remaining ms)."""


@dataclass(frozen=True, slots=True)
class HelloAnswer:
    """What a node says of itself in answer to ``Hello`` (see the proto)."""

    server_id: NodeId
    decided: bool
    initial_voters: tuple[NodeId, ...] = ()
    leader_id: NodeId | None = None
    admitted_index: int = 0
    """Nonzero once the answering server saw itself a member (committed)."""
    caller_removed: bool = False
    """The caller was a member and this node's committed membership no longer
    holds it (docs/membership.md, "A removed member stays removed")."""


HelloCallback = Callable[[NodeId, str, int], HelloAnswer]
"""Called with the caller's server id, advertised address (may be empty) and
admitted index; returns this node's answer."""
AdminCallback = Callable[[Any], Awaitable[Any]]
"""Serve a forwarded operator request (``peer_pb2.ForwardAdminRequest``) on
the leader; returns a ``ForwardAdminResponse``. Raises ``AdminRefused``."""

# Failures after which the same batch is worth another try: the peer is down


class Inbox:
    """A bounded inbox usable as the server's ``deliver`` callback.

    A batch is taken whole or not at all: ``deliver`` raises ``InboxFull``
    when the batch does not fit, and the server answers RESOURCE_EXHAUSTED.
    """

    def __init__(self, max_messages: int = 4096) -> None:
        if max_messages < 1:
            raise TransportUsageError(f"max_messages must be >= 1, got {max_messages}")
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=max_messages)
        self.dropped_batches = 0

    async def deliver(self, messages: list[Message]) -> None:
        """Enqueue the whole batch; raises ``InboxFull`` if it does not fit."""
        free = self._queue.maxsize - self._queue.qsize()
        if len(messages) > free:
            self.dropped_batches += 1
            raise InboxFull(f"inbox full: {len(messages)} messages offered, room for {free}")
        for m in messages:
            self._queue.put_nowait(m)

    async def get(self) -> Message:
        """The next message, waiting for one."""
        return await self._queue.get()

    def drain(self) -> list[Message]:
        """Every message queued now, oldest first, without waiting."""
        out: list[Message] = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def __len__(self) -> int:
        return self._queue.qsize()


class PeerServicer(peer_pb2_grpc.RaftPeerServiceServicer):
    """``RaftPeerService`` of one node: checks, decodes and hands over messages.

    Every refusal is an ``abort`` with a status code and a one-line message;
    an unexpected error in ``deliver`` is logged here and answered INTERNAL,
    so a peer never sees a stack trace.
    """

    def __init__(
        self,
        *,
        node_id: NodeId,
        cluster_id: str,
        deliver: DeliverCallback,
        config: TransportConfig = TransportConfig(),
        current_term: Callable[[], int] | None = None,
        propose: ProposeCallback | None = None,
        read_index: ReadIndexCallback | None = None,
        renew_lease: RenewLeaseCallback | None = None,
        hello: HelloCallback | None = None,
        require_peer_identity: bool = False,
        admin: AdminCallback | None = None,
    ) -> None:
        if not node_id or not cluster_id:
            raise TransportUsageError("node_id and cluster_id must not be empty")
        self._hello = hello
        self.admin = admin
        """Serves forwarded operator requests; set once the node exists."""
        self._require_peer_identity = require_peer_identity
        """Refuse calls whose client certificate does not name ``from_node`` of
        this cluster (peer mTLS; see ``identity.py``)."""
        self._propose = propose
        self._read_index = read_index
        self._renew_lease = renew_lease
        self._node_id = node_id
        self._cluster_id = cluster_id
        self._deliver = deliver
        self._cfg = config
        self._current_term = current_term or (lambda: 0)
        # Invariant: 0 <= snapshots_in_progress <= max_concurrent_snapshots
        # (one event loop, so a plain counter needs no lock).
        self.snapshots_in_progress = 0
        self.delivered_messages = 0
        self.refused_requests = 0
        self.dropped_batches = 0
        """Stream batches dropped because ``deliver`` raised ``InboxFull``."""
        self._stream_tasks: set[asyncio.Task[Any]] = set()
        self.snapshots_received = 0

    async def Deliver(  # noqa: N802 - gRPC method name
        self, request: peer_pb2.DeliverRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.DeliverResponse:
        await self._check_identity(request.from_node, context)
        messages = await self._decode_batch(request, context)
        if messages:
            await self._hand_over(messages, context)
        return peer_pb2.DeliverResponse()

    async def DeliverStream(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[peer_pb2.DeliverStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[peer_pb2.DeliverStreamResponse]:
        """Hand over each batch of the stream in order, as it arrives.

        A refusal (addressing, malformed batch, sequence gap, a sender that
        changes) ends the stream with its status; what came before it was
        delivered, nothing of the refused batch is. A full inbox drops the
        batch (counted in ``dropped_batches``) and the stream goes on.
        """
        # gRPC's task around this handler outlives it by a few turns (it still
        # sends the status); PeerServer.stop waits for it, so track the task.
        task = asyncio.current_task()
        if task is not None and task not in self._stream_tasks:
            self._stream_tasks.add(task)
            task.add_done_callback(self._stream_tasks.discard)
        async for response in self._serve_stream(request_iterator, context):
            yield response

    async def _serve_stream(
        self,
        request_iterator: AsyncIterator[peer_pb2.DeliverStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[peer_pb2.DeliverStreamResponse]:
        expected = 1
        sender = ""
        dropping = False
        async for request in request_iterator:
            if expected == 1:  # the sender cannot change within the stream
                await self._check_identity(request.from_node, context)
            messages = await self._decode_batch(request, context)
            if request.sequence != expected:
                await self._refuse(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"batch sequence {request.sequence} where {expected} was due",
                )
            if expected == 1:
                sender = request.from_node
            elif request.from_node != sender:
                await self._refuse(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"from_node changed from {sender!r} to {request.from_node!r} within a stream",
                )
            expected += 1
            if messages:
                try:
                    await self._deliver(messages)
                except InboxFull as e:
                    self.dropped_batches += 1
                    if not dropping:  # one line per episode, not per batch
                        _log.warning(
                            "peer_batch_dropped",
                            node_id=self._node_id,
                            sender=sender,
                            reason=str(e),
                        )
                    dropping = True
                except Exception:
                    _log.exception("deliver_failed", node_id=self._node_id, messages=len(messages))
                    await self._refuse(
                        context, grpc.StatusCode.INTERNAL, "the node failed to take the batch"
                    )
                else:
                    dropping = False
                    self.delivered_messages += len(messages)
            if request.ack_requested:
                yield peer_pb2.DeliverStreamResponse(sequence=request.sequence)

    async def wait_for_streams(self, timeout_s: float) -> None:
        """Wait until every DeliverStream handler task has ended (the server is stopped)."""
        if self._stream_tasks:
            await asyncio.wait(set(self._stream_tasks), timeout=timeout_s)
            # gRPC's outer task, which awaits each of them, ends one turn later.
            await asyncio.sleep(0)

    async def _decode_batch(
        self,
        request: peer_pb2.DeliverRequest | peer_pb2.DeliverStreamRequest,
        context: grpc.aio.ServicerContext,
    ) -> list[Message]:
        """Check a batch's addressing and size and decode it whole, or refuse it."""
        await self._check_addressing(request.cluster_id, request.to_node, context)
        if not request.from_node:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "sender node id is empty")
        if request.from_node == request.to_node:
            await self._refuse(
                context, grpc.StatusCode.INVALID_ARGUMENT, "from_node and to_node are the same"
            )
        if len(request.messages) > self._cfg.max_inbound_batch_messages:
            await self._refuse(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"batch of {len(request.messages)} messages exceeds the limit of "
                f"{self._cfg.max_inbound_batch_messages}",
            )
        messages: list[Message] = []
        sender, recipient = request.from_node, request.to_node
        for i, pb in enumerate(request.messages):
            try:
                messages.append(from_wire(pb, sender, recipient))
            except WireFormatError as e:
                await self._refuse(
                    context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed messages[{i}]: {e}"
                )
        return messages

    async def InstallSnapshot(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[peer_pb2.InstallSnapshotRequest],
        context: grpc.aio.ServicerContext,
    ) -> peer_pb2.InstallSnapshotResponse:
        if self.snapshots_in_progress >= self._cfg.max_concurrent_snapshots:
            await self._refuse(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"already receiving {self._cfg.max_concurrent_snapshots} snapshots",
            )
        self.snapshots_in_progress += 1
        try:
            return await self._receive_snapshot(request_iterator, context)
        finally:
            self.snapshots_in_progress -= 1

    async def _receive_snapshot(
        self,
        request_iterator: AsyncIterator[peer_pb2.InstallSnapshotRequest],
        context: grpc.aio.ServicerContext,
    ) -> peer_pb2.InstallSnapshotResponse:
        header: peer_pb2.InstallSnapshotHeader | None = None
        sender = ""
        chunks: list[bytes] = []
        received = 0
        async for req in request_iterator:
            if header is None:  # later messages must keep the sender (checked below)
                await self._check_identity(req.from_node, context)
            await self._check_addressing(req.cluster_id, req.to_node, context)
            payload = req.WhichOneof("payload")
            if header is None:
                if payload != "header":
                    await self._refuse(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "snapshot stream must open with a header",
                    )
                header, sender = req.header, req.from_node
                try:
                    check_snapshot_header(header, sender)
                except WireFormatError as e:
                    await self._refuse(
                        context, grpc.StatusCode.INVALID_ARGUMENT, f"bad snapshot header: {e}"
                    )
                if header.total_size_bytes > self._cfg.max_snapshot_bytes:
                    await self._refuse(
                        context,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"snapshot of {header.total_size_bytes} bytes exceeds the limit of "
                        f"{self._cfg.max_snapshot_bytes} bytes",
                    )
                continue
            if payload != "chunk" or req.from_node != sender:
                await self._refuse(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "after the header a snapshot stream carries only chunks from the same sender",
                )
            received += len(req.chunk)
            if received > header.total_size_bytes:
                await self._refuse(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"snapshot stream carries more than the announced "
                    f"{header.total_size_bytes} bytes",
                )
            chunks.append(req.chunk)
        if header is None:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "empty snapshot stream")
        term = self._current_term()
        if received != header.total_size_bytes:
            _log.warning(
                "snapshot_truncated",
                node_id=self._node_id,
                sender=sender,
                received_bytes=received,
                total_size_bytes=header.total_size_bytes,
            )
            return peer_pb2.InstallSnapshotResponse(
                term=term, accepted=False, received_bytes=received
            )
        data = b"".join(chunks)
        chunks.clear()
        try:
            msg = snapshot_from_header_and_data(header, data, sender, self._node_id)
        except WireFormatError as e:  # pragma: no cover - checked above already
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        await self._hand_over([msg], context)
        self.snapshots_received += 1
        return peer_pb2.InstallSnapshotResponse(term=term, accepted=True, received_bytes=received)

    async def Propose(  # noqa: N802 - gRPC method name
        self, request: peer_pb2.ProposeRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.ProposeResponse:
        await self._check_identity(request.from_node, context)
        await self._check_addressing(request.cluster_id, request.to_node, context)
        if self._propose is None:
            await self._refuse(context, grpc.StatusCode.UNIMPLEMENTED, "no proposals here")
        try:
            index, term = await self._propose(bytes(request.command))
        except ForwardInvalid as e:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except ForwardRefused as e:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, str(e))
        return peer_pb2.ProposeResponse(index=index, term=term)

    async def ReadIndex(  # noqa: N802 - gRPC method name
        self, request: peer_pb2.ReadIndexRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.ReadIndexResponse:
        await self._check_identity(request.from_node, context)
        await self._check_addressing(request.cluster_id, request.to_node, context)
        if self._read_index is None:
            await self._refuse(context, grpc.StatusCode.UNIMPLEMENTED, "no reads here")
        try:
            index = await self._read_index()
        except ForwardRefused as e:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, str(e))
        return peer_pb2.ReadIndexResponse(index=index)

    async def RenewLease(  # noqa: N802 - gRPC method name
        self, request: peer_pb2.RenewLeaseRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.RenewLeaseResponse:
        await self._check_identity(request.from_node, context)
        await self._check_addressing(request.cluster_id, request.to_node, context)
        if self._renew_lease is None:
            await self._refuse(context, grpc.StatusCode.UNIMPLEMENTED, "no leases here")
        try:
            current, remaining_ms = await self._renew_lease(
                request.election, int(request.fencing_token)
            )
        except ForwardRefused as e:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, str(e))
        return peer_pb2.RenewLeaseResponse(current=current, remaining_ttl_ms=remaining_ms)

    async def Hello(  # noqa: N802 - gRPC method name
        self, request: peer_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.HelloResponse:
        await self._check_addressing(request.cluster_id, request.to_node, context, by_name=True)
        await self._check_identity(request.from_node, context)
        if not request.from_node:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "from_node is empty")
        if self._hello is None:
            await self._refuse(context, grpc.StatusCode.UNIMPLEMENTED, "no hello here")
        answer = self._hello(
            request.from_node, request.advertise_address, int(request.admitted_index)
        )
        return peer_pb2.HelloResponse(
            server_id=answer.server_id,
            decided=answer.decided,
            initial_voters=list(answer.initial_voters),
            leader_id=answer.leader_id or "",
            admitted_index=answer.admitted_index,
            caller_removed=answer.caller_removed,
        )

    async def ForwardAdmin(  # noqa: N802 - gRPC method name
        self, request: peer_pb2.ForwardAdminRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.ForwardAdminResponse:
        """An operator's request forwarded by a peer; answered with the leader's
        own status codes (``AdminRefused``), never forwarded again."""
        await self._check_identity(request.from_node, context)
        await self._check_addressing(request.cluster_id, request.to_node, context)
        if request.WhichOneof("request") is None:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "no request in it")
        if self.admin is None:
            await self._refuse(context, grpc.StatusCode.UNAVAILABLE, "this sidecar is starting")
        try:
            response: peer_pb2.ForwardAdminResponse = await self.admin(request)
        except AdminRefused as e:
            await self._refuse(context, grpc.StatusCode[e.code], str(e))
        return response

    async def _check_identity(self, from_node: str, context: grpc.aio.ServicerContext) -> None:
        """With peer mTLS, the client certificate must name ``from_node`` of this cluster."""
        if self._require_peer_identity:
            problem = refusal(context.auth_context(), self._cluster_id, node_name(from_node))
            if problem:
                await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, problem)

    async def _check_addressing(
        self,
        cluster_id: str,
        to_node: str,
        context: grpc.aio.ServicerContext,
        *,
        by_name: bool = False,
    ) -> None:
        """Refuse a request of another cluster, or for another server (or, with
        ``by_name``, another node name): a message for an older incarnation of
        this node must not reach this one, which never promised what it did."""
        if cluster_id != self._cluster_id:
            await self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cluster_id {cluster_id!r} is not this node's cluster {self._cluster_id!r}",
            )
        mine = node_name(self._node_id) if by_name else self._node_id
        if to_node != mine:
            await self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"request for node {to_node!r} reached node {self._node_id!r}",
            )

    async def _hand_over(self, messages: list[Message], context: grpc.aio.ServicerContext) -> None:
        try:
            await self._deliver(messages)
        except InboxFull as e:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except Exception:
            _log.exception("deliver_failed", node_id=self._node_id, messages=len(messages))
            await self._refuse(
                context, grpc.StatusCode.INTERNAL, "the node failed to take the batch"
            )
        self.delivered_messages += len(messages)

    async def _refuse(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str
    ) -> NoReturn:
        """Abort the RPC; never returns (``context.abort`` raises)."""
        self.refused_requests += 1
        _log.info("peer_request_refused", node_id=self._node_id, code=code.name, details=details)
        await context.abort(code, details)
        raise AssertionError("unreachable: context.abort returned")  # pragma: no cover


class PeerServer:
    """A ``grpc.aio`` server carrying ``PeerServicer`` on one address.

    TLS hook: pass ``server_credentials`` (``PeerTls.server_credentials()``)
    to serve over TLS instead of plaintext.
    """

    def __init__(
        self,
        servicer: PeerServicer,
        listen_address: str,
        *,
        config: TransportConfig = TransportConfig(),
        server_credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.servicer = servicer
        self._listen_address = listen_address
        self._cfg = config
        self._credentials = server_credentials
        self._server: Any = None
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with ``host:0``).

        Raises ``TransportUsageError`` if already started or the address
        cannot be bound.
        """
        if self._server is not None:
            raise TransportUsageError("PeerServer already started")
        server = new_server(
            self._cfg.server_bounds(),
            options=[("grpc.max_send_message_length", self._cfg.max_message_bytes)],
        )
        peer_pb2_grpc.add_RaftPeerServiceServicer_to_server(self.servicer, server)
        try:
            if self._credentials is None:
                port = server.add_insecure_port(self._listen_address)
            else:
                port = server.add_secure_port(self._listen_address, self._credentials)
        except RuntimeError as e:
            port, error = 0, f": {e}"
        else:
            error = ""
        if port == 0:
            # Stop it here: a dropped server is shut down by its finalizer,
            # which may run after the event loop has closed.
            await server.stop(None)
            raise TransportUsageError(f"cannot listen on {self._listen_address}{error}")
        await server.start()
        self._server, self.port = server, int(port)
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop serving; in-flight RPCs get ``grace_s`` seconds to finish.

        Peers' streams are long-lived: they are cut after the grace period,
        and this returns once their handlers have ended.
        """
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
            await self.servicer.wait_for_streams(timeout_s=1.0)
