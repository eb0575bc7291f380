"""Who a peer certificate speaks for: one node of one cluster.

Theory of operation
-------------------
A peer certificate names its node and its cluster in one DNS subject
alternative name::

    <node-id>.<cluster-id>.raft-sidecar.internal

Both ends of every peer connection check that name, the same name in both
directions:

* The dialling side sets ``grpc.ssl_target_name_override`` to the name of
  the peer it means to reach, so gRPC's own TLS handshake fails unless the
  server's certificate names exactly that node in this cluster, whatever
  address it was reached at (a stale DNS record, a rescheduled pod, another
  deployment behind the same address). gRPC Python offers no client-side
  look at the peer's certificate after the handshake, so the name must be
  one that gRPC's host name check understands: a DNS name.
* The serving side reads the client certificate from the call's auth
  context (``x509_pem_cert``), finds the identity names in it and refuses a
  call (PERMISSION_DENIED) unless the certificate names exactly one node of
  this cluster and that node is the request's ``from_node``.

A node id is a single DNS label and the cluster id a DNS name, so the name
splits one way only: the first label is the node, the rest up to the fixed
suffix the cluster. The suffix keeps identity names apart from host names
the same CA may sign (``.internal`` is reserved for private use and never
resolves publicly). Wildcard names never count as an identity.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

from cryptography import x509

IDENTITY_SUFFIX = "raft-sidecar.internal"
"""The fixed tail of every peer identity name."""

MAX_NAME_LENGTH = 253
"""The longest DNS name (RFC 1035)."""

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PEM_CERT = "x509_pem_cert"


def identity_name(cluster_id: str, node_id: str) -> str:
    """The DNS name a certificate of ``node_id`` in ``cluster_id`` carries."""
    return f"{node_id}.{cluster_id}.{IDENTITY_SUFFIX}"


def is_node_label(node_id: str) -> bool:
    """A node id usable in an identity name: one lower-case DNS label."""
    return _LABEL.match(node_id) is not None


def is_cluster_name(cluster_id: str) -> bool:
    """A cluster id usable in an identity name: a lower-case DNS name."""
    return all(_LABEL.match(label) for label in cluster_id.split("."))


def naming_problems(cluster_id: str, node_ids: Iterable[str]) -> list[str]:
    """Why these ids cannot be written into identity names (empty: they can)."""
    problems = []
    if not is_cluster_name(cluster_id):
        problems.append(
            f"--cluster-id={cluster_id!r}: with peer TLS it must be a lower-case DNS name "
            "(labels of a-z, 0-9 and '-', joined by dots): certificates name it"
        )
    for node_id in sorted(set(node_ids)):
        if not is_node_label(node_id):
            problems.append(
                f"node id {node_id!r}: with peer TLS it must be one lower-case DNS label "
                "(a-z, 0-9 and '-', at most 63): certificates name it"
            )
        elif is_cluster_name(cluster_id) and len(identity_name(cluster_id, node_id)) > (
            MAX_NAME_LENGTH
        ):
            problems.append(
                f"node id {node_id!r} with --cluster-id={cluster_id!r}: the identity name "
                f"{identity_name(cluster_id, node_id)!r} is longer than {MAX_NAME_LENGTH}"
            )
    return problems


def parse_identity(name: str) -> tuple[str, str] | None:
    """(cluster id, node id) of an identity name; None for any other name."""
    name = name.lower()
    tail = "." + IDENTITY_SUFFIX
    if not name.endswith(tail):
        return None
    node_id, _, cluster_id = name[: -len(tail)].partition(".")
    if not cluster_id or not is_node_label(node_id) or not is_cluster_name(cluster_id):
        return None
    return cluster_id, node_id


def certificate_identities(cert: x509.Certificate) -> tuple[tuple[str, str], ...]:
    """Every (cluster id, node id) the certificate's DNS names speak for, sorted."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    found = {parse_identity(name) for name in san.get_values_for_type(x509.DNSName)}
    return tuple(sorted(i for i in found if i is not None))


@functools.lru_cache(maxsize=64)
def _pem_identities(pem: bytes) -> tuple[tuple[str, str], ...] | None:
    """Identities of a PEM certificate, None if it does not parse. Cached:
    peers present the same few certificates on every call."""
    try:
        return certificate_identities(x509.load_pem_x509_certificate(pem))
    except ValueError:
        return None


def nodes_named(identities: Iterable[tuple[str, str]], cluster_id: str) -> list[str]:
    """The node ids of ``cluster_id`` among ``identities``, sorted."""
    return sorted(node for cluster, node in identities if cluster == cluster_id)


def refusal(auth_context: Mapping[str, Iterable[bytes]], cluster_id: str, from_node: str) -> str:
    """Why a call from ``from_node`` with this auth context is refused; "" if it is not.

    The client certificate must name exactly one node of ``cluster_id``, and
    that node must be ``from_node``. The answer is one line, fit to send back.
    """
    pems = list(auth_context.get(_PEM_CERT) or ())
    if not pems:
        return "no client certificate"
    identities = _pem_identities(pems[0])
    if identities is None:
        return "the client certificate does not parse"
    nodes = nodes_named(identities, cluster_id)
    if not nodes:
        others = sorted({cluster for cluster, _ in identities})
        named = f" (it names cluster {', '.join(map(repr, others))})" if others else ""
        return f"the client certificate names no node of cluster {cluster_id!r}{named}"
    if len(nodes) > 1:
        return f"the client certificate names several nodes ({', '.join(nodes)}), not one"
    if nodes[0] != from_node:
        return f"the client certificate names node {nodes[0]!r}, not from_node {from_node!r}"
    return ""
