"""The gRPC peer transport: a server for inbound Raft messages, a client per peer.

Theory of operation
-------------------
Raft tolerates lost, duplicated and delayed messages but not blocked ones: a
runtime loop that waits on a dead peer stops ticking and the whole node stalls.
So nothing here ever blocks the caller, and every buffer has a bound; when a
bound is hit, messages are dropped and counted, and the core's own timers
(heartbeats, append retries, snapshot resends) repair the loss.

Outbound (``PeerClient``, one per remote peer):

* ``send(msg)`` encodes the message at once (so a bad message fails at the
  call site) and appends it to a bounded deque; it never awaits.
* A sender task keeps one ``DeliverStream`` call open to the peer. It takes
  up to ``max_batch_messages`` / ``max_batch_bytes`` off the front of the
  deque and writes them as one batch, then the next, without waiting for the
  peer to process them (pipelined; HTTP/2 flow control bounds what is in
  flight). One stream carries batches in order.
* About once per ``ack_interval_s`` a batch (an empty one on an idle stream)
  asks for an acknowledgement: its round trip is the peer's RTT, its arrival
  marks the peer reachable, and its absence after ``rpc_timeout_s`` cancels
  the stream as stalled.
* When the stream breaks, what it carried before its first acknowledgement
  and the batch whose write failed go back to the front of the deque (they
  are the oldest) and the oldest messages beyond the bound are dropped, unless
  the peer refused them (FAILED_PRECONDITION, INVALID_ARGUMENT, ...): then
  they are dropped. What was written after an acknowledgement is left to
  Raft. The stream is reopened at once if the peer had acknowledged
  something on it, else after a capped, jittered exponential backoff
  (tenacity's ``wait_random_exponential``). Memory while a peer is down or
  frozen is therefore the deque's bound plus gRPC's flow-control window.
* A peer that answers UNIMPLEMENTED (an older version, during a rolling
  upgrade) gets unary ``Deliver`` calls, one batch at a time, for
  ``unary_fallback_s``; a failed call requeues its batch (UNAVAILABLE,
  DEADLINE_EXCEEDED) or drops it, then backs off.
* ``SnapshotRequest`` messages bypass the deque: they go to a one-slot mailbox
  (a newer snapshot replaces an unsent older one, counted as a drop) served
  by a second task that streams them through ``InstallSnapshot`` in chunks.
  Heartbeats keep flowing while a large snapshot is on the wire.

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

Task ownership: each ``PeerClient`` owns its two tasks (the sender's task
owns the acknowledgement reader of its current stream) and its channel and
ends all of them in ``stop()``; ``PeerServer`` owns the ``grpc.aio`` server
and waits for the handlers of peers' streams when it stops;
``Transport`` owns both and is the only object the runtime talks to. All of
it runs on one event loop; none of it is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from sidecar.grpcserver import ServerBounds, new_server
from sidecar.pb.raftsidecar.peer.v1 import peer_pb2, peer_pb2_grpc
from sidecar.raft.messages import Message, SnapshotRequest
from sidecar.raft.types import NodeId
from sidecar.serverid import is_server_id, node_name
from sidecar.transport.channels import PeerChannel
from sidecar.transport.codec import (
    check_snapshot_header,
    from_wire,
    snapshot_from_header_and_data,
    snapshot_header,
    to_wire,
)
from sidecar.transport.errors import (
    AdminRefused,
    ForwardInvalid,
    ForwardRefused,
    InboxFull,
    TransportUsageError,
    WireFormatError,
)
from sidecar.transport.identity import refusal
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

MiB = 1 << 20

DeliverCallback = Callable[[list[Message]], Awaitable[None]]
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
"""Hands a decoded batch to the local node; may raise ``InboxFull``."""

# Failures after which the same batch is worth another try: the peer is down
# or slow. Anything else (FAILED_PRECONDITION, INVALID_ARGUMENT,
# RESOURCE_EXHAUSTED...) would fail again the same way, so the batch is dropped.
_RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# A stream ends for many reasons that say nothing against what it carried:
# the peer went away or shut down (UNAVAILABLE, CANCELLED, OK), it stalled
# (DEADLINE_EXCEEDED), or a write raced with the end of the call (INTERNAL,
# made up locally by grpc). Only these codes are the peer refusing the batches;
# what the stream still holds is then dropped instead of tried again.
_STREAM_REFUSAL_CODES = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Bounds and timings of the transport; checked on construction."""

    max_queue_messages: int = 1024
    """Outbound messages held per peer; beyond it the oldest are dropped."""
    max_queue_bytes: int = 64 * MiB
    """Encoded bytes held per peer; beyond it the oldest are dropped."""
    max_batch_messages: int = 64
    """Messages per Deliver call."""
    max_batch_bytes: int = 2 * MiB
    """Encoded bytes per Deliver call (a single larger message travels alone)."""
    max_inbound_batch_messages: int = 256
    """Messages per inbound Deliver call a server accepts (room for peers
    configured with a larger ``max_batch_messages``)."""
    max_message_bytes: int = 16 * MiB
    """gRPC send/receive limit; must exceed the largest single Raft message."""
    snapshot_chunk_bytes: int = 1 * MiB
    """Data per InstallSnapshot chunk, well below the gRPC message limit."""
    max_snapshot_bytes: int = 1024 * MiB
    """Largest snapshot a server accepts; the header is refused above it."""
    max_concurrent_snapshots: int = 2
    """Inbound snapshot streams held in memory at once; more are refused."""
    rpc_timeout_s: float = 2.0
    """Deadline of one unary Deliver call, and how long a stream waits for a
    requested acknowledgement before it is declared stalled and reopened."""
    ack_interval_s: float = 1.0
    """How often a stream batch asks for an acknowledgement (RTT sample and
    stall detection); an idle stream sends an empty batch to ask."""
    unary_fallback_s: float = 60.0
    """After a peer answers UNIMPLEMENTED to DeliverStream (an older version
    during a rolling upgrade), batches go by unary Deliver for this long
    before the stream is tried again."""
    snapshot_timeout_s: float = 60.0
    """Deadline of one whole InstallSnapshot stream."""
    backoff_multiplier_s: float = 0.05
    """Scale of the exponential backoff between failed attempts."""
    backoff_max_s: float = 0.5
    """Cap of the backoff, and of gRPC's own reconnect backoff. A peer that
    comes back is reached within about this long: short enough that a
    restarted follower hears the leader before its election timeout runs out
    more than once; a down peer costs a refused connect twice a second."""

    def __post_init__(self) -> None:
        for name in (
            "max_queue_messages",
            "max_queue_bytes",
            "max_batch_messages",
            "max_batch_bytes",
            "max_inbound_batch_messages",
            "max_message_bytes",
            "snapshot_chunk_bytes",
            "max_snapshot_bytes",
            "max_concurrent_snapshots",
        ):
            if getattr(self, name) < 1:
                raise TransportUsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "rpc_timeout_s",
            "ack_interval_s",
            "unary_fallback_s",
            "snapshot_timeout_s",
            "backoff_multiplier_s",
        ):
            if getattr(self, name) <= 0:
                raise TransportUsageError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.backoff_max_s < self.backoff_multiplier_s:
            raise TransportUsageError("backoff_max_s must be >= backoff_multiplier_s")
        if self.snapshot_chunk_bytes + 4096 > self.max_message_bytes:
            raise TransportUsageError("snapshot_chunk_bytes must fit well inside max_message_bytes")
        if self.max_batch_bytes > self.max_message_bytes:
            raise TransportUsageError("max_batch_bytes must not exceed max_message_bytes")

    def server_bounds(self) -> ServerBounds:
        """The peer server's bounds (docs/sidecar.md, "Server bounds"): a few
        authenticated peers, each with one replication stream, a snapshot
        stream now and then and the forwarded calls of its workers."""
        return ServerBounds(
            name="peer",
            max_receive_message_bytes=self.max_message_bytes,
            max_concurrent_streams=256,
            max_concurrent_rpcs=1024,
            max_streams_per_method=64,
            permit_keepalive_without_calls=False,
            min_ping_interval_ms=5_000,
            # A peer whose host died leaves its half-open replication stream
            # here: found and closed within 40 s instead of TCP's two hours.
            keepalive_time_ms=30_000,
            keepalive_timeout_ms=10_000,
        )

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            # gRPC's own reconnect backoff defaults to 1 s growing to 120 s;
            # cap it like ours so a returning peer is found within seconds.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", max(100, int(self.backoff_max_s * 1000))),
        ]


