"""The backup file: the elections state of a cluster at one log index, checksummed.

Theory of operation
-------------------
A backup carries what a new cluster needs to continue where an old one
stopped without ever issuing a fencing token twice (docs/membership.md,
"Backup, restore and recovery"):

* the elections state exactly as the state machine serialises it
  (``ElectionsMachine.snapshot()``: grants, queues, audit trail, bounds);
* the Raft log index and term that state is at. Every token in it is at most
  that index (a token is the log index of its grant), so a cluster whose log
  starts above it never issues one of them again;
* the old cluster's id, so ``restore`` can refuse to reuse it;
* when it was made (``created_at_unix_ms``, given by the caller), for the
  operator choosing among backups.

The file is written whole or not at all and read whole: a truncated,
corrupted, foreign or newer-format file is refused with a one-line
``BackupError`` before anything is restored. This module is pure: bytes in,
bytes out, time given as an input; the callers (the offline ``snapshot save``
here, a live ``snapshot save`` RPC later) do the I/O.

Layout (little-endian; the CRC-32C covers every byte before it)::

    magic b"RSBK" (4) | format version u16 (1) | index u64 | term u64
    | created_at_unix_ms u64 | cluster id: u16 length, UTF-8
    | state length u64 | state | CRC-32C u32

The magic and version are read first, so a file of another kind or of a
newer format is named as such rather than as corrupt; everything else is
trusted only once the checksum holds, and then checked again for sense (the
lengths fill the file exactly, the state loads and is not ahead of its index).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sidecar.elections import ElectionsState, SnapshotError
from sidecar.storage.checksum import crc32c

MAGIC = b"RSBK"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<4sHQQQ")  # magic, version, index, term, created_at_unix_ms
_STRLEN = struct.Struct("<H")
_DATALEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")
MIN_SIZE = _HEAD.size + _STRLEN.size + _DATALEN.size + _CRC.size
_UINT64_MAX = (1 << 64) - 1


class BackupError(Exception):
    """A backup cannot be written or read; the message is one line, safe to print."""


@dataclass(frozen=True, slots=True)
class Backup:
    cluster_id: str
    """The id of the cluster the state comes from."""
    index: int
    """The Raft log index the state is at: every token in it is at most this."""
    term: int
    """The Raft term of the entry at ``index`` (0 only for an empty log)."""
    created_at_unix_ms: int
    state: bytes
    """The elections state as ``ElectionsMachine.snapshot()`` serialises it."""


def encode_backup(backup: Backup) -> bytes:
    """The file's bytes. Raises BackupError for a field that does not fit the format."""
    for name in ("index", "term", "created_at_unix_ms"):
        value = getattr(backup, name)
        if not 0 <= value <= _UINT64_MAX:
            raise BackupError(f"{name} {value} is not an unsigned 64-bit integer")
    cluster = backup.cluster_id.encode("utf-8")
    if not cluster or len(cluster) > 0xFFFF:
        raise BackupError("the cluster id must be 1 to 65535 bytes of UTF-8")
    body = b"".join(
        (
            _HEAD.pack(MAGIC, FORMAT_VERSION, backup.index, backup.term, backup.created_at_unix_ms),
            _STRLEN.pack(len(cluster)),
            cluster,
            _DATALEN.pack(len(backup.state)),
            backup.state,
        )
    )
    return body + _CRC.pack(crc32c(body))


def decode_backup(data: bytes) -> Backup:
    """Parse and verify a backup file's bytes.

    Raises BackupError (one line) when the file is truncated, not a backup,
    of an unknown format version, fails its checksum, or holds a state that
    does not load or is ahead of its index.
    """
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise BackupError("not a raft-sidecar backup file (wrong magic bytes)")
    if len(data) < MIN_SIZE:
        raise BackupError(f"truncated: {len(data)} bytes, a backup has at least {MIN_SIZE}")
    _, version, index, term, created = _HEAD.unpack_from(data, 0)
    if version != FORMAT_VERSION:
        raise BackupError(
            f"backup format version {version} is not supported (this build reads "
            f"version {FORMAT_VERSION}); the file is newer than this build, or corrupt"
        )
    crc_at = len(data) - _CRC.size
    (stored,) = _CRC.unpack_from(data, crc_at)
    if stored != crc32c(data[:crc_at]):
        raise BackupError("checksum mismatch: the file is corrupt or truncated")
    at = _HEAD.size
    (cluster_len,) = _STRLEN.unpack_from(data, at)
    at += _STRLEN.size
    if at + cluster_len + _DATALEN.size > crc_at:
        raise BackupError("corrupt: the cluster id runs past the end of the file")
    try:
        cluster_id = data[at : at + cluster_len].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BackupError("corrupt: the cluster id is not UTF-8") from exc
    at += cluster_len
    (state_len,) = _DATALEN.unpack_from(data, at)
    at += _DATALEN.size
    if at + state_len != crc_at:
        raise BackupError("corrupt: the state length does not match the file size")
    state = bytes(data[at:crc_at])
    if not cluster_id or (index > 0 and term == 0):
        raise BackupError("corrupt: an empty cluster id, or an index without a term")
    try:
        last_applied = ElectionsState.restore(state).last_applied
    except SnapshotError as exc:
        raise BackupError(f"the elections state does not load: {exc}") from exc
    if last_applied > index:
        raise BackupError(
            f"corrupt: the state was applied up to {last_applied}, beyond the backup's "
            f"index {index}"
        )
    return Backup(
        cluster_id=cluster_id, index=index, term=term, created_at_unix_ms=created, state=state
    )


def highest_token(state: bytes) -> int:
    """The highest fencing token recorded in ``state`` (0 when none), for reports.

    Raises SnapshotError when the state does not load.
    """
    loaded = ElectionsState.restore(state)
    tokens = [0]
    for election in loaded.elections():
        holder = loaded.holder(election)
        if holder is not None:
            tokens.append(holder.token)
        records = loaded.audit(election, limit=loaded.bounds.max_audit_records)
        tokens.extend(r.token for r in records[-1:])
    return max(tokens)
