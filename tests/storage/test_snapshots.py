"""The snapshot store: roundtrip, retention, corruption, crash atomicity, disk faults."""

from __future__ import annotations

import errno
import posixpath
import struct

import pytest

from sidecar.raft import Membership, Snapshot, SnapshotMetadata
from sidecar.storage.checksum import crc32c
from sidecar.storage.errors import CorruptionError, StorageError, StorageIOError
from sidecar.storage.snapshots import SnapshotStore, encode_header, snapshot_file_name
from tests.storage.faultfs import CrashFileSystem
from tests.storage.test_hardstate import RecordingFS

DIR = "/data/snapshots"


def snap(index: int, term: int, data: bytes = b"", learners: tuple[str, ...] = ()) -> Snapshot:
    membership = Membership(frozenset({"sidecar-2", "sidecar-0", "sidecar-1"}), frozenset(learners))
    return Snapshot(SnapshotMetadata(index, term, membership), data)


def path_of(s: Snapshot) -> str:
    return posixpath.join(DIR, snapshot_file_name(s.metadata.index, s.metadata.term))


def _fs_with(*snapshots: Snapshot) -> CrashFileSystem:
    fs = CrashFileSystem()
    fs.makedirs(DIR)
    store = SnapshotStore(fs, DIR)
    for s in snapshots:
        store.save(s)
    return fs


OLD = snap(10, 2, b"old state machine")
NEW = snap(20, 3, b"new state machine, a little longer", learners=("sidecar-3",))


@pytest.mark.parametrize(
    "s",
    [
        snap(1, 1),
        snap(5, 2, b"\x00\xff" * 100, learners=("l-1", "l-0")),
        Snapshot(SnapshotMetadata(2**64 - 1, 2**64 - 1, Membership(frozenset({"ü"}))), b"x"),
    ],
)
def test_roundtrip_survives_a_crash(s: Snapshot) -> None:
    fs = _fs_with(s)
    assert SnapshotStore(fs, DIR).load_latest() == s
    assert SnapshotStore(fs.crash(), DIR).load_latest() == s


def test_file_name_and_list_report_index_term_size() -> None:
    fs = _fs_with(OLD, NEW)
    assert fs.listdir(DIR) == [
        "snap-000000000000000a-0000000000000002.snap",
        "snap-0000000000000014-0000000000000003.snap",
    ]
    infos = SnapshotStore(fs, DIR).list()
    assert [(i.index, i.term, i.ok, i.error) for i in infos] == [
        (10, 2, True, None),
        (20, 3, True, None),
    ]
    assert [i.size for i in infos] == [len(fs.read_bytes(i.path)) for i in infos]
    assert infos[1].size == len(encode_header(NEW)) + len(NEW.data) + 4


def test_an_empty_or_missing_store_has_no_snapshot() -> None:
    fs = CrashFileSystem()
    assert SnapshotStore(fs, DIR).load_latest() is None
    assert SnapshotStore(fs, DIR).list() == []
    fs.makedirs(DIR)
    assert SnapshotStore(fs, DIR).load_latest() is None


def test_load_latest_returns_the_newest() -> None:
    assert SnapshotStore(_fs_with(OLD, NEW), DIR).load_latest() == NEW


@pytest.mark.parametrize("retain", [1, 2, 3])
def test_only_the_newest_retain_files_are_kept(retain: int) -> None:
    fs = CrashFileSystem()
    store = SnapshotStore(fs, DIR, retain=retain)
    saved = [snap(i * 10, i) for i in range(1, 6)]
    for s in saved:
        store.save(s)
    assert fs.listdir(DIR) == sorted(posixpath.basename(path_of(s)) for s in saved[-retain:])
    assert store.load_latest() == saved[-1]


def test_retain_must_be_positive() -> None:
    with pytest.raises(ValueError, match="retain"):
        SnapshotStore(CrashFileSystem(), DIR, retain=0)


def test_an_older_snapshot_is_refused() -> None:
    fs = _fs_with(NEW)
    with pytest.raises(StorageError, match="older"):
        SnapshotStore(fs, DIR).save(OLD)
    with pytest.raises(StorageError, match="older"):
        SnapshotStore(fs, DIR).save(snap(20, 2))
    SnapshotStore(fs, DIR).save(NEW)  # the same one again is harmless
    assert SnapshotStore(fs, DIR).load_latest() == NEW


def test_every_flipped_byte_is_detected_with_file_and_offset() -> None:
    fs = _fs_with(NEW)
    path = path_of(NEW)
    good = fs.read_bytes(path)
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0xFF
        f = fs.open_truncate(path)
        f.write(bytes(bad))
        f.close()
        with pytest.raises(CorruptionError) as info:
            SnapshotStore(fs, DIR).load_latest()
        assert info.value.path == path, i
        assert 0 <= info.value.offset <= len(good), i
        (listed,) = SnapshotStore(fs, DIR).list()
        assert not listed.ok and listed.error == str(info.value), i


