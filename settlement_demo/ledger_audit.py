"""The audit: did every settled batch pay each of its instructions exactly once?

Definitions (all counted over the whole ledger, from one read snapshot):

* ``payouts_expected`` / ``expected_total_cents``: instructions (and their
  amounts) of *settled* batches: what must have been paid.
* ``payouts_written``: every row of ``payouts``, settled batch or not.
* ``duplicate_payouts``: payout rows beyond the first, per instruction
  (an instruction paid 3 times counts 2).
* ``missing_payouts``: instructions of settled batches with no payout row.
* ``paid_total_cents``: sum of the payout rows of settled batches'
  instructions, duplicates included, so it exceeds ``expected_total_cents``
  by exactly the duplicated amounts.
* ``duplicate_settlements``: settlement rows beyond the first, per batch.
* ``payouts_in_flight``: payout rows of batches not settled yet (a run in
  progress); not an error.
* ``stale_writes_rejected``: fenced steps the fence turned away because a
  higher token held it (expected whenever a holder is replaced).
* ``holder_conflicts_rejected``: fenced steps the fence turned away because
  another holder had presented the same token (never expected: the election
  service granted one token twice).
* ``token_regressions``: steps (``run_steps`` rows) written with a token lower
  than a step written before them in the same run. Under the fence, tokens
  never go backwards within a run; a regression is a stale holder's write
  that got through.
* ``shared_tokens``: (election, token) pairs whose steps were written by more
  than one worker id: two holders with one token.
* ``findings``: a line per regression and shared token (the first ten of
  each), saying where.

``ok`` means: no duplicate payout, no duplicate settlement, no missing payout
of a settled batch, settled batches' paid total equals their expected total,
no token regression, no shared token, and no holder conflict (even a refused
one: the fence contained it, but the election service broke its promise, and
that must not pass as clean).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from settlement_demo.ledger_db import Database
from settlement_demo.schema import REJECTED_HOLDER_CONFLICT, REJECTED_STALE_TOKEN


@dataclass(frozen=True, slots=True)
class AuditReport:
    batches: int
    batches_settled: int
    open_batches: int
    running_batches: int
    settlements: int
    duplicate_settlements: int
    payouts_expected: int
    payouts_written: int
    payouts_in_flight: int
    duplicate_payouts: int
    missing_payouts: int
    expected_total_cents: int
    paid_total_cents: int
    stale_writes_rejected: int
    holder_conflicts_rejected: int
    token_regressions: int
    shared_tokens: int
    findings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when no money moved twice, every settled batch was paid in full,
        tokens never went backwards within a run, and no two holders ever
        presented one token."""
        return (
            self.duplicate_payouts == 0
            and self.duplicate_settlements == 0
            and self.missing_payouts == 0
            and self.paid_total_cents == self.expected_total_cents
            and self.holder_conflicts_rejected == 0
            and self.token_regressions == 0
            and self.shared_tokens == 0
        )

    def to_dict(self) -> dict[str, int | bool | list[str]]:
        """The counts, the findings and ``ok``, ready for ``json.dumps``."""
        out: dict[str, int | bool | list[str]] = dataclasses.asdict(self)
        out["findings"] = list(self.findings)
        out["ok"] = self.ok
        return out


_SETTLED_INSTRUCTIONS = (
    "FROM instructions i JOIN batches b ON b.id = i.batch_id WHERE b.status = 'settled'"
)


def _one(db: Database, sql: str) -> int:
    value = db.execute(sql)[0][0]
    # SUM over BIGINT is NUMERIC on PostgreSQL (a Decimal here): normalize.
    return int(value or 0)


_FINDINGS_MAX = 10

# The highest token of the steps written before step ``s`` in its run, and
# the steps whose token is below it.
_EARLIER_MAX = "(SELECT MAX(e.token) FROM run_steps e WHERE e.run_id = s.run_id AND e.seq < s.seq)"
_REGRESSED = f"FROM run_steps s WHERE s.token < {_EARLIER_MAX}"

