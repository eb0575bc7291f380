"""The ledger's tables, and how to tell our database from someone else's.

Tables (docs/ledger.md describes each column):

* ``ledger_meta``: ``application`` and ``schema_version`` rows, the mark that
  says "this is a settlement ledger" (SQLite also gets ``PRAGMA application_id``).
* ``fences``: the highest fencing token seen per election and its holder (the
  guard's table).
* ``fence_rejections``: one row per step the fence turned away (a stale token,
  or a holder conflict).
* ``merchants``, ``batches``, ``instructions``: the work, written by the generator.
* ``runs``: one per claimed batch; ``run_steps``: one row per (run, step, token),
  the idempotency key of every worker step.
* ``payouts`` and ``settlements``: append-only "money moved" records. They have
  **no** unique constraint on the instruction or the batch, on purpose: only the
  fence stops two holders from paying twice, and ``--no-fencing`` must be able
  to show what happens without it (the audit counts the duplicates).

A database is *empty* (no tables: ours to create), *current* (our mark, our
version, all our tables), *outdated* (our mark, an older version we know how to
migrate in place: :func:`create_schema` does it) or *foreign* (anything else,
refused untouched).

Versions:

1. the first schema: ``fences`` has ``election`` and ``token``.
2. the fence records its holder: ``fences.holder`` and ``fences.holder_token``;
   ``fence_rejections.reason`` (``stale_token`` or ``holder_conflict``) and
   ``fence_rejections.current_holder``. Migrated rows get an unknown holder
   and the reason ``stale_token`` (the only one version 1 knew).
   ``run_steps.seq`` numbers the steps in write order (the table is rebuilt;
   old steps are numbered by timestamp).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from settlement_demo.fence import FENCES_ADD_HOLDER_DDL, FENCES_TABLE_DDL
from settlement_demo.ledger_db import Database
from settlement_demo.ledger_errors import ForeignLedgerError, LedgerError

APPLICATION = "raft-sidecar/settlement-ledger"
SCHEMA_VERSION = 2
#: Written to the SQLite file header (``PRAGMA application_id``): "RSLG".
SQLITE_APPLICATION_ID = 0x52534C47

TABLES = (
    "batches",
    "fence_rejections",
    "fences",
    "instructions",
    "ledger_meta",
    "merchants",
    "payouts",
    "run_steps",
    "runs",
    "settlements",
)

#: Why the fence refused a step (``fence_rejections.reason``).
REJECTED_STALE_TOKEN = "stale_token"
REJECTED_HOLDER_CONFLICT = "holder_conflict"

# Columns version 2 added to fence_rejections: the same text in CREATE TABLE
# and in the migration's ALTER TABLE, so a migrated ledger equals a new one.
_REJECTION_V2_COLUMNS = (
    f"reason TEXT NOT NULL DEFAULT '{REJECTED_STALE_TOKEN}' "
    f"CHECK (reason IN ('{REJECTED_STALE_TOKEN}', '{REJECTED_HOLDER_CONFLICT}'))",
    "current_holder TEXT",
)

# {key}: text key type ("C" collation on PostgreSQL); {serial}: auto-numbered
# primary key; {table}: the table's name (the migration builds it under another
# name first). Everything else is the same on both backends.
#
# ``seq`` numbers the steps in the order they were written (under the fence,
# commit order within an election), for the audit's token-regression check.
_RUN_STEPS_TEMPLATE = """CREATE TABLE {table} (
        seq {serial},
        run_id {key} NOT NULL REFERENCES runs (id),
        step TEXT NOT NULL,
        chunk INTEGER,
        token BIGINT NOT NULL,
        worker_id TEXT NOT NULL,
        at TEXT NOT NULL,
        UNIQUE (run_id, step, token))"""
_RUN_STEPS_COLUMNS = "run_id, step, chunk, token, worker_id, at"

_DDL_TEMPLATES = (
    "CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    FENCES_TABLE_DDL,
    """CREATE TABLE fence_rejections (
        seq {serial},
        election TEXT NOT NULL,
        presented BIGINT NOT NULL,
        current BIGINT NOT NULL,
        worker_id TEXT NOT NULL,
        step TEXT NOT NULL,
        at TEXT NOT NULL,
        """
    + ",\n        ".join(_REJECTION_V2_COLUMNS)
    + ")",
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
    _RUN_STEPS_TEMPLATE,
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


class SchemaState(enum.Enum):
    EMPTY = "empty"
    CURRENT = "current"
    OUTDATED = "outdated"


class SchemaChange(enum.Enum):
    """What :func:`create_schema` did."""

    NONE = "none"
    CREATED = "created"
    UPGRADED = "upgraded"


def ddl(db: Database) -> list[str]:
    """The CREATE statements for ``db``'s backend, in dependency order."""
    return [_format(db, t) for t in _DDL_TEMPLATES]


def _format(db: Database, template: str, table: str = "run_steps") -> str:
    return template.format(key=db.key_type, serial=db.serial_pk, table=table)


def _migrate_1_to_2(db: Database) -> None:
    for statement in FENCES_ADD_HOLDER_DDL:
        db.execute(statement)
    for column in _REJECTION_V2_COLUMNS:
        db.execute(f"ALTER TABLE fence_rejections ADD COLUMN {column}")
    # run_steps gains seq, a column neither backend can add to existing rows
    # in a chosen order: rebuild the table. Version 1 kept no write order, so
    # old steps are numbered by their timestamps (then token), the best
    # evidence there is; nothing references run_steps.
    db.execute(_format(db, _RUN_STEPS_TEMPLATE, table="run_steps_v2"))
    db.execute(
        f"INSERT INTO run_steps_v2 ({_RUN_STEPS_COLUMNS}) SELECT {_RUN_STEPS_COLUMNS} "
        "FROM run_steps ORDER BY at, token, run_id, step"
    )
    db.execute("DROP TABLE run_steps")
    db.execute("ALTER TABLE run_steps_v2 RENAME TO run_steps")


#: Version N -> the function that takes a ledger from N to N + 1, inside the
#: caller's write transaction. ``create_schema`` chains them.
_MIGRATIONS: dict[int, Callable[[Database], None]] = {1: _migrate_1_to_2}


def inspect_schema(db: Database) -> SchemaState:
    """Classify ``db`` by reading only.

    Raises:
        ForeignLedgerError: another application's database, a schema version
            this code cannot migrate (newer, or unknown), or a partial ledger
            schema.
    """
    where = db.description
    app_id = db.application_id()
    if app_id not in (None, 0, SQLITE_APPLICATION_ID):
        raise ForeignLedgerError(
            f"{where} belongs to another application (SQLite application_id {app_id:#x}); "
            "refusing to touch it"
        )
    tables = db.list_tables()
    if not tables:
        return SchemaState.EMPTY
    if "ledger_meta" not in tables:
        raise ForeignLedgerError(
            f"{where} holds tables of another application ({', '.join(tables[:5])}"
            f"{', ...' if len(tables) > 5 else ''}) and no ledger_meta; refusing to touch it"
        )
    try:
        meta = {str(k): str(v) for k, v in db.execute("SELECT key, value FROM ledger_meta")}
    except LedgerError as exc:
        raise ForeignLedgerError(f"{where}: unreadable ledger_meta table ({exc})") from exc
    if meta.get("application") != APPLICATION:
        raise ForeignLedgerError(
            f"{where}: ledger_meta names application {meta.get('application')!r}, "
            f"not {APPLICATION!r}; refusing to touch it"
        )
    version = meta.get("schema_version")
    if version != str(SCHEMA_VERSION) and not (
        version is not None and version.isdigit() and int(version) in _MIGRATIONS
    ):
        raise ForeignLedgerError(
            f"{where}: ledger schema version {version!r}, this code speaks version "
            f"{SCHEMA_VERSION} and migrates versions {sorted(_MIGRATIONS)}; "
            "run the release that wrote it"
        )
    missing = sorted(set(TABLES) - set(tables))
    if missing:
        raise ForeignLedgerError(f"{where}: ledger schema is missing tables {missing}")
    return SchemaState.CURRENT if version == str(SCHEMA_VERSION) else SchemaState.OUTDATED


def create_schema(db: Database) -> SchemaChange:
    """Create the ledger's tables in ``db``, or migrate an older ledger in place.

    One write transaction: concurrent callers serialize, and a failure leaves
    nothing behind (both backends have transactional DDL).

    Raises:
        ForeignLedgerError: ``db`` is not empty and not a ledger of a version
            this code speaks or migrates.
    """
    with db.transaction(write=True):
        db.lock_schema()
        state = inspect_schema(db)
        if state is SchemaState.CURRENT:
            return SchemaChange.NONE
        if state is SchemaState.OUTDATED:
            # inspect_schema checked it is a version we migrate.
            version = int(
                db.execute("SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0][0]
            )
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](db)
                version += 1
            db.execute(
                "UPDATE ledger_meta SET value = ? WHERE key = 'schema_version'",
                (str(SCHEMA_VERSION),),
            )
            return SchemaChange.UPGRADED
        for statement in ddl(db):
            db.execute(statement)
        db.executemany(
            "INSERT INTO ledger_meta (key, value) VALUES (?, ?)",
            [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
        )
        db.set_application_id(SQLITE_APPLICATION_ID)
    return SchemaChange.CREATED
