"""The runtime loop (sidecar/node.py) with real storage on disk and real clocks.

Peers are wired in-process (the gRPC transport has its own tests); every
condition is awaited with a deadline, never assumed after a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from sidecar.node import NodeSettings, NodeStopped, OutcomeUnknown, RaftNode
from sidecar.raft import Membership, Message, NotLeader, RaftConfig, Role
from sidecar.storage.disk import DiskStorage

IDS = ["a", "b", "c"]
FAST = NodeSettings(tick_seconds=0.01, snapshot_every_entries=50)


class ListMachine:
    """A state machine that appends every command to a list."""

    def __init__(self) -> None:
        self.items: list[tuple[int, bytes]] = []

    def apply(self, index: int, data: bytes) -> object:
        self.items.append((index, data))
        return len(self.items)

    def refusal(self, data: bytes, *, forwarded: bool) -> str | None:
        return None

    def snapshot(self) -> bytes:
        return json.dumps([[i, d.decode()] for i, d in self.items]).encode()

    def restore(self, index: int, data: bytes) -> None:
        self.items = [(i, d.encode()) for i, d in json.loads(data)]


class Wiring:
    """In-process delivery between the nodes that are up."""

    def __init__(self) -> None:
        self.nodes: dict[str, RaftNode] = {}
        self.cut: set[str] = set()
        """Nodes whose Raft messages are dropped, both ways."""

    def outbox(self) -> _Outbox:
        return _Outbox(self)


class _Outbox:
    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring

    def send(self, messages: Sequence[Message]) -> None:
        for m in messages:
            if {m.sender, m.recipient} & self.wiring.cut:
                continue
            node = self.wiring.nodes.get(m.recipient)
            if node is not None:
                node.deliver([m])


ELECTION_TIMEOUT_TICKS = 30
"""300 ms: the three nodes share one event loop, and on a loaded machine a
shorter timeout makes them elect for nothing while a test waits on a leader."""


def make_node(tmp: Path, wiring: Wiring, node_id: str) -> tuple[RaftNode, ListMachine]:
    config = RaftConfig(
        node_id, Membership(frozenset(IDS)), election_timeout_ticks=ELECTION_TIMEOUT_TICKS
    )
    machine = ListMachine()
    node = RaftNode(
        config, DiskStorage(str(tmp / node_id)), wiring.outbox(), machine, settings=FAST
    )
    wiring.nodes[node_id] = node
    node.start()
    return node, machine


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def leader_of(wiring: Wiring) -> RaftNode | None:
    leaders = [n for n in wiring.nodes.values() if n.raft.role is Role.LEADER]
    return leaders[0] if len(leaders) == 1 else None


def run(test: Callable[[], Awaitable[None]], seconds: float = 60) -> None:
    """Run an async test; on a hang, print every task's stack and fail."""

    async def guarded() -> None:
        task = asyncio.ensure_future(test())
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if not done:
            for other in asyncio.all_tasks():
                other.print_stack(limit=8)
            task.cancel()
            raise AssertionError(f"the test did not finish within {seconds} s")
        task.result()

    asyncio.run(guarded())


def test_elects_replicates_applies_and_survives_leader_loss(tmp_path: Path) -> None:
    async def main() -> None:
        wiring = Wiring()
        machines = {i: make_node(tmp_path, wiring, i)[1] for i in IDS}
        await until(lambda: leader_of(wiring) is not None)
        leader = leader_of(wiring)
        assert leader is not None
        results = await asyncio.gather(*(leader.propose(b"cmd-%d" % i) for i in range(20)))
        indices = [index for index, _ in results]
        assert indices == sorted(indices) and len(set(indices)) == 20
        await until(lambda: all(len(m.items) >= 20 for m in machines.values()))
        assert len({tuple(m.items) for m in machines.values()}) == 1, "same order everywhere"

        follower = next(n for n in wiring.nodes.values() if n is not leader)
        with pytest.raises(NotLeader) as refused:
            await follower.propose(b"nope")
        assert refused.value.leader_hint == leader.id

        await leader.stop()
        del wiring.nodes[leader.id]
        # On a loaded machine the survivors may change leader once more:
        # propose to whoever leads until one accepts.
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            await until(lambda: leader_of(wiring) is not None)
            new_leader = leader_of(wiring)
            assert new_leader is not None and new_leader.id != leader.id
            try:
                index, _ = await new_leader.propose(b"after-failover")
                assert await new_leader.read_barrier() >= index
                break
            except NotLeader:
                assert asyncio.get_running_loop().time() < deadline, "no stable leader"
        assert index > max(indices)
        for node in list(wiring.nodes.values()):
            await node.stop()

    run(main)


