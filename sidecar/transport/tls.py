"""Peer mutual TLS: gRPC credentials from PEM files.

Both directions authenticate. The server requires a client certificate that
chains to the cluster's CA, so a process without one cannot inject Raft
messages; the client verifies the peer's certificate against the same CA and
the host name it dials (the StatefulSet's DNS name, or an IP SAN on
loopback). The files are read once at start: rotating certificates means a
rolling restart, which costs one leadership transfer per node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc  # type: ignore[import-untyped]


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    server: grpc.ServerCredentials
    channel: grpc.ChannelCredentials


def load_peer_credentials(cert_file: str, key_file: str, ca_file: str) -> PeerCredentials:
    """Build both sides' credentials; raises OSError if a file cannot be read."""
    cert = Path(cert_file).read_bytes()
    key = Path(key_file).read_bytes()
    ca = Path(ca_file).read_bytes()
    server = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )
    channel = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    return PeerCredentials(server=server, channel=channel)
