"""A full disk stops the nodes cleanly; once space is back they restart and
lose nothing they acknowledged. A real size-limited tmpfs, really full."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.node import NodeError, RaftNode
from sidecar.raft import RaftError
from sidecar.storage.errors import StorageIOError
from tests.node.test_node_runtime import IDS, Wiring, leader_of, make_node, run, until


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        reason = f"cannot mount a small tmpfs (needs root): {result.stderr.strip()}"
        if os.environ.get("RAFT_SIDECAR_REQUIRE_TOOLS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_stops_nodes_and_restart_loses_nothing_acknowledged(small_disk: Path) -> None:
    async def main() -> None:
        wiring = Wiring()
        for node_id in IDS:
            make_node(small_disk, wiring, node_id)
        await until(lambda: leader_of(wiring) is not None)
        leader = leader_of(wiring)
        assert leader is not None
        acknowledged: list[bytes] = []
        payload = b"x" * 4000
        for i in range(2000):  # 1 MiB fills up long before this
            data = b"%06d" % i + payload
            try:
                await asyncio.wait_for(leader.propose(data), 5)
            except (NodeError, RaftError, TimeoutError):
                break
            acknowledged.append(data)
        else:
            raise AssertionError("the disk never filled up")
        await until(lambda: any(n.failure is not None for n in wiring.nodes.values()))
        failures = [n.failure for n in wiring.nodes.values() if n.failure is not None]
        assert all(isinstance(f, StorageIOError) for f in failures), failures
        assert "No space left on device" in str(failures[0])
        for node in list(wiring.nodes.values()):
            await node.stop()

        # Space comes back; the nodes start again from what is on disk.
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        wiring = Wiring()
        machines = {i: make_node(small_disk, wiring, i)[1] for i in IDS}
        await until(lambda: leader_of(wiring) is not None, seconds=20)
        new_leader: RaftNode | None = leader_of(wiring)
        assert new_leader is not None
        await new_leader.read_barrier()
        applied = [d for _, d in machines[new_leader.id].items]
        missing = [d[:6] for d in acknowledged if d not in applied]
        assert not missing, f"acknowledged proposals lost after the disk filled up: {missing}"
        for node in list(wiring.nodes.values()):
            await node.stop()

    run(main, 120)
