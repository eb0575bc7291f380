"""Two holders on two connections at once: the fence serializes them, the newer wins."""

from __future__ import annotations

import functools
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from settlement_demo.fence import check_and_raise_fence
from settlement_demo.ledger import FenceHolderConflict, Ledger, StaleTokenError, open_ledger
from tests.settlement.conftest import OpenLedger
from tests.settlement.helpers import (
    ELECTION,
    pg_schema_url,
    raw_connection,
    seed,
    table_counts,
    write_chunks,
)

BLOCKED_S = 0.3


class _Call(threading.Thread):
    """Runs ``fn`` in a thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # handed to the test thread
            self.error = exc


def _begin(conn: Any, backend: str) -> None:
    conn.execute("BEGIN IMMEDIATE" if backend == "sqlite" else "BEGIN")


@pytest.mark.parametrize(
    ("presented", "refusal"),
    [(5, StaleTokenError), (7, FenceHolderConflict)],
    ids=["older-token", "same-token-other-holder"],
)
def test_fence_in_flight_blocks_then_refuses(
    ledger: Ledger, ledger_url: str, backend: str, presented: int, refusal: type[Exception]
) -> None:
    """Holder "first" raises the fence to 7 and has not committed yet. A step of
    worker-a with token 5 (an older holder) or token 7 (a second holder of the
    same token) waits for it, then sees its committed fence, not the snapshot
    it started from, and is refused."""
    seed(ledger, {"b": 4})
    run = ledger.claim_run(ELECTION, 5, chunk_size=2)
    assert run is not None
    chunk0 = ledger.run_instructions(run.id)[run.chunk_slice(0)]
    before = table_counts(ledger_url)
    with raw_connection(ledger_url) as first:
        _begin(first, backend)
        check_and_raise_fence(first, ELECTION, 7, holder="first")  # not committed yet
        step = _Call(lambda: ledger.write_chunk(ELECTION, presented, run.id, 0, chunk0))
        step.start()
        step.join(BLOCKED_S)
        assert step.is_alive(), "the step must wait for the first holder's transaction"
        first.execute("COMMIT")
        step.join(10)
    assert not step.is_alive()
    assert isinstance(step.error, refusal)
    if isinstance(step.error, StaleTokenError):
        assert (step.error.presented, step.error.current) == (5, 7)
    else:
        assert (step.error.holder, step.error.current_holder) == ("worker-a", "first")
    after = table_counts(ledger_url)
    assert after["payouts"] == before["payouts"] == 0
    assert after["fence_rejections"] == 1
    assert ledger.fence(ELECTION) == (7, "first")


def test_older_holder_in_flight_commits_before_the_newer_proceeds(
    open_: OpenLedger, ledger_url: str, backend: str
) -> None:
    old = open_(worker_id="old")
    seed(old, {"b": 4})
    old.raise_fence(ELECTION, 5)
    new = open_(worker_id="new")
    with raw_connection(ledger_url) as older:
        _begin(older, backend)
        check_and_raise_fence(older, ELECTION, 5, holder="old")
        newer = _Call(lambda: new.raise_fence(ELECTION, 7))
        newer.start()
        newer.join(BLOCKED_S)
        assert newer.is_alive(), "the newer holder must wait for the older transaction"
        older.execute("COMMIT")
        newer.join(10)
    assert not newer.is_alive()
    assert newer.error is None
    assert new.fence_token(ELECTION) == 7


def test_racing_holders_no_older_write_commits_after_the_newer_fence(
    open_: OpenLedger,
) -> None:
    old, new = open_(worker_id="old"), open_(worker_id="new")
    seed(old, {"b": 30})
    old.raise_fence(ELECTION, 5)
    run = old.claim_run(ELECTION, 5, chunk_size=1)
    assert run is not None
    rows = old.run_instructions(run.id)
    three_written = threading.Event()
    new_fenced = threading.Event()
    late_commits: list[int] = []

    def old_holder() -> int | None:
        for k in range(run.n_chunks):
            fenced_before_call = new_fenced.is_set()
            try:
                old.write_chunk(ELECTION, 5, run.id, k, rows[run.chunk_slice(k)])
            except StaleTokenError:
                return k
            if fenced_before_call:
                late_commits.append(k)
            if k == 2:
                three_written.set()
            # A real worker spends time between chunks (the payout rail). Without
            # a gap SQLite's lock polling lets this loop starve the new holder
            # until it is done, which is correct but tests nothing.
            time.sleep(0.005)
        return None

    def new_holder() -> None:
        three_written.wait(10)
        new.raise_fence(ELECTION, 7)
        new_fenced.set()

    a, b = _Call(old_holder), _Call(new_holder)
    a.start()
    b.start()
    a.join(20)
    b.join(20)
    assert a.error is None
    assert b.error is None
    assert late_commits == []
    stopped_at = a.result
    assert stopped_at is not None, "the old holder was never cut off"
    # The new holder finishes the run from where the old one was stopped.
    assert new.claim_run(ELECTION, 7) == run
    done = new.written_chunks(ELECTION, 7, run.id)
    assert done == frozenset(range(stopped_at))
    write_chunks(new, 7, run, [k for k in range(run.n_chunks) if k not in done])
    assert new.settle_run(ELECTION, 7, run.id)
    report = new.audit()
    assert report.ok
    assert (report.payouts_written, report.stale_writes_rejected) == (30, 1)


def test_same_token_steps_raced_on_several_connections_write_once(open_: OpenLedger) -> None:
    """A holder retrying its steps on several connections at once (say, after
    timeouts) still writes each chunk and the settlement exactly once."""
    ledgers = [open_(worker_id="t") for _ in range(4)]
    seed(ledgers[0], {"b": 8})
    ledgers[0].raise_fence(ELECTION, 3)
    run = ledgers[0].claim_run(ELECTION, 3, chunk_size=2)
    assert run is not None

    def retry_everything(lg: Ledger) -> tuple[int, int]:
        rows = lg.run_instructions(run.id)
        wrote = sum(
            lg.write_chunk(ELECTION, 3, run.id, k, rows[run.chunk_slice(k)])
            for k in range(run.n_chunks)
        )
        return wrote, int(lg.settle_run(ELECTION, 3, run.id))

    threads = [_Call(functools.partial(retry_everything, lg)) for lg in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
        assert t.error is None
    assert sum(t.result[0] for t in threads) == run.n_chunks
    assert sum(t.result[1] for t in threads) == 1
    report = ledgers[0].audit()
    assert report.ok
    assert (report.payouts_written, report.settlements) == (8, 1)


def test_postgres_connection_dropped_between_steps_is_replaced() -> None:
    """A server restart or idle kill between steps costs nothing: the next step reconnects.

    PostgreSQL only: SQLite has no server connection to lose.
    """
    name = f"ledger-test-{secrets.token_hex(6)}"
    with (
        pg_schema_url() as url,
        open_ledger(f"{url}&application_name={name}", worker_id="w") as ledger,
    ):
        seed(ledger, {"b": 2})
        ledger.raise_fence(ELECTION, 2)
        with raw_connection(url) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (name,),
            ).fetchall()
        assert [tuple(r) for r in killed] == [(True,)]
        run = ledger.claim_run(ELECTION, 2)
        assert run is not None
        assert ledger.fence_token(ELECTION) == 2
