"""``AdminService/SaveSnapshot``: a backup of a running cluster.

``raft-sidecar snapshot save`` on a running sidecar asks it, over the admin
socket, for the elections state after a linearizable read: a ReadIndex
round through the Raft leader, then waiting until this node has applied that
index (``RaftNode.read_anywhere``, what ValidateToken does). So the backup
holds every grant acknowledged before the call began, on whichever node
the operator runs it (etcdctl's ``snapshot save`` reads from one member the
same way). The state, its index and its term are taken in one step of the
event loop, with nothing applied in between, and written in the backup
format (``sidecar.backup``) that ``snapshot restore`` reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.backup import Backup, encode_backup
from sidecar.machine import ElectionsMachine
from sidecar.node import NodeError, RaftNode
from sidecar.raft import RaftError
from sidecar.transport.errors import AdminRefused, TransportError


async def live_backup(
    node: RaftNode,
    machine: ElectionsMachine,
    cluster_id: str,
    *,
    wall_clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
) -> bytes:
    """The backup file of the state at a linearizable read point.

    Raises AdminRefused("UNAVAILABLE") when no leader confirms the read.
    """
    try:
        await node.read_anywhere()
    except (NodeError, RaftError, TransportError) as exc:
        raise AdminRefused(
            "UNAVAILABLE", f"no Raft leader confirmed the read, retry: {exc}"
        ) from exc
    # From here to encode nothing awaits: the state, its index and its term
    # belong together.
    index = node.raft.applied_index
    term = node.raft.log.term(index)
    if term is None:  # the applied index is always in the log or its base
        raise AdminRefused("INTERNAL", f"no term known at the applied index {index}")
    return encode_backup(
        Backup(
            cluster_id=cluster_id,
            index=index,
            term=term,
            created_at_unix_ms=wall_clock_ms(),
            state=machine.snapshot(),
        )
    )
