"""The snapshot store: one checksummed file per snapshot, the newest few kept.

Theory of operation. A snapshot is written to
``snap-{index:016x}-{term:016x}.snap.tmp``, fsynced, renamed to its final name
and the directory fsynced (``write_file_atomically``), so a crash leaves either
no file of that name or the complete one. Only after that do older snapshots
beyond ``retain`` get deleted: until the new one is durable, the old ones are
all a restart has. Zero-padded hex names sort by index, so the newest file is
the last name in the directory.

Loading never falls back to an older snapshot when the newest one fails its
checksum: once a snapshot is durable the log it covers is compacted away, so
an older snapshot plus the log may no longer reach the newest snapshot's index.
Recovering from it would silently lose committed entries; a CorruptionError
naming the file lets an operator decide (restore the node from a peer).

File layout (little-endian; strings are a u16 length then UTF-8 bytes)::

    magic b"RSSN" (4) | version u16 | index u64 | term u64
    | voter count u32 | voters, sorted | learner count u32 | learners, sorted
    | data length u64 | data | CRC-32C u32 of everything before it
"""

from __future__ import annotations

import posixpath
import re
import struct
from dataclasses import dataclass

from sidecar.raft import Membership, Snapshot, SnapshotMetadata
from sidecar.raft.errors import InvariantViolation
from sidecar.storage.checksum import crc32c_extend
from sidecar.storage.errors import CorruptionError, StorageError
from sidecar.storage.fs import FileSystem
from sidecar.storage.hardstate import TMP_SUFFIX, write_file_atomically

MAGIC = b"RSSN"
VERSION = 1
SUFFIX = ".snap"
_NAME = re.compile(r"^snap-([0-9a-f]{16})-([0-9a-f]{16})\.snap$")

_FIXED = struct.Struct("<4sHQQ")  # magic, version, index, term
_COUNT = struct.Struct("<I")
_STRLEN = struct.Struct("<H")
_DATALEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")
MIN_SIZE = _FIXED.size + 2 * _COUNT.size + _DATALEN.size + _CRC.size


def snapshot_file_name(index: int, term: int) -> str:
    return f"snap-{index:016x}-{term:016x}{SUFFIX}"


