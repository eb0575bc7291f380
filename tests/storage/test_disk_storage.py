"""DiskStorage: the WAL, the hard-state file and the snapshot store as one.

What the node relies on: what ``persist`` acknowledged survives any crash;
recovery cross-checks the parts; a full disk stops the node cleanly and a
restart once space is back loses nothing acknowledged.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sidecar.raft import (
    Entry,
    EntryKind,
    HardState,
    Membership,
    PersistentState,
    Snapshot,
    SnapshotMetadata,
)
from sidecar.storage.disk import DiskStorage
from sidecar.storage.errors import CorruptionError, StorageIOError
from sidecar.storage.snapshots import SnapshotStore
from tests.storage.faultfs import CrashFileSystem

MEMBERS = Membership(frozenset({"a", "b", "c"}))


def entries(first: int, count: int, term: int) -> list[Entry]:
    return [
        Entry(term, i, EntryKind.NORMAL, b"cmd-%d-%d" % (i, term))
        for i in range(first, first + count)
    ]


def snapshot_at(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMetadata(index, term, MEMBERS), b"state-%d" % index)


def reopen(fs: CrashFileSystem, segment_bytes: int = 4096) -> tuple[DiskStorage, PersistentState]:
    storage = DiskStorage("/data", fs, segment_bytes=segment_bytes)
    return storage, storage.recover()


def test_roundtrip_on_the_real_disk(tmp_path: Path) -> None:
    storage = DiskStorage(str(tmp_path / "node"), segment_bytes=512)
    assert storage.recover() == PersistentState(HardState(), None, ())
    log = entries(1, 40, 1)
    storage.persist(HardState(1, "a", 0), None, log[:20])
    storage.persist(HardState(1, "a", 15), None, log[20:])
    storage.close()

    again = DiskStorage(str(tmp_path / "node"), segment_bytes=512)
    state = again.recover()
    assert state.hard_state == HardState(1, "a", 15)
    assert list(state.entries) == log
    assert len(os.listdir(tmp_path / "node" / "wal")) > 1, "small segments roll over"


def test_a_commit_only_change_rides_with_the_next_fsync() -> None:
    """The commit index alone is queued without an fsync (Raft never needs it
    for safety): a crash may lose it, never an entry; the next append, or a
    clean close, makes it durable."""
    fs = CrashFileSystem()
    storage, _ = reopen(fs)
    storage.persist(HardState(1, "a", 0), None, entries(1, 5, 1))
    syncs = fs.syncs
    storage.persist(HardState(1, "a", 5), None, [])
    assert fs.syncs == syncs, "no fsync for a commit-only change"
    _, crashed = reopen(fs.crash())
    assert crashed.hard_state.commit == 0 and len(crashed.entries) == 5

    fs = CrashFileSystem()
    storage, _ = reopen(fs)
    storage.persist(HardState(1, "a", 0), None, entries(1, 5, 1))
    storage.persist(HardState(1, "a", 5), None, [])
    storage.persist(None, None, entries(6, 1, 1))
    _, state = reopen(fs.crash())
    assert state.hard_state.commit == 5, "durable with the next append"

    fs = CrashFileSystem()
    storage, _ = reopen(fs)
    storage.persist(HardState(1, "a", 0), None, entries(1, 5, 1))
    storage.persist(HardState(1, "a", 4), None, [])
    storage.close()
    _, state = reopen(fs.crash())
    assert state.hard_state.commit == 4, "a clean close flushes it"


def test_conflicting_suffix_is_replaced_durably() -> None:
    """Raft §5.3: a follower's diverging uncommitted suffix is overwritten; the
    truncation is durable together with the entries that replace it."""
    fs = CrashFileSystem()
    storage, _ = reopen(fs)
    storage.persist(HardState(1, None, 3), None, entries(1, 10, 1))
    storage.persist(HardState(2, None, 3), None, entries(5, 2, 2))
    _, state = reopen(fs.crash())
    assert [(e.index, e.term) for e in state.entries] == [(i, 1) for i in range(1, 5)] + [
        (5, 2),
        (6, 2),
    ]
    assert state.hard_state.term == 2


def test_received_snapshot_replaces_the_log() -> None:
    fs = CrashFileSystem()
    storage, _ = reopen(fs)
    storage.persist(HardState(1, None, 2), None, entries(1, 5, 1))
    storage.persist(HardState(3, None, 50), snapshot_at(50, 3), entries(51, 2, 3))
    _, state = reopen(fs.crash())
    assert state.snapshot == snapshot_at(50, 3)
    assert [e.index for e in state.entries] == [51, 52]
    assert state.hard_state.commit == 50


def test_crash_between_received_snapshot_and_log_reset_drops_the_other_history() -> None:
    """The snapshot file is durable before the RESET record; if the node dies in
    between, the old entries after the snapshot index (another term there) must
    not come back as if they followed the snapshot."""
    fs = CrashFileSystem()
    storage, _ = reopen(fs)
    storage.persist(HardState(2, None, 3), None, entries(1, 20, 2))
    SnapshotStore(fs, "/data/snapshots").save(snapshot_at(10, 3))  # what persist does first
    fs = fs.crash()
    storage2, state = reopen(fs)
    assert state.snapshot is not None and state.snapshot.metadata.index == 10
    assert state.entries == ()
    storage2.persist(None, None, entries(11, 1, 3))
    _, state = reopen(fs.crash())
    assert [(e.index, e.term) for e in state.entries] == [(11, 3)]


def test_log_agreeing_with_the_snapshot_is_kept() -> None:
    fs = CrashFileSystem()
    storage, _ = reopen(fs)
    storage.persist(HardState(2, None, 12), None, entries(1, 20, 2))
    storage.save_snapshot(snapshot_at(12, 2))
    _, state = reopen(fs.crash())
    assert state.snapshot == snapshot_at(12, 2)
    assert [e.index for e in state.entries] == list(range(13, 21))


def test_restart_after_compaction_keeps_indices_and_terms_monotonic() -> None:
    """Fencing tokens are log indices: after compaction and a restart the log must
    continue from the same last index and term, never restart lower."""
    fs = CrashFileSystem()
    storage, _ = reopen(fs, segment_bytes=1024)
    term = 1
    for round_ in range(6):
        first = round_ * 50 + 1
        storage.persist(HardState(term, "a", first - 1), None, entries(first, 50, term))
        storage.save_snapshot(snapshot_at(first + 39, term))
        term += 1
    before = sorted(fs.listdir("/data/wal"))
    _, state = reopen(fs.crash(), segment_bytes=1024)
    assert state.snapshot is not None and state.snapshot.metadata.index == 290
    assert state.entries[0].index == 291 and state.entries[-1].index == 300
    assert state.entries[-1].term == 6 and state.hard_state.term == 6
    assert len(before) < 10, f"compaction keeps disk use bounded: {before}"


def test_disk_full_stops_cleanly_and_restart_loses_nothing_acknowledged() -> None:
    fs = CrashFileSystem()
    storage, _ = reopen(fs)
    acknowledged = entries(1, 30, 1)
    storage.persist(HardState(1, "a", 10), None, acknowledged)
    fs.fail_after_bytes = fs.bytes_written + 100  # the disk fills up
    with pytest.raises(StorageIOError, match="No space left"):
        storage.persist(HardState(1, "a", 20), None, entries(31, 50, 1))
    with pytest.raises(StorageIOError):  # never retried into an unknown state
        storage.persist(None, None, entries(31, 1, 1))

    restarted = fs.crash()  # the node exits; space is freed; it starts again
    storage2, state = reopen(restarted)
    assert list(state.entries[:30]) == acknowledged
    assert state.hard_state.term == 1 and state.hard_state.voted_for == "a"
    storage2.persist(None, None, entries(state.entries[-1].index + 1, 5, 2))
    _, state = reopen(restarted.crash())
    assert state.entries[-1].term == 2


def test_failed_fsync_is_never_swallowed() -> None:
    fs = CrashFileSystem()
    storage, _ = reopen(fs)
    storage.persist(HardState(1, None, 0), None, entries(1, 3, 1))
    fs.fail_sync = True
    with pytest.raises(StorageIOError, match="Input/output error"):
        storage.persist(HardState(1, None, 2), None, entries(4, 3, 1))
    _, state = reopen(fs.crash())
    assert [e.index for e in state.entries][:3] == [1, 2, 3]


@dataclass
class _Model:
    """What the storage acknowledged: it must all be there after any crash."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot_index: int = 0
    log: dict[int, Entry] = field(default_factory=dict)


