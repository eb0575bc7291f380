"""One chaos run: start the system, load it, break it, heal it, judge the history.

Theory of operation (docs/chaos.md)
-----------------------------------
1. *Start*: ``harness.System`` (sidecars and workers in the lab's
   namespaces, the ledger), one ``Observer`` per sidecar, and a loader that
   keeps ``OPEN_BATCHES`` batches open in the ledger so there is always work
   to settle while holders change.
2. *Faults*: the seed's ``nemesis.schedule`` (or, for a negative control,
   its targeted scenario, ``controls``) applied one fault after another by
   ``faults.Nemesis`` for the fault phase.
3. *Heal*: every link, disk and process restored (``heal`` event); the
   liveness phase measures when a majority of sidecars names a holder again
   and when every node reached the leader's applied index, within
   ``LIVENESS_BOUND_S``.
4. *Drain*: no new batches; the workers settle what is open (bounded).
5. *Final*: the ledger audit, every node's grant audit trail and state
   digest, the liveness figures; every process stopped; the per-process
   history files merged into ``history.jsonl``; H3's checkers and report
   (``tests/chaos/checkers.py``, ``report.py``) judge it into
   ``report.txt``/``report.json``.

Exit status: 0 when the report passes (no violation; for a negative
control: its defect caught), 1 otherwise. The last line printed is the
command that replays the run.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from settlement_demo.generator import generate_batch
from settlement_demo.ledger import Ledger, LedgerError
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.chaos import controls, history
from tests.chaos.faults import Nemesis, poll
from tests.chaos.harness import ELECTION, System, Timings
from tests.chaos.history import (
    FinalDigest,
    FinalGrants,
    FinalLedger,
    Heal,
    HistoryWriter,
    Liveness,
    Planted,
)
from tests.chaos.nemesis import schedule
from tests.chaos.observer import Observer
from tests.integration.cluster import Sidecar

OPEN_BATCHES = 2
INSTRUCTIONS_PER_BATCH = 20
LIVENESS_BOUND_S = 30.0
DRAIN_S = 60.0
SETTLE_S = 3.0
"""Quiet time after the start before the first fault (a first holder)."""


@dataclass(frozen=True, slots=True)
class RunConfig:
    seed: int
    minutes: float
    nodes: int
    backend: str
    plant: str | None
    out: Path

    def argv(self) -> list[str]:
        """The arguments that replay this run."""
        args = ["--seed", str(self.seed), "--minutes", f"{self.minutes:g}",
                "--nodes", str(self.nodes), "--ledger", self.backend]  # fmt: skip
        return [*args, "--plant", self.plant] if self.plant else args

    def replay(self) -> str:
        return shlex.join(["python", "-m", "tests.chaos", *self.argv()])


class Loader:
    """Keeps ``OPEN_BATCHES`` batches open while running, from the root namespace."""

    def __init__(self, ledger: Ledger, say: Callable[[str], None]) -> None:
        self.ledger = ledger
        self.say = say
        self.generated = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                audit = self.ledger.audit()
                for _ in range(max(0, OPEN_BATCHES - audit.open_batches)):
                    self.generated += 1
                    generate_batch(
                        self.ledger, ELECTION, f"chaos-{self.generated}",
                        count=INSTRUCTIONS_PER_BATCH, seed=self.generated,
                    )  # fmt: skip
            except LedgerError as exc:  # busy under load: try again next round
                self.say(f"loader: {exc}")
            self._stop.wait(0.5)


class Run:
    def __init__(self, config: RunConfig, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.out = config.out
        self.out.mkdir(parents=True, exist_ok=True)
        self._say = say
        self.began = time.monotonic()
        control = controls.CONTROLS.get(config.plant) if config.plant else None
        if config.plant and control is None:
            raise ValueError(
                f"no negative control {config.plant!r}: one of {', '.join(controls.CONTROLS)}"
            )
        self.control = control
        self.system = System(
            self.out,
            nodes=config.nodes,
            backend=config.backend,
            timings=control.timings if control else Timings(),
            wrap_sidecars=control.wrap_sidecars if control else (),
            wrap_workers=control.wrap_workers if control else (),
            worker_args=control.worker_args if control else (),
            node_flags=dict(control.node_flags or {}) if control else None,
        )
        self.runner = HistoryWriter(self.out / "runner.jsonl", "runner")
        self.nemesis_history = HistoryWriter(self.out / "nemesis.jsonl", "nemesis")
        self.nemesis = Nemesis(self.system, self.nemesis_history, self.say)
        self.observers: list[Observer] = []

    def say(self, text: str) -> None:
        self._say(f"[{time.monotonic() - self.began:7.2f}s] {text}")

    # -- the run --

    def run(self) -> int:
        cfg = self.config
        self.say(f"chaos run: {cfg.replay()} -> {self.out}")
        self.runner.record(Planted, defect=cfg.plant)
        fault_s = max(0.0, cfg.minutes * 60 - SETTLE_S)
        try:
            self.system.start()
            ledger = self.system.ledger()
            loader = Loader(ledger, self.say)
            loader.start()
            self._observe()
            time.sleep(SETTLE_S)
            self._faults(fault_s)
            healed_at = self._heal()
            holder_at, caught_up_at = self._liveness(healed_at)
            loader.stop()
            self._drain(ledger)
            self._finals(ledger, healed_at, holder_at, caught_up_at)
            ledger.close()
        finally:
            for o in self.observers:
                o.stop()
            self.system.close()
            self.runner.close()
            self.nemesis_history.close()
        return self._judge()

    def _observe(self) -> None:
        for node in self.system.nodes:
            writer = HistoryWriter(
                self.out / f"observer-{node.node_id}.jsonl", f"observer:{node.node_id}"
            )
            observer = Observer(node.api, node.node_id, ELECTION, writer)
            observer.start()
            self.observers.append(observer)

    def _faults(self, seconds: float) -> None:
        start = time.monotonic()
        until = start + seconds
        if self.config.plant:
            controls.run_control(self.config.plant, self.nemesis, until)
            return
        for step in schedule(self.config.seed, seconds, self.config.nodes):
            wait = start + step.at_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if time.monotonic() >= until:
                break
            self.nemesis.apply(step)

    def _heal(self) -> float:
        did = self.nemesis.heal_all()
        self.say(f"heal: {', '.join(did) or 'nothing left to heal'}")
        event = self.nemesis_history.record(Heal)
        return event.t

    def _liveness(self, healed_at: float) -> tuple[float | None, float | None]:
        deadline = healed_at + LIVENESS_BOUND_S + 5

        def majority_holder() -> float | None:
            views = [self._holder_at(n) for n in self.system.nodes]
            named = [v for v in views if v]
            best = max((named.count(v) for v in named), default=0)
            return time.monotonic() if best > len(views) // 2 else None

        holder_at = poll(majority_holder, max(0.0, deadline - time.monotonic()), every=0.1)

        def caught_up() -> float | None:
            statuses = [self.system.status(n) for n in self.system.nodes]
            if any(st is None for st in statuses):
                return None
            leader = [
                st for st in statuses if st is not None and st.role == worker_pb2.RAFT_ROLE_LEADER
            ]
            if len(leader) != 1:
                return None
            target = leader[0].applied_index
            ok = all(st is not None and st.applied_index == target for st in statuses)
            return time.monotonic() if ok else None

        caught_up_at = poll(caught_up, max(0.0, deadline - time.monotonic()), every=0.1)
        self.say(
            f"liveness: holder after {_since(holder_at, healed_at)}, "
            f"caught up after {_since(caught_up_at, healed_at)}"
        )
        return holder_at, caught_up_at

    def _holder_at(self, node: Sidecar) -> str | None:
        if self.system.sidecar_down(node):
            return None
        try:
            answer = node.stub().Leader(worker_pb2.LeaderRequest(election=ELECTION), timeout=1)
        except grpc.RpcError:
            return None
        if not answer.HasField("holder") or not answer.holder.candidate_id:
            return None
        return f"{answer.holder.candidate_id}#{answer.holder.fencing_token}"

    def _drain(self, ledger: Ledger) -> None:
        def drained() -> bool | None:
            try:
                audit = ledger.audit()
            except LedgerError:
                return None
            return True if audit.open_batches == 0 and audit.running_batches == 0 else None

        done = poll(drained, DRAIN_S, every=0.5)
        self.say("drained: every batch settled" if done else f"not drained within {DRAIN_S:.0f}s")

    def _finals(
        self, ledger: Ledger, healed_at: float, holder_at: float | None, caught_up_at: float | None
    ) -> None:
        audit = ledger.audit()
        self.runner.record(FinalLedger, audit=audit.to_dict(), backend=self.config.backend)
        for node in self.system.nodes:
            grants = _grants(node)
            if grants is not None:
                self.runner.record(FinalGrants, node=node.node_id, grants=grants)
            digest = _digest(node)
            if digest is not None:
                self.runner.record(
                    FinalDigest, node=node.node_id, applied_index=digest[0], digest=digest[1]
                )
        self.runner.record(
            Liveness,
            healed_at=healed_at,
            holder_at=holder_at,
            caught_up_at=caught_up_at,
            bound_s=LIVENESS_BOUND_S,
        )

    # -- judging --

    def _judge(self) -> int:
        paths = sorted(self.out.glob("*.jsonl"))
        paths = [p for p in paths if p.name != "history.jsonl"]
        events = history.merge(paths)
        history.dump(self.out / "history.jsonl", events)
        try:
            from tests.chaos.report import build_report  # noqa: PLC0415
        except ImportError as exc:  # H3's checkers are not on this branch yet
            self.say(f"no checkers to judge the history ({exc}): {len(events)} events recorded")
            print(f"replay: {self.config.replay()}")
            return 2
        report = build_report(events, seed=self.config.seed, argv=self.config.argv())
        (self.out / "report.txt").write_text(report.to_text())
        (self.out / "report.json").write_text(report.to_json())
        print(report.to_text())
        self.say(
            f"{len(events)} events; faults applied {len(self.nemesis.applied)}, "
            f"skipped {len(self.nemesis.skipped)}; {report.verdict()}"
        )
        print(f"replay: {self.config.replay()}")
        return 0 if report.passed else 1


def _since(t: float | None, origin: float) -> str:
    return "never" if t is None else f"{t - origin:.2f}s"


def _grants(node: Sidecar) -> list[dict[str, object]] | None:
    """The node's audit trail of the election (ListGrants, every page), or None."""
    records: list[dict[str, object]] = []
    after = 0
    try:
        while True:
            page = node.stub().ListGrants(
                worker_pb2.ListGrantsRequest(election=ELECTION, after_fencing_token=after),
                timeout=3,
            )
            for g in page.grants:
                ended = bool(g.ended_at_index)
                records.append({
                    "election": ELECTION,
                    "token": int(g.fencing_token),
                    "worker": g.holder,
                    "granted_at_ms": int(g.granted_at_unix_ms),
                    "ended_at_ms": int(g.ended_at_unix_ms) if ended else None,
                    "end_reason": worker_pb2.GrantEndReason.Name(g.end_reason) if ended else None,
                })  # fmt: skip
            if not page.more or not page.grants:
                return records
            after = page.grants[-1].fencing_token
    except grpc.RpcError:
        return None


def _digest(node: Sidecar) -> tuple[int, int] | None:
    """(applied index, state digest) from the node's metrics, or None."""
    try:
        text = node.metrics()
    except OSError:
        return None
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = sample.value
    if "raft_sidecar_state_digest" not in values:
        return None
    return int(values["raft_sidecar_state_digest_index"]), int(values["raft_sidecar_state_digest"])
