"""Raft server ids: a node's name plus the incarnation of its data directory.

A node *name* (``--node-id``, e.g. ``rs-raft-sidecar-2``) is what operators,
addresses and certificates know, and it is stable across pod restarts. A Raft
*server* is one life of one data directory: a node that comes back with an
empty directory has forgotten its votes and its log, so it must not be the
same server to Raft (DESIGN.md, "Cluster identity and trust"). Its server id
is therefore ``<name>~<incarnation>``, where the incarnation is a random id
made with the directory. The Raft core treats server ids as opaque strings;
only the runtime, the transport (which routes by name) and the API (which
shows names and incarnations apart) split them.

Ids without ``~`` are names standing for themselves (tests and tools that
drive the transport directly use them).
"""

from __future__ import annotations

import re

SEPARATOR = "~"
_INCARNATION = re.compile(r"[0-9a-f]{16}")


def server_id(name: str, incarnation: str) -> str:
    """The Raft server id of ``name`` in its ``incarnation`` (16 hex digits)."""
    if SEPARATOR in name or not name:
        raise ValueError(f"invalid node name {name!r}")
    if not _INCARNATION.fullmatch(incarnation):
        raise ValueError(f"invalid incarnation {incarnation!r}")
    return f"{name}{SEPARATOR}{incarnation}"


def node_name(server: str) -> str:
    """The node name of a server id (the id itself when it has no incarnation)."""
    return server.split(SEPARATOR, 1)[0]


def incarnation_of(server: str) -> str:
    """The incarnation of a server id; empty when it has none."""
    _, _, incarnation = server.partition(SEPARATOR)
    return incarnation


def is_server_id(value: str) -> bool:
    """True for ``<name>~<16 hex digits>``."""
    name, sep, incarnation = value.partition(SEPARATOR)
    return bool(name) and sep == SEPARATOR and bool(_INCARNATION.fullmatch(incarnation))
