"""``inspect_directory``: reports every part of a data directory and never modifies it."""

from __future__ import annotations

import posixpath
from typing import Any

import pytest

from sidecar.raft import Entry, HardState, Membership, Snapshot, SnapshotMetadata
from sidecar.storage import inspect as inspect_module
from sidecar.storage.errors import CorruptionError, StorageIOError
from sidecar.storage.fs import WritableFile
from sidecar.storage.hardstate import HardStateFile
from sidecar.storage.identity import IdentityStore
from sidecar.storage.inspect import ScratchOverlay, format_report, inspect_directory
from sidecar.storage.snapshots import SnapshotStore
from sidecar.storage.wal import TornTail, WalContents, WriteAheadLog
from tests.storage.faultfs import CrashFileSystem

DIR = "/data"
SNAPS = "/data/snapshots"
WAL = "/data/wal"
SEG1 = "/data/wal/wal-0000000000000001-0000000000000001.log"
SEG2 = "/data/wal/wal-0000000000000002-0000000000000006.log"


class ReadOnlyFS:
    """Lets reads through to ``inner``; any mutation fails the test."""

    def __init__(self, inner: CrashFileSystem) -> None:
        self.inner = inner

    def _refuse(self, op: str, path: str) -> None:
        raise AssertionError(f"inspect tried to {op} {path}")

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def read_bytes(self, path: str) -> bytes:
        return self.inner.read_bytes(path)

    def makedirs(self, path: str) -> None:
        self._refuse("create", path)

    def open_append(self, path: str) -> WritableFile:
        self._refuse("open for append", path)
        raise AssertionError  # unreachable

    def open_truncate(self, path: str) -> WritableFile:
        self._refuse("open for writing", path)
        raise AssertionError  # unreachable

    def rename(self, src: str, dst: str) -> None:
        self._refuse("rename", src)

    def unlink(self, path: str) -> None:
        self._refuse("unlink", path)

    def sync_dir(self, path: str) -> None:
        self._refuse("sync", path)


def _write(fs: CrashFileSystem, path: str, data: bytes) -> None:
    fs.makedirs(posixpath.dirname(path))
    f = fs.open_truncate(path)
    f.write(data)
    f.sync()
    f.close()
    fs.sync_dir(posixpath.dirname(path))


def _snap(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMetadata(index, term, Membership(frozenset({"a", "b"}))), b"sm")


def _files(fs: CrashFileSystem) -> dict[str, bytes]:
    """Every file of the data directory with its bytes (CrashFileSystem lists files only)."""
    return {
        posixpath.join(d, name): fs.read_bytes(posixpath.join(d, name))
        for d in (DIR, SNAPS, WAL)
        if fs.exists(d)
        for name in fs.listdir(d)
    }


@pytest.fixture
def fs() -> CrashFileSystem:
    fs = CrashFileSystem()
    fs.makedirs(DIR)
    HardStateFile(fs, DIR).save(HardState(term=3, voted_for="a", commit=7))
    store = SnapshotStore(fs, SNAPS)
    store.save(_snap(2, 1))
    store.save(_snap(4, 2))
    _write(fs, SEG1, b"segment one bytes")
    _write(fs, SEG2, b"segment two, with a torn tail")
    return fs


class _FakeWal:
    def close(self) -> None:
        pass


def _fake_open(fs: Any, wal_dir: str) -> tuple[_FakeWal, WalContents]:
    """Stands in for WriteAheadLog.open: recovery cuts a torn tail and drops a segment."""
    names = fs.listdir(wal_dir)
    last = posixpath.join(wal_dir, names[-1])
    size = len(fs.read_bytes(last))
    f = fs.open_append(last)
    f.truncate(size - 10)
    f.sync()
    f.close()
    fs.unlink(posixpath.join(wal_dir, names[0]))
    fs.sync_dir(wal_dir)
    assert len(fs.read_bytes(last)) == size - 10  # the WAL sees its own changes
    assert fs.listdir(wal_dir) == names[1:]
    entries = [Entry(2 if i < 7 else 3, i) for i in range(5, 10)]
    return _FakeWal(), WalContents(entries, 8, 4, 2, TornTail(last, size - 10, 10))


@pytest.fixture
def fake_wal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspect_module, "_open_wal", _fake_open)


