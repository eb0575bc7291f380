"""Crash campaign: random workloads, power cuts at random file-system operations, recovery.

Each seed runs a few *epochs* on one simulated disk. An epoch opens the log
through ``PowerCut``, which lets a random number of mutating file-system
operations through and then cuts the power: it takes ``CrashFileSystem.crash()``
(only fsynced bytes and dir-synced names survive), lets some of each file's
unsynced bytes reach the disk (a torn write: a random prefix, or random
"sectors" of it in any order, the lost ones read as zeros), may persist a not
yet synced create or unlink, and fails every later operation. The workload
appends (with overwrites of the uncommitted suffix), records commits, resets,
compacts and rolls segments (small ``segment_bytes``).

After each cut the log is reopened and compared with a model: every
acknowledged call is there; of the call in flight, at most a prefix of its
records; indices are contiguous. A failure prints its seed and the command
that replays it (``run_seed(N)``); ``-k seed_N`` selects it under pytest.
"""

from __future__ import annotations

import errno
import posixpath
import random
from dataclasses import dataclass, field, replace

import pytest

from sidecar.raft import Entry
from sidecar.storage.errors import StorageIOError
from sidecar.storage.fs import WritableFile
from sidecar.storage.wal import WalContents, WriteAheadLog
from tests.storage.faultfs import CrashFile, CrashFileSystem
from tests.storage.test_wal import D, make_entries

SEEDS = 200


class _Cut(Exception):
    pass


class PowerCut:
    """A FileSystem that loses power after ``budget`` mutating operations."""

    def __init__(self, inner: CrashFileSystem, budget: int, rng: random.Random) -> None:
        self.inner = inner
        self.budget = budget
        self.rng = rng
        self.after: CrashFileSystem | None = None

    def tick(self, path: str) -> None:
        if self.after is None:
            self.budget -= 1
            if self.budget >= 0:
                return
            self.after = self._cut()
        raise StorageIOError("power cut", path, OSError(errno.EIO, "power cut"))

    def _cut(self) -> CrashFileSystem:
        after = self.inner.crash()
        rng = self.rng
        if not self.inner.exists(D):
            return after
        durable = set(after.listdir(D)) if after.exists(D) else set()
        current = set(self.inner.listdir(D))
        for name in sorted(current | durable):
            path = posixpath.join(D, name)
            if name not in durable:
                if rng.random() < 0.3:  # the create reached the disk, some of the data too
                    data = self.inner.read_bytes(path)
                    keep = rng.random() < 0.7 and data
                    _put(after, path, _tear(data, rng) if keep else data[: rng.randint(0, 4)])
                continue
            if name not in current:
                if rng.random() < 0.5:  # the unlink reached the disk before its dir sync
                    after.unlink(path)
                    after.sync_dir(D)
                continue
            old, new = after.read_bytes(path), self.inner.read_bytes(path)
            if len(new) > len(old) and new.startswith(old) and rng.random() < 0.6:
                _put(after, path, old + _tear(new[len(old) :], rng))
        return after

    # ---- FileSystem ----------------------------------------------------------

    def makedirs(self, path: str) -> None:
        self.tick(path)
        self.inner.makedirs(path)

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def read_bytes(self, path: str) -> bytes:
        return self.inner.read_bytes(path)

    def open_append(self, path: str) -> WritableFile:
        self.tick(path)
        return _CutFile(self, path, self.inner.open_append(path))

    def open_truncate(self, path: str) -> WritableFile:
        self.tick(path)
        return _CutFile(self, path, self.inner.open_truncate(path))

    def rename(self, src: str, dst: str) -> None:
        self.tick(src)
        self.inner.rename(src, dst)

    def unlink(self, path: str) -> None:
        self.tick(path)
        self.inner.unlink(path)

    def sync_dir(self, path: str) -> None:
        self.tick(path)
        self.inner.sync_dir(path)


