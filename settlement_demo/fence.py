"""The fence guard: reject a write whose fencing token is older than one seen before.

Theory of operation
-------------------
The resource (here: a SQL database) keeps, per election, the highest fencing
token it has ever accepted, in a ``fences`` table. Every write transaction of
a leader *first* runs one statement that compares its token with the stored
one and raises the stored one to it::

    INSERT INTO fences(election, token) VALUES (?, ?)
    ON CONFLICT(election) DO UPDATE SET token = excluded.token
        WHERE fences.token <= excluded.token
    RETURNING token

A row comes back when the token is new, equal (the same holder again) or
higher (a new holder, which cuts off every older one). No row means a newer
holder got there first: the caller rolls back and stops.

Why this is safe, in one sentence per backend (docs/ledger.md has the long
version): on PostgreSQL under READ COMMITTED the upsert takes the fence row's
lock and evaluates the WHERE against the newest *committed* row version, and
it keeps the lock until commit, so the check and the writes behind it are
atomic with respect to every other fenced transaction of that election; on
SQLite the caller's ``BEGIN IMMEDIATE`` holds the database's single write
lock for the whole transaction, which serializes all writers outright.

The guard only works *inside the caller's open transaction*, with the caller's
own writes following it in that same transaction. It refuses an autocommit
connection that has no transaction open, because there the fence would commit
alone and the writes after it would not be covered.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from settlement_demo.ledger_errors import StaleTokenError
from settlement_demo.ledger_types import check_election_token

__all__ = [
    "FENCES_TABLE_DDL",
    "FENCE_UPSERT_SQL",
    "ParamStyle",
    "SqlConnection",
    "check_and_raise_fence",
]

#: DB-API paramstyles the guard can speak: ``qmark`` (sqlite3) uses ``?``,
#: ``format``/``pyformat`` (psycopg) use ``%s``.
ParamStyle = Literal["qmark", "format", "pyformat"]

#: The table the guard needs; the same text works on SQLite and PostgreSQL.
FENCES_TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS fences ("
    "election TEXT PRIMARY KEY, "
    "token BIGINT NOT NULL CHECK (token > 0))"
)

#: The check-and-raise statement, in qmark style.
FENCE_UPSERT_SQL = (
    "INSERT INTO fences(election, token) VALUES (?, ?) "
    "ON CONFLICT(election) DO UPDATE SET token = excluded.token "
    "WHERE fences.token <= excluded.token "
    "RETURNING token"
)

_CURRENT_SQL = "SELECT token FROM fences WHERE election = ?"


class SqlCursor(Protocol):
    """What the guard needs of a cursor: one row, or None."""

    def fetchone(self) -> Any: ...


class SqlConnection(Protocol):
    """What the guard needs of a connection: ``execute(sql, params)``.

    ``sqlite3.Connection`` and ``psycopg.Connection`` both fit; so does a
    cursor of either driver.
    """

    def execute(self, query: str, params: Sequence[Any], /) -> SqlCursor: ...


def check_and_raise_fence(
    conn: SqlConnection,
    election: str,
    token: int,
    paramstyle: ParamStyle | None = None,
) -> int:
    """Check ``token`` against the fence of ``election`` and raise the fence to it.

    Call it as the first statement of a write transaction you already opened
    on ``conn`` (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: any transaction at
    READ COMMITTED), then do your writes and commit. Returns ``token``, now the
    stored fence.

    ``paramstyle`` is inferred for ``sqlite3`` and ``psycopg`` connections;
    pass it for anything else (a cursor, another driver).

    Raises:
        StaleTokenError: a higher token is already stored. Your transaction is
            still open and unchanged by the guard; roll it back.
        ValueError: empty election, token not in 1..2**63-1, an unknown
            paramstyle, or an autocommit connection with no open transaction.
    """
    check_election_token(election, token)
    style = paramstyle if paramstyle is not None else _infer_paramstyle(conn)
    _require_open_transaction(conn)
    row = conn.execute(_sql(FENCE_UPSERT_SQL, style), (election, token)).fetchone()
    if row is not None:
        return int(row[0])
    # The upsert found a row and left it locked (PostgreSQL locks the conflicting
    # row even when the WHERE is false), so this read sees the token that won.
    current = conn.execute(_sql(_CURRENT_SQL, style), (election,)).fetchone()
    raise StaleTokenError(election, token, int(current[0]))


def _sql(qmark_sql: str, style: ParamStyle) -> str:
    if style == "qmark":
        return qmark_sql
    if style in ("format", "pyformat"):
        return qmark_sql.replace("?", "%s")
    raise ValueError(f"unsupported paramstyle {style!r}: use 'qmark', 'format' or 'pyformat'")


def _psycopg_connection_type() -> type[Any] | None:
    # Not imported eagerly: an SQLite-only app should not pay for psycopg.
    psycopg = sys.modules.get("psycopg")
    return None if psycopg is None else psycopg.Connection


def _infer_paramstyle(conn: object) -> ParamStyle:
    if isinstance(conn, sqlite3.Connection | sqlite3.Cursor):
        return "qmark"
    pg_type = _psycopg_connection_type()
    if pg_type is not None and isinstance(conn, pg_type):
        return "format"
    raise ValueError(
        f"cannot infer the paramstyle of {type(conn).__name__}; pass paramstyle='qmark' or 'format'"
    )


def _require_open_transaction(conn: object) -> None:
    """Refuse connections where the upsert would commit on its own.

    Drivers in their default (non-autocommit) mode open a transaction by
    themselves before the upsert, which is fine: the caller commits it.
    """
    if isinstance(conn, sqlite3.Connection):
        autocommit = conn.isolation_level is None
        if autocommit and not conn.in_transaction:
            raise ValueError(
                "check_and_raise_fence needs an open transaction: run BEGIN IMMEDIATE first"
            )
        return
    pg_type = _psycopg_connection_type()
    if pg_type is not None and isinstance(conn, pg_type):
        from psycopg.pq import TransactionStatus  # noqa: PLC0415 (psycopg is loaded already)

        if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
            raise ValueError(
                "check_and_raise_fence needs an open transaction: use conn.transaction() "
                "or a non-autocommit connection"
            )
