"""A whole Raft cluster in one thread: fake disks, a faulty network, one seed.

Theory of operation. Time is an integer; every node ticks at its own rate
(clock skew) and every message is delivered after a random delay, so ordering
comes from one priority queue of events. A *step* pops one event (a tick or a
delivery), feeds it to its node, and lets the node's ready batches run to
completion: persist to the node's MemoryStorage, send into the network, apply to the
node's state machine, advance. Then, with probabilities drawn from the seed,
one action may follow: a client proposal or read, a crash (clean, or torn in
the middle of a write, losing what was not yet written), a restart from what
is on disk only, a partition or its healing, a compaction, a membership change
or a leadership transfer, or a disk loss (``amnesia.py``): the node restarts
with empty storage under a new server id, and the leader admits it through
the log.

After the safety phase comes the liveness phase: the network heals, every
node restarts, faults stop, and a leader must appear and commit a proposal
within a bounded number of election timeouts.

Everything random comes from ``random.Random`` instances seeded from the run's
seed, and every collection that could leak order is iterated sorted.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.raft import (
    ConfChange,
    ConfChangeKind,
    EntryKind,
    Membership,
    Message,
    PersistentState,
    Raft,
    RaftConfig,
    RaftError,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    SnapshotRequest,
    decode_conf_entry,
    split_messages,
)
from sidecar.serverid import server_id
from sidecar.storage.memory import MemoryStorage
from tests.sim.amnesia import amnesia_guard_of, may_lose_disk, plan_admission
from tests.sim.checkers import Checkers, SafetyViolation, chain_digest
from tests.sim.leases import LeaseCode, LeaseLayer
from tests.sim.swarm import TICK_UNITS, SwarmSettings
from tests.sim.trace import TraceEvent

RaftFactory = Callable[[RaftConfig, random.Random, PersistentState], Raft]

LIVENESS_ELECTION_TIMEOUTS = 30
"""The liveness phase must elect a leader and commit within this many election timeouts."""


class LivenessViolation(AssertionError):
    pass


@dataclass
class SimNode:
    id: str
    """The Raft server id: the name, or ``<name>~<incarnation>`` after a disk loss."""
    config: RaftConfig
    tick_interval: int
    name: str = ""
    retired: bool = False
    """The server lost its disk: it never runs again (its disk stays as it
    was, what it acknowledged while it lived, for the durability checker)."""
    disk: MemoryStorage = field(default_factory=MemoryStorage)
    raft: Raft | None = None
    incarnation: int = 0
    sm_index: int = 0
    sm_digest: int = 0
    sm_commit_seen: int = 0
    """The highest commit index the checkers have verified for this node."""
    role: Role = Role.FOLLOWER

    def __post_init__(self) -> None:
        self.name = self.name or self.id


def _encode_sm(index: int, digest: int, elections: bytes = b"") -> bytes:
    """A snapshot: the digest state machine, and the elections state in lease mode."""
    head = b"%d:%d" % (index, digest)
    return head + b"|" + elections if elections else head


def _decode_sm(data: bytes) -> tuple[int, int]:
    index, digest = data.split(b"|", 1)[0].split(b":")
    return int(index), int(digest)


def _elections_of(data: bytes) -> bytes:
    return data.split(b"|", 1)[1] if b"|" in data else b""


@dataclass(order=True)
class _Event:
    time: int
    seq: int
    kind: str = field(compare=False)
    node: str = field(compare=False)
    incarnation: int = field(compare=False, default=0)
    message: Message | None = field(compare=False, default=None)
    payload: Callable[[], None] | None = field(compare=False, default=None)
    """What a "lease" event runs (``leases.py``)."""


class Simulation:
    def __init__(
        self,
        seed: int,
        raft_factory: RaftFactory = Raft,
        settings: SwarmSettings | None = None,
        trace_length: int = 60,
        leases: LeaseCode | None = None,
    ) -> None:
        self.seed = seed
        self.settings = settings or SwarmSettings.draw(seed)
        self.raft_factory = raft_factory
        self.amnesia_guard = amnesia_guard_of(raft_factory)
        self.wiped_names: set[str] = set()
        """Names that came back under a new server id; the leader admits them."""
        self.admissions: list[tuple[ConfChangeKind, str]] = []
        """The changes the leader-side driver proposed, in order."""
        self.rng = random.Random(f"sched:{seed}")
        self.check = Checkers()
        self.check.disk_of = lambda node_id: self.nodes[node_id].disk
        self.now = 0
        self._seq = 0
        self._events: list[_Event] = []
        self.trace: deque[tuple[int, TraceEvent]] = deque(maxlen=trace_length)
        self.cut: set[tuple[str, str]] = set()
        self.loss = self.settings.loss
        self.duplication = self.settings.duplication
        self.delay_max = self.settings.delay_max
        self.faults_enabled = True
        self.tear_write: Callable[[SimNode, Ready], bool] | None = None
        """Scripted fault for scenarios: the first write this selects is torn
        (nothing of it reaches the disk) and the node crashes; then it is cleared."""
        self._proposal_counter = 0
        self._read_counter = 0
        self._reads: dict[int, int] = {}  # request id -> commit index required
        self.leases: LeaseLayer | None = None
        """Lease mode: workers, sidecars' lease code and lease clocks on top (``leases.py``)."""
        self.stats: dict[str, int] = {
            "elections": 0,
            "crashes": 0,
            "torn_crashes": 0,
            "snapshots_sent": 0,
            "conf_changes": 0,
            "transfers": 0,
            "reads": 0,
            "disk_losses": 0,
            "admissions": 0,
        }

        s = self.settings
        ids = [f"n{i}" for i in range(1, s.voters + s.spares + 1)]
        initial = Membership(voters=frozenset(ids[: s.voters]))
        self.nodes: dict[str, SimNode] = {}
        for i, node_id in enumerate(ids):
            cfg = RaftConfig(
                node_id=node_id,
                initial_membership=initial if i < s.voters else Membership(frozenset()),
                election_timeout_ticks=s.election_timeout_ticks,
                heartbeat_ticks=s.heartbeat_ticks,
                max_entries_per_append=s.max_entries_per_append,
                max_inflight_appends=s.max_inflight_appends,
                max_uncommitted_entries=200,
                pre_vote=s.pre_vote,
                check_quorum=s.check_quorum,
            )
            skew = self.rng.uniform(1 - s.clock_skew, 1 + s.clock_skew)
            self.nodes[node_id] = SimNode(node_id, cfg, max(1, round(TICK_UNITS * skew)))
        if leases is not None:
            self.leases = LeaseLayer(self, leases)
        for node_id in ids:
            self.start(self.nodes[node_id])

    # ---- the event loop ------------------------------------------------------------

    def run(self, steps: int) -> None:
        """Safety phase of ``steps`` steps, then the liveness phase."""
        for _ in range(steps):
            self.step()
        self.liveness_phase()

    def step(self) -> None:
        self._step()
        if self.leases is not None:
            self.leases.after_step()

    def _step(self) -> None:
        if not self._events:  # every node is down: time passes until one restarts
            self.now += TICK_UNITS
            self._random_restart()
            return
        ev = heapq.heappop(self._events)
        self.now = ev.time
        if ev.payload is not None:
            ev.payload()
            if not self._live():  # lease events keep time going while every node is down
                self._random_restart()
            return
        node = self.nodes[ev.node]
        resume = 0 if self.leases is None else self.leases.stalled(node)
        if resume and ev.kind in ("tick", "deliver"):
            # A stalled loop takes nothing in until it resumes, in arrival order.
            self._seq += 1
            heapq.heappush(self._events, dataclasses.replace(ev, time=resume, seq=self._seq))
            return
        if ev.kind in _NEMESIS:
            if self.faults_enabled and ev.incarnation == node.incarnation:
                _NEMESIS[ev.kind](self, node)
            return
        if ev.kind == "tick":
            if node.raft is None or ev.incarnation != node.incarnation:
                return
            self._schedule(node.tick_interval, "tick", node.id, node.incarnation)
            node.raft.tick()
            if self.wiped_names and node.raft.role is Role.LEADER:
                self._admit(node)
            if self.leases is not None:
                self.leases.on_tick(node)
            self.drain(node)
        else:
            m = ev.message
            assert m is not None
            if node.raft is None or (m.sender, m.recipient) in self.cut:
                return
            self._record(m)
            node.raft.step(m)
            self.drain(node)
        if self.faults_enabled:
            self._maybe_act()

    def _schedule(
        self,
        delay: int,
        kind: str,
        node: str,
        incarnation: int = 0,
        *,
        message: Message | None = None,
        payload: Callable[[], None] | None = None,
    ) -> None:
        self._seq += 1
        heapq.heappush(
            self._events,
            _Event(self.now + delay, self._seq, kind, node, incarnation, message, payload),
        )

    def schedule_lease(self, delay: int, handler: Callable[[], None]) -> None:
        """Run ``handler`` ``delay`` units from now (the lease layer's events)."""
        self._schedule(delay, "lease", "", payload=handler)

    def _record(self, event: TraceEvent) -> None:
        self.trace.append((self.now, event))

    # ---- one node's ready batches --------------------------------------------------

    def drain(self, node: SimNode) -> None:
        raft = node.raft
        became_leader = False
        while raft is not None:
            self._observe_commit_decision(node)
            if not raft.has_ready():
                break
            rd = raft.ready()
            # As sidecar.node does: a leader's appends leave before its own write.
            before, after = split_messages(rd, role=raft.role, durable=node.disk.hard_state)
            for m in before:
                self.check.on_send(node.id, node.disk.hard_state, node.disk, m, persisted=False)
                self._send(m)
            if not self._persist(node, rd):
                return  # crashed half way through the write
            self._observe(node, rd)
            for m in after:
                self.check.on_send(node.id, node.disk.hard_state, node.disk, m)
                if isinstance(m, SnapshotRequest):
                    self.stats["snapshots_sent"] += 1
                self._send(m)
            self._apply(node, rd)
            raft.advance(rd)
            became_leader |= rd.soft_state is not None and node.role is Role.LEADER
        if became_leader and self.settings.eager_reconfig and self.faults_enabled:
            self._try_reconfig(node)

    def _observe_commit_decision(self, node: SimNode) -> None:
        """Judge a leader's new commit index when it decides it, not when it persists it.

        Its appends carrying the new index may leave before its own write
        (``split_messages``) and it may crash in that write, so a follower can
        be the first to persist a commit the leader made. Every input to a core
        is followed by ``drain``, and no disk changes between the input and
        here: the checkers see the disks and the configuration (the newest in
        the leader's log) exactly as the leader counted them.
        """
        raft = node.raft
        assert raft is not None
        if raft.role is Role.LEADER and raft.commit_index > node.sm_commit_seen:
            self.check.on_commit(node, node.sm_commit_seen, raft.commit_index)
            node.sm_commit_seen = raft.commit_index

    def _persist(self, node: SimNode, rd: Ready) -> bool:
        """Write ``rd`` to disk; False when the node crashed mid-write (torn)."""
        self.check.before_persist(node, rd)
        scripted = self.tear_write is not None and self.tear_write(node, rd)
        if scripted:
            self.tear_write = None
        torn = scripted or (self.faults_enabled and self.rng.random() < self.settings.p_torn_crash)
        if torn:
            node.disk.stage(rd.hard_state, rd.snapshot, rd.entries)
            kept = 0 if scripted else self.rng.randrange(len(rd.entries) + 1)
            entries = rd.entries[:kept]
            node.disk = node.disk.crash(keep_prefix=len(entries))
        else:
            node.disk.persist(rd.hard_state, rd.snapshot, rd.entries)
            entries = rd.entries
        if entries:
            self.check.after_persist_entries(node.id, node.disk, entries)
        if torn:
            self.stats["torn_crashes"] += 1
            self._record(
                f"torn crash {node.id}: wrote {len(entries)} of {len(rd.entries)} entries, "
                "no hard state"
            )
            self.crash(node)
            return False
        return True

    def _observe(self, node: SimNode, rd: Ready) -> None:
        raft = node.raft
        assert raft is not None
        if rd.soft_state is not None:
            if rd.soft_state.role is not node.role:
                self._record(
                    f"{node.id} becomes {rd.soft_state.role.value} in term {rd.soft_state.term}"
                )
            node.role = rd.soft_state.role
            if node.role is Role.LEADER:
                self.stats["elections"] += 1
                self.check.on_leader(node)
                self._strike_new_leader(node)
        if rd.hard_state is not None and rd.hard_state.commit > node.sm_commit_seen:
            self.check.on_commit(node, node.sm_commit_seen, rd.hard_state.commit)
            node.sm_commit_seen = rd.hard_state.commit

    def _apply(self, node: SimNode, rd: Ready) -> None:
        if rd.snapshot is not None:
            index, digest = _decode_sm(rd.snapshot.data)
            self.check.on_restore(node.id, index, digest)
            node.sm_index, node.sm_digest = index, digest
            if self.leases is not None:
                self.leases.on_restore(node, _elections_of(rd.snapshot.data))
        for e in rd.committed_entries:
            self.check.on_apply(node, e)
            node.sm_index = e.index
            node.sm_digest = chain_digest(node.sm_digest, e)
            if self.leases is not None:
                self.leases.on_apply(node, e)
        for rs in rd.read_states:
            if self.leases is not None and rs.request_id not in self._reads:
                self.leases.on_read(node, rs)
                continue
            self.check.on_read(node.id, rs.index, self._reads.pop(rs.request_id))
        for request_id in rd.failed_reads:
            if self.leases is not None and request_id not in self._reads:
                self.leases.on_failed_read(node, request_id)
                continue
            self._reads.pop(request_id)
        if self.leases is not None:
            self.leases.after_apply(node)

    def _send(self, m: Message) -> None:
        if self.faults_enabled and self.rng.random() < self.loss:
            return
        s = self.settings
        copies = 2 if self.faults_enabled and self.rng.random() < self.duplication else 1
        for _ in range(copies):
            delay = self.rng.randint(s.delay_min, self.delay_max)
            if self.faults_enabled and self.rng.random() < s.long_delay:
                timeout = s.election_timeout_ticks * TICK_UNITS
                delay += self.rng.randint(timeout, 5 * timeout)
            self._schedule(delay, "deliver", m.recipient, message=m)

    # ---- crash and restart ---------------------------------------------------------

    def start(self, node: SimNode) -> None:
        assert not node.retired, node.id
        node.incarnation += 1
        node_rng = random.Random(f"node:{self.seed}:{node.id}:{node.incarnation}")
        node.raft = self.raft_factory(node.config, node_rng, node.disk.recover())
        node.role = Role.FOLLOWER
        if node.disk.snapshot is not None:
            node.sm_index, node.sm_digest = _decode_sm(node.disk.snapshot.data)
            self.check.on_restore(node.id, node.sm_index, node.sm_digest)
        else:
            node.sm_index, node.sm_digest = 0, 0
        if self.leases is not None:
            snapshot = node.disk.snapshot
            self.leases.on_start(node, None if snapshot is None else _elections_of(snapshot.data))
        node.sm_commit_seen = node.raft.commit_index
        self._schedule(self.rng.randint(1, node.tick_interval), "tick", node.id, node.incarnation)
        self.drain(node)

    def crash(self, node: SimNode) -> None:
        if node.disk.has_staged:  # a queued commit index that no fsync carried yet
            node.disk = node.disk.crash()
        node.raft = None
        node.incarnation += 1
        node.role = Role.FOLLOWER
        if self.leases is not None:
            self.leases.on_crash(node)
        # Its sockets close with it: each peer still connected to it sees the
        # loss at once, as sidecar.transport reports it (Raft.leader_unreachable).
        for other in self._live():
            if other.raft is not None and (other.id, node.id) not in self.cut:
                other.raft.leader_unreachable(node.id)

    # ---- actions ---------------------------------------------------------------------

    def _strike_new_leader(self, node: SimNode) -> None:
        """Nemesis: faults aimed at a fresh leader, when its log is most in flux."""
        if not self.faults_enabled:
            return
        s = self.settings
        soon = self.rng.randint(1, 3 * s.delay_max)
        if self.rng.random() < s.p_kill_new_leader:
            self._schedule(soon, "crash", node.id, node.incarnation)
        elif self.rng.random() < s.p_isolate_new_leader:
            self._schedule(soon, "isolate", node.id, node.incarnation)

    def _nemesis_crash(self, node: SimNode) -> None:
        self.stats["crashes"] += 1
        self._record(f"nemesis: crash {node.id}")
        self.crash(node)
        timeout = self.settings.election_timeout_ticks * TICK_UNITS
        later = self.rng.randint(timeout // 2, 3 * timeout)
        self._schedule(later, "restart", node.id, node.incarnation)

    def _nemesis_restart(self, node: SimNode) -> None:
        if node.raft is None and not node.retired:
            self._record(f"nemesis: restart {node.id}")
            self.start(node)

    def _nemesis_isolate(self, node: SimNode) -> None:
        self.cut.clear()
        for other in sorted(self.nodes):
            if other != node.id:
                self.cut.add((node.id, other))
                self.cut.add((other, node.id))
        self._record(f"nemesis: isolate {node.id}")

    def _maybe_act(self) -> None:
        s = self.settings
        r = self.rng.random()
        for p, action in (
            (s.p_propose, self._propose),
            (s.p_read, self._read),
            (s.p_crash, self._random_crash),
            (s.p_restart, self._random_restart),
            (s.p_partition, self._partition),
            (s.p_heal, self._heal),
            (s.p_compact, self._compact),
            (s.p_reconfig, self._reconfig),
            (s.p_transfer, self._transfer),
            (s.p_disk_loss, self._disk_loss),
        ):
            if r < p:
                action()
                return
            r -= p

    def _live(self) -> list[SimNode]:
        return [n for _, n in sorted(self.nodes.items()) if n.raft is not None]

    def _leaders(self) -> list[SimNode]:
        return [n for n in self._live() if n.raft is not None and n.raft.role is Role.LEADER]

    def _propose(self) -> None:
        for node in self._leaders():
            assert node.raft is not None
            count = self.rng.choice([1, 1, 1, 3, 10])
            batch = []
            for _ in range(count):
                self._proposal_counter += 1
                batch.append(b"cmd-%d" % self._proposal_counter)
            try:
                node.raft.propose_batch(batch)
            except RaftError:
                continue
            self.drain(node)

    def _read(self) -> None:
        for node in self._leaders():
            assert node.raft is not None
            self._read_counter += 1
            try:
                node.raft.read_index(self._read_counter)
            except RaftError:
                continue
            self._reads[self._read_counter] = self.check.commit_index
            self.stats["reads"] += 1
            self.drain(node)

    def _random_crash(self) -> None:
        live = self._leaders() if self.rng.random() < 0.5 else []
        live = live or self._live()
        if live:
            node = self.rng.choice(live)
            self.stats["crashes"] += 1
            self._record(f"crash {node.id}")
            self.crash(node)

    def _random_restart(self) -> None:
        dead = [n for _, n in sorted(self.nodes.items()) if n.raft is None and not n.retired]
        if dead:
            node = self.rng.choice(dead)
            self._record(f"restart {node.id}")
            self.start(node)

    def _partition(self) -> None:
        ids = self.current_servers()
        kind = self.rng.choice(["split", "one-way", "bridge", "isolate"])
        self.rng.shuffle(ids)
        self.cut.clear()
        leaders = [n.id for n in self._leaders()]
        if kind == "isolate":
            if leaders and self.rng.random() < 0.5:
                ids.remove(leaders[0])
                ids.insert(0, leaders[0])
            side_a, side_b, bridge = ids[:1], ids[1:], None
        else:
            k = self.rng.randint(1, len(ids) - 1)
            side_a, side_b = ids[:k], ids[k:]
            bridge = side_b.pop() if kind == "bridge" and len(side_b) > 1 else None
        for a in side_a:
            for b in side_b:
                self.cut.add((a, b))
                if kind != "one-way":
                    self.cut.add((b, a))
        self._record(f"partition {kind}: {side_a} | {side_b} bridge={bridge}")

    def _heal(self) -> None:
        if self.cut:
            self._record("heal")
            self.cut.clear()

    def _compact(self) -> None:
        live = self._live()
        if not live:
            return
        node = self.rng.choice(live)
        raft = node.raft
        assert raft is not None
        index = raft.applied_index
        if index <= raft.log.base.index:
            return
        term = raft.log.term(index)
        assert term is not None
        meta = SnapshotMetadata(index, term, raft.log.membership_at(index))
        elections = b"" if self.leases is None else self.leases.snapshot(node)
        snapshot = Snapshot(meta, _encode_sm(node.sm_index, node.sm_digest, elections))
        if node.sm_index != index:
            raise SafetyViolation(
                f"{node.id}: state machine at {node.sm_index}, raft applied {index}"
            )
        node.disk.save_snapshot(snapshot)  # durable first, then the core forgets
        raft.compact(snapshot)
        self._record(f"compact {node.id} to {index}")

    def _reconfig(self) -> None:
        for node in self._leaders():
            self._try_reconfig(node)

    def _try_reconfig(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        members = raft.membership
        retired = {m for m in members.members if self.nodes[m].retired}
        others = sorted((set(self.current_servers()) | retired) - {node.id})
        target = self.rng.choice(others)
        if target in members.voters and not self._keeps_quorum(members, target, retired):
            return
        if target in retired:
            kind = ConfChangeKind.REMOVE_NODE  # the operator's half of a replacement
        elif target in members.learners:
            kind = (
                ConfChangeKind.PROMOTE_LEARNER
                if self.rng.random() < 0.8
                else ConfChangeKind.REMOVE_NODE
            )
        elif target in members.voters:
            if len(members.voters) <= 2:
                return
            kind = ConfChangeKind.REMOVE_NODE
        else:
            kind = ConfChangeKind.ADD_LEARNER
        try:
            index = raft.propose_conf_change(ConfChange(kind, target))
        except RaftError:
            return
        self.stats["conf_changes"] += 1
        self._record(f"{node.id} proposes {kind.value} {target} at {index}")
        self.drain(node)

    def _transfer(self) -> None:
        for node in self._leaders():
            raft = node.raft
            assert raft is not None
            voters = sorted(raft.membership.voters - {node.id})
            if not voters:
                continue
            target = self.rng.choice(voters)
            try:
                raft.transfer_leadership(target)
            except RaftError:
                continue
            self.stats["transfers"] += 1
            self._record(f"{node.id} transfers leadership to {target}")
            self.drain(node)

    @staticmethod
    def _keeps_quorum(members: Membership, target: str, retired: set[str]) -> bool:
        """An operator removes a voter only while the voters that remain, less
        those that lost their disk, are a majority of them (as ``plan_change``)."""
        remaining = members.voters - {target}
        return len(remaining - retired) >= len(remaining) // 2 + 1

    # ---- disk loss ---------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted({n.name for n in self.nodes.values()})

    def current_servers(self) -> list[str]:
        """The server id of each name's latest life, sorted."""
        return sorted(n.id for n in self.nodes.values() if not n.retired)

    def _disk_loss(self) -> None:
        candidates = [self.nodes[s] for s in self.current_servers()]
        node = self.rng.choice(candidates)
        if not may_lose_disk(self, node):
            return
        self.lose_disk(node)

    def lose_disk(self, node: SimNode) -> SimNode:
        """``node`` loses its disk and restarts empty; returns the node that runs."""
        self.stats["disk_losses"] += 1
        if node.raft is not None:
            self.crash(node)
        if not self.amnesia_guard:
            self._record(f"disk loss {node.id}: restarts empty under the same id (no guard)")
            node.disk = MemoryStorage()
            self.start(node)
            return node
        incarnation = f"{self.rng.getrandbits(64):016x}"
        new_id = server_id(node.name, incarnation)
        config = dataclasses.replace(
            node.config, node_id=new_id, initial_membership=Membership(frozenset())
        )
        node.retired = True
        fresh = SimNode(new_id, config, node.tick_interval, name=node.name)
        self.nodes[new_id] = fresh
        self.wiped_names.add(node.name)
        self._record(f"disk loss {node.id}: restarts empty as {new_id}, joining")
        self.start(fresh)
        return fresh

    def _admit(self, node: SimNode) -> None:
        """The runtime's leader-side admission of new incarnations (one change)."""
        raft = node.raft
        assert raft is not None
        planned = plan_admission(self, node)
        if planned is None:
            return
        try:
            index = raft.propose_conf_change(planned.change)
        except RaftError:
            return
        self.stats["admissions"] += 1
        self.admissions.append((planned.change.kind, planned.change.node_id))
        self._record(
            f"{node.id} admits: {planned.change.kind.value} {planned.change.node_id} at {index} "
            f"({planned.reason})"
        )

    # ---- liveness ----------------------------------------------------------------------

    def committed_membership(self) -> Membership:
        for entry in reversed(self.check.committed):
            if entry is not None and entry.kind is EntryKind.CONF_CHANGE:
                return decode_conf_entry(entry.data)[1]
        return next(iter(self.nodes.values())).config.initial_membership

    def liveness_phase(self) -> None:
        """Heal everything, then demand a leader and a committed proposal.

        A leader must appear within LIVENESS_ELECTION_TIMEOUTS election
        timeouts. The proposal must then commit within as many again, plus
        the round trips that flow control needs to ship the backlog of
        uncommitted entries that stands before it.
        """
        self.faults_enabled = False
        self.cut.clear()
        s = self.settings
        # Raft needs round trips well inside an election timeout to make
        # progress (Raft §5.6); the safety phase may be slower than that.
        self.delay_max = min(
            s.delay_max, max(s.delay_min, s.election_timeout_ticks * TICK_UNITS // 4)
        )
        self._record("liveness phase: heal, restart members, shut down removed nodes")
        # As an operator would, shut down servers removed from the committed
        # configuration: without PreVote or CheckQuorum a removed server that
        # never learnt of its removal disrupts elections for ever (§4.2.3).
        members = self.committed_membership().members
        for node_id in self.current_servers():
            node = self.nodes[node_id]
            if node_id not in members and node.name not in self.wiped_names:
                if node.raft is not None:
                    self.crash(node)
            elif node.raft is None:
                self.start(node)
        slowest = max(n.tick_interval for n in self.nodes.values())
        budget = LIVENESS_ELECTION_TIMEOUTS * 2 * s.election_timeout_ticks * slowest
        deadline = self.now + budget
        marker = b"liveness-%d" % self.seed
        proposed_in: dict[str, int] = {}
        commit_deadline: int | None = None
        scanned = 0
        while self.now <= deadline:
            for node in self._leaders():
                raft = node.raft
                assert raft is not None
                if commit_deadline is None:
                    per_round_trip = s.max_entries_per_append * s.max_inflight_appends
                    backlog = raft.log.last_index - raft.commit_index
                    round_trips = backlog // per_round_trip + 3
                    commit_deadline = self.now + budget + round_trips * 2 * self.delay_max
                    deadline = max(deadline, commit_deadline)
                if proposed_in.get(node.id) == raft.term:
                    continue
                try:
                    raft.propose(marker)
                except RaftError:
                    continue  # back-pressure or a transfer: try again next step
                proposed_in[node.id] = raft.term
                self.drain(node)
            committed = self.check.committed
            while scanned + 1 < len(committed):
                scanned += 1
                entry = committed[scanned]
                if entry is not None and entry.data == marker:
                    self._await_admissions(budget)
                    return
            self.step()
        roles = {
            n.id: (n.raft.role.value, n.raft.term, n.raft.commit_index) if n.raft else "down"
            for n in self.nodes.values()
        }
        raise LivenessViolation(
            f"{'no leader' if commit_deadline is None else 'no commit'} within the liveness "
            f"budget after healing; (role, term, commit) by node: {roles}"
        )

    def admitted(self) -> bool:
        """Every name that lost a disk runs its latest server as a voter that
        a leader, whose configuration is committed, sees caught up."""
        for node in self._leaders():
            raft = node.raft
            assert raft is not None
            if raft.commit_index < raft.log.last_conf_index():
                continue
            voters = raft.membership.voters
            if all(
                server in voters
                and (server == node.id or raft.progress[server].match >= raft.commit_index)
                for server in self.current_servers()
                if self.nodes[server].name in self.wiped_names
            ):
                return True
        return False

    def _await_admissions(self, budget: int) -> None:
        """After the liveness commit, the latest incarnation of every name that
        lost its disk must become a caught-up voter.

        Bound: at most three changes per such name (remove the stale
        incarnation, add the new one as learner, promote it), one at a time,
        each proposed at the leader's next tick once the previous one
        committed (a round trip), plus the round trips flow control needs to
        ship the log to a learner (or one snapshot); all inside a second
        liveness budget, which a stable leader with every member running
        does not approach.
        """
        if not self.wiped_names:
            return
        s = self.settings
        leaders = self._leaders()
        backlog = max((n.raft.log.last_index for n in leaders if n.raft is not None), default=0)
        per_round_trip = s.max_entries_per_append * s.max_inflight_appends
        round_trips = backlog // per_round_trip + 3 * len(self.wiped_names) + 3
        deadline = self.now + budget + round_trips * 2 * self.delay_max
        while self.now <= deadline:
            if self.admitted():
                return
            self.step()
        members = {
            n.id: sorted(n.raft.membership.voters) if n.raft else "down" for n in self._leaders()
        }
        raise LivenessViolation(
            f"names that lost a disk {sorted(self.wiped_names)} not admitted as caught-up "
            f"voters within the liveness budget; leaders' voters: {members}; "
            f"servers: {self.current_servers()}"
        )


_NEMESIS: dict[str, Callable[[Simulation, SimNode], None]] = {
    "crash": Simulation._nemesis_crash,
    "restart": Simulation._nemesis_restart,
    "isolate": Simulation._nemesis_isolate,
}
