"""SQLite backend: one file shared by worker processes, one connection per Ledger.

Settings and why:

* ``journal_mode=WAL``: readers (the audit, ``run_instructions``) never block
  the writer, and the writer never blocks them.
* ``synchronous=FULL``: in WAL mode, NORMAL may lose the last commits on power
  loss; a payout that was acknowledged must stay written.
* ``BEGIN IMMEDIATE`` for every write transaction: it takes the database's
  single write lock up front, so the fence check and the writes behind it run
  with no other writer in between, and no transaction ever has to upgrade a
  read lock (which can fail with SQLITE_BUSY mid-transaction).
* ``busy_timeout``: how long a writer waits for that lock before the step
  fails with ``LedgerUnavailableError`` (and the worker retries it).

A file is inspected before anything is written to it: an existing file whose
header is not SQLite's is refused without being opened, and the schema check
(in :mod:`settlement_demo.schema`) runs before WAL mode is switched on.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from settlement_demo.fence import ParamStyle
from settlement_demo.ledger_db import Backend, Database, Row
from settlement_demo.ledger_errors import (
    ForeignLedgerError,
    LedgerConnectError,
    LedgerError,
    LedgerUnavailableError,
    SchemaMissingError,
)
from settlement_demo.redact import redact

BUSY_TIMEOUT_MS = 5_000

_SQLITE_HEADER = b"SQLite format 3\x00"
# RETURNING arrived in SQLite 3.35.0 (2021).
_MIN_SQLITE_VERSION = (3, 35, 0)


def path_from_url(url: str) -> str:
    """The file path of a ``sqlite:///...`` URL.

    As in SQLAlchemy: ``sqlite:///ledger.sqlite3`` is relative to the working
    directory, ``sqlite:////var/lib/ledger.sqlite3`` is absolute.
    """
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix):
        raise LedgerConnectError(
            f"bad SQLite URL {url!r}: expected sqlite:///relative/path or sqlite:////absolute/path"
        )
    path = url[len(prefix) :]
    if not path:
        raise LedgerConnectError(f"bad SQLite URL {url!r}: no file path")
    return path


class SqliteDatabase(Database):
    backend = Backend.SQLITE
    paramstyle: ParamStyle = "qmark"
    key_type = "TEXT"
    serial_pk = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        super().__init__(f"sqlite:///{path}")
        self._conn = conn
        self.path = path

    @classmethod
    def connect_url(cls, url: str) -> SqliteDatabase:
        return cls.connect(path_from_url(url))

    @classmethod
    def connect(cls, path: str) -> SqliteDatabase:
        """Open the SQLite file at ``path`` (created if missing) without writing to it.

        Raises:
            LedgerConnectError: the path is a directory, ``:memory:``, in a
                missing directory, or this SQLite is too old.
            ForeignLedgerError: the file exists and is not a SQLite database.
        """
        if sqlite3.sqlite_version_info < _MIN_SQLITE_VERSION:
            raise LedgerConnectError(
                f"SQLite {sqlite3.sqlite_version} is too old: the ledger needs 3.35 or newer"
            )
        if path == ":memory:" or path.startswith("file:"):
            raise LedgerConnectError(
                f"SQLite ledger needs a file path shared by the workers, got {path!r}"
            )
        _refuse_non_sqlite_file(path)
        try:
            conn = sqlite3.connect(
                path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # Database serializes threads with a lock
            )
        except sqlite3.Error as exc:
            raise LedgerConnectError(f"cannot open SQLite ledger {path!r}: {exc}") from exc
        db = cls(conn, path)
        try:
            # None of these writes to the file.
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            db.close()
            raise
        return db

    @property
    def raw(self) -> sqlite3.Connection:
        return self._conn

    def _begin_sql(self, *, write: bool) -> str:
        return "BEGIN IMMEDIATE" if write else "BEGIN DEFERRED"

    def _execute(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    def _executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, params)

    def _fetchall(self, cursor: Any) -> list[Row]:
        rows: list[Row] = cursor.fetchall()
        return rows

    def _close(self) -> None:
        self._conn.close()

    def translate(self, exc: BaseException) -> LedgerError | None:
        if not isinstance(exc, sqlite3.Error):
            return None
        name = getattr(exc, "sqlite_errorname", "")
        where = f"SQLite ledger {self.path!r}"
        reason = redact(str(exc))
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return ForeignLedgerError(f"{where} is corrupt or not a SQLite database: {reason}")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return LedgerUnavailableError(
                f"{where} stayed locked for {BUSY_TIMEOUT_MS} ms: {reason}; retry the step"
            )
        if name.startswith(("SQLITE_IOERR", "SQLITE_FULL", "SQLITE_CANTOPEN", "SQLITE_READONLY")):
            return LedgerUnavailableError(f"{where}: {reason}")
        if "no such table" in reason:
            return SchemaMissingError(
                f"{where} has no ledger schema ({reason}): call Ledger.create_schema() first"
            )
        return LedgerError(f"{where}: {reason}")

    def list_tables(self) -> list[str]:
        rows = self.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY name"
        )
        return [str(r[0]) for r in rows]

    def application_id(self) -> int | None:
        return int(self.execute("PRAGMA application_id")[0][0])

    def set_application_id(self, application_id: int) -> None:
        # Part of the enclosing transaction: rolled back with it.
        self.execute(f"PRAGMA application_id = {int(application_id)}")

    def lock_schema(self) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already excludes every other writer."""

    def prepare_for_writes(self) -> None:
        mode = self.execute("PRAGMA journal_mode = WAL")[0][0]
        if str(mode).lower() != "wal":
            raise LedgerUnavailableError(
                f"SQLite ledger {self.path!r}: cannot switch to WAL mode (got {mode!r})"
            )


def _refuse_non_sqlite_file(path: str) -> None:
    """Raise unless ``path`` is missing, empty, or starts with the SQLite header.

    Reads 16 bytes and nothing else, so a foreign file is never opened by SQLite.
    """
    p = Path(path)
    if p.is_dir():
        raise LedgerConnectError(f"SQLite ledger path {path!r} is a directory")
    try:
        with p.open("rb") as f:
            header = f.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        parent = p.parent if str(p.parent) else Path(os.curdir)
        if not parent.is_dir():
            raise LedgerConnectError(
                f"cannot create SQLite ledger {path!r}: directory {str(parent)!r} does not exist"
            ) from None
        return
    except OSError as exc:
        raise LedgerConnectError(f"cannot read SQLite ledger {path!r}: {exc}") from exc
    if header and header != _SQLITE_HEADER:
        raise ForeignLedgerError(
            f"{path!r} is not a SQLite database (file is not a database): refusing to touch it"
        )
