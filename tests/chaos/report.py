"""The report of one chaos run, in text for people and JSON for machines.

Built from the run's history alone (plus the seed and the runner's replay
arguments), so a history file kept from CI can be reported again anywhere:
counts, a holder timeline per election with the fault in force at each
change, the nemesis events, every violation with its excerpt, and the one
command that replays the run. Times are shown in seconds since the first
event of the history.

A run with a planted defect (a negative control) passes when the checkers
*do* report violations: a checker that cannot fail proves nothing.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.checkers import (
    FaultWindow,
    Violation,
    audit_of,
    check_all,
    fault_windows,
    faults_in_force,
)
from tests.chaos.history import (
    Event,
    Fault,
    FinalDigest,
    FinalGrants,
    FinalLedger,
    Granted,
    Heal,
    Holder,
    Lost,
    Planted,
    Resigned,
    Write,
)

REPLAY_PROGRAM = "python -m tests.chaos"
_RELATIVE_FIELDS = frozenset(
    {"deadline", "sent_at", "t_start", "healed_at", "holder_at", "caught_up_at"}
)
"""Fields that are times on the run's monotonic clock: shown since start."""


@dataclass(frozen=True, slots=True)
class HolderChange:
    election: str
    token: int
    worker: str
    at_s: float
    seen_by: str
    faults: tuple[str, ...]
    """The faults in force when the change was first seen."""
    ended_at_s: float | None
    end: str


@dataclass(frozen=True, slots=True)
class NemesisLine:
    at_s: float
    what: str