# (election, token) pairs written by more than one worker id.
_SHARED_TOKENS = """
    SELECT r.election, s.token, COUNT(DISTINCT s.worker_id), MIN(s.worker_id), MAX(s.worker_id)
    FROM run_steps s JOIN runs r ON r.id = s.run_id
    GROUP BY r.election, s.token HAVING COUNT(DISTINCT s.worker_id) > 1
"""


def _token_findings(db: Database) -> tuple[int, int, list[str]]:
    """(token regressions, shared tokens, a line for each of the first few)."""
    regressions = _one(db, f"SELECT COUNT(*) {_REGRESSED}")
    shared = _one(db, f"SELECT COUNT(*) FROM ({_SHARED_TOKENS}) AS shared")
    findings = [
        f"run {run_id!r}: step {step} by {worker!r} with token {token} "
        f"after token {earlier} wrote in that run (tokens went backwards)"
        for run_id, step, worker, token, earlier in db.execute(
            f"SELECT s.run_id, s.step, s.worker_id, s.token, {_EARLIER_MAX} {_REGRESSED} "
            f"ORDER BY s.seq LIMIT {_FINDINGS_MAX}"
        )
    ]
    findings += [
        f"election {election!r}: token {token} written by {n} worker ids, "
        f"among them {first!r} and {last!r} (one token, several holders)"
        for election, token, n, first, last in db.execute(
            f"{_SHARED_TOKENS} ORDER BY r.election, s.token LIMIT {_FINDINGS_MAX}"
        )
    ]
    return regressions, shared, findings


def run_audit(db: Database) -> AuditReport:
    """Compute the report from one consistent snapshot of ``db``."""
    with db.transaction(write=False):
        regressions, shared, findings = _token_findings(db)
        batches, settled, open_, running = db.execute(
            "SELECT COUNT(*), "
            "SUM(CASE WHEN status = 'settled' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN status = 'open' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END) FROM batches"
        )[0]
        expected, expected_total = db.execute(
            f"SELECT COUNT(*), SUM(i.amount_cents) {_SETTLED_INSTRUCTIONS}"
        )[0]
        return AuditReport(
            batches=int(batches),
            batches_settled=int(settled or 0),
            open_batches=int(open_ or 0),
            running_batches=int(running or 0),
            settlements=_one(db, "SELECT COUNT(*) FROM settlements"),
            duplicate_settlements=_one(
                db,
                "SELECT SUM(n - 1) FROM (SELECT COUNT(*) AS n FROM settlements "
                "GROUP BY batch_id) AS per_batch WHERE n > 1",
            ),
            payouts_expected=int(expected),
            payouts_written=_one(db, "SELECT COUNT(*) FROM payouts"),
            payouts_in_flight=_one(
                db,
                "SELECT COUNT(*) FROM payouts p JOIN instructions i ON i.id = p.instruction_id "
                "JOIN batches b ON b.id = i.batch_id WHERE b.status <> 'settled'",
            ),
            duplicate_payouts=_one(
                db,
                "SELECT SUM(n - 1) FROM (SELECT COUNT(*) AS n FROM payouts "
                "GROUP BY instruction_id) AS per_instruction WHERE n > 1",
            ),
            missing_payouts=_one(
                db,
                f"SELECT COUNT(*) {_SETTLED_INSTRUCTIONS} AND NOT EXISTS "
                "(SELECT 1 FROM payouts p WHERE p.instruction_id = i.id)",
            ),
            expected_total_cents=int(expected_total or 0),
            paid_total_cents=_one(
                db,
                "SELECT SUM(p.amount_cents) FROM payouts p "
                "JOIN instructions i ON i.id = p.instruction_id "
                "JOIN batches b ON b.id = i.batch_id WHERE b.status = 'settled'",
            ),
            token_regressions=regressions,
            shared_tokens=shared,
            findings=tuple(findings),
            stale_writes_rejected=_one(
                db, f"SELECT COUNT(*) FROM fence_rejections WHERE reason = '{REJECTED_STALE_TOKEN}'"
            ),
            holder_conflicts_rejected=_one(
                db,
                "SELECT COUNT(*) FROM fence_rejections "
                f"WHERE reason = '{REJECTED_HOLDER_CONFLICT}'",
            ),
        )
