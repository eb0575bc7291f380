"""Random command sequences against a naive model, with a restored twin.

Hypothesis drives campaigns (with the candidate's own lease key or another's),
resignations (by key, with or without a token, right or wrong key),
withdrawals, revocations and expiries, with increasing indices and gaps, over
a few elections and candidates and tiny bounds, so that queues fill, audit
trails wrap and idle elections are evicted. Each command goes to three
places: the state under test, a *twin* that is replaced by
``restore(snapshot())`` at random points, and a model written as plainly as
possible (lists and dicts). After every step:

1. at most one holder per election: the holder is never queued, no candidate
   is queued twice, at most one audit record is open and it is the holder's;
2. every grant's token equals the index of the command that made it and is
   strictly greater than every earlier token of that election (over the whole
   run, evictions included);
3. grants follow campaign order: a handover grants the earliest campaigner
   still waiting, and the queue equals the model's FIFO of waiting candidates;
4. the twin returns the same results and snapshots to the same bytes as the
   state that was never restored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sidecar.elections import (
    ApplyResult,
    Campaign,
    Command,
    ElectionsState,
    Expire,
    Outcome,
    RejectReason,
    Resign,
    Revoke,
    Withdraw,
    lease_key_digest,
)

ELECTIONS = ("a", "b", "c")
CANDIDATES = ("w0", "w1", "w2", "w3")


def key(candidate: str) -> str:
    return lease_key_digest(f"model-key-of-{candidate}".ljust(22, "-"))


@dataclass
class ModelElection:
    holder: tuple[str, int, int] | None = None  # candidate, token, ttl_ms
    holder_key: str = ""
    queue: list[tuple[str, int]] = field(default_factory=list)  # FIFO of (candidate, ttl_ms)
    queue_keys: dict[str, str] = field(default_factory=dict)  # candidate -> key digest
    idle_since: int | None = None
    tokens: list[int] = field(default_factory=list)
    records: list[list[object]] = field(default_factory=list)  # [token, key, ended reason]


class Model:
    """The semantics of docs/elections.md, written naively."""

    def __init__(self, max_elections: int, max_queue_length: int, max_audit: int = 1) -> None:
        self.max_elections = max_elections
        self.max_queue_length = max_queue_length
        self.max_audit = max_audit
        self.elections: dict[str, ModelElection] = {}

    def apply(self, index: int, command: Command) -> tuple[Outcome, RejectReason | None]:
        e = self.elections.get(command.election)
        match command:
            case Campaign(election=name, candidate=who, ttl_ms=ttl, key_digest=digest):
                if e is None:
                    if len(self.elections) >= self.max_elections:
                        idle = [
                            (m.idle_since, n) for n, m in self.elections.items() if m.holder is None
                        ]
                        if not idle:
                            return Outcome.REJECTED, RejectReason.TOO_MANY_ELECTIONS
                        del self.elections[min(idle)[1]]
                    e = self.elections[name] = ModelElection()
                if e.holder is not None and e.holder[0] == who:
                    if e.holder_key != digest:
                        return Outcome.REJECTED, RejectReason.CANDIDATE_ID_IN_USE
                    return Outcome.ALREADY_HOLDER, None
                if who in e.queue_keys:
                    if e.queue_keys[who] != digest:
                        return Outcome.REJECTED, RejectReason.CANDIDATE_ID_IN_USE
                    return Outcome.ALREADY_QUEUED, None
                if (e.holder is not None and e.holder_key == digest) or digest in set(
                    e.queue_keys.values()
                ):
                    return Outcome.REJECTED, RejectReason.LEASE_KEY_IN_USE
                if e.holder is None:
                    e.holder, e.holder_key, e.idle_since = (who, index, ttl), digest, None
                    e.tokens.append(index)
                    e.records.append([index, digest, None])
                    return Outcome.GRANTED, None
                if len(e.queue) >= self.max_queue_length:
                    return Outcome.REJECTED, RejectReason.QUEUE_FULL
                e.queue.append((who, ttl))
                e.queue_keys[who] = digest
                return Outcome.QUEUED, None
            case Resign(key_digest=digest, token=token):
                if e is None:
                    return Outcome.REJECTED, RejectReason.LEASE_NOT_FOUND
                kept = e.records[-self.max_audit :]
                if token is None:
                    if e.holder is not None and e.holder_key == digest:
                        self._end(e, index, "resigned")
                        return Outcome.RESIGNED, None
                    mine = [c for c, k in e.queue_keys.items() if k == digest]
                    if mine:
                        self._leave(e, mine[0])
                        return Outcome.LEFT_QUEUE, None
                    found = [r for r in kept if r[1] == digest][-1:]
                else:
                    if e.holder is not None and e.holder[1] == token:
                        if e.holder_key != digest:
                            return Outcome.REJECTED, RejectReason.LEASE_KEY_MISMATCH
                        self._end(e, index, "resigned")
                        return Outcome.RESIGNED, None
                    found = [r for r in kept if r[0] == token]
                    if found and found[0][1] != digest:
                        return Outcome.REJECTED, RejectReason.LEASE_KEY_MISMATCH
                if not found:
                    return Outcome.REJECTED, RejectReason.LEASE_NOT_FOUND
                if found[0][2] == "resigned":
                    return Outcome.ALREADY_RESIGNED, None
                return Outcome.REJECTED, RejectReason.LEASE_ENDED
            case Withdraw(candidate=who):
                if e is None or who not in e.queue_keys:
                    return Outcome.STALE, None
                self._leave(e, who)
                return Outcome.WITHDRAWN, None
            case Revoke(token=token) | Expire(token=token):
                if e is None or e.holder is None or e.holder[1] != token:
                    return Outcome.STALE, None
                self._end(e, index, "other")
                return (Outcome.REVOKED if isinstance(command, Revoke) else Outcome.EXPIRED), None
        raise AssertionError(command)

    @staticmethod
    def _leave(e: ModelElection, who: str) -> None:
        e.queue = [(c, t) for c, t in e.queue if c != who]
        del e.queue_keys[who]

    @staticmethod
    def _end(e: ModelElection, index: int, why: str) -> None:
        e.records[-1][2] = why
        if e.queue:
            (who, ttl), *e.queue = e.queue
            e.holder, e.holder_key = (who, index, ttl), e.queue_keys.pop(who)
            e.tokens.append(index)
            e.records.append([index, e.holder_key, None])
        else:
            e.holder, e.idle_since = None, index


class ElectionsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.index = 0
        self.max_token: dict[str, int] = {}
        self.state = ElectionsState()
        self.twin = ElectionsState()
        self.model = Model(1, 1)

    @initialize(
        max_elections=st.integers(1, 4),
        max_queue_length=st.integers(1, 3),
        max_audit_records=st.integers(1, 4),
    )
    def setup(self, max_elections: int, max_queue_length: int, max_audit_records: int) -> None:
        bounds = {
            "max_elections": max_elections,
            "max_queue_length": max_queue_length,
            "max_audit_records": max_audit_records,
        }
        self.state = ElectionsState(**bounds)
        self.twin = ElectionsState(**bounds)
        self.model = Model(max_elections, max_queue_length, max_audit_records)

    # ------------------------------------------------------------ driving

    def draw_token(self, election: str, data: st.DataObject) -> int:
        """The current token half of the time, else an old, never-granted or future one."""
        model = self.model.elections.get(election)
        past = model.tokens if model else []
        current = [model.holder[1]] if model and model.holder else []
        choices = st.sampled_from([*past, self.index + 1, max(1, self.index - 1)])
        return data.draw(st.sampled_from(current) | choices if current else choices)

    def apply(self, gap: int, command: Command) -> ApplyResult:
        self.index += gap
        index = self.index
        before_queue = [q.candidate for q in self.state.queue(command.election)]
        result = self.state.apply(index, command)
        # (4) the restored twin answers the same.
        assert self.twin.apply(index, command) == result
        outcome, reason = self.model.apply(index, command)
        assert (result.outcome, result.reason) == (outcome, reason), command
        model = self.model.elections.get(command.election)
        expected_holder = None if model is None or model.holder is None else model.holder
        if result.outcome is not Outcome.REJECTED or result.holder is not None:
            got = (
                None
                if result.holder is None
                else (
                    result.holder.holder,
                    result.holder.token,
                    result.holder.ttl_ms,
                )
            )
            assert got == expected_holder
        if result.granted is not None:
            grant = result.granted
            # (2) token = index of the granting command, strictly increasing per election.
            assert grant.token == grant.granted_index == index
            assert grant.token > self.max_token.get(grant.election, 0)
            self.max_token[grant.election] = grant.token
            # (3) a handover grants the earliest campaigner still waiting.
            if result.ended is not None:
                assert before_queue and grant.holder == before_queue[0]
                assert result.ended.ended_index == index
        if result.outcome in (Outcome.QUEUED, Outcome.ALREADY_QUEUED):
            assert model is not None
            assert isinstance(command, Campaign)
            waiting = [c for c, _ in model.queue]
            assert result.queue_position == 1 + waiting.index(command.candidate)
        return result

    gaps = st.integers(1, 3)
    elections = st.sampled_from(ELECTIONS)
    candidates = st.sampled_from(CANDIDATES)
    at = st.integers(0, 2**40)

    @rule(gap=gaps, election=elections, candidate=candidates, ttl=st.integers(1, 5), at=at)
    def campaign(self, gap: int, election: str, candidate: str, ttl: int, at: int) -> None:
        self.apply(
            gap,
            Campaign(
                election=election,
                candidate=candidate,
                ttl_ms=ttl,
                key_digest=key(candidate),
                proposed_at_unix_ms=at,
            ),
        )

    @rule(gap=gaps, election=elections, candidate=candidates, ttl=st.integers(1, 5), at=at)
    def campaign_again(self, gap: int, election: str, candidate: str, ttl: int, at: int) -> None:
        # Twice the weight of the other rules, so queues actually fill.
        self.campaign(gap, election, candidate, ttl, at)

    @rule(gap=gaps, election=elections, candidate=candidates, by=candidates)
    def campaign_with_another_key(self, gap: int, election: str, candidate: str, by: str) -> None:
        command = Campaign(
            election=election,
            candidate=candidate,
            ttl_ms=1,
            key_digest=key(by),
            proposed_at_unix_ms=0,
        )
        self.apply(gap, command)

    @rule(gap=gaps, election=elections, data=st.data(), by=candidates, at=at)
    def resign_token(self, gap: int, election: str, data: st.DataObject, by: str, at: int) -> None:
        token = self.draw_token(election, data)
        model = self.model.elections.get(election)
        if model is not None and model.holder is not None and model.holder[1] == token:
            by = data.draw(st.sampled_from([model.holder[0], by]))  # mostly the right key
        command = Resign(election=election, key_digest=key(by), token=token, proposed_at_unix_ms=at)
        self.apply(gap, command)

    @rule(gap=gaps, election=elections, candidate=candidates)
    def resign_by_key(self, gap: int, election: str, candidate: str) -> None:
        self.apply(gap, Resign(election=election, key_digest=key(candidate), proposed_at_unix_ms=0))

    @rule(gap=gaps, election=elections, candidate=candidates)
    def withdraw(self, gap: int, election: str, candidate: str) -> None:
        self.apply(gap, Withdraw(election=election, candidate=candidate, proposed_at_unix_ms=0))

    @rule(gap=gaps, election=elections, data=st.data(), at=at)
    def revoke(self, gap: int, election: str, data: st.DataObject, at: int) -> None:
        token = self.draw_token(election, data)
        self.apply(
            gap, Revoke(election=election, token=token, proposed_at_unix_ms=at, reason="broke")
        )

    @rule(gap=gaps, election=elections, data=st.data(), at=at)
    def expire(self, gap: int, election: str, data: st.DataObject, at: int) -> None:
        token = self.draw_token(election, data)
        self.apply(gap, Expire(election=election, token=token, proposed_at_unix_ms=at))

    @rule()
    def restore_twin(self) -> None:
        self.twin = ElectionsState.restore(self.twin.snapshot())

    # ---------------------------------------------------------- invariants

    @invariant()
    def one_holder_and_fifo_queues(self) -> None:
        self.state.check_invariants()
        assert self.state.elections() == sorted(self.model.elections)
        for name in self.state.elections():
            model = self.model.elections[name]
            holder = self.state.holder(name)
            queue = [q.candidate for q in self.state.queue(name)]
            # (1) at most one holder, never also queued, nobody queued twice.
            assert len(set(queue)) == len(queue)
            assert holder is None or holder.holder not in queue
            open_records = [r for r in self.state.audit(name, limit=10) if r.current]
            assert len(open_records) == (0 if holder is None else 1)
            assert holder is None or open_records[0].token == holder.token
            assert self.state.is_current(name, holder.token) if holder else True
            # (3) the queue is the FIFO of still-waiting campaigners, with their TTLs.
            assert [(q.candidate, q.ttl_ms) for q in self.state.queue(name)] == model.queue
            tokens = [r.token for r in self.state.audit(name, limit=10)]
            assert tokens == model.tokens[-self.state.bounds.max_audit_records :]
        assert [(lease.election, lease.token) for lease in self.state.leases()] == [
            (name, m.holder[1])
            for name, m in sorted(self.model.elections.items())
            if m.holder is not None
        ]

    @invariant()
    def twin_is_identical(self) -> None:
        # (4) restoring changes nothing observable, down to the snapshot bytes.
        assert self.twin.snapshot() == self.state.snapshot()


TestElectionsMachine = ElectionsMachine.TestCase
TestElectionsMachine.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


commands = st.one_of(
    st.builds(
        Campaign,
        election=st.sampled_from(ELECTIONS),
        candidate=st.sampled_from(CANDIDATES),
        ttl_ms=st.integers(1, 9),
        key_digest=st.sampled_from(CANDIDATES).map(key),
        proposed_at_unix_ms=st.integers(0, 99),
    ),
    st.builds(
        Resign,
        election=st.sampled_from(ELECTIONS),
        key_digest=st.sampled_from(CANDIDATES).map(key),
        token=st.none() | st.integers(1, 60),
        proposed_at_unix_ms=st.just(0),
    ),
    st.builds(
        Withdraw,
        election=st.sampled_from(ELECTIONS),
        candidate=st.sampled_from(CANDIDATES),
        proposed_at_unix_ms=st.just(0),
    ),
    st.builds(
        Expire,
        election=st.sampled_from(ELECTIONS),
        token=st.integers(1, 60),
        proposed_at_unix_ms=st.just(0),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(commands, max_size=40), st.data())
def test_restore_at_any_point_then_continue_gives_the_same_results(
    sequence: list[Command], data: st.DataObject
) -> None:
    split = data.draw(st.integers(0, len(sequence)))
    straight = ElectionsState(max_elections=2, max_queue_length=2, max_audit_records=3)
    resumed = ElectionsState(max_elections=2, max_queue_length=2, max_audit_records=3)
    for position, command in enumerate(sequence):
        if position == split:
            resumed = ElectionsState.restore(resumed.snapshot())
        index = position + 1
        assert resumed.apply(index, command) == straight.apply(index, command)
    assert resumed.snapshot() == straight.snapshot()