@dataclass(frozen=True)
class Report:
    seed: int | None
    replay: str
    planted: str | None
    nodes: tuple[str, ...]
    backend: str | None
    duration_s: float
    start_t: float
    counts: dict[str, int]
    faults_by_kind: dict[str, int]
    timeline: dict[str, list[HolderChange]]
    nemesis: list[NemesisLine]
    violations: list[Violation]
    ledger: dict[str, Any] | None = field(default=None)

    @property
    def passed(self) -> bool:
        """A real run passes with no violation; a negative control passes
        when its planted defect was caught (at least one violation)."""
        return bool(self.violations) if self.planted else not self.violations

    def verdict(self) -> str:
        checkers = ", ".join(sorted({v.checker for v in self.violations}))
        if self.planted:
            if self.violations:
                return f"PASS: planted defect {self.planted!r} caught by {checkers}"
            return f"FAIL: planted defect {self.planted!r} NOT caught by any checker"
        if self.violations:
            return f"FAIL: {len(self.violations)} violations ({checkers})"
        return "PASS: no violation"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "verdict": self.verdict(),
            "seed": self.seed,
            "planted": self.planted,
            "replay": self.replay,
            "nodes": list(self.nodes),
            "backend": self.backend,
            "duration_s": round(self.duration_s, 3),
            "counts": self.counts,
            "faults_by_kind": self.faults_by_kind,
            "ledger": self.ledger,
            "timeline": {
                election: [_change_dict(c) for c in changes]
                for election, changes in self.timeline.items()
            },
            "nemesis": [{"at_s": round(n.at_s, 3), "what": n.what} for n in self.nemesis],
            "violations": [
                {
                    "checker": v.checker,
                    "description": v.description,
                    "at_s": round(v.at - self.start_t, 3) if v.events else None,
                    "excerpt": [e.to_dict() for e in v.excerpt],
                }
                for v in self.violations
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_text(self) -> str:
        c = self.counts
        faults = ", ".join(f"{k} {n}" for k, n in sorted(self.faults_by_kind.items()))
        planted = f", planted defect {self.planted!r}" if self.planted else ""
        lines = [
            f"chaos run: seed {self.seed}, {len(self.nodes)} nodes ({' '.join(self.nodes)}), "
            f"{self.backend or 'unknown'} ledger, {self.duration_s:.1f} s{planted}",
            f"settlement runs settled {c['runs_settled']}, faults injected {c['faults']}"
            + (f" ({faults})" if faults else "")
            + f", grants {c['grants']}, writes accepted {c['writes_accepted']}, "
            f"stale writes rejected by the fence {c['stale_writes_rejected']} "
            f"(ledger counted {c['ledger_stale_writes_rejected']}), "
            f"violations {c['violations']}",
        ]
        for election, changes in self.timeline.items():
            lines += ["", f"== holders of election {election!r} =="]
            for h in changes:
                until = "" if h.ended_at_s is None else f"until {h.ended_at_s:+.3f}s "
                lines.append(
                    f"{h.at_s:+9.3f}s  token {h.token:>6}  {h.worker:<12} {until}{h.end}"
                    f"  [faults: {', '.join(h.faults) or 'none'}]"
                )
        lines += ["", f"== nemesis ({len(self.nemesis)} events) =="]
        lines += [f"{n.at_s:+9.3f}s  {n.what}" for n in self.nemesis]
        lines += ["", f"== violations ({len(self.violations)}) =="]
        for v in self.violations:
            lines.append(f"[{v.checker}] {v.description}")
            lines += [f"    {describe(e, self.start_t)}" for e in v.excerpt]
        lines += ["", self.verdict(), f"replay: {self.replay}"]
        return "\n".join(lines) + "\n"


def _change_dict(c: HolderChange) -> dict[str, Any]:
    return {
        "token": c.token,
        "worker": c.worker,
        "at_s": round(c.at_s, 3),
        "seen_by": c.seen_by,
        "faults": list(c.faults),
        "ended_at_s": None if c.ended_at_s is None else round(c.ended_at_s, 3),
        "end": c.end,
    }


def describe(event: Event, start_t: float) -> str:
    """One line for an event: time since start, source, kind and its fields."""
    parts = []
    for name, value in event.to_dict().items():
        shown = value
        if name in ("t", "kind", "source") or value is None or value == "":
            continue
        if name in _RELATIVE_FIELDS and isinstance(value, float):
            shown = f"{value - start_t:+.3f}s"
        elif name == "grants":
            shown = f"[{len(value)} records]"
        elif name == "audit":
            shown = "{" + _audit_summary(value) + "}"
        parts.append(f"{name}={shown}")
    return f"{event.t - start_t:+9.3f}s {event.source} {event.kind} {' '.join(parts)}"


def _audit_summary(audit: dict[str, Any]) -> str:
    shown = [f"ok={audit.get('ok')}"]
    shown += [
        f"{k}={v}"
        for k, v in audit.items()
        if isinstance(v, int) and not isinstance(v, bool) and v and k != "ok"
    ]
    return " ".join(shown)


def _fault_names(windows: Sequence[FaultWindow], t: float) -> tuple[str, ...]:
    return tuple(f"{f.fault}({','.join(f.targets)})" for f in faults_in_force(windows, t, t))


def _timeline(
    events: Sequence[Event], windows: Sequence[FaultWindow], start_t: float
) -> dict[str, list[HolderChange]]:
    """Per election, each token once, at its first sighting (worker or observer)."""
    ends: dict[tuple[str, int], Event] = {}
    trail_end: dict[tuple[str, int], str] = {}
    for e in events:
        if isinstance(e, Lost | Resigned):
            ends.setdefault((e.election, e.token), e)
        elif isinstance(e, FinalGrants):
            for g in e.grants:
                if g.end_reason:
                    trail_end[(g.election, g.token)] = g.end_reason
    first: dict[tuple[str, int], tuple[str, Event]] = {}
    for e in events:
        if isinstance(e, Granted | Holder) and e.worker is not None and e.token is not None:
            first.setdefault((e.election, e.token), (e.worker, e))
    out: dict[str, list[HolderChange]] = {}
    for (election, token), (worker, e) in sorted(first.items(), key=lambda kv: kv[1][1].t):
        end = ends.get((election, token))
        if isinstance(end, Lost):
            how = f"lost: {end.reason}"
        elif end is not None:
            how = "resigned"
        else:
            how = trail_end.get((election, token), "held at the end")
        out.setdefault(election, []).append(
            HolderChange(
                election,
                token,
                worker,
                e.t - start_t,
                e.source,
                _fault_names(windows, e.t),
                None if end is None else end.t - start_t,
                how,
            )
        )
    return out


def _nemesis(events: Sequence[Event], start_t: float) -> list[NemesisLine]:
    lines = []
    for e in events:
        if isinstance(e, Fault):
            detail = f" ({e.detail})" if e.detail else ""
            what = f"{e.phase:<5} {e.fault} {' '.join(e.targets)}{detail}"
            lines.append(NemesisLine(e.t - start_t, what))
        elif isinstance(e, Heal):
            lines.append(NemesisLine(e.t - start_t, "heal  everything healed"))
    return lines


def build_report(
    events: Sequence[Event],
    *,
    seed: int | None,
    argv: Sequence[str],
    violations: Sequence[Violation] | None = None,
) -> Report:
    """The report of a run. ``argv``: the runner's arguments that replay it
    (``--seed S --minutes M --nodes N --ledger B [--plant D]``);
    ``violations``: the checkers' findings (computed here when not given)."""
    ordered = sorted(events, key=lambda e: e.t)
    found = list(check_all(ordered) if violations is None else violations)
    start_t = ordered[0].t if ordered else 0.0
    windows = fault_windows(ordered)
    ledger = next((e for e in reversed(ordered) if isinstance(e, FinalLedger)), None)
    planted = next((e for e in reversed(ordered) if isinstance(e, Planted)), None)
    writes = Counter(e.outcome for e in ordered if isinstance(e, Write))
    starts = [e for e in ordered if isinstance(e, Fault) and e.phase == "start"]
    grants = {(e.election, e.token) for e in ordered if isinstance(e, Granted)}
    grants |= {
        (g.election, g.token) for e in ordered if isinstance(e, FinalGrants) for g in e.grants
    }
    nodes = {e.node for e in ordered if isinstance(e, Holder | FinalDigest | FinalGrants)}
    counts = {
        "runs_settled": sum(
            1
            for e in ordered
            if isinstance(e, Write) and e.op == "settle_run" and e.outcome == "accepted"
        ),
        "faults": len(starts),
        "grants": len(grants),
        "writes_accepted": writes["accepted"],
        "stale_writes_rejected": writes["stale"],
        "ledger_stale_writes_rejected": (
            audit_of(ledger).stale_writes_rejected if ledger is not None else 0
        ),
        "violations": len(found),
    }
    return Report(
        seed=seed,
        replay=" ".join([REPLAY_PROGRAM, shlex.join(argv)]).strip(),
        planted=planted.defect if planted is not None else None,
        nodes=tuple(sorted(nodes)),
        backend=ledger.backend if ledger is not None else None,
        duration_s=(ordered[-1].t - start_t) if ordered else 0.0,
        start_t=start_t,
        counts=counts,
        faults_by_kind=dict(sorted(Counter(f.fault for f in starts).items())),
        timeline=_timeline(ordered, windows, start_t),
        nemesis=_nemesis(ordered, start_t),
        violations=found,
        ledger=ledger.audit if ledger is not None else None,
    )
