"""The fence: stale tokens and a second holder of one token are rejected
whole, recorded, and cut off at once."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest

from settlement_demo.ledger import FenceHolderConflict, Ledger, StaleTokenError
from settlement_demo.ledger_types import MAX_TOKEN
from tests.settlement.conftest import OpenLedger
from tests.settlement.helpers import ELECTION, raw_connection, seed, table_counts, write_chunks


def test_lower_token_is_rejected_whole_and_recorded(ledger: Ledger, ledger_url: str) -> None:
    seed(ledger, {"b": 4})
    run = ledger.claim_run(ELECTION, 7, chunk_size=2)
    assert run is not None
    chunk0 = ledger.run_instructions(run.id)[run.chunk_slice(0)]
    before = table_counts(ledger_url)

    with pytest.raises(StaleTokenError) as caught:
        ledger.write_chunk(ELECTION, 5, run.id, 0, chunk0)
    err = caught.value
    assert (err.election, err.presented, err.current) == (ELECTION, 5, 7)
    assert "presented token 5" in str(err)
    assert "already at token 7" in str(err)

    after = table_counts(ledger_url)
    assert after == before | {"fence_rejections": before["fence_rejections"] + 1}
    assert ledger.fence_token(ELECTION) == 7
    with raw_connection(ledger_url) as conn:
        row = conn.execute(
            "SELECT election, presented, current, worker_id, step FROM fence_rejections"
        ).fetchone()
    assert tuple(row) == (ELECTION, 5, 7, "worker-a", "write_chunk:0")
    assert ledger.audit().stale_writes_rejected == 1


def test_equal_token_passes_and_fence_only_rises(ledger: Ledger) -> None:
    seed(ledger, {})
    assert ledger.fence_token(ELECTION) is None
    ledger.raise_fence(ELECTION, 3)
    ledger.raise_fence(ELECTION, 3)  # the same holder again: a retry
    assert ledger.fence_token(ELECTION) == 3
    assert ledger.fence(ELECTION) == (3, "worker-a")
    ledger.raise_fence(ELECTION, MAX_TOKEN)
    assert ledger.fence_token(ELECTION) == MAX_TOKEN
    assert ledger.fence_token("settlement-usd") is None  # fences are per election
    ledger.raise_fence("settlement-usd", 1)


def test_new_holder_raising_the_fence_cuts_off_the_old_one_at_once(
    open_: OpenLedger, ledger_url: str
) -> None:
    old = open_(worker_id="old")
    seed(old, {"b": 6})
    old.raise_fence(ELECTION, 5)
    run = old.claim_run(ELECTION, 5, chunk_size=2)
    assert run is not None
    write_chunks(old, 5, run, [0])

    new = open_(worker_id="new")
    new.raise_fence(ELECTION, 6)  # nothing else yet: not even a read of pending work
    before = table_counts(ledger_url)
    chunk1 = old.run_instructions(run.id)[run.chunk_slice(1)]
    stale_calls: list[Callable[[], object]] = [
        lambda: old.write_chunk(ELECTION, 5, run.id, 1, chunk1),
        lambda: old.settle_run(ELECTION, 5, run.id),
        lambda: old.written_chunks(ELECTION, 5, run.id),
        lambda: old.claim_run(ELECTION, 5),
        lambda: old.raise_fence(ELECTION, 5),
    ]
    for call in stale_calls:
        with pytest.raises(StaleTokenError, match=r"presented token 5.*already at token 6"):
            call()
    after = table_counts(ledger_url)
    assert after == before | {"fence_rejections": before["fence_rejections"] + len(stale_calls)}
    with raw_connection(ledger_url) as conn:
        steps = [r[0] for r in conn.execute("SELECT step FROM fence_rejections ORDER BY seq")]
        workers = {r[0] for r in conn.execute("SELECT worker_id FROM fence_rejections")}
    assert steps == ["write_chunk:1", "settle_run", "written_chunks", "claim_run", "raise_fence"]
    assert workers == {"old"}


def test_equal_token_from_another_holder_is_refused_whole_and_recorded(
    open_: OpenLedger, ledger_url: str
) -> None:
    a = open_(worker_id="worker-a")
    seed(a, {"b": 6})
    a.raise_fence(ELECTION, 7)
    run = a.claim_run(ELECTION, 7, chunk_size=2)
    assert run is not None
    write_chunks(a, 7, run, [0])
    chunk1 = a.run_instructions(run.id)[run.chunk_slice(1)]

    b = open_(worker_id="worker-b")  # token 7 again: the election service lost safety
    before = table_counts(ledger_url)
    calls: list[Callable[[], object]] = [
        lambda: b.raise_fence(ELECTION, 7),
        lambda: b.claim_run(ELECTION, 7),
        lambda: b.written_chunks(ELECTION, 7, run.id),
        lambda: b.write_chunk(ELECTION, 7, run.id, 1, chunk1),
        lambda: b.settle_run(ELECTION, 7, run.id),
    ]
    for call in calls:
        with pytest.raises(FenceHolderConflict) as caught:
            call()
        err = caught.value
        assert (err.election, err.token, err.holder, err.current_holder) == (
            ELECTION, 7, "worker-b", "worker-a",
        )  # fmt: skip
        assert not isinstance(err, StaleTokenError)
        assert "token 7 presented by 'worker-b'" in str(err)
        assert "records token 7 for 'worker-a'" in str(err)
        assert "can only happen if the election service lost safety" in str(err)
    after = table_counts(ledger_url)
    assert after == before | {"fence_rejections": before["fence_rejections"] + len(calls)}
    assert a.fence(ELECTION) == (7, "worker-a")
    with raw_connection(ledger_url) as conn:
        rows = conn.execute(
            "SELECT presented, current, worker_id, current_holder, reason, step "
            "FROM fence_rejections ORDER BY seq"
        ).fetchall()
    assert [tuple(r[:5]) for r in rows] == [(7, 7, "worker-b", "worker-a", "holder_conflict")] * 5
    assert [r[5] for r in rows] == [
        "raise_fence", "claim_run", "written_chunks", "write_chunk:1", "settle_run",
    ]  # fmt: skip
    report = a.audit()
    assert (report.holder_conflicts_rejected, report.stale_writes_rejected) == (5, 0)
    assert not report.ok, "a refused conflict is still a broken promise"
    assert [r.reason for r in a.fence_rejections()] == ["holder_conflict"] * 5

    # The holder the fence records carries on; a higher token still takes over.
    write_chunks(a, 7, run, [1, 2])
    assert a.settle_run(ELECTION, 7, run.id)
    b.raise_fence(ELECTION, 8)
    assert a.fence(ELECTION) == (8, "worker-b")
    with pytest.raises(StaleTokenError):
        a.raise_fence(ELECTION, 7)


def test_refusals_survive_pickling() -> None:
    conflict = FenceHolderConflict(ELECTION, 7, "worker-b", "worker-a")
    again = pickle.loads(pickle.dumps(conflict))
    assert (again.election, again.token, again.holder, again.current_holder) == (
        ELECTION, 7, "worker-b", "worker-a",
    )  # fmt: skip
    assert str(again) == str(conflict)


def test_fenced_steps_need_a_worker_id(open_: OpenLedger, ledger_url: str) -> None:
    anonymous = open_(worker_id="")
    seed(anonymous, {"b": 2})
    before = table_counts(ledger_url)
    with pytest.raises(ValueError, match="need the ledger's worker_id"):
        anonymous.raise_fence(ELECTION, 1)
    assert table_counts(ledger_url) == before
    unfenced = open_(fencing=False, worker_id="")
    unfenced.raise_fence(ELECTION, 1)  # nothing to record: no fence


@pytest.mark.parametrize("fencing", [False, True], ids=["no-fencing", "fencing"])
def test_stale_holder_late_writes_duplicate_only_without_fencing(
    open_: OpenLedger, fencing: bool
) -> None:
    old = open_(fencing=fencing, worker_id="old")
    seed(old, {"b": 9})
    old.raise_fence(ELECTION, 1)
    run = old.claim_run(ELECTION, 1, chunk_size=3)
    assert run is not None
    write_chunks(old, 1, run, [0])
    chunk1 = old.run_instructions(run.id)[run.chunk_slice(1)]
    # The old holder pauses; the new holder resumes the run and settles it.
    new = open_(fencing=fencing, worker_id="new")
    new.raise_fence(ELECTION, 2)
    assert new.claim_run(ELECTION, 2) == run
    assert new.written_chunks(ELECTION, 2, run.id) == frozenset({0})
    write_chunks(new, 2, run, [1, 2])
    assert new.settle_run(ELECTION, 2, run.id)
    # The old holder wakes up and carries on where it was.
    if fencing:
        with pytest.raises(StaleTokenError):
            old.write_chunk(ELECTION, 1, run.id, 1, chunk1)
        with pytest.raises(StaleTokenError):
            old.settle_run(ELECTION, 1, run.id)
        report = old.audit()
        assert report.ok
        assert report.stale_writes_rejected == 2
        assert (report.payouts_written, report.settlements) == (9, 1)
        assert (report.token_regressions, report.findings) == (0, ())
        return
    assert old.write_chunk(ELECTION, 1, run.id, 1, chunk1) is True
    assert old.settle_run(ELECTION, 1, run.id) is True
    report = old.audit()
    assert not report.ok
    assert report.duplicate_payouts == 3
    assert report.duplicate_settlements == 1
    assert (report.settlements, report.payouts_written, report.payouts_expected) == (2, 12, 9)
    assert report.missing_payouts == 0
    assert report.paid_total_cents - report.expected_total_cents == sum(
        p.amount_cents for p in chunk1
    )
    assert report.stale_writes_rejected == 0
    # Tokens went backwards within the run: each late step is named.
    assert (report.token_regressions, report.shared_tokens) == (2, 0)
    assert report.findings == tuple(
        f"run 'run-b': step {step} by 'old' with token 1 after token 2 wrote in that run "
        "(tokens went backwards)"
        for step in ("chunk:1", "settle")
    )


@pytest.mark.parametrize("token", [0, -1, MAX_TOKEN + 1, True, 1.0, "3"])
def test_bad_tokens_are_value_errors_and_write_nothing(
    ledger: Ledger, ledger_url: str, token: object
) -> None:
    seed(ledger, {"b": 2})
    before = table_counts(ledger_url)
    with pytest.raises(ValueError, match="fencing token"):
        ledger.raise_fence(ELECTION, token)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fencing token"):
        ledger.claim_run(ELECTION, token)  # type: ignore[arg-type]
    assert table_counts(ledger_url) == before


def test_empty_election_is_a_value_error(ledger: Ledger, ledger_url: str) -> None:
    seed(ledger, {"b": 2})
    before = table_counts(ledger_url)
    for call in (
        lambda: ledger.raise_fence("", 1),
        lambda: ledger.claim_run("", 1),
        lambda: ledger.written_chunks("", 1, "run-b"),
        lambda: ledger.write_chunk("", 1, "run-b", 0, []),
        lambda: ledger.settle_run("", 1, "run-b"),
        lambda: ledger.fence_token(""),
        lambda: ledger.add_batch("x", "", []),
    ):
        with pytest.raises(ValueError, match="election must be a non-empty string"):
            call()
    assert table_counts(ledger_url) == before
