"""The write-ahead log: round trips, truncation, reset, compaction, group commit, faults.

Damage (torn tails, flipped bytes) is in ``test_wal_damage.py``; the crash
campaign in ``test_wal_crash.py``. The helpers at the top are shared with them.
"""

from __future__ import annotations

import itertools
import posixpath
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import sidecar.storage.wal as wal_module
from sidecar.raft import Entry, EntryKind
from sidecar.storage.errors import CorruptionError, StorageError, StorageIOError
from sidecar.storage.fs import FileSystem, OsFileSystem, WritableFile
from sidecar.storage.record import Damage, decode_at
from sidecar.storage.wal import (
    TruncationBelowCommit,
    WalContents,
    WalUsageError,
    WriteAheadLog,
)
from tests.storage.faultfs import CrashFileSystem

D = "/data/wal"

# ---- helpers shared by the storage test modules ----------------------------


def make_entries(
    first: int, count: int, term: int, rng: random.Random | None = None
) -> list[Entry]:
    rng = rng or random.Random(first * 7919 + term)
    kinds = list(EntryKind)
    return [
        Entry(term, i, rng.choice(kinds), rng.randbytes(rng.randint(0, 40)))
        for i in range(first, first + count)
    ]


def segments(fs: FileSystem, directory: str = D) -> list[str]:
    return [posixpath.join(directory, n) for n in fs.listdir(directory) if n.startswith("wal-")]


def record_offsets(buf: bytes) -> list[tuple[int, int]]:
    """(start, end) of every record in a well-formed segment."""
    out: list[tuple[int, int]] = []
    offset = 0
    while offset < len(buf):
        decoded = decode_at(buf, offset)
        assert not isinstance(decoded, Damage), decoded
        out.append((offset, decoded[1]))
        offset = decoded[1]
    return out


def copy_fs(files: dict[str, bytes], directory: str = D) -> CrashFileSystem:
    """A fresh CrashFileSystem holding ``files`` (name -> bytes), all durable."""
    fs = CrashFileSystem()
    fs.makedirs(directory)
    for name, data in files.items():
        f = fs.open_truncate(posixpath.join(directory, name))
        f.write(data)
        f.sync()
        f.close()
    fs.sync_dir(directory)
    return fs


def snapshot_files(fs: FileSystem, directory: str = D) -> dict[str, bytes]:
    return {n: fs.read_bytes(posixpath.join(directory, n)) for n in fs.listdir(directory)}


def reopen(fs: FileSystem, segment_bytes: int = 256) -> tuple[WriteAheadLog, WalContents]:
    return WriteAheadLog.open(fs, D, segment_bytes=segment_bytes)


# ---- round trips -----------------------------------------------------------


def test_roundtrip_across_many_segments_survives_close_and_crash() -> None:
    fs = CrashFileSystem()
    wal, contents = reopen(fs)
    assert contents == WalContents([], 0, 0, 0, None)
    rng = random.Random(1)
    expected: list[Entry] = []
    term, commit = 1, 0
    while len(expected) < 300:
        term += rng.random() < 0.1
        batch = make_entries(len(expected) + 1, rng.randint(1, 8), term, rng)
        expected += batch
        proposed = len(expected) - rng.randint(0, 5)
        wal.append(batch, commit=proposed)
        commit = max(commit, proposed)  # a lower commit is not recorded
    commit = len(expected)
    wal.append([], commit=commit)
    assert wal.last_index == len(expected)
    assert len(segments(fs)) > 20
    # Power cut without close: everything acknowledged is durable.
    crashed = fs.crash()
    wal.close()
    for after in (fs, crashed):
        wal2, got = reopen(after)
        assert got.entries == expected
        assert got.commit == commit
        assert got.torn_tail is None
        assert (wal2.first_index, wal2.last_index) == (1, len(expected))
        wal2.close()


