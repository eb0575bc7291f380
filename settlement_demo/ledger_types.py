"""Values that cross the ledger's API: frozen, slotted dataclasses that validate
themselves on construction, so a bad value fails where it is made, not deep
inside a transaction."""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: Chunk size of a new run when the caller does not choose one.
DEFAULT_CHUNK_SIZE = 10

#: Tokens are stored as signed 64-bit integers (BIGINT on PostgreSQL, INTEGER
#: on SQLite). Raft log indexes stay far below this bound.
MAX_TOKEN = 2**63 - 1


class BatchStatus(enum.StrEnum):
    """Where a batch is in its life: open -> running (claimed) -> settled."""

    OPEN = "open"
    RUNNING = "running"
    SETTLED = "settled"


class RunStatus(enum.StrEnum):
    """A run is running until one holder settles it."""

    RUNNING = "running"
    SETTLED = "settled"


def check_text(what: str, value: str) -> None:
    """Raise ValueError unless ``value`` is a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")


def check_election_token(election: str, token: int) -> None:
    """Raise ValueError unless ``election`` is non-empty and ``token`` is a valid fencing token.

    A token is a positive int below 2**63 (``bool`` is refused: ``True`` is not
    a token).
    """
    check_text("election", election)
    if isinstance(token, bool) or not isinstance(token, int):
        raise ValueError(f"fencing token must be an int, got {token!r}")
    if not 0 < token <= MAX_TOKEN:
        raise ValueError(f"fencing token must be in 1..{MAX_TOKEN}, got {token}")


@dataclass(frozen=True, slots=True)
class Merchant:
    """A payee. ``id`` is the stable key; ``name`` is for people."""

    id: str
    name: str

    def __post_init__(self) -> None:
        check_text("merchant id", self.id)
        if not isinstance(self.name, str):
            raise ValueError(f"merchant name must be a string, got {self.name!r}")


@dataclass(frozen=True, slots=True)
class PayoutInstruction:
    """One payout to make: ``amount_cents`` to ``merchant_id``, as part of ``batch_id``.

    Ids are unique across all batches. Amounts are positive integer cents.
    """

    id: str
    batch_id: str
    merchant_id: str
    amount_cents: int

    def __post_init__(self) -> None:
        check_text("instruction id", self.id)
        check_text("batch id", self.batch_id)
        check_text("merchant id", self.merchant_id)
        amount = self.amount_cents
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ValueError(
                f"instruction {self.id!r}: amount_cents must be a positive int, got {amount!r}"
            )


@dataclass(frozen=True, slots=True)
class Run:
    """The settlement of one batch. There is one run per batch (``id`` is
    ``run-<batch id>``); it survives holder changes: a new holder resumes it.

    The run's instructions, ordered by id (code-point order), are cut into
    ``n_chunks`` chunks of ``chunk_size``; chunk ``k`` is
    ``instructions[run.chunk_slice(k)]``. ``chunk_size`` is fixed when the run
    is created, so every holder cuts the same chunks.
    """

    id: str
    batch_id: str
    election: str
    started_token: int
    chunk_size: int
    n_chunks: int
    n_instructions: int
    total_cents: int

    def __post_init__(self) -> None:
        check_text("run id", self.id)
        if self.chunk_size <= 0 or self.n_chunks <= 0:
            raise ValueError(f"run {self.id!r}: chunk_size and n_chunks must be positive")

    def chunk_slice(self, chunk: int) -> slice:
        """The slice of ``run_instructions(run.id)`` that makes up ``chunk``.

        Raises ValueError for a chunk outside ``0 .. n_chunks - 1``.
        """
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not 0 <= chunk < self.n_chunks:
            raise ValueError(f"run {self.id!r} has chunks 0..{self.n_chunks - 1}, got {chunk!r}")
        return slice(chunk * self.chunk_size, (chunk + 1) * self.chunk_size)


@dataclass(frozen=True, slots=True)
class FenceRejection:
    """One step the fence refused.

    ``reason`` ``stale_token``: ``presented`` was below ``current``.
    ``holder_conflict``: ``presented`` equals ``current``, but the fence
    records ``current_holder`` for it, not ``worker_id`` (a safety violation of
    the election service).
    """

    election: str
    presented: int
    current: int
    worker_id: str
    step: str
    at: str
    reason: str = "stale_token"
    current_holder: str | None = None


def run_id_for(batch_id: str) -> str:
    """The id of the one run that settles ``batch_id``."""
    return f"run-{batch_id}"


def n_chunks_for(n_instructions: int, chunk_size: int) -> int:
    """How many chunks ``n_instructions`` make (the last one may be short)."""
    return -(-n_instructions // chunk_size)
