"""The write-ahead log of the Raft log: append-only segment files, group commit.

Theory of operation
===================

Files. The log is a sequence of segment files ``wal-{seq:016x}-{first:016x}.log``
in one directory, ``seq`` counting up from 0 with no gaps and ``first`` the
index the segment's first entry would have. Each file is a sequence of framed
records (``sidecar.storage.record``). The first record of every segment is a
SEGMENT_HEADER whose ``index``/``term`` are the last index (and its term) of
the log just before the segment, so the chain of headers proves no segment is
missing. When the log holds a commit index, a COMMIT record follows the
header, so a segment never depends on an older one for it.

Records replay like etcd's WAL: an ENTRY whose index is at most the last index
truncates the log from that index and appends; a COMMIT raises the commit
index; a RESET (a received snapshot replaced the log) voids every entry and
sets the last index. A truncation is therefore durable in the same fsync as
the entries that cause it and cannot be torn on its own. Truncating at or
below the commit index (or below a reset or compaction point) is refused when
appending and reported as corruption when replaying.

Durability. ``append`` returns only after its records were written and
fsynced. A new segment is created with its header written and fsynced, then
the directory fsynced, before any record goes into it. Files are never
preallocated, so bytes after the last good record can only be a torn write.
Every write-and-fsync is a *batch*: the first record of each carries the
``BATCH_START`` flag (format version 2), so that recovery can see where
batches begin. A segment header starts the batch that creates its segment.

Group commit. Appenders encode their records under the lock into a pending
buffer and wait. The first waiter whose records are not yet durable and finds
no flush running becomes the flusher: it takes the whole buffer, writes it
with one write and one fsync (outside the lock), then wakes everyone it
covered (it sets ``BATCH_START`` on the buffer's first record, outside the
lock). Appenders arriving meanwhile form the next group. Records reach the
disk in call order, and a batch is written only once the previous one's fsync
returned. The buffer is bounded (``MAX_PENDING_BYTES``): appenders
wait while it is full. A failed write or fsync fails every caller of that
group and every later call: after a failed fsync the file's contents are
unknown, so the log is never written again by this process.

Recovery (``open``). Segments are read in ``seq`` order; the header chain is
checked (a gap in ``seq`` or in indices names the file). Only the final batch
can be damaged by a power cut, and in any way: a disk may persist its sectors
out of order, leaving a later record of it intact after a torn earlier one.
Hence a record that cannot be read (short frame, short payload, checksum
mismatch) is a *torn tail* exactly when it is in the last segment and no
whole, checksummed record carrying ``BATCH_START`` starts anywhere after it:
no batch begins after the damage, so the damage lies in the final batch, whose
fsync never returned, and every earlier (acknowledged) batch lies before it.
The file is then truncated at the damage and fsynced (or, when even the
header of a newer last segment is damaged, the file is deleted), and
``WalContents.torn_tail`` reports what was cut, including intact records of
the final batch after the damage. Records of the final batch before the
damage are kept: a prefix of unacknowledged records is a valid log. Anywhere
else (an earlier segment, or a batch starting after the damage) it is
``CorruptionError`` naming file and offset: acknowledged data was damaged,
and the log never silently returns a shorter log. What the rule cannot tell
apart: a final batch written and fsynced intact but damaged later is cut off
like a torn one (and reported). Segments of format version 1 carry no batch
flags: there any whole record after the damage makes it corruption (the rule
of version 1), as it does after a damaged header when the segment before is
not of version 2 (the damaged segment's version is unknown). The log never
appends to a version 1 segment: it rolls to a new one first.

Compaction deletes the oldest segments once a snapshot covers them: a prefix
of closed segments can go when the log at their end is at most the snapshot
index and no later segment rewrites an index at or below that point (so the
remaining segments replay to the same log above it). Files are unlinked oldest
first with a directory fsync after each, so a crash leaves some prefix of them
deleted, never a hole; replay accepts an entry at or below the first stored
segment's start (when no RESET intervenes) as the log restarting there, which
is what such a partly deleted prefix looks like. A deleted segment may
hold the last RESET record; ``WalContents.reset_index`` is then that of an
older stored RESET (or 0), which the caller's newer snapshot supersedes.

This module logs nothing and exports no metrics: it returns facts
(``WalContents``, ``fsyncs``) and raises; the caller reports them.
"""

