"""Shared by the ledger tests: real databases (a SQLite file, a PostgreSQL schema
per test), raw driver connections for looking behind the ledger's back, and a
reference worker that follows the settlement protocol."""

from __future__ import annotations

import functools
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from settlement_demo.ledger import Ledger, Merchant, PayoutInstruction, Run
from settlement_demo.schema import TABLES

PG_URL_ENV = "RAFT_SIDECAR_PG_URL"
REQUIRE_TOOLS_ENV = "RAFT_SIDECAR_REQUIRE_TOOLS"
DEFAULT_PG_URL = "postgresql://127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")
ELECTION = "settlement-eur"


def pg_base_url() -> str:
    return os.environ.get(PG_URL_ENV, DEFAULT_PG_URL)


@functools.cache
def _pg_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None. Probed once per test process."""
    try:
        psycopg.connect(pg_base_url(), connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None


def require_postgres() -> None:
    """Skip (or, in CI, fail) the calling test when PostgreSQL is not reachable."""
    problem = _pg_problem()
    if problem is None:
        return
    message = (
        f"PostgreSQL not reachable at {pg_base_url()}: set {PG_URL_ENV} or start it ({problem})"
    )
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


def with_search_path(url: str, schema: str) -> str:
    """``url`` with libpq ``options=-csearch_path=<schema>`` appended."""
    option = quote(f"-csearch_path={schema}", safe="")
    return f"{url}{'&' if '?' in url else '?'}options={option}"


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A fresh, randomly named schema; yields a URL whose search_path is it. Dropped after."""
    require_postgres()
    schema = f"ledger_test_{secrets.token_hex(6)}"
    with psycopg.connect(pg_base_url(), autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(pg_base_url(), schema)
    finally:
        with psycopg.connect(pg_base_url(), autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def fresh_ledger_url(backend: str, directory: Path) -> Iterator[str]:
    """The URL of an empty database of ``backend`` (SQLite: a new file in ``directory``)."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / f'ledger-{secrets.token_hex(4)}.sqlite3'}"
    else:
        with pg_schema_url() as url:
            yield url


@contextmanager
def raw_connection(url: str) -> Iterator[Any]:
    """A plain driver connection to the ledger's database, in autocommit mode."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as pg:
            yield pg


def table_counts(url: str) -> dict[str, int]:
    """Row count of every ledger table, read with a raw connection."""
    with raw_connection(url) as conn:
        return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in TABLES}


def merchants(n: int = 3) -> list[Merchant]:
    return [Merchant(f"m{k}", f"Merchant {k}") for k in range(n)]


def instructions(batch_id: str, n: int, *, n_merchants: int = 3) -> list[PayoutInstruction]:
    """``n`` instructions with distinct amounts (so sums pin down which rows exist)."""
    return [
        PayoutInstruction(f"{batch_id}-i{k:04d}", batch_id, f"m{k % n_merchants}", 1000 + 7 * k)
        for k in range(n)
    ]


def seed(ledger: Ledger, batches: dict[str, int], election: str = ELECTION) -> None:
    """Create the schema, three merchants, and ``batches`` (id -> instruction count)."""
    ledger.create_schema()
    ledger.add_merchants(merchants())
    for batch_id, n in batches.items():
        ledger.add_batch(batch_id, election, instructions(batch_id, n))


def write_chunks(ledger: Ledger, token: int, run: Run, chunks: list[int]) -> None:
    """Write the given chunks of ``run`` with ``token``, as a worker would."""
    everything = ledger.run_instructions(run.id)
    for k in chunks:
        ledger.write_chunk(run.election, token, run.id, k, everything[run.chunk_slice(k)])


def settle_everything(ledger: Ledger, token: int, election: str = ELECTION) -> int:
    """The worker protocol for one holder, to the end: returns how many runs it settled."""
    ledger.raise_fence(election, token)
    settled = 0
    while (run := ledger.claim_run(election, token, chunk_size=4)) is not None:
        done = ledger.written_chunks(election, token, run.id)
        write_chunks(ledger, token, run, [k for k in range(run.n_chunks) if k not in done])
        ledger.settle_run(election, token, run.id)
        settled += 1
    return settled
