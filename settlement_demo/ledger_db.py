"""The backend contract: one connection to one ledger database, SQLite or PostgreSQL.

Everything above this module writes SQL once, with ``?`` placeholders and
portable syntax, and runs it through :class:`Database`. A backend adds only
what differs: how to connect, how to begin a transaction, the few DDL types,
how to list tables, and how to translate its driver's exceptions into
:mod:`settlement_demo.ledger_errors` (once, here, at the boundary).

Transactions are explicit. Write transactions are serialized per election by
the fence row (PostgreSQL, READ COMMITTED) or per database by the write lock
(SQLite, ``BEGIN IMMEDIATE``); read transactions see one consistent snapshot.
A ``Database`` may be shared by threads: a lock serializes them, because one
connection can run one transaction at a time.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from settlement_demo.fence import ParamStyle
from settlement_demo.ledger_errors import LedgerConnectError, LedgerError, LedgerUnavailableError
from settlement_demo.redact import redact, remember_secrets

Row = tuple[Any, ...]


class Backend(enum.StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class Database(abc.ABC):
    """One open connection and the transactions run on it."""

    backend: Backend
    paramstyle: ParamStyle

    def __init__(self, description: str) -> None:
        #: Where this database is, safe to print (passwords redacted).
        self.description = redact(description)
        self._lock = threading.RLock()
        self._in_transaction = False
        self._closed = False

    # -- what a backend provides -------------------------------------------

    @property
    @abc.abstractmethod
    def raw(self) -> Any:
        """The driver connection, for code that speaks to the driver directly (the fence guard)."""

    @abc.abstractmethod
    def _begin_sql(self, *, write: bool) -> str: ...

    @abc.abstractmethod
    def _execute(self, sql: str, params: Sequence[Any]) -> Any:
        """Run one statement on the driver and return its cursor."""

    @abc.abstractmethod
    def _executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None: ...

    @abc.abstractmethod
    def _fetchall(self, cursor: Any) -> list[Row]: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    @abc.abstractmethod
    def translate(self, exc: BaseException) -> LedgerError | None:
        """The ledger error for a driver exception, or None if ``exc`` is not a driver error."""

    @abc.abstractmethod
    def list_tables(self) -> list[str]:
        """Names of the tables in the ledger's namespace (file or schema), sorted."""

    @abc.abstractmethod
    def application_id(self) -> int | None:
        """SQLite's header application id; None where the backend has none."""

    @abc.abstractmethod
    def set_application_id(self, application_id: int) -> None:
        """Stamp the database as ours, inside the schema-creating transaction."""

    @abc.abstractmethod
    def lock_schema(self) -> None:
        """Serialize concurrent ``create_schema`` calls (inside a write transaction)."""

    @abc.abstractmethod
    def prepare_for_writes(self) -> None:
        """Backend settings that write to the database (SQLite: WAL mode).

        Called only once the database is known to be ours or empty, so a
        foreign file is never modified.
        """

    #: Column types that differ between backends, for the DDL templates.
    key_type: str
    serial_pk: str

    # -- what everybody uses -----------------------------------------------

    def reconnect(self) -> bool:
        """Replace a connection the server dropped; True if it did.

        Called only between transactions, where nothing is in flight. The
        default (SQLite, a local file) never needs it.
        """
        return False

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement (``?`` placeholders); return its rows, [] if it has none."""
        with self._lock, self._guard():
            return self._fetchall(self._execute(self._native(sql), params))

    def execute_rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return how many rows it changed."""
        with self._lock, self._guard():
            count: int = self._execute(self._native(sql), params).rowcount
            return count

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter tuple."""
        with self._lock, self._guard():
            self._executemany(self._native(sql), params)

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[None]:
        """Run the body in one transaction: commit if it returns, roll back if it raises.

        Driver exceptions from the body (also from code that used :attr:`raw`)
        leave as :class:`LedgerError`. Raises RuntimeError on nesting.
        """
        with self._lock:
            self._check_open()
            if self._in_transaction:
                raise RuntimeError("ledger transactions do not nest")
            self._begin(write=write)
            self._in_transaction = True
            try:
                yield
            except BaseException as exc:
                self._rollback_quietly()
                translated = self.translate(exc)
                if translated is not None:
                    raise translated from exc
                raise
            else:
                try:
                    with self._guard():
                        self._execute("COMMIT", ())
                except LedgerError:
                    self._rollback_quietly()
                    raise
            finally:
                self._in_transaction = False

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- internals -----------------------------------------------------------

    def _begin(self, *, write: bool) -> None:
        try:
            with self._guard():
                self._execute(self._begin_sql(write=write), ())
        except LedgerUnavailableError:
            # A connection dropped while idle fails here, before anything was
            # done: reconnect once and begin again.
            if not self.reconnect():
                raise
            with self._guard():
                self._execute(self._begin_sql(write=write), ())

    def _native(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.paramstyle != "qmark" else sql

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"ledger {self.description} is closed")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Translate driver exceptions raised by the body."""
        self._check_open()
        try:
            yield
        except LedgerError:
            raise
        except Exception as exc:
            translated = self.translate(exc)
            if translated is None:
                raise
            raise translated from exc

    def _rollback_quietly(self) -> None:
        # The transaction may already be gone (failed COMMIT, lost connection);
        # the error that brought us here is the one worth reporting.
        with contextlib.suppress(Exception):
            self._execute("ROLLBACK", ())


