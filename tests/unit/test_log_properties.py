"""RaftLog against a naive model: a plain list of entries and brute-force scans.

Hypothesis drives random sequences of appends (with truncation at every valid
point), commits, applies, compactions and persistence marks; after every step
each query of the log (terms, slices with limits, fast-backtracking lookups,
membership, unstable and committed batches) is compared with a scan of the
model. Invalid operations must raise InvariantViolation and leave the log as
it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sidecar.raft import (
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    InvariantViolation,
    Membership,
    Snapshot,
    SnapshotMetadata,
    decode_conf_entry,
)
from sidecar.raft.log import RaftLog
from sidecar.raft.membership import encode_conf_entry

NODES = ("a", "b", "c", "d")
INITIAL = Membership(frozenset({"a", "b", "c"}))


@st.composite
def memberships(draw: st.DrawFn) -> Membership:
    voters = draw(st.frozensets(st.sampled_from(NODES), min_size=1))
    learners = draw(st.frozensets(st.sampled_from(NODES))) - voters
    return Membership(voters, learners)


@st.composite
def entry_specs(draw: st.DrawFn) -> tuple[int, EntryKind, bytes]:
    """(term increment, kind, data) of one new entry."""
    bump = draw(st.sampled_from([0, 0, 0, 1, 2]))
    if draw(st.integers(0, 5)) == 0:
        result = draw(memberships())
        change = ConfChange(ConfChangeKind.ADD_LEARNER, draw(st.sampled_from(NODES)))
        return bump, EntryKind.CONF_CHANGE, encode_conf_entry(change, result)
    return bump, EntryKind.NORMAL, draw(st.binary(max_size=6))


@dataclass
class Model:
    base_index: int = 0
    base_term: int = 0
    base_membership: Membership = INITIAL
    entries: list[Entry] = field(default_factory=list)
    """Entries base_index+1 .. last, as a plain list."""
    commit: int = 0
    applied: int = 0
    unstable_from: int = 1

    @property
    def last_index(self) -> int:
        return self.base_index + len(self.entries)

    def term(self, index: int) -> int | None:
        if index == self.base_index:
            return self.base_term
        for e in self.entries:
            if e.index == index:
                return e.term
        return None

    def membership_at(self, index: int) -> Membership:
        result = self.base_membership
        for e in self.entries:
            if e.index <= index and e.kind is EntryKind.CONF_CHANGE:
                result = _membership_of(e)
        return result


def _membership_of(e: Entry) -> Membership:
    return decode_conf_entry(e.data)[1]


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log = RaftLog(SnapshotMetadata(0, 0, INITIAL))
        self.model = Model()

    # ---- operations ----------------------------------------------------------

    @rule(data=st.data(), specs=st.lists(entry_specs(), min_size=1, max_size=6))
    def append(self, data: st.DataObject, specs: list[tuple[int, EntryKind, bytes]]) -> None:
        m = self.model
        at = data.draw(st.integers(m.commit + 1, m.last_index + 1), label="at")
        term = m.term(at - 1) or 1
        new: list[Entry] = []
        for offset, (bump, kind, payload) in enumerate(specs):
            term = max(1, term + bump)
            new.append(Entry(term, at + offset, kind, payload))
        self.log.append(tuple(new))
        m.entries = [e for e in m.entries if e.index < at] + new
        m.unstable_from = min(m.unstable_from, at)

    @rule(data=st.data())
    @precondition(lambda self: self.model.commit > self.model.base_index)
    def append_over_committed_is_refused(self, data: st.DataObject) -> None:
        m = self.model
        at = data.draw(st.integers(m.base_index + 1, m.commit))
        before = list(self.log.slice(self.log.first_index, m.last_index + 1, 10**6, 10**9))
        with pytest.raises(InvariantViolation):
            self.log.append((Entry(99, at),))
        after = list(self.log.slice(self.log.first_index, m.last_index + 1, 10**6, 10**9))
        assert after == before

    @rule(data=st.data())
    def append_with_gap_is_refused(self, data: st.DataObject) -> None:
        gap = data.draw(st.integers(2, 4))
        with pytest.raises(InvariantViolation):
            self.log.append((Entry(99, self.model.last_index + gap),))

    @rule(data=st.data())
    def commit_to(self, data: st.DataObject) -> None:
        m = self.model
        index = data.draw(st.integers(0, m.last_index))
        self.log.commit_to(index)
        m.commit = max(m.commit, index)

    @rule()
    def commit_beyond_last_is_refused(self) -> None:
        with pytest.raises(InvariantViolation):
            self.log.commit_to(self.model.last_index + 1)

    @rule(data=st.data())
    def applied_to(self, data: st.DataObject) -> None:
        m = self.model
        index = data.draw(st.integers(m.applied, m.commit))
        self.log.applied_to(index)
        m.applied = index

    @rule()
    def stable_to_last(self) -> None:
        self.log.stable_to(self.model.last_index)
        self.model.unstable_from = self.model.last_index + 1

    @rule(data=st.data())
    @precondition(lambda self: self.model.applied > self.model.base_index)
    def compact(self, data: st.DataObject) -> None:
        m = self.model
        index = data.draw(st.integers(m.base_index + 1, m.applied))
        term = m.term(index)
        assert term is not None
        meta = SnapshotMetadata(index, term, m.membership_at(index))
        self.log.compact(Snapshot(meta, b"sm"))
        m.entries = [e for e in m.entries if e.index > index]
        m.base_index, m.base_term, m.base_membership = index, term, meta.membership
        m.unstable_from = max(m.unstable_from, index + 1)

    @rule(data=st.data())
    @precondition(lambda self: self.model.applied > self.model.base_index)
    def compact_with_wrong_term_is_refused(self, data: st.DataObject) -> None:
        m = self.model
        index = data.draw(st.integers(m.base_index + 1, m.applied))
        term = m.term(index)
        assert term is not None
        meta = SnapshotMetadata(index, term + 1, m.membership_at(index))
        with pytest.raises(InvariantViolation):
            self.log.compact(Snapshot(meta))

    @rule()
    def compact_beyond_applied_is_refused(self) -> None:
        m = self.model
        if m.applied >= m.last_index:
            return
        index = m.applied + 1
        term = m.term(index)
        assert term is not None
        with pytest.raises(InvariantViolation):
            self.log.compact(Snapshot(SnapshotMetadata(index, term, m.membership_at(index))))

    # ---- queries against brute force --------------------------------------------

    @invariant()
    def positions_agree(self) -> None:
        m = self.model
        log = self.log
        assert log.first_index == m.base_index + 1
        assert log.last_index == m.last_index
        assert log.last_term == (m.entries[-1].term if m.entries else m.base_term)
        assert log.commit == m.commit
        assert log.applied == m.applied

    @invariant()
    def terms_agree(self) -> None:
        m = self.model
        for index in range(max(0, m.base_index - 2), m.last_index + 3):
            expected = m.term(index) if index >= m.base_index else None
            assert self.log.term(index) == expected, index
            if expected is not None and index > m.base_index:
                assert self.log.entry(index) == m.entries[index - m.base_index - 1]

    @invariant()
    def membership_agrees(self) -> None:
        m = self.model
        assert self.log.membership() == m.membership_at(m.last_index)
        for index in range(m.base_index, m.last_index + 1):
            assert self.log.membership_at(index) == m.membership_at(index)
        confs = [e.index for e in m.entries if e.kind is EntryKind.CONF_CHANGE]
        assert self.log.last_conf_index() == (confs[-1] if confs else 0)

    @invariant()
    def find_conflict_by_term_agrees(self) -> None:
        m = self.model
        top_term = (m.entries[-1].term if m.entries else m.base_term) + 1
        for index in range(m.base_index, m.last_index + 2):
            for term in range(top_term + 1):
                expected = m.base_index
                for i in range(min(index, m.last_index), m.base_index, -1):
                    t = m.term(i)
                    assert t is not None
                    if t <= term:
                        expected = i
                        break
                assert self.log.find_conflict_by_term(index, term) == expected, (index, term)

    @invariant()
    def slices_agree(self) -> None:
        m = self.model
        first = m.base_index + 1
        for lo in range(first, m.last_index + 2):
            for hi in (lo, lo + 1, lo + 3, m.last_index + 1, m.last_index + 5):
                for max_entries in (1, 2, 100):
                    for max_bytes in (0, 5, 10**6):
                        got = self.log.slice(lo, hi, max_entries, max_bytes)
                        wanted = [e for e in m.entries if lo <= e.index < hi][:max_entries]
                        expected: list[Entry] = []
                        size = 0
                        for e in wanted:
                            size += len(e.data)
                            if expected and size > max_bytes:
                                break
                            expected.append(e)
                        assert list(got) == expected, (lo, hi, max_entries, max_bytes)
        if first > 1:
            with pytest.raises(InvariantViolation):
                self.log.slice(first - 1, m.last_index + 1, 10, 10)

    @invariant()
    def batches_agree(self) -> None:
        m = self.model
        assert list(self.log.unstable_entries()) == [
            e for e in m.entries if e.index >= m.unstable_from
        ]
        for limit in (1, 3, 1000):
            expected = [e for e in m.entries if m.applied < e.index <= m.commit][:limit]
            assert list(self.log.next_committed(limit)) == expected

    @invariant()
    def up_to_date_agrees(self) -> None:
        m = self.model
        last_term = m.entries[-1].term if m.entries else m.base_term
        for cand_term in range(last_term - 1, last_term + 2):
            for cand_index in range(m.last_index - 1, m.last_index + 2):
                expected = (cand_term, cand_index) >= (last_term, m.last_index)
                assert self.log.is_up_to_date(cand_index, cand_term) == expected


LogMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRaftLogAgainstModel = LogMachine.TestCase
