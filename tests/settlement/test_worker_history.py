"""``settlement-demo worker --history FILE``: what the worker saw, in the chaos
suite's format (tests/chaos/history.py): its campaign, grant, renewals and
resignation, and every ledger write with its outcome, also a stale write that
lands after the worker stopped waiting for it."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from settlement_demo.faults import PAUSE_BEFORE_WRITE
from tests.chaos import history
from tests.chaos.history import Campaign, Granted, Renewed, Resigned, Write
from tests.integration.cluster import Cluster, eventually, running
from tests.settlement.test_worker import WORKER, election_holder, worker_env


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from running(tmp_path)


def start_worker(cluster: Cluster, tmp_path: Path, i: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*WORKER, "--sidecar", cluster.nodes[i].api, "--worker-id", f"w{i}",
         "--ledger-url", f"sqlite:///{tmp_path / 'ledger.sqlite3'}", "--http-listen", "",
         "--ttl-ms", "1000", "--generate-interval-ms", "200", "--step-delay-ms", "20",
         "--chunk-size", "5", "--history", str(tmp_path / f"w{i}.jsonl"),
         "--fault-file", str(tmp_path / f"w{i}.fault")],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / f"w{i}.log").open("w"), env=worker_env(),
    )  # fmt: skip


def events(path: Path) -> list[history.Event]:
    return history.load(path) if path.exists() else []


def test_the_history_tells_the_lease_and_every_write(cluster: Cluster, tmp_path: Path) -> None:
    worker = start_worker(cluster, tmp_path, 0)
    try:
        path = tmp_path / "w0.jsonl"
        eventually(
            lambda: (
                (
                    any(isinstance(e, Write) and e.op == "settle_run" for e in events(path))
                    and sum(isinstance(e, Renewed) for e in events(path)) >= 2
                )
                or None
            ),
            "a settled run and renewals in the history",
            seconds=60,
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    seen = history.load(tmp_path / "w0.jsonl")
    assert isinstance(seen[0], Campaign) and seen[0].worker == "w0"
    granted = next(e for e in seen if isinstance(e, Granted))
    renewals = [e for e in seen if isinstance(e, Renewed)]
    assert all(r.token == granted.token and r.sent_at <= r.t < r.deadline for r in renewals)
    deadlines = [granted.deadline, *(r.deadline for r in renewals)]
    assert deadlines == sorted(deadlines) and len(set(deadlines)) == len(deadlines)
    writes = [e for e in seen if isinstance(e, Write)]
    assert writes[0].op == "raise_fence" and writes[0].outcome == "accepted"
    assert all(w.token == granted.token and w.t_start <= w.t for w in writes)
    chunks = [w for w in writes if w.op == "write_chunk"]
    assert chunks and all(w.run_id and isinstance(w.chunk, int) for w in chunks)
    assert isinstance(seen[-1], Resigned) and seen[-1].token == granted.token


def test_a_late_stale_write_is_recorded_with_its_outcome(cluster: Cluster, tmp_path: Path) -> None:
    workers = [start_worker(cluster, tmp_path, i) for i in range(2)]
    try:
        first, token = eventually(lambda: election_holder(cluster), "a holder", seconds=30)
        i = int(first[1])
        eventually(
            lambda: any(isinstance(e, Write) and e.op == "write_chunk"
                        for e in events(tmp_path / f"w{i}.jsonl")) or None,
            "the holder writing chunks", seconds=60,
        )  # fmt: skip
        (tmp_path / f"w{i}.fault").write_text(PAUSE_BEFORE_WRITE)
        eventually(
            lambda: ((h := election_holder(cluster)) is not None and h[1] > token) or None,
            "another holder while the first is stopped before a write",
            seconds=30,
        )
        eventually(
            lambda: any(isinstance(e, Write) and e.op == "raise_fence" and e.token > token
                        for e in events(tmp_path / f"w{1 - i}.jsonl")) or None,
            "the new holder's fence", seconds=30,
        )  # fmt: skip
        workers[i].send_signal(signal.SIGCONT)
        stale = eventually(
            lambda: next(
                (e for e in events(tmp_path / f"w{i}.jsonl")
                 if isinstance(e, Write) and e.outcome == "stale"), None),
            "the late write's outcome in the paused worker's history", seconds=30,
        )  # fmt: skip
        assert stale.token == token and stale.op == "write_chunk"
        assert "StaleTokenError" in stale.detail
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGCONT)
                w.kill()
                w.wait(10)