def _tear(unsynced: bytes, rng: random.Random) -> bytes:
    """What of ``unsynced`` (written, not fsynced, one batch) a power cut leaves on disk."""
    roll = rng.random()
    if roll < 0.3:  # sectors persisted out of order: any subset of them
        sector = rng.choice([7, 16, 64])
        return b"".join(
            unsynced[i : i + sector] if rng.random() < 0.5 else bytes(len(unsynced[i : i + sector]))
            for i in range(0, len(unsynced), sector)
        )
    torn = unsynced[: rng.randint(1, len(unsynced))]
    if roll < 0.45:
        torn = bytes(len(torn))  # blocks allocated, data never written
    return torn


def _put(fs: CrashFileSystem, path: str, data: bytes) -> None:
    f = fs.open_truncate(path)
    f.write(data)
    f.sync()
    fs.sync_dir(posixpath.dirname(path))


class _CutFile:
    def __init__(self, owner: PowerCut, path: str, inner: CrashFile) -> None:
        self.owner, self.path, self.inner = owner, path, inner

    def write(self, data: bytes) -> None:
        if self.owner.after is None and self.owner.budget == 0:
            # The cut lands in the middle of this write: part of it is in the page cache.
            self.inner.write(data[: self.owner.rng.randint(0, len(data))])
        self.owner.tick(self.path)
        self.inner.write(data)

    def sync(self) -> None:
        self.owner.tick(self.path)
        self.inner.sync()

    def truncate(self, size: int) -> None:
        self.owner.tick(self.path)
        self.inner.truncate(size)

    def tell(self) -> int:
        return self.inner.tell()

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True)
class Model:
    """What the log must hold: the live entries above ``base``, and what was recorded."""

    base: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reset_index: int = 0
    reset_term: int = 0
    compacted: int = 0
    """The highest snapshot index handed to compact(): the log may start anywhere up to it."""

    @property
    def last(self) -> int:
        return self.base + len(self.entries)

    @property
    def floor(self) -> int:
        return max(self.commit, self.base, self.compacted)

    def append(self, entries: list[Entry], commit: int | None) -> Model:
        kept = self.entries
        if entries:
            kept = kept[: entries[0].index - self.base - 1] + tuple(entries)
        new = replace(self, entries=kept)
        if commit is not None and commit > self.commit:
            new = replace(new, commit=commit)
        return new

    def term_at_last(self) -> int:
        return self.entries[-1].term if self.entries else self.reset_term


@dataclass
class Step:
    """A call and the states the log may be in if the power is cut during it."""

    describe: str
    run: object
    outcomes: list[Model] = field(default_factory=list)


def _matches(got: WalContents, wal: WriteAheadLog, m: Model) -> bool:
    first = wal.first_index
    if wal.last_index != m.last or not m.base <= first - 1 <= max(m.base, m.compacted):
        return False
    if got.entries != [e for e in m.entries if e.index >= first]:
        return False
    if got.commit != m.commit:
        return False
    if got.reset_index != m.reset_index:
        # The segment holding the last RESET may be compacted away (documented).
        return got.reset_index < m.reset_index <= m.compacted
    return got.reset_term == m.reset_term


def _check(got: WalContents, wal: WriteAheadLog, candidates: list[Model], seed: int) -> Model:
    indices = [e.index for e in got.entries]
    assert indices == list(range(wal.first_index, wal.last_index + 1)), f"seed {seed}: {indices}"
    for m in candidates:
        if _matches(got, wal, m):
            return m
    raise AssertionError(
        f"seed {seed}: recovered log matches no allowed state\n"
        f"got first={wal.first_index} last={wal.last_index} commit={got.commit} "
        f"reset={got.reset_index}/{got.reset_term} "
        f"entries={[(e.index, e.term) for e in got.entries]}\n"
        f"allowed: {[(m.base, m.last, m.commit, m.reset_index, m.compacted) for m in candidates]}\n"
        f"replay: python -c 'from tests.storage.test_wal_crash import run_seed; run_seed({seed})'"
    )


