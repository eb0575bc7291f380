"""Ledgers of schema version 1 are migrated in place by ``create_schema()``:
history kept, the fence's holder unknown until the next holder presents the
token, and no false holder conflict during a rolling upgrade."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from settlement_demo.ledger import (
    FenceHolderConflict,
    FenceRejection,
    LedgerError,
    SchemaChange,
    SchemaMissingError,
    StaleTokenError,
    open_ledger,
)
from settlement_demo.schema import SCHEMA_VERSION
from tests.settlement.conftest import OpenLedger
from tests.settlement.helpers import (
    ELECTION,
    fresh_ledger_url,
    raw_connection,
    settle_everything,
    table_counts,
)
from tests.settlement.legacy import (
    OLD_HOLDER,
    OLD_TOKEN,
    OPEN_AMOUNTS,
    SETTLED_AMOUNTS,
    V1_FENCE_UPSERT_SQL,
    create_v1_ledger,
)


def _columns(url: str, table: str) -> list[tuple[Any, ...]]:
    """(name, type, not null, default) of each column of ``table``, in order."""
    with raw_connection(url) as conn:
        if url.startswith("sqlite:///"):
            return [tuple(r[1:5]) for r in conn.execute(f"PRAGMA table_info({table})")]
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s "
                "ORDER BY ordinal_position",
                (table,),
            )
        ]


def _schema_version(url: str) -> str:
    with raw_connection(url) as conn:
        row = conn.execute("SELECT value FROM ledger_meta WHERE key = 'schema_version'").fetchone()
    return str(row[0])


def test_v1_ledger_is_migrated_in_place_keeping_its_history(
    open_: OpenLedger, ledger_url: str, backend: str, tmp_path: Any
) -> None:
    create_v1_ledger(ledger_url)
    before = table_counts(ledger_url)
    lg = open_(worker_id="w-new")  # opens: it is ours, only older

    with pytest.raises(SchemaMissingError, match=r"older schema version.*create_schema\(\)"):
        lg.raise_fence(ELECTION, OLD_TOKEN + 1)
    with pytest.raises(SchemaMissingError, match="migrate it in place"):
        lg.audit()
    assert _schema_version(ledger_url) == "1"

    assert lg.create_schema() is SchemaChange.UPGRADED
    assert lg.create_schema() is SchemaChange.NONE
    assert open_(worker_id="other").create_schema() is SchemaChange.NONE
    assert _schema_version(ledger_url) == str(SCHEMA_VERSION)
    assert table_counts(ledger_url) == before, "the migration keeps every row"

    # A migrated ledger has the columns a new one has.
    with fresh_ledger_url(backend, tmp_path) as new_url, open_ledger(new_url) as new:
        new.create_schema()
        for table in ("fences", "fence_rejections", "run_steps"):
            assert _columns(ledger_url, table) == _columns(new_url, table), table
    # Version 1 kept no write order: its steps are numbered by their timestamps.
    with raw_connection(ledger_url) as conn:
        steps = [r[0] for r in conn.execute("SELECT step FROM run_steps ORDER BY seq")]
    assert steps == ["claim", "chunk:0", "chunk:1", "settle"]

    # History reads as before; the migrated fence has an unknown holder.
    assert lg.fence(ELECTION) == (OLD_TOKEN, None)
    assert lg.fence_rejections() == [
        FenceRejection(
            ELECTION, 3, OLD_TOKEN, "w-older", "write_chunk:1",
            "2024-05-01T10:00:04.000000+00:00", "stale_token", None,
        )
    ]  # fmt: skip
    report = lg.audit()
    assert report.ok, report.to_dict()
    assert (report.batches_settled, report.open_batches, report.payouts_written) == (1, 1, 4)
    assert (report.stale_writes_rejected, report.holder_conflicts_rejected) == (1, 0)
    assert (report.token_regressions, report.shared_tokens) == (0, 0)
    assert report.paid_total_cents == sum(SETTLED_AMOUNTS)

    # The holder of token 5 may still be at work after the upgrade: its next
    # step is accepted (no false alarm) and binds the fence to it.
    old = open_(worker_id=OLD_HOLDER)
    old.raise_fence(ELECTION, OLD_TOKEN)
    assert lg.fence(ELECTION) == (OLD_TOKEN, OLD_HOLDER)
    with pytest.raises(FenceHolderConflict):
        lg.raise_fence(ELECTION, OLD_TOKEN)
    with pytest.raises(StaleTokenError):
        lg.raise_fence(ELECTION, OLD_TOKEN - 1)
    assert settle_everything(lg, OLD_TOKEN + 1) == 1
    report = lg.audit()
    assert (report.batches_settled, report.payouts_written) == (2, 4 + len(OPEN_AMOUNTS))
    assert report.holder_conflicts_rejected == 1 and not report.ok


def test_a_v1_worker_still_running_never_causes_a_false_conflict(
    open_: OpenLedger, ledger_url: str, backend: str
) -> None:
    """During a rolling upgrade a version 1 worker may raise the fence without
    a holder; the holder then recorded belongs to an older token and must not
    be taken for the new token's holder."""
    create_v1_ledger(ledger_url)
    a = open_(worker_id="a")
    a.create_schema()
    a.raise_fence(ELECTION, 7)
    assert a.fence(ELECTION) == (7, "a")
    with raw_connection(ledger_url) as v1_worker:
        sql = V1_FENCE_UPSERT_SQL if backend == "sqlite" else V1_FENCE_UPSERT_SQL.replace("?", "%s")
        assert v1_worker.execute(sql, (ELECTION, 9)).fetchone()[0] == 9
    assert a.fence(ELECTION) == (9, None)  # "a" held 7, not 9
    b = open_(worker_id="b")
    b.raise_fence(ELECTION, 9)  # e.g. the v1 worker, restarted on the new release
    assert a.fence(ELECTION) == (9, "b")
    with pytest.raises(FenceHolderConflict, match=r"'c'.*'b'"):
        open_(worker_id="c").raise_fence(ELECTION, 9)


def test_a_failed_migration_changes_nothing(open_: OpenLedger, ledger_url: str) -> None:
    create_v1_ledger(ledger_url)
    with raw_connection(ledger_url) as conn:
        # Something the migration trips over after its first statements succeeded.
        conn.execute("ALTER TABLE fence_rejections ADD COLUMN current_holder TEXT")
    before = {t: _columns(ledger_url, t) for t in ("fences", "fence_rejections")}
    lg = open_(worker_id="w")
    with pytest.raises(LedgerError, match="current_holder"):
        lg.create_schema()
    assert {t: _columns(ledger_url, t) for t in before} == before
    assert _schema_version(ledger_url) == "1"


def test_workers_starting_together_migrate_once(open_: OpenLedger, ledger_url: str) -> None:
    create_v1_ledger(ledger_url)
    ledgers = [open_(worker_id=f"w{k}") for k in range(3)]
    results: list[SchemaChange] = []
    errors: list[BaseException] = []

    def start(k: int) -> None:
        try:
            results.append(ledgers[k].create_schema())
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(r.value for r in results) == ["none", "none", "upgraded"]
    assert _schema_version(ledger_url) == str(SCHEMA_VERSION)
