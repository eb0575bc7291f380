"""Recovery from damaged segments: torn tails are cut and reported, anything else is corruption.

The rule under test (``sidecar.storage.wal``): a record that cannot be read is
a torn tail only when it is in the last segment and no whole record that
starts a batch (one write and one fsync) follows it; then the file is cut back
to the last good record, durably. Everywhere else ``CorruptionError`` names
the file and the damaged record's offset. Out-of-order damage inside the
final batch is in ``test_wal_torn_batch.py``.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pytest

from sidecar.raft import Entry
from sidecar.storage.errors import CorruptionError
from sidecar.storage.fs import FileSystem, OsFileSystem
from sidecar.storage.record import RecordKind, decode_at, encode
from sidecar.storage.wal import TornTail, WriteAheadLog
from tests.storage.faultfs import CrashFileSystem
from tests.storage.test_wal import D, copy_fs, make_entries, record_offsets, snapshot_files


def _build() -> tuple[dict[str, bytes], list[Entry]]:
    """A log of several segments; the last one holds a header, a commit and 6 entries."""
    fs = CrashFileSystem()
    wal, _ = WriteAheadLog.open(fs, D, segment_bytes=200)
    entries: list[Entry] = []
    for i in range(10):
        batch = make_entries(len(entries) + 1, 3, 1 + i // 4)
        wal.append(batch, commit=len(entries) + 1)
        entries += batch
    tail = make_entries(len(entries) + 1, 6, 4)
    wal.append(tail)
    entries += tail
    wal.close()
    files = snapshot_files(fs)
    assert len(files) >= 4
    return files, entries


FILES, ENTRIES = _build()
NAMES = sorted(FILES)
LAST = NAMES[-1]


def _index_of(buf: bytes, start: int) -> int | None:
    decoded = decode_at(buf, start)
    assert isinstance(decoded, tuple)
    rec = decoded[0]
    return rec.index if rec.kind is RecordKind.ENTRY else None


def _open_os(tmp: Path, files: dict[str, bytes]) -> tuple[FileSystem, str]:
    directory = tmp / f"wal{len(os.listdir(tmp))}"
    directory.mkdir()
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return OsFileSystem(), str(directory)


@pytest.mark.parametrize("backend", ["crashfs", "os"])
def test_truncation_at_every_offset_of_the_last_three_records(backend: str, tmp_path: Path) -> None:
    buf = FILES[LAST]
    records = record_offsets(buf)
    assert len(records) >= 5
    for cut in range(records[-3][0], len(buf) + 1):
        files = dict(FILES)
        files[LAST] = buf[:cut]
        if backend == "crashfs":
            fs: FileSystem = copy_fs(files)
            directory = D
        else:
            fs, directory = _open_os(tmp_path, files)
        wal, got = WriteAheadLog.open(fs, directory)
        complete = [(s, e) for s, e in records if e <= cut]
        good_end = complete[-1][1]
        last_index = max(i for s, _ in complete if (i := _index_of(buf, s)) is not None)
        assert got.entries == ENTRIES[:last_index], f"cut at {cut}"
        path = posixpath.join(directory, LAST)
        if cut == good_end:
            assert got.torn_tail is None, f"cut at {cut}"
        else:
            assert got.torn_tail == TornTail(path, good_end, cut - good_end), f"cut at {cut}"
        # The cut is durable, and the log goes on from there.
        if isinstance(fs, CrashFileSystem):
            assert fs.crash().read_bytes(path) == buf[:good_end]
        else:
            assert fs.read_bytes(path) == buf[:good_end]
        wal.append(make_entries(last_index + 1, 1, 9))
        wal.close()
        after = fs.crash() if isinstance(fs, CrashFileSystem) else fs
        _, again = WriteAheadLog.open(after, directory)
        assert again.torn_tail is None
        assert again.entries == [*ENTRIES[:last_index], *make_entries(last_index + 1, 1, 9)]


def _flip(files: dict[str, bytes], name: str, pos: int) -> dict[str, bytes]:
    damaged = bytearray(files[name])
    damaged[pos] ^= 0xFF
    return {**files, name: bytes(damaged)}


@pytest.mark.parametrize("name", NAMES[1:-1] + NAMES[:1])
def test_flipped_byte_in_an_earlier_segment_is_corruption(name: str) -> None:
    buf = FILES[name]
    records = record_offsets(buf)
    assert len(records) >= 2
    for start, end in records:
        for pos in range(start, end):
            with pytest.raises(CorruptionError) as err:
                WriteAheadLog.open(copy_fs(_flip(FILES, name, pos)), D)
            assert err.value.path == posixpath.join(D, name), f"byte {pos}"
            assert start <= err.value.offset < end, f"byte {pos}: {err.value}"


def _final_batch(buf: bytes) -> int:
    """The position (in ``record_offsets``) of the first record of the final batch."""
    starts = []
    for k, (start, _) in enumerate(record_offsets(buf)):
        decoded = decode_at(buf, start)
        assert isinstance(decoded, tuple)
        if decoded[0].batch_start:
            starts.append(k)
    return starts[-1]


def test_flipped_byte_before_the_final_batch_of_the_last_segment_is_corruption() -> None:
    records = record_offsets(FILES[LAST])
    final = _final_batch(FILES[LAST])
    assert final == 2  # header and commit (the roll's batch), then the 6 tail entries
    for start, end in records[:final]:
        for pos in range(start, end):
            with pytest.raises(CorruptionError) as err:
                WriteAheadLog.open(copy_fs(_flip(FILES, LAST, pos)), D)
            assert err.value.path == posixpath.join(D, LAST), f"byte {pos}"
            assert start <= err.value.offset < end, f"byte {pos}: {err.value}"


def test_flipped_byte_in_the_final_record_reads_as_a_torn_tail() -> None:
    # Indistinguishable from a torn write, hence cut off (and reported), never trusted.
    buf = FILES[LAST]
    start, end = record_offsets(buf)[-1]
    for pos in range(start, end):
        fs = copy_fs(_flip(FILES, LAST, pos))
        _, got = WriteAheadLog.open(fs, D)
        assert got.entries == ENTRIES[:-1], f"byte {pos}"
        assert got.torn_tail == TornTail(posixpath.join(D, LAST), start, end - start)


def test_flipped_byte_anywhere_in_the_final_batch_reads_as_a_torn_tail() -> None:
    # Later records of the batch stay intact, as when a disk persists a batch's sectors
    # out of order; the damage cannot be told from that, so it is cut (and reported).
    buf = FILES[LAST]
    records = record_offsets(buf)
    for start, end in records[_final_batch(buf) :]:
        index = _index_of(buf, start)
        assert index is not None
        for pos in range(start, end):
            _, got = WriteAheadLog.open(copy_fs(_flip(FILES, LAST, pos)), D)
            assert got.entries == ENTRIES[: index - 1], f"byte {pos}"
            assert got.torn_tail == TornTail(posixpath.join(D, LAST), start, len(buf) - start)


def test_zeros_after_the_last_record_are_a_torn_tail_but_a_batch_after_them_is_not() -> None:
    buf = FILES[LAST]
    zeros = {**FILES, LAST: buf + bytes(100)}
    _, got = WriteAheadLog.open(copy_fs(zeros), D)
    assert got.entries == ENTRIES
    assert got.torn_tail == TornTail(posixpath.join(D, LAST), len(buf), 100)
    # A batch whose first record is lost: the rest of it is still a torn tail.
    more = encode(RecordKind.ENTRY, len(ENTRIES) + 2, 4, b"\x01late")
    _, got = WriteAheadLog.open(copy_fs({**FILES, LAST: buf + bytes(30) + more}), D)
    assert got.entries == ENTRIES
    assert got.torn_tail == TornTail(posixpath.join(D, LAST), len(buf), 30 + len(more))
    # A batch starting after the damage: the damage was acknowledged.
    more = encode(RecordKind.ENTRY, len(ENTRIES) + 2, 4, b"\x01late", batch_start=True)
    hole = {**FILES, LAST: buf + bytes(30) + more}
    with pytest.raises(CorruptionError) as err:
        WriteAheadLog.open(copy_fs(hole), D)
    assert err.value.offset == len(buf)


def test_torn_header_of_a_new_last_segment_drops_the_segment() -> None:
    header_end = record_offsets(FILES[LAST])[0][1]
    for cut in range(header_end):
        files = {**FILES, LAST: FILES[LAST][:cut]}
        fs = copy_fs(files)
        wal, got = WriteAheadLog.open(fs, D)
        last_index = int(LAST[21:37], 16) - 1
        assert got.entries == ENTRIES[:last_index], f"cut at {cut}"
        assert got.torn_tail == TornTail(posixpath.join(D, LAST), 0, cut)
        assert LAST not in fs.crash().listdir(D)
        wal.append(make_entries(last_index + 1, 2, 9))
        wal.close()
        _, again = WriteAheadLog.open(fs.crash(), D)
        assert again.entries == ENTRIES[:last_index] + make_entries(last_index + 1, 2, 9)


def test_damaged_header_of_the_only_segment_after_compaction_is_corruption() -> None:
    # Once older segments are gone, a torn header of the only one cannot be a newborn
    # segment: dropping it would silently empty the log.
    files = {LAST: FILES[LAST][:10]}
    with pytest.raises(CorruptionError):
        WriteAheadLog.open(copy_fs(files), D)


def test_stillborn_first_segment_gives_an_empty_log() -> None:
    first = NAMES[0]
    for cut in (0, 5):
        fs = copy_fs({first: FILES[first][:cut]})
        wal, got = WriteAheadLog.open(fs, D)
        assert got.entries == []
        assert got.torn_tail is not None
        wal.append(make_entries(1, 1, 1))
        wal.close()
        _, again = WriteAheadLog.open(fs.crash(), D)
        assert again.entries == make_entries(1, 1, 1)
