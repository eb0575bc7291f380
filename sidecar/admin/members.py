"""The operator's membership decisions, pure: which member a name means,
whether a removal keeps a quorum, whom a leader hands over to.

Every refusal is an ``AdminRefused`` carrying the gRPC status code name the
operator sees (docs/membership.md, "Runtime membership"). No I/O, no clock:
the caller passes the membership and what the leader last heard.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sidecar.raft import Membership
from sidecar.serverid import SEPARATOR, is_server_id, node_name
from sidecar.transport.errors import AdminRefused

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
"""A node name, as ``--node-id`` accepts it."""


def check_name(name: str, *, incarnation_allowed: bool = True) -> None:
    """Raise AdminRefused(INVALID_ARGUMENT) unless ``name`` is a node name or,
    where ``incarnation_allowed``, NAME~INCARNATION."""
    if _NAME.match(name):
        return
    if incarnation_allowed and is_server_id(name) and _NAME.match(node_name(name)):
        return
    shown = name if len(name) <= 80 else name[:77] + "..."
    accepted = "a node name" + (" or NAME~INCARNATION" if incarnation_allowed else "")
    raise AdminRefused("INVALID_ARGUMENT", f"{shown!r} is not {accepted}")


def resolve_member(membership: Membership, name: str) -> str:
    """The member (server id) ``name`` means: NAME~INCARNATION exactly, or the
    only member of that node name.

    Raises AdminRefused: NOT_FOUND when none matches, FAILED_PRECONDITION
    when two incarnations of the name are members (say which).
    """
    if SEPARATOR in name:
        if name in membership.members:
            return name
        raise AdminRefused("NOT_FOUND", f"{name} is not a member")
    matches = sorted(m for m in membership.members if node_name(m) == name)
    if not matches:
        raise AdminRefused("NOT_FOUND", f"no member is named {name}")
    if len(matches) > 1:
        raise AdminRefused(
            "FAILED_PRECONDITION",
            f"{len(matches)} incarnations of {name} are members ({', '.join(matches)}): "
            "name one as NAME~INCARNATION",
        )
    return matches[0]


def removal_problem(membership: Membership, target: str, reachable: frozenset[str]) -> str | None:
    """Why removing ``target`` could stop the cluster, or None when it cannot.

    Removing a voter leaves the other voters; a quorum of them must be
    ``reachable`` (heard from by the leader recently), or the cluster may
    commit nothing, the removal itself included. Removing a learner never
    matters to a quorum.
    """
    if target not in membership.voters:
        return None
    remaining = membership.voters - {target}
    if not remaining:
        return f"{target} is the last voter"
    needed = len(remaining) // 2 + 1
    up = len(remaining & reachable)
    if up >= needed:
        return None
    return (
        f"removing {target} leaves {len(remaining)} voters of which {up} are reachable, "
        f"fewer than the quorum of {needed}"
    )


def transfer_target(
    membership: Membership, me: str, match: Mapping[str, int], reachable: frozenset[str]
) -> str | None:
    """The voter a leader about to be removed hands over to: reachable, the
    most caught-up, ties by id; None when there is none."""
    candidates = sorted(
        ((match.get(v, 0), v) for v in membership.voters - {me} if v in reachable),
        key=lambda pair: (-pair[0], pair[1]),
    )
    return candidates[0][1] if candidates else None
