"""Throw-away X.509 material for TLS tests: a CA and per-node peer
certificates naming ``<node>.<cluster>.raft-sidecar.internal``, as PEM files."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.transport.identity import identity_name

DEFAULT_CLUSTER = "raft-sidecar"
"""The sidecar's default --cluster-id."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def flags(self) -> list[str]:
        return [
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-file", str(self.ca),
        ]  # fmt: skip

    def replace_with(self, other: TlsFiles, ca_bundle: bytes | None = None) -> None:
        """Put ``other``'s content (and ``ca_bundle`` as the CA file, if given)
        into these paths, each file replaced atomically, one after the other."""
        blobs = {
            self.cert: other.cert.read_bytes(),
            self.key: other.key.read_bytes(),
            self.ca: other.ca.read_bytes() if ca_bundle is None else ca_bundle,
        }
        for path, blob in blobs.items():
            write_atomically(path, blob)


def write_atomically(path: Path, blob: bytes) -> None:
    scratch = path.with_name(path.name + ".new")
    scratch.write_bytes(blob)
    os.replace(scratch, path)


class CertificateAuthority:
    def __init__(self, directory: Path, name: str = "raft-sidecar test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.ca_file = directory / "ca.crt"
        self.ca_file.write_bytes(self.pem)

    def issue(
        self,
        node_id: str,
        cluster_id: str = DEFAULT_CLUSTER,
        *,
        names: list[str] | None = None,
        valid_for: datetime.timedelta = datetime.timedelta(days=1),
        stem: str | None = None,
    ) -> TlsFiles:
        """A peer certificate (server and client) for ``node_id`` of ``cluster_id``,
        or carrying exactly the DNS ``names`` given; files ``<stem>.crt/.key``
        (stem: node id, or node id and cluster)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        dns = names if names is not None else [identity_name(cluster_id, node_id)]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + valid_for)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if dns:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        stem = stem or (node_id if cluster_id == DEFAULT_CLUSTER else f"{node_id}.{cluster_id}")
        cert_file = self.directory / f"{stem}.crt"
        key_file = self.directory / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return TlsFiles(cert_file, key_file, self.ca_file)
