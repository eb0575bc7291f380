"""The one way this node dials a peer: ``PeerChannel``.

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
from collections.abc import Sequence
from typing import Any

import grpc  # type: ignore[import-untyped]

from sidecar.pb.raftsidecar.peer.v1 import peer_pb2_grpc
from sidecar.transport.tls import PeerTls


class PeerChannel:
    """A gRPC channel to one peer, rebuilt when the peer TLS files change."""

    def __init__(
        self,
        *,
        peer_id: str,
        address: str,
        tls: PeerTls | None = None,
        options: Sequence[tuple[str, Any]] = (),
        retire_grace_s: float = 5.0,
    ) -> None:
        self.peer_id = peer_id
        self.address = address
        self._tls = tls
        self._options = list(options)
        self._retire_grace_s = retire_grace_s
        self._channel: Any = None
        self._stub: peer_pb2_grpc.RaftPeerServiceStub | None = None
        self._generation = 0
        self._closing: dict[asyncio.Task[None], Any] = {}
        """Retired channels still closing, by the task that closes them."""

    @property
    def outdated(self) -> bool:
        """The TLS files changed since the current channel was built."""
        return self._tls is not None and self._tls.generation != self._generation

    def stub(self) -> peer_pb2_grpc.RaftPeerServiceStub:
        """A stub on a channel with the credentials in use (built on first use)."""
        if self._stub is None or self.outdated:
            self._stub = self._open()
        return self._stub

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
