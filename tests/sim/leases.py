"""Leases in the simulator: workers, sidecars' lease code and drifting clocks on the Raft swarm.

Theory of operation. ``Simulation(seed, leases=LeaseCode())`` runs the
whole Raft swarm of ``cluster.py`` (same faults, same checkers) and, on top
of it, what the product adds:

* Every sim node applies committed entries to a real
  ``sidecar.elections.ElectionsState`` (snapshots carry it), so grants,
  queues, Expire, Resign and Revoke are the real state machine's.
* Simulated workers, each beside one node (its "pod"), campaign for one of
  a few elections through that node, which forwards commands to the Raft
  leader it knows over the faulty network; the leader proposes them through
  the real core. A granted worker sends a keep-alive every TTL/4 of its own
  clock and computes its safe deadline with the real client rule
  (``sidecar.safe_deadline.SafeDeadline``); it resigns now and then, pauses
  (sends nothing, as a worker in a long GC pause), and when its deadline
  passes it drops the lease (its sidecar revokes, as when a stream breaks)
  and campaigns again later with the same key.
* The leader runs the real ``sidecar.lease_deadlines.LeaderDeadlines`` on its
  own clock, at every tick: it proposes Expire for what is due, and renews a
  keep-alive only after a ReadIndex round of the real core confirmed it
  still leads, as ``sidecar.leases.LeaseKeeper.renew`` does. The answer
  carries the TTL and ``safety_margin_ms`` of ``sidecar.api.keepalive``.
* Clocks: each node's and each worker's monotonic clock runs at its own
  rate, within ``±drift`` of true time (``LeaseSettings.drift`` at most
  ``DRIFT_BOUND``, 5 %; the default margin of a tenth of the TTL covers up
  to 1/19, ``sidecar.safe_deadline.max_drift_covered``); in half the seeds
  with drift, workers run slow and nodes fast, at the bound (``opposed``).
  A node's loop may *stall* (a slow disk): it processes nothing, no tick,
  no message, no keep-alive, until it resumes, and its clock has jumped by
  then.
* Some seeds (``calm``) run on a swarm without Raft faults and with small
  delays (``runner.simulation``): there the lease timing alone decides.

Checker, after every step: at most one worker per election believes it
holds it (it has a token and its own clock is before its safe deadline, at
the same true instant); a token of an election goes to one worker only; and
on every node the tokens granted per election strictly increase.

Time is in simulator units; one unit is ``UNIT_S`` (10 ms), so a tick
(``TICK_UNITS``) is 100 ms and the TTLs drawn are 1 to 7.5 seconds.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sidecar.api.keepalive import safety_margin_ms
from sidecar.elections import (
    ApplyResult,
    Campaign,
    Command,
    CommandError,
    ElectionsState,
    Expire,
    Outcome,
    Resign,
    Revoke,
    decode_command,
    encode_command,
    lease_key_digest,
)
from sidecar.lease_deadlines import LeaderDeadlines
from sidecar.raft import Entry, EntryKind, RaftError, ReadState, Role
from sidecar.safe_deadline import SafeDeadline, default_margin_s
from tests.sim.checkers import SafetyViolation
from tests.sim.swarm import TICK_UNITS

if TYPE_CHECKING:
    from tests.sim.cluster import SimNode, Simulation

UNIT_S = 0.01
"""Seconds per simulator time unit."""
DRIFT_BOUND = 0.05
"""Every lease clock's rate stays within ±5 % of true time (the default margin covers 5.26 %)."""
READ_ID_BASE = 1 << 40
"""ReadIndex request ids of keep-alives start here, apart from the swarm's own reads."""
LOCAL_DELAY_MAX = 2
"""A worker and its sidecar share a pod: their messages take 1 or 2 units and are never cut."""
RESTART_AFTER_LOSS = 0.75
CALM_SHARE = 0.3
"""Share of lease seeds run on a calm swarm (no Raft faults, small delays): the lease
workload's own faults only, where the margin's few hundred milliseconds decide."""


def calm(seed: int) -> bool:
    """Whether this lease seed runs on a calm swarm (``runner.simulation``)."""
    return random.Random(f"lease-calm:{seed}").random() < CALM_SHARE


