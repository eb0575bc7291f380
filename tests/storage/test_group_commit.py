"""AsyncGroupCommitter: coroutines share writes and fsyncs, and learn of failures."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.storage.errors import StorageIOError
from sidecar.storage.group_commit import AsyncGroupCommitter
from sidecar.storage.wal import WriteAheadLog
from tests.storage.faultfs import CrashFileSystem


def test_concurrent_appends_get_distinct_contiguous_durable_indices() -> None:
    fs = CrashFileSystem()
    fs.makedirs("/wal")
    wal, _ = WriteAheadLog.open(fs, "/wal")

    async def main() -> list[int]:
        committer = AsyncGroupCommitter(wal, max_batch=64)
        indices = await asyncio.gather(*(committer.append(b"cmd-%d" % i, 1) for i in range(500)))
        assert committer.batches < 500 / 4, f"appends were not grouped: {committer.batches}"
        return list(indices)

    indices = asyncio.run(main())
    assert sorted(indices) == list(range(1, 501))
    _, contents = WriteAheadLog.open(fs.crash(), "/wal")
    by_index = {e.index: e.data for e in contents.entries}
    assert len(by_index) == 500
    assert all(by_index[index] == b"cmd-%d" % i for i, index in enumerate(indices))


def test_failed_fsync_fails_every_waiter_and_every_later_append() -> None:
    fs = CrashFileSystem()
    fs.makedirs("/wal")
    wal, _ = WriteAheadLog.open(fs, "/wal")

    async def main() -> None:
        committer = AsyncGroupCommitter(wal)
        await committer.append(b"before", 1)
        fs.fail_sync = True
        results = await asyncio.gather(
            *(committer.append(b"lost-%d" % i, 1) for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, StorageIOError) for r in results), results
        with pytest.raises(StorageIOError):
            await committer.append(b"after", 1)

    asyncio.run(main())
    _, contents = WriteAheadLog.open(fs.crash(), "/wal")
    assert [e.data for e in contents.entries] == [b"before"]
