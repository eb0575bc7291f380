"""Framing of write-ahead-log records: ``u32 length | u32 crc32c | payload``.

Little-endian throughout. ``length`` counts the payload only; the checksum is
CRC-32C (Castagnoli) of the payload. The payload is ``u8 kind | u64 index |
u64 term | data``; what ``index``, ``term`` and ``data`` mean depends on the
kind (see ``RecordKind``).

The top bit of the kind byte (``BATCH_START``, segment format version 2)
marks the first record of each write-and-fsync the log makes (a batch). The
write-ahead log sets it on the first record of every group-commit flush and on
every segment header; recovery uses it to prove that damage lies inside the
final, never acknowledged batch (see ``sidecar.storage.wal``). Version 1
segments never set it.

This module only frames and unframes bytes. It knows nothing of segments,
torn tails or the Raft log: ``decode_at`` reports *why* a record cannot be
read and the write-ahead log decides whether that is a torn write or
corruption.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import google_crc32c

FRAME = struct.Struct("<II")
"""``length``, ``crc32c``."""
PAYLOAD_HEAD = struct.Struct("<BQQ")
"""``kind``, ``index``, ``term``."""
FRAME_BYTES = FRAME.size
MIN_PAYLOAD_BYTES = PAYLOAD_HEAD.size
MAX_PAYLOAD_BYTES = 1 << 30
"""Larger lengths are rejected as damage rather than trusted (bounds every read)."""


class RecordKind(enum.IntEnum):
    ENTRY = 1
    """``index``/``term`` of a log entry; data = u8 EntryKind value + the entry's bytes."""
    COMMIT = 2
    """``index`` = the commit index; term unused (0)."""
    SEGMENT_HEADER = 3
    """First record of every segment: ``index`` = the last index before the segment,
    ``term`` = that index's term, data = magic + format version."""
    RESET = 4
    """A snapshot at ``index``/``term`` replaced the log; every earlier entry is void."""


BATCH_START = 0x80
"""Flag in the kind byte: the record is the first of a batch (one write and one fsync)."""

_KINDS = frozenset(int(k) for k in RecordKind)


@dataclass(frozen=True, slots=True)
class Record:
    kind: RecordKind
    index: int
    term: int
    data: bytes = b""
    batch_start: bool = False
    """The kind byte carried ``BATCH_START``."""


@dataclass(frozen=True, slots=True)
class Damage:
    """Why no record could be read at ``offset``."""

    offset: int
    reason: str


def encode(
    kind: RecordKind, index: int, term: int, data: bytes = b"", *, batch_start: bool = False
) -> bytes:
    """The framed bytes of one record."""
    payload = PAYLOAD_HEAD.pack(kind | (BATCH_START if batch_start else 0), index, term) + data
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"record payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return FRAME.pack(len(payload), google_crc32c.value(payload)) + payload


def decode_at(buf: bytes, offset: int) -> tuple[Record, int] | Damage:
    """The record framed at ``offset`` and the offset just past it, or why there is none.

    Damage covers a short frame header, a length beyond the buffer or out of
    range, a checksum mismatch, and an unknown kind (``BATCH_START`` aside).
    It never raises.
    """
    end = len(buf)
    if end - offset < FRAME_BYTES:
        return Damage(offset, f"short record header ({end - offset} of {FRAME_BYTES} bytes)")
    length, crc = FRAME.unpack_from(buf, offset)
    if not MIN_PAYLOAD_BYTES <= length <= MAX_PAYLOAD_BYTES:
        return Damage(offset, f"invalid record length {length}")
    start = offset + FRAME_BYTES
    stop = start + length
    if stop > end:
        return Damage(offset, f"short record payload ({end - start} of {length} bytes)")
    payload = buf[start:stop]
    if google_crc32c.value(payload) != crc:
        return Damage(offset, "checksum mismatch")
    flagged, index, term = PAYLOAD_HEAD.unpack_from(payload, 0)
    kind = flagged & ~BATCH_START
    if kind not in _KINDS:
        return Damage(offset, f"unknown record kind {flagged}")
    record = Record(
        RecordKind(kind), index, term, payload[MIN_PAYLOAD_BYTES:], bool(flagged & BATCH_START)
    )
    return record, stop


def mark_batch_start(framed: bytes) -> bytes:
    """``framed`` (one whole record, as ``encode`` returns it) with ``BATCH_START`` set."""
    head = framed[FRAME_BYTES]
    payload = bytes((head | BATCH_START,)) + framed[FRAME_BYTES + 1 :]
    return FRAME.pack(len(payload), google_crc32c.value(payload)) + payload


def any_record_after(buf: bytes, offset: int, *, batch_start_only: bool = False) -> int | None:
    """The first offset after ``offset`` where a whole, checksummed record starts, if any.

    With ``batch_start_only``, only records carrying ``BATCH_START`` count.
    Used to tell damage inside a torn final batch from damage followed by good
    data. Tries every byte offset, so the cost is linear in the bytes after
    ``offset`` (plus a checksum for each plausible frame); it is only called
    once, on the damaged tail of the last segment. Every offset is tried, not
    just those the damaged framing would suggest, so that entry data that
    happens to look like a record can only make the answer more cautious.
    """
    end = len(buf)
    unpack = FRAME.unpack_from
    for pos in range(offset + 1, end - FRAME_BYTES - MIN_PAYLOAD_BYTES + 1):
        length, _ = unpack(buf, pos)
        if not MIN_PAYLOAD_BYTES <= length <= end - pos - FRAME_BYTES:
            continue
        if batch_start_only and not buf[pos + FRAME_BYTES] & BATCH_START:
            continue
        if not isinstance(decode_at(buf, pos), Damage):
            return pos
    return None
