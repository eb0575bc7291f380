"""The replicated state machine of fenced elections.

Theory of operation
-------------------
``ElectionsState`` is a pure function of the committed Raft log: the runtime
calls ``apply(index, command)`` for every elections command, in log order,
on every replica, and every replica computes the same state and the same
``ApplyResult``. Nothing here reads a clock, a file or a random source;
``proposed_at_unix_ms`` in each command is copied into the audit trail and
never decides anything.

Per election the state holds at most one holder (a ``Grant``), a FIFO queue
of candidates, and a bounded audit trail whose last record is the holder's
while there is one. Fencing tokens are log indices: a grant made while
applying the entry at index ``i`` carries token ``i``. Since indices strictly
increase (``apply`` refuses anything else) and an entry is applied at most
once, tokens strictly increase per election and are never reused, across
restarts too, because a restarted node re-applies the same log. Handover is
part of the command that ends a grant: when Resign, Revoke or Expire ends the
holder's grant, the head of the queue is granted in the same ``apply``, with
that command's index as its token. So the queue is never waiting while
nobody holds the election.

Lease keys: a holder or queued candidate is identified by the SHA-256 digest
of its secret lease key, carried in its Campaign and kept with the queue
place, the grant and the grant's audit record. Resign must present the same
digest; a retried Resign finds the grant it already ended through the digest
in the audit record and gets the first answer again. The key itself never
reaches this module.

Refusals that depend on the state (wrong key, full queue, too many
elections) are results, never exceptions, and leave the election state
untouched (``last_applied`` still advances: the entry was applied).
Revoke, Expire and Withdraw are proposed by the runtime on observations that
may be outdated by the time they commit (a newer grant may exist); they act
only if their token or candidate is still current and are otherwise a
``STALE`` no-op. Leases are not timed here: the Raft leader's runtime keeps
the deadlines on its monotonic clock and proposes Expire; ``leases()`` lists
what a new leader must extend by a full TTL.

Invariants (checked by ``check_invariants``, which ``restore`` runs):

- a queue is non-empty only while the election has a holder (handover), and
  no candidate, and no lease key digest, appears twice among the holder and
  the queue (so a key names at most one grant or queue place);
- the last audit record is open exactly while there is a holder, and it is
  the holder's; every other record is closed; tokens increase along the trail;
- every bound holds, and no index exceeds ``last_applied``.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from sidecar.elections.commands import (
    UINT64_MAX,
    Campaign,
    Command,
    Expire,
    Resign,
    Revoke,
    Withdraw,
    validate_name,
)
from sidecar.elections.errors import (
    ElectionsUsageError,
    InvalidArgument,
    InvariantViolation,
    SnapshotError,
)
from sidecar.elections.snapshot import ElectionData, SnapshotData, dump, load
from sidecar.elections.types import (
    DEFAULT_MAX_AUDIT_RECORDS,
    DEFAULT_MAX_ELECTIONS,
    DEFAULT_MAX_QUEUE_LENGTH,
    ApplyResult,
    Bounds,
    EndReason,
    Grant,
    GrantRecord,
    Lease,
    Outcome,
    QueuedCandidate,
    RejectReason,
)

DEFAULT_AUDIT_LIMIT: Final = 100


class _Election:
    """Mutable state of one election; only ``ElectionsState`` touches it."""

    __slots__ = ("audit", "holder", "name", "queue")

    def __init__(self, name: str, max_audit_records: int) -> None:
        self.name = name
        self.holder: Grant | None = None
        # Insertion-ordered dict: FIFO order, O(1) membership and removal.
        self.queue: dict[str, QueuedCandidate] = {}
        # Oldest records fall off; the newest (the holder's, if any) never does.
        self.audit: deque[GrantRecord] = deque(maxlen=max_audit_records)

    @property
    def idle_since_index(self) -> int | None:
        """Index of the command that left the election without holder, or None if held."""
        if self.holder is not None or not self.audit:
            return None
        return self.audit[-1].ended_index

    def queued_by_key(self, key_digest: str) -> QueuedCandidate | None:
        """The queued candidate whose lease key has ``key_digest`` (at most one)."""
        for queued in self.queue.values():
            if queued.key_digest == key_digest:
                return queued
        return None

    def record(self, token: int) -> GrantRecord | None:
        """The kept audit record of the grant ``token``, if any."""
        for record in reversed(self.audit):
            if record.token == token:
                return record
            if record.token < token:
                return None
        return None

    def newest_record_of_key(self, key_digest: str) -> GrantRecord | None:
        """The newest kept audit record of a grant made to the lease key ``key_digest``."""
        for record in reversed(self.audit):
            if record.key_digest == key_digest:
                return record
        return None

    def position(self, candidate: str) -> int:
        """1-based queue place of a queued ``candidate``."""
        for place, name in enumerate(self.queue, start=1):
            if name == candidate:
                return place
        raise InvariantViolation(f"{candidate!r} is not queued in {self.name!r}")


class ElectionsState:
    """Elections, queues, grants and their audit trail; see the module docstring.

    Bounds are part of the replicated state: every replica must be built with
    the same ones (``restore`` takes them from the snapshot). Raises
    ``ElectionsUsageError`` if a bound is not an integer >= 1.
    """

    def __init__(
        self,
        *,
        max_elections: int = DEFAULT_MAX_ELECTIONS,
        max_queue_length: int = DEFAULT_MAX_QUEUE_LENGTH,
        max_audit_records: int = DEFAULT_MAX_AUDIT_RECORDS,
    ) -> None:
        self._bounds = Bounds(
            max_elections=max_elections,
            max_queue_length=max_queue_length,
            max_audit_records=max_audit_records,
        )
        self._elections: dict[str, _Election] = {}
        # Idle elections (kept for their audit trail) in the order they went
        # idle, so the one to evict is the first: O(1) per new election instead
        # of a scan of all of them. Each command ends at most one grant, so the
        # idle indices are distinct and this order is the same on every replica
        # and after a restore.
        self._idle: dict[str, int] = {}
        self._last_applied = 0

    # ------------------------------------------------------------------ apply

    @property
    def bounds(self) -> Bounds:
        return self._bounds

    @property
    def last_applied(self) -> int:
        """Index of the last command applied (0 before the first)."""
        return self._last_applied

    def apply(self, index: int, command: Command) -> ApplyResult:
        """Apply the committed ``command`` found at log ``index``.

        Raises ``ElectionsUsageError`` if ``index`` is not greater than every
        index applied before (or out of the unsigned 64-bit range) or
        ``command`` is not a command: both are runtime bugs, and the state is
        left unchanged.
        """
        if type(index) is not int or not 1 <= index <= UINT64_MAX:
            raise ElectionsUsageError(f"log index must be an integer >= 1, got {index!r}")
        if index <= self._last_applied:
            raise ElectionsUsageError(
                f"log index {index} applied after {self._last_applied}: indices must increase"
            )
        match command:
            case Campaign():
                result = self._campaign(index, command)
            case Resign():
                result = self._resign(index, command)
            case Withdraw():
                result = self._withdraw(index, command)
            case Revoke():
                result = self._end_if_current(index, command, EndReason.REVOKED)
            case Expire():
                result = self._end_if_current(index, command, EndReason.EXPIRED)
            case _:
                raise ElectionsUsageError(f"not an elections command: {type(command).__name__}")
        self._last_applied = index
        return result

    def _campaign(self, index: int, command: Campaign) -> ApplyResult:
        name, candidate, digest = command.election, command.candidate, command.key_digest
        election = self._elections.get(name)
        if election is None:
            if not self._make_room():
                return self._rejected(index, name, RejectReason.TOO_MANY_ELECTIONS)
            election = _Election(name, self._bounds.max_audit_records)
            self._elections[name] = election
        holder = election.holder
        # Idempotency and identity come before the bounds, so a retry is never
        # refused as QUEUE_FULL, and a candidate id or key is never shared.
        if holder is not None and holder.holder == candidate:
            if holder.key_digest != digest:
                return self._rejected(index, name, RejectReason.CANDIDATE_ID_IN_USE, holder)
            return ApplyResult(
                index=index, election=name, outcome=Outcome.ALREADY_HOLDER, holder=holder
            )
        queued = election.queue.get(candidate)
        if queued is not None:
            if queued.key_digest != digest:
                return self._rejected(index, name, RejectReason.CANDIDATE_ID_IN_USE, holder)
            return ApplyResult(
                index=index,
                election=name,
                outcome=Outcome.ALREADY_QUEUED,
                holder=holder,
                queue_position=election.position(candidate),
                candidate=candidate,
            )
        if (holder is not None and holder.key_digest == digest) or election.queued_by_key(
            digest
        ) is not None:
            return self._rejected(index, name, RejectReason.LEASE_KEY_IN_USE, holder)
        if holder is None:
            # Empty queue here: a queue is only ever non-empty under a holder.
            grant = self._grant(
                election,
                index,
                candidate=candidate,
                ttl_ms=command.ttl_ms,
                at_unix_ms=command.proposed_at_unix_ms,
                key_digest=digest,
            )
            return ApplyResult(
                index=index, election=name, outcome=Outcome.GRANTED, holder=grant, granted=grant
            )
        if len(election.queue) >= self._bounds.max_queue_length:
            return self._rejected(index, name, RejectReason.QUEUE_FULL, holder)
        election.queue[candidate] = QueuedCandidate(
            candidate=candidate,
            ttl_ms=command.ttl_ms,
            queued_index=index,
            queued_at_unix_ms=command.proposed_at_unix_ms,
            key_digest=digest,
        )
        return ApplyResult(
            index=index,
            election=name,
            outcome=Outcome.QUEUED,
            holder=holder,
            queue_position=len(election.queue),
            candidate=candidate,
        )

    def _resign(self, index: int, command: Resign) -> ApplyResult:
        """Resign by lease key; see ``Resign`` and the decision table in docs/elections.md."""
        name, digest, token = command.election, command.key_digest, command.token
        election = self._elections.get(name)
        if election is None:
            return self._rejected(index, name, RejectReason.LEASE_NOT_FOUND)
        holder = election.holder
        if token is None:
            if holder is not None and holder.key_digest == digest:
                return self._end(election, index, command.proposed_at_unix_ms, EndReason.RESIGNED)
            queued = election.queued_by_key(digest)
            if queued is not None:
                del election.queue[queued.candidate]
                return ApplyResult(
                    index=index,
                    election=name,
                    outcome=Outcome.LEFT_QUEUE,
                    holder=holder,
                    candidate=queued.candidate,
                )
            record = election.newest_record_of_key(digest)
        else:
            if holder is not None and holder.token == token:
                if holder.key_digest != digest:
                    return self._rejected(index, name, RejectReason.LEASE_KEY_MISMATCH, holder)
                return self._end(election, index, command.proposed_at_unix_ms, EndReason.RESIGNED)
            record = election.record(token)
            if record is not None and record.key_digest != digest:
                return self._rejected(index, name, RejectReason.LEASE_KEY_MISMATCH, holder)
        if record is None:
            return self._rejected(index, name, RejectReason.LEASE_NOT_FOUND, holder)
        if record.end_reason is EndReason.RESIGNED:
            return ApplyResult(
                index=index,
                election=name,
                outcome=Outcome.ALREADY_RESIGNED,
                holder=holder,
                ended=record,
            )
        return self._rejected(index, name, RejectReason.LEASE_ENDED, holder)

    def _withdraw(self, index: int, command: Withdraw) -> ApplyResult:
        name = command.election
        election = self._elections.get(name)
        if election is None or command.candidate not in election.queue:
            holder = None if election is None else election.holder
            return ApplyResult(index=index, election=name, outcome=Outcome.STALE, holder=holder)
        del election.queue[command.candidate]
        return ApplyResult(
            index=index,
            election=name,
            outcome=Outcome.WITHDRAWN,
            holder=election.holder,
            candidate=command.candidate,
        )

    def _end_if_current(
        self, index: int, command: Revoke | Expire, reason: EndReason
    ) -> ApplyResult:
        name = command.election
        election = self._elections.get(name)
        if election is None or election.holder is None or election.holder.token != command.token:
            holder = None if election is None else election.holder
            return ApplyResult(index=index, election=name, outcome=Outcome.STALE, holder=holder)
        return self._end(election, index, command.proposed_at_unix_ms, reason)

    # ------------------------------------------------------------ transitions

    def _grant(
        self,
        election: _Election,
        index: int,
        *,
        candidate: str,
        ttl_ms: int,
        at_unix_ms: int,
        key_digest: str,
    ) -> Grant:
        """Make ``candidate`` the holder with token ``index`` (the only place grants happen)."""
        if election.holder is not None:
            raise InvariantViolation(f"grant in {election.name!r} while it has a holder")
        grant = Grant(
            election=election.name,
            holder=candidate,
            token=index,
            ttl_ms=ttl_ms,
            granted_index=index,
            granted_at_unix_ms=at_unix_ms,
            key_digest=key_digest,
        )
        election.holder = grant
        self._idle.pop(election.name, None)
        election.audit.append(
            GrantRecord(
                token=index,
                holder=candidate,
                granted_index=index,
                granted_at_unix_ms=at_unix_ms,
                key_digest=key_digest,
            )
        )
        return grant

    def _end(
        self, election: _Election, index: int, at_unix_ms: int, reason: EndReason
    ) -> ApplyResult:
        """End the holder's grant and hand over to the head of the queue, at ``index``."""
        holder = election.holder
        if holder is None or not election.audit or election.audit[-1].token != holder.token:
            raise InvariantViolation(f"ending a grant in {election.name!r} without its record")
        ended = GrantRecord(
            token=holder.token,
            holder=holder.holder,
            granted_index=holder.granted_index,
            granted_at_unix_ms=holder.granted_at_unix_ms,
            key_digest=holder.key_digest,
            ended_index=index,
            ended_at_unix_ms=at_unix_ms,
            end_reason=reason,
        )
        election.audit[-1] = ended
        election.holder = None
        granted = None
        if election.queue:
            candidate = next(iter(election.queue))
            queued = election.queue.pop(candidate)
            granted = self._grant(
                election,
                index,
                candidate=candidate,
                ttl_ms=queued.ttl_ms,
                at_unix_ms=at_unix_ms,
                key_digest=queued.key_digest,
            )
        else:
            self._idle[election.name] = index  # the newest idle index: goes last
        outcome = {
            EndReason.RESIGNED: Outcome.RESIGNED,
            EndReason.REVOKED: Outcome.REVOKED,
            EndReason.EXPIRED: Outcome.EXPIRED,
        }[reason]
        return ApplyResult(
            index=index,
            election=election.name,
            outcome=outcome,
            holder=granted,
            granted=granted,
            ended=ended,
        )

    def _make_room(self) -> bool:
        """Make room for one more election; False if every kept election is active.

        Idle elections (no holder, hence no queue) are kept for their audit
        trail until room is needed; the one idle longest goes first.
        """
        if len(self._elections) < self._bounds.max_elections:
            return True
        if not self._idle:
            return False
        oldest = next(iter(self._idle))
        del self._idle[oldest]
        del self._elections[oldest]
        return True

    @staticmethod
    def _rejected(
        index: int, name: str, reason: RejectReason, holder: Grant | None = None
    ) -> ApplyResult:
        return ApplyResult(
            index=index, election=name, outcome=Outcome.REJECTED, reason=reason, holder=holder
        )

    # ---------------------------------------------------------------- queries

    def elections(self) -> list[str]:
        """Names of every election kept (held, or idle with an audit trail), sorted."""
        return sorted(self._elections)

    def holder(self, election: str) -> Grant | None:
        """The current grant of ``election``; None if nobody holds it or it is unknown."""
        state = self._elections.get(election)
        return None if state is None else state.holder

    def queue(self, election: str) -> list[QueuedCandidate]:
        """Candidates waiting for ``election``, next in line first."""
        state = self._elections.get(election)
        return [] if state is None else list(state.queue.values())

    def grant_record(self, election: str, token: int) -> GrantRecord | None:
        """The kept audit record of grant ``token`` of ``election`` (open while current)."""
        state = self._elections.get(election)
        return None if state is None else state.record(token)

    def is_current(self, election: str, token: int) -> bool:
        """Whether ``token`` is the current holder's token of ``election``."""
        holder = self.holder(election)
        return holder is not None and holder.token == token

    def leases(self) -> list[Lease]:
        """Every current grant's lease, sorted by election.

        A new Raft leader extends each by a full ``ttl_ms`` from its own clock.
        """
        return [
            Lease(election=g.election, holder=g.holder, token=g.token, ttl_ms=g.ttl_ms)
            for name in sorted(self._elections)
            if (g := self._elections[name].holder) is not None
        ]

    def audit(
        self, election: str, after_token: int = 0, limit: int = DEFAULT_AUDIT_LIMIT
    ) -> list[GrantRecord]:
        """Audit records of ``election`` with a token above ``after_token``, oldest first.

        At most ``limit`` records; pass the last token of a page to get the
        next. Unknown elections have no records. Raises ``InvalidArgument`` if
        ``limit`` < 1 or ``after_token`` < 0.
        """
        if type(limit) is not int or limit < 1:
            raise InvalidArgument("limit", f"limit must be an integer >= 1, got {limit!r}")
        if type(after_token) is not int or after_token < 0:
            raise InvalidArgument(
                "after_token", f"after_token must be an integer >= 0, got {after_token!r}"
            )
        state = self._elections.get(election)
        if state is None:
            return []
        page: list[GrantRecord] = []
        for record in state.audit:
            if record.token > after_token:
                page.append(record)
                if len(page) == limit:
                    break
        return page

    # ------------------------------------------------------- snapshot/restore

    def snapshot(self) -> bytes:
        """The whole state as canonical bytes: the same state always gives the same bytes."""
        return dump(
            SnapshotData(
                bounds=self._bounds,
                last_applied=self._last_applied,
                elections=tuple(
                    ElectionData(
                        name=e.name,
                        holder=e.holder,
                        queue=tuple(e.queue.values()),
                        audit=tuple(e.audit),
                    )
                    for e in self._elections.values()
                ),
            )
        )

    @classmethod
    def restore(cls, data: bytes) -> ElectionsState:
        """Rebuild a state from ``snapshot()`` bytes, bounds included.

        Raises ``SnapshotError`` if the bytes are malformed or describe a state
        that breaks an invariant.
        """
        loaded = load(data)
        bounds = loaded.bounds
        state = cls(
            max_elections=bounds.max_elections,
            max_queue_length=bounds.max_queue_length,
            max_audit_records=bounds.max_audit_records,
        )
        state._last_applied = loaded.last_applied
        for item in loaded.elections:
            if len(item.audit) > bounds.max_audit_records:
                raise SnapshotError(
                    f"election {item.name!r}: {len(item.audit)} audit records, "
                    f"more than max_audit_records={bounds.max_audit_records}"
                )
            election = _Election(item.name, bounds.max_audit_records)
            election.holder = item.holder
            election.audit.extend(item.audit)
            for queued in item.queue:
                if queued.candidate in election.queue:
                    raise SnapshotError(
                        f"election {item.name!r}: {queued.candidate!r} queued twice"
                    )
                election.queue[queued.candidate] = queued
            state._elections[item.name] = election
        state._idle = state._idle_order()
        try:
            state.check_invariants()
        except InvariantViolation as exc:
            raise SnapshotError(f"snapshot breaks an invariant: {exc}") from exc
        return state

    # ------------------------------------------------------------- invariants

    def check_invariants(self) -> None:
        """Raise ``InvariantViolation`` if the state breaks an invariant (module docstring)."""
        bounds = self._bounds
        if len(self._elections) > bounds.max_elections:
            raise InvariantViolation(
                f"{len(self._elections)} elections, more than {bounds.max_elections}"
            )
        for name, election in self._elections.items():
            try:
                validate_name("election", name)
            except InvalidArgument as exc:
                raise InvariantViolation(str(exc)) from exc
            self._check_election(election)
        if list(self._idle.items()) != list(self._idle_order().items()):
            raise InvariantViolation("the idle index does not list the idle elections in order")

    def _idle_order(self) -> dict[str, int]:
        """Idle elections by the index they went idle at, oldest first (from scratch)."""
        idle = [
            (since, name)
            for name, election in self._elections.items()
            if (since := election.idle_since_index) is not None
        ]
        return {name: since for since, name in sorted(idle)}

    def _check_election(self, election: _Election) -> None:
        name, holder, audit = election.name, election.holder, election.audit
        where = f"election {name!r}"
        if not audit:
            raise InvariantViolation(f"{where}: no audit record (every election had a grant)")
        if len(election.queue) > self._bounds.max_queue_length:
            raise InvariantViolation(f"{where}: queue longer than max_queue_length")
        previous: GrantRecord | None = None
        for record in audit:
            ends = (record.ended_index, record.ended_at_unix_ms, record.end_reason)
            if record.token > self._last_applied:
                raise InvariantViolation(f"{where}: token {record.token} beyond last_applied")
            if record.granted_index != record.token:
                raise InvariantViolation(f"{where}: token {record.token} != its grant index")
            if any(value is None for value in ends) and any(v is not None for v in ends):
                raise InvariantViolation(f"{where}: record {record.token} half ended")
            if record.ended_index is not None and not (
                record.token < record.ended_index <= self._last_applied
            ):
                raise InvariantViolation(f"{where}: record {record.token} ends out of order")
            if previous is not None:
                if previous.ended_index is None:
                    raise InvariantViolation(f"{where}: open record {previous.token} not last")
                if not previous.ended_index <= record.token:
                    raise InvariantViolation(f"{where}: record {record.token} overlaps")
            previous = record
        last = audit[-1]
        if holder is None:
            if last.ended_index is None:
                raise InvariantViolation(f"{where}: open record {last.token} without holder")
            if election.queue:
                raise InvariantViolation(f"{where}: candidates queued without a holder")
        else:
            expected = GrantRecord(
                token=holder.token,
                holder=holder.holder,
                granted_index=holder.granted_index,
                granted_at_unix_ms=holder.granted_at_unix_ms,
                key_digest=holder.key_digest,
            )
            if holder.election != name or last != expected:
                raise InvariantViolation(f"{where}: holder {holder} does not match its record")
            if holder.holder in election.queue:
                raise InvariantViolation(f"{where}: holder {holder.holder!r} is also queued")
        digests = [q.key_digest for q in election.queue.values()]
        if holder is not None:
            digests.append(holder.key_digest)
        if len(set(digests)) != len(digests):
            raise InvariantViolation(f"{where}: a lease key is shared by two candidates")
        previous_index = 0
        for candidate, queued in election.queue.items():
            if queued.candidate != candidate:
                raise InvariantViolation(f"{where}: queue key {candidate!r} mismatch")
            if not previous_index < queued.queued_index <= self._last_applied:
                raise InvariantViolation(f"{where}: queue out of campaign order at {candidate!r}")
            previous_index = queued.queued_index
