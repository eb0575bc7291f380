"""Disk loss in the simulator: which node may lose its disk, and how the
leader admits the new incarnation (issue 11, "Amnesia never votes").

With the amnesia guard (the product's behaviour) a node that lost its disk
comes back as a new Raft server, ``<name>~<incarnation>``
(``sidecar.serverid``), with no membership of its own: it joined, it did not
bootstrap. Only the log admits it, through the leader-side plan of the
runtime (``sidecar.membership.plan_change``, the real pure function): remove
the stale incarnation while the voters that remain and answer keep a quorum,
add the new one as a learner, promote it once caught up, one change at a time.

``plan_change`` is fed what the runtime learns from hellos. A server "said
hello" to the leader when it is running and the links between it and the
leader are up both ways (a hello is a round trip). The runtime admits every
name of ``--peers``; the simulator hands it only the names that lost a disk,
so seeds without disk loss keep the schedule they always had (spares stay the
random operator's business). Nobody is ever ``gone``: every name is a contact
(scale-down by absence is the runtime's business, not this fault's).

A disk loss is a permanent failure of a server, and Raft tolerates a
minority of those. The fault therefore strikes only while no configuration
that may be in force (the committed one, and the newest in the log of every
member of it) still holds a server that lost its disk, and only in
configurations of at least three voters: beyond that no leader could ever be
elected again, which is disaster recovery (``raft-sidecar recover``), not
this fault.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.membership import Planned, plan_change
from sidecar.raft import EntryKind, Membership, decode_conf_entry
from sidecar.serverid import node_name

if TYPE_CHECKING:
    from tests.sim.cluster import SimNode, Simulation


class AmnesiaGuardOff:
    """Marker for a raft factory: a node that lost its disk restarts under its
    OLD server id with empty storage (term 0, no vote, empty log) and the
    cluster's initial membership, so it counts for every quorum at once: the
    behaviour issue 11 saw before the guard. The guard lives in the runtime
    (the identity file), not in the core, so this mutant switches the
    simulator's restart instead of overriding a method of ``Raft``."""

    amnesia_guard = False


def amnesia_guard_of(raft_factory: object) -> bool:
    return bool(getattr(raft_factory, "amnesia_guard", True))


def disk_membership(node: SimNode) -> Membership:
    """The newest configuration a node would start with or runs with."""
    if node.raft is not None:
        return node.raft.membership
    for entry in reversed(node.disk.recover().entries):
        if entry.kind is EntryKind.CONF_CHANGE:
            return decode_conf_entry(entry.data)[1]
    if node.disk.snapshot is not None:
        return node.disk.snapshot.metadata.membership
    return node.config.initial_membership


def may_lose_disk(sim: Simulation, node: SimNode) -> bool:
    """Whether ``node`` may lose its disk now and the cluster stay recoverable."""
    committed = sim.committed_membership()
    configs = [committed] + [
        disk_membership(sim.nodes[member]) for member in sorted(committed.members)
    ]
    retired = {n.id for n in sim.nodes.values() if n.retired}
    for config in configs:
        if retired & config.members:
            return False
        if node.id in config.voters and len(config.voters) < 3:
            return False
    return True


def heard_by(sim: Simulation, leader: SimNode) -> dict[str, str]:
    """Name -> the server that said hello to ``leader`` (itself included)."""
    current = {}
    for server in sim.current_servers():
        other = sim.nodes[server]
        if other.raft is None:
            continue
        if server == leader.id or (
            (server, leader.id) not in sim.cut and (leader.id, server) not in sim.cut
        ):
            current[other.name] = server
    return current


def plan_admission(sim: Simulation, leader: SimNode) -> Planned | None:
    """The runtime's next change for the names that lost a disk, or None."""
    raft = leader.raft
    assert raft is not None
    current = heard_by(sim, leader)
    members = raft.membership.members
    live = frozenset({leader.id} | {m for m in members if current.get(node_name(m)) == m})
    return plan_change(
        me=leader.id,
        membership=raft.membership,
        names=sorted(sim.wiped_names),
        current=current,
        live=live,
        match={peer: pr.match for peer, pr in sorted(raft.progress.items())},
        commit_index=raft.commit_index,
        contacts=frozenset(sim.names()),
    )
