"""The settlement protocol on one ledger: claim, write chunks, settle, resume."""

from __future__ import annotations

import pytest

from settlement_demo.ledger import (
    BatchConflictError,
    Ledger,
    PayoutInstruction,
    RunIncompleteError,
    UnknownRunError,
)
from tests.settlement.conftest import OpenLedger
from tests.settlement.helpers import (
    ELECTION,
    instructions,
    raw_connection,
    seed,
    settle_everything,
    table_counts,
    write_chunks,
)


def test_happy_path_settles_oldest_batch_first_and_audit_is_ok(
    ledger: Ledger, ledger_url: str
) -> None:
    seed(ledger, {"b-2": 9, "b-1": 4})  # added in this order: b-2 is the oldest
    ledger.raise_fence(ELECTION, 10)
    run = ledger.claim_run(ELECTION, 10, chunk_size=4)
    assert run is not None
    assert (run.id, run.batch_id, run.started_token) == ("run-b-2", "b-2", 10)
    assert (run.n_instructions, run.n_chunks, run.chunk_size) == (9, 3, 4)
    assert run.total_cents == sum(i.amount_cents for i in instructions("b-2", 9))
    assert ledger.written_chunks(ELECTION, 10, run.id) == frozenset()
    write_chunks(ledger, 10, run, [0, 1, 2])
    assert ledger.written_chunks(ELECTION, 10, run.id) == frozenset({0, 1, 2})
    assert ledger.settle_run(ELECTION, 10, run.id) is True

    assert settle_everything(ledger, 10) == 1  # b-1
    assert ledger.claim_run(ELECTION, 10) is None

    report = ledger.audit()
    assert report.ok
    expected = sum(i.amount_cents for b, n in (("b-1", 4), ("b-2", 9)) for i in instructions(b, n))
    assert report.to_dict() == {
        "batches": 2,
        "batches_settled": 2,
        "open_batches": 0,
        "running_batches": 0,
        "settlements": 2,
        "duplicate_settlements": 0,
        "payouts_expected": 13,
        "payouts_written": 13,
        "payouts_in_flight": 0,
        "duplicate_payouts": 0,
        "missing_payouts": 0,
        "expected_total_cents": expected,
        "paid_total_cents": expected,
        "stale_writes_rejected": 0,
        "holder_conflicts_rejected": 0,
        "token_regressions": 0,
        "shared_tokens": 0,
        "findings": [],
        "ok": True,
    }
    assert table_counts(ledger_url)["payouts"] == 13


def test_run_instructions_are_in_code_point_order_on_every_backend(ledger: Ledger) -> None:
    ids = ["b", "B", "a", "é", "Z", "a-10", "a-9", "ß"]
    seed(ledger, {})
    batch = [PayoutInstruction(i, "odd", "m0", 100) for i in ids]
    ledger.add_batch("odd", ELECTION, batch)
    run = ledger.claim_run(ELECTION, 1, chunk_size=3)
    assert run is not None
    assert [i.id for i in ledger.run_instructions(run.id)] == sorted(ids)


def test_same_token_retries_are_no_ops(ledger: Ledger, ledger_url: str) -> None:
    seed(ledger, {"b": 6})
    run = ledger.claim_run(ELECTION, 3, chunk_size=4)
    assert run is not None
    assert ledger.claim_run(ELECTION, 3, chunk_size=4) == run  # claim retry: same run
    chunk0 = ledger.run_instructions(run.id)[run.chunk_slice(0)]
    assert ledger.write_chunk(ELECTION, 3, run.id, 0, chunk0) is True
    counts = table_counts(ledger_url)
    assert ledger.write_chunk(ELECTION, 3, run.id, 0, chunk0) is False
    assert table_counts(ledger_url) == counts
    write_chunks(ledger, 3, run, [1])
    assert ledger.settle_run(ELECTION, 3, run.id) is True
    counts = table_counts(ledger_url)
    assert ledger.settle_run(ELECTION, 3, run.id) is False
    assert table_counts(ledger_url) == counts
    assert ledger.audit().ok


