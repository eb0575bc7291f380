"""The ledger's exceptions: one root type, one subclass per thing a caller may handle.

Misuse of the API (an empty election, a token of 0, a chunk that does not match
the run) raises the built-in ``ValueError`` instead: that is a bug in the
caller, not a state of the ledger. Driver exceptions (``sqlite3.Error``,
``psycopg.Error``) never escape; the backends translate them once, at the
boundary, into the types below.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every error the ledger raises on purpose."""


class LedgerConnectError(LedgerError):
    """The URL is malformed, names an unknown scheme, or does not connect."""


class LedgerUnavailableError(LedgerError):
    """The database stopped answering (lock timeout, lost connection, disk error).

    The transaction in flight was rolled back; retrying the same step later is
    safe because every fenced step is idempotent per (run, step, token).
    """


class ForeignLedgerError(LedgerError):
    """The database is not ours: not SQLite at all, corrupt, another app's, or a
    different schema version. The ledger never writes to such a database."""


class SchemaMissingError(LedgerError):
    """The database is empty: nobody has called ``Ledger.create_schema()`` yet."""


class StaleTokenError(LedgerError):
    """A fenced step presented a token lower than the fence already stored.

    The holder lost leadership to a holder with a higher token; nothing of the
    step was written. It must stop acting as leader.
    """

    def __init__(self, election: str, presented: int, current: int) -> None:
        self.election = election
        self.presented = presented
        self.current = current
        super().__init__(
            f"stale fencing token for election {election!r}: presented token {presented}, "
            f"but the ledger's fence is already at token {current}"
        )

    def __reduce__(self) -> tuple[type[StaleTokenError], tuple[str, int, int]]:
        # Picklable with its fields, so it survives a trip between processes.
        return (type(self), (self.election, self.presented, self.current))


class FenceHolderConflict(LedgerError):
    """A fenced step presented the token the fence holds, but from another holder.

    The election service grants each token to one holder only, so two holders
    with one token means it lost safety (a bug, a lost data directory counted
    in a quorum, a restored backup). Nothing of the step was written; the
    holder must stop writing and somebody must find out why.
    """

    def __init__(self, election: str, token: int, holder: str, current_holder: str) -> None:
        self.election = election
        self.token = token
        self.holder = holder
        self.current_holder = current_holder
        super().__init__(
            f"fence holder conflict for election {election!r}: token {token} presented by "
            f"{holder!r}, but the ledger's fence records token {token} for {current_holder!r}; "
            "two holders with one fencing token can only happen if the election service "
            "lost safety (nothing was written)"
        )

    def __reduce__(self) -> tuple[type[FenceHolderConflict], tuple[str, int, str, str]]:
        return (type(self), (self.election, self.token, self.holder, self.current_holder))


class UnknownRunError(LedgerError):
    """No settlement run with this id exists."""


class RunIncompleteError(LedgerError):
    """``settle_run`` was called while some chunks of the run were never written."""


class BatchConflictError(LedgerError):
    """``add_batch`` was called with an id that already holds a different batch."""