@pytest.mark.parametrize("seed", range(60))
def test_random_crashes_lose_nothing_acknowledged(seed: int) -> None:
    rng = random.Random(seed)
    fs = CrashFileSystem()
    storage, _ = reopen(fs, segment_bytes=rng.choice([512, 2048, 1 << 20]))
    model = _Model()
    term = 1
    for _ in range(rng.randint(20, 80)):
        in_flight_from = None  # the first index a failing write may have changed
        last = max(model.log, default=model.snapshot_index)
        commit = model.hard_state.commit
        roll = rng.random()
        try:
            if rng.random() < 0.05:
                fs.fail_after_bytes = fs.bytes_written + rng.randint(0, 300)
            if roll < 0.6:
                first = rng.randint(max(commit, model.snapshot_index) + 1, last + 1)
                if first <= last:
                    term += 1  # only a new leader overwrites
                batch = entries(first, rng.randint(1, 12), term)
                in_flight_from = first
                new_commit = rng.randint(commit, max(commit, first - 1))
                hs = HardState(term, rng.choice(["a", "b", None]), new_commit)
                storage.persist(hs, None, batch)
                for i in [i for i in model.log if i >= first]:
                    del model.log[i]
                model.log.update({e.index: e for e in batch})
                model.hard_state = hs
            elif roll < 0.8 and commit > model.snapshot_index:
                index = rng.randint(model.snapshot_index + 1, commit)
                storage.save_snapshot(snapshot_at(index, model.log[index].term))
                model.log = {i: e for i, e in model.log.items() if i > index}
                model.snapshot_index = index
            elif roll < 0.85:
                index = last + rng.randint(1, 20)
                in_flight_from = model.snapshot_index + 1
                term += 1
                hs = HardState(term, None, index)
                storage.persist(hs, snapshot_at(index, term), [])
                model.log, model.snapshot_index, model.hard_state = {}, index, hs
            else:
                fs = fs.crash()
                storage, state = reopen(fs)
                _check(seed, model, state)
        except StorageIOError:
            fs.fail_after_bytes = None
            fs = fs.crash()
            storage, state = reopen(fs)
            _check(seed, model, state, in_flight_from)
            model = _adopt(state)
    _, state = reopen(fs.crash())
    _check(seed, model, state)


