"""Peer mutual TLS: credentials from PEM files, checked, and reloaded when they change.

Theory of operation
-------------------
``PeerTls`` owns the file set in use (this node's certificate chain, its
key and the CA bundle) as one validated ``TlsMaterial``. A file set is used
only if the chain parses, the key parses and matches the certificate, the
certificate has not expired, chains to the CA bundle and names this node of
this cluster (``identity.py``); otherwise it is refused with one line.

At start a refused set stops the sidecar. Afterwards ``run`` polls the
three files' *content* every ``poll_interval_s`` (cert-manager rewrites them
in place; Kubernetes swaps a Secret volume's ``..data`` symlink, so neither
the inode nor the mtime of the named path is a reliable signal). A changed
set is taken up only once it reads the same on two polls in a row, so a
writer that replaces the files one by one is not caught half-way. A new set
that validates becomes the one in use (``generation`` grows); a bad one is
refused with an error log line and a ``TlsRefused`` event, once per bad set,
and the previous material stays in use.

Who picks the new material up:

* the server, through ``grpc.dynamic_ssl_server_credentials``: gRPC asks
  ``_fetch`` before every new handshake, from its own threads, and gets the
  prepared configuration once per generation (None, "no change", otherwise);
  connections already open keep the old one;
* the clients, through ``channels.PeerChannel``, which rebuilds its channel
  when ``generation`` moved (``channel_credentials``).

Everything but ``_fetch`` runs on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from sidecar.transport.errors import TransportError
from sidecar.transport.identity import certificate_identities, identity_name, nodes_named

_log = structlog.get_logger("sidecar.transport.tls")


class TlsMaterialError(TransportError):
    """A file set cannot be used; the message is one line naming the file and why."""


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """One validated file set."""

    cert_chain: bytes
    key: bytes
    ca_bundle: bytes
    not_after_s: float
    """Expiry of this node's certificate, unix seconds."""


@dataclass(frozen=True, slots=True)
class TlsLoaded:
    """The files on disk are the set in use (at start, after a reload, or
    again after a refused set was replaced by the one in use)."""

    not_after_s: float
    generation: int


@dataclass(frozen=True, slots=True)
class TlsRefused:
    """The files on disk are a set that failed validation; the old one stays."""

    reason: str


TlsEvent = TlsLoaded | TlsRefused


@dataclass(frozen=True, slots=True)
class _Files:
    cert_file: str
    key_file: str
    ca_file: str


def _read(files: _Files) -> tuple[bytes, bytes, bytes]:
    """The three files' bytes. Raises TlsMaterialError naming the unreadable one."""
    out = []
    for flag, path in (
        ("--tls-cert-file", files.cert_file),
        ("--tls-key-file", files.key_file),
        ("--tls-ca-file", files.ca_file),
    ):
        try:
            out.append(Path(path).read_bytes())
        except OSError as exc:
            raise TlsMaterialError(f"{flag}={path!r}: cannot read: {exc.strerror}") from exc
    return out[0], out[1], out[2]


def validate(
    files: _Files,
    blobs: tuple[bytes, bytes, bytes],
    *,
    node_id: str,
    cluster_id: str,
    now_s: float,
) -> TlsMaterial:
    """Check one file set; raises TlsMaterialError with one line naming what is wrong."""
    cert_pem, key_pem, ca_pem = blobs
    where = f"--tls-cert-file={files.cert_file!r}"
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise TlsMaterialError(f"{where}: no PEM certificate parses") from exc
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # Never the exception's text: it might quote what it failed on.
        raise TlsMaterialError(
            f"--tls-key-file={files.key_file!r}: not an unencrypted PEM private key"
        ) from exc
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise TlsMaterialError(
            f"--tls-key-file={files.key_file!r} does not match the certificate in {where}"
        )
    not_after = leaf.not_valid_after_utc
    if not_after.timestamp() <= now_s:
        raise TlsMaterialError(f"{where}: the certificate expired at {not_after.isoformat()}")
    try:
        roots = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise TlsMaterialError(
            f"--tls-ca-file={files.ca_file!r}: no PEM certificate parses"
        ) from exc
    if not _chains_to(chain, roots):
        raise TlsMaterialError(f"{where}: the certificate does not chain to --tls-ca-file")
    nodes = nodes_named(certificate_identities(leaf), cluster_id)
    if nodes != [node_id]:
        named = ", ".join(nodes) if nodes else "no node"
        raise TlsMaterialError(
            f"{where}: the certificate must name {identity_name(cluster_id, node_id)!r} "
            f"and no other node of the cluster; it names {named}"
        )
    return TlsMaterial(cert_pem, key_pem, ca_pem, not_after.timestamp())


