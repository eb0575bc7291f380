"""The chaos checkers can fail: each passes a clean hand-built history and
reports the one violation planted in a copy of it, with the events that show
it. Plus the history file format (round trip, torn last line, a writer killed
-9 mid-stream) and the report."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

import pytest

from settlement_demo.ledger_audit import AuditReport
from tests.chaos import checkers, history
from tests.chaos.history import (
    Campaign,
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
    Planted,
    Renewed,
    Resigned,
    Write,
)
from tests.chaos.report import build_report

E = "settlement-eur"
NODES = ("s1", "s2", "s3")
T = TypeVar("T")
REPLAY_ARGV = ["--seed", "7", "--minutes", "3", "--nodes", "3", "--ledger", "sqlite"]


def clean_audit(**changes: int) -> dict[str, Any]:
    audit = AuditReport(
        batches=1,
        batches_settled=1,
        open_batches=0,
        running_batches=0,
        settlements=1,
        duplicate_settlements=0,
        payouts_expected=10,
        payouts_written=10,
        payouts_in_flight=0,
        duplicate_payouts=0,
        missing_payouts=0,
        expected_total_cents=1000,
        paid_total_cents=1000,
        stale_writes_rejected=1,
        holder_conflicts_rejected=0,
        token_regressions=0,
        shared_tokens=0,
        findings=(),
    )
    return dataclasses.replace(audit, **changes).to_dict()  # type: ignore[arg-type]


def wr(
    t: float, worker: str, token: int, op: str, outcome: str = "accepted", *, t_start: float
) -> Write:
    return Write(
        t=t,
        source=f"worker:{worker}",
        election=E,
        worker=worker,
        token=token,
        op=op,
        run_id=None if op == "raise_fence" else "r1",
        chunk=0 if op == "write_chunk" else None,
        t_start=t_start,
        outcome=outcome,
        detail="",
    )


def holder(
    t: float, worker: str | None, token: int | None, nodes: tuple[str, ...] = NODES
) -> list[Holder]:
    """The same holder change seen by every node's observer."""
    return [
        Holder(t=t, source=f"observer:{n}", node=n, election=E, worker=worker, token=token)
        for n in nodes
    ]


def trail(node: str, records: tuple[GrantRecord, ...] | None = None) -> FinalGrants:
    if records is None:
        records = (
            GrantRecord(
                election=E,
                token=5,
                worker="w1",
                granted_at_ms=1,
                ended_at_ms=3,
                end_reason="expired",
            ),
            GrantRecord(
                election=E,
                token=9,
                worker="w2",
                granted_at_ms=3,
                ended_at_ms=6,
                end_reason="resigned",
            ),
        )
    return FinalGrants(t=106.2, source="runner", node=node, grants=records)


def clean_history() -> list[Event]:
    """w1 holds token 5, is paused past its deadline, w2 takes over with token
    9 and settles run r1; w1 wakes, its late write is refused; heal; the end."""
    w1, w2 = "worker:w1", "worker:w2"
    return [
        Planted(t=100.0, source="runner", defect=None),
        Campaign(t=100.1, source=w1, election=E, worker="w1"),
        Campaign(t=100.2, source=w2, election=E, worker="w2"),
        *holder(100.3, "w1", 5),
        Granted(t=100.3, source=w1, election=E, worker="w1", token=5, deadline=101.8),
        wr(100.32, "w1", 5, "raise_fence", t_start=100.31),
        wr(100.4, "w1", 5, "claim_run", t_start=100.35),
        Renewed(
            t=100.81, source=w1, election=E, worker="w1", token=5, sent_at=100.8, deadline=102.3
        ),
        wr(100.9, "w1", 5, "write_chunk", t_start=100.85),
        Fault(
            t=101.0, source="nemesis", fault="pause_worker", phase="start", targets=(w1,), detail=""
        ),
        *holder(102.9, "w2", 9),
        Granted(t=102.9, source=w2, election=E, worker="w2", token=9, deadline=104.4),
        wr(102.92, "w2", 9, "raise_fence", t_start=102.91),
        wr(103.0, "w2", 9, "claim_run", t_start=102.95),
        wr(103.1, "w2", 9, "write_chunk", t_start=103.05),
        wr(103.2, "w2", 9, "settle_run", t_start=103.15),
        Fault(
            t=103.5, source="nemesis", fault="pause_worker", phase="end", targets=(w1,), detail=""
        ),
        wr(103.55, "w1", 5, "write_chunk", "stale", t_start=101.0),
        Lost(t=103.6, source=w1, election=E, worker="w1", token=5, reason="expired"),
        Heal(t=104.0, source="nemesis"),
        Renewed(
            t=104.01, source=w2, election=E, worker="w2", token=9, sent_at=104.0, deadline=105.5
        ),
        Resigned(t=105.0, source=w2, election=E, worker="w2", token=9),
        *holder(105.01, None, None),
        FinalLedger(t=106.0, source="runner", audit=clean_audit(), backend="sqlite"),
        *(trail(n) for n in NODES),
        *(
            FinalDigest(t=106.3, source="runner", node=n, applied_index=12, digest=777)
            for n in NODES
        ),
        Liveness(
            t=106.4,
            source="runner",
            healed_at=104.0,
            holder_at=104.1,
            caught_up_at=104.2,
            bound_s=10.0,
        ),
    ]


