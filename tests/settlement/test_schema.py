"""Schema creation, and refusing databases that are not ours without touching them."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from settlement_demo.ledger import (
    ForeignLedgerError,
    Ledger,
    Merchant,
    SchemaMissingError,
    open_ledger,
)
from settlement_demo.schema import SCHEMA_VERSION, SQLITE_APPLICATION_ID, TABLES
from tests.settlement.conftest import OpenLedger
from tests.settlement.helpers import ELECTION, raw_connection, table_counts


def test_create_schema_is_idempotent_and_keeps_data(open_: OpenLedger, ledger_url: str) -> None:
    first = open_()
    first.create_schema()
    first.create_schema()
    first.add_merchants([Merchant("m1", "One")])
    second = open_()  # a second worker starting up
    second.create_schema()
    counts = table_counts(ledger_url)
    assert set(counts) == set(TABLES)
    assert counts["merchants"] == 1
    assert counts["ledger_meta"] == 2


def test_worker_call_before_create_schema_says_so(open_: OpenLedger) -> None:
    fresh = open_()
    with pytest.raises(SchemaMissingError, match="create_schema"):
        fresh.raise_fence(ELECTION, 1)


def test_other_schema_version_is_refused(ledger: Ledger, ledger_url: str) -> None:
    with raw_connection(ledger_url) as conn:
        conn.execute("UPDATE ledger_meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(ForeignLedgerError, match=f"version '999'.*version {SCHEMA_VERSION}"):
        open_ledger(ledger_url)
    with pytest.raises(ForeignLedgerError, match="version"):
        ledger.create_schema()


def test_another_apps_database_is_refused_untouched(ledger_url: str) -> None:
    with raw_connection(ledger_url) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT)")
        conn.execute("INSERT INTO customers VALUES (1, 'a@example.com')")
    before = _fingerprint(ledger_url)
    with pytest.raises(ForeignLedgerError, match=r"another application.*customers"):
        open_ledger(ledger_url)
    assert _fingerprint(ledger_url) == before


def _fingerprint(url: str) -> object:
    """SQLite: the file's bytes; PostgreSQL: the schema's tables and the foreign rows."""
    if url.startswith("sqlite:///"):
        return hashlib.sha256(Path(url[len("sqlite:///") :]).read_bytes()).hexdigest()
    with raw_connection(url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY 1"
        ).fetchall()
        rows = conn.execute("SELECT * FROM customers ORDER BY id").fetchall()
    return (tables, rows)


# -- SQLite files ----------------------------------------------------------------


def _snapshot_dir(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_sqlite_random_bytes_file_is_refused_byte_for_byte_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(os.urandom(8192))
    before = _snapshot_dir(tmp_path)
    with pytest.raises(ForeignLedgerError, match="file is not a database"):
        open_ledger(f"sqlite:///{path}")
    with pytest.raises(ForeignLedgerError):
        open_ledger(str(path))  # plain path form too
    assert _snapshot_dir(tmp_path) == before  # no -wal/-shm/-journal either


def test_sqlite_file_with_header_but_garbage_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4080))
    before = _snapshot_dir(tmp_path)
    with pytest.raises(ForeignLedgerError, match="corrupt or not a SQLite database"):
        open_ledger(str(path))
    assert _snapshot_dir(tmp_path) == before


def test_sqlite_other_application_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 12345")
    conn.commit()
    conn.close()
    before = _snapshot_dir(tmp_path)
    with pytest.raises(ForeignLedgerError, match="application_id 0x3039"):
        open_ledger(str(path))
    assert _snapshot_dir(tmp_path) == before


def test_sqlite_ledger_is_stamped_wal_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "sub dir" / "ledger.sqlite3"
    path.parent.mkdir()
    with open_ledger(f"sqlite:///{path}") as lg:
        lg.create_schema()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == SQLITE_APPLICATION_ID
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    with open_ledger(str(path)) as again:
        again.create_schema()
        assert again.fence_token(ELECTION) is None


def test_sqlite_relative_url_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_ledger("sqlite:///rel.sqlite3") as lg:
        lg.create_schema()
    assert (tmp_path / "rel.sqlite3").is_file()