def test_a_missing_directory_is_reported() -> None:
    report = inspect_directory(ReadOnlyFS(CrashFileSystem()), "/nowhere")
    assert not report.exists
    assert "does not exist" in format_report(report)


def test_an_empty_directory_is_a_fresh_node() -> None:
    fs = CrashFileSystem()
    fs.makedirs(DIR)
    report = inspect_directory(ReadOnlyFS(fs), DIR)
    assert report.exists and report.hard_state is None and report.snapshots == ()
    assert report.wal is None and report.wal_error is None
    text = format_report(report)
    assert "hard state: none" in text and "no segments" in text


def test_the_identity_is_shown_and_a_damaged_one_fails_verification() -> None:
    fs = CrashFileSystem()
    store = IdentityStore(DIR, fs)
    identity, _ = store.load_or_create(cluster="pay", node="s0")
    decided = store.decide(identity, (identity.server_id, "s1~0123456789abcdef"))
    report = inspect_directory(ReadOnlyFS(fs), DIR)
    assert report.identity == decided and report.verified
    text = format_report(report)
    assert f"incarnation {identity.incarnation}" in text and "bootstrapped with" in text
    path = posixpath.join(DIR, "identity")
    data = fs.read_bytes(path).replace(b'"pay"', b'"pax"')
    f = fs.open_truncate(path)
    f.write(data)
    f.sync()
    f.close()
    damaged = inspect_directory(ReadOnlyFS(fs), DIR)
    assert not damaged.verified and "identity: CORRUPT" in format_report(damaged)


@pytest.mark.usefixtures("fake_wal")
def test_reports_every_part_and_changes_nothing(fs: CrashFileSystem) -> None:
    before = _files(fs)
    report = inspect_directory(ReadOnlyFS(fs), DIR)
    assert _files(fs) == before

    assert report.hard_state == HardState(term=3, voted_for="a", commit=7)
    assert report.hard_state_error is None
    assert [(s.index, s.term, s.ok) for s in report.snapshots] == [(2, 1, True), (4, 2, True)]
    wal = report.wal
    assert wal is not None
    assert (wal.first_index, wal.last_index, wal.first_term, wal.last_term) == (5, 9, 2, 3)
    assert (wal.commit, wal.reset_index, wal.reset_term) == (8, 4, 2)
    assert wal.torn_tail == TornTail(SEG2, len(b"segment two, with a torn tail") - 10, 10)
    assert [(s.name, s.size) for s in wal.segments] == [
        (posixpath.basename(SEG1), len(b"segment one bytes")),
        (posixpath.basename(SEG2), len(b"segment two, with a torn tail")),
    ]
    assert any(a.startswith(f"truncate {SEG2}") for a in wal.recovery_actions)
    assert f"remove {SEG1}" in wal.recovery_actions

    text = format_report(report)
    for fragment in (
        "hard state: term 3, voted for a, commit 7",
        "index 4  term 2",
        "entries 5..9, terms 2..3, commit 8",
        "restarts after a snapshot at index 4 term 2",
        f"torn tail: 10 bytes at byte 19 of {posixpath.basename(SEG2)}",
        "recovery at the next start would (not done by inspect)",
        posixpath.basename(SEG2),
    ):
        assert fragment in text, (fragment, text)
    assert "CORRUPT" not in text and "TODO" not in text


@pytest.mark.usefixtures("fake_wal")
def test_corruption_is_reported_per_part(fs: CrashFileSystem) -> None:
    _write(fs, "/data/hardstate", b"RSHS garbage")
    newest = SnapshotStore(fs, SNAPS).list()[-1].path
    data = bytearray(fs.read_bytes(newest))
    data[8] ^= 0x40
    _write(fs, newest, bytes(data))
    report = inspect_directory(ReadOnlyFS(fs), DIR)
    assert report.hard_state is None
    assert report.hard_state_error is not None and "/data/hardstate" in report.hard_state_error
    assert [s.ok for s in report.snapshots] == [True, False]
    assert report.snapshots[1].error is not None and newest in report.snapshots[1].error
    text = format_report(report)
    assert "hard state: CORRUPT" in text
    assert "the newest snapshot is corrupt: the node will refuse to start" in text