def _check(
    seed: int, model: _Model, state: PersistentState, in_flight_from: int | None = None
) -> None:
    """Everything acknowledged is there; a failed write may have changed its own range."""
    got = {e.index: e for e in state.entries}
    for index, entry in model.log.items():
        if in_flight_from is not None and index >= in_flight_from:
            continue
        assert got.get(index) == entry, f"seed {seed}: acknowledged entry {index} lost or changed"
    snap = state.snapshot.metadata.index if state.snapshot else 0
    assert snap >= model.snapshot_index, f"seed {seed}: snapshot went back"
    assert state.hard_state.term >= model.hard_state.term, f"seed {seed}: term went back"
    if state.hard_state.term == model.hard_state.term:
        assert state.hard_state.voted_for == model.hard_state.voted_for, f"seed {seed}: vote lost"
    assert state.hard_state.commit >= model.hard_state.commit, f"seed {seed}: commit went back"


def _adopt(state: PersistentState) -> _Model:
    """After a failed write, the unacknowledged part may or may not have landed."""
    return _Model(
        state.hard_state,
        state.snapshot.metadata.index if state.snapshot else 0,
        {e.index: e for e in state.entries},
    )


def test_corrupt_hard_state_stops_recovery_naming_the_file() -> None:
    fs = CrashFileSystem()
    storage, _ = reopen(fs)
    storage.persist(HardState(4, "b", 0), None, entries(1, 2, 4))
    raw = bytearray(fs.read_bytes("/data/hardstate"))
    raw[len(raw) // 2] ^= 0xFF
    f = fs.open_truncate("/data/hardstate")
    f.write(bytes(raw))
    with pytest.raises(CorruptionError, match="/data/hardstate"):
        reopen(fs)


def test_inspect_command_verifies_checksums(tmp_path: Path) -> None:
    """`raft-sidecar storage inspect DIR`: exit 0 and the facts on a sound
    directory; exit 1 naming the file when a checksum fails."""
    data = tmp_path / "node"
    storage = DiskStorage(str(data), segment_bytes=1024)
    storage.recover()
    for first in range(1, 200, 20):
        storage.persist(HardState(3, "a", first - 1), None, entries(first, 20, 3))
    storage.close()
    command = [sys.executable, "-m", "sidecar.cli", "storage", "inspect", str(data)]

    sound = subprocess.run(command, capture_output=True, text=True, check=False)
    assert sound.returncode == 0, sound.stdout + sound.stderr
    assert "term 3" in sound.stdout and "200" in sound.stdout

    segment = sorted((data / "wal").iterdir())[1]
    raw = bytearray(segment.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    segment.write_bytes(bytes(raw))
    broken = subprocess.run(command, capture_output=True, text=True, check=False)
    assert broken.returncode == 1, broken.stdout
    assert segment.name in broken.stdout
    assert segment.read_bytes() == bytes(raw), "inspect must not repair anything"


def test_an_append_larger_than_the_write_buffer_after_a_commit_only_change(
    tmp_path: Path,
) -> None:
    """A commit-only record waits in the buffer for the next fsync. An append
    that does not fit beside it (over 8 MiB) used to wait for room that
    nobody would make: the node hung (seen with one 9 MiB append). It must
    flush the buffer itself and complete."""
    storage = DiskStorage(str(tmp_path / "node"))
    storage.recover()
    storage.persist(HardState(1, "a", 0), None, entries(1, 1, 1))
    storage.persist(HardState(1, "a", 1), None, [])
    big = Entry(1, 2, EntryKind.NORMAL, b"y" * (9 << 20))
    appended = threading.Event()

    def append() -> None:
        storage.persist(HardState(1, "a", 1), None, [big])
        appended.set()

    threading.Thread(target=append, daemon=True).start()
    assert appended.wait(30), "the append never completed"
    storage.close()
    state = DiskStorage(str(tmp_path / "node")).recover()
    assert state.entries[-1] == big and state.hard_state.commit == 1
