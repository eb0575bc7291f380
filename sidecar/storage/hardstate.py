"""The hard-state file: term, vote and commit index in one small checksummed record.

Theory of operation. The file ``DIR/hardstate`` is never written in place.
``save`` writes the new record to ``hardstate.tmp``, fsyncs it, renames it over
``hardstate`` and fsyncs the directory. Rename is atomic, so after a crash at
any point the name ``hardstate`` refers to either the complete old record or
the complete new one. Writing in place would open a window (between truncating
and the fsync of the new bytes) in which a power cut leaves an empty or half
written file: the node would then have forgotten its vote, and a node that
forgets its vote can vote twice in one term, electing two leaders.

The fsync of the temporary file must come *before* the rename: otherwise the
rename can reach the disk before the data and a crash leaves ``hardstate``
naming an empty file. The fsync of the directory makes the rename itself
durable; until it returns the old record may come back after a crash, which is
fine because ``save`` has not returned either.

Record layout (little-endian)::

    offset  size  field
    0       4     magic b"RSHS"
    4       2     version (1)
    6       8     term
    14      2     length n of voted_for (0 = no vote)
    16      n     voted_for, UTF-8
    16+n    8     commit
    24+n    4     CRC-32C of bytes [0, 24+n)

A leftover ``hardstate.tmp`` (a crash before the rename) holds a value that
was never acknowledged: ``load`` ignores and removes it.
"""

from __future__ import annotations

import posixpath
import struct

from sidecar.raft import HardState
from sidecar.raft.errors import InvariantViolation
from sidecar.storage.checksum import crc32c
from sidecar.storage.errors import CorruptionError
from sidecar.storage.fs import FileSystem

MAGIC = b"RSHS"
VERSION = 1
FILE_NAME = "hardstate"
TMP_SUFFIX = ".tmp"

_PREFIX = struct.Struct("<4sHQH")  # magic, version, term, len(voted_for)
_COMMIT = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_MAX_VOTED_FOR_BYTES = 0xFFFF
MIN_SIZE = _PREFIX.size + _COMMIT.size + _CRC.size


def write_file_atomically(fs: FileSystem, path: str, chunks: list[bytes]) -> None:
    """Replace ``path`` with the concatenation of ``chunks``, atomically and durably.

    Writes ``path + ".tmp"``, fsyncs it, renames it over ``path`` and fsyncs the
    directory. After a crash ``path`` holds the old content or the new one,
    never a mix. Raises StorageIOError when a step fails; the old content is
    then still in place (a stray ``.tmp`` file may remain).
    """
    tmp = path + TMP_SUFFIX
    f = fs.open_truncate(tmp)
    try:
        for chunk in chunks:
            f.write(chunk)
        f.sync()
    finally:
        f.close()
    fs.rename(tmp, path)
    fs.sync_dir(posixpath.dirname(path))


def encode_hard_state(hs: HardState) -> bytes:
    """The on-disk record of ``hs``. Raises ValueError for an empty or oversized vote."""
    if hs.voted_for == "":
        raise ValueError("voted_for must be None or a non-empty node id")
    vote = (hs.voted_for or "").encode("utf-8")
    if len(vote) > _MAX_VOTED_FOR_BYTES:
        raise ValueError(f"voted_for is {len(vote)} bytes, at most {_MAX_VOTED_FOR_BYTES}")
    body = _PREFIX.pack(MAGIC, VERSION, hs.term, len(vote)) + vote + _COMMIT.pack(hs.commit)
    return body + _CRC.pack(crc32c(body))


def decode_hard_state(data: bytes, path: str) -> HardState:
    """Parse and verify a record. Raises CorruptionError naming ``path`` and an offset."""
    if len(data) < MIN_SIZE:
        raise CorruptionError(path, len(data), f"truncated: {len(data)} bytes, need {MIN_SIZE}")
    if data[:4] != MAGIC:
        raise CorruptionError(path, 0, f"bad magic {data[:4]!r}, expected {MAGIC!r}")
    crc_offset = len(data) - _CRC.size
    (stored,) = _CRC.unpack_from(data, crc_offset)
    actual = crc32c(data[:crc_offset])
    if stored != actual:
        raise CorruptionError(
            path, crc_offset, f"checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
        )
    _, version, term, vote_len = _PREFIX.unpack_from(data, 0)
    if version != VERSION:
        raise CorruptionError(path, 4, f"unsupported version {version}")
    commit_offset = _PREFIX.size + vote_len
    if commit_offset + _COMMIT.size != crc_offset:
        raise CorruptionError(
            path, _PREFIX.size - 2, f"voted_for length {vote_len} does not match the file size"
        )
    try:
        voted_for = data[_PREFIX.size : commit_offset].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptionError(path, _PREFIX.size + exc.start, "voted_for is not UTF-8") from exc
    (commit,) = _COMMIT.unpack_from(data, commit_offset)
    try:
        return HardState(term=term, voted_for=voted_for or None, commit=commit)
    except InvariantViolation as exc:  # pragma: no cover - unsigned fields cannot be negative
        raise CorruptionError(path, 0, str(exc)) from exc


class HardStateFile:
    """``DIR/hardstate``: load and atomically replace the node's hard state."""

    def __init__(self, fs: FileSystem, directory: str) -> None:
        self._fs = fs
        self.directory = directory
        self.path = posixpath.join(directory, FILE_NAME)
        self.tmp_path = self.path + TMP_SUFFIX

    def read(self) -> HardState | None:
        """The stored hard state, or None when there is none; modifies nothing.

        Raises CorruptionError when the file fails verification, StorageIOError
        when it cannot be read.
        """
        if not self._fs.exists(self.path):
            return None
        return decode_hard_state(self._fs.read_bytes(self.path), self.path)

    def has_leftover(self) -> bool:
        """Whether a ``hardstate.tmp`` from an interrupted save is lying around."""
        return self._fs.exists(self.tmp_path)

    def load(self) -> HardState | None:
        """Like ``read``, after removing a leftover ``hardstate.tmp``.

        The leftover was never acknowledged (the crash came before its rename),
        so it is garbage. Removing it needs no directory fsync: if the unlink is
        lost, the next load removes it again. Raises CorruptionError,
        StorageIOError.
        """
        if self._fs.exists(self.tmp_path):
            self._fs.unlink(self.tmp_path)
        return self.read()

    def save(self, hs: HardState) -> None:
        """Durably replace the stored hard state with ``hs`` (see the module docstring).

        Creates the directory if needed. Raises StorageIOError when a write,
        fsync, rename or directory sync fails: a restart then loads the old
        value (or the new one, if only the final directory sync failed), and the
        node must stop. Raises ValueError for an unencodable ``voted_for``.
        """
        record = encode_hard_state(hs)
        self._fs.makedirs(self.directory)
        write_file_atomically(self._fs, self.path, [record])
