"""URLs and paths that cannot be a ledger fail fast with a message that says why."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from settlement_demo.ledger import LedgerConnectError, open_ledger
from tests.settlement.helpers import pg_base_url, require_postgres, with_search_path


def test_postgres_url_that_does_not_connect_fails_quickly_with_reason() -> None:
    started = time.monotonic()
    with pytest.raises(LedgerConnectError) as caught:
        open_ledger("postgresql://ledger:s3cret@127.0.0.1:1/x")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "cannot connect to postgresql://ledger:***@127.0.0.1:1/x" in message
    assert "s3cret" not in message
    assert "refused" in message.lower() or "connect" in message.lower()


def test_postgres_search_path_without_schema_is_refused() -> None:
    require_postgres()
    url = with_search_path(pg_base_url(), "no_such_schema_for_ledger")
    with pytest.raises(LedgerConnectError, match="no schema of search_path"):
        open_ledger(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://127.0.0.1/ledger", "unsupported ledger URL scheme 'mysql'"),
        (
            "http://user:pw@example.com/",
            r"unsupported ledger URL scheme 'http' in http://user:\*\*\*@",
        ),
        ("sqlite://", "bad SQLite URL"),
        ("sqlite:///", "no file path"),
        ("sqlite:///:memory:", "file path shared by the workers"),
        ("", "non-empty string"),
        ("postgresql://127.0.0.1:5432/test?sslmode=bogus", "bad PostgreSQL URL|cannot connect"),
        (
            "host=127.0.0.1 password=s3cret",
            r"not a libpq key/value string: host=127\.0\.0\.1 password=\*\*\*$",
        ),
    ],
)
def test_unusable_urls_are_connect_errors(url: str, message: str) -> None:
    with pytest.raises(LedgerConnectError, match=message):
        open_ledger(url)


def test_sqlite_in_a_missing_directory_or_on_a_directory(tmp_path: Path) -> None:
    with pytest.raises(LedgerConnectError, match="does not exist"):
        open_ledger(str(tmp_path / "nope" / "ledger.sqlite3"))
    assert not (tmp_path / "nope").exists()
    with pytest.raises(LedgerConnectError, match="is a directory"):
        open_ledger(f"sqlite:///{tmp_path}")