def test_restart_restores_state_from_snapshot_and_log(tmp_path: Path) -> None:
    async def main() -> None:
        wiring = Wiring()
        for i in IDS:
            make_node(tmp_path, wiring, i)
        await until(lambda: leader_of(wiring) is not None)
        leader = leader_of(wiring)
        assert leader is not None
        for batch in range(4):  # beyond snapshot_every_entries: compaction happens
            await asyncio.gather(*(leader.propose(b"v%d-%d" % (batch, i)) for i in range(40)))
        expected_last = leader.raft.applied_index
        assert leader.raft.log.base.index > 0, "the log was compacted"
        for node in list(wiring.nodes.values()):
            await node.stop()

        wiring = Wiring()
        machines = {i: make_node(tmp_path, wiring, i)[1] for i in IDS}
        await until(lambda: leader_of(wiring) is not None)
        await until(lambda: all(m.items and m.items[-1][0] >= 160 for m in machines.values()))
        payloads = [d for _, d in machines["a"].items]
        assert payloads[:160] == [b"v%d-%d" % (b, i) for b in range(4) for i in range(40)]
        leader = leader_of(wiring)
        assert leader is not None
        index, _ = await leader.propose(b"next")
        assert index > expected_last, "indices (fencing tokens) keep increasing after restart"
        for node in list(wiring.nodes.values()):
            await node.stop()

    run(main)