# --- inbound ------------------------------------------------------------------


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


# --- outbound -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerStats:
    """Counters of one outbound peer, for metrics."""

    sent: int
    """Messages handed to the peer: written to its stream, acknowledged by a
    unary Deliver, or snapshots it accepted."""
    dropped: int
    """Messages given up: queue overflow, refused batches, replaced snapshots."""
    failed_rpcs: int
    """Streams that broke or could not be opened, and failed unary calls."""
    snapshots_sent: int
    queue_len: int
    last_rtt_s: float | None
    """Round trip of the last acknowledged stream probe (or unary Deliver),
    None before the first."""
    reachable: bool
    """False from a failure until the peer next acknowledges something."""


@dataclass(frozen=True, slots=True)
class _Queued:
    pb: peer_pb2.RaftMessage
    size: int
    recipient: NodeId
    """The Raft server id it is for: a batch never mixes two incarnations."""


class _StreamEnded(Exception):
    """The DeliverStream call finished under the writer."""


class _RetryLater(Exception):
    """The last attempt failed before the peer acknowledged anything; back off."""


class _NewCredentials(Exception):
    """The stream was ended on purpose after the TLS files were reloaded."""


class _Stream:
    """One open DeliverStream call and the state its writer and reader share.

    Invariant: ``probe_sequence`` is 0 or the sequence of the one batch whose
    acknowledgement is awaited; a new probe is sent only after the previous
    one was answered, so at most one watchdog timer is armed per stream.
    ``unconfirmed`` holds what was written before the first acknowledgement
    (the first batch asks for one), at most ``max_queue_messages`` messages,
    and is empty once ``acked``.
    """

    __slots__ = (
        "acked",
        "call",
        "next_probe_at",
        "probe_sent_at",
        "probe_sequence",
        "sequence",
        "stalled",
        "unconfirmed",
        "watchdog",
    )

    def __init__(self, call: Any) -> None:
        self.call = call
        self.sequence = 0
        self.probe_sequence = 0
        self.probe_sent_at = 0.0
        self.next_probe_at = 0.0  # the first batch of a stream asks at once
        self.acked = False
        self.stalled = False
        self.watchdog: asyncio.TimerHandle | None = None
        self.unconfirmed: deque[_Queued] = deque()


