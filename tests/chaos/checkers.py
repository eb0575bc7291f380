"""The chaos suite's checkers: the issue's properties, judged on a run's history.

Theory of operation. Each checker is a pure function of the event list
(``tests/chaos/history.py``, sorted by ``t`` or not: every checker sorts what
it needs) that returns the violations it finds; nothing here reads a file, a
clock or a process. A violation names its checker, says in one line what went
wrong, and carries the smallest excerpt of history that shows it: the few
events involved, plus the nemesis faults in force at the time, so a reader
sees the failure without reading the run.

Time is the true time ``t`` (CLOCK_MONOTONIC, one clock for every process on
the machine), never a sidecar's view of it. A checker that lacks the runner's
closing events (``final_ledger``, ``final_digest``, ...) reports that as a
violation: a property that was not checked must not pass as checked.

Fault windows: a fault is in force from its ``start`` to the first ``end`` of
the same fault and targets (else of the same fault sharing a target: a
partition of [a, b] healed node by node), or else to the next ``heal`` (or the
end of the history). Instantaneous faults (kill -9) should be given an ``end`` by the
runner when their target is restarted, which keeps excerpts small.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from settlement_demo.ledger_audit import AuditReport
from tests.chaos.history import (
    Event,
    Fault,
    FinalDigest,
    FinalGrants,
    FinalLedger,
    Granted,
    GrantRecord,
    Heal,
    Holder,
    Liveness,
    Lost,
    Renewed,
    Resigned,
    Write,
)

RESTARTING_FAULTS = frozenset(
    {
        "kill_sidecar",
        "term_sidecar",
        "disk_loss",
        "disk_full",
        "member_add",
        "member_remove",
        "member_replace",
    }
)
"""Faults after which a sidecar may rebuild its state and its Observe stream
may start over from an older holder: an observer's token order is judged
between such faults only."""


@dataclass(frozen=True, slots=True)
class Violation:
    checker: str
    description: str
    at: float
    """The true time the violation shows (its first instant)."""
    events: tuple[Event, ...]
    """The events involved, in time order."""
    faults: tuple[Fault, ...] = ()
    """The nemesis faults (their ``start`` events) in force at the time."""

    @property
    def excerpt(self) -> list[Event]:
        """Events and faults together, in time order, each once."""
        seen: dict[int, Event] = {}
        for e in (*self.events, *self.faults):
            seen.setdefault(id(e), e)
        return sorted(seen.values(), key=lambda e: e.t)


# --- shared helpers ---


@dataclass(frozen=True, slots=True)
class FaultWindow:
    start: Fault
    end_t: float


def fault_windows(events: Iterable[Event]) -> list[FaultWindow]:
    """Each fault's ``start`` with the time it stopped being in force."""
    ordered = sorted(events, key=lambda e: e.t)
    windows: list[FaultWindow] = []
    open_: list[Fault] = []
    for e in ordered:
        if isinstance(e, Fault) and e.phase == "start":
            open_.append(e)
        elif isinstance(e, Fault):
            same = [s for s in open_ if s.fault == e.fault]
            match = next((s for s in same if s.targets == e.targets), None) or next(
                (s for s in same if set(s.targets) & set(e.targets)), None
            )
            if match is not None:
                open_.remove(match)
                windows.append(FaultWindow(match, e.t))
        elif isinstance(e, Heal):
            windows.extend(FaultWindow(s, e.t) for s in open_)
            open_ = []
    windows.extend(FaultWindow(s, float("inf")) for s in open_)
    windows.sort(key=lambda w: w.start.t)
    return windows


def faults_in_force(windows: Sequence[FaultWindow], t0: float, t1: float) -> tuple[Fault, ...]:
    """The faults in force at some instant of [t0, t1]."""
    return tuple(w.start for w in windows if w.start.t <= t1 and w.end_t >= t0)


def names_target(targets: Iterable[str], name: str) -> bool:
    """True when a fault's targets name ``name`` ("w1" or a prefixed "worker:w1")."""
    return any(t == name or t.rpartition(":")[2] == name for t in targets)


def _violation(
    checker: str,
    description: str,
    events: Iterable[Event],
    windows: Sequence[FaultWindow],
    span: tuple[float, float] | None = None,
) -> Violation:
    involved = tuple(sorted(events, key=lambda e: e.t))
    if span is None:
        span = (involved[0].t, involved[-1].t) if involved else (0.0, 0.0)
    return Violation(
        checker, description, span[0], involved, faults_in_force(windows, span[0], span[1])
    )


