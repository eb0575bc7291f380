"""A tiny deterministic cluster for unit tests of the Raft core (not the simulator).

Theory of operation. Every node is a ``Raft`` with its own
``random.Random(seed)`` and an in-memory disk. Nothing happens by itself:
a test ticks a node, proposes, or delivers messages, and each of those runs
the node's ready batches to completion in the documented order (persist ->
collect messages -> record applied entries and reads -> advance). Messages
wait in one FIFO queue until the test delivers them, so a test can inspect,
drop or reorder any message. There is no time and no randomness beyond the
seeded RNGs: a test run is a pure function of its code.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sidecar.raft import (
    Entry,
    EntryKind,
    Membership,
    Message,
    PersistentState,
    Raft,
    RaftConfig,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
)
from sidecar.storage.memory import MemoryStorage

M = TypeVar("M")

MAX_DELIVERIES = 100_000
"""Bound on one ``deliver_all``: a cluster that keeps talking without ticks is a bug."""


def node_ids(n: int) -> list[str]:
    return [chr(ord("a") + i) for i in range(n)]


class Cluster:
    """N nodes "a", "b", ... with in-memory disks and a manual FIFO network.

    ``voters`` and ``learners`` name the bootstrap membership (default: all
    voters). Nodes listed in neither start with the empty membership, as a
    node joining later does. ``persisted`` gives a node a disk to start from.
    ``config`` overrides RaftConfig fields for every node.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        seed: int = 0,
        voters: Iterable[str] | None = None,
        learners: Iterable[str] = (),
        persisted: dict[str, PersistentState] | None = None,
        **config: Any,
    ) -> None:
        self.ids = node_ids(n)
        voter_set = frozenset(self.ids if voters is None else voters)
        membership = Membership(voter_set, frozenset(learners))
        self.seed = seed
        self.configs: dict[str, RaftConfig] = {}
        self.nodes: dict[str, Raft] = {}
        self.disks: dict[str, MemoryStorage] = {}
        self.applied: dict[str, list[Entry]] = {}
        """Entries handed out for applying, per node, in order (restarts included)."""
        self.installed: dict[str, list[Snapshot]] = {}
        self.read_states: dict[str, list[ReadState]] = {}
        self.failed_reads: dict[str, list[int]] = {}
        self.readies: dict[str, list[Ready]] = {}
        """Every ready batch each node produced, oldest first."""
        self.queue: deque[Message] = deque()
        self.sent: list[Message] = []
        """Every message any node sent, in order."""
        self.isolated: set[str] = set()
        self._incarnation: dict[str, int] = {}
        for node_id in self.ids:
            initial = membership if node_id in membership.members else Membership(frozenset())
            self.configs[node_id] = RaftConfig(
                node_id=node_id, initial_membership=initial, **config
            )
            self.disks[node_id] = MemoryStorage()
            self.applied[node_id] = []
            self.installed[node_id] = []
            self.read_states[node_id] = []
            self.failed_reads[node_id] = []
            self.readies[node_id] = []
            self._incarnation[node_id] = 0
            state = (persisted or {}).get(node_id)
            if state is not None:
                self.disks[node_id] = MemoryStorage(state)
            self.restart(node_id)

    # ---- lifecycle -----------------------------------------------------------

    def restart(self, node_id: str) -> Raft:
        """(Re)start a node from what is on its disk only, with a fresh seeded RNG."""
        self._incarnation[node_id] += 1
        rng = random.Random(f"{self.seed}:{node_id}:{self._incarnation[node_id]}")
        raft = Raft(self.configs[node_id], rng, self.disks[node_id].recover())
        self.nodes[node_id] = raft
        return raft

    def __getitem__(self, node_id: str) -> Raft:
        return self.nodes[node_id]

    def role(self, node_id: str) -> Role:
        """The node's role, read afresh (so type checkers do not narrow it)."""
        return self.nodes[node_id].role

    # ---- ready batches -------------------------------------------------------------

    def process_ready(self, node_id: str) -> list[Ready]:
        """Run every pending ready batch of ``node_id``: persist, send, apply, advance."""
        raft = self.nodes[node_id]
        out: list[Ready] = []
        while raft.has_ready():
            rd = raft.ready()
            self.disks[node_id].persist(rd.hard_state, rd.snapshot, rd.entries)
            self.queue.extend(rd.messages)
            self.sent.extend(rd.messages)
            if rd.snapshot is not None:
                self.installed[node_id].append(rd.snapshot)
            self.applied[node_id].extend(rd.committed_entries)
            self.read_states[node_id].extend(rd.read_states)
            self.failed_reads[node_id].extend(rd.failed_reads)
            self.readies[node_id].append(rd)
            out.append(rd)
            raft.advance(rd)
        return out

    def process_all(self) -> None:
        for node_id in self.ids:
            self.process_ready(node_id)

    # ---- network ---------------------------------------------------------------------

    def isolate(self, node_id: str) -> None:
        """Drop every message to or from ``node_id`` until ``heal``."""
        self.isolated.add(node_id)

    def heal(self) -> None:
        self.isolated.clear()

    def connected(self, m: Message) -> bool:
        return m.sender not in self.isolated and m.recipient not in self.isolated

    def deliver(self, m: Message) -> None:
        """Step one message into its recipient and run the recipient's ready batches."""
        self.nodes[m.recipient].step(m)
        self.process_ready(m.recipient)

    def deliver_all(self, drop: Callable[[Message], bool] | None = None) -> int:
        """Deliver queued messages in FIFO order, including the answers, until quiet.

        Messages to or from isolated nodes, and those ``drop`` selects, are
        lost. Returns how many were delivered.
        """
        self.process_all()
        delivered = 0
        while self.queue:
            m = self.queue.popleft()
            if not self.connected(m) or (drop is not None and drop(m)):
                continue
            self.deliver(m)
            delivered += 1
            if delivered > MAX_DELIVERIES:
                raise AssertionError("the cluster does not quiesce without ticks")
        return delivered

    def take(self, kind: type[M], *, sender: str | None = None, to: str | None = None) -> list[M]:
        """Remove and return the queued messages of one kind (optionally by sender/recipient)."""
        self.process_all()
        taken: list[M] = []
        kept: deque[Message] = deque()
        for m in self.queue:
            if (
                isinstance(m, kind)
                and (sender is None or m.sender == sender)
                and (to is None or m.recipient == to)
            ):
                taken.append(m)
            else:
                kept.append(m)
        self.queue = kept
        return taken

    def drop_all(self) -> None:
        self.process_all()
        self.queue.clear()

    # ---- time and elections -------------------------------------------------------------

    def tick(self, node_id: str, n: int = 1) -> None:
        """Tick one node ``n`` times, running its ready batches; delivers nothing."""
        for _ in range(n):
            self.nodes[node_id].tick()
            self.process_ready(node_id)

    def tick_all(self, n: int = 1) -> None:
        """Tick every node once per round, delivering after each round."""
        for _ in range(n):
            for node_id in self.ids:
                self.nodes[node_id].tick()
                self.process_ready(node_id)
            self.deliver_all()

    def elect(self, node_id: str) -> Raft:
        """Tick ``node_id`` until it campaigns, then deliver until it leads.

        Only ``node_id`` is ticked, so its peers must not be within a leader
        lease (a fresh cluster, or peers that have not heard from a leader
        for an election timeout). Raises AssertionError if it does not win.
        """
        raft = self.nodes[node_id]
        bound = 4 * self.configs[node_id].election_timeout_ticks
        for _ in range(bound):
            if raft.role is Role.LEADER:
                break
            self.tick(node_id)
            if raft.role is not Role.FOLLOWER:
                self.deliver_all()
        if raft.role is not Role.LEADER:
            raise AssertionError(f"{node_id} did not win an election: {raft.role} {raft.term}")
        self.deliver_all()
        return raft

    def leader(self) -> str | None:
        """The leader of the highest term among connected nodes, if any."""
        leaders = [
            i for i in self.ids if i not in self.isolated and self.nodes[i].role is Role.LEADER
        ]
        if not leaders:
            return None
        return max(leaders, key=lambda i: self.nodes[i].term)

    def tick_until_leader(self, max_rounds: int = 200, not_: str | None = None) -> str:
        """Tick every node round by round until a connected leader other than ``not_`` exists."""
        for _ in range(max_rounds):
            found = self.leader()
            if found is not None and found != not_:
                return found
            self.tick_all()
        raise AssertionError("no leader emerged")

    # ---- client helpers ------------------------------------------------------------------

    def propose(self, node_id: str, data: bytes) -> int:
        index = self.nodes[node_id].propose(data)
        self.process_ready(node_id)
        return index

    def commands(self, node_id: str) -> list[bytes]:
        """The NORMAL commands ``node_id`` handed out for applying, in order."""
        return [e.data for e in self.applied[node_id] if e.kind is EntryKind.NORMAL]

    def snapshot_of(self, node_id: str, data: bytes = b"") -> Snapshot:
        """A snapshot of ``node_id`` at its applied index (what a runtime would take)."""
        raft = self.nodes[node_id]
        index = raft.applied_index
        term = raft.log.term(index)
        if term is None:
            raise AssertionError(f"no term at applied index {index}")
        return Snapshot(SnapshotMetadata(index, term, raft.log.membership_at(index)), data)

    def compact(self, node_id: str, data: bytes = b"") -> Snapshot:
        """Snapshot ``node_id`` at its applied index: durable first, then the core forgets."""
        snapshot = self.snapshot_of(node_id, data)
        self.disks[node_id].save_snapshot(snapshot)
        self.nodes[node_id].compact(snapshot)
        return snapshot
