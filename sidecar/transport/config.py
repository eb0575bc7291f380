"""``TransportConfig``: the bounds and timings of the peer transport, in one place.

Every bound of the transport (queues, batches, messages, snapshots) and every
timing (deadlines, acknowledgements, backoff) is a field here, checked on
construction, so a bad value fails when the sidecar starts, not on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.grpcserver import ServerBounds
from sidecar.transport.errors import TransportUsageError

MiB = 1 << 20


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