def _fmt_t(t: float, origin: float) -> str:
    """A time as the report shows it: seconds since the history's first event."""
    return f"{t - origin:+.3f}s"


def _origin(ordered: Sequence[Event]) -> float:
    return ordered[0].t if ordered else 0.0


# --- single_holder ---


@dataclass(slots=True)
class _Belief:
    """One worker's belief that it holds ``token``: the segments of true time
    during which it was inside its safe deadline."""

    election: str
    worker: str
    token: int
    granted: Granted
    extensions: list[Granted | Renewed]
    end: Event | None = None
    """The lost/resigned/kill that ended the belief, if one did."""

    @property
    def end_t(self) -> float:
        return float("inf") if self.end is None else self.end.t

    def segments(self) -> list[tuple[float, float]]:
        """Disjoint [from, until) intervals of belief, in time order."""
        out: list[tuple[float, float]] = []
        for e in sorted(self.extensions, key=lambda e: e.t):
            lo, hi = e.t, min(e.deadline, self.end_t)
            if hi <= lo:
                continue
            if out and lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(hi, out[-1][1]))
            else:
                out.append((lo, hi))
        return out

    def covering(self, at: float) -> Granted | Renewed:
        """The grant or renewal whose deadline kept the worker believing at ``at``."""
        live = [e for e in self.extensions if e.t <= at < e.deadline]
        return max(live, key=lambda e: e.deadline) if live else self.granted


def _beliefs(events: Sequence[Event]) -> list[_Belief]:
    beliefs: dict[tuple[str, str, int], _Belief] = {}
    latest: dict[str, _Belief] = {}  # worker -> its latest belief, for kills
    for e in events:
        if isinstance(e, Granted):
            b = _Belief(e.election, e.worker, e.token, e, [e])
            beliefs[(e.election, e.worker, e.token)] = b
            latest[e.worker] = b
        elif isinstance(e, Renewed):
            known = beliefs.get((e.election, e.worker, e.token))
            if known is not None and known.end is None:
                known.extensions.append(e)
        elif isinstance(e, Lost | Resigned):
            known = beliefs.get((e.election, e.worker, e.token))
            if known is not None and known.end is None:
                known.end = e
        elif isinstance(e, Fault) and e.fault == "kill_worker" and e.phase == "start":
            # A dead process believes nothing.
            for worker, b in latest.items():
                if b.end is None and names_target(e.targets, worker):
                    b.end = e
    return list(beliefs.values())


def check_single_holder(events: Sequence[Event]) -> list[Violation]:
    """At no instant are two different workers of one election both inside
    their safe deadline."""
    ordered = sorted(events, key=lambda e: e.t)
    windows = fault_windows(ordered)
    origin = _origin(ordered)
    by_election: dict[str, list[_Belief]] = defaultdict(list)
    for b in _beliefs(ordered):
        by_election[b.election].append(b)
    found: list[Violation] = []
    for election in sorted(by_election):
        # Beliefs by first instant: a pair can overlap only while the later
        # one starts before the earlier one's last instant.
        spans = sorted(
            ((segs, b) for b in by_election[election] if (segs := b.segments())),
            key=lambda sb: sb[0][0][0],
        )
        for i, (a_segs, a) in enumerate(spans):
            for b_segs, b in spans[i + 1 :]:
                if b_segs[0][0] >= a_segs[-1][1]:
                    break
                overlap = None if a.worker == b.worker else _first_overlap(a_segs, b_segs)
                if overlap is None:
                    continue
                lo, hi = overlap
                involved: list[Event] = [a.granted, b.granted, a.covering(lo), b.covering(lo)]
                involved += [x.end for x in (a, b) if x.end is not None and x.end.t <= hi]
                found.append(
                    _violation(
                        "single_holder",
                        f"election {election!r}: {a.worker} (token {a.token}) and {b.worker} "
                        f"(token {b.token}) both inside their safe deadline "
                        f"from {_fmt_t(lo, origin)} to {_fmt_t(hi, origin)} "
                        f"({(hi - lo) * 1000:.0f} ms)",
                        involved,
                        windows,
                        (lo, hi),
                    )
                )
    return found


def _first_overlap(
    a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]
) -> tuple[float, float] | None:
    """The first common interval of two sorted lists of disjoint intervals."""
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            return lo, hi
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return None


# --- tokens ---


