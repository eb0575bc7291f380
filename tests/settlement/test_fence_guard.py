"""The reusable guard, used the way another app would: on its own table, its own transaction."""

from __future__ import annotations

from typing import Any

import pytest

from settlement_demo.fence import (
    FENCES_ADD_HOLDER_DDL,
    FENCES_TABLE_DDL,
    check_and_raise_fence,
)
from settlement_demo.ledger import FenceHolderConflict, StaleTokenError
from tests.settlement.helpers import raw_connection

ELECTION = "report-generator"


def _setup_app_tables(conn: Any) -> None:
    conn.execute(FENCES_TABLE_DDL)
    conn.execute("CREATE TABLE reports (id TEXT NOT NULL, token BIGINT NOT NULL)")


def _write_report(
    conn: Any, backend: str, token: int, report_id: str, holder: str = "app-1"
) -> None:
    """The app's fenced write: guard first, then its own insert, one transaction."""
    if backend == "sqlite":
        conn.execute("BEGIN IMMEDIATE")
        try:
            check_and_raise_fence(conn, ELECTION, token, holder=holder)
            conn.execute("INSERT INTO reports (id, token) VALUES (?, ?)", (report_id, token))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    else:
        with conn.transaction():
            check_and_raise_fence(conn, ELECTION, token, holder=holder)
            conn.execute("INSERT INTO reports (id, token) VALUES (%s, %s)", (report_id, token))


def _reports(conn: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute("SELECT id, token FROM reports ORDER BY id")]


def test_guard_fences_an_apps_own_table(ledger_url: str, backend: str) -> None:
    with raw_connection(ledger_url) as conn:
        _setup_app_tables(conn)
        _write_report(conn, backend, 3, "r1", holder="app-1")
        _write_report(conn, backend, 3, "r2", holder="app-1")  # same holder again
        _write_report(conn, backend, 4, "r3", holder="app-2")  # new holder
        with pytest.raises(StaleTokenError) as caught:
            _write_report(conn, backend, 3, "r4", holder="app-1")  # old holder, late
        assert (caught.value.presented, caught.value.current) == (3, 4)
        with pytest.raises(FenceHolderConflict) as conflict:
            _write_report(conn, backend, 4, "r5", holder="app-3")  # token 4 granted twice?
        assert (conflict.value.token, conflict.value.holder) == (4, "app-3")
        assert conflict.value.current_holder == "app-2"
        assert "lost safety" in str(conflict.value)
        _write_report(conn, backend, 4, "r6", holder="app-2")  # the real holder goes on
        assert _reports(conn) == [("r1", 3), ("r2", 3), ("r3", 4), ("r6", 4)]
        assert tuple(conn.execute("SELECT token, holder FROM fences").fetchone()) == (4, "app-2")


def test_guard_on_a_table_from_before_holders(ledger_url: str, backend: str) -> None:
    """An app upgrades its fences table with FENCES_ADD_HOLDER_DDL: the stored
    token's holder is unknown, so the next holder to present it is accepted
    (no false alarm on upgrade) and bound from then on."""
    with raw_connection(ledger_url) as conn:
        conn.execute("CREATE TABLE fences (election TEXT PRIMARY KEY, token BIGINT NOT NULL)")
        conn.execute("CREATE TABLE reports (id TEXT NOT NULL, token BIGINT NOT NULL)")
        conn.execute(f"INSERT INTO fences VALUES ('{ELECTION}', 8)")
        for statement in FENCES_ADD_HOLDER_DDL:
            conn.execute(statement)
        with pytest.raises(StaleTokenError):
            _write_report(conn, backend, 7, "r0", holder="app-0")
        _write_report(conn, backend, 8, "r1", holder="app-1")
        _write_report(conn, backend, 8, "r2", holder="app-1")
        with pytest.raises(FenceHolderConflict, match=r"'app-2'.*'app-1'"):
            _write_report(conn, backend, 8, "r3", holder="app-2")
        assert _reports(conn) == [("r1", 8), ("r2", 8)]


def test_guard_refuses_autocommit_without_a_transaction(ledger_url: str) -> None:
    with raw_connection(ledger_url) as conn:  # autocommit, nothing open
        _setup_app_tables(conn)
        with pytest.raises(ValueError, match="needs an open transaction"):
            check_and_raise_fence(conn, ELECTION, 1, holder="app-1")
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
        check_and_raise_fence(conn, ELECTION, 2, holder="app-1")
        assert conn.execute("SELECT token FROM fences").fetchone()[0] == 2
        conn.rollback()
        assert conn.execute("SELECT COUNT(*) FROM fences").fetchone()[0] == 0
        conn.rollback()


def test_guard_validates_its_arguments(ledger_url: str) -> None:
    with raw_connection(ledger_url) as conn:
        with pytest.raises(ValueError, match="fencing token"):
            check_and_raise_fence(conn, ELECTION, 0, holder="app-1")
        with pytest.raises(ValueError, match="election"):
            check_and_raise_fence(conn, "", 1, holder="app-1")
        with pytest.raises(ValueError, match="fence holder"):
            check_and_raise_fence(conn, ELECTION, 1, holder="")
        with pytest.raises(ValueError, match="cannot infer the paramstyle"):
            check_and_raise_fence(object(), ELECTION, 1, holder="app-1")  # type: ignore[arg-type]