def parse_snapshot_file_name(name: str) -> tuple[int, int] | None:
    """``(index, term)`` of a snapshot file name, or None for any other name."""
    m = _NAME.match(name)
    if m is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One snapshot file as ``storage inspect`` reports it."""

    path: str
    index: int
    term: int
    size: int
    ok: bool
    error: str | None = None


def _pack_names(names: frozenset[str]) -> bytes:
    out = [_COUNT.pack(len(names))]
    for name in sorted(names):
        raw = name.encode("utf-8")
        if not raw or len(raw) > 0xFFFF:
            raise ValueError(f"node id {name!r} must be 1..65535 bytes of UTF-8")
        out += (_STRLEN.pack(len(raw)), raw)
    return b"".join(out)


def encode_header(snapshot: Snapshot) -> bytes:
    """Everything before the data. Raises ValueError for an unencodable node id."""
    meta = snapshot.metadata
    return b"".join(
        (
            _FIXED.pack(MAGIC, VERSION, meta.index, meta.term),
            _pack_names(meta.membership.voters),
            _pack_names(meta.membership.learners),
            _DATALEN.pack(len(snapshot.data)),
        )
    )


class _Reader:
    """Bounds-checked reads from a header that must end before ``limit``."""

    def __init__(self, data: bytes, offset: int, limit: int, path: str) -> None:
        self.data, self.offset, self.limit, self.path = data, offset, limit, path

    def take(self, n: int, what: str) -> bytes:
        if self.offset + n > self.limit:
            raise CorruptionError(self.path, self.offset, f"{what} runs past the end of the file")
        out = self.data[self.offset : self.offset + n]
        self.offset += n
        return out

    def names(self, what: str) -> frozenset[str]:
        start = self.offset
        (count,) = _COUNT.unpack(self.take(_COUNT.size, f"{what} count"))
        names = []
        for _ in range(count):
            at = self.offset
            (n,) = _STRLEN.unpack(self.take(_STRLEN.size, f"{what} length"))
            try:
                names.append(self.take(n, what).decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise CorruptionError(self.path, at, f"{what} is not UTF-8") from exc
        if names != sorted(set(names)):
            raise CorruptionError(self.path, start, f"{what} are not sorted and unique")
        return frozenset(names)


def decode_snapshot(data: bytes, path: str) -> Snapshot:
    """Parse and verify a snapshot file. Raises CorruptionError naming ``path`` and an offset."""
    if len(data) < MIN_SIZE:
        raise CorruptionError(path, len(data), f"truncated: {len(data)} bytes, need {MIN_SIZE}")
    if data[:4] != MAGIC:
        raise CorruptionError(path, 0, f"bad magic {data[:4]!r}, expected {MAGIC!r}")
    crc_offset = len(data) - _CRC.size
    (stored,) = _CRC.unpack_from(data, crc_offset)
    actual = crc32c_extend(0, data[:crc_offset])
    if stored != actual:
        raise CorruptionError(
            path, crc_offset, f"checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
        )
    _, version, index, term = _FIXED.unpack_from(data, 0)
    if version != VERSION:
        raise CorruptionError(path, 4, f"unsupported version {version}")
    reader = _Reader(data, _FIXED.size, crc_offset, path)
    voters = reader.names("voters")
    learners = reader.names("learners")
    length_at = reader.offset
    (data_len,) = _DATALEN.unpack(reader.take(_DATALEN.size, "data length"))
    if reader.offset + data_len != crc_offset:
        raise CorruptionError(
            path, length_at, f"data length {data_len} does not match the file size {len(data)}"
        )
    try:
        metadata = SnapshotMetadata(index, term, Membership(voters, learners))
    except InvariantViolation as exc:
        raise CorruptionError(path, 6, f"invalid metadata: {exc}") from exc
    named = parse_snapshot_file_name(posixpath.basename(path))
    if named is not None and named != (index, term):
        raise CorruptionError(
            path, 6, f"header says index {index} term {term}, the file name {named[0]} {named[1]}"
        )
    return Snapshot(metadata, data[reader.offset : crc_offset])


class SnapshotStore:
    """``DIR/snapshots``: durable snapshots, newest ``retain`` kept."""

    def __init__(self, fs: FileSystem, directory: str, *, retain: int = 2) -> None:
        if retain < 1:
            raise ValueError(f"retain must be at least 1, got {retain}")
        self._fs = fs
        self.directory = directory
        self.retain = retain

    def _path(self, name: str) -> str:
        return posixpath.join(self.directory, name)

    def _names(self) -> list[tuple[int, int, str]]:
        """``(index, term, name)`` of every snapshot file, oldest first."""
        if not self._fs.exists(self.directory):
            return []
        found = []
        for name in self._fs.listdir(self.directory):
            parsed = parse_snapshot_file_name(name)
            if parsed is not None:
                found.append((*parsed, name))
        return sorted(found)

    def leftovers(self) -> list[str]:
        """Paths of temporary files from interrupted saves; modifies nothing."""
        if not self._fs.exists(self.directory):
            return []
        return [
            self._path(name)
            for name in self._fs.listdir(self.directory)
            if name.endswith(TMP_SUFFIX)
        ]

    def save(self, snapshot: Snapshot) -> None:
        """Durably store ``snapshot``, then delete all but the newest ``retain`` files.

        Raises StorageError when ``snapshot`` is older than the newest stored one
        (its index is lower, or equal with another term): it would never be
        loaded, and saving it hints at a bug. Raises StorageIOError when a write,
        fsync, rename or directory sync fails (older snapshots are then all
        still in place), ValueError for an unencodable node id.
        """
        meta = snapshot.metadata
        existing = self._names()
        if existing:
            index, term, name = existing[-1]
            if meta.index < index or (meta.index == index and meta.term != term):
                raise StorageError(
                    f"snapshot at index {meta.index} term {meta.term} is older than "
                    f"{self._path(name)}"
                )
        header = encode_header(snapshot)
        crc = crc32c_extend(crc32c_extend(0, header), snapshot.data)
        self._fs.makedirs(self.directory)
        name = snapshot_file_name(meta.index, meta.term)
        write_file_atomically(self._fs, self._path(name), [header, snapshot.data, _CRC.pack(crc)])
        # The new snapshot is durable: older ones may go. A lost unlink only
        # leaves a file the next save deletes, so no directory fsync here.
        names = [n for _, _, n in self._names()]
        for old in names[: -self.retain]:
            self._fs.unlink(self._path(old))

    def load_latest(self) -> Snapshot | None:
        """The newest snapshot, or None when there is none.

        Removes leftover temporary files first (they were never acknowledged).
        Raises CorruptionError when the newest file fails verification, never
        falling back to an older one (see the module docstring); StorageIOError
        when the directory or file cannot be read.
        """
        for path in self.leftovers():
            self._fs.unlink(path)
        names = self._names()
        if not names:
            return None
        path = self._path(names[-1][2])
        return decode_snapshot(self._fs.read_bytes(path), path)

    def list(self) -> list[SnapshotInfo]:
        """Every snapshot file, oldest first, verified; modifies nothing.

        Raises StorageIOError when the directory or a file cannot be read.
        """
        infos = []
        for index, term, name in self._names():
            path = self._path(name)
            data = self._fs.read_bytes(path)
            try:
                decode_snapshot(data, path)
            except CorruptionError as exc:
                infos.append(SnapshotInfo(path, index, term, len(data), ok=False, error=str(exc)))
            else:
                infos.append(SnapshotInfo(path, index, term, len(data), ok=True))
        return infos