def _token_owner_conflicts(
    checker: str,
    election: str,
    sightings: Sequence[tuple[int, str, Event]],
    windows: Sequence[FaultWindow],
) -> list[Violation]:
    """One violation per token seen with two different workers."""
    verb = "accepted from" if checker == "fence" else "granted to"
    first: dict[int, tuple[str, Event]] = {}
    reported: set[int] = set()
    found: list[Violation] = []
    for token, worker, e in sorted(sightings, key=lambda s: s[2].t):
        owner = first.setdefault(token, (worker, e))
        if owner[0] != worker and token not in reported:
            reported.add(token)
            found.append(
                _violation(
                    checker,
                    f"election {election!r}: token {token} {verb} two workers, "
                    f"{owner[0]} (by {owner[1].source}) and {worker} (by {e.source})",
                    [owner[1], e],
                    windows,
                )
            )
    return found


def check_tokens(events: Sequence[Event]) -> list[Violation]:
    """Per election, a token belongs to one worker (worker grants, every
    observer, every node's audit trail), and tokens increase in grant order:
    along each observer's stream (between restarts of its node), along each
    audit trail, and along the grants workers could act on (received before
    their deadline) in true-time order."""
    ordered = sorted(events, key=lambda e: e.t)
    windows = fault_windows(ordered)
    sightings: dict[str, list[tuple[int, str, Event]]] = defaultdict(list)
    found: list[Violation] = []

    def increasing(what: str, election: str, seq: Sequence[tuple[int, str, Event]]) -> None:
        """Tokens along ``seq`` never decrease (one token seen with two workers
        is the owner check's finding, reported once there)."""
        for (k0, _, e0), (k1, _, e1) in itertools.pairwise(seq):
            if k1 < k0:
                found.append(
                    _violation(
                        "tokens",
                        f"election {election!r}: {what} went from token {k0} to {k1}",
                        [e0, e1],
                        windows,
                    )
                )
                return

    acted: dict[str, list[tuple[int, str, Event]]] = defaultdict(list)
    observed: dict[tuple[str, str], list[tuple[int, str, Event]]] = defaultdict(list)
    for e in ordered:
        if isinstance(e, Granted):
            sightings[e.election].append((e.token, e.worker, e))
            if e.deadline > e.t:
                acted[e.election].append((e.token, e.worker, e))
        elif isinstance(e, Holder) and e.worker is not None and e.token is not None:
            sightings[e.election].append((e.token, e.worker, e))
            observed[(e.node, e.election)].append((e.token, e.worker, e))
        elif isinstance(e, Fault) and e.fault in RESTARTING_FAULTS:
            for node, election in sorted(observed):
                if names_target(e.targets, node):
                    seq = observed.pop((node, election))
                    increasing(f"node {node}'s Observe stream", election, seq)
        elif isinstance(e, FinalGrants):
            trail: dict[str, list[tuple[int, str, Event]]] = defaultdict(list)
            for g in e.grants:
                sightings[g.election].append((g.token, g.worker, e))
                trail[g.election].append((g.token, g.worker, e))
            for election in sorted(trail):
                increasing(f"node {e.node}'s audit trail", election, trail[election])
    for (node, election), seq in sorted(observed.items(), key=lambda kv: kv[0]):
        increasing(f"node {node}'s Observe stream", election, seq)
    for election in sorted(acted):
        increasing("the grants workers received", election, acted[election])
    for election in sorted(sightings):
        found.extend(_token_owner_conflicts("tokens", election, sightings[election], windows))
    return found


# --- fence ---


def _final(events: Sequence[Event], cls: type[FinalLedger]) -> FinalLedger | None:
    """The last record of ``cls`` (the runner writes each final record once)."""
    return next((e for e in reversed(events) if isinstance(e, cls)), None)


def audit_of(event: FinalLedger) -> AuditReport:
    """The ledger audit the runner recorded, as the ledger's own AuditReport
    (so ``ok`` means here exactly what it means to the ledger)."""
    names = {f.name for f in dataclasses.fields(AuditReport)}
    fields = {k: v for k, v in event.audit.items() if k in names}
    fields["findings"] = tuple(fields.get("findings", ()))
    return AuditReport(**fields)


_FINDING_WORDS = {"token_regressions": "backwards", "shared_tokens": "several holders"}


def _findings(final: FinalLedger, counter: str) -> str:
    """The ledger's first finding lines about ``counter``, after a colon."""
    word = _FINDING_WORDS.get(counter)
    lines = [f for f in final.audit.get("findings", []) if word and word in f]
    return f": {'; '.join(lines[:2])}" if lines else ""


