"""Property: any interleaving of holders' steps, with retries, keeps the ledger exact.

Holder k has token k + 1 (later grants, higher tokens). A drawn schedule says
which holder takes its next protocol step, and whether it first retries its
previous write (a lost reply). Old holders keep going after newer ones were
granted, as paused processes do; the fence must turn them away. Afterwards
the newest holder runs to the end (the liveness phase), and the audit must be
ok with every batch settled. The audit is also checked after every step.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from settlement_demo.ledger import Ledger, Run, StaleTokenError, open_ledger
from tests.settlement.helpers import ELECTION, fresh_ledger_url, require_postgres, seed

BATCHES = {"b1": 5, "b2": 3}
N_HOLDERS = 3


@dataclass
class Holder:
    """The worker protocol, one step per call."""

    ledger: Ledger
    token: int
    fenced: bool = False
    stopped: bool = False
    finished: bool = False
    run: Run | None = None
    todo: list[int] | None = None
    last_write: Callable[[], bool] | None = None
    writes: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return not (self.stopped or self.finished)

    def step(self, *, retry: bool) -> None:
        try:
            if retry and self.last_write is not None:
                assert self.last_write() is False, "a same-token retry must write nothing"
            self._step()
        except StaleTokenError:
            self.stopped = True  # lost leadership: act as a follower from now on

    def _step(self) -> None:
        lg, token = self.ledger, self.token
        if not self.fenced:
            lg.raise_fence(ELECTION, token)
            self.fenced = True
        elif self.run is None:
            self.run = lg.claim_run(ELECTION, token, chunk_size=2)
            self.finished = self.run is None
        elif self.todo is None:
            done = lg.written_chunks(ELECTION, token, self.run.id)
            self.todo = [k for k in range(self.run.n_chunks) if k not in done]
        elif self.todo:
            run, k = self.run, self.todo.pop(0)
            rows = lg.run_instructions(run.id)[run.chunk_slice(k)]
            self.last_write = lambda: lg.write_chunk(ELECTION, token, run.id, k, rows)
            assert self.last_write() is True
        else:
            run = self.run
            self.last_write = lambda: lg.settle_run(ELECTION, token, run.id)
            assert self.last_write() is True
            self.run, self.todo = None, None


schedules = st.lists(
    st.tuples(st.integers(0, N_HOLDERS - 1), st.booleans()), min_size=1, max_size=40
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=schedules)
def test_any_interleaving_with_fencing_settles_each_batch_exactly_once(
    backend: str, schedule: list[tuple[int, bool]]
) -> None:
    if backend == "postgresql":
        require_postgres()
    with tempfile.TemporaryDirectory() as tmp, fresh_ledger_url(backend, Path(tmp)) as url:
        ledgers = [open_ledger(url, worker_id=f"h{k}") for k in range(N_HOLDERS)]
        try:
            seed(ledgers[0], BATCHES)
            holders = [Holder(lg, token=k + 1) for k, lg in enumerate(ledgers)]
            for who, retry in schedule:
                if holders[who].active:
                    holders[who].step(retry=retry)
                    assert ledgers[0].audit().ok
            newest = holders[-1]
            for _ in range(100):  # liveness: the newest holder finishes the work
                if not newest.active:
                    break
                newest.step(retry=False)
            assert newest.finished and not newest.stopped
            report = ledgers[0].audit()
            assert report.ok, report.to_dict()
            assert report.batches_settled == len(BATCHES)
            assert report.payouts_written == sum(BATCHES.values())
            assert report.settlements == len(BATCHES)
        finally:
            for lg in ledgers:
                lg.close()