from __future__ import annotations

import itertools
import posixpath
import re
import struct
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from sidecar.raft import Entry, EntryKind
from sidecar.storage.errors import CorruptionError, StorageError, StorageIOError
from sidecar.storage.fs import FileSystem, WritableFile
from sidecar.storage.record import (
    Damage,
    Record,
    RecordKind,
    any_record_after,
    decode_at,
    encode,
    mark_batch_start,
)

MAGIC = b"RWAL"
FORMAT_VERSION = 2
"""2: batches start with a ``BATCH_START`` record. 1 (read, never appended to): no flags."""
HEADER_DATA = MAGIC + struct.pack("<H", FORMAT_VERSION)
_HEADER_VERSIONS = {MAGIC + struct.pack("<H", v): v for v in (1, FORMAT_VERSION)}
DEFAULT_SEGMENT_BYTES = 64 << 20
MAX_PENDING_BYTES = 8 << 20
"""Bound of the group-commit buffer; appenders wait while it is full."""

_SEGMENT_NAME = re.compile(r"wal-([0-9a-f]{16})-([0-9a-f]{16})\.log")
_ENTRY_KINDS = {kind.value: kind for kind in EntryKind}


def segment_name(seq: int, first_index: int) -> str:
    return f"wal-{seq:016x}-{first_index:016x}.log"


class WalUsageError(StorageError):
    """The caller broke the log's contract (an index gap, terms going back, use after close)."""


class TruncationBelowCommit(WalUsageError):
    """An append would overwrite a committed, reset or compacted index."""


@dataclass(frozen=True)
class TornTail:
    path: str
    offset: int
    dropped_bytes: int


@dataclass(frozen=True)
class WalContents:
    entries: list[Entry]
    """The live log after replay, contiguous, all with index > reset_index."""
    commit: int
    """The highest COMMIT record (0 if none)."""
    reset_index: int
    reset_term: int
    """From the last stored RESET record (0, 0 if none)."""
    torn_tail: TornTail | None
    """What recovery cut off, if anything."""


@dataclass
class _Segment:
    seq: int
    path: str
    base_index: int
    """Last index of the log before this segment (its header's index)."""
    base_term: int
    min_entry: int | None = None
    """Smallest index of any ENTRY record in the segment."""
    end_index: int | None = None
    """Last index at the end of the segment, once it is closed (the next base_index)."""
    version: int = FORMAT_VERSION
    """Format version from the header: records of version 1 carry no BATCH_START flags."""


class _Group:
    """Callers whose records go to disk in one write and one fsync."""

    __slots__ = ("done", "wakeup")

    def __init__(self, lock: threading.Lock) -> None:
        self.done = False
        self.wakeup = threading.Condition(lock)


