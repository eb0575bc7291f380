"""The one redaction function: what it masks, what it leaves alone, and that
the ledger's errors go through it."""

from __future__ import annotations

import traceback

import pytest

from settlement_demo.ledger import LedgerConnectError, open_ledger
from settlement_demo.redact import redact, remember_secrets
from tests.settlement.helpers import pg_base_url, require_postgres

SECRET = "s3cret-pass"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:p@h:5/d?password=q&x=1", "postgresql://u:***@h:5/d?password=***&x=1"),
        ("postgres://ledger:s3cret@db.example.com/x", "postgres://ledger:***@db.example.com/x"),
        ("'postgresql://u:pw@h'", "'postgresql://u:***@h'"),
        ('URI: "postgresql://u:p@ss@[::1/test"', 'URI: "postgresql://u:***@[::1/test"'),
        (
            "a postgresql://u:pw@h/d and http://v:pw2@w/",
            "a postgresql://u:***@h/d and http://v:***@w/",
        ),
        ("host=db port=5 password=x1 user=me", "host=db port=5 password=*** user=me"),
        ("host=db password = 'it\\'s \\\\ quoted' user=me", "host=db password = *** user=me"),
        ("PGPASSWORD=x sslpassword=y", "PGPASSWORD=*** sslpassword=***"),
        ("{'password': 'x', 'host': 'h'}", "{'password': '***', 'host': 'h'}"),
        ('{"password": "x"}', "{\"password\": '***'}"),
        # Left alone: nothing secret in them.
        ("postgresql://h/d", "postgresql://h/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("postgresql://h:5432/d", "postgresql://h:5432/d"),
        ("postgresql://[::1]:5432/d", "postgresql://[::1]:5432/d"),
        ('FATAL: password authentication failed for user "me"', None),
        ("sqlite:////var/lib/ledger.sqlite3", None),
    ],
)
def test_patterns(text: str, expected: str | None) -> None:
    assert redact(text) == (text if expected is None else expected)
    assert redact(redact(text)) == redact(text)


def test_remembered_passwords_are_masked_wherever_they_appear() -> None:
    remember_secrets("postgresql://u:s3cret%20space@h/d?sslpassword=key-pass-9")
    remember_secrets("host=h password='quoted pass'")
    # Fragments a driver may echo without the URL around them.
    assert redact('unexpected spaces found in "s3cret space"') == (
        'unexpected spaces found in "***"'
    )
    assert redact("s3cret%20space and key-pass-9") == "*** and ***"
    assert redact("it was quoted pass") == "it was ***"
    remember_secrets("postgresql://u:test@h/d")  # too short to mask everywhere
    assert redact("the test database") == "the test database"


def test_a_url_the_driver_echoes_is_refused_without_its_password() -> None:
    with pytest.raises(LedgerConnectError) as caught:
        open_ledger(f"postgresql://user:{SECRET}@[::1/test")
    message = str(caught.value)
    assert "bad PostgreSQL URL postgresql://user:***@[::1/test" in message
    assert SECRET not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_a_postgres_ledger_describes_itself_without_its_password() -> None:
    require_postgres()
    base = pg_base_url()
    url = base.replace("://", f"://{_user()}:{SECRET}@", 1)
    with open_ledger(url, worker_id="w") as lg:  # trust auth: any password will do
        assert SECRET not in lg.description
        assert f":***@{base.split('://', 1)[1]}" in lg.description


def _user() -> str:
    import psycopg  # noqa: PLC0415

    with psycopg.connect(pg_base_url()) as conn:
        return str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]


def test_the_workers_log_processor_redacts_every_value() -> None:
    from settlement_demo.cli import _redact_log_values  # noqa: PLC0415

    line = _redact_log_values(
        None,
        "info",
        {
            "event": "campaigning_again",
            "error": f"PostgreSQL ledger postgresql://u:{SECRET}@h/d: gone",
            "attempt": 3,
            "ok": False,
            "nested": {"urls": [f"host=h password={SECRET}"]},
            "other": LedgerConnectError(f"postgresql://u:{SECRET}@h/d"),
        },
    )
    assert line["error"] == "PostgreSQL ledger postgresql://u:***@h/d: gone"
    assert (line["attempt"], line["ok"]) == (3, False)
    assert line["nested"] == {"urls": ["host=h password=***"]}
    assert SECRET not in str(line)
