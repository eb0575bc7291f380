"""A Raft leader whose loop is stalled by a slow disk must not renew leases.

Three in-process nodes on real disks; the leader's disk is held in the middle
of a write, so its loop stops (no heartbeats) while its event loop still
serves keep-alives. The other two elect a new leader; the stalled one still
believes it leads. It must not acknowledge a renewal then, and it must refuse
once its loop resumes and it learns the new term.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sidecar.elections import ApplyResult, Campaign, encode_command
from sidecar.leases import LeaseKeeper, RenewalTimedOut
from sidecar.machine import ElectionsMachine
from sidecar.node import NodeSettings, RaftNode
from sidecar.raft import Membership, NotLeader, RaftConfig, Role
from sidecar.storage.disk import DiskStorage
from tests.node.test_node_runtime import (
    ELECTION_TIMEOUT_TICKS,
    IDS,
    Wiring,
    leader_of,
    run,
    until,
)

# Every synced write goes to the disk thread, so a held write stalls the Raft
# loop but not the event loop (as a slow fsync does in production).
KEY_DIGEST = "0" * 64
SETTINGS = NodeSettings(tick_seconds=0.01, inline_sync_limit_s=0.0)


class GatedDisk(DiskStorage):
    """Real disk storage whose writes of entries can be held at a gate."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()

    def persist(self, hard_state: Any, snapshot: Any, entries: Sequence[Any]) -> None:
        if entries and not self.gate.is_set():
            self.held.set()
            self.gate.wait(60)
        super().persist(hard_state, snapshot, entries)


async def _three_nodes(
    tmp_path: Path,
) -> tuple[Wiring, dict[str, GatedDisk], dict[str, ElectionsMachine]]:
    """Three started in-process nodes on gated real disks, once one leads."""
    wiring = Wiring()
    disks: dict[str, GatedDisk] = {}
    machines: dict[str, ElectionsMachine] = {}
    for node_id in IDS:
        disks[node_id] = GatedDisk(str(tmp_path / node_id))
        machines[node_id] = ElectionsMachine()
        config = RaftConfig(
            node_id, Membership(frozenset(IDS)), election_timeout_ticks=ELECTION_TIMEOUT_TICKS
        )
        node = RaftNode(
            config, disks[node_id], wiring.outbox(), machines[node_id], settings=SETTINGS
        )
        wiring.nodes[node_id] = node
        node.start()
    await until(lambda: leader_of(wiring) is not None)
    return wiring, disks, machines


def _campaign(election: str) -> Campaign:
    return Campaign(
        election=election,
        candidate="w1",
        ttl_ms=5000,
        key_digest=KEY_DIGEST,
        proposed_at_unix_ms=0,
    )


async def _grant(leader: RaftNode) -> int:
    """Grant settlement-eur to w1 through ``leader``; its token."""
    _, result = await leader.propose(encode_command(_campaign("settlement-eur")))
    assert isinstance(result, ApplyResult) and result.granted is not None
    return result.granted.token


def test_a_stalled_leader_does_not_renew_after_a_new_leader_is_elected(tmp_path: Path) -> None:
    async def main() -> None:
        wiring, disks, machines = await _three_nodes(tmp_path)
        old = leader_of(wiring)
        assert old is not None
        leases = LeaseKeeper(old, machines[old.id])
        token = await _grant(old)
        assert await leases.renew("settlement-eur", token) == (True, 5000)

        # Stall the leader's loop inside a write, then let the others move on.
        disks[old.id].gate.clear()
        stalled = asyncio.ensure_future(old.propose(encode_command(_campaign("settlement-usd"))))
        stalled.add_done_callback(lambda f: f.cancelled() or f.exception())
        await until(disks[old.id].held.is_set)
        others = [n for n in wiring.nodes.values() if n is not old]
        await until(lambda: any(n.raft.role is Role.LEADER for n in others), seconds=20)
        assert old.raft.role is Role.LEADER, "the stalled leader still believes it leads"

        renewal = asyncio.ensure_future(leases.renew("settlement-eur", token))
        done, _ = await asyncio.wait({renewal}, timeout=1.0)
        assert not done, f"a stalled leader acknowledged a renewal: {renewal.result()}"

        # Its loop resumes, meets the new term, and the renewal is refused.
        disks[old.id].gate.set()
        with pytest.raises(NotLeader):
            await asyncio.wait_for(renewal, 20)
        with pytest.raises(NotLeader):
            await leases.renew("settlement-eur", token)
        for node in list(wiring.nodes.values()):
            await node.stop()

    run(main)


def test_a_renewal_the_leader_cannot_confirm_gives_up_after_its_deadline(tmp_path: Path) -> None:
    """The leader's loop is held in a write: its renewal neither acknowledges
    nor waits for ever; the worker's keep-alive stream, answered in order,
    goes on to its next request."""

    async def main() -> None:
        wiring, disks, machines = await _three_nodes(tmp_path)
        leader = leader_of(wiring)
        assert leader is not None
        leases = LeaseKeeper(leader, machines[leader.id], renew_timeout_s=0.5)
        token = await _grant(leader)

        disks[leader.id].gate.clear()
        stalled = asyncio.ensure_future(leader.propose(encode_command(_campaign("settlement-usd"))))
        stalled.add_done_callback(lambda f: f.cancelled() or f.exception())
        await until(disks[leader.id].held.is_set)
        with pytest.raises(RenewalTimedOut, match=r"not confirmed within 0\.5 s"):
            await asyncio.wait_for(leases.renew("settlement-eur", token), 10)

        disks[leader.id].gate.set()
        for node in list(wiring.nodes.values()):
            await node.stop()

    run(main)