def test_reopened_log_keeps_appending_and_rolling() -> None:
    fs = CrashFileSystem()
    expected: list[Entry] = []
    for round_ in range(5):
        wal, got = reopen(fs, segment_bytes=200)
        assert got.entries == expected
        batch = make_entries(len(expected) + 1, 10, round_ + 1)
        wal.append(batch)
        expected += batch
        fs = fs.crash()
    _, got = reopen(fs)
    assert got.entries == expected


def test_overwrite_truncates_the_uncommitted_suffix_across_segments() -> None:
    fs = CrashFileSystem()
    wal, _ = reopen(fs, segment_bytes=150)
    wal.append(make_entries(1, 30, 1), commit=4)
    replacement = make_entries(6, 3, 2)
    wal.append(replacement)
    assert wal.last_index == 8
    wal.append(make_entries(9, 2, 2), commit=9)
    _, got = reopen(fs.crash())
    assert got.entries == make_entries(1, 5, 1) + replacement + make_entries(9, 2, 2)
    assert [e.index for e in got.entries] == list(range(1, 11))
    assert got.commit == 9


def test_overwrite_at_or_below_commit_is_refused_and_writes_nothing() -> None:
    fs = CrashFileSystem()
    wal, _ = reopen(fs)
    wal.append(make_entries(1, 10, 1), commit=6)
    syncs = fs.syncs
    with pytest.raises(TruncationBelowCommit):
        wal.append(make_entries(6, 1, 2))
    assert fs.syncs == syncs
    wal.append(make_entries(7, 1, 2))  # still usable; just above the commit is fine
    wal.close()
    wal, got = reopen(fs)
    assert [e.term for e in got.entries] == [1] * 6 + [2]
    # The recovered commit index is enforced too.
    with pytest.raises(TruncationBelowCommit):
        wal.append(make_entries(5, 1, 3))


@pytest.mark.parametrize(
    ("entries", "commit", "error"),
    [
        (make_entries(7, 1, 1), None, "index gap"),
        ([Entry(1, 6), Entry(1, 8)], None, "contiguous"),
        ([Entry(2, 6), Entry(1, 7)], None, "non-decreasing"),
        ([Entry(1, 6)], None, "term"),  # below the term 2 of index 5
        ([], 9, "beyond last index"),
    ],
)
def test_contract_violations_raise_usage_errors(
    entries: list[Entry], commit: int | None, error: str
) -> None:
    wal, _ = reopen(CrashFileSystem())
    wal.append(make_entries(1, 5, 2))
    with pytest.raises(WalUsageError, match=error):
        wal.append(entries, commit)
    assert wal.last_index == 5


def test_reset_voids_the_log_and_survives_reopen() -> None:
    fs = CrashFileSystem()
    wal, _ = reopen(fs, segment_bytes=150)
    wal.append(make_entries(1, 20, 1), commit=3)
    wal.reset(50, 4)
    assert (wal.first_index, wal.last_index) == (51, 50)
    with pytest.raises(WalUsageError, match="index gap"):
        wal.append(make_entries(52, 1, 4))
    with pytest.raises(TruncationBelowCommit):
        wal.append(make_entries(50, 1, 4))
    after = make_entries(51, 8, 5)
    wal.append(after, commit=53)
    wal2, got = reopen(fs.crash())
    assert got.entries == after
    assert (got.reset_index, got.reset_term, got.commit) == (50, 4, 53)
    assert (wal2.first_index, wal2.last_index) == (51, 58)
    # A reset to an older snapshot than the committed prefix is refused.
    with pytest.raises(WalUsageError):
        wal2.reset(52, 5)


def test_reset_may_roll_the_log_back_below_its_last_index() -> None:
    fs = CrashFileSystem()
    wal, _ = reopen(fs)
    wal.append(make_entries(1, 20, 1), commit=5)
    wal.reset(10, 3)  # a snapshot that conflicts with our uncommitted suffix
    wal.append(make_entries(11, 2, 3))
    _, got = reopen(fs.crash())
    assert got.entries == make_entries(11, 2, 3)
    assert (got.reset_index, got.commit) == (10, 5)