def test_every_truncation_is_detected() -> None:
    fs = _fs_with(NEW)
    path = path_of(NEW)
    good = fs.read_bytes(path)
    for size in range(len(good)):
        f = fs.open_truncate(path)
        f.write(good[:size])
        f.close()
        with pytest.raises(CorruptionError) as info:
            SnapshotStore(fs, DIR).load_latest()
        assert info.value.path == path


def test_a_corrupt_newest_snapshot_never_falls_back_to_an_older_one() -> None:
    fs = _fs_with(OLD, NEW)
    path = path_of(NEW)
    data = bytearray(fs.read_bytes(path))
    data[-10] ^= 1
    f = fs.open_truncate(path)
    f.write(bytes(data))
    f.close()
    with pytest.raises(CorruptionError) as info:
        SnapshotStore(fs, DIR).load_latest()
    assert info.value.path == path
    assert "checksum" in info.value.reason


def test_a_file_whose_name_disagrees_with_its_header_is_corrupt() -> None:
    fs = _fs_with(OLD)
    fs.rename(path_of(OLD), path_of(snap(11, 2)))
    with pytest.raises(CorruptionError, match="file name"):
        SnapshotStore(fs, DIR).load_latest()


@pytest.mark.parametrize("retain", [1, 2])
def test_a_crash_at_any_point_of_save_leaves_old_or_new(retain: int) -> None:
    fs = RecordingFS(_fs_with(snap(5, 1), OLD))
    SnapshotStore(fs, DIR, retain=retain).save(NEW)
    assert any(op.startswith("unlink") for op in fs.ops)  # retention ran
    seen = []
    for k, image in enumerate(fs.images):
        loaded = SnapshotStore(image, DIR).load_latest()  # never raises
        assert loaded in (OLD, NEW), (k, fs.ops[:k])
        seen.append(loaded)
    assert seen[0] == OLD
    assert seen[-1] == NEW, "save returned before the new snapshot was durable"
    # Deleting old files waits until the new one is durable.
    first_unlink = next(i for i, op in enumerate(fs.ops) if op.startswith("unlink"))
    assert fs.ops[first_unlink - 1] == f"sync_dir {DIR}"


def test_disk_full_at_any_byte_keeps_the_old_snapshot() -> None:
    size = len(encode_header(NEW)) + len(NEW.data) + 4
    for budget in range(size):
        fs = _fs_with(OLD)
        fs.fail_after_bytes = fs.bytes_written + budget
        with pytest.raises(StorageIOError) as info:
            SnapshotStore(fs, DIR).save(NEW)
        assert info.value.cause.errno == errno.ENOSPC
        assert SnapshotStore(fs.crash(), DIR).load_latest() == OLD, budget
        store = SnapshotStore(fs, DIR)
        assert store.leftovers()  # the partial .tmp file
        assert store.load_latest() == OLD, budget
        assert store.leftovers() == []  # load_latest removed it
        assert [i.index for i in store.list()] == [10]


def test_fsync_failure_keeps_the_old_snapshot() -> None:
    fs = _fs_with(OLD)
    fs.fail_sync = True
    with pytest.raises(StorageIOError) as info:
        SnapshotStore(fs, DIR).save(NEW)
    assert info.value.cause.errno == errno.EIO
    assert SnapshotStore(fs, DIR).load_latest() == OLD
    assert SnapshotStore(fs.crash(), DIR).load_latest() == OLD


def test_list_ignores_foreign_and_temporary_files() -> None:
    fs = _fs_with(OLD)
    for name in ("README", "snap-1-1.snap", path_of(NEW) + ".tmp"):
        f = fs.open_truncate(posixpath.join(DIR, name))
        f.write(b"junk")
        f.close()
    store = SnapshotStore(fs, DIR)
    assert [i.index for i in store.list()] == [10]
    assert store.leftovers() == [path_of(NEW) + ".tmp"]
    assert store.load_latest() == OLD


def test_unsorted_members_under_a_valid_checksum_are_corrupt() -> None:
    body = (
        struct.pack("<4sHQQ", b"RSSN", 1, 10, 2)
        + struct.pack("<I", 2)
        + b"\x01\x00b\x01\x00a"  # voters "b", "a": not sorted
        + struct.pack("<I", 0)
        + struct.pack("<Q", 0)
    )
    fs = _fs_with()
    f = fs.open_truncate(path_of(OLD))
    f.write(body + struct.pack("<I", crc32c(body)))
    f.close()
    with pytest.raises(CorruptionError, match="sorted") as info:
        SnapshotStore(fs, DIR).load_latest()
    assert info.value.offset == 22