_LIBPQ_KEY_VALUE = re.compile(r"^\s*[A-Za-z_]+\s*=")

#: URL schemes of the ledger (a string without ``://`` is a SQLite file path).
SQLITE_SCHEMES = ("sqlite",)
POSTGRES_SCHEMES = ("postgresql", "postgres")


def ledger_url_scheme(url: str) -> str:
    """``sqlite`` or ``postgresql`` for a ledger URL (``sqlite`` for a plain path).

    Raises:
        LedgerConnectError: not a string, empty, or a scheme the ledger does not
            speak (the message shows the URL with its password redacted).
    """
    if not isinstance(url, str) or not url.strip():
        raise LedgerConnectError(f"ledger URL must be a non-empty string, got {url!r}")
    scheme, sep, _ = url.partition("://")
    if not sep and _LIBPQ_KEY_VALUE.match(url):
        # Else it would become an SQLite file of that name, password and all.
        raise LedgerConnectError(
            f"the ledger takes a postgresql:// URL, not a libpq key/value string: {redact(url)}"
        )
    if not sep or scheme.lower() in SQLITE_SCHEMES:
        return "sqlite"
    if scheme.lower() in POSTGRES_SCHEMES:
        return "postgresql"
    raise LedgerConnectError(
        f"unsupported ledger URL scheme {scheme.lower()!r} in {redact(url)}: "
        "use sqlite:///path, a plain file path, or postgresql://..."
    )


def open_database(url: str) -> Database:
    """Connect to the database ``url`` names.

    ``sqlite:///path`` (``sqlite:////abs/path`` for an absolute path, as in
    SQLAlchemy) or a plain file path opens SQLite; ``postgresql://`` or
    ``postgres://`` opens PostgreSQL.

    Raises:
        LedgerConnectError: unknown scheme, malformed URL, or no connection.
        ForeignLedgerError: the SQLite file exists and is not a SQLite database.
    """
    if isinstance(url, str):
        remember_secrets(url)
    if ledger_url_scheme(url) == "postgresql":
        # Imported lazily: SQLite users do not load psycopg.
        from settlement_demo.ledger_postgres import PostgresDatabase  # noqa: PLC0415

        return PostgresDatabase.connect(url)
    from settlement_demo.ledger_sqlite import SqliteDatabase  # noqa: PLC0415

    if "://" in url:
        return SqliteDatabase.connect_url(url)
    return SqliteDatabase.connect(url)
