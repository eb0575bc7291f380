"""The hard-state file: roundtrip, corruption detection, crash atomicity, disk faults."""

from __future__ import annotations

import errno

import pytest

from sidecar.raft import HardState
from sidecar.storage.errors import CorruptionError, StorageIOError
from sidecar.storage.hardstate import HardStateFile, encode_hard_state
from tests.storage.faultfs import CrashFile, CrashFileSystem

DIR = "/data"
PATH = "/data/hardstate"
TMP = "/data/hardstate.tmp"


class _RecordingFile:
    def __init__(self, fs: RecordingFS, inner: CrashFile) -> None:
        self._fs, self._inner = fs, inner

    def write(self, data: bytes) -> None:
        self._inner.write(data)
        self._fs.record(f"write {len(data)}")

    def sync(self) -> None:
        self._inner.sync()
        self._fs.record("fsync")

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)
        self._fs.record("truncate")

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        self._inner.close()


class RecordingFS:
    """Wraps a CrashFileSystem and keeps a crash image after every mutating operation.

    ``images[k]`` is what a restart would find had the power gone out right
    after the k-th operation (``images[0]``: before the first). Walking all of
    them checks every crash point of a save sequence.
    """

    def __init__(self, inner: CrashFileSystem) -> None:
        self.inner = inner
        self.images: list[CrashFileSystem] = [inner.crash()]
        self.ops: list[str] = []

    def record(self, op: str) -> None:
        self.ops.append(op)
        self.images.append(self.inner.crash())

    def makedirs(self, path: str) -> None:
        self.inner.makedirs(path)

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def read_bytes(self, path: str) -> bytes:
        return self.inner.read_bytes(path)

    def open_append(self, path: str) -> _RecordingFile:
        f = _RecordingFile(self, self.inner.open_append(path))
        self.record(f"open {path}")
        return f

    def open_truncate(self, path: str) -> _RecordingFile:
        f = _RecordingFile(self, self.inner.open_truncate(path))
        self.record(f"open-truncate {path}")
        return f

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)
        self.record(f"rename {src} {dst}")

    def unlink(self, path: str) -> None:
        self.inner.unlink(path)
        self.record(f"unlink {path}")

    def sync_dir(self, path: str) -> None:
        self.inner.sync_dir(path)
        self.record(f"sync_dir {path}")


class FailingDirSyncFS(CrashFileSystem):
    """A CrashFileSystem whose directory fsyncs fail with EIO."""

    def sync_dir(self, path: str) -> None:
        raise StorageIOError("fsync directory", path, OSError(errno.EIO, "Input/output error"))


OLD = HardState(term=3, voted_for="sidecar-1", commit=5)
NEW = HardState(term=4, voted_for="sidecar-2", commit=9)


def _fs_with(hs: HardState | None) -> CrashFileSystem:
    fs = CrashFileSystem()
    fs.makedirs(DIR)
    if hs is not None:
        HardStateFile(fs, DIR).save(hs)
    return fs


@pytest.mark.parametrize(
    "hs",
    [
        HardState(),
        HardState(term=1, voted_for=None, commit=0),
        HardState(term=7, voted_for="sidecar-0", commit=3),
        HardState(term=2**64 - 1, voted_for="nœud-ü", commit=2**64 - 1),
        HardState(term=5, voted_for="x" * 300, commit=1),
    ],
)
def test_roundtrip_survives_a_crash(hs: HardState) -> None:
    fs = _fs_with(None)
    HardStateFile(fs, DIR).save(hs)
    assert HardStateFile(fs, DIR).load() == hs
    assert HardStateFile(fs.crash(), DIR).load() == hs


def test_save_replaces_the_previous_value() -> None:
    fs = _fs_with(OLD)
    HardStateFile(fs, DIR).save(NEW)
    assert HardStateFile(fs.crash(), DIR).load() == NEW
    assert fs.listdir(DIR) == ["hardstate"]