def _missing(checker: str, what: str) -> Violation:
    return Violation(checker, f"the history has no {what}: the property was not checked", 0.0, ())


def check_fence(events: Sequence[Event]) -> list[Violation]:
    """No write accepted after a higher token was accepted for its election
    before it began (a stale write the fence let through); no token accepted
    from two workers; and the ledger's own count of regressions, shared
    tokens and holder conflicts is zero."""
    ordered = sorted(events, key=lambda e: e.t)
    windows = fault_windows(ordered)
    found: list[Violation] = []
    accepted: dict[str, list[Write]] = defaultdict(list)
    for e in ordered:
        if isinstance(e, Write) and e.outcome == "accepted":
            accepted[e.election].append(e)
    for election in sorted(accepted):
        found.extend(_stale_accepted(election, accepted[election], windows, _origin(ordered)))
        found.extend(
            _token_owner_conflicts(
                "fence", election, [(w.token, w.worker, w) for w in accepted[election]], windows
            )
        )
    final = _final(ordered, FinalLedger)
    if final is None:
        return [*found, _missing("fence", "final_ledger")]
    conflicts = [e for e in ordered if isinstance(e, Write) and e.outcome == "conflict"]
    for counter, meaning in (
        ("token_regressions", "steps written with a token lower than an earlier step of the run"),
        ("shared_tokens", "tokens whose steps were written by several workers"),
        ("holder_conflicts_rejected", "writes refused because another holder had the token"),
    ):
        n = int(final.audit.get(counter, 0))
        if n:
            extra = conflicts[:4] if counter == "holder_conflicts_rejected" else []
            found.append(
                _violation(
                    "fence",
                    f"ledger audit: {counter} = {n} ({meaning})" + _findings(final, counter),
                    [final, *extra],
                    windows,
                    (extra[0].t, extra[-1].t) if extra else (final.t, final.t),
                )
            )
    return found


def _stale_accepted(
    election: str, writes: Sequence[Write], windows: Sequence[FaultWindow], origin: float
) -> list[Violation]:
    """Writes accepted with token k that began after a write with a higher
    token had been accepted."""
    by_done = sorted(writes, key=lambda w: w.t)
    done_t = [w.t for w in by_done]
    best: list[Write] = []  # best[i]: the highest-token write among by_done[: i + 1]
    for w in by_done:
        best.append(w if not best or w.token > best[-1].token else best[-1])
    found: list[Violation] = []
    for w in sorted(writes, key=lambda w: w.t_start):
        i = bisect.bisect_left(done_t, w.t_start)  # writes accepted before w began
        if i and best[i - 1].token > w.token:
            higher = best[i - 1]
            found.append(
                _violation(
                    "fence",
                    f"election {election!r}: {w.worker}'s {w.op} with token {w.token} "
                    f"began at {_fmt_t(w.t_start, origin)} and was accepted, "
                    f"after {higher.worker}'s {higher.op} with token {higher.token} "
                    f"was accepted at {_fmt_t(higher.t, origin)} "
                    "(a stale write got through the fence)",
                    [higher, w],
                    windows,
                    (higher.t, w.t),
                )
            )
    return found


# --- exactly_once ---


def check_exactly_once(events: Sequence[Event]) -> list[Violation]:
    """The ledger audit is clean (every payout of a settled batch made exactly
    once, no settlement twice, totals matching), and every batch was settled
    when the run drained (a holder came back after the heal)."""
    ordered = sorted(events, key=lambda e: e.t)
    final = _final(ordered, FinalLedger)
    if final is None:
        return [_missing("exactly_once", "final_ledger")]
    windows = fault_windows(ordered)
    audit = audit_of(final)
    problems = [
        f"{n} duplicate payouts" if (n := audit.duplicate_payouts) else "",
        f"{n} duplicate settlements" if (n := audit.duplicate_settlements) else "",
        f"{n} missing payouts of settled batches" if (n := audit.missing_payouts) else "",
        f"paid {audit.paid_total_cents} cents, expected {audit.expected_total_cents}"
        if audit.paid_total_cents != audit.expected_total_cents
        else "",
    ]
    found = [
        _violation("exactly_once", f"ledger audit: {p}", [final], windows) for p in problems if p
    ]
    liveness = _final_liveness(ordered)
    drained = liveness is None or liveness.holder_at is not None
    if drained and audit.batches != audit.batches_settled:
        found.append(
            _violation(
                "exactly_once",
                f"{audit.batches - audit.batches_settled} of {audit.batches} batches not settled "
                f"after the run drained ({audit.open_batches} open, "
                f"{audit.running_batches} running)",
                [final] if liveness is None else [liveness, final],
                windows,
            )
        )
    return found