def _one_step(
    wal: WriteAheadLog, m: Model, rng: random.Random, term: int, inflight: list[Model]
) -> tuple[Model, int]:
    """Run one random call. Returns the model after it; raises StorageIOError on a cut.

    Before the call, ``inflight`` is set to every state the log may recover to if it fails.
    """
    roll = rng.random()
    if roll < 0.45 or not m.entries:  # append new entries, maybe with a commit
        batch = make_entries(m.last + 1, rng.randint(1, 5), max(term, m.term_at_last() or 1), rng)
        commit = rng.randint(m.commit, batch[-1].index) if rng.random() < 0.5 else None
        inflight[:] = _prefixes(m, batch, commit)
        wal.append(batch, commit)
        return m.append(batch, commit), term
    if roll < 0.6 and m.last > m.floor:  # overwrite the uncommitted suffix in a new term
        term += 1
        start = rng.randint(m.floor + 1, m.last)
        batch = make_entries(start, rng.randint(1, 4), term, rng)
        inflight[:] = _prefixes(m, batch, None)
        wal.append(batch)
        return m.append(batch, None), term
    if roll < 0.7:  # one entry through the group-commit path
        data = rng.randbytes(rng.randint(0, 30))
        t = max(term, m.term_at_last() or 1)
        entry = Entry(t, m.last + 1, data=data)
        inflight[:] = [m, m.append([entry], None)]
        assert wal.append_data(data, t) == m.last + 1
        return m.append([entry], None), term
    if roll < 0.8:  # a commit alone
        commit = rng.randint(m.commit, m.last)
        inflight[:] = [m, m.append([], commit)]
        wal.append([], commit)
        return m.append([], commit), term
    if roll < 0.88:  # a received snapshot replaces the log
        term += 1
        index = rng.randint(max(1, m.floor), m.last + 5)
        after = replace(m, base=index, entries=(), reset_index=index, reset_term=term)
        inflight[:] = [m, after]
        wal.reset(index, term)
        return after, term
    snapshot = rng.randint(0, m.commit)
    after = replace(m, compacted=max(m.compacted, snapshot))
    inflight[:] = [after]
    wal.compact(snapshot)
    return after, term


def _prefixes(m: Model, batch: list[Entry], commit: int | None) -> list[Model]:
    out = [m] + [m.append(batch[:k], None) for k in range(1, len(batch) + 1)]
    if commit is not None:
        out.append(m.append(batch, commit))
    return out


def run_seed(seed: int) -> None:
    rng = random.Random(seed)
    inflight: list[Model] = []
    disk = CrashFileSystem()
    m = Model()
    term = 1
    for _epoch in range(rng.randint(2, 5)):
        cut = PowerCut(disk, rng.randint(0, 80), rng)
        segment_bytes = rng.choice([100, 200, 400, 4096])
        inflight[:] = [m]
        try:
            wal, got = WriteAheadLog.open(cut, D, segment_bytes=segment_bytes)
            m = _check(got, wal, [m], seed)
            for _ in range(rng.randint(1, 40)):
                m, term = _one_step(wal, m, rng, term, inflight)
                inflight[:] = [m]
            if rng.random() < 0.3:
                wal.close()
        except StorageIOError as exc:
            assert cut.after is not None, f"seed {seed}: unexpected {exc!r}"
        disk = cut.after if cut.after is not None else disk.crash()
        wal, got = WriteAheadLog.open(disk, D, segment_bytes=segment_bytes)
        m = _check(got, wal, inflight, seed)
        wal.close()
        disk = disk.crash()


@pytest.mark.parametrize("seed", range(SEEDS), ids=lambda s: f"seed_{s}")
def test_crash_recovery(seed: int) -> None:
    run_seed(seed)
