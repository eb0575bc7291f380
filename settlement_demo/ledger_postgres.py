"""PostgreSQL backend (psycopg 3, sync API), for the Kubernetes deployment.

Write transactions run at READ COMMITTED, stated explicitly so a server-wide
``default_transaction_isolation`` cannot change the fence's behaviour (see
docs/ledger.md for why READ COMMITTED is the right level for the fence
upsert). Read transactions (the audit) run at REPEATABLE READ READ ONLY: one
snapshot for all the audit's queries.

The connection runs in autocommit mode and this module issues BEGIN/COMMIT
itself, like the SQLite backend, so both share one transaction discipline.

Session timeouts bound how long a paused or dead holder can hold the fence
row lock: the server aborts a transaction left idle for
``IDLE_IN_TRANSACTION_TIMEOUT_MS``, and a statement that waits longer than
``LOCK_TIMEOUT_MS`` for a lock fails with ``LedgerUnavailableError`` instead
of hanging (the worker retries the step).

The namespace is the first schema on the search path, so
``postgresql://host/db?options=-csearch_path%3Dmy_schema`` isolates a ledger
in ``my_schema`` (the schema must exist).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict

from settlement_demo.fence import ParamStyle
from settlement_demo.ledger_db import Backend, Database, Row
from settlement_demo.ledger_errors import (
    LedgerConnectError,
    LedgerError,
    LedgerUnavailableError,
    SchemaMissingError,
)
from settlement_demo.redact import redact

DEFAULT_CONNECT_TIMEOUT_S = 5
IDLE_IN_TRANSACTION_TIMEOUT_MS = 15_000
LOCK_TIMEOUT_MS = 20_000

PgConnection = psycopg.Connection[tuple[Any, ...]]


def _reason(exc: BaseException) -> str:
    """A driver error as one redacted line: libpq quotes the URL (password
    included) in its parse errors, and spreads its messages over lines."""
    return redact(" ".join(str(exc).split())) or type(exc).__name__


def _connect(url: str) -> PgConnection:
    """Open an autocommit connection, with a connect timeout unless the URL sets one.

    The driver's exception is not chained (``from None``): its message may
    hold the password, and a chained exception ends up in tracebacks.
    """
    shown = redact(url)
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise LedgerConnectError(f"bad PostgreSQL URL {shown}: {_reason(exc)}") from None
    extra: dict[str, Any] = {}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT_S
    if "application_name" not in params:
        extra["application_name"] = "raft-sidecar-ledger"
    try:
        return psycopg.connect(url, autocommit=True, **extra)
    except psycopg.Error as exc:
        raise LedgerConnectError(f"cannot connect to {shown}: {_reason(exc)}") from None


class PostgresDatabase(Database):
    backend = Backend.POSTGRESQL
    paramstyle: ParamStyle = "format"
    # "C" collation: ids sort by code point, as in Python and in SQLite, so
    # every holder (and both backends) cut the same chunks.
    key_type = 'TEXT COLLATE "C"'
    serial_pk = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"

    def __init__(self, conn: PgConnection, url: str) -> None:
        super().__init__(url)  # Database keeps only the redacted form
        self._conn = conn
        self._url = url  # kept to reconnect; only the redacted form is ever shown

    @classmethod
    def connect(cls, url: str) -> PostgresDatabase:
        """Connect to ``url``, with a connect timeout unless the URL sets one.

        Raises:
            LedgerConnectError: malformed URL, no connection (message names the
                URL with its password redacted, and the reason), or a search
                path with no existing schema.
        """
        db = cls(_connect(url), url)
        try:
            db._setup_session()
        except BaseException:
            db.close()
            raise
        return db

    def _setup_session(self) -> None:
        self.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_TIMEOUT_MS}")
        self.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        if self.execute("SELECT current_schema()")[0][0] is None:
            search_path = self.execute("SHOW search_path")[0][0]
            raise LedgerConnectError(
                f"{self.description}: no schema of search_path {search_path!r} exists; "
                "create it first"
            )

    def reconnect(self) -> bool:
        """Reconnect if the server dropped the connection (restart, failover, idle kill)."""
        if self.closed or not self._conn.closed:
            return False
        try:
            self._conn = _connect(self._url)
        except LedgerConnectError as exc:
            # It did connect before: this is an outage to retry, not a bad URL.
            raise LedgerUnavailableError(str(exc)) from exc
        self._setup_session()
        return True

    @property
    def raw(self) -> PgConnection:
        return self._conn

    def _begin_sql(self, *, write: bool) -> str:
        if write:
            return "BEGIN ISOLATION LEVEL READ COMMITTED"
        return "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

    def _execute(self, sql: str, params: Sequence[Any]) -> psycopg.Cursor[tuple[Any, ...]]:
        return self._conn.execute(sql, params or None)

    def _executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(sql, params)

    def _fetchall(self, cursor: Any) -> list[Row]:
        if cursor.description is None:
            return []
        rows: list[Row] = cursor.fetchall()
        return rows

    def _close(self) -> None:
        self._conn.close()

    def translate(self, exc: BaseException) -> LedgerError | None:
        if not isinstance(exc, psycopg.Error):
            return None
        where = f"PostgreSQL ledger {self.description}"
        reason = _reason(exc)
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return SchemaMissingError(
                f"{where} has no ledger schema ({reason}): call Ledger.create_schema() first"
            )
        if isinstance(exc, psycopg.OperationalError):
            return LedgerUnavailableError(f"{where}: {reason}")
        return LedgerError(f"{where}: {reason}")

    def list_tables(self) -> list[str]:
        rows = self.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY table_name"
        )
        return [str(r[0]) for r in rows]

    def application_id(self) -> int | None:
        return None

    def set_application_id(self, application_id: int) -> None:
        """Nothing to stamp: ``ledger_meta`` is the mark on PostgreSQL."""

    def lock_schema(self) -> None:
        # CREATE TABLE IF NOT EXISTS is not safe against a concurrent creator;
        # a transaction-scoped advisory lock per schema serializes them.
        self.execute(
            "SELECT pg_advisory_xact_lock(hashtext('raft-sidecar-ledger:' || current_schema()))"
        )

    def prepare_for_writes(self) -> None:
        """Nothing to do on PostgreSQL."""
