"""Torn group-commit batches: damage inside the final, unacknowledged batch is a torn tail.

A flush writes a batch of records with one write and one fsync. Until that
fsync returns, a disk may persist the batch's sectors in any order, so a later
record of the batch can be intact after a torn earlier one. The first record
of every batch carries ``BATCH_START``; recovery (``sidecar.storage.wal``)
cuts damage as a torn tail only when no batch starts after it, and reports
anything else as ``CorruptionError``: nothing acknowledged is ever dropped.

Single-threaded, each ``append`` is one batch, so the tests know where
batches begin from the sizes they appended.
"""

from __future__ import annotations

import posixpath
import random
import struct

import pytest

from sidecar.raft import Entry
from sidecar.storage.errors import CorruptionError
from sidecar.storage.record import Damage, Record, RecordKind, decode_at, encode
from sidecar.storage.wal import MAGIC, TornTail, WalContents, WriteAheadLog
from tests.storage.faultfs import CrashFileSystem
from tests.storage.test_wal import (
    D,
    SlowSync,
    _hammer,
    copy_fs,
    make_entries,
    record_offsets,
    segments,
    snapshot_files,
)

SIZES = (3, 1, 4, 2, 5)
"""Records of each batch (one append each), in file order after the segment header."""

Span = tuple[int, int]


def _build(sizes: tuple[int, ...] = SIZES) -> tuple[str, bytes, list[list[Span]], list[Entry]]:
    """One segment: a header, then one batch per size. Returns path, bytes, batches, entries."""
    fs = CrashFileSystem()
    wal, _ = WriteAheadLog.open(fs, D)
    entries: list[Entry] = []
    for n in sizes:
        if n == 1:  # a record written alone, through the group-commit path
            batch = [Entry(1, len(entries) + 1, data=b"lone")]
            assert wal.append_data(b"lone", 1) == len(entries) + 1
        else:
            batch = make_entries(len(entries) + 1, n, 1)
            wal.append(batch)
        entries += batch
    wal.close()
    (path,) = segments(fs)
    buf = fs.read_bytes(path)
    rest = record_offsets(buf)[1:]
    batches: list[list[Span]] = []
    for n in sizes:
        batches.append(rest[:n])
        rest = rest[n:]
    assert not rest
    return path, buf, batches, entries