# ---- compaction ------------------------------------------------------------


def _segment_ranges(fs: FileSystem) -> list[tuple[str, int]]:
    """(path, first index) of every segment, from the file names."""
    return [(p, int(posixpath.basename(p)[21:37], 16)) for p in segments(fs)]


def test_compaction_deletes_only_wholly_covered_segments() -> None:
    fs = CrashFileSystem()
    wal, _ = reopen(fs, segment_bytes=200)
    expected = make_entries(1, 100, 1)
    for i in range(0, 100, 5):
        wal.append(expected[i : i + 5], commit=i + 5)
    before = _segment_ranges(fs)
    snapshot_index = 47
    # Segment k is wholly covered iff the next one starts at or below snapshot_index + 1.
    covered = [p for (p, _), (_, nxt) in itertools.pairwise(before) if nxt <= 48]
    assert 0 < len(covered) < len(before) - 1
    assert wal.compact(snapshot_index) == len(covered)
    remaining = segments(fs)
    assert remaining == [p for p, _ in before if p not in covered]
    first = _segment_ranges(fs)[0][1]
    assert first <= snapshot_index + 1
    assert wal.first_index == first
    # Appending continues; reopening (after a crash) still works and keeps the commit.
    wal.append(make_entries(101, 1, 2), commit=101)
    fs = fs.crash()
    wal2, got = reopen(fs)
    assert got.entries == expected[first - 1 :] + make_entries(101, 1, 2)
    assert got.commit == 101
    assert wal2.first_index == first
    # Never the active segment, even when the snapshot covers everything.
    present = len(segments(fs))
    deleted = wal2.compact(101)
    assert deleted == present - 1
    assert len(segments(fs.crash())) == 1
    _, got = reopen(fs.crash())
    assert got.commit == 101
    assert got.entries == [
        e for e in expected + make_entries(101, 1, 2) if e.index >= got.entries[0].index
    ]


def test_compaction_keeps_segments_a_later_overwrite_reaches_into() -> None:
    fs = CrashFileSystem()
    wal, _ = reopen(fs, segment_bytes=120)
    wal.append(make_entries(1, 6, 1))
    wal.append(make_entries(7, 6, 1))
    wal.append(make_entries(4, 2, 2))  # rewrites into the first segment's range
    wal.append(make_entries(6, 10, 2), commit=15)
    assert len(segments(fs)) > 2
    first_before = _segment_ranges(fs)
    deleted = wal.compact(12)
    # Segments whose end is <= 12 but that a later segment rewrites (index 4) stay until
    # the rewriting segment itself goes.
    _, got = reopen(fs.crash())
    assert got.entries[-1].index == 15
    assert [e.term for e in got.entries if e.index >= 4] == [2] * (
        15 - max(3, got.entries[0].index - 1)
    )
    assert deleted == len(first_before) - len(segments(fs))


def test_compaction_refuses_a_snapshot_beyond_the_log() -> None:
    wal, _ = reopen(CrashFileSystem())
    wal.append(make_entries(1, 3, 1))
    with pytest.raises(WalUsageError):
        wal.compact(4)


def test_missing_middle_segment_is_corruption_naming_the_next_file() -> None:
    fs = CrashFileSystem()
    wal, _ = reopen(fs, segment_bytes=150)
    for i in range(1, 41, 2):
        wal.append(make_entries(i, 2, 1))
    wal.close()
    paths = segments(fs)
    fs.unlink(paths[2])
    with pytest.raises(CorruptionError) as err:
        reopen(fs)
    assert err.value.path == paths[3]


