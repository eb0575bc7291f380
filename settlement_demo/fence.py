"""The fence guard: reject a write whose fencing token is older than one seen
before, or whose token another holder already presented.

Theory of operation
-------------------
The resource (here: a SQL database) keeps, per election, the highest fencing
token it has ever accepted and the holder (worker id) that presented it, in a
``fences`` table. Every write transaction of a leader *first* runs one
statement that compares its (token, holder) with the stored ones and raises
the stored ones to them::

    INSERT INTO fences(election, token, holder, holder_token) VALUES (?, ?, ?, ?)
    ON CONFLICT(election) DO UPDATE
        SET token = excluded.token, holder = excluded.holder, holder_token = excluded.token
        WHERE fences.token < excluded.token
           OR (fences.token = excluded.token
               AND (fences.holder = excluded.holder
                    OR fences.holder_token IS NULL OR fences.holder_token <> fences.token))
    RETURNING token

A row comes back when the token is new, higher (a new holder, which cuts off
every older one), or equal and presented by the same holder (a retry). No row
means either a newer holder got there first (``StaleTokenError``) or another
holder presented this very token before (``FenceHolderConflict``): the
election service granted one token twice, which it never does unless it lost
safety. Either way the caller rolls back and stops.

``holder_token`` says which token the stored holder belongs to. A row whose
``holder_token`` is not its ``token`` was last raised by code that did not
record holders (a ledger migrated from schema version 1, or a version 1 worker
still running during a rolling upgrade): its holder is unknown, and the first
holder to present that token again is accepted and recorded. That keeps an
upgrade from raising a false alarm; it can only miss a conflict that the old
code could not have seen either.

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

from settlement_demo.ledger_errors import FenceHolderConflict, StaleTokenError
from settlement_demo.ledger_types import check_election_token, check_text

__all__ = [
    "FENCES_ADD_HOLDER_DDL",
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
#: ``holder`` is the holder that presented ``holder_token``; it is the holder
#: of ``token`` only while ``holder_token = token`` (see the module docstring).
FENCES_TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS fences ("
    "election TEXT PRIMARY KEY, "
    "token BIGINT NOT NULL CHECK (token > 0), "
    "holder TEXT, "
    "holder_token BIGINT)"
)

#: Brings a ``fences`` table made before holders were recorded (``election``
#: and ``token`` only) up to :data:`FENCES_TABLE_DDL`, one statement each, in
#: the transaction of your choice. Existing rows get an unknown holder.
FENCES_ADD_HOLDER_DDL = (
    "ALTER TABLE fences ADD COLUMN holder TEXT",
    "ALTER TABLE fences ADD COLUMN holder_token BIGINT",
)

#: The check-and-raise statement, in qmark style; parameters
#: ``(election, token, holder, token)``.
FENCE_UPSERT_SQL = (
    "INSERT INTO fences(election, token, holder, holder_token) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(election) DO UPDATE "
    "SET token = excluded.token, holder = excluded.holder, holder_token = excluded.token "
    "WHERE fences.token < excluded.token "
    "OR (fences.token = excluded.token "
    "AND (fences.holder = excluded.holder "
    "OR fences.holder_token IS NULL OR fences.holder_token <> fences.token)) "
    "RETURNING token"
)

_CURRENT_SQL = "SELECT token, holder FROM fences WHERE election = ?"


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
    *,
    holder: str,
    paramstyle: ParamStyle | None = None,
) -> int:
    """Check (``token``, ``holder``) against the fence of ``election`` and raise the fence to them.

    Call it as the first statement of a write transaction you already opened
    on ``conn`` (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: any transaction at
    READ COMMITTED), then do your writes and commit. Returns ``token``, now the
    stored fence. ``holder`` names who presents the token (the worker id the
    token was granted to); the same holder may present the same token again
    (a retry), another holder may not.

    ``paramstyle`` is inferred for ``sqlite3`` and ``psycopg`` connections;
    pass it for anything else (a cursor, another driver).

    Raises:
        StaleTokenError: a higher token is already stored. Your transaction is
            still open and unchanged by the guard; roll it back.
        FenceHolderConflict: this very token was presented before by another
            holder: the election service granted it twice, which can only
            happen if it lost safety. Roll back, stop writing, alert.
        ValueError: empty election or holder, token not in 1..2**63-1, an
            unknown paramstyle, or an autocommit connection with no open
            transaction.
    """
    check_election_token(election, token)
    check_text("fence holder", holder)
    style = paramstyle if paramstyle is not None else _infer_paramstyle(conn)
    _require_open_transaction(conn)
    params = (election, token, holder, token)
    row = conn.execute(_sql(FENCE_UPSERT_SQL, style), params).fetchone()
    if row is not None:
        return int(row[0])
    # The upsert found a row and left it locked (PostgreSQL locks the conflicting
    # row even when the WHERE is false), so this read sees the fence that won.
    current, current_holder = conn.execute(_sql(_CURRENT_SQL, style), (election,)).fetchone()
    if int(current) > token:
        raise StaleTokenError(election, token, int(current))
    raise FenceHolderConflict(election, token, holder, str(current_holder))


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