def _damage(buf: bytes, start: int, end: int, style: str) -> bytes:
    """``buf`` with bytes ``start:end`` damaged: one flipped byte, zeros or garbage."""
    out = bytearray(buf)
    if style == "flip":
        out[(start + end) // 2] ^= 0xFF
    elif style == "zeros":  # a sector allocated but never written
        out[start:end] = bytes(end - start)
    else:
        out[start:end] = random.Random(start).randbytes(end - start)
    return bytes(out)


def _open(path: str, buf: bytes) -> WalContents:
    """Recover a log whose only segment is ``buf`` (stored at ``path``)."""
    _, got = WriteAheadLog.open(copy_fs({posixpath.basename(path): buf}), D)
    return got


def _record(buf: bytes, start: int) -> Record:
    decoded = decode_at(buf, start)
    assert not isinstance(decoded, Damage), decoded
    return decoded[0]


def test_each_batch_is_marked_at_its_first_record() -> None:
    _, buf, batches, _ = _build()
    assert _record(buf, 0).batch_start  # the segment header: a batch of its own
    for batch in batches:
        assert [_record(buf, s).batch_start for s, _ in batch] == [True] + [False] * (
            len(batch) - 1
        )


STYLES = ["flip", "zeros", "garbage"]
SPAN_STYLES = ["zeros", "garbage"]
"""Styles that damage every record of a span (a flip damages only one)."""


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("damaged", range(SIZES[-1] - 1))
def test_damage_in_the_final_batch_before_intact_records_of_it_is_a_torn_tail(
    damaged: int, style: str
) -> None:
    path, buf, batches, entries = _build()
    final = batches[-1]
    start, end = final[damaged]
    broken = _damage(buf, start, end, style)
    assert not isinstance(decode_at(broken, final[-1][0]), Damage)  # later records intact
    fs = copy_fs({posixpath.basename(path): broken})
    wal, got = WriteAheadLog.open(fs, D)
    # Everything before the damaged record: all earlier batches, plus the intact prefix
    # of the unacknowledged final batch.
    kept = sum(SIZES[:-1]) + damaged
    assert got.entries == entries[:kept]
    assert got.torn_tail == TornTail(path, start, len(buf) - start)
    assert fs.crash().read_bytes(path) == buf[:start]  # the cut is durable
    more = make_entries(kept + 1, 2, 2)
    wal.append(more)
    wal.close()
    _, again = WriteAheadLog.open(fs.crash(), D)
    assert again.torn_tail is None
    assert again.entries == entries[:kept] + more


@pytest.mark.parametrize("style", SPAN_STYLES)
def test_lost_first_sectors_of_the_final_batch_cut_it_back_to_the_previous_batch(
    style: str,
) -> None:
    # The batch's first sectors never reached the disk but its later ones did.
    path, buf, batches, entries = _build()
    final = batches[-1]
    start = final[0][0]
    broken = _damage(buf, start, final[2][1], style)
    fs = copy_fs({posixpath.basename(path): broken})
    _, got = WriteAheadLog.open(fs, D)
    assert got.entries == entries[: sum(SIZES[:-1])]
    assert got.torn_tail == TornTail(path, start, len(buf) - start)
    assert fs.crash().read_bytes(path) == buf[:start]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("batch", [2, 3])
def test_same_damage_in_a_batch_that_is_not_the_last_is_corruption(batch: int, style: str) -> None:
    # Batch 2 (4 records) and 3 (2 records) were acknowledged: later batches follow them.
    path, buf, batches, _ = _build()
    for start, end in batches[batch][:-1]:
        with pytest.raises(CorruptionError) as err:
            _open(path, _damage(buf, start, end, style))
        assert (err.value.path, err.value.offset) == (path, start)


@pytest.mark.parametrize("style", STYLES)
def test_damage_anywhere_in_an_acknowledged_batch_is_corruption(style: str) -> None:
    path, buf, batches, _ = _build()
    for batch in batches[:-1]:
        for start, end in batch:  # first, middle and last records of each batch
            with pytest.raises(CorruptionError) as err:
                _open(path, _damage(buf, start, end, style))
            assert (err.value.path, err.value.offset) == (path, start)


@pytest.mark.parametrize("style", STYLES)
def test_damaged_end_of_an_acknowledged_batch_before_a_lone_final_record_is_corruption(
    style: str,
) -> None:
    # Damaged: the last record of batch 0 (acknowledged). After it: one record written
    # alone, which is also the file's last record. Marking batch *ends* could not tell
    # this from a torn batch of three; marking batch starts can.
    path, buf, batches, _ = _build((3, 1))
    start, end = batches[0][-1]
    with pytest.raises(CorruptionError) as err:
        _open(path, _damage(buf, start, end, style))
    assert (err.value.path, err.value.offset) == (path, start)
    # The same bytes with the lone record torn too: a torn tail, cut at the damage.
    got = _open(path, _damage(buf, start, len(buf), "zeros" if style == "flip" else style))
    assert got.torn_tail == TornTail(path, start, len(buf) - start)


def _rolled() -> tuple[dict[str, bytes], str, list[Entry]]:
    """Several segments; the last one holds only its header and a commit (one batch)."""
    fs = CrashFileSystem()
    wal, _ = WriteAheadLog.open(fs, D, segment_bytes=150)
    entries: list[Entry] = []
    while len(segments(fs)) < 3:
        batch = make_entries(len(entries) + 1, 3, 1)
        wal.append(batch, commit=len(entries) + 1)
        entries += batch
    files = snapshot_files(fs)
    last = max(files)
    assert len(record_offsets(files[last])) > 2
    return files, last, entries


def test_damaged_header_before_its_intact_commit_drops_the_newborn_segment() -> None:
    files, last, entries = _rolled()
    header, commit = record_offsets(files[last])[:2]
    assert _record(files[last], commit[0]).kind is RecordKind.COMMIT
    newborn = files[last][: commit[1]]  # the roll's batch only: header and commit
    fs = copy_fs({**files, last: _damage(newborn, *header, "zeros")})
    wal, got = WriteAheadLog.open(fs, D, segment_bytes=150)
    path = posixpath.join(D, last)
    assert got.torn_tail == TornTail(path, 0, len(newborn))
    assert last not in fs.crash().listdir(D)
    first = int(last[21:37], 16)
    assert got.entries == entries[: first - 1]
    wal.close()
    # With a batch after the commit, the header was acknowledged: corruption.
    with pytest.raises(CorruptionError) as err:
        WriteAheadLog.open(copy_fs({**files, last: _damage(files[last], *header, "zeros")}), D)
    assert (err.value.path, err.value.offset) == (path, 0)


def test_each_flush_marks_exactly_its_first_record() -> None:
    fs = CrashFileSystem()
    slow = SlowSync(fs)
    wal, _ = WriteAheadLog.open(slow, D, segment_bytes=4 << 10)  # type: ignore[arg-type]
    _hammer(wal, 8, 50)
    flushes = wal.fsyncs - 2 * (len(segments(fs)) - 1)  # a roll costs two fsyncs
    assert flushes < 8 * 50  # grouping happened: batches of several records
    marked = 0
    for buf in snapshot_files(fs).values():
        records = [_record(buf, s) for s, _ in record_offsets(buf)]
        assert records[0].batch_start  # every header starts a batch
        marked += sum(r.batch_start for r in records[1:] if r.kind is not RecordKind.COMMIT)
    assert marked == flushes


# ---- format version 1 (no batch flags) ----------------------------------------------

V1_HEADER = MAGIC + struct.pack("<H", 1)


def _v1_segment(entries: list[Entry]) -> bytes:
    head = encode(RecordKind.SEGMENT_HEADER, 0, 0, V1_HEADER)
    return head + b"".join(
        encode(RecordKind.ENTRY, e.index, e.term, bytes((e.kind.value,)) + e.data) for e in entries
    )


def test_version_1_segment_is_read_with_the_old_rule_and_never_appended_to() -> None:
    entries = make_entries(1, 6, 1)
    name = "wal-0000000000000000-0000000000000001.log"
    buf = _v1_segment(entries)
    records = record_offsets(buf)
    # No flags: damage followed by any whole record is corruption.
    start, end = records[3]
    with pytest.raises(CorruptionError):
        WriteAheadLog.open(copy_fs({name: _damage(buf, start, end, "zeros")}), D)
    # Damage up to the end is a torn tail.
    fs = copy_fs({name: buf[: end - 1]})
    wal, got = WriteAheadLog.open(fs, D)
    assert got.entries == entries[:2]
    assert got.torn_tail == TornTail(posixpath.join(D, name), start, end - 1 - start)
    # Appending rolls to a segment of the current version first.
    more = make_entries(3, 2, 2)
    wal.append(more)
    wal.close()
    files = snapshot_files(fs.crash())
    assert files[name] == buf[:start]
    (newer,) = set(files) - {name}
    header = _record(files[newer], 0)
    assert header.data != V1_HEADER and header.batch_start
    _, again = WriteAheadLog.open(fs.crash(), D)
    assert again.entries == entries[:2] + more