def replace_event(events: list[Event], old: Event, new: Event) -> list[Event]:
    return [new if e is old else e for e in events]


def the(events: list[Event], cls: type[T], **match: object) -> T:
    """The one event of ``cls`` whose fields equal ``match``."""
    found = [
        e
        for e in events
        if isinstance(e, cls) and all(getattr(e, k) == v for k, v in match.items())
    ]
    assert len(found) == 1, found
    return found[0]


# --- the clean run passes every checker ---


@pytest.mark.parametrize("name", sorted(checkers.CHECKERS))
def test_clean_history_passes(name: str) -> None:
    assert checkers.CHECKERS[name](clean_history()) == []


def test_clean_history_passes_in_any_order() -> None:
    """Per-process files are merged by the runner; checkers must not rely on it."""
    assert checkers.check_all(list(reversed(clean_history()))) == []


# --- single_holder ---


def test_single_holder_reports_a_renewal_past_the_next_grant() -> None:
    """A stale leader renews w1 (deadline 103.5) while w2 is granted at 102.9."""
    events = clean_history()
    renewal = Renewed(
        t=101.5, source="worker:w1", election=E, worker="w1", token=5, sent_at=101.4, deadline=103.5
    )
    events.append(renewal)
    [v] = checkers.check_single_holder(events)
    assert v.checker == "single_holder"
    assert "w1 (token 5) and w2 (token 9)" in v.description
    assert "from +2.900s to +3.500s (600 ms)" in v.description
    granted_w2 = the(events, Granted, worker="w2")
    pause = the(events, Fault, phase="start")
    assert renewal in v.excerpt and granted_w2 in v.excerpt and pause in v.excerpt
    assert v.at == pytest.approx(102.9)
    # Only the grants, the covering renewal, the lost event at the overlap's end and the fault.
    assert len(v.excerpt) <= 6


def test_single_holder_counts_a_lost_event_as_the_end_of_belief() -> None:
    """The same late renewal, but w1 was told it lost the lease before w2's grant."""
    events = clean_history()
    events.append(
        Renewed(
            t=101.5,
            source="worker:w1",
            election=E,
            worker="w1",
            token=5,
            sent_at=101.4,
            deadline=103.5,
        )
    )
    events.append(Lost(t=102.0, source="worker:w1", election=E, worker="w1", token=5, reason="x"))
    assert checkers.check_single_holder(events) == []


def test_single_holder_a_killed_worker_believes_nothing() -> None:
    """Kill -9 ends a worker's belief at once: its sidecar revokes, the next grant is no overlap."""
    events = clean_history()
    old = the(events, Fault, phase="start")
    kill = Fault(
        t=101.0,
        source="nemesis",
        fault="kill_worker",
        phase="start",
        targets=("worker:w1",),
        detail="",
    )
    events = replace_event(events, old, kill)
    early = Granted(t=101.1, source="worker:w2", election=E, worker="w2", token=7, deadline=102.6)
    events.append(early)
    assert checkers.check_single_holder(events) == []
    # Without the kill it is an overlap (w1's deadline is 102.3).
    events = replace_event(events, kill, old)
    [v] = checkers.check_single_holder(events)
    assert early in v.excerpt


