"""Throughput of the pure Raft core: ``python -m bench.raft_core`` (``make bench``).

A 3-node cluster runs in one thread with no I/O: each node's "disk" is a list
in memory and messages are delivered immediately, in FIFO order. One *step*
is one message delivered or one tick, each followed by the node's Ready
processing (persist, send, apply, advance). Workloads:

* idle: every node ticks round-robin; only heartbeats flow;
* single proposals: propose one entry, run until the leader commits it, repeat;
* batched proposals: ``propose_batch`` of 100, pipelined (a new batch whenever
  fewer than ``PIPELINE`` batches are uncommitted).

Each runs for ``--seconds`` of wall time. Last, the deterministic simulator
(``tests.sim.cluster.Simulation``) runs 2,000 steps over 20 seeds, faults and
checkers included, for comparison. Figures are machine-dependent; compare runs
on one machine only.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.raft import EntryKind, Membership, Message, Raft, RaftConfig, Role
from sidecar.storage.memory import MemoryStorage
from tests.sim.cluster import Simulation

IDS = ("a", "b", "c")
BATCH = 100
PIPELINE = 4
SIM_SEEDS = 20
SIM_STEPS = 2_000


class BenchCluster:
    """Three nodes, in-memory disks, immediate FIFO delivery, step counting."""

    def __init__(self, seed: int = 0) -> None:
        membership = Membership(frozenset(IDS))
        self.nodes: dict[str, Raft] = {}
        self.disks: dict[str, MemoryStorage] = {}
        for node_id in IDS:
            cfg = RaftConfig(
                node_id=node_id,
                initial_membership=membership,
                max_uncommitted_entries=BATCH * PIPELINE * 4,
            )
            self.nodes[node_id] = Raft(cfg, random.Random(f"{seed}:{node_id}"))
            self.disks[node_id] = MemoryStorage()
        self.queue: deque[Message] = deque()
        self.steps = 0
        self.applied = 0
        """NORMAL entries the leader handed out for applying."""

    def process(self, node_id: str) -> None:
        raft = self.nodes[node_id]
        disk = self.disks[node_id]
        while raft.has_ready():
            rd = raft.ready()
            disk.persist(rd.hard_state, rd.snapshot, rd.entries)
            self.queue.extend(rd.messages)
            if raft.role is Role.LEADER:
                self.applied += sum(1 for e in rd.committed_entries if e.kind is EntryKind.NORMAL)
            raft.advance(rd)

    def deliver_one(self) -> bool:
        if not self.queue:
            return False
        m = self.queue.popleft()
        self.nodes[m.recipient].step(m)
        self.steps += 1
        self.process(m.recipient)
        return True

    def tick_round(self) -> None:
        for node_id in IDS:
            self.nodes[node_id].tick()
            self.steps += 1
            self.process(node_id)

    def leader(self) -> Raft | None:
        for node_id in IDS:
            if self.nodes[node_id].role is Role.LEADER:
                return self.nodes[node_id]
        return None

    def elect(self) -> Raft:
        for _ in range(1_000):
            self.tick_round()
            while self.deliver_one():
                pass
            found = self.leader()
            if found is not None and found.commit_index >= found.log.last_index:
                return found
        raise RuntimeError("no leader")


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    seconds: float
    steps: int
    committed: int

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds

    @property
    def committed_per_s(self) -> float:
        return self.committed / self.seconds


def _timed(name: str, seconds: float, body: Callable[[BenchCluster], None]) -> Result:
    """Run ``body`` on a fresh cluster with a leader, repeatedly, for ``seconds``."""
    c = BenchCluster()
    c.elect()
    steps0, applied0 = c.steps, c.applied
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            body(c)
    elapsed = time.perf_counter() - started
    return Result(name, elapsed, c.steps - steps0, c.applied - applied0)


def _idle(c: BenchCluster) -> None:
    c.tick_round()
    while c.deliver_one():
        pass


def _single(c: BenchCluster) -> None:
    leader = c.leader()
    if leader is None:
        raise RuntimeError("leader lost")
    index = leader.propose(b"x" * 16)
    c.process(leader.id)
    while leader.commit_index < index:
        if not c.deliver_one():
            raise RuntimeError("stalled before commit")
    # Let the commit index reach the followers before the next proposal.
    while c.deliver_one():
        pass


_PAYLOAD = [b"x" * 16] * BATCH


def _batched(c: BenchCluster) -> None:
    leader = c.leader()
    if leader is None:
        raise RuntimeError("leader lost")
    while leader.log.last_index - leader.commit_index < BATCH * PIPELINE:
        leader.propose_batch(_PAYLOAD)
        c.process(leader.id)
    for _ in range(8):
        if not c.deliver_one():
            break


def _simulator() -> Result:
    steps = 0

    class CountingSimulation(Simulation):
        def step(self) -> None:
            nonlocal steps
            steps += 1
            super().step()

    started = time.perf_counter()
    for seed in range(SIM_SEEDS):
        CountingSimulation(seed).run(SIM_STEPS)
    elapsed = time.perf_counter() - started
    return Result(f"simulator ({SIM_SEEDS} seeds x {SIM_STEPS})", elapsed, steps, 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="wall time per workload")
    args = parser.parse_args(argv)
    wall = time.perf_counter()
    results = [
        _timed("idle (ticks + heartbeats)", args.seconds, _idle),
        _timed("single proposals", args.seconds, _single),
        _timed(f"batched proposals ({BATCH}/batch)", args.seconds, _batched),
        _simulator(),
    ]
    header = f"{'workload':<36} {'time s':>7} {'steps':>10} {'steps/s':>10} {'entries/s':>10}"
    print(header)
    print("-" * len(header))
    for r in results:
        committed = f"{r.committed_per_s:>10,.0f}" if r.committed else f"{'-':>10}"
        print(f"{r.name:<36} {r.seconds:>7.2f} {r.steps:>10,} {r.steps_per_s:>10,.0f} {committed}")
    print(f"\ntotal wall time: {time.perf_counter() - wall:.2f} s")


if __name__ == "__main__":
    main()
