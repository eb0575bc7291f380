"""A ledger as schema version 1 left it, for the migration tests.

The DDL below is a frozen copy of what ``settlement_demo/schema.py`` created at
version 1 (the fence without a holder), and the rows are what version 1 code
wrote: one batch settled by holder ``w-old`` with token 5 after a stale write
by token 3 was refused, and one batch still open. Nothing here may follow
later schema changes: it is the past that migrations must keep working on.
"""

from __future__ import annotations

from settlement_demo.schema import APPLICATION, SQLITE_APPLICATION_ID
from tests.settlement.helpers import ELECTION, raw_connection

V1_DDL = (
    "CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fences ("
    "election TEXT PRIMARY KEY, token BIGINT NOT NULL CHECK (token > 0))",
    """CREATE TABLE fence_rejections (
        seq {serial},
        election TEXT NOT NULL,
        presented BIGINT NOT NULL,
        current BIGINT NOT NULL,
        worker_id TEXT NOT NULL,
        step TEXT NOT NULL,
        at TEXT NOT NULL)""",
    "CREATE TABLE merchants (id {key} PRIMARY KEY, name TEXT NOT NULL)",
    """CREATE TABLE batches (
        seq {serial},
        id {key} NOT NULL UNIQUE,
        election TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'running', 'settled')),
        created_at TEXT NOT NULL)""",
    "CREATE INDEX batches_by_election ON batches (election, status, seq)",
    """CREATE TABLE instructions (
        id {key} PRIMARY KEY,
        batch_id {key} NOT NULL REFERENCES batches (id),
        merchant_id {key} NOT NULL REFERENCES merchants (id),
        amount_cents BIGINT NOT NULL CHECK (amount_cents > 0))""",
    "CREATE INDEX instructions_by_batch ON instructions (batch_id, id)",
    """CREATE TABLE runs (
        id {key} PRIMARY KEY,
        batch_id {key} NOT NULL UNIQUE REFERENCES batches (id),
        election TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'settled')),
        started_token BIGINT NOT NULL,
        chunk_size INTEGER NOT NULL CHECK (chunk_size > 0),
        n_chunks INTEGER NOT NULL CHECK (n_chunks > 0),
        n_instructions INTEGER NOT NULL,
        total_cents BIGINT NOT NULL,
        started_at TEXT NOT NULL,
        settled_token BIGINT,
        settled_at TEXT)""",
    "CREATE INDEX runs_by_election ON runs (election, status)",
    """CREATE TABLE run_steps (
        run_id {key} NOT NULL REFERENCES runs (id),
        step TEXT NOT NULL,
        chunk INTEGER,
        token BIGINT NOT NULL,
        worker_id TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (run_id, step, token))""",
    """CREATE TABLE payouts (
        seq {serial},
        run_id {key} NOT NULL REFERENCES runs (id),
        instruction_id {key} NOT NULL REFERENCES instructions (id),
        merchant_id {key} NOT NULL,
        amount_cents BIGINT NOT NULL,
        chunk INTEGER NOT NULL,
        token BIGINT NOT NULL,
        worker_id TEXT NOT NULL,
        at TEXT NOT NULL)""",
    "CREATE INDEX payouts_by_instruction ON payouts (instruction_id)",
    """CREATE TABLE settlements (
        seq {serial},
        run_id {key} NOT NULL REFERENCES runs (id),
        batch_id {key} NOT NULL REFERENCES batches (id),
        total_cents BIGINT NOT NULL,
        n_payouts INTEGER NOT NULL,
        token BIGINT NOT NULL,
        worker_id TEXT NOT NULL,
        at TEXT NOT NULL)""",
    "CREATE INDEX settlements_by_batch ON settlements (batch_id)",
)

#: Version 1's fence statement, as a version 1 worker still running during a
#: rolling upgrade would send it (qmark style).
V1_FENCE_UPSERT_SQL = (
    "INSERT INTO fences(election, token) VALUES (?, ?) "
    "ON CONFLICT(election) DO UPDATE SET token = excluded.token "
    "WHERE fences.token <= excluded.token "
    "RETURNING token"
)