class PeerClient:
    """Sends one node's messages to one remote peer, never blocking the caller.

    Drop policy: when the outbound queue is full, the **oldest** messages are
    dropped. Raft messages go stale: a heartbeat, vote request or append from
    before the peer went away carries an old term and commit index, and the
    core resends whatever is still needed. Keeping the newest ones means that
    when the peer returns it first hears the sender's current term and state,
    rather than replaying a backlog that its answers would only contradict.
    The queue stays an in-order suffix of what the core sent. Drops are
    counted in ``dropped``.

    Streaming: see the module docstring. In short, one ``DeliverStream``
    call, batches written back to back, an acknowledgement asked about once
    per ``ack_interval_s`` (RTT, reachability, stall watchdog), reopened
    with backoff; unary ``Deliver`` for peers that do not stream.

    TLS: with ``tls`` the peer is dialled through a ``PeerChannel`` that
    checks the peer's identity; after a reload of the files the current
    stream is ended cleanly (half-closed, so everything written on it is
    delivered) and the next one opens on a channel with the new credentials.
    """

    def __init__(
        self,
        *,
        node_id: NodeId,
        peer_id: NodeId,
        address: str,
        cluster_id: str,
        config: TransportConfig = TransportConfig(),
        tls: PeerTls | None = None,
    ) -> None:
        if not node_id or not peer_id or not cluster_id or not address:
            raise TransportUsageError("node_id, peer_id, cluster_id and address must be set")
        self.node_id = node_id
        self.peer_id = peer_id
        """The peer's node name: one client per address, whatever its incarnation."""
        self.target: NodeId = peer_id
        """The Raft server id of the last message queued (probes go there)."""
        self.target_known = not is_server_id(node_id)
        """Whether ``target`` names a server yet: ids without an incarnation
        (tools, tests) address the name itself."""
        self.address = address
        self._cluster_id = cluster_id
        self._cfg = config
        self._tls = tls
        # Invariant: len(_queue) <= max_queue_messages and
        # _queued_bytes == sum of sizes <= max_queue_bytes, after every call.
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0
        self._has_work = asyncio.Event()
        self._pending_snapshot: SnapshotRequest | None = None
        self._has_snapshot = asyncio.Event()
        self._link: PeerChannel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self._unary_until = 0.0
        """Monotonic time until which batches go by unary Deliver (see UNIMPLEMENTED)."""
        self.sent = 0
        self.dropped = 0
        self.failed_rpcs = 0
        self.snapshots_sent = 0
        self.last_rtt_s: float | None = None
        self.reachable = True
        self.on_unreachable: Callable[[NodeId], None] | None = None
        """Called with the peer id when it turns unreachable because it is
        down, stalled or shutting down (any failure but a refusal:
        FAILED_PRECONDITION, INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
        PERMISSION_DENIED, UNAUTHENTICATED)."""

    # -- the caller's side (plain functions: they cannot block) --

    def send(self, msg: Message) -> None:
        """Queue ``msg`` for the peer and return at once.

        Raises ``TransportUsageError`` if ``msg`` is addressed to another
        node or cannot be encoded (a bug in the caller).
        """
        if node_name(msg.recipient) != self.peer_id:
            raise TransportUsageError(f"message for {msg.recipient!r} given to {self.peer_id!r}")
        self.target = msg.recipient
        self.target_known = True
        if self._stopped:
            self.dropped += 1
            return
        if isinstance(msg, SnapshotRequest):
            if self._pending_snapshot is not None:
                self.dropped += 1  # superseded before it left
            self._pending_snapshot = msg
            self._has_snapshot.set()
            return
        try:
            pb = to_wire(msg)
        except ValueError as e:
            raise TransportUsageError(f"cannot encode {msg}: {e}") from e
        queued = _Queued(pb, pb.ByteSize(), msg.recipient)
        self._queue.append(queued)
        self._queued_bytes += queued.size
        if (
            len(self._queue) > self._cfg.max_queue_messages
            or self._queued_bytes > self._cfg.max_queue_bytes
        ):
            self._trim()
        self._has_work.set()

    def stats(self) -> PeerStats:
        return PeerStats(
            sent=self.sent,
            dropped=self.dropped,
            failed_rpcs=self.failed_rpcs,
            snapshots_sent=self.snapshots_sent,
            queue_len=len(self._queue),
            last_rtt_s=self.last_rtt_s,
            reachable=self.reachable,
        )

    @property
    def queue_len(self) -> int:
        return len(self._queue)

    def _trim(self) -> None:
        """Drop the oldest messages until both queue bounds hold."""
        while self._queue and (
            len(self._queue) > self._cfg.max_queue_messages
            or self._queued_bytes > self._cfg.max_queue_bytes
        ):
            self._queued_bytes -= self._queue.popleft().size
            self.dropped += 1

    # -- lifecycle --

    async def start(self) -> None:
        """Open the channel and start the sender tasks (no connection is awaited)."""
        if self._link is not None or self._stopped:
            raise TransportUsageError(f"PeerClient for {self.peer_id!r} already started")
        self._link = PeerChannel(
            peer_id=self.peer_id,
            address=self.address,
            tls=self._tls,
            options=self._cfg.channel_options(),
            retire_grace_s=self._cfg.snapshot_timeout_s,
        )
        self._tasks = [
            asyncio.create_task(self._run_deliveries(), name=f"peer-send-{self.peer_id}"),
            asyncio.create_task(self._run_snapshots(), name=f"peer-snapshot-{self.peer_id}"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        # The tasks only end by cancellation; anything else is a bug that would
        # silently cut this peer off, so say so at once (stop() re-reports it).
        if not task.cancelled() and task.exception() is not None:
            _log.error(
                "peer_task_died",
                node_id=self.node_id,
                peer=self.peer_id,
                task=task.get_name(),
                error=repr(task.exception()),
            )

    async def stop(self) -> None:
        """Cancel both tasks, wait for them, close the channel. Queued messages are dropped."""
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for r in results:
            if isinstance(r, Exception):
                _log.error("peer_task_failed", peer=self.peer_id, error=repr(r))
        self.dropped += len(self._queue) + (self._pending_snapshot is not None)
        self._queue.clear()
        self._queued_bytes = 0
        self._pending_snapshot = None
        if self._link is not None:
            await self._link.close()

    def _peer_stub(self) -> Any:
        """The stub for the next call, on a channel with the credentials in use."""
        if self._link is None:
            raise TransportUsageError(f"PeerClient for {self.peer_id!r} is not started")
        return self._link.stub()

    # -- the sender task --

    async def _run_deliveries(self) -> None:
        wait = wait_random_exponential(
            multiplier=self._cfg.backoff_multiplier_s, max=self._cfg.backoff_max_s
        )
        while True:
            # One AsyncRetrying per success: the backoff grows over consecutive
            # failures only. reraise=True lets cancellation out unchanged.
            async for attempt in AsyncRetrying(
                wait=wait, retry=retry_if_exception_type(_RetryLater), reraise=True
            ):
                with attempt:
                    if time.monotonic() < self._unary_until:
                        await self._deliver_one_batch()
                    else:
                        await self._stream_batches()

    async def _stream_batches(self) -> None:
        """Keep one DeliverStream open and write batches to it until it breaks.

        Returns when the stream broke after the peer had acknowledged a batch
        on it (reopen at once) or when the peer does not know the RPC (unary
        fallback); raises ``_RetryLater`` when it broke before (back off).
        """
        stream = _Stream(self._peer_stub().DeliverStream())
        reader = asyncio.create_task(self._read_acks(stream), name=f"peer-acks-{self.peer_id}")
        batch: list[_Queued] = []
        error: BaseException | None = None
        try:
            await self._write_batches(stream, batch)
        except asyncio.CancelledError as e:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # stop(): the finally block below still cleans up
            error = e  # the call was cancelled under a pending write (watchdog)
        except Exception as e:
            # AioRpcError, or InvalidStateError from a write to a finished call.
            error = e
        finally:
            if stream.watchdog is not None:
                stream.watchdog.cancel()
            done = stream.call.done()
            if not done:
                stream.call.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        code, details = await self._stream_outcome(stream, done, error)
        if isinstance(error, _NewCredentials) and code is grpc.StatusCode.OK:
            return  # the peer read everything; reopen at once with the new files
        self.failed_rpcs += 1
        # A stream that broke before its first acknowledgement (the peer was
        # still starting, or never took it) may have delivered nothing: what
        # it carried is tried again, like the batch whose write failed. Later
        # on, what was written since the last acknowledgement is left to Raft.
        self.sent -= len(stream.unconfirmed)
        batch[:0] = stream.unconfirmed
        stream.unconfirmed.clear()
        if code is grpc.StatusCode.UNIMPLEMENTED:
            self._requeue(batch)
            self._unary_until = time.monotonic() + self._cfg.unary_fallback_s
            _log.warning(
                "peer_stream_unsupported",
                node_id=self.node_id,
                peer=self.peer_id,
                fallback_s=self._cfg.unary_fallback_s,
            )
            return
        if code in _STREAM_REFUSAL_CODES:
            self.dropped += len(batch)
        else:
            self._requeue(batch)
        self._mark_unreachable("DeliverStream", code, details)
        if not stream.acked:
            raise _RetryLater(f"{code.name}: {details}")

    async def _write_batches(self, stream: _Stream, batch: list[_Queued]) -> None:
        """The writer's loop; ``batch`` holds the batch of a write that is under way.

        Ends by an exception only: the stream ended or was cancelled.
        """
        loop = asyncio.get_running_loop()
        call = stream.call
        cluster_id, from_node = self._cluster_id, self.node_id
        while True:
            if call.done():
                raise _StreamEnded
            if self._link is not None and self._link.outdated:
                await self._end_for_new_credentials(call)
            now = time.monotonic()
            # No probe before the core has addressed a message to this peer:
            # only then is its current server id (incarnation) known.
            probe = stream.probe_sequence == 0 and now >= stream.next_probe_at and self.target_known
            if not self._queue and not probe:
                # Wait for work, the next probe or the end of the stream (the
                # reader sets _has_work when the call ends).
                self._has_work.clear()
                alarm = None
                if stream.probe_sequence == 0:
                    alarm = loop.call_later(stream.next_probe_at - now, self._has_work.set)
                try:
                    await self._has_work.wait()
                finally:
                    if alarm is not None:
                        alarm.cancel()
                continue
            if self._queue:
                batch.extend(self._take_batch())
            stream.sequence += 1
            if probe:
                stream.probe_sequence = stream.sequence
                stream.probe_sent_at = now
                stream.watchdog = loop.call_later(
                    self._cfg.rpc_timeout_s, self._on_probe_timeout, stream, stream.sequence
                )
            await call.write(
                peer_pb2.DeliverStreamRequest(
                    cluster_id=cluster_id,
                    from_node=from_node,
                    to_node=batch[0].recipient if batch else self.target,
                    messages=[q.pb for q in batch],
                    sequence=stream.sequence,
                    ack_requested=probe,
                )
            )
            self.sent += len(batch)
            if not stream.acked:
                stream.unconfirmed.extend(batch)
                while len(stream.unconfirmed) > self._cfg.max_queue_messages:
                    stream.unconfirmed.popleft()  # no longer tracked: left to Raft
            batch.clear()

    async def _end_for_new_credentials(self, call: Any) -> NoReturn:
        """Half-close the stream and wait (bounded) until the peer has read all of
        it; raises ``_NewCredentials`` so the next stream dials with the new files."""
        await call.done_writing()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(call.code(), self._cfg.rpc_timeout_s)
        raise _NewCredentials

    async def _read_acks(self, stream: _Stream) -> None:
        """Read the peer's acknowledgements until the call ends, then wake the writer."""
        try:
            while True:
                response = await stream.call.read()
                if response is grpc.aio.EOF:
                    return
                if response.sequence != stream.probe_sequence:
                    continue  # cannot happen with one probe at a time; ignore
                now = time.monotonic()
                self.last_rtt_s = now - stream.probe_sent_at
                stream.acked = True
                stream.unconfirmed.clear()
                stream.probe_sequence = 0
                stream.next_probe_at = now + self._cfg.ack_interval_s
                if stream.watchdog is not None:
                    stream.watchdog.cancel()
                    stream.watchdog = None
                self._mark_reachable()
                self._has_work.set()  # the writer may be waiting to arm the next probe
        except grpc.aio.AioRpcError:
            return  # the writer reads the status from the call
        finally:
            self._has_work.set()

    def _on_probe_timeout(self, stream: _Stream, sequence: int) -> None:
        if stream.probe_sequence == sequence and not stream.call.done():
            stream.stalled = True
            stream.call.cancel()
            self._has_work.set()

    async def _stream_outcome(
        self, stream: _Stream, done: bool, error: BaseException | None
    ) -> tuple[Any, str]:
        """The status a broken stream ended with, as (code, details)."""
        if stream.stalled:
            return (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no acknowledgement within {self._cfg.rpc_timeout_s} s",
            )
        if done:
            return await stream.call.code(), await stream.call.details() or ""
        if isinstance(error, grpc.aio.AioRpcError):
            return error.code(), error.details() or ""
        return grpc.StatusCode.UNKNOWN, repr(error)

    async def _deliver_one_batch(self) -> None:
        """Unary fallback: ship one batch by Deliver and wait for the answer."""
        while not self._queue:
            self._has_work.clear()
            await self._has_work.wait()
        batch = self._take_batch()
        request = peer_pb2.DeliverRequest(
            cluster_id=self._cluster_id,
            from_node=self.node_id,
            to_node=batch[0].recipient,
            messages=[q.pb for q in batch],
        )
        started = time.monotonic()
        try:
            await self._peer_stub().Deliver(request, timeout=self._cfg.rpc_timeout_s)
        except grpc.aio.AioRpcError as e:
            self.failed_rpcs += 1
            if e.code() in _RETRYABLE_CODES:
                self._requeue(batch)
            else:
                self.dropped += len(batch)
            self._mark_unreachable("Deliver", e.code(), e.details() or "")
            raise _RetryLater from e
        self.last_rtt_s = time.monotonic() - started
        self.sent += len(batch)
        self._mark_reachable()

    def _take_batch(self) -> list[_Queued]:
        batch = [self._queue.popleft()]
        size = batch[0].size
        while (
            self._queue
            and self._queue[0].recipient == batch[0].recipient
            and len(batch) < self._cfg.max_batch_messages
            and size + self._queue[0].size <= self._cfg.max_batch_bytes
        ):
            batch.append(self._queue.popleft())
            size += batch[-1].size
        self._queued_bytes -= size
        return batch

    def _requeue(self, batch: list[_Queued]) -> None:
        """Put a failed batch back in front (it is older than anything queued), then trim."""
        if not batch:
            return
        self._queue.extendleft(reversed(batch))
        self._queued_bytes += sum(q.size for q in batch)
        self._trim()

    # -- the snapshot task --

    async def _run_snapshots(self) -> None:
        while True:
            await self._has_snapshot.wait()
            self._has_snapshot.clear()
            msg, self._pending_snapshot = self._pending_snapshot, None
            if msg is not None:
                await self._send_snapshot(msg)

    async def _send_snapshot(self, msg: SnapshotRequest) -> None:
        header = snapshot_header(msg)
        data = msg.snapshot.data
        chunk = self._cfg.snapshot_chunk_bytes
        cluster_id, from_node, to_node = self._cluster_id, self.node_id, msg.recipient

        async def requests() -> AsyncIterator[peer_pb2.InstallSnapshotRequest]:
            # Every message names cluster and nodes, so the server checks each.
            yield peer_pb2.InstallSnapshotRequest(
                cluster_id=cluster_id, from_node=from_node, to_node=to_node, header=header
            )
            for offset in range(0, len(data), chunk):
                yield peer_pb2.InstallSnapshotRequest(
                    cluster_id=cluster_id,
                    from_node=from_node,
                    to_node=to_node,
                    chunk=data[offset : offset + chunk],
                )

        try:
            response = await self._peer_stub().InstallSnapshot(
                requests(), timeout=self._cfg.snapshot_timeout_s
            )
        except grpc.aio.AioRpcError as e:
            self.failed_rpcs += 1
            self.dropped += 1
            self._mark_unreachable("InstallSnapshot", e.code(), e.details() or "")
            return
        if response.accepted:
            self.sent += 1
            self.snapshots_sent += 1
        else:
            self.dropped += 1
            _log.warning(
                "snapshot_not_accepted",
                peer=self.peer_id,
                received_bytes=response.received_bytes,
                total_size_bytes=len(data),
            )
        self._mark_reachable()

    def _mark_unreachable(self, rpc: str, code: Any, details: str) -> None:
        if self.reachable:
            _log.warning(
                "peer_unreachable",
                node_id=self.node_id,
                peer=self.peer_id,
                address=self.address,
                rpc=rpc,
                code=code.name,
                details=details,
            )
            # Down, stalled or gone (a graceful shutdown ends our stream with
            # CANCELLED), not refusing: tell the node once per episode (a
            # follower that lost its leader campaigns sooner).
            if self.on_unreachable is not None and code not in _STREAM_REFUSAL_CODES:
                self.on_unreachable(self.peer_id)
        self.reachable = False

    def _mark_reachable(self) -> None:
        if not self.reachable:
            _log.info("peer_reachable", node_id=self.node_id, peer=self.peer_id)
        self.reachable = True


# --- the whole transport ------------------------------------------------------


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