# --- tokens ---


def test_tokens_reports_one_token_for_two_workers() -> None:
    events = clean_history()
    wrong = Holder(t=103.0, source="observer:s2", node="s2", election=E, worker="w1", token=9)
    events.append(wrong)
    [v] = checkers.check_tokens(events)
    assert v.checker == "tokens"
    assert "token 9 granted to two workers, w2" in v.description and "w1" in v.description
    assert wrong in v.excerpt and the(events, Holder, node="s1", token=9) in v.excerpt


def test_tokens_reports_an_observer_going_backwards() -> None:
    events = clean_history()
    back = Holder(t=104.5, source="observer:s3", node="s3", election=E, worker="w1", token=5)
    events.append(back)
    [v] = checkers.check_tokens(events)
    assert "node s3's Observe stream went from token 9 to 5" in v.description
    assert back in v.excerpt


def test_tokens_an_observer_may_start_over_after_its_node_lost_its_disk() -> None:
    events = clean_history()
    events.append(
        Fault(
            t=104.2, source="nemesis", fault="disk_loss", phase="start", targets=("s3",), detail=""
        )
    )
    events.append(
        Holder(t=104.5, source="observer:s3", node="s3", election=E, worker="w1", token=5)
    )
    assert checkers.check_tokens(events) == []


def test_tokens_reports_a_grant_with_a_lower_token_than_an_earlier_one() -> None:
    events = clean_history()
    late = Granted(t=104.5, source="worker:w3", election=E, worker="w3", token=4, deadline=106.0)
    events.append(late)
    [v] = checkers.check_tokens(events)
    assert "the grants workers received went from token 9 to 4" in v.description
    assert late in v.excerpt
    # A grant that arrives already past its deadline was never acted on: not an order violation.
    events[-1] = dataclasses.replace(late, deadline=104.0)
    assert checkers.check_tokens(events) == []


def test_tokens_reports_an_audit_trail_out_of_order() -> None:
    events = clean_history()
    first, second = trail("s1").grants
    bad = trail("s1", (second, first))
    events = [bad if isinstance(e, FinalGrants) and e.node == "s1" else e for e in events]
    [v] = checkers.check_tokens(events)
    assert "node s1's audit trail went from token 9 to 5" in v.description
    assert v.excerpt == [bad]


# --- fence ---


def test_fence_reports_a_stale_write_accepted_after_a_higher_token() -> None:
    events = clean_history()
    stale = the(events, Write, worker="w1", outcome="stale")
    through = dataclasses.replace(stale, outcome="accepted", t_start=103.3)
    events = replace_event(events, stale, through)
    [v] = checkers.check_fence(events)
    assert v.checker == "fence"
    assert "w1's write_chunk with token 5 began at +3.300s and was accepted" in v.description
    # The first write that showed the higher token: w2 raised the fence.
    assert "after w2's raise_fence with token 9 was accepted at +2.920s" in v.description
    higher = the(events, Write, worker="w2", op="raise_fence")
    assert v.events == (higher, through)
    assert v.faults == (the(events, Fault, phase="start"),)


def test_fence_a_write_that_began_before_the_higher_token_was_accepted_is_not_stale() -> None:
    """The ledger ordered it first (the fence is raised in one transaction)."""
    events = clean_history()
    stale = the(events, Write, worker="w1", outcome="stale")
    events = replace_event(events, stale, dataclasses.replace(stale, outcome="accepted"))
    assert checkers.check_fence(events) == []


def test_fence_reports_one_token_accepted_from_two_workers() -> None:
    events = clean_history()
    twin = wr(103.3, "w3", 9, "write_chunk", t_start=103.25)
    events.append(twin)
    [v] = checkers.check_fence(events)
    assert "token 9 accepted from two workers, w2" in v.description
    assert twin in v.excerpt


