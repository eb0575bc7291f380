"""Group commit for asyncio callers: many coroutines, one write, one fsync.

Why: the sidecar's runtime is one asyncio loop; concurrent proposals arrive
as coroutines, not threads. Waking a thread per append costs more than the
append itself in Python, while resolving a future is cheap. So appends from
every coroutine are gathered here and handed to the write-ahead log as one
batch (``WriteAheadLog.append``: one write, one fsync), run in a worker
thread so the loop keeps serving while the disk works. Appenders arriving
during a flush form the next batch.

The committer must be the log's only writer: it numbers entries from
``wal.last_index`` when the batch is written. The number of appends waiting
is bounded (``max_pending``): beyond it, ``append`` waits for room. A failed
write fails every waiting append and every later one (the log is unusable
after a failed fsync, see ``wal``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sidecar.raft import Entry, EntryKind
from sidecar.storage.wal import WriteAheadLog


@dataclass(slots=True)
class _Append:
    data: bytes
    term: int
    done: asyncio.Future[int]


class AsyncGroupCommitter:
    def __init__(
        self, wal: WriteAheadLog, *, max_batch: int = 4096, max_pending: int = 65536
    ) -> None:
        self._wal = wal
        self._max_batch = max_batch
        self._room = asyncio.Semaphore(max_pending)
        self._pending: list[_Append] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self.batches = 0

    async def append(self, data: bytes, term: int) -> int:
        """Append one NORMAL entry; returns its index once it is durable.

        Raises StorageIOError (or the error that broke the log) when the write fails.
        """
        if self._failure is not None:
            raise self._failure
        async with self._room:
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._pending.append(_Append(data, term, done))
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush_all())
            return await done

    async def _flush_all(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                first = await asyncio.to_thread(self._write, batch)
            except BaseException as exc:  # every waiter learns why; none is lost
                self._failure = exc
                for item in batch + self._pending:
                    if not item.done.done():
                        item.done.set_exception(exc)
                self._pending.clear()
                return
            self.batches += 1
            for offset, item in enumerate(batch):
                if not item.done.done():
                    item.done.set_result(first + offset)

    def _write(self, batch: list[_Append]) -> int:
        first = self._wal.last_index + 1
        self._wal.append(
            [
                Entry(item.term, first + i, EntryKind.NORMAL, item.data)
                for i, item in enumerate(batch)
            ]
        )
        return first