def _chains_to(chain: list[x509.Certificate], roots: list[x509.Certificate]) -> bool:
    """Each certificate of ``chain`` is signed by the next, the last by a root
    (or is one). Signatures only: the peers' handshakes check the rest."""
    if not all(_issued_by(child, parent) for child, parent in itertools.pairwise(chain)):
        return False
    top = chain[-1]
    return any(top == root or _issued_by(top, root) for root in roots)


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


class PeerTls:
    """The peer TLS file set in use, and its reloading. Construct with the
    three paths; raises TlsMaterialError when they are not usable now."""

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        ca_file: str,
        *,
        node_id: str,
        cluster_id: str,
        on_event: Callable[[TlsEvent], None] | None = None,
        poll_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.poll_interval_s = poll_interval_s
        self._files = _Files(cert_file, key_file, ca_file)
        self._on_event = on_event
        self._clock = clock
        self._served: Any = None
        """The server configuration last handed to gRPC by ``_fetch``."""
        blobs = _read(self._files)
        self._install(self._validate(blobs), _digest(blobs))
        self.generation = 1
        """Grows by one with every file set taken into use."""
        self._candidate: bytes | str | None = None
        """What the files held at the last poll, if it differed from the set
        in use: their digest, or why they could not be read."""
        self._refused: bytes | str | None = None
        """The last set refused, while the files still hold it."""
        self._emit(TlsLoaded(self.material.not_after_s, self.generation))

    @property
    def files(self) -> tuple[str, str, str]:
        return self._files.cert_file, self._files.key_file, self._files.ca_file

    # -- credentials --

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up every reload for new connections."""
        return grpc.dynamic_ssl_server_credentials(
            self._server_config, self._fetch, require_client_authentication=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client credentials of the material in use (build channels with these)."""
        return self._channel_credentials

    def target_name(self, peer_id: str) -> str:
        """The name a channel to ``peer_id`` checks the server certificate for."""
        return identity_name(self.cluster_id, peer_id)

    def _fetch(self) -> Any:
        # Called by gRPC's threads before each handshake: a plain read and
        # one assignment, nothing that needs the event loop.
        config = self._server_config
        if config is self._served:
            return None
        self._served = config
        return config

    # -- reloading --

    async def run(self) -> None:
        """Poll the files until cancelled."""
        while True:
            await asyncio.sleep(self.poll_interval_s)
            self.poll()

    def poll(self) -> None:
        """Look at the files once; take up, refuse or wait for a changed set."""
        blobs: tuple[bytes, bytes, bytes] | None = None
        seen: bytes | str
        try:
            blobs = _read(self._files)
        except TlsMaterialError as exc:
            seen = str(exc)
        else:
            seen = _digest(blobs)
        if seen == self._digest:
            self._candidate = None
            if self._refused is not None:
                self._refused = None
                self._emit(TlsLoaded(self.material.not_after_s, self.generation))
            return
        if seen == self._refused:
            return
        if seen != self._candidate:
            self._candidate = seen  # take it when it reads the same next time
            return
        self._candidate = None
        try:
            if blobs is None:
                raise TlsMaterialError(str(seen))
            material = self._validate(blobs)
        except TlsMaterialError as exc:
            self._refused = seen
            _log.error(
                "peer_tls_reload_refused",
                node_id=self.node_id,
                reason=str(exc),
                in_use_expires=_iso(self.material.not_after_s),
            )
            self._emit(TlsRefused(str(exc)))
            return
        self._install(material, seen)
        self._refused = None
        self.generation += 1
        _log.info(
            "peer_tls_reloaded",
            node_id=self.node_id,
            generation=self.generation,
            expires=_iso(material.not_after_s),
        )
        self._emit(TlsLoaded(material.not_after_s, self.generation))

    def _validate(self, blobs: tuple[bytes, bytes, bytes]) -> TlsMaterial:
        try:
            return validate(
                self._files,
                blobs,
                node_id=self.node_id,
                cluster_id=self.cluster_id,
                now_s=self._clock(),
            )
        except TlsMaterialError:
            raise
        except Exception as exc:  # anything cryptography may raise on odd input
            raise TlsMaterialError(
                f"the peer TLS files cannot be used: {type(exc).__name__}"
            ) from exc

    def _install(self, material: TlsMaterial, digest: bytes | str) -> None:
        self.material = material
        self._digest = digest
        self._server_config = grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert_chain)], root_certificates=material.ca_bundle
        )
        self._channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=material.ca_bundle,
            private_key=material.key,
            certificate_chain=material.cert_chain,
        )

    def _emit(self, event: TlsEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)


def _digest(blobs: tuple[bytes, bytes, bytes]) -> bytes:
    h = hashlib.sha256()
    for blob in blobs:
        h.update(len(blob).to_bytes(8, "big"))
        h.update(blob)
    return h.digest()


def _iso(unix_s: float) -> str:
    return datetime.datetime.fromtimestamp(unix_s, datetime.UTC).isoformat()
