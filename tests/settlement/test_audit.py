"""The audit catches fencing violations planted in real ledgers: a token that
went backwards within a run, and one token written by two holders. (A stale
holder's late writes with the fence off, the regression the fence exists to
prevent, are in test_fencing.py.)"""

from __future__ import annotations

import pytest

from settlement_demo.ledger import Ledger
from tests.settlement.conftest import OpenLedger
from tests.settlement.helpers import (
    ELECTION,
    instructions,
    raw_connection,
    seed,
    write_chunks,
)


def test_one_token_written_by_two_holders_is_reported(open_: OpenLedger) -> None:
    """What the fence's holder check prevents: with the fence off, two workers
    granted the same token both write, each step looking legitimate."""
    a = open_(fencing=False, worker_id="worker-a")
    seed(a, {"b": 4})
    a.add_batch("u", "settlement-usd", instructions("u", 2))
    # Tokens are per election: token 3 of another election, another holder, is fine.
    assert open_(fencing=False, worker_id="worker-c").claim_run("settlement-usd", 3) is not None
    run = a.claim_run(ELECTION, 3, chunk_size=2)
    assert run is not None
    write_chunks(a, 3, run, [0])
    assert a.audit().ok
    b = open_(fencing=False, worker_id="worker-b")
    write_chunks(b, 3, run, [1])
    assert b.settle_run(ELECTION, 3, run.id)
    report = a.audit()
    assert (report.shared_tokens, report.token_regressions) == (1, 0)
    assert report.duplicate_payouts == 0, "no money moved twice, and still not ok"
    assert not report.ok
    assert report.findings == (
        "election 'settlement-eur': token 3 written by 2 worker ids, among them 'worker-a' "
        "and 'worker-b' (one token, several holders)",
    )


@pytest.mark.parametrize("plant", ["regression", "shared"])
def test_violations_planted_behind_the_ledgers_back(
    ledger: Ledger, ledger_url: str, backend: str, plant: str
) -> None:
    """Rows written with a raw connection, as a buggy or malicious writer would."""
    seed(ledger, {"b": 4})
    ledger.raise_fence(ELECTION, 5)
    run = ledger.claim_run(ELECTION, 5, chunk_size=2)
    assert run is not None
    write_chunks(ledger, 5, run, [0])
    assert ledger.audit().ok
    token, worker = (4, "worker-a") if plant == "regression" else (5, "intruder")
    mark = "?" if backend == "sqlite" else "%s"
    with raw_connection(ledger_url) as conn:
        conn.execute(
            "INSERT INTO run_steps (run_id, step, chunk, token, worker_id, at) "
            f"VALUES ({', '.join([mark] * 6)})",
            (run.id, "chunk:1", 1, token, worker, "2030-01-01T00:00:00.000000+00:00"),
        )
    report = ledger.audit()
    assert not report.ok
    if plant == "regression":
        assert (report.token_regressions, report.shared_tokens) == (1, 0)
        assert "step chunk:1 by 'worker-a' with token 4 after token 5" in report.findings[0]
    else:
        assert (report.token_regressions, report.shared_tokens) == (0, 1)
        assert "token 5 written by 2 worker ids" in report.findings[0]