def _final_liveness(events: Sequence[Event]) -> Liveness | None:
    return next((e for e in reversed(events) if isinstance(e, Liveness)), None)


# --- replicas_agree ---


def check_replicas_agree(events: Sequence[Event]) -> list[Violation]:
    """Every node ends at the same applied index with the same state digest,
    and with the same grant audit trail."""
    ordered = sorted(events, key=lambda e: e.t)
    windows = fault_windows(ordered)
    digests = {e.node: e for e in ordered if isinstance(e, FinalDigest)}
    trails = {e.node: e for e in ordered if isinstance(e, FinalGrants)}
    found: list[Violation] = []
    if not digests:
        found.append(_missing("replicas_agree", "final_digest"))
    by_index: dict[int, list[FinalDigest]] = defaultdict(list)
    for node in sorted(digests):
        by_index[digests[node].applied_index].append(digests[node])
    for index in sorted(by_index):
        group = by_index[index]
        odd = next((d for d in group if d.digest != group[0].digest), None)
        if odd is not None:
            found.append(
                _violation(
                    "replicas_agree",
                    f"nodes {group[0].node} and {odd.node} applied index {index} with "
                    f"different state digests ({group[0].digest} != {odd.digest})",
                    [group[0], odd],
                    windows,
                )
            )
    if len(by_index) > 1:
        low, high = by_index[min(by_index)][0], by_index[max(by_index)][0]
        found.append(
            _violation(
                "replicas_agree",
                f"nodes not caught up at the end: {low.node} at applied index "
                f"{low.applied_index}, {high.node} at {high.applied_index}",
                [low, high],
                windows,
            )
        )
    if not trails:
        found.append(_missing("replicas_agree", "final_grants"))
    nodes = sorted(trails)
    for node in nodes[1:]:
        diff = _first_difference(trails[nodes[0]].grants, trails[node].grants)
        if diff is not None:
            found.append(
                _violation(
                    "replicas_agree",
                    f"audit trails of {nodes[0]} and {node} differ: {diff}",
                    [trails[nodes[0]], trails[node]],
                    windows,
                )
            )
    return found


def _first_difference(a: Sequence[GrantRecord], b: Sequence[GrantRecord]) -> str | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"record {i}: {_grant_str(x)} != {_grant_str(y)}"
    if len(a) != len(b):
        return f"{len(a)} records != {len(b)}"
    return None


def _grant_str(g: GrantRecord) -> str:
    ended = "" if g.ended_at_ms is None else f", ended {g.end_reason}"
    return f"{g.election}/{g.token} {g.worker}{ended}"


# --- liveness ---


def check_liveness(events: Sequence[Event]) -> list[Violation]:
    """After the heal, a holder again and every node caught up, each within
    ``bound_s``."""
    ordered = sorted(events, key=lambda e: e.t)
    live = _final_liveness(ordered)
    if live is None:
        return [_missing("liveness", "liveness record")]
    windows = fault_windows(ordered)
    heal = [e for e in ordered if isinstance(e, Heal)]
    after = [e for e in ordered if isinstance(e, Holder) and e.t >= live.healed_at][:3]
    found: list[Violation] = []
    for what, at in (("a holder", live.holder_at), ("every node caught up", live.caught_up_at)):
        if at is None or at - live.healed_at > live.bound_s:
            took = "never" if at is None else f"after {at - live.healed_at:.1f} s"
            found.append(
                _violation(
                    "liveness",
                    f"{what} {took}; the bound after the heal is {live.bound_s:g} s",
                    [*heal[-1:], *after, live],
                    windows,
                    (live.healed_at, live.t),
                )
            )
    return found


CHECKERS: dict[str, Callable[[Sequence[Event]], list[Violation]]] = {
    "single_holder": check_single_holder,
    "tokens": check_tokens,
    "fence": check_fence,
    "exactly_once": check_exactly_once,
    "replicas_agree": check_replicas_agree,
    "liveness": check_liveness,
}


def check_all(events: Sequence[Event]) -> list[Violation]:
    """Every checker's violations, in checker order."""
    return [v for check in CHECKERS.values() for v in check(events)]
