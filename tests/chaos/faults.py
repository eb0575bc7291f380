"""The nemesis's hands: apply one fault to the running system, record it, undo it.

Each ``Nemesis`` method applies one fault kind of ``tests.chaos.nemesis``,
writes its ``fault`` start event once it is in force and its end event once
it is undone (the history contract), and leaves the system as whole as it
found it (dead processes restarted, links healed, disks emptied): faults
follow each other, so the report can tell their effects apart.
``heal_all`` is the safety net before the liveness phase.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from typing import TypeVar

from settlement_demo.faults import PAUSE_BEFORE_WRITE
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.chaos.harness import System, Worker, stopped
from tests.chaos.history import Fault, HistoryWriter
from tests.chaos.nemesis import Step, partition_sides
from tests.integration.cluster import Sidecar

T = TypeVar("T")
WHOLE_WAIT_S = 20.0
"""How long a disk or membership fault waits for every node to be a voter
again (the previous one's new incarnation promoted); skipped otherwise, since
two lost disks in a row within a 3-node cluster lose its quorum for good."""


def poll(probe: Callable[[], T | None], seconds: float, every: float = 0.05) -> T | None:
    """``probe()`` until it returns something, for at most ``seconds``; None then."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value is not None or time.monotonic() >= deadline:
            return value
        time.sleep(every)


class Nemesis:
    def __init__(self, system: System, history: HistoryWriter, say: Callable[[str], None]) -> None:
        self.system = system
        self.history = history
        self.say = say
        self.applied: list[str] = []
        self.skipped: list[str] = []

    # -- recording --

    def start(self, fault: str, targets: list[str], detail: str = "") -> None:
        self.history.record(Fault, fault=fault, phase="start", targets=targets, detail=detail)
        self.applied.append(fault)
        self.say(f"fault {fault} on {', '.join(targets)} {detail}".rstrip())

    def end(self, fault: str, targets: list[str], detail: str = "") -> None:
        self.history.record(Fault, fault=fault, phase="end", targets=targets, detail=detail)

    # -- targets --

    def node_for(self, step: Step) -> Sidecar:
        nodes = self.system.nodes
        rng = random.Random(step.pick)
        if step.target.startswith("node:"):
            return nodes[int(step.target.split(":")[1]) % len(nodes)]
        leader = self.system.raft_leader()
        if step.target == "leader" and leader is not None:
            return leader
        if step.target == "holder":
            node = self.holder_node()
            if node is not None:
                return node
        followers = [n for n in nodes if n is not leader and not self.system.sidecar_down(n)]
        return rng.choice(followers or nodes)

    def holder_node(self) -> Sidecar | None:
        held = self.system.holder()
        if held is None:
            return None
        worker = self.system.worker_of(held[0])
        return None if worker is None else self.system.nodes[worker.index]

    def worker_on(self, node: Sidecar) -> Worker:
        return self.system.workers[self.system.nodes.index(node)]

    # -- one step --

    def apply(self, step: Step) -> None:
        getattr(self, step.kind)(step, self.node_for(step))

    def kill_worker(self, step: Step, node: Sidecar) -> None:
        w = self.worker_on(node)
        before = w.worker_id
        self.start("kill_worker", [before], "SIGKILL")
        self.system.kill_worker(w, signal.SIGKILL)
        time.sleep(step.duration_s)
        self.system.start_worker(w)
        self.end("kill_worker", [before], f"restarted as {w.worker_id}")

    def pause_worker(self, step: Step, node: Sidecar) -> None:
        w = self.worker_on(node)
        if not w.alive() or w.process is None:
            return
        self.start("pause_worker", [w.worker_id], f"SIGSTOP {step.duration_s:.2f}s")
        w.process.send_signal(signal.SIGSTOP)
        time.sleep(step.duration_s)
        w.process.send_signal(signal.SIGCONT)
        self.end("pause_worker", [w.worker_id], "SIGCONT")

    def pause_worker_at_write(self, step: Step, node: Sidecar) -> None:
        """The holder stops itself between its lease check and a chunk write;
        it gets SIGCONT once another worker holds (or ``duration_s`` passed)."""
        w = self.worker_on(node)
        if not w.alive() or w.process is None:
            return
        held = self.system.holder()
        w.fault_file.write_text(PAUSE_BEFORE_WRITE)
        if poll(lambda: stopped(w.process) or None, 5.0) is None:
            w.fault_file.unlink(missing_ok=True)
            self.skipped.append(f"pause_worker_at_write: {w.worker_id} wrote no chunk within 5s")
            return
        self.start("pause_worker_at_write", [w.worker_id], PAUSE_BEFORE_WRITE)
        me = w.worker_id

        def taken_over() -> bool | None:
            h = self.system.holder()
            return (
                True if h is not None and h[0] != me and (held is None or h[1] > held[1]) else None
            )

        took = poll(taken_over, step.duration_s, every=0.05)
        time.sleep(0.3)  # let the new holder raise its fence first
        w.process.send_signal(signal.SIGCONT)
        detail = "SIGCONT after another worker took over" if took else "SIGCONT, no takeover"
        self.end("pause_worker_at_write", [me], detail)

    def kill_sidecar(self, step: Step, node: Sidecar) -> None:
        self._down_up("kill_sidecar", node, signal.SIGKILL, step.duration_s)

    def term_sidecar(self, step: Step, node: Sidecar) -> None:
        self._down_up("term_sidecar", node, signal.SIGTERM, step.duration_s)

    def transfer(self, step: Step, node: Sidecar) -> None:
        """SIGTERM on the Raft leader hands leadership over (TimeoutNow) before it exits."""
        self._down_up("transfer", node, signal.SIGTERM, 0.0)

    def _down_up(self, fault: str, node: Sidecar, sig: int, down_s: float) -> None:
        role = "leader" if node is self.system.raft_leader() else "follower"
        self.start(fault, [node.node_id], f"{signal.Signals(sig).name} ({role})")
        self.system.stop_sidecar(node, sig)
        time.sleep(down_s)
        self.system.start_sidecar(node)
        self.end(fault, [node.node_id], "restarted")

    def pause_sidecar(self, step: Step, node: Sidecar) -> None:
        if self.system.sidecar_down(node) or node.process is None:
            return
        role = "leader" if node is self.system.raft_leader() else "follower"
        self.start("pause_sidecar", [node.node_id], f"SIGSTOP {step.duration_s:.2f}s ({role})")
        node.process.send_signal(signal.SIGSTOP)
        time.sleep(step.duration_s)
        node.process.send_signal(signal.SIGCONT)
        self.end("pause_sidecar", [node.node_id], "SIGCONT")

    def partition(self, step: Step, node: Sidecar) -> None:
        lab = self.system.lab
        assert lab is not None
        names = lab.names
        mode = "blackhole" if step.mode == "blackhole" else "fastfail"
        pairs = partition_sides(step.shape, names, node.node_id, step.pick)
        if step.shape == "one_way":
            ((a, b),) = pairs
            port = self.system.nodes[names.index(b)].peer_port
            targets = [a, b]
            self.start("partition", targets, f"one_way {a}->{b} {mode}")
            lab.cut_one_way(a, b, port, mode)
            time.sleep(step.duration_s)
        elif step.shape == "rolling":
            order = names[names.index(node.node_id) :] + names[: names.index(node.node_id)]
            targets = list(order)
            self.start("partition", targets, f"rolling isolate {mode}")
            for name in order:
                lab.isolate(name, mode)
                time.sleep(step.duration_s / len(order))
                lab.heal()
        else:
            targets = sorted({n for pair in pairs for n in pair})
            cut = " ".join(f"{a}|{b}" for a, b in pairs)
            self.start("partition", targets, f"{step.shape} {mode}: {cut}")
            for a, b in pairs:
                lab.cut(a, b, mode)
            time.sleep(step.duration_s)
        lab.heal()
        self.end("partition", targets, "healed")

    def disk_full(self, step: Step, node: Sidecar) -> None:
        self.start("disk_full", [node.node_id], "tmpfs filled to ENOSPC")
        written = self.system.fill(node)
        time.sleep(step.duration_s)
        self.system.unfill(node)
        detail = f"freed {written >> 20} MiB"
        if self.system.sidecar_down(node):
            self.system.start_sidecar(node)
            detail += "; the sidecar had stopped: restarted"
        self.end("disk_full", [node.node_id], detail)

    def disk_loss(self, step: Step, node: Sidecar) -> None:
        if not self.whole("disk_loss"):
            return
        self.start("disk_loss", [node.node_id], "SIGKILL, data directory wiped")
        self.system.stop_sidecar(node, signal.SIGKILL)
        self.system.wipe(node)
        time.sleep(step.duration_s)
        self.system.start_sidecar(node)
        self.end("disk_loss", [node.node_id], "restarted as a new incarnation")

    def member_remove(self, step: Step, node: Sidecar) -> None:
        """``members remove`` a follower, keep it out a while, then it rejoins
        wiped (a removed incarnation never returns) and is added back."""
        self._remove_and_rejoin("member_remove", node, step.duration_s)

    def member_replace(self, step: Step, node: Sidecar) -> None:
        self._remove_and_rejoin("member_replace", node, step.duration_s)

    def _remove_and_rejoin(self, fault: str, node: Sidecar, out_s: float) -> None:
        if not self.whole(fault):
            return
        server = node.server_id()
        other = next(n for n in self.system.nodes if n is not node)
        self.start(fault, [node.node_id], f"members remove {server}")
        removed = other.members("remove", server)
        self.system.stop_sidecar(node, signal.SIGTERM)
        time.sleep(out_s)
        self.system.wipe(node)
        self.system.start_sidecar(node)
        # Ended as soon as the new incarnation starts: its Observe stream
        # then starts over from an older holder, which the checkers judge
        # apart from what the removed incarnation reported.
        self.end(fault, [node.node_id], f"{_one_line(removed.stdout + removed.stderr)}; back wiped")
        self.start("member_add", [node.node_id], f"members add {node.node_id}")
        added = poll(lambda: _added(other, node), 15.0, every=0.3)
        self.end("member_add", [node.node_id], added or "not answered within 15s")

    # -- whole again --

    def whole(self, fault: str) -> bool:
        """Every node a voter, answering, one leader: else skip ``fault``."""

        def check() -> bool | None:
            statuses = [self.system.status(n) for n in self.system.nodes]
            if any(st is None or st.member_role != worker_pb2.PEER_ROLE_VOTER for st in statuses):
                return None
            leaders = {st.leader_id for st in statuses if st is not None}
            return True if len(leaders) == 1 and "" not in leaders else None

        if poll(check, WHOLE_WAIT_S, every=0.2):
            return True
        self.skipped.append(f"{fault}: the cluster was not whole within {WHOLE_WAIT_S:.0f}s")
        self.say(f"skip {fault}: the cluster is not whole")
        return False

    def heal_all(self) -> list[str]:
        """Links healed, disks emptied, every process running again; returns what it did."""
        did = []
        lab = self.system.lab
        if lab is not None and (lab.cuts or lab.one_way_cuts):
            lab.heal()
            did.append("links healed")
        for node in self.system.nodes:
            self.system.unfill(node)
            if stopped(node.process) and node.process is not None:
                node.process.send_signal(signal.SIGCONT)
                did.append(f"SIGCONT {node.node_id}")
            if self.system.sidecar_down(node):
                self.system.start_sidecar(node)
                did.append(f"restarted {node.node_id}")
        for w in self.system.workers:
            w.fault_file.unlink(missing_ok=True)
            if stopped(w.process) and w.process is not None:
                w.process.send_signal(signal.SIGCONT)
                did.append(f"SIGCONT {w.worker_id}")
            if not w.alive():
                self.system.start_worker(w)
                did.append(f"restarted worker {w.index} as {w.worker_id}")
        return did


def _added(via: Sidecar, node: Sidecar) -> str | None:
    """``members add NAME`` once the new incarnation says hello: its answer, or
    None while the leader has not heard it (NOT_FOUND)."""
    result = via.members("add", node.node_id)
    text = _one_line(result.stdout + result.stderr)
    if result.returncode == 0 or "ALREADY_EXISTS" in text or "already" in text.lower():
        return text or "ok"
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:160]
