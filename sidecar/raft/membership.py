"""Single-server membership changes (dissertation §4.1) as data in the log.

A change is one of: add a learner, promote a caught-up learner to voter, or
remove a node. The entry stores the change *and* the full resulting
membership, and a node uses a configuration as soon as the entry is in its
log, committed or not (§4.1). The core encodes the entry itself, with JSON
from the standard library, so the log stays free of wire libraries.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from sidecar.raft.errors import ConfChangeRejected, InvariantViolation
from sidecar.raft.types import Membership, NodeId


class ConfChangeKind(enum.Enum):
    ADD_LEARNER = "add_learner"
    PROMOTE_LEARNER = "promote_learner"
    REMOVE_NODE = "remove_node"


@dataclass(frozen=True, slots=True)
class ConfChange:
    kind: ConfChangeKind
    node_id: NodeId

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ConfChangeRejected("a membership change needs a node id")

    def apply_to(self, current: Membership) -> Membership:
        """The membership after this change.

        Raises ConfChangeRejected when the change makes no sense against
        ``current`` (adding a member twice, promoting a non-learner, removing
        a stranger or the last voter).
        """
        node = self.node_id
        if self.kind is ConfChangeKind.ADD_LEARNER:
            if node in current.members:
                raise ConfChangeRejected(f"{node} is already a member")
            return Membership(current.voters, current.learners | {node})
        if self.kind is ConfChangeKind.PROMOTE_LEARNER:
            if node not in current.learners:
                raise ConfChangeRejected(f"{node} is not a learner; add it as a learner first")
            return Membership(current.voters | {node}, current.learners - {node})
        if node not in current.members:
            raise ConfChangeRejected(f"{node} is not a member")
        if current.voters == {node}:
            raise ConfChangeRejected(f"{node} is the last voter")
        return Membership(current.voters - {node}, current.learners - {node})


def encode_conf_entry(change: ConfChange, result: Membership) -> bytes:
    body = {
        "kind": change.kind.value,
        "node_id": change.node_id,
        "voters": sorted(result.voters),
        "learners": sorted(result.learners),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def decode_conf_entry(data: bytes) -> tuple[ConfChange, Membership]:
    """Raises InvariantViolation when the bytes are not a conf-change entry."""
    try:
        body = json.loads(data)
        change = ConfChange(ConfChangeKind(body["kind"]), str(body["node_id"]))
        result = Membership(frozenset(body["voters"]), frozenset(body["learners"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvariantViolation(f"undecodable conf-change entry {data!r}: {exc}") from exc
    return change, result