"""Chance that a worker that lost its lease restarts (a new client: new key, new candidate id)."""


@dataclass(frozen=True, slots=True)
class LeaseCode:
    """The lease code under test: the real one by default, a mutant's pieces otherwise."""

    safe_deadline: type[SafeDeadline] = SafeDeadline
    leader_deadlines: type[LeaderDeadlines] = LeaderDeadlines
    confirm_renewals: bool = True
    """Renew only after a ReadIndex round confirmed leadership (``LeaseKeeper.renew``)."""
    renew_after_appended: bool = True
    """And only once every entry appended before the keep-alive arrived is applied."""
    resumed_grant_needs_ack: bool = True
    """A key's later campaign gets no deadline before its first acknowledgement (the client)."""
    new_leader_counts_from_grant: bool = False
    """Mutant: a new leader times each lease from when this node applied its grant
    (renewals it did not see are lost) instead of a full TTL from its own now."""
    mutant: str = ""
    """The name in ``mutants.LEASE_MUTANTS`` of the bug planted here; empty for the real code."""


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """The lease workload and its faults, drawn from the seed (apart from the swarm's draw)."""

    workers: int
    elections: int
    ttl_units: int
    drift: float
    """Each lease clock's rate is in [1 - drift, 1 + drift]; drift <= DRIFT_BOUND."""
    p_stall: float
    """Chance per step that a live node's loop stalls."""
    stall_max_units: int
    p_pause: float
    """Chance per step that a holding worker pauses (sends nothing) for up to a TTL and a half."""
    p_resign: float
    opposed: bool
    """Every worker's clock slow and every node's fast, both at the bound: the
    margin's worst case, drawn on purpose in half the seeds with drift."""

    @classmethod
    def draw(cls, seed: int, election_timeout_ticks: int) -> LeaseSettings:
        r = random.Random(f"leases:{seed}")
        timeout_units = election_timeout_ticks * TICK_UNITS
        return cls(
            workers=r.choice([2, 3, 4, 5]),
            elections=r.choice([1, 1, 2]),
            ttl_units=max(100, r.choice([2, 3, 5, 8]) * timeout_units),
            drift=r.choice([0.0, 0.02, DRIFT_BOUND, DRIFT_BOUND, DRIFT_BOUND]),
            p_stall=r.choice([0.0, 0.0005, 0.002]),
            stall_max_units=r.choice([1, 2, 4]) * timeout_units,
            p_pause=r.choice([0.0005, 0.002, 0.005]),
            p_resign=r.choice([0.0005, 0.002]),
            opposed=r.random() < 0.5,
        )


@dataclass
class Clock:
    """A monotonic clock running at ``rate`` from ``offset_s``: local seconds at true time."""

    rate: float
    offset_s: float

    def at(self, now: int) -> float:
        return self.offset_s + self.rate * now * UNIT_S

    def units_for(self, seconds: float) -> int:
        """True units until this clock has advanced by ``seconds`` (at least 1)."""
        return max(1, round(seconds / self.rate / UNIT_S))


@dataclass
class SimWorker:
    name: str
    election: str
    home: str
    """The node name of its pod's sidecar."""
    clock: Clock
    key_digest: str
    state: str = "idle"  # idle, campaigning, holding
    token: int = 0
    rule: SafeDeadline | None = None
    deadline: float = float("-inf")
    """The safe deadline on its own clock; -inf unless holding."""
    first_sent_at: float = 0.0
    campaigned: bool = False
    """Its key campaigned before: a grant may predate the current campaign."""
    resumed: bool = False
    sent_at: dict[int, float] = field(default_factory=dict)
    usable: bool = False
    """Its safe deadline has been in the future since the grant (the client's ``_usable``)."""
    wait_until: float = 0.0
    """A grant whose deadline had already passed waits this long for a first acknowledgement."""
    sequence: int = 0
    paused_until: int = 0
    epoch: int = 0
    """Bumped whenever it leaves a state, so timers of the old state do nothing."""
    life: int = 0
    """Bumped when its process restarts: a new client, so a new key and candidate id."""

    @property
    def candidate(self) -> str:
        return f"{self.name}.{self.life}"

    def believes(self, now: int) -> bool:
        return self.state == "holding" and self.clock.at(now) < self.deadline


