"""Fixtures: every ledger test runs once on a SQLite file and once on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from settlement_demo.ledger import Ledger, open_ledger
from tests.settlement.helpers import BACKENDS, fresh_ledger_url

OpenLedger = Callable[..., Ledger]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def ledger_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the test's backend, removed afterwards."""
    with fresh_ledger_url(backend, tmp_path) as url:
        yield url


@pytest.fixture
def open_(ledger_url: str) -> Iterator[OpenLedger]:
    """Opens ledgers on ``ledger_url`` (each its own connection); closes them all at the end."""
    opened: list[Ledger] = []

    def _open(*, fencing: bool = True, worker_id: str = "w") -> Ledger:
        ledger = open_ledger(ledger_url, fencing=fencing, worker_id=worker_id)
        opened.append(ledger)
        return ledger

    yield _open
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(open_: OpenLedger) -> Ledger:
    """A ledger with its schema created."""
    lg = open_(worker_id="worker-a")
    lg.create_schema()
    return lg
