"""MemoryStorage: the RaftStorage contract in memory, and its crash points."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from sidecar.raft import Entry, HardState, Membership, PersistentState, Snapshot, SnapshotMetadata
from sidecar.storage.errors import StorageError
from sidecar.storage.memory import MemoryStorage

VOTERS = Membership(frozenset({"a", "b", "c"}))


def ents(first: int, last: int, term: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(term, i, data=b"%d" % i) for i in range(first, last + 1))


def snap(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMetadata(index, term, VOTERS), b"sm@%d" % index)


HS1 = HardState(term=1, voted_for="a", commit=0)
HS2 = HardState(term=2, voted_for="b", commit=3)


def test_a_fresh_storage_recovers_empty() -> None:
    assert MemoryStorage().recover() == PersistentState()


def test_persist_then_recover_and_survive_a_crash() -> None:
    s = MemoryStorage()
    s.persist(HS1, None, ents(1, 3))
    s.persist(HS2, None, ents(4, 5, term=2))
    want = PersistentState(HS2, None, ents(1, 3) + ents(4, 5, term=2))
    assert s.recover() == want
    assert s.crash().recover() == want
    assert s.last_index() == 5 and s.term(5) == 2 and s.term(0) == 0 and s.term(6) is None


def test_a_missing_hard_state_keeps_the_old_one() -> None:
    s = MemoryStorage()
    s.persist(HS1, None, ents(1, 2))
    s.persist(None, None, ents(3, 3))
    assert s.recover().hard_state == HS1


def test_entries_truncate_the_log_from_their_first_index() -> None:
    s = MemoryStorage()
    s.persist(None, None, ents(1, 5))
    s.persist(None, None, ents(3, 4, term=2))
    assert s.recover().entries == ents(1, 2) + ents(3, 4, term=2)


def test_staged_writes_are_lost_on_a_crash_until_synced() -> None:
    s = MemoryStorage()
    s.persist(HS1, None, ents(1, 2))
    synced = s.recover()
    s.stage(HS2, None, ents(3, 4, term=2))
    assert s.has_staged
    assert s.recover() == synced  # recover() reads only what is durable
    assert s.crash().recover() == synced
    s.sync()
    assert not s.has_staged
    assert s.crash().recover() == PersistentState(HS2, None, ents(1, 2) + ents(3, 4, term=2))


def test_crash_leaves_the_original_untouched() -> None:
    s = MemoryStorage()
    s.persist(HS1, None, ents(1, 2))
    s.stage(HS2, None, ents(3, 3))
    s.crash(keep_prefix=1).persist(None, None, ents(1, 1, term=9))
    s.sync()
    assert s.recover() == PersistentState(HS2, None, ents(1, 3))


@pytest.mark.parametrize("k", range(7))
def test_keep_prefix_keeps_the_first_k_staged_entries_and_no_hard_state(k: int) -> None:
    s = MemoryStorage()
    s.persist(HS1, None, ents(1, 2))
    s.stage(HS2, None, ents(3, 5, term=2))
    s.stage(HardState(term=3, commit=4), None, ents(4, 6, term=3))  # overwrites 4..5
    after = s.crash(keep_prefix=k).recover()
    # Past the first batch, the second one truncates from 4 before appending.
    first_batch, second_batch = ents(3, 5, term=2), ents(4, 6, term=3)
    staged = first_batch[:k] if k <= 3 else first_batch[:1] + second_batch[: k - 3]
    assert after.entries == ents(1, 2) + staged
    assert after.hard_state == HS1


def test_keep_prefix_keeps_a_staged_snapshot_written_before_the_cut() -> None:
    s = MemoryStorage()
    s.persist(HS1, None, ents(1, 3))
    s.stage(HardState(term=4, commit=10), snap(10, 4), ents(11, 12, term=4))
    assert s.crash().recover() == PersistentState(HS1, None, ents(1, 3))
    # The snapshot file is durable before the log is touched: a torn write keeps it.
    torn0 = s.crash(keep_prefix=0).recover()
    assert torn0.snapshot == snap(10, 4) and torn0.entries == ()
    assert torn0.hard_state == HardState(term=1, voted_for="a", commit=10)  # commit >= snapshot
    assert s.crash(keep_prefix=1).recover().entries == ents(11, 11, term=4)


def test_keep_prefix_stops_at_the_batch_the_cut_falls_in() -> None:
    s = MemoryStorage()
    s.stage(None, None, ents(1, 2))
    s.stage(None, snap(5, 2), ents(6, 6, term=2))
    torn = s.crash(keep_prefix=1).recover()
    assert torn.snapshot is None and torn.entries == ents(1, 1)
    torn = s.crash(keep_prefix=2).recover()  # the cut falls right before entry 6
    assert torn.snapshot == snap(5, 2) and torn.entries == ()


def test_a_received_snapshot_replaces_the_whole_log() -> None:
    s = MemoryStorage()
    s.persist(HS1, None, ents(1, 8))
    s.persist(HardState(term=3, commit=20), snap(20, 3), ())
    got = s.recover()
    assert got.snapshot == snap(20, 3) and got.entries == ()
    assert s.last_index() == 20 and s.term(20) == 3 and s.term(8) is None
    s.persist(None, None, ents(21, 22, term=3))
    assert s.crash().recover().entries == ents(21, 22, term=3)


def test_a_received_snapshot_behind_the_log_end_still_replaces_it() -> None:
    s = MemoryStorage()
    s.persist(HS1, None, ents(1, 8))
    s.persist(None, snap(4, 1), ())
    assert s.recover().entries == ()


def test_save_snapshot_compacts_the_log_durably() -> None:
    s = MemoryStorage()
    s.persist(HardState(term=1, commit=10), None, ents(1, 10))
    s.save_snapshot(snap(6, 1))
    want = PersistentState(HardState(term=1, commit=10), snap(6, 1), ents(7, 10))
    assert s.recover() == want
    assert s.crash().recover() == want
    assert s.term(6) == 1 and s.term(5) is None
    s.persist(None, None, ents(11, 11))  # appends still line up
    s.save_snapshot(snap(11, 1))
    assert s.recover().entries == ()


@pytest.mark.parametrize(
    ("snapshot", "match"),
    [(snap(3, 1), "not newer"), (snap(12, 1), "beyond"), (snap(8, 2), "term")],
)
def test_save_snapshot_refuses_what_does_not_fit(snapshot: Snapshot, match: str) -> None:
    s = MemoryStorage()
    s.persist(None, None, ents(1, 10))
    s.save_snapshot(snap(4, 1))
    before = s.recover()
    with pytest.raises(StorageError, match=match):
        s.save_snapshot(snapshot)
    assert s.recover() == before


def test_save_snapshot_refuses_while_writes_are_staged() -> None:
    s = MemoryStorage()
    s.persist(None, None, ents(1, 10))
    s.stage(None, None, ents(11, 11))
    with pytest.raises(StorageError, match="sync"):
        s.save_snapshot(snap(5, 1))


@pytest.mark.parametrize(
    ("snapshot", "entries", "match"),
    [
        (None, ents(7, 7), "do not fit"),  # a gap after last index 5
        (None, (Entry(1, 6), Entry(1, 8)), "contiguous"),
        (snap(3, 1), (), "not newer"),  # behind the stored snapshot at 3
        (None, ents(3, 4), "do not fit"),  # starts inside the snapshot
        (snap(9, 1), ents(9, 9), "do not fit"),  # entries must follow the new snapshot
        (snap(9, 1), ents(11, 11), "do not fit"),
    ],
)
def test_batches_that_do_not_fit_are_refused(
    snapshot: Snapshot | None, entries: tuple[Entry, ...], match: str
) -> None:
    s = MemoryStorage()
    s.persist(None, snap(3, 1), ents(4, 5))
    before = s.recover()
    with pytest.raises(StorageError, match=match):
        s.persist(HS2, snapshot, entries)
    with pytest.raises(StorageError, match=match):
        s.stage(HS2, snapshot, entries)
    assert s.recover() == before
    s.persist(None, None, ents(6, 6))  # a refused batch does not disturb the next
    assert s.last_index() == 6


def test_staged_batches_are_validated_against_each_other() -> None:
    s = MemoryStorage()
    s.stage(None, None, ents(1, 3))
    s.stage(None, None, ents(4, 4))  # fits only after the first staged batch
    with pytest.raises(StorageError, match="do not fit"):
        s.stage(None, None, ents(6, 6))
    s.sync()
    assert s.recover().entries == ents(1, 4)


def test_a_crash_resets_validation_to_the_durable_log() -> None:
    s = MemoryStorage()
    s.persist(None, None, ents(1, 2))
    s.stage(None, None, ents(3, 5))
    after = s.crash(keep_prefix=1)
    with pytest.raises(StorageError):
        after.persist(None, None, ents(5, 5))
    after.persist(None, None, ents(4, 4))
    assert after.last_index() == 4


def test_initial_state_and_close() -> None:
    initial = PersistentState(HS2, snap(3, 1), ents(4, 6))
    s = MemoryStorage(initial)
    assert s.recover() == initial
    s.close()
    with pytest.raises(StorageError, match="closed"):
        s.persist(None, None, ents(7, 7))


# ---- against a naive model -------------------------------------------------------------


@dataclass
class _Model:
    """The obvious implementation: copy everything, apply in order."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    log: dict[int, Entry] = field(default_factory=dict)

    def apply(self, hs: HardState | None, sn: Snapshot | None, es: tuple[Entry, ...]) -> None:
        if sn is not None:
            self.snapshot, self.log = sn, {}
        if es:
            self.log = {i: e for i, e in self.log.items() if i < es[0].index}
            self.log.update({e.index: e for e in es})
        if hs is not None:
            self.hard_state = hs

    def copy(self) -> _Model:
        return _Model(self.hard_state, self.snapshot, dict(self.log))

    def state(self) -> PersistentState:
        base = self.snapshot.metadata.index if self.snapshot else 0
        hs = self.hard_state
        if hs.commit < base:
            hs = HardState(hs.term, hs.voted_for, base)
        return PersistentState(hs, self.snapshot, tuple(self.log[i] for i in sorted(self.log)))


