"""``settlement-demo run``: a local cluster, a scripted failover scenario, an audit.

Starts three sidecars and three settlement workers on loopback with the
SQLite ledger, keeps batches coming, and plays, in order:

1. worker crash: kill -9 the holding worker in the middle of a run;
2. pause: the next holder stops itself (SIGSTOP) right before a chunk write,
   after its last lease check; the lease expires, another worker takes over
   and redoes that chunk; then SIGCONT: the stale write really goes out;
3. Raft leader crash: kill -9 the sidecar that is the Raft leader;
4. graceful handover: SIGTERM the holding worker (it resigns);

then lets the workers settle everything and audits the ledger: every batch
settled once, every payout made once, totals equal to what was generated.
With ``--no-fencing`` the workers skip the fence check and the audit shows
the duplicates the stale holder wrote. Exit status 0 only when the audit is
clean.
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from settlement_demo.faults import PAUSE_BEFORE_WRITE
from settlement_demo.generator import generate_batch
from settlement_demo.ledger import AuditReport, FenceRejection, Ledger, open_ledger
from settlement_demo.localcluster import LocalCluster, wait_until
from settlement_demo.redact import redact
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2

ELECTION = "settlement-eur"
TTL_MS = 2000
CHUNK_SIZE = 5
INSTRUCTIONS_PER_BATCH = 40
STEP_DELAY_MS = 60
OPEN_BATCHES_WANTED = 2
SETTLE_TIMEOUT_S = 120.0


@dataclass
class Failover:
    fault: str
    from_holder: str
    from_token: int
    to_holder: str | None
    to_token: int | None
    seconds: float | None
    note: str = ""


@dataclass
class GrantLine:
    fencing_token: int
    holder: str
    granted_at_s: float | None
    ended_at_s: float | None
    end_reason: str


@dataclass
class DemoReport:
    fencing: bool
    ttl_ms: int
    duration_s: float = 0.0
    failovers: list[Failover] = field(default_factory=list)
    timeline: list[GrantLine] = field(default_factory=list)
    stale_writes_rejected: list[FenceRejection] = field(default_factory=list)
    audit: AuditReport | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.audit is not None and self.audit.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "fencing": self.fencing,
            "ttl_ms": self.ttl_ms,
            "duration_s": round(self.duration_s, 3),
            "error": self.error,
            "failovers": [asdict(f) for f in self.failovers],
            "timeline": [asdict(g) for g in self.timeline],
            "stale_writes_rejected": [asdict(r) for r in self.stale_writes_rejected],
            "audit": self.audit.to_dict() if self.audit is not None else None,
        }


class Scenario:
    def __init__(self, root: Path, *, fencing: bool, say: Callable[[str], None]) -> None:
        self.root = root
        self.fencing = fencing
        self._say = say
        self.began = time.monotonic()
        self.began_wall = time.time()
        self.ledger_url = f"sqlite:///{root.resolve() / 'ledger.sqlite3'}"  # four slashes: absolute
        worker_args = [
            "--ttl-ms", str(TTL_MS), "--chunk-size", str(CHUNK_SIZE),
            "--step-delay-ms", str(STEP_DELAY_MS), "--fencing", "true" if fencing else "false",
        ]  # fmt: skip
        self.cluster = LocalCluster(
            root, ledger_url=self.ledger_url, election=ELECTION, worker_args=worker_args
        )
        self.ledger: Ledger | None = None
        self.report = DemoReport(fencing=fencing, ttl_ms=TTL_MS)
        self._batches = 0

    def say(self, text: str) -> None:
        self._say(f"[{time.monotonic() - self.began:6.2f}s] {text}")

    # ---- the script --------------------------------------------------------------

    def run(self) -> DemoReport:
        try:
            self._start()
            self._worker_crash()
            self._pause()
            self._raft_leader_crash()
            self._graceful_handover()
            self._finish()
        except (TimeoutError, RuntimeError) as exc:
            self.report.error = redact(str(exc))
            self.say(f"scenario failed: {self.report.error}")
        finally:
            self._collect()
            self.cluster.stop_all()
            if self.ledger is not None:
                self.report.audit = self.ledger.audit()
                self.report.stale_writes_rejected = self.ledger.fence_rejections()
                self.ledger.close()
            self.report.duration_s = time.monotonic() - self.began
        return self.report

    def _start(self) -> None:
        c = self.cluster
        self.say(f"starting 3 sidecars and 3 workers in {self.root}")
        self.ledger = open_ledger(self.ledger_url, worker_id="generator")
        self.ledger.create_schema()
        self._top_up()
        for s in c.sidecars:
            c.start_sidecar(s)
        leader = wait_until(c.raft_leader, "a Raft leader", 30)
        self.say(f"Raft leader: sidecar {leader.node_id}")
        for w in c.workers:
            c.start_worker(w)
        holder = wait_until(c.holder, "a first holder", 30)
        self.say(f"{holder[0]} holds {ELECTION} with fencing token {holder[1]}")

    def _worker_crash(self) -> None:
        holder, token = self._holder_mid_run()
        worker = self.cluster.worker(holder)
        self.say(f"fault 1: kill -9 worker {holder} (token {token}) in the middle of a run")
        t0 = time.monotonic()
        worker.signal(signal.SIGKILL)
        worker.wait(10)
        new = self._next_holder(token)
        self._failover("worker crash (kill -9)", holder, token, new, time.monotonic() - t0)
        self.cluster.start_worker(worker)
        self.say(f"restarted worker {holder}; it queues as a candidate again")

    def _pause(self) -> None:
        holder, token = self._holder_mid_run()
        worker = self.cluster.worker(holder)
        assert worker.fault_file is not None
        self.say(
            f"fault 2: {holder} (token {token}) will freeze right before its next write, "
            "after its last lease check"
        )
        worker.fault_file.write_text(PAUSE_BEFORE_WRITE)
        wait_until(lambda: worker.stopped_by_signal() or None, f"{holder} to pause", 30)
        t0 = time.monotonic()
        self.say(f"{holder} is frozen (SIGSTOP) with a write in hand; its lease runs out")
        new = self._next_holder(token, timeout=TTL_MS / 1000 * 3 + 10)
        self._failover(
            "pause longer than the TTL (SIGSTOP)", holder, token, new, time.monotonic() - t0
        )
        written = self._audit().payouts_written
        wait_until(
            lambda: self._audit().payouts_written > written or None,
            f"{new[0]} to redo the frozen worker's chunk",
            30,
        )
        before = self._audit()
        self.say(
            f"{new[0]} has redone that chunk; resuming {holder} (SIGCONT): its stale write goes out"
        )
        worker.signal(signal.SIGCONT)
        after = wait_until(
            lambda: self._stale_write_seen(before),
            f"{holder}'s stale write to reach the ledger",
            20,
        )
        if after.stale_writes_rejected > before.stale_writes_rejected:
            self.say(f"the ledger rejected {holder}'s write with stale token {token}")
        else:
            self.say(
                f"no fence: the ledger accepted {holder}'s stale write "
                f"({after.duplicate_payouts} duplicate payouts)"
            )

    def _raft_leader_crash(self) -> None:
        c = self.cluster
        leader = wait_until(c.raft_leader, "a Raft leader", 30)
        before = wait_until(c.holder, "a holder", 30)
        self.say(f"fault 3: kill -9 sidecar {leader.node_id}, the Raft leader")
        t0 = time.monotonic()
        leader.signal(signal.SIGKILL)
        leader.wait(10)
        leader.close()
        new_leader = wait_until(c.raft_leader, "a new Raft leader", 30)
        elapsed = time.monotonic() - t0
        self.say(f"sidecar {new_leader.node_id} is the Raft leader after {elapsed * 1000:.0f} ms")
        time.sleep(TTL_MS / 1000 / 2)
        after = wait_until(c.holder, "a holder", 30)
        kept = after == before
        note = (
            f"holder {before[0]} kept token {before[1]} through the Raft failover"
            if kept
            else f"holder changed from {before[0]}/{before[1]} to {after[0]}/{after[1]} "
            "(its own sidecar was the one killed)"
        )
        self.say(note)
        self.report.failovers.append(
            Failover("Raft leader crash (kill -9 sidecar)", before[0], before[1],
                     after[0], after[1], elapsed, note)
        )  # fmt: skip
        c.start_sidecar(leader)
        self.say(f"restarted sidecar {leader.node_id}; it rejoins from its data directory")

    def _graceful_handover(self) -> None:
        holder, token = self._holder_mid_run()
        worker = self.cluster.worker(holder)
        self.say(f"fault 4: SIGTERM worker {holder} (token {token}): graceful handover")
        t0 = time.monotonic()
        worker.signal(signal.SIGTERM)
        new = self._next_holder(token)
        self._failover("graceful handover (SIGTERM)", holder, token, new, time.monotonic() - t0)
        worker.wait(10)
        self.cluster.start_worker(worker)

    def _finish(self) -> None:
        self.say("scenario done; letting the workers settle every batch")
        wait_until(self._all_settled, "every batch to be settled", SETTLE_TIMEOUT_S, poll=0.1)
        self.say("every batch is settled")

    # ---- helpers -----------------------------------------------------------------

    def _audit(self) -> AuditReport:
        assert self.ledger is not None
        return self.ledger.audit()

    def _top_up(self) -> None:
        """Keep a couple of open batches, so a run is always in progress."""
        assert self.ledger is not None
        audit = self.ledger.audit()
        for _ in range(OPEN_BATCHES_WANTED - audit.open_batches):
            self._batches += 1
            generate_batch(
                self.ledger, ELECTION, f"batch-{self._batches:03d}", INSTRUCTIONS_PER_BATCH
            )

    def _holder_mid_run(self) -> tuple[str, int]:
        """Wait for a holder that has written at least one chunk since we looked."""
        self._top_up()
        holder = wait_until(self.cluster.holder, "a holder", 30)
        written = self._audit().payouts_written
        wait_until(
            lambda: self._audit().payouts_written > written or None,
            f"{holder[0]} to write a chunk",
            30,
            poll=0.02,
        )
        now = wait_until(self.cluster.holder, "a holder", 30)
        self._top_up()
        return now

    def _next_holder(self, token: int, timeout: float = 30) -> tuple[str, int]:
        def probe() -> tuple[str, int] | None:
            h = self.cluster.holder()
            return h if h is not None and h[1] > token else None

        return wait_until(probe, "the next holder", timeout, poll=0.005)

    def _failover(
        self, fault: str, holder: str, token: int, new: tuple[str, int], seconds: float
    ) -> None:
        self.say(f"{new[0]} holds {ELECTION} with token {new[1]} after {seconds * 1000:.0f} ms")
        self.report.failovers.append(Failover(fault, holder, token, new[0], new[1], seconds))

    def _stale_write_seen(self, before: AuditReport) -> AuditReport | None:
        now = self._audit()
        if now.stale_writes_rejected > before.stale_writes_rejected:
            return now
        if now.duplicate_payouts > before.duplicate_payouts:
            return now
        return None

    def _all_settled(self) -> bool | None:
        audit = self._audit()
        return True if audit.open_batches == 0 and audit.running_batches == 0 else None

    def _collect(self) -> None:
        """The timeline from the sidecars' audit trail, once it shows every
        token the failovers saw: a sidecar restarted just before answers from
        what it has applied so far, which may still be nothing."""
        seen = {t for f in self.report.failovers for t in (f.from_token, f.to_token) if t}

        def complete() -> list[worker_pb2.GrantRecord] | None:
            records = self.cluster.grants()
            tokens = {int(g.fencing_token) for g in records}
            return records if records and seen <= tokens else None

        try:
            records = wait_until(complete, "the grant audit trail", timeout=20, poll=0.1)
        except TimeoutError as exc:
            records = self.cluster.grants()
            if self.report.error is None:
                self.report.error = f"the leadership timeline is incomplete: {exc}"
        for g in records:
            reason = worker_pb2.GrantEndReason.Name(g.end_reason).removeprefix("GRANT_END_REASON_")
            self.report.timeline.append(
                GrantLine(
                    fencing_token=int(g.fencing_token),
                    holder=g.holder,
                    granted_at_s=self._since_start(g.granted_at_unix_ms),
                    ended_at_s=self._since_start(g.ended_at_unix_ms),
                    end_reason="holding" if reason == "UNSPECIFIED" else reason.lower(),
                )
            )

    def _since_start(self, unix_ms: int) -> float | None:
        return round(unix_ms / 1000 - self.began_wall, 3) if unix_ms else None


def format_report(report: DemoReport) -> str:
    lines = ["", "== leadership timeline (from the sidecars' grant audit trail) =="]
    lines.append(f"{'token':>6}  {'holder':<6} {'from':>8} {'until':>8}  how it ended")
    for g in report.timeline:
        start = "?" if g.granted_at_s is None else f"{g.granted_at_s:.2f}s"
        end = "-" if g.ended_at_s is None else f"{g.ended_at_s:.2f}s"
        lines.append(f"{g.fencing_token:>6}  {g.holder:<6} {start:>8} {end:>8}  {g.end_reason}")
    lines.append("")
    lines.append("== failovers ==")
    for f in report.failovers:
        took = "?" if f.seconds is None else f"{f.seconds * 1000:.0f} ms"
        lines.append(
            f"{f.fault:<40} {f.from_holder}/{f.from_token} -> {f.to_holder}/{f.to_token}  {took}"
        )
        if f.note:
            lines.append(f"{'':<40} {f.note}")
    lines.append("")
    lines.append(f"== stale writes rejected by the ledger: {len(report.stale_writes_rejected)} ==")
    for r in report.stale_writes_rejected:
        if r.reason == "holder_conflict":
            lines.append(
                f"HOLDER CONFLICT: {r.worker_id} tried {r.step} with token {r.presented}, "
                f"which the fence records for {r.current_holder}"
            )
        else:
            lines.append(
                f"{r.worker_id} tried {r.step} with token {r.presented}; "
                f"the fence was at {r.current}"
            )
    lines.append("")
    a = report.audit
    if a is not None:
        lines.append("== ledger audit ==")
        lines.append(f"batches generated {a.batches}, settled {a.batches_settled}")
        lines.append(
            f"settlements {a.settlements}, duplicate settlements {a.duplicate_settlements}"
        )
        lines.append(
            f"payouts expected {a.payouts_expected}, written {a.payouts_written}, "
            f"duplicate {a.duplicate_payouts}, missing {a.missing_payouts}"
        )
        lines.append(
            f"expected total {a.expected_total_cents / 100:.2f}, "
            f"paid total {a.paid_total_cents / 100:.2f}"
        )
        lines.append(
            f"tokens gone backwards within a run {a.token_regressions}, "
            f"tokens written by several holders {a.shared_tokens}, "
            f"holder conflicts refused by the fence {a.holder_conflicts_rejected}"
        )
        lines.extend(f"  {finding}" for finding in a.findings)
    if report.error:
        lines.append(f"scenario error: {report.error}")
    verdict = "PASS: every batch settled exactly once" if report.ok else "FAIL"
    if not report.ok and a is not None and not report.fencing and report.error is None:
        verdict += " (as expected without fencing: the stale holder's writes went through)"
    lines.append(verdict)
    return "\n".join(lines)


def run_demo(*, fencing: bool, json_path: Path | None, keep: Path | None) -> int:
    root = keep if keep is not None else Path(tempfile.mkdtemp(prefix="settlement-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    mode = "with" if fencing else "WITHOUT"
    print(f"settlement demo {mode} fencing: 3 sidecars, 3 workers, SQLite ledger", flush=True)
    try:
        report = Scenario(root.resolve(), fencing=fencing, say=lambda t: print(t, flush=True)).run()
        print(format_report(report), flush=True)
        if json_path is not None:
            json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
            print(f"report written to {json_path}")
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs and ledger kept in {root}")
    return 0 if report.ok else 1
