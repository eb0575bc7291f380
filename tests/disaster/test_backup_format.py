"""The backup file format (``sidecar.backup``): a round trip keeps every
field, and every kind of damage is refused with one line before anything is
restored (docs/storage.md, "Backup files")."""

from __future__ import annotations

import struct

import pytest

from sidecar.backup import (
    FORMAT_VERSION,
    MAGIC,
    MIN_SIZE,
    Backup,
    BackupError,
    decode_backup,
    encode_backup,
    highest_token,
)
from sidecar.elections import ElectionsState
from sidecar.storage.checksum import crc32c
from tests.disaster.states import state_with_grants

BACKUP = Backup(
    cluster_id="prod-eu",
    index=9,
    term=3,
    created_at_unix_ms=1_760_000_000_123,
    state=state_with_grants(),
)


def test_round_trip_keeps_every_field() -> None:
    data = encode_backup(BACKUP)
    assert data[:4] == MAGIC
    assert decode_backup(data) == BACKUP
    assert encode_backup(decode_backup(data)) == data, "the encoding is canonical"


def test_an_empty_state_at_index_zero_round_trips() -> None:
    empty = Backup("c", 0, 0, 0, ElectionsState().snapshot())
    assert decode_backup(encode_backup(empty)) == empty


def test_the_highest_token_is_the_newest_grant() -> None:
    assert highest_token(BACKUP.state) == 7
    assert highest_token(ElectionsState().snapshot()) == 0


def _regions(data: bytes) -> dict[str, range]:
    cluster_len = len(BACKUP.cluster_id.encode())
    state_at = 4 + 2 + 8 * 3 + 2 + cluster_len + 8
    return {
        "magic": range(0, 4),
        "version": range(4, 6),
        "index": range(6, 14),
        "term": range(14, 22),
        "created_at": range(22, 30),
        "cluster id length": range(30, 32),
        "cluster id": range(32, 32 + cluster_len),
        "state length": range(32 + cluster_len, state_at),
        "state": range(state_at, len(data) - 4),
        "checksum": range(len(data) - 4, len(data)),
    }


def test_the_regions_cover_the_whole_file() -> None:
    data = encode_backup(BACKUP)
    covered = sorted(i for r in _regions(data).values() for i in r)
    assert covered == list(range(len(data)))


@pytest.mark.parametrize("region", list(_regions(encode_backup(BACKUP))))
def test_a_flipped_bit_anywhere_in_a_region_is_refused(region: str) -> None:
    data = encode_backup(BACKUP)
    for offset in _regions(data)[region]:
        for bit in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[offset] ^= bit
            with pytest.raises(BackupError) as refused:
                decode_backup(bytes(damaged))
            message = str(refused.value)
            assert "\n" not in message
            expected = {
                "magic": "not a raft-sidecar backup",
                "version": "is not supported",
            }.get(region, "checksum mismatch")
            assert expected in message, (region, offset, message)


def test_every_truncation_is_refused() -> None:
    data = encode_backup(BACKUP)
    for size in range(len(data)):
        with pytest.raises(BackupError) as refused:
            decode_backup(data[:size])
        assert "\n" not in str(refused.value)
        if size >= 4:
            assert str(refused.value).startswith("truncated") == (size < MIN_SIZE)


def test_bytes_appended_are_refused() -> None:
    with pytest.raises(BackupError, match="checksum mismatch"):
        decode_backup(encode_backup(BACKUP) + b"\0")


def _resealed(body: bytes) -> bytes:
    """``body`` with a valid checksum: what a writer with a bug (or a newer one) made."""
    return body + struct.pack("<I", crc32c(body))


def test_a_newer_format_version_is_named_as_such() -> None:
    body = bytearray(encode_backup(BACKUP)[:-4])
    struct.pack_into("<H", body, 4, FORMAT_VERSION + 1)
    with pytest.raises(BackupError, match=f"format version {FORMAT_VERSION + 1} is not supported"):
        decode_backup(_resealed(bytes(body)))


def test_a_checksummed_state_that_does_not_load_is_refused() -> None:
    broken = Backup("c", 9, 3, 0, b'{"not": "a state"}')
    with pytest.raises(BackupError, match="the elections state does not load"):
        decode_backup(encode_backup(broken))


def test_a_state_ahead_of_its_index_is_refused() -> None:
    ahead = Backup("c", 6, 3, 0, state_with_grants())  # applied up to 7
    with pytest.raises(BackupError, match="beyond the backup's index 6"):
        decode_backup(encode_backup(ahead))


def test_lengths_that_do_not_fill_the_file_are_refused() -> None:
    body = bytearray(encode_backup(BACKUP)[:-4])
    struct.pack_into("<H", body, 30, 0xFFFF)  # the cluster id runs past the end
    with pytest.raises(BackupError, match="runs past the end"):
        decode_backup(_resealed(bytes(body)))
    body = bytearray(encode_backup(BACKUP)[:-4])
    state_len_at = 32 + len(BACKUP.cluster_id)
    struct.pack_into("<Q", body, state_len_at, len(BACKUP.state) - 1)
    with pytest.raises(BackupError, match="state length does not match"):
        decode_backup(_resealed(bytes(body)))


@pytest.mark.parametrize(
    "backup",
    [
        Backup("", 1, 1, 0, b""),
        Backup("c", -1, 1, 0, b""),
        Backup("c", 1, 1 << 64, 0, b""),
    ],
)
def test_unencodable_fields_are_refused(backup: Backup) -> None:
    with pytest.raises(BackupError):
        encode_backup(backup)


def test_an_index_without_a_term_is_refused() -> None:
    with pytest.raises(BackupError, match="without a term"):
        decode_backup(encode_backup(Backup("c", 9, 0, 0, state_with_grants())))