def test_load_without_a_file_is_none() -> None:
    assert HardStateFile(_fs_with(None), DIR).load() is None


def test_an_empty_vote_is_refused_rather_than_read_back_as_none() -> None:
    with pytest.raises(ValueError, match="voted_for"):
        HardStateFile(_fs_with(None), DIR).save(HardState(term=1, voted_for=""))


def test_every_flipped_byte_is_detected_with_file_and_offset() -> None:
    fs = _fs_with(OLD)
    good = fs.read_bytes(PATH)
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0xFF
        f = fs.open_truncate(PATH)
        f.write(bytes(bad))
        f.close()
        with pytest.raises(CorruptionError) as info:
            HardStateFile(fs, DIR).load()
        assert info.value.path == PATH, i
        assert 0 <= info.value.offset <= len(good), i


def test_every_truncation_is_detected() -> None:
    fs = _fs_with(OLD)
    good = fs.read_bytes(PATH)
    for size in range(len(good)):
        f = fs.open_truncate(PATH)
        f.write(good[:size])
        f.close()
        with pytest.raises(CorruptionError) as info:
            HardStateFile(fs, DIR).load()
        assert info.value.path == PATH


@pytest.mark.parametrize("old", [None, OLD])
def test_a_crash_at_any_point_of_save_leaves_old_or_new(old: HardState | None) -> None:
    fs = RecordingFS(_fs_with(old))
    HardStateFile(fs, DIR).save(NEW)
    assert len(fs.images) >= 6  # open, write, fsync, rename, sync_dir, plus "before"
    seen = []
    for k, image in enumerate(fs.images):
        loaded = HardStateFile(image, DIR).load()  # never raises
        assert loaded in (old, NEW), (k, fs.ops[:k], loaded)
        seen.append(loaded)
    assert seen[0] == old
    assert seen[-1] == NEW, "save returned before the new value was durable"


def test_disk_full_at_any_byte_keeps_the_old_value() -> None:
    size = len(encode_hard_state(NEW))
    for budget in range(size):
        fs = _fs_with(OLD)
        fs.fail_after_bytes = fs.bytes_written + budget
        with pytest.raises(StorageIOError) as info:
            HardStateFile(fs, DIR).save(NEW)
        assert info.value.cause.errno == errno.ENOSPC
        assert HardStateFile(fs, DIR).load() == OLD, budget  # the running process too
        assert HardStateFile(fs.crash(), DIR).load() == OLD, budget


def test_fsync_failure_keeps_the_old_value() -> None:
    fs = _fs_with(OLD)
    fs.fail_sync = True
    with pytest.raises(StorageIOError) as info:
        HardStateFile(fs, DIR).save(NEW)
    assert info.value.operation == "fsync"
    assert HardStateFile(fs, DIR).load() == OLD
    assert HardStateFile(fs.crash(), DIR).load() == OLD


def test_directory_fsync_failure_is_reported_and_the_old_value_survives_a_crash() -> None:
    fs = FailingDirSyncFS()
    fs.makedirs(DIR)
    f = fs.open_truncate(PATH)
    f.write(encode_hard_state(OLD))
    f.sync()
    f.close()
    CrashFileSystem.sync_dir(fs, DIR)
    with pytest.raises(StorageIOError) as info:
        HardStateFile(fs, DIR).save(NEW)
    assert info.value.operation == "fsync directory"
    assert HardStateFile(fs.crash(), DIR).load() == OLD


def test_a_leftover_tmp_file_is_ignored_and_removed_by_load_only() -> None:
    fs = _fs_with(OLD)
    f = fs.open_truncate(TMP)
    f.write(b"half a record")
    f.close()
    hs_file = HardStateFile(fs, DIR)
    assert hs_file.read() == OLD
    assert hs_file.has_leftover()  # read() leaves it alone
    assert hs_file.load() == OLD
    assert not fs.exists(TMP)
    assert not hs_file.has_leftover()
