"""The health status follows the node's loop (sidecar/api/health.py), not a timer.

Real nodes wired in-process (as in test_node_runtime), each with a real
health servicer and ``HealthUpdater``: every condition that makes a node
NOT_SERVING must reach the servicer once it happens, through the node's
turn listeners or the end of a grace period, with nothing polling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

from sidecar.api.health import (
    ELECTION_SERVICE,
    LIVENESS_SERVICE,
    HealthUpdater,
    health_servicer,
)
from sidecar.node import NodeStopped, RaftNode
from sidecar.raft import Membership, Message, NotLeader, RaftConfig
from sidecar.storage.disk import DiskStorage
from sidecar.storage.errors import StorageIOError
from tests.node.test_node_runtime import (
    ELECTION_TIMEOUT_TICKS,
    FAST,
    IDS,
    ListMachine,
    Wiring,
    leader_of,
    run,
    until,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WINDOW = 100


class OneWayOutbox:
    """Delivers in-process, except what ``muted`` nodes send (they still hear)."""

    def __init__(self, wiring: Wiring, muted: set[str]) -> None:
        self.wiring = wiring
        self.muted = muted

    def send(self, messages: Sequence[Message]) -> None:
        for m in messages:
            if m.sender in self.muted or {m.sender, m.recipient} & self.wiring.cut:
                continue
            node = self.wiring.nodes.get(m.recipient)
            if node is not None:
                node.deliver([m])


class BreakableDisk(DiskStorage):
    """Real disk storage whose writes of entries fail once ``broken`` is set."""

    broken = False

    def persist(self, hard_state: Any, snapshot: Any, entries: Sequence[Any]) -> None:
        if self.broken and entries:
            raise StorageIOError("injected: the disk is gone")
        super().persist(hard_state, snapshot, entries)


class Watched:
    """A node with its health servicer and updater."""

    def __init__(self, node: RaftNode, disk: BreakableDisk, **health: Any) -> None:
        self.node = node
        self.disk = disk
        self.servicer = health_servicer()
        self.updater = HealthUpdater(self.servicer, node, **health)
        self.published: list[tuple[str, int]] = []
        """Every status set, in order: a short NOT_SERVING spell (an election
        that ends within milliseconds) shows here even if no poll saw it."""
        set_status = self.servicer.set

        async def recording_set(service: str, status: int) -> None:
            self.published.append((service, status))
            await set_status(service, status)

        self.servicer.set = recording_set

    async def wait_published(self, service: str, status: int, since: int) -> None:
        """Wait until ``status`` was set for ``service`` after the first ``since`` sets."""
        await until(lambda: (service, status) in self.published[since:], 20.0)

    async def statuses(self) -> dict[str, int]:
        listed = await self.servicer.List(health_pb2.HealthListRequest(), None)
        return {name: s.status for name, s in listed.statuses.items()}

    async def wait_for(self, service: str, status: int) -> None:
        deadline = asyncio.get_running_loop().time() + 20.0
        while (await self.statuses())[service] != status:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.node.id}: {service!r} never became {status}")
            await asyncio.sleep(0.005)


def start_cluster(tmp: Path, wiring: Wiring, muted: set[str], **health: Any) -> list[Watched]:
    watched = []
    for node_id in IDS:
        config = RaftConfig(
            node_id, Membership(frozenset(IDS)), election_timeout_ticks=ELECTION_TIMEOUT_TICKS
        )
        disk = BreakableDisk(str(tmp / node_id))
        node = RaftNode(config, disk, OneWayOutbox(wiring, muted), ListMachine(), settings=FAST)
        wiring.nodes[node_id] = node
        node.start()
        w = Watched(node, disk, **health)
        w.updater.start()
        watched.append(w)
    return watched


async def stop_all(watched: list[Watched]) -> None:
    for w in watched:
        await w.updater.stop()
        await w.node.stop()


def test_a_follower_that_loses_its_leader_turns_not_serving_and_back(tmp_path: Path) -> None:
    async def main() -> None:
        wiring = Wiring()
        watched = start_cluster(tmp_path, wiring, set())
        try:
            await until(lambda: leader_of(wiring) is not None)
            for w in watched:
                await w.wait_for("", SERVING)
                await w.wait_for(ELECTION_SERVICE, SERVING)
                await w.wait_for(LIVENESS_SERVICE, SERVING)
            old = leader_of(wiring)
            assert old is not None
            follower = next(w for w in watched if w.node is not old)
            # The leader is cut off: the followers' election timers run out,
            # they campaign (knowing no leader) and one of them wins.
            mark = len(follower.published)
            wiring.cut.add(old.id)
            await follower.wait_published("", NOT_SERVING, since=mark)
            await follower.wait_for(LIVENESS_SERVICE, SERVING)  # alive all along
            await until(lambda: follower.node.raft.leader_id not in (None, old.id), 20)
            await follower.wait_for("", SERVING)
        finally:
            await stop_all(watched)

    run(main)


def test_a_storage_failure_turns_liveness_not_serving(tmp_path: Path) -> None:
    async def main() -> None:
        wiring = Wiring()
        watched = start_cluster(tmp_path, wiring, set())
        try:
            await until(lambda: leader_of(wiring) is not None)
            leader = leader_of(wiring)
            target = next(w for w in watched if w.node is leader)
            await target.wait_for(LIVENESS_SERVICE, SERVING)
            target.disk.broken = True
            with contextlib.suppress(NodeStopped, NotLeader):
                await target.node.propose(b"lost")
            await until(lambda: target.node.failure is not None)
            await target.wait_for(LIVENESS_SERVICE, NOT_SERVING)
            await target.wait_for("", NOT_SERVING)
        finally:
            await stop_all(watched)

    run(main)


def test_a_replica_behind_the_cluster_turns_not_serving_after_the_grace(tmp_path: Path) -> None:
    """Its acknowledgements never reach anyone: it keeps its leader and its
    own commit index, but the leader announces a higher cluster commit."""

    async def main() -> None:
        wiring = Wiring()
        muted: set[str] = set()
        watched = start_cluster(tmp_path, wiring, muted, max_apply_lag=0, behind_grace_s=0.3)
        try:
            await until(lambda: leader_of(wiring) is not None)
            leader = leader_of(wiring)
            assert leader is not None
            mute = next(w for w in watched if w.node is not leader)
            await mute.wait_for("", SERVING)
            muted.add(mute.node.id)
            # One append each, more than the leader's window of unacknowledged
            # appends (64): past it, the muted follower receives no new
            # entries, only heartbeats that announce the cluster's commit.
            for i in range(WINDOW):
                await leader.propose(b"x%d" % i)
            await mute.wait_for("", NOT_SERVING)
            assert mute.node.raft.leader_id == leader.id  # it never lost its leader
            muted.clear()  # its acknowledgements arrive again: it catches up
            await mute.wait_for("", SERVING)
        finally:
            await stop_all(watched)

    run(main)


def test_a_turn_listener_that_raises_does_not_stop_the_node(tmp_path: Path) -> None:
    async def main() -> None:
        wiring = Wiring()
        watched = start_cluster(tmp_path, wiring, set())
        calls = 0

        def broken() -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("an observer's bug")

        try:
            for w in watched:
                w.node.turn_listeners.insert(0, broken)
            await until(lambda: leader_of(wiring) is not None)
            leader = leader_of(wiring)
            assert leader is not None
            await leader.propose(b"still-working")
            assert calls > 0
            for w in watched:
                assert w.node.failure is None
                await w.wait_for("", SERVING)  # the listeners after it still run
        finally:
            await stop_all(watched)

    run(main)
