"""A follower whose committed log a leader contradicts stops, loudly, instead
of answering success (the runtime loop on a real disk)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.node import RaftNode
from sidecar.raft import (
    AppendRequest,
    CommittedLogContradicted,
    Entry,
    HardState,
    Membership,
    RaftConfig,
)
from sidecar.storage.disk import DiskStorage
from tests.node.test_node_runtime import FAST, ListMachine, Wiring, run


def test_a_contradicted_committed_entry_stops_the_node(tmp_path: Path) -> None:
    disk = DiskStorage(str(tmp_path / "b"))
    disk.recover()
    disk.persist(
        HardState(term=2, voted_for=None, commit=3),
        None,
        [Entry(1, 1, data=b"x"), Entry(2, 2, data=b"y"), Entry(2, 3, data=b"z")],
    )
    disk.close()

    async def main() -> None:
        config = RaftConfig("b", Membership(frozenset({"a", "b", "c"})), election_timeout_ticks=50)
        machine = ListMachine()
        node = RaftNode(
            config, DiskStorage(str(tmp_path / "b")), Wiring().outbox(), machine, settings=FAST
        )
        node.start()
        # A "leader" of term 3 claims entry 3 has term 3, below b's commit index.
        node.deliver(
            [
                AppendRequest(
                    term=3,
                    sender="a",
                    recipient="b",
                    prev_log_index=2,
                    prev_log_term=2,
                    entries=(Entry(3, 3, data=b"other"),),
                    leader_commit=3,
                )
            ]
        )
        with pytest.raises(CommittedLogContradicted, match="entry 3 has term 3"):
            await asyncio.wait_for(node.wait(), 10)
        assert isinstance(node.failure, CommittedLogContradicted)
        assert b"other" not in [d for _, d in machine.items], "the contradiction never applied"
        await node.stop()

    run(main)