@pytest.mark.parametrize(
    "counter", ["token_regressions", "shared_tokens", "holder_conflicts_rejected"]
)
def test_fence_reports_the_ledger_audit_counters(counter: str) -> None:
    events = clean_history()
    old = the(events, FinalLedger)
    bad = dataclasses.replace(old, audit=clean_audit(**{counter: 1}))
    events = replace_event(events, old, bad)
    conflict = wr(103.3, "w3", 9, "write_chunk", "conflict", t_start=103.25)
    events.append(conflict)
    [v] = checkers.check_fence(events)
    assert f"{counter} = 1" in v.description
    assert bad in v.excerpt
    assert (conflict in v.excerpt) == (counter == "holder_conflicts_rejected")


def test_fence_without_a_final_ledger_is_not_a_pass() -> None:
    events = [e for e in clean_history() if not isinstance(e, FinalLedger)]
    [v] = checkers.check_fence(events)
    assert "no final_ledger" in v.description


# --- exactly_once ---


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"duplicate_payouts": 2, "paid_total_cents": 1200}, "2 duplicate payouts"),
        ({"duplicate_settlements": 1}, "1 duplicate settlements"),
        ({"missing_payouts": 1, "paid_total_cents": 900}, "1 missing payouts"),
        ({"batches": 2, "open_batches": 1}, "1 of 2 batches not settled"),
    ],
)
def test_exactly_once_reports_the_ledger_audit(changes: dict[str, int], words: str) -> None:
    events = clean_history()
    old = the(events, FinalLedger)
    bad = dataclasses.replace(old, audit=clean_audit(**changes))
    found = checkers.check_exactly_once(replace_event(events, old, bad))
    assert found and all(v.checker == "exactly_once" for v in found)
    assert any(words in v.description for v in found)
    assert all(bad in v.excerpt for v in found)


def test_exactly_once_unsettled_batches_are_only_a_violation_when_the_run_drained() -> None:
    events = clean_history()
    old, live = the(events, FinalLedger), the(events, Liveness)
    events = replace_event(events, old, dataclasses.replace(old, audit=clean_audit(batches=2)))
    assert len(checkers.check_exactly_once(events)) == 1
    events = replace_event(events, live, dataclasses.replace(live, holder_at=None))
    assert checkers.check_exactly_once(events) == []


# --- replicas_agree ---


def test_replicas_agree_reports_different_digests_at_one_index() -> None:
    events = clean_history()
    old = the(events, FinalDigest, node="s3")
    odd = dataclasses.replace(old, digest=778)
    [v] = checkers.check_replicas_agree(replace_event(events, old, odd))
    assert "nodes s1 and s3 applied index 12 with different state digests" in v.description
    assert odd in v.excerpt and the(events, FinalDigest, node="s1") in v.excerpt


def test_replicas_agree_reports_a_node_behind() -> None:
    events = clean_history()
    old = the(events, FinalDigest, node="s2")
    behind = dataclasses.replace(old, applied_index=10, digest=1)
    [v] = checkers.check_replicas_agree(replace_event(events, old, behind))
    assert "s2 at applied index 10" in v.description and "at 12" in v.description
    assert behind in v.excerpt


def test_replicas_agree_reports_different_audit_trails() -> None:
    events = clean_history()
    first, second = trail("s2").grants
    odd = trail("s2", (first, dataclasses.replace(second, end_reason="expired")))
    events = [odd if isinstance(e, FinalGrants) and e.node == "s2" else e for e in events]
    [v] = checkers.check_replicas_agree(events)
    assert "audit trails of s1 and s2 differ: record 1" in v.description
    assert odd in v.excerpt


# --- liveness ---


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"holder_at": None}, "a holder never"),
        ({"caught_up_at": 120.0}, "every node caught up after 16.0 s"),
    ],
)
def test_liveness_reports_no_progress_within_the_bound(
    changes: dict[str, float | None], words: str
) -> None:
    events = clean_history()
    old = the(events, Liveness)
    bad = dataclasses.replace(old, **changes)  # type: ignore[arg-type]
    [v] = checkers.check_liveness(replace_event(events, old, bad))
    assert words in v.description and "bound after the heal is 10 s" in v.description
    assert bad in v.excerpt and the(events, Heal) in v.excerpt


