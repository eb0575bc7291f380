"""Throughput of the write-ahead log on this machine's disk: ``python -m bench.storage``.

Workloads, each for ``--seconds`` of wall time, ~100-byte entries:

* raw baseline: one writer, ``os.write`` + ``os.fsync`` per entry, no WAL;
* WAL, 1 / 16 / 128 writer threads calling ``append_data`` (group commit
  coalesces concurrent callers into one write and one fsync);
* WAL, 1 / 16 / 128 asyncio tasks through ``AsyncGroupCommitter`` (the shape
  the node runtime uses: coroutines, one flusher thread);

then the recovery time (``WriteAheadLog.open``) of a 1,000,000-entry log
written with large batches. Files live in a temporary directory under
``--dir`` (default /var/tmp: it must be a real disk, not tmpfs, or fsync
costs nothing). Figures are machine-dependent; compare runs on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import threading
import time

from sidecar.raft import Entry
from sidecar.storage.fs import OsFileSystem
from sidecar.storage.group_commit import AsyncGroupCommitter
from sidecar.storage.wal import WriteAheadLog

ENTRY_BYTES = 100
RECOVERY_ENTRIES = 1_000_000
RECOVERY_BATCH = 10_000


def _fs_type(path: str) -> str:
    """The file-system type of the mount holding ``path`` (from /proc/mounts)."""
    best, kind = "", "unknown"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                _, mount_point, fs_type, *_ = line.split()
                if real.startswith(mount_point) and len(mount_point) > len(best):
                    best, kind = mount_point, fs_type
    except OSError:
        pass
    return kind


def raw_baseline(directory: str, seconds: float) -> tuple[float, float]:
    path = os.path.join(directory, "raw.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    payload = os.urandom(ENTRY_BYTES)
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    try:
        while time.perf_counter() < deadline:
            os.write(fd, payload)
            os.fsync(fd)
            count += 1
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    return count / elapsed, count / elapsed


def wal_writers(directory: str, threads: int, seconds: float) -> tuple[float, float, int]:
    """(entries/s, fsyncs/s, entries) for ``threads`` concurrent ``append_data`` callers."""
    wal, _ = WriteAheadLog.open(OsFileSystem(), directory)
    counts = [0] * threads
    payload = os.urandom(ENTRY_BYTES)
    ready = threading.Barrier(threads + 1)
    stop = threading.Event()

    def run(slot: int) -> None:
        ready.wait()
        n = 0
        while not stop.is_set():
            wal.append_data(payload, 1)
            n += 1
        counts[slot] = n

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    fsyncs_before = wal.fsyncs
    ready.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    fsyncs = wal.fsyncs - fsyncs_before
    wal.close()
    total = sum(counts)
    return total / elapsed, fsyncs / elapsed, total


def async_writers(directory: str, writers: int, seconds: float) -> tuple[float, float, int]:
    """(entries/s, fsyncs/s, entries) for ``writers`` coroutines on one AsyncGroupCommitter."""

    async def run() -> tuple[float, float, int]:
        wal, _ = WriteAheadLog.open(OsFileSystem(), directory)
        committer = AsyncGroupCommitter(wal)
        payload = os.urandom(ENTRY_BYTES)
        counts = [0] * writers
        stop = False

        async def writer(slot: int) -> None:
            while not stop:
                await committer.append(payload, 1)
                counts[slot] += 1

        fsyncs_before = wal.fsyncs
        tasks = [asyncio.create_task(writer(i)) for i in range(writers)]
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        stop = True
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        fsyncs = wal.fsyncs - fsyncs_before
        wal.close()
        return sum(counts) / elapsed, fsyncs / elapsed, sum(counts)

    return asyncio.run(run())


def recovery(directory: str) -> tuple[float, float, int]:
    """(seconds to write, seconds to recover, bytes) for a RECOVERY_ENTRIES-entry log."""
    fs = OsFileSystem()
    wal, _ = WriteAheadLog.open(fs, directory)
    payload = os.urandom(ENTRY_BYTES)
    start = time.perf_counter()
    for first in range(1, RECOVERY_ENTRIES + 1, RECOVERY_BATCH):
        batch = [Entry(1, i, data=payload) for i in range(first, first + RECOVERY_BATCH)]
        wal.append(batch, commit=first - 1)
    wal.close()
    written = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))
    start = time.perf_counter()
    wal, contents = WriteAheadLog.open(fs, directory)
    recovered = time.perf_counter() - start
    if len(contents.entries) != RECOVERY_ENTRIES or contents.torn_tail is not None:
        raise SystemExit(f"recovery returned {len(contents.entries)} entries")
    wal.close()
    return written, recovered, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--skip-recovery", action="store_true")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="bench-storage-", dir=args.dir)
    kind = _fs_type(root)
    print(f"directory {root} ({kind}); {args.seconds:g} s per workload; {ENTRY_BYTES}-byte entries")
    if kind in ("tmpfs", "ramfs"):
        print("WARNING: this is not a disk; fsync is free and the figures mean nothing")
    try:
        rows: list[tuple[str, float, float, str]] = []
        raw_eps, raw_fps = raw_baseline(root, args.seconds)
        rows.append(("raw write+fsync per entry, 1 writer", raw_eps, raw_fps, "1.0"))
        by_threads: dict[int, float] = {}
        for threads in (1, 16, 128):
            eps, fps, _ = wal_writers(os.path.join(root, f"wal-{threads}"), threads, args.seconds)
            by_threads[threads] = eps
            rows.append((f"WAL append_data, {threads} writers", eps, fps, f"{eps / fps:.1f}"))
        by_tasks: dict[int, float] = {}
        for tasks in (1, 16, 128):
            eps, fps, _ = async_writers(os.path.join(root, f"async-{tasks}"), tasks, args.seconds)
            by_tasks[tasks] = eps
            rows.append(
                (f"WAL via asyncio group commit, {tasks} tasks", eps, fps, f"{eps / fps:.1f}")
            )
        print()
        print(f"{'workload':<44} {'entries/s':>12} {'fsyncs/s':>10} {'entries/fsync':>14}")
        for name, eps, fps, per in rows:
            print(f"{name:<44} {eps:>12,.0f} {fps:>10,.0f} {per:>14}")
        for label, figures in (("threads", by_threads), ("asyncio tasks", by_tasks)):
            ratio = figures[128] / raw_eps
            verdict = "yes" if ratio >= 10 else "NO"
            print(
                f"128 writers ({label}) vs one writer with one fsync per entry: "
                f"{ratio:.1f}x entries/s; >= 10x: {verdict}"
            )
        if not args.skip_recovery:
            written, recovered, size = recovery(os.path.join(root, "recovery"))
            print(
                f"\nrecovery of {RECOVERY_ENTRIES:,} entries ({size / 2**20:.0f} MiB, "
                f"written in {written:.1f} s with batches of {RECOVERY_BATCH:,}): "
                f"{recovered:.2f} s ({RECOVERY_ENTRIES / recovered:,.0f} entries/s)"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