@dataclass
class NodeLeases:
    """One sidecar's lease state for one life of a sim node."""

    machine: ElectionsState
    deadlines: LeaderDeadlines
    granted: dict[str, int] = field(default_factory=dict)
    """election -> the last token this life applied a grant of (strictly increasing)."""
    reads: dict[int, tuple[int, SimWorker, int, int]] = field(default_factory=dict)
    """ReadIndex id -> (log index it must also wait for, worker, token, sequence) of a
    keep-alive waiting for confirmation."""
    confirmed: list[tuple[int, SimWorker, int, int]] = field(default_factory=list)
    expiring: dict[int, tuple[str, int, bytes]] = field(default_factory=dict)
    """Log index -> (election, token, entry data) of an Expire this leader proposed."""
    granted_at: dict[tuple[str, int], float] = field(default_factory=dict)
    """(election, token) -> this node's clock when it applied the grant (for a mutant)."""
    led_term: int = 0


Handler = Callable[[], None]


def _key_digest(worker: str, life: int) -> str:
    return lease_key_digest(f"sim-lease-key-of-{worker}-in-life-{life:04d}")


class LeaseLayer:
    def __init__(self, sim: Simulation, code: LeaseCode) -> None:
        self.sim = sim
        self.code = code
        self.settings = LeaseSettings.draw(sim.seed, sim.settings.election_timeout_ticks)
        self.rng = random.Random(f"lease-sched:{sim.seed}")
        self.nodes: dict[str, NodeLeases] = {}
        self.clocks: dict[str, Clock] = {}
        self.stalled_until: dict[str, int] = {}
        self.tokens: dict[tuple[str, int], str] = {}
        """(election, token) -> the worker it went to."""
        self._read_counter = READ_ID_BASE
        self.notes: deque[tuple[int, str]] = deque(maxlen=40)
        """The last lease events, for a failure report (the swarm's trace is mostly messages)."""
        s = self.settings
        self.ttl_ms = round(s.ttl_units * UNIT_S * 1000)
        self.workers = [
            SimWorker(
                name=f"w{i}",
                election=f"e{i % s.elections}",
                home=sim.names()[i % len(sim.names())],
                clock=self._new_clock(f"w{i}"),
                key_digest=_key_digest(f"w{i}", 0),
            )
            for i in range(s.workers)
        ]
        for worker in self.workers:
            self._after(self.rng.randint(1, s.ttl_units), self._campaign_timer(worker))
        sim.stats.update(
            dict.fromkeys(
                ("grants", "renewals", "expiries", "stalls", "pauses", "resigns", "lost_leases"),
                0,
            )
        )

    # ---- clocks and scheduling -------------------------------------------------------

    def _new_clock(self, name: str) -> Clock:
        r = random.Random(f"clock:{self.sim.seed}:{name}")
        if self.settings.opposed:
            slow = name.startswith("w")  # workers are w0, w1, ...; nodes n1, n2, ...
            return Clock(1 - self.settings.drift if slow else 1 + self.settings.drift, 500.0)
        # At the extremes of the bound in four clocks out of five: the margin is
        # tested where it is thinnest.
        rate = 1 + self.settings.drift * r.choice([-1.0, 1.0, -1.0, 1.0, r.uniform(-1, 1)])
        return Clock(rate, r.uniform(0, 1000))

    def node_clock(self, node: SimNode) -> Clock:
        clock = self.clocks.get(node.name)
        if clock is None:
            clock = self.clocks[node.name] = self._new_clock(node.name)
        return clock

    def _after(self, delay: int, handler: Handler) -> None:
        self.sim.schedule_lease(delay, handler)

    def _at_node(self, delay: int, name: str, handler: Callable[[SimNode], None]) -> None:
        """Deliver to the current server of ``name`` after ``delay``; a stalled node
        takes it when it resumes, a node that is down loses it."""

        def arrive() -> None:
            node = self._server(name)
            if node is None or node.raft is None:
                return
            resume = self.stalled_until.get(node.id, 0)
            if resume > self.sim.now:
                self._after(resume - self.sim.now, arrive)
                return
            handler(node)

        self._after(delay, arrive)

    def _network(self, sender: SimNode, recipient: str, handler: Callable[[SimNode], None]) -> None:
        """Between two sidecars: the swarm's delays, losses and partitions."""
        sim = self.sim
        target = self._server(recipient)
        if target is None:
            return
        if (sender.id, target.id) in sim.cut:
            return
        if sim.faults_enabled and self.rng.random() < sim.loss:
            return
        delay = self.rng.randint(sim.settings.delay_min, sim.delay_max)
        self._at_node(delay, target.name, handler)

    def _server(self, name: str) -> SimNode | None:
        for server in self.sim.current_servers():
            node = self.sim.nodes[server]
            if node.name == name:
                return node
        return None

    def stalled(self, node: SimNode) -> int:
        """The time ``node``'s loop resumes, or 0 when it runs."""
        resume = self.stalled_until.get(node.id, 0)
        return resume if resume > self.sim.now else 0

    def _ms(self) -> int:
        """True time in ms: what a command's ``proposed_at_unix_ms`` carries here."""
        return round(self.sim.now * UNIT_S * 1000)

    def _trace(self, note: str) -> None:
        self.sim._record(note)
        self.notes.append((self.sim.now, note))

    def report(self) -> list[str]:
        """The workers as they stand, and the last lease events."""
        now = self.sim.now
        lines = [f"lease settings: {self.settings}", "workers (clock rate, own clock, deadline):"]
        for w in self.workers:
            lines.append(
                f"  {w.name} beside {w.home}: {w.state} {w.election} token {w.token}, "
                f"rate {w.clock.rate:.4f}, clock {w.clock.at(now):.3f}, safe until {w.deadline:.3f}"
            )
        lines.append("last lease events (time: event):")
        lines.extend(f"  {t:>8}: {note}" for t, note in self.notes)
        return lines

    # ---- scripted scenarios (``lease_scenarios.py``) ----------------------------------

    def script(self, ttl_units: int) -> None:
        """Replace the drawn workload by a script: no worker, no lease fault, this TTL.

        The drawn workers' timers are cancelled (their epochs bumped); the
        clocks keep the seed's drift. A scenario then places its own workers
        (``add_worker``) and campaigns (``campaign``) where its choreography
        needs them, and the lease code and the checker run unchanged."""
        for worker in self.workers:
            worker.epoch += 1
        self.workers = []
        self.settings = replace(
            self.settings, workers=0, ttl_units=ttl_units, p_stall=0.0, p_pause=0.0, p_resign=0.0
        )
        self.ttl_ms = round(ttl_units * UNIT_S * 1000)

    def add_worker(self, name: str, election: str, home: str) -> SimWorker:
        worker = SimWorker(name, election, home, self._new_clock(name), _key_digest(name, 0))
        self.workers.append(worker)
        return worker

    def campaign(self, worker: SimWorker) -> None:
        """The worker starts campaigning now (and retries, as the drawn workers do)."""
        self._campaign_timer(worker)()

    def resign(self, worker: SimWorker) -> None:
        """The holding worker resigns now (its sidecar proposes Resign)."""
        self._resign(worker)

    def drop(self, worker: SimWorker, revoke_after: int) -> None:
        """The worker's stream breaks; its process lives on (same key), and its
        sidecar notices only ``revoke_after`` units later and proposes Revoke."""
        self._lose(
            worker,
            "its stream broke (scripted)",
            revoke=True,
            revoke_after=revoke_after,
            restart=False,
        )

    def stall(self, node: SimNode, until: int) -> None:
        """``node``'s loop takes nothing in until true time ``until`` (a slow disk)."""
        self.stalled_until[node.id] = until
        self._trace(f"stall {node.id} until {until} (scripted)")

    # ---- node lives ------------------------------------------------------------------

    def on_start(self, node: SimNode, snapshot_data: bytes | None) -> None:
        machine = ElectionsState()
        if snapshot_data:
            machine = ElectionsState.restore(snapshot_data)
        self.nodes[node.id] = NodeLeases(machine, self.code.leader_deadlines())
        self.stalled_until.pop(node.id, None)

    def on_crash(self, node: SimNode) -> None:
        self.nodes.pop(node.id, None)
        self.stalled_until.pop(node.id, None)

    def on_restore(self, node: SimNode, snapshot_data: bytes) -> None:
        leases = self.nodes[node.id]
        leases.machine = ElectionsState.restore(snapshot_data)
        leases.granted.clear()

    def snapshot(self, node: SimNode) -> bytes:
        return self.nodes[node.id].machine.snapshot()

    # ---- apply -----------------------------------------------------------------------

    def on_apply(self, node: SimNode, entry: Entry) -> None:
        leases = self.nodes[node.id]
        expiring = leases.expiring.pop(entry.index, None)
        if expiring is not None:
            election, token, data = expiring
            leases.deadlines.expire_finished(election, token, committed=entry.data == data)
        if entry.kind is not EntryKind.NORMAL or not entry.data:
            return
        try:
            command = decode_command(entry.data)
        except CommandError:
            return  # the swarm's own proposals: skipped, as sidecar.machine does
        result = leases.machine.apply(entry.index, command)
        self._check_grant_order(node, leases, result)
        self._tell_workers(node, result)

    def _check_grant_order(self, node: SimNode, leases: NodeLeases, result: ApplyResult) -> None:
        granted = result.granted
        if granted is None:
            return
        clock = self.node_clock(node).at(self.sim.now)
        leases.granted_at[(granted.election, granted.token)] = clock
        last = leases.granted.get(granted.election, 0)
        if granted.token <= last:
            raise SafetyViolation(
                f"Lease tokens: {node.id} granted {granted.election} token {granted.token} "
                f"after token {last}"
            )
        leases.granted[granted.election] = granted.token

    def _tell_workers(self, node: SimNode, result: ApplyResult) -> None:
        """The Campaign stream of a worker in this node's pod reports its grant,
        as ``sidecar.api.service`` does: any applied grant to its candidate id and
        key, including an old one a node replays after a restart or while catching up."""
        grant = result.granted
        if result.outcome is Outcome.ALREADY_HOLDER:
            grant = result.holder
        if grant is None:
            return
        for worker in self.workers:
            if (
                worker.home == node.name
                and worker.candidate == grant.holder
                and worker.key_digest == grant.key_digest
                and worker.election == grant.election
            ):
                self._after(
                    self.rng.randint(1, LOCAL_DELAY_MAX),
                    self._grant_reaches(worker, grant.token, grant.ttl_ms),
                )

    def on_read(self, node: SimNode, read: ReadState) -> None:
        leases = self.nodes[node.id]
        waiting = leases.reads.pop(read.request_id, None)
        if waiting is not None:
            appended, worker, token, sequence = waiting
            leases.confirmed.append((max(read.index, appended), worker, token, sequence))

    def on_failed_read(self, node: SimNode, request_id: int) -> None:
        self.nodes[node.id].reads.pop(request_id, None)

    def after_apply(self, node: SimNode) -> None:
        """Renewals whose ReadIndex confirmed leadership, once applied up to its index."""
        leases = self.nodes.get(node.id)
        if leases is None or not leases.confirmed:
            return
        ready = [c for c in leases.confirmed if c[0] <= node.sm_index]
        leases.confirmed = [c for c in leases.confirmed if c[0] > node.sm_index]
        for _, worker, token, sequence in ready:
            self._renew(node, worker, token, sequence)

    # ---- the leader's clock ----------------------------------------------------------

    def on_tick(self, node: SimNode) -> None:
        """``LeaseKeeper.check``: review the deadlines, propose Expire for what is due."""
        raft = node.raft
        assert raft is not None
        leases = self.nodes[node.id]
        if raft.role is not Role.LEADER:
            leases.deadlines.step_down()
            for election, token, _ in leases.expiring.values():
                leases.deadlines.expire_finished(election, token, committed=False)
            leases.expiring.clear()
            return
        now_s = self.node_clock(node).at(self.sim.now)
        if self.code.new_leader_counts_from_grant and leases.led_term != raft.term:
            for lease in leases.machine.leases():
                seen = leases.granted_at.get((lease.election, lease.token), now_s)
                leases.deadlines.renew(
                    lease.election, lease.token, lease.ttl_ms, seen, term=raft.term
                )
        leases.led_term = raft.term
        review = leases.deadlines.review(leases.machine.leases(), now_s, term=raft.term)
        for lease in review.due:
            data = encode_command(
                Expire(election=lease.election, token=lease.token, proposed_at_unix_ms=self._ms())
            )
            try:
                index = raft.propose(data)
            except RaftError:
                leases.deadlines.expire_finished(lease.election, lease.token, committed=False)
                continue
            leases.expiring[index] = (lease.election, lease.token, data)
            self.sim.stats["expiries"] += 1
            self._trace(f"{node.id} proposes Expire {lease.election}/{lease.token} at {index}")

    # ---- sidecar: forwarding and renewal ---------------------------------------------

    def _forward(self, home: SimNode, command: Command) -> None:
        """The home sidecar hands a command to the Raft leader it knows."""
        raft = home.raft
        if raft is None:
            return
        leader = home.id if raft.role is Role.LEADER else raft.leader_id
        if leader is None:
            return
        data = encode_command(command)
        if leader == home.id:
            self._propose(home, data)
        else:
            name = self.sim.nodes[leader].name
            self._network(home, name, lambda node: self._propose(node, data))

    def _propose(self, node: SimNode, data: bytes) -> None:
        raft = node.raft
        if raft is None or raft.role is not Role.LEADER:
            return  # the sidecar answers UNAVAILABLE; the worker retries
        try:
            raft.propose(data)
        except RaftError:
            return
        self.sim.drain(node)

    def _keep_alive_at_home(self, home: SimNode, worker: SimWorker, token: int, seq: int) -> None:
        record = self.nodes[home.id].machine.grant_record(worker.election, token)
        if record is not None and not record.current:
            self._answer(home, worker, token, seq, None)  # LEASE_ENDED, from its own state
            return
        raft = home.raft
        assert raft is not None
        leader = home.id if raft.role is Role.LEADER else raft.leader_id
        if leader is None:
            return  # NO_LEADER: not renewed, the deadline runs on
        if leader == home.id:
            self._keep_alive_at_leader(home, worker, token, seq)
        else:
            name = self.sim.nodes[leader].name
            self._network(
                home, name, lambda node: self._keep_alive_at_leader(node, worker, token, seq)
            )

    def _keep_alive_at_leader(self, node: SimNode, worker: SimWorker, token: int, seq: int) -> None:
        """``LeaseKeeper.renew``: a ReadIndex round first, then the renewal."""
        raft = node.raft
        if raft is None or raft.role is not Role.LEADER:
            return  # NotLeader: answered NO_LEADER, nothing renewed
        if not self.code.confirm_renewals:
            self._renew(node, worker, token, seq)
            return
        appended = raft.log.last_index if self.code.renew_after_appended else 0
        self._read_counter += 1
        try:
            raft.read_index(self._read_counter)
        except RaftError:
            return
        self.nodes[node.id].reads[self._read_counter] = (appended, worker, token, seq)
        self.sim.drain(node)

    def _renew(self, node: SimNode, worker: SimWorker, token: int, seq: int) -> None:
        raft = node.raft
        assert raft is not None
        leases = self.nodes[node.id]
        grant = leases.machine.holder(worker.election)
        if grant is None or grant.token != token:
            self._answer(node, worker, token, seq, None)
            return
        now_s = self.node_clock(node).at(self.sim.now)
        renewed = leases.deadlines.renew(
            worker.election, token, grant.ttl_ms, now_s, term=raft.term
        )
        self.sim.stats["renewals"] += renewed
        self._answer(node, worker, token, seq, grant.ttl_ms if renewed else 0)

    def _answer(
        self, node: SimNode, worker: SimWorker, token: int, seq: int, ttl_ms: int | None
    ) -> None:
        """The answer travels back to the worker's pod (over the network unless it is here)."""

        def deliver() -> None:
            self._acknowledged(worker, token, seq, ttl_ms)

        if node.name == worker.home:
            self._after(self.rng.randint(1, LOCAL_DELAY_MAX), deliver)
        else:
            self._network(
                node,
                worker.home,
                lambda _home: self._after(self.rng.randint(1, LOCAL_DELAY_MAX), deliver),
            )

    # ---- workers ---------------------------------------------------------------------

    def _campaign_timer(self, worker: SimWorker) -> Handler:
        epoch = worker.epoch

        def fire() -> None:
            if worker.epoch != epoch or worker.state == "holding":
                return
            if worker.state == "idle":
                # Retries keep the first attempt's send time (the client's _campaign).
                worker.state = "campaigning"
                worker.first_sent_at = worker.clock.at(self.sim.now)
                worker.resumed, worker.campaigned = worker.campaigned, True
            command = Campaign(
                election=worker.election,
                candidate=worker.candidate,
                ttl_ms=self.ttl_ms,
                key_digest=worker.key_digest,
                proposed_at_unix_ms=self._ms(),
            )
            self._at_node(
                self.rng.randint(1, LOCAL_DELAY_MAX),
                worker.home,
                lambda home: self._forward(home, command),
            )
            self._after(worker.clock.units_for(self.settings.ttl_units * UNIT_S / 2), fire)

        return fire

    def _grant_reaches(self, worker: SimWorker, token: int, ttl_ms: int) -> Handler:
        return lambda: self._granted(worker, token, ttl_ms)

    def _granted(self, worker: SimWorker, token: int, ttl_ms: int) -> None:
        if worker.state != "campaigning":
            return
        owner = self.tokens.setdefault((worker.election, token), worker.candidate)
        if owner != worker.candidate:
            raise SafetyViolation(
                f"Lease tokens: token {token} of {worker.election} went to {owner} "
                f"and to {worker.candidate}"
            )
        ttl_s = ttl_ms / 1000
        worker.rule = self.code.safe_deadline(ttl_s, default_margin_s(ttl_s))
        worker.state, worker.token = "holding", token
        resumed = worker.resumed and self.code.resumed_grant_needs_ack
        worker.deadline = worker.rule.initial(None if resumed else worker.first_sent_at)
        now_s = worker.clock.at(self.sim.now)
        # The client's _wait_usable: a queued candidate granted more than a
        # TTL after it first asked waits up to a TTL for one acknowledgement.
        worker.usable, worker.wait_until = worker.deadline > now_s, now_s + ttl_s
        worker.epoch += 1
        worker.sent_at.clear()
        self.sim.stats["grants"] += 1
        self._trace(
            f"{worker.name} granted {worker.election} token {token}, safe until "
            f"{worker.deadline:.3f} on its clock (now {worker.clock.at(self.sim.now):.3f})"
        )
        self._keep_alive_timer(worker)()

    def _keep_alive_timer(self, worker: SimWorker) -> Handler:
        epoch = worker.epoch

        def fire() -> None:
            if worker.epoch != epoch:
                return
            now = self.sim.now
            now_s = worker.clock.at(now)
            if worker.usable and now_s >= worker.deadline:
                self._lose(worker, "the safe deadline passed", revoke=True)
                return
            if not worker.usable and now_s >= worker.wait_until:
                self._lose(worker, "no acknowledgement within a TTL of the grant", revoke=True)
                return
            rule = worker.rule
            assert rule is not None
            if now >= worker.paused_until:
                worker.sequence += 1
                seq, token = worker.sequence, worker.token
                worker.sent_at[seq] = worker.clock.at(now)
                self._at_node(
                    self.rng.randint(1, LOCAL_DELAY_MAX),
                    worker.home,
                    lambda home: self._keep_alive_at_home(home, worker, token, seq),
                )
            self._after(worker.clock.units_for(rule.ttl_s / 4), fire)

        return fire

    def _acknowledged(self, worker: SimWorker, token: int, seq: int, ttl_ms: int | None) -> None:
        if worker.state != "holding" or worker.token != token:
            return
        sent_at = worker.sent_at.get(seq)
        for acked in [s for s in worker.sent_at if s <= seq]:
            del worker.sent_at[acked]
        if ttl_ms is None:
            self._lose(worker, "the sidecar says the lease ended", revoke=False)
            return
        if ttl_ms == 0:
            return  # current, but not renewed: the deadline runs on
        now_s = worker.clock.at(self.sim.now)
        if sent_at is None or (worker.usable and now_s >= worker.deadline):
            return  # a lost lease stays lost (the client's timer fires at the deadline)
        rule = worker.rule
        assert rule is not None
        worker.deadline = rule.acknowledged(
            worker.deadline, sent_at, ttl_ms, safety_margin_ms(ttl_ms)
        )
        worker.usable = worker.usable or worker.deadline > now_s

    def _lose(
        self,
        worker: SimWorker,
        why: str,
        *,
        revoke: bool,
        revoke_after: int = 1,
        restart: bool | None = None,
    ) -> None:
        """The lease is gone for this worker; its stream closes (the sidecar revokes,
        ``revoke_after`` units later). ``restart`` None: the process restarts at random."""
        token = worker.token
        worker.state, worker.deadline, worker.epoch = "idle", float("-inf"), worker.epoch + 1
        self.sim.stats["lost_leases"] += 1
        self._trace(f"{worker.name} loses {worker.election} token {token}: {why}")
        if revoke:
            command = Revoke(
                election=worker.election,
                token=token,
                proposed_at_unix_ms=self._ms(),
                reason="stream broke",
            )
            self._at_node(revoke_after, worker.home, lambda home: self._forward(home, command))
        if restart is None:
            restart = self.rng.random() < RESTART_AFTER_LOSS
        if restart:
            # The worker's process restarts: a new client, so a new key and a
            # first campaign again (its old grant or queue place is left to
            # the revoke, or to expiry, or to the queue's turn).
            worker.life += 1
            worker.key_digest = _key_digest(worker.name, worker.life)
            worker.campaigned = False
            self._trace(f"{worker.name} restarts as {worker.candidate}")
        self._after(self.rng.randint(1, self.settings.ttl_units), self._campaign_timer(worker))

    def _resign(self, worker: SimWorker) -> None:
        token = worker.token
        command = Resign(
            election=worker.election,
            key_digest=worker.key_digest,
            proposed_at_unix_ms=self._ms(),
            token=token,
        )
        self.sim.stats["resigns"] += 1
        self._lose(worker, "resigned", revoke=False)
        self._at_node(1, worker.home, lambda home: self._forward(home, command))

    # ---- faults and the checker ------------------------------------------------------

    def after_step(self) -> None:
        sim = self.sim
        if sim.faults_enabled:
            self._maybe_fault()
        self.check()

    def _maybe_fault(self) -> None:
        s, sim = self.settings, self.sim
        r = self.rng.random()
        if r < s.p_stall:
            live = [n for n in sim._live() if not self.stalled(n)]
            if live:
                node = self.rng.choice(live)
                length = self.rng.randint(1, s.stall_max_units)
                self.stalled_until[node.id] = sim.now + length
                sim.stats["stalls"] += 1
                self._trace(f"stall {node.id} for {length} units (a slow disk)")
            return
        r -= s.p_stall
        holding = [w for w in self.workers if w.state == "holding"]
        if r < s.p_pause and holding:
            worker = self.rng.choice(holding)
            worker.paused_until = sim.now + self.rng.randint(1, s.ttl_units * 3 // 2)
            sim.stats["pauses"] += 1
            self._trace(f"pause {worker.name} until {worker.paused_until}")
            return
        r -= s.p_pause
        if r < s.p_resign and holding:
            self._resign(self.rng.choice(holding))

    def check(self) -> None:
        """At most one worker per election inside its safe deadline, at this true instant."""
        now = self.sim.now
        believers: dict[str, SimWorker] = {}
        for worker in self.workers:
            if not worker.believes(now):
                continue
            other = believers.setdefault(worker.election, worker)
            if other is not worker:
                raise SafetyViolation(
                    f"Lease safety: at time {now} {other.name} (token {other.token}) and "
                    f"{worker.name} (token {worker.token}) both believe they hold "
                    f"{worker.election}"
                )