def test_missing_closing_records_are_violations_not_passes() -> None:
    opening = [e for e in clean_history() if e.t < 104.5]
    found = {v.checker for v in checkers.check_all(opening)}
    assert found == {"fence", "exactly_once", "replicas_agree", "liveness"}


# --- history format ---


def test_every_kind_round_trips_through_json() -> None:
    events = clean_history()
    assert {type(e) for e in events} == set(history.KINDS.values())
    for e in events:
        assert history.from_json(e.to_json()) == e


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"t": 1, "kind": "nap", "source": "x"}', "unknown event kind 'nap'"),
        ('{"t": 1, "kind": "heal", "source": "x", "extra": 1}', "unknown fields ['extra']"),
        ('{"t": 1, "kind": "heal"}', "missing fields ['source']"),
        ('{"t": "1", "kind": "heal", "source": "x"}', "field 't'"),
        (
            '{"t": 1, "kind": "lost", "source": "x", "election": "e", "worker": "w", '
            '"token": true, "reason": "r"}',
            "field 'token'",
        ),
        ("[1]", "must be a JSON object"),
    ],
)
def test_bad_lines_are_refused_with_one_clear_line(line: str, words: str) -> None:
    with pytest.raises(history.HistoryError, match=None) as err:
        history.from_json(line)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_write_outcome_outside_the_contract_is_refused() -> None:
    line = wr(1.0, "w1", 5, "claim_run", t_start=0.5).to_json().replace("accepted", "maybe")
    with pytest.raises(history.HistoryError, match="outcome 'maybe' is not one of"):
        history.from_json(line)


def test_writer_records_and_load_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "w1.jsonl"
    with history.HistoryWriter(path, "worker:w1") as w:
        granted = w.record(Granted, election=E, worker="w1", token=5, deadline=3.0, t=1.0)
        fault = w.record(Fault, fault="partition", phase="start", targets=["s1"], detail="")
    assert fault.source == "worker:w1" and fault.t > 0
    with path.open("a") as f:
        f.write('{"t": 2.0, "kind": "ren')  # a kill in the middle of a write
    loaded = history.read(path)
    assert loaded.events == [granted, fault] and loaded.torn_lines == 1
    assert history.load(path) == [granted, fault]


def test_a_bad_line_before_the_last_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    good = Heal(t=1.0, source="nemesis").to_json()
    path.write_text(f"{good}\n{{broken\n{good}\n")
    with pytest.raises(history.HistoryError, match=r"h\.jsonl:2: not JSON"):
        history.load(path)
    path.write_text(f"{good}\n{{broken\n")  # whole last line (newline written): wrong, not torn
    with pytest.raises(history.HistoryError, match=r"h\.jsonl:2"):
        history.load(path)


def test_merge_orders_files_by_time_and_dump_round_trips(tmp_path: Path) -> None:
    events = clean_history()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    history.dump(a, events[::2])
    history.dump(b, events[1::2])
    merged = history.merge([a, b])
    assert [e.t for e in merged] == sorted(e.t for e in events)
    assert sorted(map(repr, merged)) == sorted(map(repr, events))


WRITER_SCRIPT = """
import sys
from tests.chaos.history import HistoryWriter, Write
w = HistoryWriter(sys.argv[1], "worker:w1")
i = 0
while True:
    w.record(Write, election="e", worker="w1", token=i, op="write_chunk", run_id="r",
             chunk=i, t_start=0.0, outcome="accepted", detail="x" * 2000)
    i += 1
    if i == 50:
        print("ready", flush=True)
"""


def test_a_writer_killed_mid_stream_leaves_a_loadable_history(tmp_path: Path) -> None:
    """A real process, killed -9 while it appends as fast as it can."""
    path = tmp_path / "killed.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    loaded = history.read(path)
    assert len(loaded.events) >= 50
    assert [e.token for e in loaded.events if isinstance(e, Write)] == list(
        range(len(loaded.events))
    )


# --- report ---


