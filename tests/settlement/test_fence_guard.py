"""The reusable guard, used the way another app would: on its own table, its own transaction."""

from __future__ import annotations

from typing import Any

import pytest

from settlement_demo.fence import FENCES_TABLE_DDL, check_and_raise_fence
from settlement_demo.ledger import StaleTokenError
from tests.settlement.helpers import raw_connection

ELECTION = "report-generator"


def _setup_app_tables(conn: Any) -> None:
    conn.execute(FENCES_TABLE_DDL)
    conn.execute("CREATE TABLE reports (id TEXT NOT NULL, token BIGINT NOT NULL)")


def _write_report(conn: Any, backend: str, token: int, report_id: str) -> None:
    """The app's fenced write: guard first, then its own insert, one transaction."""
    if backend == "sqlite":
        conn.execute("BEGIN IMMEDIATE")
        try:
            check_and_raise_fence(conn, ELECTION, token)
            conn.execute("INSERT INTO reports (id, token) VALUES (?, ?)", (report_id, token))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    else:
        with conn.transaction():
            check_and_raise_fence(conn, ELECTION, token)
            conn.execute("INSERT INTO reports (id, token) VALUES (%s, %s)", (report_id, token))


def _reports(conn: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute("SELECT id, token FROM reports ORDER BY id")]


def test_guard_fences_an_apps_own_table(ledger_url: str, backend: str) -> None:
    with raw_connection(ledger_url) as conn:
        _setup_app_tables(conn)
        _write_report(conn, backend, 3, "r1")
        _write_report(conn, backend, 3, "r2")  # same holder again
        _write_report(conn, backend, 4, "r3")  # new holder
        with pytest.raises(StaleTokenError) as caught:
            _write_report(conn, backend, 3, "r4")  # old holder, late
        assert (caught.value.presented, caught.value.current) == (3, 4)
        assert _reports(conn) == [("r1", 3), ("r2", 3), ("r3", 4)]
        assert conn.execute("SELECT token FROM fences").fetchone()[0] == 4


def test_guard_refuses_autocommit_without_a_transaction(ledger_url: str) -> None:
    with raw_connection(ledger_url) as conn:  # autocommit, nothing open
        _setup_app_tables(conn)
        with pytest.raises(ValueError, match="needs an open transaction"):
            check_and_raise_fence(conn, ELECTION, 1)
        assert conn.execute("SELECT COUNT(*) FROM fences").fetchone()[0] == 0


def test_guard_works_with_drivers_implicit_transactions(ledger_url: str, backend: str) -> None:
    """sqlite3 and psycopg both open a transaction by themselves outside autocommit."""
    with raw_connection(ledger_url) as setup:
        _setup_app_tables(setup)
    with raw_connection(ledger_url) as conn:
        if backend == "sqlite":
            conn.isolation_level = "IMMEDIATE"  # sqlite3 issues BEGIN IMMEDIATE itself
        else:
            conn.autocommit = False  # psycopg issues BEGIN itself
        check_and_raise_fence(conn, ELECTION, 2)
        assert conn.execute("SELECT token FROM fences").fetchone()[0] == 2
        conn.rollback()
        assert conn.execute("SELECT COUNT(*) FROM fences").fetchone()[0] == 0
        conn.rollback()


def test_guard_validates_its_arguments(ledger_url: str) -> None:
    with raw_connection(ledger_url) as conn:
        with pytest.raises(ValueError, match="fencing token"):
            check_and_raise_fence(conn, ELECTION, 0)
        with pytest.raises(ValueError, match="election"):
            check_and_raise_fence(conn, "", 1)
        with pytest.raises(ValueError, match="cannot infer the paramstyle"):
            check_and_raise_fence(object(), ELECTION, 1)  # type: ignore[arg-type]
