"""The sidecar runs on uvloop unless told otherwise, and members on either
loop form one cluster (a rolling change of the setting)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster, Sidecar, running


def _mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _s0_on_asyncio(node: Sidecar) -> list[str]:
    return ["--event-loop", "asyncio"] if node.node_id == "s0" else []


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[Cluster]:
    yield from running(tmp_path, extra_args=_s0_on_asyncio)


def test_uvloop_by_default_and_asyncio_on_request(mixed: Cluster) -> None:
    leader = mixed.leader()
    assert leader.status().leader_id == leader.node_id
    for node in mixed.nodes:
        assert node.process is not None
        uses_uvloop = f"{os.sep}uvloop{os.sep}" in _mapped_files(node.process.pid)
        assert uses_uvloop == (node.node_id != "s0"), node.node_id
    logs = mixed.logs()
    assert '"event_loop": "uvloop"' in logs
    assert '"event_loop": "asyncio"' in logs
