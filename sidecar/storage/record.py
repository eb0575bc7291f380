"""Framing of write-ahead-log records: ``u32 length | u32 crc32c | payload``.

Little-endian throughout. ``length`` counts the payload only; the checksum is
CRC-32C (Castagnoli) of the payload. The payload is ``u8 kind | u64 index |
u64 term | data``; what ``index``, ``term`` and ``data`` mean depends on the
kind (see ``RecordKind``).

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


_KINDS = frozenset(int(k) for k in RecordKind)


@dataclass(frozen=True, slots=True)
class Record:
    kind: RecordKind
    index: int
    term: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Damage:
    """Why no record could be read at ``offset``."""

    offset: int
    reason: str


def encode(kind: RecordKind, index: int, term: int, data: bytes = b"") -> bytes:
    """The framed bytes of one record."""
    payload = PAYLOAD_HEAD.pack(kind, index, term) + data
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"record payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return FRAME.pack(len(payload), google_crc32c.value(payload)) + payload


def decode_at(buf: bytes, offset: int) -> tuple[Record, int] | Damage:
    """The record framed at ``offset`` and the offset just past it, or why there is none.

    Damage covers a short frame header, a length beyond the buffer or out of
    range, a checksum mismatch, and an unknown kind. It never raises.
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
    kind, index, term = PAYLOAD_HEAD.unpack_from(payload, 0)
    if kind not in _KINDS:
        return Damage(offset, f"unknown record kind {kind}")
    return Record(RecordKind(kind), index, term, payload[MIN_PAYLOAD_BYTES:]), stop


def any_record_after(buf: bytes, offset: int) -> int | None:
    """The first offset after ``offset`` where a whole, checksummed record starts, if any.

    Used to tell a torn tail (garbage up to the end) from damage followed by
    good data. Tries every byte offset, so the cost is linear in the bytes
    after ``offset`` (plus a checksum for each plausible length); it is only
    called once, on the damaged tail of the last segment.
    """
    end = len(buf)
    unpack = FRAME.unpack_from
    for pos in range(offset + 1, end - FRAME_BYTES - MIN_PAYLOAD_BYTES + 1):
        length, _ = unpack(buf, pos)
        if MIN_PAYLOAD_BYTES <= length <= end - pos - FRAME_BYTES and not isinstance(
            decode_at(buf, pos), Damage
        ):
            return pos
    return None
