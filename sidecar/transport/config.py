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
    """Deadline of one unary Deliver call, of every write to a stream, and how
    long a stream waits for a requested acknowledgement: a stream over that
    is declared stalled, the peer unreachable, and the next stream dials a
    new connection."""
    ack_interval_s: float = 1.0
    """How often a stream batch asks for an acknowledgement (RTT sample and
    stall detection): the first batch this long after the last answer asks."""
    idle_ack_interval_s: float = 5.0
    """With nothing to send, a stream asks with an empty batch only this long
    after the last answer (never sooner than ``ack_interval_s``). An idle stream has
    nothing in flight for a silent link to hold, and its first batch after a
    pause asks at once; the empty probes of idle streams (follower to
    follower) were about a fifth of an idle follower's messages."""
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
    keepalive_time_s: float = 10.0
    """gRPC keepalive: how often a channel pings its connection."""
    keepalive_timeout_s: float = 5.0
    """...and how long an unanswered ping (or, through TCP_USER_TIMEOUT, data
    the kernel cannot deliver) lasts before the connection is closed and
    dialled again."""
    dns_refresh_s: float = 1.0
    """Least time between two DNS resolutions of a peer's name (gRPC's
    default, 30 s, would keep a pod that came back on a new IP unreachable
    for that long)."""

    @classmethod
    def for_raft(cls, election_timeout_s: float) -> TransportConfig:
        """The timings for a Raft election timeout of ``election_timeout_s``
        (the lower end of its randomized range); docs/transport.md argues them.

        * ``backoff_max_s``: one election timeout, within [0.1 s, 0.5 s]: a
          link that comes back is dialled again within a few heartbeats, and
          a down peer costs at most ten connects a second.
        * ``rpc_timeout_s``: four of the longest election timeouts, at least
          2 s: a stall is only declared when Raft has long given up on the
          peer anyway, so a slow but live peer is not cut off for a hiccup.
        * ``keepalive_time_s``: twenty of the longest election timeouts, at
          least 10 s; ``keepalive_timeout_s`` a quarter of it, at least the
          stall deadline. The replication stream's acknowledgements already
          find a silent link within ``ack_interval_s + rpc_timeout_s``;
          keepalive is the backstop for connections that carry no such stream
          (forwarded calls, a channel between streams), and pings under the
          election timeout would cost CPU on every connection for nothing.
        """
        if election_timeout_s <= 0:
            raise TransportUsageError(f"election_timeout_s must be > 0, got {election_timeout_s}")
        longest_s = 2 * election_timeout_s  # the range is [T, 2T)
        rpc_timeout_s = max(2.0, 4 * longest_s)
        keepalive_time_s = max(10.0, 20 * longest_s)
        return cls(
            backoff_max_s=min(0.5, max(0.1, election_timeout_s)),
            rpc_timeout_s=rpc_timeout_s,
            keepalive_time_s=keepalive_time_s,
            keepalive_timeout_s=max(rpc_timeout_s, keepalive_time_s / 4),
        )

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
            "idle_ack_interval_s",
            "unary_fallback_s",
            "snapshot_timeout_s",
            "backoff_multiplier_s",
            "keepalive_timeout_s",
            "dns_refresh_s",
        ):
            if getattr(self, name) <= 0:
                raise TransportUsageError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.keepalive_time_s < 1:
            # The peer server allows a ping per keepalive_time_s / 2 (below).
            raise TransportUsageError(f"keepalive_time_s must be >= 1, got {self.keepalive_time_s}")
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
            # Peers ping every keepalive_time_s, also on a connection without
            # calls (a forwarding channel between calls): allowed, with room
            # for timers that fire early, so the server never sends GOAWAY
            # too_many_pings to a peer.
            permit_keepalive_without_calls=True,
            min_ping_interval_ms=int(self.keepalive_time_s * 1000 / 2),
            # A peer whose host died leaves its half-open replication stream
            # here: found and closed within 40 s instead of TCP's two hours.
            keepalive_time_ms=30_000,
            keepalive_timeout_ms=10_000,
        )
