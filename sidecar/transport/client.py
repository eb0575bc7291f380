"""The outbound side of the peer transport: ``PeerClient``, one per remote peer.

Theory of operation
-------------------
The rule of the whole transport (``peer.py``): nothing blocks the caller, and
every buffer has a bound.

Outbound (``PeerClient``, one per remote peer):

* ``send(msg)`` encodes the message at once (so a bad message fails at the
  call site) and appends it to a bounded deque; it never awaits.
* A sender task keeps one ``DeliverStream`` call open to the peer. It takes
  up to ``max_batch_messages`` / ``max_batch_bytes`` off the front of the
  deque and writes them as one batch, then the next, without waiting for the
  peer to process them (pipelined; HTTP/2 flow control bounds what is in
  flight). One stream carries batches in order.
* About once per ``ack_interval_s`` a batch asks for an acknowledgement (on
  a stream with nothing to send, an empty batch once per
  ``idle_ack_interval_s``): its round trip is the peer's RTT, its arrival
  marks the peer reachable, and its absence after ``rpc_timeout_s`` cancels
  the stream as stalled. So does a write that HTTP/2 flow control holds for
  ``rpc_timeout_s`` (the peer reads nothing: without this deadline the
  writer would wait as long as TCP keeps the connection). A stalled stream
  marks the peer unreachable and resets the channel, so the next stream
  dials a new connection instead of queueing behind the silent one.
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


Task ownership: each ``PeerClient`` owns its two tasks (the sender's task
owns the acknowledgement reader of its current stream) and its channel and
ends all of them in ``stop()``. All of it runs on one event loop; none of it
is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from sidecar.pb.raftsidecar.peer.v1 import peer_pb2
from sidecar.raft.messages import Message, SnapshotRequest
from sidecar.raft.types import NodeId
from sidecar.serverid import is_server_id, node_name
from sidecar.transport.channels import PeerChannel
from sidecar.transport.codec import (
    snapshot_header,
    to_wire,
)
from sidecar.transport.config import TransportConfig
from sidecar.transport.errors import TransportUsageError
from sidecar.transport.tls import PeerTls

_log = structlog.get_logger("sidecar.transport")

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
        "first_write",
        "idle_probe_at",
        "next_probe_at",
        "probe_alarm",
        "probe_sent_at",
        "probe_sequence",
        "sequence",
        "stalled",
        "unconfirmed",
        "watchdog",
        "write_started",
        "write_watch",
    )

    def __init__(self, call: Any) -> None:
        self.call = call
        self.sequence = 0
        self.probe_sequence = 0
        self.probe_sent_at = 0.0
        self.next_probe_at = 0.0  # the first batch of a stream asks at once
        self.idle_probe_at = 0.0
        """When an empty batch asks, with nothing to send (>= next_probe_at);
        the first one at once, so that a new stream is acknowledged."""
        self.acked = False
        self.stalled = ""
        """Why the stream was cancelled as stalled ("" while it was not)."""
        self.watchdog: asyncio.TimerHandle | None = None
        self.unconfirmed: deque[_Queued] = deque()
        self.write_started: float | None = None
        """Loop time the write under way began (None between writes)."""
        self.write_watch: asyncio.TimerHandle | None = None
        """Fires at the deadline of the oldest write it may still find under
        way; re-armed by the next write only once it fired. One timer per
        ``rpc_timeout_s`` instead of one armed and cancelled per write."""
        self.probe_alarm: asyncio.TimerHandle | None = None
        """Wakes the writer at ``idle_probe_at``; kept across waits, not
        re-armed each time the writer waits for work."""
        self.first_write: asyncio.Future[None] | None = None
        """The stream's first write while it is under way. It waits until
        gRPC has sent the call's headers, which needs a connection, and
        grpc.aio (1.85) never releases that wait once the call is cancelled:
        a stall declared while the connection is still being made cancels
        this future too, or the writer would wait for good."""

    def cancel_timers(self) -> None:
        for timer in (self.watchdog, self.write_watch, self.probe_alarm):
            if timer is not None:
                timer.cancel()
        self.watchdog = self.write_watch = self.probe_alarm = None


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
            config=self._cfg,
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
            stream.cancel_timers()
            done = stream.call.done()
            if not done:
                stream.call.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        code, details = await self._stream_outcome(stream, done, error)
        if isinstance(error, _NewCredentials) and code is grpc.StatusCode.OK:
            return  # the peer read everything; reopen at once with the new files
        self.failed_rpcs += 1
        if stream.stalled and self._link is not None:
            self._link.reset()  # TCP may keep the silent connection for minutes
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
            if not self._queue and not (probe and now >= stream.idle_probe_at):
                # Wait for work, the next probe or the end of the stream (the
                # reader sets _has_work when the call ends).
                self._has_work.clear()
                if stream.probe_sequence == 0 and self.target_known:
                    # Until the core addresses this peer (a follower never
                    # writes to another follower), there is nothing to probe:
                    # an alarm already due would wake this loop at once, again
                    # and again, and spin a core while the cluster is idle.
                    self._arm_probe_alarm(stream, loop)
                await self._has_work.wait()
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
            # A write waits while HTTP/2 flow control is closed: bounded, or a
            # peer that reads nothing (a silent link) would hold it forever.
            stream.write_started = loop.time()
            if stream.write_watch is None:
                stream.write_watch = loop.call_at(
                    stream.write_started + self._cfg.rpc_timeout_s,
                    self._on_write_watch,
                    stream,
                )
            request = peer_pb2.DeliverStreamRequest(
                cluster_id=cluster_id,
                from_node=from_node,
                to_node=batch[0].recipient if batch else self.target,
                messages=[q.pb for q in batch],
                sequence=stream.sequence,
                ack_requested=probe,
            )
            try:
                if stream.sequence > 1:
                    await call.write(request)
                else:
                    stream.first_write = asyncio.ensure_future(call.write(request))
                    await stream.first_write
            finally:
                stream.write_started = None
                stream.first_write = None
            self.sent += len(batch)
            if not stream.acked:
                stream.unconfirmed.extend(batch)
                while len(stream.unconfirmed) > self._cfg.max_queue_messages:
                    stream.unconfirmed.popleft()  # no longer tracked: left to Raft
            batch.clear()

    async def _end_for_new_credentials(self, call: Any) -> NoReturn:
        """Half-close the stream and wait (bounded) until the peer has read all of
        it; raises ``_NewCredentials`` so the next stream dials with the new files."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(call.done_writing(), self._cfg.rpc_timeout_s)
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
                stream.idle_probe_at = now + max(
                    self._cfg.ack_interval_s, self._cfg.idle_ack_interval_s
                )
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
        if stream.probe_sequence == sequence:
            self._stall(stream, f"no acknowledgement within {self._cfg.rpc_timeout_s} s")

    def _arm_probe_alarm(self, stream: _Stream, loop: asyncio.AbstractEventLoop) -> None:
        """Have the writer woken at ``idle_probe_at`` (both in monotonic time,
        which the loop's clock is), keeping an alarm already set for it."""
        alarm = stream.probe_alarm
        if alarm is not None and not alarm.cancelled() and alarm.when() == stream.idle_probe_at:
            return
        if alarm is not None:
            alarm.cancel()
        stream.probe_alarm = loop.call_at(stream.idle_probe_at, self._on_probe_alarm, stream)

    def _on_probe_alarm(self, stream: _Stream) -> None:
        stream.probe_alarm = None
        self._has_work.set()

    def _on_write_watch(self, stream: _Stream) -> None:
        """A write's deadline came: stall the stream if that write (or a later
        one) is still under way past its own deadline, else watch the write
        under way, if any, until its deadline."""
        stream.write_watch = None
        started = stream.write_started
        if started is None:
            return  # between writes: the next one arms the watch again
        loop = asyncio.get_running_loop()
        due = started + self._cfg.rpc_timeout_s
        if loop.time() >= due:
            self._stall(stream, f"a write blocked for {self._cfg.rpc_timeout_s} s (flow control)")
        else:
            stream.write_watch = loop.call_at(due, self._on_write_watch, stream)

    def _stall(self, stream: _Stream, why: str) -> None:
        """Cancel the stream as stalled; the writer reports it and resets the link."""
        if not stream.call.done() and not stream.stalled:
            stream.stalled = why
            stream.call.cancel()
            if stream.first_write is not None:
                stream.first_write.cancel()
            self._has_work.set()

    async def _stream_outcome(
        self, stream: _Stream, done: bool, error: BaseException | None
    ) -> tuple[Any, str]:
        """The status a broken stream ended with, as (code, details)."""
        if stream.stalled:
            return grpc.StatusCode.DEADLINE_EXCEEDED, stream.stalled
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