OLD_HOLDER = "w-old"
OLD_TOKEN = 5
#: The settled batch's instruction amounts, and the open batch's.
SETTLED_AMOUNTS = (1000, 1007, 1014, 1021)
OPEN_AMOUNTS = (2000, 2007)


def _at(second: int) -> str:
    return f"2024-05-01T10:00:{second:02d}.000000+00:00"


def create_v1_ledger(url: str) -> None:
    """Create a version 1 ledger with its history in the empty database at ``url``."""
    sqlite = url.startswith("sqlite:///")
    key = "TEXT" if sqlite else 'TEXT COLLATE "C"'
    serial = (
        "INTEGER PRIMARY KEY AUTOINCREMENT"
        if sqlite
        else "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    )
    mark = "?" if sqlite else "%s"
    with raw_connection(url) as conn:
        conn.execute("BEGIN")

        def run(sql: str, *rows: tuple[object, ...]) -> None:
            for row in rows or ((),):
                conn.execute(sql.replace("?", mark), row)

        for statement in V1_DDL:
            run(statement.format(key=key, serial=serial))
        run(
            "INSERT INTO ledger_meta VALUES (?, ?)",
            ("application", APPLICATION),
            ("schema_version", "1"),
        )
        run("INSERT INTO merchants VALUES (?, ?)", ("m0", "Merchant 0"), ("m1", "Merchant 1"))
        run(
            "INSERT INTO batches (id, election, status, created_at) VALUES (?, ?, ?, ?)",
            ("old", ELECTION, "settled", _at(0)),
            ("later", ELECTION, "open", _at(1)),
        )
        run(
            "INSERT INTO instructions VALUES (?, ?, ?, ?)",
            *[(f"old-i{k}", "old", f"m{k % 2}", a) for k, a in enumerate(SETTLED_AMOUNTS)],
            *[(f"later-i{k}", "later", f"m{k % 2}", a) for k, a in enumerate(OPEN_AMOUNTS)],
        )
        run(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "run-old", "old", ELECTION, "settled", OLD_TOKEN, 2, 2, 4,
                sum(SETTLED_AMOUNTS), _at(2), OLD_TOKEN, _at(6),
            ),
        )  # fmt: skip
        run(
            "INSERT INTO run_steps VALUES (?, ?, ?, ?, ?, ?)",
            ("run-old", "claim", None, OLD_TOKEN, OLD_HOLDER, _at(2)),
            ("run-old", "chunk:0", 0, OLD_TOKEN, OLD_HOLDER, _at(3)),
            ("run-old", "chunk:1", 1, OLD_TOKEN, OLD_HOLDER, _at(5)),
            ("run-old", "settle", None, OLD_TOKEN, OLD_HOLDER, _at(6)),
        )
        run(
            "INSERT INTO payouts (run_id, instruction_id, merchant_id, amount_cents, chunk, "
            "token, worker_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            *[
                ("run-old", f"old-i{k}", f"m{k % 2}", a, k // 2, OLD_TOKEN, OLD_HOLDER, _at(3 + k))
                for k, a in enumerate(SETTLED_AMOUNTS)
            ],
        )  # fmt: skip
        run(
            "INSERT INTO settlements (run_id, batch_id, total_cents, n_payouts, token, "
            "worker_id, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("run-old", "old", sum(SETTLED_AMOUNTS), 4, OLD_TOKEN, OLD_HOLDER, _at(6)),
        )
        run("INSERT INTO fences VALUES (?, ?)", (ELECTION, OLD_TOKEN))
        run(
            "INSERT INTO fence_rejections (election, presented, current, worker_id, step, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (ELECTION, 3, OLD_TOKEN, "w-older", "write_chunk:1", _at(4)),
        )
        if sqlite:
            run(f"PRAGMA application_id = {SQLITE_APPLICATION_ID}")
        conn.execute("COMMIT")