class _Replay:
    """The log as records replay, checking each against what came before."""

    def __init__(self, base_index: int, base_term: int) -> None:
        self.base_index = base_index
        self.base_term = base_term
        self.entries: list[Entry] = []
        self.commit = 0
        self.reset_index = 0
        self.reset_term = 0
        self.min_entry: int | None = None
        # True until a RESET: base_index then comes from the first stored segment's header,
        # and older segments may have been compacted away (see _entry).
        self.base_from_header = True

    @property
    def last_index(self) -> int:
        return self.base_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.base_term

    def apply(self, rec: Record, path: str, at: int) -> None:
        kind, index, term = rec.kind, rec.index, rec.term
        if kind is RecordKind.ENTRY:
            self._entry(index, term, rec.data, path, at)
        elif kind is RecordKind.COMMIT:
            if index < self.commit:
                raise CorruptionError(path, at, f"commit index goes back {self.commit} -> {index}")
            if index > self.last_index:
                raise CorruptionError(
                    path, at, f"commit index {index} beyond last index {self.last_index}"
                )
            self.commit = index
        elif kind is RecordKind.RESET:
            if index < 1 or term < 1 or index < self.commit:
                raise CorruptionError(
                    path, at, f"invalid reset to {index}/{term} (commit {self.commit})"
                )
            self.entries = []
            self.base_index, self.base_term = index, term
            self.reset_index, self.reset_term = index, term
            self.base_from_header = False
        else:
            raise CorruptionError(path, at, "segment header in the middle of a segment")

    def _entry(self, index: int, term: int, data: bytes, path: str, at: int) -> None:
        if not data or data[0] not in _ENTRY_KINDS or index < 1 or term < 1:
            raise CorruptionError(path, at, f"invalid entry record {index}/{term}")
        last = self.last_index
        if index > last + 1:
            raise CorruptionError(path, at, f"index gap: entry {index} after last index {last}")
        if index <= self.commit or (index <= self.base_index and not self.base_from_header):
            raise CorruptionError(
                path,
                at,
                f"entry {index} overwrites committed or reset index "
                f"(commit {self.commit}, log starts after {self.base_index})",
            )
        if index <= self.base_index:
            # Compaction deletes segments oldest first, one durable unlink at a time, so
            # a crash can leave a prefix deleted whose later segment rewrites indices
            # below its own start. Those rewrites are newer than anything deleted: the
            # log restarts there (the term before it is unknown, hence 0).
            self.entries = []
            self.base_index, self.base_term = index - 1, 0
        del self.entries[index - self.base_index - 1 :]
        if term < self.last_term:
            raise CorruptionError(
                path, at, f"entry {index} has term {term} below the previous {self.last_term}"
            )
        self.entries.append(Entry(term, index, _ENTRY_KINDS[data[0]], data[1:]))
        if self.min_entry is None or index < self.min_entry:
            self.min_entry = index


