"""The fenced settlement ledger: the resource that makes a stale leader harmless.

Theory of operation
-------------------
A settlement worker holds leadership of an election (``settlement-eur``) with
a fencing token T. It settles one batch per *run*, in steps, each step one
transaction whose first statement is the fence guard
(:func:`settlement_demo.fence.check_and_raise_fence`):

1. ``raise_fence``: right after the grant, before reading any work. From its
   commit on, every holder with a lower token is cut off.
2. ``claim_run``: resume this election's unfinished run, or claim the oldest
   open batch (one run per batch, id ``run-<batch>``).
3. ``written_chunks``: which chunks earlier holders committed (read fenced, so
   the answer cannot be overtaken by a stale holder's later write).
4. ``write_chunk`` for each missing chunk: append the chunk's payout rows.
5. ``settle_run``: append the settlement row and mark batch and run settled.

Idempotency: every step inserts a ``run_steps`` row keyed (run, step, token)
in its own transaction and skips its writes when the row exists, so the same
holder can retry any step after a lost reply. A *different* holder gets a
different key on purpose: the fence, not a unique constraint, stops a stale
holder (``fencing=False`` turns the fence off to show what then goes wrong).

The fence binds the holder: it records the worker id (``worker_id``) that
presented its token, and refuses the same token from another worker id
(``FenceHolderConflict``), which only an election service that lost safety
could have granted twice.

A rejected step rolls back whole; the rejection is then logged in
``fence_rejections`` in a transaction of its own, for the audit.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from settlement_demo.fence import check_and_raise_fence
from settlement_demo.ledger_audit import AuditReport, run_audit
from settlement_demo.ledger_db import Backend, Database, Row, open_database
from settlement_demo.ledger_errors import (
    BatchConflictError,
    FenceHolderConflict,
    ForeignLedgerError,
    LedgerConnectError,
    LedgerError,
    LedgerUnavailableError,
    RunIncompleteError,
    SchemaMissingError,
    StaleTokenError,
    UnknownRunError,
)
from settlement_demo.ledger_types import (
    DEFAULT_CHUNK_SIZE,
    BatchStatus,
    FenceRejection,
    Merchant,
    PayoutInstruction,
    Run,
    RunStatus,
    check_election_token,
    check_text,
    n_chunks_for,
    run_id_for,
)
from settlement_demo.schema import (
    REJECTED_HOLDER_CONFLICT,
    REJECTED_STALE_TOKEN,
    SCHEMA_VERSION,
    SchemaChange,
    SchemaState,
    inspect_schema,
)
from settlement_demo.schema import create_schema as _create_schema

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AuditReport",
    "Backend",
    "BatchConflictError",
    "BatchStatus",
    "FenceHolderConflict",
    "FenceRejection",
    "ForeignLedgerError",
    "Ledger",
    "LedgerConnectError",
    "LedgerError",
    "LedgerUnavailableError",
    "Merchant",
    "PayoutInstruction",
    "Run",
    "RunIncompleteError",
    "RunStatus",
    "SchemaChange",
    "SchemaMissingError",
    "StaleTokenError",
    "UnknownRunError",
    "open_ledger",
]

# Bounds the claim loop; more than one pass happens only with fencing off,
# when two holders race for the same open batch.
_CLAIM_ATTEMPTS = 3
# Bounds the size of an ``IN (...)`` list.
_IN_LIST_MAX = 500

_RUN_COLUMNS = (
    "r.id, r.batch_id, r.election, r.started_token, "
    "r.chunk_size, r.n_chunks, r.n_instructions, r.total_cents"
)


def open_ledger(url: str, *, fencing: bool = True, worker_id: str = "") -> Ledger:
    """Connect to the ledger at ``url`` and check it is ours (or empty).

    ``url``: ``sqlite:///relative/path``, ``sqlite:////absolute/path``, a plain
    file path, or ``postgresql://...`` (``postgres://`` too). The schema is not
    created here: call :meth:`Ledger.create_schema` (idempotent).

    ``fencing=False`` exists only to demonstrate the failure fencing prevents
    (the demo's ``--no-fencing``); never use it for real money.

    ``worker_id`` is written next to every row this ledger writes, and it is
    the holder the fence records: fenced steps need it (unique per worker
    process; two workers must never share it).

    Raises:
        LedgerConnectError: bad URL, unknown scheme, or no connection.
        ForeignLedgerError: the database is not a ledger (not SQLite, corrupt,
            another application's, a schema version this code cannot migrate).
            It is left untouched.

    A ledger of an older schema version opens, but only ``create_schema()``
    (which migrates it in place) and ``close()`` work until that was called.
    """
    db = open_database(url)
    try:
        with db.transaction(write=False):
            state = inspect_schema(db)
        db.prepare_for_writes()
    except BaseException:
        db.close()
        raise
    ledger = Ledger(db, fencing=fencing, worker_id=worker_id)
    ledger._outdated = state is SchemaState.OUTDATED
    return ledger


class Ledger:
    """One worker's (or the generator's) connection to the settlement ledger.

    Use :func:`open_ledger` to make one. A ledger may be shared by threads
    (calls are serialized); separate processes each open their own.
    """

    def __init__(self, db: Database, *, fencing: bool = True, worker_id: str = "") -> None:
        if not isinstance(worker_id, str):
            raise ValueError(f"worker_id must be a string, got {worker_id!r}")
        self._db = db
        self.fencing = fencing
        self.worker_id = worker_id
        # Set by open_ledger for a ledger of an older schema version, cleared
        # by create_schema (which migrates it).
        self._outdated = False

    # -- lifecycle -------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        return self._db.backend

    @property
    def description(self) -> str:
        """Where the ledger lives (URL with the password redacted)."""
        return self._db.description

    def create_schema(self) -> SchemaChange:
        """Create the tables unless they exist, or migrate a ledger of an older
        schema version in place (safe to call from every worker at start).

        Returns what it did: ``NONE`` (already current), ``CREATED``, ``UPGRADED``.

        Raises:
            ForeignLedgerError: the database holds something else; nothing is written.
        """
        change = _create_schema(self._db)
        self._outdated = False
        return change

    def close(self) -> None:
        """Close the connection; idempotent."""
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- generator side (unfenced) ---------------------------------------------

    def add_merchants(self, merchants: Sequence[Merchant]) -> None:
        """Insert merchants, or update the name of those that exist."""
        for m in merchants:
            if not isinstance(m, Merchant):
                raise ValueError(f"expected Merchant, got {m!r}")
        if not merchants:
            return
        with self._transaction(write=True):
            self._db.executemany(
                "INSERT INTO merchants (id, name) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                [(m.id, m.name) for m in merchants],
            )

    def add_batch(
        self, batch_id: str, election: str, instructions: Sequence[PayoutInstruction]
    ) -> None:
        """Add an open batch of instructions for ``election``'s workers to settle.

        Idempotent: adding the same batch again (same election, same
        instructions) does nothing, so a generator may retry.

        Raises:
            ValueError: empty ids, no instructions, an instruction of another
                batch, duplicate instruction ids, or an unknown merchant.
            BatchConflictError: ``batch_id`` already holds a different batch, or
                an instruction id is used by another batch.
        """
        check_text("batch id", batch_id)
        check_text("election", election)
        wanted = _validated_instructions(batch_id, instructions)
        with self._transaction(write=True):
            existing = self._db.execute("SELECT election FROM batches WHERE id = ?", (batch_id,))
            if existing:
                stored = self._instructions_of(batch_id)
                if existing[0][0] == election and stored == wanted:
                    return
                raise BatchConflictError(
                    f"batch {batch_id!r} already exists with different content "
                    f"(election {existing[0][0]!r}, {len(stored)} instructions)"
                )
            unknown = sorted(
                {i.merchant_id for i in wanted}
                - self._existing_ids("merchants", sorted({i.merchant_id for i in wanted}))
            )
            if unknown:
                raise ValueError(f"batch {batch_id!r}: unknown merchants {unknown[:10]}")
            taken = self._existing_ids("instructions", [i.id for i in wanted])
            if taken:
                raise BatchConflictError(
                    f"batch {batch_id!r}: instruction ids already used by another batch: "
                    f"{sorted(taken)[:10]}"
                )
            self._db.execute(
                "INSERT INTO batches (id, election, status, created_at) VALUES (?, ?, ?, ?)",
                (batch_id, election, BatchStatus.OPEN.value, _now()),
            )
            self._db.executemany(
                "INSERT INTO instructions (id, batch_id, merchant_id, amount_cents) "
                "VALUES (?, ?, ?, ?)",
                [(i.id, i.batch_id, i.merchant_id, i.amount_cents) for i in wanted],
            )

    # -- worker side (fenced) --------------------------------------------------

    def raise_fence(self, election: str, token: int) -> None:
        """Raise the fence of ``election`` to ``token``, writing nothing else.

        A new holder calls this right after its grant, before reading pending
        work: from the commit on, every lower token is rejected.

        Raises:
            StaleTokenError: a higher token holds the fence already.
            ValueError: empty election or token not in 1..2**63-1.
        """
        with self._fenced(election, token, "raise_fence"):
            pass

    def claim_run(
        self, election: str, token: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> Run | None:
        """The run to work on: this election's unfinished run if there is one
        (resumed, whoever started it), else a new run on the oldest open batch,
        else None (nothing to do).

        ``chunk_size`` applies only to a new run; a resumed run keeps its own.

        Raises:
            StaleTokenError: a higher token holds the fence.
            ValueError: bad election, token or chunk size.
        """
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        with self._fenced(election, token, "claim_run"):
            for _ in range(_CLAIM_ATTEMPTS):
                run = self._unfinished_run(election)
                if run is not None:
                    self._insert_step(run.id, "claim", None, token)
                    return run
                open_batch = self._db.execute(
                    "SELECT id FROM batches WHERE election = ? AND status = ? ORDER BY seq LIMIT 1",
                    (election, BatchStatus.OPEN.value),
                )
                if not open_batch:
                    return None
                batch_id = str(open_batch[0][0])
                # Guarded update: with fencing off, another holder may have
                # claimed the batch since our SELECT; then we resume its run.
                claimed = self._db.execute_rowcount(
                    "UPDATE batches SET status = ? WHERE id = ? AND status = ?",
                    (BatchStatus.RUNNING.value, batch_id, BatchStatus.OPEN.value),
                )
                if claimed == 1:
                    return self._start_run(batch_id, election, token, chunk_size)
            raise LedgerUnavailableError(
                f"election {election!r}: lost the race for an open batch "
                f"{_CLAIM_ATTEMPTS} times; retry"
            )

    def written_chunks(self, election: str, token: int, run_id: str) -> frozenset[int]:
        """The chunks of ``run_id`` that any holder has committed.

        Fenced, so that once it answers, no older holder can add a chunk behind
        the caller's back. A resuming holder writes the chunks not in the set.

        Raises:
            StaleTokenError, UnknownRunError, ValueError (run of another election).
        """
        with self._fenced(election, token, "written_chunks"):
            self._load_run(run_id, election)
            return self._written_chunks(run_id)

    def run_instructions(self, run_id: str) -> list[PayoutInstruction]:
        """The run's instructions ordered by id (code-point order). Read-only.

        Raises:
            UnknownRunError: no such run.
        """
        check_text("run id", run_id)
        with self._transaction(write=False):
            rows = self._db.execute("SELECT batch_id FROM runs WHERE id = ?", (run_id,))
            if not rows:
                raise UnknownRunError(f"no settlement run {run_id!r}")
            return self._instructions_of(str(rows[0][0]))

    def write_chunk(
        self,
        election: str,
        token: int,
        run_id: str,
        chunk: int,
        payouts: Sequence[PayoutInstruction],
    ) -> bool:
        """Append the payout rows of chunk ``chunk`` of ``run_id``.

        ``payouts`` must be exactly ``run_instructions(run_id)[run.chunk_slice(chunk)]``.
        Returns True if this call wrote them, False if this token had already
        written this chunk (a retry; nothing is written twice).

        Raises:
            StaleTokenError: a higher token holds the fence; nothing written.
            UnknownRunError: no such run.
            ValueError: chunk out of range, ``payouts`` not the chunk's
                instructions, or a run of another election.
        """
        given = list(payouts)
        for p in given:
            if not isinstance(p, PayoutInstruction):
                raise ValueError(f"expected PayoutInstruction, got {p!r}")
        with self._fenced(election, token, f"write_chunk:{chunk}"):
            run = self._load_run(run_id, election)
            chunk_slice = run.chunk_slice(chunk)
            expected = self._instructions_of(
                run.batch_id, limit=run.chunk_size, offset=chunk_slice.start
            )
            if given != expected:
                raise ValueError(
                    f"run {run_id!r} chunk {chunk}: payouts must be the run's instructions "
                    f"[{chunk_slice.start}:{chunk_slice.stop}] ordered by id "
                    f"(expected ids {[i.id for i in expected][:5]}..., "
                    f"got {[i.id for i in given][:5]}...)"
                )
            if not self._insert_step(run_id, f"chunk:{chunk}", chunk, token):
                return False
            at = _now()
            self._db.executemany(
                "INSERT INTO payouts (run_id, instruction_id, merchant_id, amount_cents, "
                "chunk, token, worker_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, p.id, p.merchant_id, p.amount_cents, chunk, token, self.worker_id, at)
                    for p in given
                ],
            )
            return True

    def settle_run(self, election: str, token: int, run_id: str) -> bool:
        """Append the settlement row and mark the run and its batch settled.

        Returns True if this call settled it, False if this token had already
        settled this run (a retry).

        Raises:
            StaleTokenError: a higher token holds the fence; nothing written.
            RunIncompleteError: some chunk of the run was never written.
            UnknownRunError, ValueError (run of another election).
        """
        with self._fenced(election, token, "settle_run"):
            run = self._load_run(run_id, election)
            if not self._insert_step(run_id, "settle", None, token):
                return False
            missing = sorted(set(range(run.n_chunks)) - self._written_chunks(run_id))
            if missing:
                raise RunIncompleteError(
                    f"run {run_id!r} cannot be settled: chunks {missing[:10]} "
                    f"of {run.n_chunks} were never written"
                )
            at = _now()
            self._db.execute(
                "INSERT INTO settlements (run_id, batch_id, total_cents, n_payouts, token, "
                "worker_id, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    run.batch_id,
                    run.total_cents,
                    run.n_instructions,
                    token,
                    self.worker_id,
                    at,
                ),
            )
            self._db.execute(
                "UPDATE batches SET status = ? WHERE id = ?",
                (BatchStatus.SETTLED.value, run.batch_id),
            )
            # The first settlement wins the run's summary columns; a duplicate
            # (fencing off) shows up in the settlements table and the audit.
            self._db.execute(
                "UPDATE runs SET status = ?, settled_token = ?, settled_at = ? "
                "WHERE id = ? AND status = ?",
                (RunStatus.SETTLED.value, token, at, run_id, RunStatus.RUNNING.value),
            )
            return True

    def fence_token(self, election: str) -> int | None:
        """The highest token the ledger has accepted for ``election``, or None."""
        fence = self.fence(election)
        return None if fence is None else fence[0]

    def fence(self, election: str) -> tuple[int, str | None] | None:
        """The fence of ``election``: (token, holder that presented it), or None
        if no token was ever presented. The holder is None when the token was
        stored by code that did not record holders (schema version 1)."""
        check_text("election", election)
        with self._transaction(write=False):
            rows = self._db.execute(
                "SELECT token, holder, holder_token FROM fences WHERE election = ?", (election,)
            )
        if not rows:
            return None
        token, holder, holder_token = rows[0]
        bound = holder_token is not None and int(holder_token) == int(token)
        return int(token), str(holder) if bound else None

    # -- audit -------------------------------------------------------------------

    def audit(self) -> AuditReport:
        """Count duplicates, gaps, token regressions, conflicts and rejections
        (read-only, one snapshot)."""
        self._check_current()
        return run_audit(self._db)

    def fence_rejections(self) -> list[FenceRejection]:
        """Every step the fence turned away, oldest first (read-only)."""
        with self._transaction(write=False):
            rows = self._db.execute(
                "SELECT election, presented, current, worker_id, step, at, reason, "
                "current_holder FROM fence_rejections ORDER BY seq"
            )
        return [
            FenceRejection(
                str(r[0]),
                int(r[1]),
                int(r[2]),
                str(r[3]),
                str(r[4]),
                str(r[5]),
                str(r[6]),
                None if r[7] is None else str(r[7]),
            )
            for r in rows
        ]

    # -- internals -------------------------------------------------------------

    def _check_current(self) -> None:
        if self._outdated:
            raise SchemaMissingError(
                f"{self.description} holds a ledger of an older schema version; call "
                f"Ledger.create_schema() to migrate it in place to version {SCHEMA_VERSION}"
            )

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[None]:
        self._check_current()
        with self._db.transaction(write=write):
            yield

    @contextmanager
    def _fenced(self, election: str, token: int, step: str) -> Iterator[None]:
        """A write transaction whose first statement is the fence guard.

        On a refusal (stale token, holder conflict) the transaction rolls back
        whole, then the rejection is recorded in a transaction of its own and
        the error re-raised.
        """
        check_election_token(election, token)
        if self.fencing and not self.worker_id:
            raise ValueError(
                "fenced steps need the ledger's worker_id (open_ledger(..., worker_id=...)): "
                "the fence records which holder presented each token"
            )
        try:
            with self._transaction(write=True):
                if self.fencing:
                    check_and_raise_fence(
                        self._db.raw,
                        election,
                        token,
                        holder=self.worker_id,
                        paramstyle=self._db.paramstyle,
                    )
                yield
        except (StaleTokenError, FenceHolderConflict) as refused:
            self._record_rejection(refused, step)
            raise

    def _record_rejection(self, refused: StaleTokenError | FenceHolderConflict, step: str) -> None:
        row: tuple[int, int, str, str | None]
        if isinstance(refused, StaleTokenError):
            row = (refused.presented, refused.current, REJECTED_STALE_TOKEN, None)
        else:
            row = (refused.token, refused.token, REJECTED_HOLDER_CONFLICT, refused.current_holder)
        presented, current, reason, current_holder = row
        try:
            with self._transaction(write=True):
                self._db.execute(
                    "INSERT INTO fence_rejections (election, presented, current, worker_id, "
                    "step, at, reason, current_holder) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        refused.election,
                        presented,
                        current,
                        self.worker_id,
                        step,
                        _now(),
                        reason,
                        current_holder,
                    ),
                )
        except LedgerError as exc:
            # The rejection itself stands; only its audit record is lost.
            refused.add_note(f"the rejection could not be recorded: {exc}")

    def _insert_step(self, run_id: str, step: str, chunk: int | None, token: int) -> bool:
        """Record (run, step, token); False if it was recorded before (a retry)."""
        rows = self._db.execute(
            "INSERT INTO run_steps (run_id, step, chunk, token, worker_id, at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step, token) DO NOTHING "
            "RETURNING run_id",
            (run_id, step, chunk, token, self.worker_id, _now()),
        )
        return bool(rows)

    def _written_chunks(self, run_id: str) -> frozenset[int]:
        rows = self._db.execute(
            "SELECT DISTINCT chunk FROM run_steps WHERE run_id = ? AND chunk IS NOT NULL",
            (run_id,),
        )
        return frozenset(int(r[0]) for r in rows)

    def _start_run(self, batch_id: str, election: str, token: int, chunk_size: int) -> Run:
        n_instructions, total = self._db.execute(
            "SELECT COUNT(*), SUM(amount_cents) FROM instructions WHERE batch_id = ?",
            (batch_id,),
        )[0]
        run = Run(
            id=run_id_for(batch_id),
            batch_id=batch_id,
            election=election,
            started_token=token,
            chunk_size=chunk_size,
            n_chunks=n_chunks_for(int(n_instructions), chunk_size),
            n_instructions=int(n_instructions),
            total_cents=int(total),
        )
        self._db.execute(
            "INSERT INTO runs (id, batch_id, election, status, started_token, chunk_size, "
            "n_chunks, n_instructions, total_cents, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run.id,
                run.batch_id,
                run.election,
                RunStatus.RUNNING.value,
                run.started_token,
                run.chunk_size,
                run.n_chunks,
                run.n_instructions,
                run.total_cents,
                _now(),
            ),
        )
        self._insert_step(run.id, "claim", None, token)
        return run

    def _unfinished_run(self, election: str) -> Run | None:
        rows = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs r JOIN batches b ON b.id = r.batch_id "
            "WHERE r.election = ? AND r.status = ? ORDER BY b.seq LIMIT 1",
            (election, RunStatus.RUNNING.value),
        )
        return _run_from_row(rows[0]) if rows else None

    def _load_run(self, run_id: str, election: str) -> Run:
        check_text("run id", run_id)
        rows = self._db.execute(f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.id = ?", (run_id,))
        if not rows:
            raise UnknownRunError(f"no settlement run {run_id!r}")
        run = _run_from_row(rows[0])
        if run.election != election:
            # Each election has its own fence: a token of one election must
            # never write into another election's run.
            raise ValueError(
                f"run {run_id!r} belongs to election {run.election!r}, not {election!r}"
            )
        return run

    def _instructions_of(
        self, batch_id: str, *, limit: int | None = None, offset: int = 0
    ) -> list[PayoutInstruction]:
        sql = (
            "SELECT id, batch_id, merchant_id, amount_cents FROM instructions "
            "WHERE batch_id = ? ORDER BY id"
        )
        params: tuple[Any, ...] = (batch_id,)
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += (limit, offset)
        return [_instruction_from_row(r) for r in self._db.execute(sql, params)]

    def _existing_ids(self, table: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` exist in ``table`` (a fixed name from this module)."""
        found: set[str] = set()
        for start in range(0, len(ids), _IN_LIST_MAX):
            part = ids[start : start + _IN_LIST_MAX]
            marks = ", ".join("?" * len(part))
            rows = self._db.execute(f"SELECT id FROM {table} WHERE id IN ({marks})", part)
            found.update(str(r[0]) for r in rows)
        return found


def _validated_instructions(
    batch_id: str, instructions: Sequence[PayoutInstruction]
) -> list[PayoutInstruction]:
    """The instructions sorted by id, after checking they form one batch."""
    if not instructions:
        raise ValueError(f"batch {batch_id!r} has no instructions")
    for i in instructions:
        if not isinstance(i, PayoutInstruction):
            raise ValueError(f"expected PayoutInstruction, got {i!r}")
        if i.batch_id != batch_id:
            raise ValueError(
                f"instruction {i.id!r} belongs to batch {i.batch_id!r}, not {batch_id!r}"
            )
    ordered = sorted(instructions, key=lambda i: i.id)
    for a, b in itertools.pairwise(ordered):
        if a.id == b.id:
            raise ValueError(f"batch {batch_id!r}: instruction id {a.id!r} appears twice")
    return ordered


def _run_from_row(row: Row) -> Run:
    return Run(
        id=str(row[0]),
        batch_id=str(row[1]),
        election=str(row[2]),
        started_token=int(row[3]),
        chunk_size=int(row[4]),
        n_chunks=int(row[5]),
        n_instructions=int(row[6]),
        total_cents=int(row[7]),
    )


def _instruction_from_row(row: Row) -> PayoutInstruction:
    return PayoutInstruction(
        id=str(row[0]), batch_id=str(row[1]), merchant_id=str(row[2]), amount_cents=int(row[3])
    )


def _now() -> str:
    """UTC wall-clock time as ISO 8601 text (same format on both backends)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")