@pytest.mark.parametrize("seed", range(20))
def test_recover_equals_what_was_synced(seed: int) -> None:
    rng = random.Random(seed)
    s, durable = MemoryStorage(), _Model()
    staged: list[tuple[HardState | None, Snapshot | None, tuple[Entry, ...]]] = []
    term = 1
    for _ in range(150):
        current = durable.copy()
        for batch in staged:
            current.apply(*batch)
        cur = current.state()
        base = cur.snapshot.metadata.index if cur.snapshot else 0
        last = cur.entries[-1].index if cur.entries else base
        op = rng.random()
        if op < 0.6:
            term += rng.random() < 0.2
            sn = None
            if rng.random() < 0.08:
                sn = snap(last + rng.randint(1, 5), term)
                base = last = sn.metadata.index
            first = rng.randint(base + 1, last + 1)
            es = ents(first, first + rng.randint(0, 4), term) if rng.random() < 0.9 else ()
            hs = HardState(term, rng.choice([None, "a", "b"]), 0) if rng.random() < 0.5 else None
            latest = next((b[0] for b in reversed(staged) if b[0] is not None), None)
            latest = latest or durable.state().hard_state
            commit_only = (
                hs is not None
                and sn is None
                and not es
                and (hs.term, hs.voted_for) == (latest.term, latest.voted_for)
            )
            if commit_only:  # persist queues it like DiskStorage: durable with the next batch
                s.persist(hs, sn, es)
                staged.append((hs, sn, es))
            elif rng.random() < 0.5:
                s.persist(hs, sn, es)
                for batch in staged:
                    durable.apply(*batch)
                durable.apply(hs, sn, es)
                staged = []
            else:
                s.stage(hs, sn, es)
                staged.append((hs, sn, es))
        elif op < 0.7:
            s.sync()
            for batch in staged:
                durable.apply(*batch)
            staged = []
        elif op < 0.8 and not staged:
            d = durable.state()
            d_base = d.snapshot.metadata.index if d.snapshot else 0
            if d.entries:
                e = rng.choice(d.entries)
                if e.index > d_base:
                    s.save_snapshot(snap(e.index, e.term))
                    durable.snapshot = snap(e.index, e.term)
                    durable.log = {i: x for i, x in durable.log.items() if i > e.index}
        else:
            keep = rng.choice([None, 0, 1, 3, 100])
            s = s.crash(keep)
            if keep is not None:
                budget = keep
                for _hs, sn, es in staged:
                    cut = es[:budget]
                    budget -= len(cut)
                    durable.apply(None, sn, cut)
                    if len(cut) < len(es):
                        break
            staged = []
        assert s.recover() == durable.state(), (seed, op)
        assert s.last_index() == (
            durable.state().entries[-1].index if durable.log else s.base_index()
        )
