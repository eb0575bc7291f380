"""CRC-32C (Castagnoli), the checksum of every record the storage layer writes.

CRC-32C rather than zlib's CRC-32: it detects more error patterns at the
record sizes we write, and ``google_crc32c`` computes it in C with the SSE4.2
instruction, so checksumming a snapshot costs little next to writing it.
"""

from __future__ import annotations

import google_crc32c


def crc32c(data: bytes) -> int:
    """The CRC-32C of ``data``, as an unsigned 32-bit integer."""
    return int(google_crc32c.value(data))


def crc32c_extend(crc: int, data: bytes) -> int:
    """The CRC-32C of the bytes ``crc`` covered followed by ``data``.

    ``crc32c_extend(crc32c(a), b) == crc32c(a + b)``, without building ``a + b``.
    """
    return int(google_crc32c.extend(crc, data))