def test_report_names_the_violation_and_the_replay_command() -> None:
    events = clean_history()
    stale = the(events, Write, worker="w1", outcome="stale")
    events = replace_event(
        events, stale, dataclasses.replace(stale, outcome="accepted", t_start=103.3)
    )
    report = build_report(events, seed=7, argv=REPLAY_ARGV)
    text = report.to_text()
    assert not report.passed
    assert "[fence] election 'settlement-eur': w1's write_chunk with token 5" in text
    assert "replay: python -m tests.chaos --seed 7 --minutes 3 --nodes 3 --ledger sqlite" in text
    assert "FAIL: 1 violations (fence)" in text
    # The excerpt is printed under the violation, times since the start of the run.
    assert "+3.550s worker:w1 write" in text and "start pause_worker" in text
    data = json.loads(report.to_json())
    assert data["violations"][0]["checker"] == "fence"
    assert [e["kind"] for e in data["violations"][0]["excerpt"]] == ["fault", "write", "write"]


def test_report_counts_and_timeline_of_a_clean_run() -> None:
    report = build_report(clean_history(), seed=7, argv=REPLAY_ARGV)
    assert report.passed and report.verdict() == "PASS: no violation"
    assert report.nodes == NODES and report.backend == "sqlite"
    assert report.counts == {
        "runs_settled": 1,
        "faults": 1,
        "grants": 2,
        "writes_accepted": 7,
        "stale_writes_rejected": 1,
        "ledger_stale_writes_rejected": 1,
        "violations": 0,
    }
    assert report.faults_by_kind == {"pause_worker": 1}
    [w1, w2] = report.timeline[E]
    assert (w1.token, w1.worker, w1.end, w1.faults) == (5, "w1", "lost: expired", ())
    assert (w2.token, w2.worker, w2.end) == (9, "w2", "resigned")
    assert w2.faults == ("pause_worker(worker:w1)",) and w2.at_s == pytest.approx(2.9)
    text = report.to_text()
    assert "token      9  w2" in text and "== nemesis (3 events) ==" in text


def test_report_of_a_negative_control_passes_only_when_caught() -> None:
    events = clean_history()
    plant = the(events, Planted)
    events = replace_event(events, plant, dataclasses.replace(plant, defect="fencing_off"))
    report = build_report(events, seed=7, argv=[*REPLAY_ARGV, "--plant", "fencing_off"])
    assert not report.passed
    assert "NOT caught" in report.to_text() and "--plant fencing_off" in report.replay
    stale = the(events, Write, worker="w1", outcome="stale")
    events = replace_event(
        events, stale, dataclasses.replace(stale, outcome="accepted", t_start=103.3)
    )
    caught = build_report(events, seed=7, argv=[*REPLAY_ARGV, "--plant", "fencing_off"])
    assert (
        caught.passed and "PASS: planted defect 'fencing_off' caught by fence" in caught.to_text()
    )


def test_report_runs_on_a_loaded_history_file(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    history.dump(path, clean_history())
    report = build_report(history.load(path), seed=1, argv=["--seed", "1"])
    assert report.passed and report.replay == "python -m tests.chaos --seed 1"


def test_fault_windows_pair_ends_with_their_starts() -> None:
    """Exact targets first, else a shared target; unmatched faults last until the heal."""

    def fault(t: float, name: str, phase: str, *targets: str) -> Fault:
        return Fault(t=t, source="nemesis", fault=name, phase=phase, targets=targets, detail="")

    split = fault(1.0, "partition", "start", "s1", "s2")
    kill = fault(2.0, "kill_sidecar", "start", "s3")
    pause = fault(3.0, "pause_worker", "start", "w1")
    events: list[Event] = [
        split,
        kill,
        pause,
        fault(4.0, "pause_worker", "end", "w1"),
        fault(5.0, "partition", "end", "s2"),
        Heal(t=9.0, source="nemesis"),
    ]
    windows = checkers.fault_windows(events)
    assert [(w.start, w.end_t) for w in windows] == [(split, 5.0), (kill, 9.0), (pause, 4.0)]
    assert checkers.faults_in_force(windows, 4.5, 4.6) == (split, kill)
    assert checkers.faults_in_force(windows, 9.5, 10.0) == ()