def test_a_wal_that_cannot_be_read_is_reported(
    fs: CrashFileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_open(fs: Any, wal_dir: str) -> Any:
        raise CorruptionError(SEG1, 12, "checksum mismatch")

    monkeypatch.setattr(inspect_module, "_open_wal", broken_open)
    report = inspect_directory(ReadOnlyFS(fs), DIR)
    assert report.wal is None and report.wal_error is not None
    assert f"{SEG1} at byte 12" in report.wal_error
    assert len(report.wal_segments) == 2
    assert "UNREADABLE" in format_report(report)


@pytest.mark.usefixtures("fake_wal")
def test_leftover_temporary_files_are_reported_and_kept(fs: CrashFileSystem) -> None:
    _write(fs, "/data/hardstate.tmp", b"partial")
    tmp_snap = posixpath.join(SNAPS, "snap-0000000000000009-0000000000000003.snap.tmp")
    _write(fs, tmp_snap, b"partial")
    report = inspect_directory(ReadOnlyFS(fs), DIR)
    assert report.hard_state_leftover
    assert report.snapshot_leftovers == (tmp_snap,)
    assert fs.exists("/data/hardstate.tmp") and fs.exists(tmp_snap)
    text = format_report(report)
    assert "leftover hardstate.tmp" in text and "leftover snap-0000000000000009" in text


TORN = b"\x07half a record"


def test_a_torn_tail_of_the_real_wal_is_reported_not_cut() -> None:
    fs = CrashFileSystem()
    fs.makedirs(DIR)
    wal, _ = WriteAheadLog.open(fs, WAL)
    entries = [Entry(1, 1), Entry(1, 2), Entry(2, 3)]
    wal.append(entries, commit=2)
    wal.close()
    (segment,) = fs.listdir(WAL)
    seg_path = posixpath.join(WAL, segment)
    good = fs.read_bytes(seg_path)
    f = fs.open_append(seg_path)
    f.write(TORN)  # a write the power cut tore
    f.sync()
    f.close()
    before = _files(fs)

    report = inspect_directory(ReadOnlyFS(fs), DIR)
    assert _files(fs) == before
    wal_report = report.wal
    assert wal_report is not None, report.wal_error
    assert (wal_report.first_index, wal_report.last_index, wal_report.commit) == (1, 3, 2)
    assert (wal_report.first_term, wal_report.last_term) == (1, 2)
    assert wal_report.torn_tail is not None
    assert wal_report.torn_tail.offset == len(good)
    assert any(a.startswith(f"truncate {seg_path}") for a in wal_report.recovery_actions)
    assert [s.size for s in wal_report.segments] == [len(good) + len(TORN)]
    assert f"torn tail: {len(TORN)} bytes at byte {len(good)}" in format_report(report)

    # The real recovery afterwards still finds (and cuts) the same tail.
    wal, contents = WriteAheadLog.open(fs, WAL)
    wal.close()
    assert contents.entries == entries and contents.torn_tail == wal_report.torn_tail
    assert fs.read_bytes(seg_path) == good


def test_the_scratch_overlay_keeps_changes_to_itself() -> None:
    base = CrashFileSystem()
    _write(base, "/d/a", b"aaaa")
    _write(base, "/d/b", b"bbbb")
    overlay = ScratchOverlay(ReadOnlyFS(base))
    f = overlay.open_append("/d/a")
    f.write(b"++")
    f.truncate(3)
    overlay.rename("/d/a", "/d/c")
    overlay.unlink("/d/b")
    g = overlay.open_truncate("/d/new")
    g.write(b"n")
    overlay.makedirs("/e")
    overlay.sync_dir("/d")
    assert overlay.listdir("/d") == ["c", "new"]
    assert overlay.read_bytes("/d/c") == b"aaa"
    assert not overlay.exists("/d/a") and not overlay.exists("/d/b")
    assert overlay.exists("/e") and overlay.listdir("/e") == []
    with pytest.raises(StorageIOError):
        overlay.read_bytes("/d/b")
    with pytest.raises(StorageIOError):
        overlay.unlink("/d/a")
    assert base.listdir("/d") == ["a", "b"]
    assert base.read_bytes("/d/a") == b"aaaa" and base.read_bytes("/d/b") == b"bbbb"
    assert overlay.actions == [
        "write 2 bytes to /d/a",
        "truncate /d/a from 6 to 3 bytes",
        "rename /d/a to /d/c",
        "remove /d/b",
        "create /d/new",
        "write 1 bytes to /d/new",
        "create directory /e",
    ]