class WriteAheadLog:
    """The durable Raft log. Create with ``open``; thread-safe.

    Raises ``StorageIOError`` when a write or fsync fails (after which every
    call raises), ``WalUsageError`` (``TruncationBelowCommit``) when a call
    breaks the contract, in which case nothing was written.
    """

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        *,
        segment_bytes: int,
        segments: list[_Segment],
        active: WritableFile,
        active_bytes: int,
        replay: _Replay,
    ) -> None:
        self._fs = fs
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._mu = threading.Lock()
        self._room = threading.Condition(self._mu)  # appenders waiting for buffer space
        # Serializes file I/O (flushes, rolls, compaction). Order: _io before _mu.
        self._io = threading.Lock()

        # -- File state: touched only by the flusher or compaction, under _io.
        self._segments = segments
        self._active = active
        self._active_bytes = active_bytes
        # The log as of the last record handed to the disk: a new segment's header.
        self._w_last_index = replay.last_index
        self._w_last_term = replay.last_term
        self._w_commit = replay.commit
        self._fsyncs = 0

        # -- Logical state, under _mu: the log including records not yet durable.
        # Invariant: _floor >= max(_commit, _base_index); no append may truncate at or below it.
        self._base_index = replay.base_index
        self._base_term = replay.base_term
        self._terms = array("Q", (e.term for e in replay.entries))
        self._commit = replay.commit
        self._floor = max(replay.commit, replay.base_index, segments[0].base_index)

        # -- Group commit, under _mu. Records in _pending belong to _gathering; the batch
        # being written (while _flushing) to _inflight.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pending_min_entry: int | None = None
        self._gathering = _Group(self._mu)
        self._inflight: _Group | None = None
        self._flushing = False
        self._failure: BaseException | None = None
        self._closed = False

    # ---- opening and recovery ----------------------------------------------

    @classmethod
    def open(
        cls, fs: FileSystem, directory: str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> tuple[WriteAheadLog, WalContents]:
        """Recover the log in ``directory`` (creating it if missing) and open it for appends.

        Raises CorruptionError when the stored log cannot be trusted (a
        checksum failure before the tail, a missing segment, an index gap),
        StorageIOError when the file system fails.
        """
        if segment_bytes < 1:
            raise WalUsageError(f"segment_bytes must be positive, got {segment_bytes}")
        directory = posixpath.normpath(directory)
        if not fs.exists(directory):
            fs.makedirs(directory)
            fs.sync_dir(posixpath.dirname(directory) or ".")
        found: list[tuple[int, int, str]] = []
        for name in fs.listdir(directory):
            if not (name.startswith("wal-") and name.endswith(".log")):
                continue
            match = _SEGMENT_NAME.fullmatch(name)
            path = posixpath.join(directory, name)
            if match is None:
                raise CorruptionError(path, 0, "not a valid segment file name")
            found.append((int(match[1], 16), int(match[2], 16), path))
        found.sort()
        if not found:
            return cls._create(fs, directory, segment_bytes)

        segments: list[_Segment] = []
        replay: _Replay | None = None
        torn: TornTail | None = None
        active_bytes = 0
        for position, (seq, first, path) in enumerate(found):
            is_last = position == len(found) - 1
            if segments and seq != segments[-1].seq + 1:
                raise CorruptionError(
                    path, 0, f"segment {segments[-1].seq + 1:016x} is missing (gap in sequence)"
                )
            buf = fs.read_bytes(path)
            decoded = decode_at(buf, 0)
            if isinstance(decoded, Damage):
                # Only a newer segment's header can be torn (created, not yet synced).
                # The very first segment may also be a log that never finished its birth.
                # The header starts a batch: a batch starting after it was acknowledged.
                newborn = bool(segments) or (seq == 0 and first == 1)
                flagged = bool(segments) and segments[-1].version >= 2
                if (
                    is_last
                    and newborn
                    and any_record_after(buf, 0, batch_start_only=flagged) is None
                ):
                    fs.unlink(path)
                    fs.sync_dir(directory)
                    torn = TornTail(path, 0, len(buf))
                    break
                raise CorruptionError(path, 0, f"bad segment header: {decoded.reason}")
            header, offset = decoded
            version = _HEADER_VERSIONS.get(header.data)
            if header.kind is not RecordKind.SEGMENT_HEADER or version is None:
                raise CorruptionError(
                    path,
                    0,
                    f"first record is not a segment header of version 1 to {FORMAT_VERSION}",
                )
            base, base_term = header.index, header.term
            if first != base + 1:
                raise CorruptionError(path, 0, f"header continues from {base}, name says {first}")
            if replay is None:
                replay = _Replay(base, base_term)
            elif (base, base_term) != (replay.last_index, replay.last_term):
                raise CorruptionError(
                    path,
                    0,
                    f"segment continues from {base}/{base_term} but the log before it ends at "
                    f"{replay.last_index}/{replay.last_term}: a segment is missing",
                )
            if segments:
                segments[-1].end_index = base
            replay.min_entry = None
            size = len(buf)
            while offset < size:
                decoded = decode_at(buf, offset)
                if isinstance(decoded, Damage):
                    # Torn iff no batch starts after the damage (in version 1: no record).
                    flagged = version >= 2
                    if is_last and any_record_after(buf, offset, batch_start_only=flagged) is None:
                        torn = TornTail(path, offset, size - offset)
                        break
                    raise CorruptionError(path, offset, decoded.reason)
                rec, end = decoded
                replay.apply(rec, path, offset)
                offset = end
            segments.append(_Segment(seq, path, base, base_term, replay.min_entry, version=version))
            active_bytes = offset

        if replay is None or not segments:  # only a stillborn first segment was found
            wal, _ = cls._create(fs, directory, segment_bytes)
            return wal, WalContents([], 0, 0, 0, torn)
        active = fs.open_append(segments[-1].path)
        if torn is not None and torn.offset > 0:
            active.truncate(active_bytes)
            active.sync()
        wal = cls(
            fs,
            directory,
            segment_bytes=segment_bytes,
            segments=segments,
            active=active,
            active_bytes=active_bytes,
            replay=replay,
        )
        contents = WalContents(
            replay.entries, replay.commit, replay.reset_index, replay.reset_term, torn
        )
        return wal, contents

    @classmethod
    def _create(
        cls, fs: FileSystem, directory: str, segment_bytes: int
    ) -> tuple[WriteAheadLog, WalContents]:
        path = posixpath.join(directory, segment_name(0, 1))
        active = fs.open_truncate(path)
        header = encode(RecordKind.SEGMENT_HEADER, 0, 0, HEADER_DATA, batch_start=True)
        active.write(header)
        active.sync()
        fs.sync_dir(directory)
        segments = [_Segment(0, path, 0, 0)]
        wal = cls(
            fs,
            directory,
            segment_bytes=segment_bytes,
            segments=segments,
            active=active,
            active_bytes=len(header),
            replay=_Replay(0, 0),
        )
        return wal, WalContents([], 0, 0, 0, None)

    # ---- appending ---------------------------------------------------------

    def append(self, entries: Sequence[Entry], commit: int | None = None) -> None:
        """Durably append ``entries`` (truncating from ``entries[0].index``) and ``commit``.

        Entries must be contiguous, start at most one past the last index and
        above the commit index; terms must not decrease. ``commit`` is
        recorded only when it raises the commit index; it must not exceed the
        last index after the append. Returns once the records are fsynced.
        Raises WalUsageError / TruncationBelowCommit (nothing written) or
        StorageIOError (the log is then unusable).
        """
        for prev, cur in itertools.pairwise(entries):
            if cur.index != prev.index + 1 or cur.term < prev.term:
                raise WalUsageError(f"entries not contiguous with non-decreasing terms: {cur}")
        records = [
            encode(RecordKind.ENTRY, e.index, e.term, bytes((e.kind.value,)) + e.data)
            for e in entries
        ]
        size = sum(map(len, records))
        with self._mu:
            self._wait_for_room(size)
            last = self._base_index + len(self._terms)
            if entries:
                first = entries[0]
                if first.index > last + 1:
                    raise WalUsageError(f"index gap: entry {first.index} after last index {last}")
                if first.index <= self._floor:
                    raise TruncationBelowCommit(
                        f"entry {first.index} would truncate at or below index {self._floor} "
                        "(committed, reset or compacted)"
                    )
                if first.term < self._term_at(first.index - 1):
                    raise WalUsageError(f"term of {first} below that of the previous entry")
                last = entries[-1].index
            if commit is not None and commit > last:
                raise WalUsageError(f"commit {commit} beyond last index {last}")
            if entries:
                del self._terms[entries[0].index - self._base_index - 1 :]
                self._terms.extend(e.term for e in entries)
                self._note_min_entry(entries[0].index)
            if commit is not None and commit > self._commit:
                self._commit = commit
                self._floor = max(self._floor, commit)
                records.append(encode(RecordKind.COMMIT, commit, 0))
            self._await(self._enqueue(records))

    def note_commit(self, commit: int) -> None:
        """Record a higher commit index *without* waiting for it to be durable.

        Raft never needs the commit index for safety (a restarted node learns
        it again from the leader); it is kept for a faster restart. So a
        commit-only change is queued and reaches the disk with the next
        append's fsync (or ``close``), instead of costing an fsync on the
        commit path. The in-memory floor against truncation rises at once.
        Raises WalUsageError for a commit beyond the last index.
        """
        with self._mu:
            self._check_usable()
            last = self._base_index + len(self._terms)
            if commit > last:
                raise WalUsageError(f"commit {commit} beyond last index {last}")
            if commit <= self._commit:
                return
            record = encode(RecordKind.COMMIT, commit, 0)
            self._wait_for_room(len(record))
            self._commit = commit
            self._floor = max(self._floor, commit)
            self._enqueue([record])

    def append_data(self, data: bytes, term: int) -> int:
        """Durably append one NORMAL entry at the next index; returns that index."""
        if term < 1:
            raise WalUsageError(f"term must be >= 1, got {term}")
        payload = b"\x01" + data  # EntryKind.NORMAL
        with self._mu:
            self._wait_for_room(len(payload) + 25)
            if term < self._term_at(self._base_index + len(self._terms)):
                raise WalUsageError(f"term {term} below that of the last entry")
            index = self._base_index + len(self._terms) + 1
            self._terms.append(term)
            self._note_min_entry(index)
            self._await(self._enqueue([encode(RecordKind.ENTRY, index, term, payload)]))
        return index

    def reset(self, index: int, term: int) -> None:
        """Durably record that a received snapshot at ``index``/``term`` replaced the log.

        The next entry appended must have index ``index + 1``. Raises
        WalUsageError when the snapshot is older than the committed or
        compacted prefix.
        """
        if index < 1 or term < 1:
            raise WalUsageError(f"reset needs index >= 1 and term >= 1, got {index}/{term}")
        record = encode(RecordKind.RESET, index, term)
        with self._mu:
            self._wait_for_room(len(record))
            if index < self._floor:
                raise WalUsageError(f"snapshot {index} is older than the log's floor {self._floor}")
            self._base_index, self._base_term = index, term
            self._terms = array("Q")
            self._floor = index
            self._await(self._enqueue([record]))

    def compact(self, snapshot_index: int) -> int:
        """Delete the oldest segments that a snapshot at ``snapshot_index`` makes useless.

        Never deletes the active segment; afterwards no append may truncate at
        or below ``snapshot_index``. Returns how many segments were deleted.
        Raises WalUsageError when ``snapshot_index`` is beyond the last index,
        StorageIOError when an unlink or directory sync fails (the log is
        then unusable).
        """
        with self._mu:
            self._check_usable()
            if snapshot_index > self._base_index + len(self._terms):
                raise WalUsageError(f"snapshot {snapshot_index} beyond the last index")
            self._floor = max(self._floor, snapshot_index)
            # Every record that could rewrite an index <= snapshot_index is now enqueued:
            # make it durable so that the segments' min_entry account for it.
            self._await(self._latest())
        with self._io:
            with self._mu:
                self._check_usable()
                segments = list(self._segments)
            cut = 0
            for k in range(len(segments) - 1):
                end = segments[k + 1].base_index
                if end <= snapshot_index and all(
                    s.min_entry is None or s.min_entry > end for s in segments[k + 1 :]
                ):
                    cut = k + 1
            try:
                for seg in segments[:cut]:
                    # One directory sync per unlink: the durable set of files is always a
                    # suffix of the chain, never one with a hole.
                    self._fs.unlink(seg.path)
                    self._fs.sync_dir(self._dir)
                    self._fsyncs += 1
            except BaseException as exc:
                with self._mu:
                    self._fail(exc)
                raise
            with self._mu:
                self._segments = self._segments[cut:]
                new_base = self._segments[0].base_index
                if cut and new_base > self._base_index:
                    drop = new_base - self._base_index
                    self._base_term = self._terms[drop - 1]
                    del self._terms[:drop]
                    self._base_index = new_base
        return cut

    @property
    def last_index(self) -> int:
        """The last index, counting appends still in progress."""
        with self._mu:
            return self._base_index + len(self._terms)

    @property
    def first_index(self) -> int:
        """The index of the first stored entry (``last_index + 1`` when there is none)."""
        with self._mu:
            return self._base_index + 1

    @property
    def fsyncs(self) -> int:
        """How many file and directory fsyncs this log made since it was opened."""
        return self._fsyncs

    def close(self) -> None:
        """Wait for appends in progress, then close the active segment. Idempotent."""
        with self._mu:
            if self._closed:
                return
            if self._failure is None:
                self._await(self._latest())
            self._closed = True
        with self._io:
            self._active.close()

    # ---- group commit (all below run with _mu held) -------------------------

    def _term_at(self, index: int) -> int:
        if index == self._base_index:
            return self._base_term
        return self._terms[index - self._base_index - 1]

    def _note_min_entry(self, index: int) -> None:
        if self._pending_min_entry is None or index < self._pending_min_entry:
            self._pending_min_entry = index

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise _after_failure(self._failure)
        if self._closed:
            raise WalUsageError("the write-ahead log is closed")

    def _wait_for_room(self, size: int) -> None:
        self._check_usable()
        while self._pending and self._pending_bytes + size > MAX_PENDING_BYTES:
            if not self._flushing:
                # Records nobody waits for (a commit-only record from
                # note_commit) are flushed by nobody else: waiting for room
                # would wait for good (seen with one 9 MiB append).
                self._flush()
            else:
                self._room.wait()  # the flush under way notifies when it ends
            self._check_usable()

    def _enqueue(self, records: list[bytes]) -> _Group | None:
        """Add records to the group being gathered; returns the group to wait for."""
        if records:
            self._pending.extend(records)
            self._pending_bytes += sum(map(len, records))
            return self._gathering
        return self._latest()

    def _latest(self) -> _Group | None:
        """The group holding the newest record not yet durable, if any."""
        return self._gathering if self._pending else self._inflight

    def _await(self, group: _Group | None) -> None:
        """Return once ``group`` is durable, flushing it ourselves when it is next.

        Each group has its own condition so that a flush wakes only the callers
        it covered, plus one caller of the next group to flush that one: no
        thundering herd with many writers.
        """
        while group is not None and not group.done:
            if self._failure is not None:
                raise _after_failure(self._failure)
            if not self._flushing and group is self._gathering:
                self._flush()
            else:
                group.wakeup.wait()

    def _flush(self) -> None:
        self._flushing = True
        group = self._inflight = self._gathering
        self._gathering = _Group(self._mu)
        records = self._pending
        min_entry = self._pending_min_entry
        end_state = (self._base_index + len(self._terms), self._term_at_last(), self._commit)
        self._pending = []
        self._pending_bytes = 0
        self._pending_min_entry = None
        self._room.notify_all()
        self._mu.release()
        try:
            self._write(records, min_entry, end_state)
        except BaseException as exc:
            self._mu.acquire()
            self._flushing = False
            self._inflight = None
            self._fail(exc)
            group.wakeup.notify_all()
            self._room.notify_all()
            raise
        self._mu.acquire()
        self._flushing = False
        self._inflight = None
        group.done = True
        group.wakeup.notify_all()
        self._room.notify_all()
        if self._pending:
            self._gathering.wakeup.notify()  # one of them flushes the next group

    def _term_at_last(self) -> int:
        return self._terms[-1] if self._terms else self._base_term

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._gathering.wakeup.notify_all()
        self._room.notify_all()

    # ---- file I/O (no _mu held) -----------------------------------------------

    def _write(
        self, records: list[bytes], min_entry: int | None, end_state: tuple[int, int, int]
    ) -> None:
        records[0] = mark_batch_start(records[0])
        batch = b"".join(records)
        with self._io:
            if self._failure is not None:  # a compaction failed while we waited for _io
                raise _after_failure(self._failure)
            if (
                self._active_bytes >= self._segment_bytes
                or self._segments[-1].version != FORMAT_VERSION
            ):
                self._roll()
            self._active.write(batch)
            self._active_bytes += len(batch)
            self._active.sync()
            self._fsyncs += 1
            active = self._segments[-1]
            if min_entry is not None and (active.min_entry is None or min_entry < active.min_entry):
                active.min_entry = min_entry
            self._w_last_index, self._w_last_term, self._w_commit = end_state

    def _roll(self) -> None:
        base, base_term = self._w_last_index, self._w_last_term
        seq = self._segments[-1].seq + 1
        path = posixpath.join(self._dir, segment_name(seq, base + 1))
        header = encode(RecordKind.SEGMENT_HEADER, base, base_term, HEADER_DATA, batch_start=True)
        if self._w_commit:  # same batch as the header
            header += encode(RecordKind.COMMIT, self._w_commit, 0)
        new = self._fs.open_truncate(path)
        new.write(header)
        new.sync()
        self._fs.sync_dir(self._dir)
        self._fsyncs += 2
        old, self._active, self._active_bytes = self._active, new, len(header)
        with self._mu:
            self._segments[-1].end_index = base
            self._segments.append(_Segment(seq, path, base, base_term))
        old.close()


def _after_failure(cause: BaseException) -> StorageError:
    """A fresh exception for one caller of a log that failed (the original is shared)."""
    if isinstance(cause, StorageIOError):
        err: StorageError = StorageIOError(cause.operation, cause.path, cause.cause)
    else:
        err = StorageError(f"write-ahead log unusable after an earlier failure: {cause!r}")
    err.__cause__ = cause
    return err