class SlowableDisk(DiskStorage):
    """Real disk storage that can be made slow, and records which thread wrote."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.delay_s = 0.0
        self.synced_on: list[str] = []

    def persist(self, hard_state: Any, snapshot: Any, entries: Sequence[Any]) -> None:
        if entries:
            self.synced_on.append(threading.current_thread().name)
            time.sleep(self.delay_s)  # a slow fsync: blocks whichever thread runs it
        super().persist(hard_state, snapshot, entries)


async def propose_until(wiring: Wiring, prefix: bytes, condition: Callable[[], bool]) -> None:
    """Propose one command at a time, through whichever node leads, until
    ``condition`` holds (a lagging follower gets several entries per write,
    so the count of writes varies; on a loaded machine leadership may move)."""
    deadline = asyncio.get_running_loop().time() + 20.0
    i = 0
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        leader = leader_of(wiring)
        if leader is not None:
            with contextlib.suppress(NotLeader):
                await leader.propose(prefix + b"-%d" % i)
            i += 1
        await asyncio.sleep(0.01)


def test_a_follower_writes_on_the_loop_until_its_disk_is_slow(tmp_path: Path) -> None:
    """Fast disk: a follower's synced writes skip the trip to the disk thread.
    Once one write took longer than the limit, writes go to the disk thread,
    so a slow disk cannot stall the follower's event loop (its API, its
    transport) again.

    The limit (30 ms) and the slow disk's delay (200 ms) are far apart, so
    which side of the limit a write falls on does not depend on how busy the
    machine is; phases end on outcomes, not on counts of writes."""

    async def main() -> None:
        wiring = Wiring()
        disks: dict[str, SlowableDisk] = {}
        settings = NodeSettings(tick_seconds=0.01, inline_sync_limit_s=0.03)
        for node_id in IDS:
            disks[node_id] = SlowableDisk(str(tmp_path / node_id))
            # The nodes share one event loop here, so a write on the loop
            # stalls all three: an election timeout of 3 s outlasts the slow
            # write, even on a loaded machine, so leadership (and with it the
            # kind of write) normally stays put; proposals follow it if not.
            config = RaftConfig(node_id, Membership(frozenset(IDS)), election_timeout_ticks=300)
            node = RaftNode(
                config, disks[node_id], wiring.outbox(), ListMachine(), settings=settings
            )
            wiring.nodes[node_id] = node
            node.start()
        await until(lambda: leader_of(wiring) is not None)
        leader = leader_of(wiring)
        assert leader is not None
        follower = next(i for i in IDS if i != leader.id)
        disk = disks[follower]
        loop_thread = threading.current_thread().name

        await propose_until(wiring, b"fast", lambda: loop_thread in disk.synced_on)

        disk.delay_s = 0.2  # far above the 30 ms limit
        disk.synced_on.clear()
        await propose_until(wiring, b"slow", lambda: len(disk.synced_on) >= 3)
        # At most the first slow write was made on the loop (the one before
        # it was fast); every later one went to the disk thread.
        assert all(name.startswith(f"disk-{follower}") for name in disk.synced_on[1:]), (
            disk.synced_on
        )

        disk.delay_s = 0.0  # fast again: back on the loop after one fast write
        disk.synced_on.clear()
        await propose_until(wiring, b"again", lambda: loop_thread in disk.synced_on)
        for node in list(wiring.nodes.values()):
            await node.stop()

    run(main)


def test_calls_after_stop_fail_at_once(tmp_path: Path) -> None:
    """A proposal, a read or a wait made after stop() raises NodeStopped
    instead of waiting for a loop that is gone (issue 13)."""

    async def main() -> None:
        wiring = Wiring()
        node, _ = make_node(tmp_path, wiring, "a")
        await node.stop()
        for call in (node.propose(b"x"), node.read_barrier(), node.wait_applied(10**6)):
            with pytest.raises(NodeStopped):
                await asyncio.wait_for(call, 5)

    run(main)


class _ForwardInProcess:
    """A follower's forwarder: the leader appends the command in-process (the
    forwarding path stays up while the follower's Raft link is cut)."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring

    async def propose(self, leader: str, command: bytes) -> tuple[int, int]:
        return await self.wiring.nodes[leader].append_for_peer(command)

    async def read_index(self, leader: str) -> int:
        raise AssertionError("not used")

    async def renew_lease(self, leader: str, election: str, token: int) -> tuple[bool, int]:
        raise AssertionError("not used")


def test_a_forwarded_proposal_that_arrives_inside_a_snapshot_is_answered(tmp_path: Path) -> None:
    """A follower forwards a proposal, then misses the log until the leader
    has compacted past it: the entry reaches the follower inside a snapshot,
    never one by one. Its caller is answered (OutcomeUnknown: ask again,
    commands are idempotent) instead of waiting for good."""

    async def main() -> None:
        wiring = Wiring()
        for node_id in IDS:
            make_node(tmp_path, wiring, node_id)
        await until(lambda: leader_of(wiring) is not None)
        leader = leader_of(wiring)
        assert leader is not None
        follower = wiring.nodes[next(i for i in IDS if i != leader.id)]
        follower.forwarder = _ForwardInProcess(wiring)

        wiring.cut.add(follower.id)
        waiting = asyncio.ensure_future(follower.submit(b"forwarded"))
        for i in range(3 * FAST.snapshot_every_entries):
            await leader.propose(b"later-%d" % i)
        await until(lambda: leader.raft.log.base.index > follower.raft.applied_index + 1)
        assert not waiting.done()
        wiring.cut.clear()

        with pytest.raises(OutcomeUnknown, match="inside a snapshot"):
            await asyncio.wait_for(waiting, 20)
        assert follower.raft.applied_index >= leader.raft.log.base.index
        for node in wiring.nodes.values():
            await node.stop()

    run(main)