def test_new_holder_resumes_unfinished_run_keeping_earlier_chunks(
    open_: OpenLedger, ledger_url: str
) -> None:
    old = open_(worker_id="old")
    seed(old, {"b": 10})
    old.raise_fence(ELECTION, 4)
    run = old.claim_run(ELECTION, 4, chunk_size=3)  # 4 chunks
    assert run is not None
    write_chunks(old, 4, run, [0, 1])
    # The old holder dies here. The new one raises the fence before reading work.
    new = open_(worker_id="new")
    new.raise_fence(ELECTION, 9)
    resumed = new.claim_run(ELECTION, 9, chunk_size=5)  # chunk size of a resumed run is kept
    assert resumed == run
    done = new.written_chunks(ELECTION, 9, run.id)
    assert done == frozenset({0, 1})
    write_chunks(new, 9, run, [k for k in range(run.n_chunks) if k not in done])
    assert new.settle_run(ELECTION, 9, run.id) is True
    report = new.audit()
    assert report.ok
    assert (report.payouts_written, report.duplicate_payouts, report.missing_payouts) == (10, 0, 0)
    with raw_connection(ledger_url) as conn:
        by_token = conn.execute(
            "SELECT token, COUNT(*) FROM payouts GROUP BY token ORDER BY token"
        ).fetchall()
    assert [tuple(r) for r in by_token] == [(4, 6), (9, 4)]


def test_settle_refuses_a_run_with_missing_chunks(ledger: Ledger, ledger_url: str) -> None:
    seed(ledger, {"b": 5})
    run = ledger.claim_run(ELECTION, 1, chunk_size=2)
    assert run is not None
    write_chunks(ledger, 1, run, [0, 2])
    counts = table_counts(ledger_url)
    with pytest.raises(RunIncompleteError, match=r"chunks \[1\] of 3"):
        ledger.settle_run(ELECTION, 1, run.id)
    assert table_counts(ledger_url) == counts


def test_write_chunk_checks_its_arguments(ledger: Ledger, ledger_url: str) -> None:
    seed(ledger, {"b": 5})
    ledger.add_batch("other", "settlement-usd", instructions("other", 2))
    run = ledger.claim_run(ELECTION, 1, chunk_size=2)
    usd = ledger.claim_run("settlement-usd", 1)
    assert run is not None
    assert usd is not None
    rows = ledger.run_instructions(run.id)
    counts = table_counts(ledger_url)
    with pytest.raises(ValueError, match=r"chunks 0\.\.2, got 3"):
        ledger.write_chunk(ELECTION, 1, run.id, 3, [])
    with pytest.raises(ValueError, match="payouts must be the run's instructions"):
        ledger.write_chunk(ELECTION, 1, run.id, 0, rows[1:3])
    with pytest.raises(ValueError, match="belongs to election 'settlement-usd'"):
        ledger.write_chunk(ELECTION, 1, usd.id, 0, ledger.run_instructions(usd.id))
    with pytest.raises(UnknownRunError):
        ledger.write_chunk(ELECTION, 1, "run-nope", 0, rows[:2])
    with pytest.raises(UnknownRunError):
        ledger.run_instructions("run-nope")
    assert table_counts(ledger_url) == counts


def test_add_batch_is_idempotent_and_refuses_conflicts(ledger: Ledger, ledger_url: str) -> None:
    seed(ledger, {"b": 3})
    ledger.add_batch("b", ELECTION, list(reversed(instructions("b", 3))))  # same batch again
    counts = table_counts(ledger_url)
    with pytest.raises(BatchConflictError, match="different content"):
        ledger.add_batch("b", ELECTION, instructions("b", 2))
    with pytest.raises(BatchConflictError, match="already used by another batch"):
        ledger.add_batch("c", ELECTION, [PayoutInstruction("b-i0000", "c", "m0", 5)])
    with pytest.raises(ValueError, match="unknown merchants"):
        ledger.add_batch("d", ELECTION, [PayoutInstruction("d-1", "d", "nobody", 5)])
    with pytest.raises(ValueError, match="belongs to batch"):
        ledger.add_batch("e", ELECTION, instructions("f", 1))
    with pytest.raises(ValueError, match="no instructions"):
        ledger.add_batch("e", ELECTION, [])
    with pytest.raises(ValueError, match="appears twice"):
        ledger.add_batch("e", ELECTION, instructions("e", 1) * 2)
    with pytest.raises(ValueError, match="positive int"):
        PayoutInstruction("x", "e", "m0", 0)
    assert table_counts(ledger_url) == counts
