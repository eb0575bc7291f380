"""No password in anything the worker process writes: its one-line start-up
errors, its settings errors, its JSON logs (database errors included) and its
/metrics. Real processes, real PostgreSQL."""

from __future__ import annotations

import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.integration.cluster import Cluster, eventually, free_port, running
from tests.settlement.helpers import pg_base_url, pg_schema_url, require_postgres
from tests.settlement.test_worker import (
    WORKER,
    election_holder,
    http_get,
    json_lines,
    run_worker,
    runs_settled,
    worker_env,
)

SECRET = "s3cret-pass"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://user:{SECRET}@127.0.0.1:1/test",  # the port refuses
        f"postgresql://user:{SECRET}@[::1/test",  # libpq quotes the whole URI back
        "postgresql://user:s3cret pass@127.0.0.1:1/test",  # ... or the password alone
    ],
    ids=["refused", "echoed-uri", "echoed-password"],
)
@pytest.mark.parametrize("given_as", ["flag", "env"])
def test_a_ledger_that_does_not_connect_fails_in_one_line_without_its_password(
    url: str, given_as: str
) -> None:
    if given_as == "flag":
        result = run_worker("--ledger-url", url)
    else:  # as the chart does, from a Secret
        result = run_worker(env={"SETTLEMENT_DEMO_LEDGER_URL": url})
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(
        "settlement-demo worker: cannot start: ledger postgresql://user:***@"
    )
    assert "s3cret" not in result.stderr


def test_settings_errors_never_show_a_password(tmp_path: Path) -> None:
    result = run_worker(
        "--ledger-url", f"mysql://user:{SECRET}@db/x",
        "--sidecar", f"postgresql://user:{SECRET}@db/x",  # a value in the wrong place
        env={"SETTLEMENT_DEMO_TTL_MS": f"postgresql://user:{SECRET}@db/x"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "--ledger-url: unsupported ledger URL scheme 'mysql' in mysql://user:***@db/x" in (
        result.stderr
    )
    assert "--sidecar='postgresql://user:***@db/x' is neither" in result.stderr
    assert "SETTLEMENT_DEMO_TTL_MS='postgresql://user:***@db/x'" in result.stderr
    assert SECRET not in result.stderr

    # A libpq key/value string is refused, not taken for an SQLite file name.
    result = run_worker(
        env={"SETTLEMENT_DEMO_LEDGER_URL": f"host=127.0.0.1 port=1 password={SECRET}"},
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "not a libpq key/value string: host=127.0.0.1 port=1 password=***" in result.stderr
    assert SECRET not in result.stderr
    assert list(tmp_path.iterdir()) == []

    # argparse quotes unknown arguments back.
    result = run_worker("--no-such-flag", f"postgresql://user:{SECRET}@db/x")
    assert result.returncode == 2
    assert "postgresql://user:***@db/x" in result.stderr
    assert SECRET not in result.stderr


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from running(tmp_path)


@pytest.fixture
def pg_role() -> Iterator[str]:
    """A login role of its own, so the test can lock it out and let it back in."""
    require_postgres()
    role = f"ledger_secret_test_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(pg_base_url(), autocommit=True) as admin:
            admin.execute(f'CREATE ROLE "{role}" LOGIN')
    except psycopg.Error as exc:
        pytest.skip(f"cannot create a PostgreSQL role for the test: {exc}")
    try:
        yield role
    finally:
        with psycopg.connect(pg_base_url(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


def test_json_logs_and_metrics_never_show_the_password(
    cluster: Cluster, pg_role: str, tmp_path: Path
) -> None:
    """A worker on PostgreSQL with a password in its URL (trust auth accepts
    it) loses its database: the server drops its connection and refuses the
    reconnect. The worker logs the database's error and carries on when the
    database is back; no line and no metric shows the password."""
    with pg_schema_url() as schema_url:
        schema = schema_url.rsplit("%3D", 1)[1]
        with psycopg.connect(pg_base_url(), autocommit=True) as admin:
            admin.execute(f'GRANT ALL ON SCHEMA "{schema}" TO "{pg_role}"')
        parts = urlsplit(schema_url)
        url = urlunsplit(parts._replace(netloc=f"{pg_role}:{SECRET}@{parts.netloc}"))
        port, log = free_port(), tmp_path / "worker.log"
        worker = subprocess.Popen(
            [*WORKER, "--sidecar", cluster.nodes[0].api, "--worker-id", "w-pg",
             "--http-listen", f"127.0.0.1:{port}", "--generate-interval-ms", "200"],
            env=worker_env({"SETTLEMENT_DEMO_LEDGER_URL": url}),
            stdout=subprocess.DEVNULL, stderr=log.open("w"),
        )  # fmt: skip
        try:
            eventually(lambda: election_holder(cluster), "the worker to lead")
            started = eventually(lambda: _event(log, "worker_started"), "worker_started")
            assert started["ledger"] == urlunsplit(
                parts._replace(netloc=f"{pg_role}:***@{parts.netloc}")
            )

            with psycopg.connect(pg_base_url(), autocommit=True) as admin:
                admin.execute(f'ALTER ROLE "{pg_role}" NOLOGIN')
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (pg_role,),
                )
                # The step in flight (if any) fails, then the reconnect is refused.
                lost = eventually(
                    lambda: _event(log, "campaigning_again", "not permitted to log in"),
                    "the worker to log the refused reconnect",
                    30,
                )
                assert lost["reason"] == "LedgerUnavailableError"
                assert f"cannot connect to postgresql://{pg_role}:***@" in str(lost["error"])
                admin.execute(f'ALTER ROLE "{pg_role}" LOGIN')
            # Back to work: it leads again and settles.
            settled = runs_settled(port)
            eventually(lambda: runs_settled(port) > settled or None, "settling again", 60)
            _, metrics = http_get(port, "/metrics")
            assert "settlement_worker_runs_settled_total" in metrics
            assert SECRET not in metrics
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0
        text = log.read_text()
        assert SECRET not in text
        assert json_lines(log), "the worker logs JSON"


def _event(log: Path, event: str, error_part: str = "") -> dict[str, object] | None:
    """The first JSON line of ``event`` whose ``error`` contains ``error_part``."""
    for line in json_lines(log):
        if line.get("event") == event and error_part in str(line.get("error", "")):
            return line
    return None