def test_segment_renamed_out_of_index_chain_is_corruption() -> None:
    fs = CrashFileSystem()
    wal, _ = reopen(fs, segment_bytes=150)
    for i in range(1, 41, 2):
        wal.append(make_entries(i, 2, 1))
    wal.close()
    files = snapshot_files(fs)
    names = sorted(files)
    # Drop segment 2 and renumber the rest: seq is contiguous, indices are not.
    del files[names[2]]
    renamed = {}
    for name in names[3:]:
        seq = int(name[4:20], 16) - 1
        renamed[f"wal-{seq:016x}{name[20:]}"] = files.pop(name)
    files.update(renamed)
    with pytest.raises(CorruptionError, match="a segment is missing"):
        reopen(copy_fs(files))


# ---- group commit ----------------------------------------------------------


class SlowSync:
    """Wraps a file system so that fsync takes time and releases the GIL, like a disk."""

    def __init__(self, inner: CrashFileSystem, delay_s: float = 0.0005) -> None:
        self.inner = inner
        self.delay_s = delay_s

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def _wrap(self, f: WritableFile) -> WritableFile:
        delay = self.delay_s
        sync = f.sync

        def slow_sync() -> None:
            time.sleep(delay)
            sync()

        f.sync = slow_sync  # type: ignore[method-assign]
        return f

    def open_append(self, path: str) -> WritableFile:
        return self._wrap(self.inner.open_append(path))

    def open_truncate(self, path: str) -> WritableFile:
        return self._wrap(self.inner.open_truncate(path))


def _hammer(wal: WriteAheadLog, threads: int, per_thread: int, pad: int = 0) -> list[list[int]]:
    results: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def run(slot: int) -> None:
        try:
            start.wait()
            for n in range(per_thread):
                results[slot].append(wal.append_data(f"{slot}:{n}".encode() + bytes(pad), 1))
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    return results


def _check_group_commit(fs: FileSystem, reopened: Callable[[], FileSystem], directory: str) -> None:
    wal, _ = WriteAheadLog.open(fs, directory, segment_bytes=16 << 10)
    results = _hammer(wal, 16, 200)
    total = 16 * 200
    indices = sorted(i for r in results for i in r)
    assert indices == list(range(1, total + 1))
    for r in results:
        assert r == sorted(r), "one thread's appends must land in call order"
    assert wal.fsyncs < total, f"no grouping: {wal.fsyncs} fsyncs for {total} appends"
    _, got = WriteAheadLog.open(reopened(), directory)
    assert [e.index for e in got.entries] == list(range(1, total + 1))
    by_index = {e.index: e.data for e in got.entries}
    for slot, r in enumerate(results):
        assert [by_index[i] for i in r] == [f"{slot}:{n}".encode() for n in range(200)]


def test_group_commit_coalesces_concurrent_appends() -> None:
    fs = CrashFileSystem()
    slow = SlowSync(fs)
    wal, _ = WriteAheadLog.open(slow, D)  # type: ignore[arg-type]
    wal.close()
    _check_group_commit(slow, fs.crash, D)  # type: ignore[arg-type]


def test_group_commit_on_the_real_disk(tmp_path: Path) -> None:
    _check_group_commit(OsFileSystem(), OsFileSystem, str(tmp_path / "wal"))


def test_pending_buffer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal_module, "MAX_PENDING_BYTES", 200)
    fs = CrashFileSystem()
    slow = SlowSync(fs, delay_s=0.002)
    wal, _ = WriteAheadLog.open(slow, D)  # type: ignore[arg-type]
    biggest = 0
    original = wal._enqueue

    def spy(records: list[bytes]) -> object:
        nonlocal biggest
        group = original(records)
        biggest = max(biggest, wal._pending_bytes)
        return group

    monkeypatch.setattr(wal, "_enqueue", spy)
    _hammer(wal, 16, 10, pad=100)
    # Several appenders were refused room (else 16 records of ~130 bytes would pile up),
    # and a lone record larger than the room left is still let in.
    assert 0 < biggest <= 200 + 140, biggest
    _, got = reopen(fs.crash())
    assert len(got.entries) == 160


# ---- faults ----------------------------------------------------------------


