"""The one way this node dials a peer: ``PeerChannel`` (replication and forwarding).

Every channel to a peer gets the same options from ``channel_options``: gRPC
keepalive pings with a timeout (a connection that went silent is closed and
dialled again; with keepalive on, gRPC also sets TCP_USER_TIMEOUT, so the
kernel gives up on data it cannot deliver), a capped and jittered reconnect
backoff, and quick DNS re-resolution. The values come from ``TransportConfig``
and are argued in docs/transport.md.

A caller that finds the link silent on its own (a stream's acknowledgement or
write overdue, a forwarded call past its deadline) calls ``reset``: the next
call dials a new connection instead of queueing behind the silent one, which
TCP might only give up on after its retransmissions back off for minutes.

Plaintext without TLS. With TLS, the channel presents this node's
certificate and accepts the server only if its certificate names the peer it
means to reach in this cluster (``grpc.ssl_target_name_override`` set to the
peer's identity name, see ``identity.py``), whatever address it dialled.

When the TLS files are reloaded (``PeerTls.generation`` moved) the next
``stub()`` builds a new channel with the new credentials, so new calls make
new connections that present the new certificate. The old channel is closed
in the background with ``retire_grace_s`` for the calls still on it (a
forwarded proposal, a snapshot) and at once by ``close``. A caller holding a
long-lived call (the replication stream) checks ``outdated`` and ends it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc  # type: ignore[import-untyped]

from sidecar.pb.raftsidecar.peer.v1 import peer_pb2_grpc
from sidecar.transport.config import TransportConfig
from sidecar.transport.tls import PeerTls


def channel_options(config: TransportConfig) -> list[tuple[str, int]]:
    """The gRPC options of every channel to a peer."""
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # gRPC's own reconnect backoff defaults to 1 s growing to 120 s; cap
        # it like ours so a returning peer is found within a few heartbeats.
        # gRPC jitters it (20 %) and uses the minimum as the connect timeout.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", max(100, int(config.backoff_max_s * 1000))),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        # Ping also when no call is open (a forwarding channel between calls)
        # and however long no data flowed; the peer server allows both.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.dns_min_time_between_resolutions_ms", int(config.dns_refresh_s * 1000)),
    ]


class PeerChannel:
    """A gRPC channel to one peer, rebuilt when the peer TLS files change."""

    def __init__(
        self,
        *,
        peer_id: str,
        address: str,
        tls: PeerTls | None = None,
        config: TransportConfig = TransportConfig(),
        retire_grace_s: float = 5.0,
    ) -> None:
        self.peer_id = peer_id
        self.address = address
        self._tls = tls
        self._options: list[tuple[str, Any]] = list(channel_options(config))
        self._retire_grace_s = retire_grace_s
        self._channel: Any = None
        self._stub: peer_pb2_grpc.RaftPeerServiceStub | None = None
        self._generation = 0
        self._reset = False
        self.resets = 0
        """Channels dropped by ``reset`` (a link found silent)."""
        self._closing: dict[asyncio.Task[None], Any] = {}
        """Retired channels still closing, by the task that closes them."""

    @property
    def outdated(self) -> bool:
        """The TLS files changed since the current channel was built."""
        return self._tls is not None and self._tls.generation != self._generation

    def stub(self) -> peer_pb2_grpc.RaftPeerServiceStub:
        """A stub on a channel with the credentials in use (built on first use,
        and anew after ``reset`` or a reload of the TLS files)."""
        if self._stub is None or self.outdated or self._reset:
            self._reset = False
            self._stub = self._open()
        return self._stub

    def reset(self) -> None:
        """The link went silent: the next ``stub()`` dials a new connection.
        Calls still on the old channel have its retire grace to finish."""
        if self._channel is not None and not self._reset:
            self._reset = True
            self.resets += 1

    def _open(self) -> peer_pb2_grpc.RaftPeerServiceStub:
        old = self._channel
        if self._tls is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=self._options)
        else:
            options = [
                *self._options,
                ("grpc.ssl_target_name_override", self._tls.target_name(self.peer_id)),
            ]
            self._generation = self._tls.generation
            self._channel = grpc.aio.secure_channel(
                self.address, self._tls.channel_credentials(), options=options
            )
        if old is not None:
            task = asyncio.create_task(
                old.close(self._retire_grace_s), name=f"peer-channel-retire-{self.peer_id}"
            )
            self._closing[task] = old
            task.add_done_callback(lambda t: self._closing.pop(t, None))
        return peer_pb2_grpc.RaftPeerServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel and every retired one now (their calls are cancelled)."""
        closing, self._closing = dict(self._closing), {}
        for task in closing:
            task.cancel()
        await asyncio.gather(*closing, return_exceptions=True)
        for channel in [*closing.values(), self._channel]:
            if channel is not None:
                await channel.close()  # again for a retired one: its close was cut short
        self._channel = self._stub = None