def _fill(wal: WriteAheadLog, rng: random.Random, count: int) -> list[Entry]:
    acked: list[Entry] = []
    for _ in range(count):
        index = wal.last_index + 1
        batch = make_entries(index, rng.randint(1, 4), 1, rng)
        wal.append(batch)
        acked += batch
    return acked


@pytest.mark.parametrize("fault", ["enospc", "eio"])
def test_io_failure_is_fatal_and_loses_nothing_acknowledged(fault: str) -> None:
    rng = random.Random(fault)
    fs = CrashFileSystem()
    wal, _ = reopen(fs, segment_bytes=300)
    acked = _fill(wal, rng, 20)
    if fault == "enospc":
        fs.fail_after_bytes = fs.bytes_written + 50  # the next batch lands partially
    else:
        fs.fail_sync = True
    with pytest.raises(StorageIOError) as err:
        wal.append(make_entries(wal.last_index + 1, 5, 1, rng))
    assert err.value.cause.errno is not None
    # Every later call fails at once, including a plain commit or a reset.
    fs.fail_after_bytes, fs.fail_sync = None, False
    with pytest.raises(StorageIOError):
        wal.append_data(b"x", 1)
    with pytest.raises(StorageError):
        wal.reset(100, 2)
    with pytest.raises(StorageError):
        wal.compact(1)
    wal.close()
    # Restart without a power cut (the partial write is still in the file) and after one.
    for after in (fs, fs.crash()):
        wal2, got = reopen(after)
        assert got.entries[: len(acked)] == acked
        assert len(got.entries) in (len(acked), len(acked) + 5) if fault == "eio" else True
        assert [e.index for e in got.entries] == list(range(1, len(got.entries) + 1))
        wal2.append(make_entries(wal2.last_index + 1, 1, 1))
        wal2.close()


def test_io_failure_reaches_every_caller_of_the_group() -> None:
    fs = CrashFileSystem()
    slow = SlowSync(fs, delay_s=0.005)
    wal, _ = WriteAheadLog.open(slow, D)  # type: ignore[arg-type]
    wal.append_data(b"first", 1)
    fs.fail_sync = True
    outcomes: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            wal.append_data(b"x", 1)
            result = "ok"
        except StorageIOError:
            result = "failed"
        with lock:
            outcomes.append(result)

    workers = [threading.Thread(target=run) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert outcomes.count("failed") == 8
    _, got = reopen(fs.crash())
    assert [e.data for e in got.entries] == [b"first"]


def test_failed_segment_roll_is_fatal() -> None:
    fs = CrashFileSystem()
    wal, _ = reopen(fs, segment_bytes=100)
    acked = _fill(wal, random.Random(3), 3)
    fs.fail_sync = True  # hits the new segment's header fsync or its directory sync
    with pytest.raises(StorageIOError):
        _fill(wal, random.Random(4), 10)
    fs.fail_sync = False
    _, got = reopen(fs.crash())
    assert got.entries[: len(acked)] == acked


def test_closed_log_refuses_appends() -> None:
    wal, _ = reopen(CrashFileSystem())
    wal.close()
    wal.close()
    with pytest.raises(WalUsageError, match="closed"):
        wal.append_data(b"x", 1)


def test_open_on_the_real_disk(tmp_path: Path) -> None:
    fs = OsFileSystem()
    directory = str(tmp_path / "nested" / "wal")
    wal, _ = WriteAheadLog.open(fs, directory, segment_bytes=300)
    entries = make_entries(1, 50, 1)
    wal.append(entries, commit=50)
    wal.close()
    _, got = WriteAheadLog.open(fs, directory)
    assert got.entries == entries
    assert got.commit == 50


def test_unexpected_segment_name_is_corruption() -> None:
    fs = CrashFileSystem()
    wal, _ = reopen(fs)
    wal.close()
    f = fs.open_truncate(f"{D}/wal-zz.log")
    f.close()
    with pytest.raises(CorruptionError):
        reopen(fs)
