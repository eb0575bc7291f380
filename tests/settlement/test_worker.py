"""``settlement-demo worker`` as a process: bad input fails clearly and writes
nothing; a healthy worker leads, serves its probes and metrics, and hands over
on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from settlement_demo.config import default_worker_id
from settlement_demo.ledger import open_ledger
from settlement_demo.ledger_sqlite import BUSY_TIMEOUT_MS
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.integration.cluster import Cluster, eventually, free_port, running

WORKER = [sys.executable, "-m", "settlement_demo.cli", "worker"]
REPO = Path(__file__).resolve().parents[2]
ELECTION = "settlement-eur"


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``, importing this checkout's code."""
    return {**os.environ, "PYTHONPATH": str(REPO), **(extra or {})}


def run_worker(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The worker, to its exit; ``env`` adds to (does not replace) this process's."""
    return subprocess.run(
        [*WORKER, "--http-listen", "", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        env=worker_env(env), cwd=cwd,
    )  # fmt: skip


def test_invalid_settings_exit_2_listing_every_problem() -> None:
    result = run_worker("--election", "bad name!", "--ttl-ms", "5", "--sidecar", "nowhere")
    assert result.returncode == 2
    assert "--election='bad name!': use 1-128 of [A-Za-z0-9._-]" in result.stderr
    assert "--ttl-ms=5 is outside" in result.stderr
    assert "--sidecar='nowhere' is neither host:port nor unix:/path" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_sidecar_fails_start_and_writes_nothing(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    result = run_worker(
        "--sidecar", f"127.0.0.1:{free_port()}", "--sidecar-wait-ms", "300",
        "--ledger-url", f"sqlite:///{ledger}",
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot start: sidecar at 127.0.0.1:" in result.stderr
    assert "did not answer within 300 ms" in result.stderr
    with open_ledger(f"sqlite:///{ledger}") as lg:
        assert lg.audit().batches == 0 and lg.fence_token("settlement-eur") is None


def test_a_ledger_url_that_does_not_connect_fails_start() -> None:
    result = run_worker("--ledger-url", "postgresql://127.0.0.1:1/nothing", timeout=60)
    assert result.returncode == 1
    assert "cannot start: ledger postgresql://127.0.0.1:1/nothing: cannot connect" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["garbage", "foreign"])
def test_a_corrupt_or_foreign_sqlite_file_is_refused_untouched(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "ledger.sqlite3"
    if kind == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    else:
        with sqlite3.connect(path) as other:
            other.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total INTEGER)")
            other.execute("INSERT INTO invoices VALUES (1, 100)")
        other.close()
    before = path.read_bytes()
    result = run_worker("--ledger-url", f"sqlite:///{path}")
    assert result.returncode == 1
    assert "cannot start: ledger" in result.stderr
    assert path.read_bytes() == before


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from running(tmp_path)


def election_holder(cluster: Cluster) -> tuple[str, int] | None:
    """(candidate id, token) of the election's holder, as node 0 knows it."""
    answer = cluster.nodes[0].stub().Leader(worker_pb2.LeaderRequest(election=ELECTION), timeout=2)
    if not answer.HasField("holder"):
        return None
    return answer.holder.candidate_id, answer.holder.fencing_token


def runs_settled(port: int) -> float:
    """settlement_worker_runs_settled_total of the worker serving ``port`` (0 if none yet)."""
    _, text = http_get(port, "/metrics")
    for line in text.splitlines():
        if line.startswith("settlement_worker_runs_settled_total"):
            return float(line.split()[-1])
    return 0.0


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def test_a_worker_leads_serves_probes_and_hands_over_on_sigterm(
    cluster: Cluster, tmp_path: Path
) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ports = [free_port(), free_port()]
    workers = [
        subprocess.Popen(
            [
                *WORKER,
                "--sidecar",
                cluster.nodes[i].api,
                "--worker-id",
                f"w{i}",
                "--ledger-url",
                ledger_url,
                "--http-listen",
                f"127.0.0.1:{ports[i]}",
                "--ttl-ms",
                "2000",
                "--generate-interval-ms",
                "200",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"w{i}.log").open("w"),
        )
        for i in range(2)
    ]
    try:
        for port in ports:
            eventually(lambda p=port: http_get(p, "/readyz")[0] == 200 or None, "ready")
            assert http_get(port, "/healthz") == (200, "ok\n")

        def holder() -> tuple[str, int] | None:
            return election_holder(cluster)

        first, token = eventually(holder, "a holder")
        leader_port = ports[int(first[1])]

        # The leader generates batches and settles them; its metrics say so.
        eventually(lambda: runs_settled(leader_port) or None, "a settled run", seconds=30)
        _, metrics = http_get(leader_port, "/metrics")
        assert 'settlement_worker_is_leader{election="settlement-eur"} 1.0' in metrics
        assert http_get(leader_port, "/nope")[0] == 404

        workers[int(first[1])].send_signal(signal.SIGTERM)
        assert workers[int(first[1])].wait(20) == 0
        second, new_token = eventually(
            lambda: ((h := holder()) and h[1] > token and h) or None, "the handover"
        )
        assert second != first and new_token > token
        with open_ledger(ledger_url) as lg:
            audit = lg.audit()
            assert audit.duplicate_payouts == 0 and audit.duplicate_settlements == 0
            assert audit.batches_settled >= 1
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(10)


def test_a_worker_waits_out_a_ledger_locked_at_its_start(cluster: Cluster, tmp_path: Path) -> None:
    """Workers started together open a new SQLite ledger at once; one may find
    it locked (another switching it to WAL or creating the schema). That is
    worth waiting for, not a reason to exit: here the lock outlasts SQLite's
    own busy timeout, and the worker still starts once it is released."""
    path = tmp_path / "ledger.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    port = free_port()
    worker = subprocess.Popen(
        [
            *WORKER,
            "--sidecar",
            cluster.nodes[0].api,
            "--ledger-url",
            f"sqlite:///{path}",
            "--http-listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "w.log").open("w"),
    )
    try:
        # Past the busy timeout (BUSY_TIMEOUT_MS) the worker is still there, waiting.
        with pytest.raises(subprocess.TimeoutExpired):
            worker.wait(timeout=BUSY_TIMEOUT_MS / 1000 + 1.5)
        assert http_get(port, "/readyz")[0] != 200
        holder.execute("ROLLBACK")
        holder.close()
        eventually(lambda: http_get(port, "/readyz")[0] == 200 or None, "ready after the lock")
        assert "ledger_busy_at_start" in (tmp_path / "w.log").read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0


def json_lines(path: Path) -> list[dict[str, object]]:
    lines = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def test_a_fence_holder_conflict_is_logged_counted_and_ends_the_leadership(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Another holder's name on the leader's own token (what an election
    service that lost safety would leave): the worker refuses to write, logs
    an error line, counts it, and campaigns again for a new token."""
    ledger_path = tmp_path / "ledger.sqlite3"
    port, log = free_port(), tmp_path / "w.log"
    worker = subprocess.Popen(
        [
            *WORKER, "--sidecar", cluster.nodes[0].api, "--worker-id", "w-real",
            "--ledger-url", f"sqlite:///{ledger_path}", "--http-listen", f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )  # fmt: skip
    try:

        def holder() -> tuple[str, int] | None:
            return election_holder(cluster)

        _, token = eventually(holder, "the worker to lead")
        with open_ledger(f"sqlite:///{ledger_path}") as lg:
            eventually(lambda: lg.fence(ELECTION) == (token, "w-real") or None, "its fence")
        with sqlite3.connect(ledger_path) as conn:
            conn.execute("UPDATE fences SET holder = 'impostor' WHERE election = ?", (ELECTION,))
        conn.close()

        def conflict_line() -> dict[str, object] | None:
            found = [e for e in json_lines(log) if e.get("event") == "fence_holder_conflict"]
            return found[0] if found else None

        line = eventually(conflict_line, "the conflict in the log")
        assert line["level"] == "error"
        assert (line["token"], line["holder"], line["current_holder"]) == (
            token, "w-real", "impostor",
        )  # fmt: skip
        assert line["election"] == ELECTION and line["worker_id"] == "w-real"
        assert "lost safety" in str(line["error"])
        _, metrics = http_get(port, "/metrics")
        assert f'settlement_worker_fence_holder_conflicts_total{{election="{ELECTION}"}} 1.0' in (
            metrics
        )
        assert f'settlement_worker_stale_token_rejections_total{{election="{ELECTION}"}} 0.0' in (
            metrics
        )
        # It stepped down and campaigned again: a new token, bound to it.
        _, new_token = eventually(lambda: ((h := holder()) and h[1] > token and h) or None, "again")
        with open_ledger(f"sqlite:///{ledger_path}") as lg:
            eventually(lambda: lg.fence(ELECTION) == (new_token, "w-real") or None, "new fence")
            assert lg.audit().holder_conflicts_rejected >= 1
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0


def test_the_default_worker_id_is_unique_per_process() -> None:
    ids = {default_worker_id() for _ in range(20)}
    assert len(ids) == 20
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())
    for worker_id in ids:
        assert re.fullmatch(rf"{re.escape(host)}-{os.getpid()}-[0-9a-f]{{6}}", worker_id)
        assert len(worker_id) <= 128
    result = run_worker("--worker-id", "has space")
    assert result.returncode == 2
    assert "--worker-id='has space': use 1-128 of [A-Za-z0-9._-]" in result.stderr


def test_two_workers_on_one_host_with_default_ids_never_lead_together(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The old default (the host name) made two workers on one host one
    candidate: both got the same grant and both led. With the default id
    unique per process, one leads, the other waits, and takes over."""
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    workers = [
        subprocess.Popen(
            [
                *WORKER,
                "--sidecar",
                cluster.nodes[0].api,
                "--ledger-url",
                f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
                "--http-listen",
                f"127.0.0.1:{ports[i]}",
                "--ttl-ms",
                "2000",
            ],
            env=worker_env(),
            stdout=subprocess.DEVNULL,
            stderr=logs[i].open("w"),
        )
        for i in range(2)
    ]
    try:

        def is_leader(i: int) -> float | None:
            _, text = http_get(ports[i], "/metrics")
            for line in text.splitlines():
                if line.startswith("settlement_worker_is_leader{"):
                    return float(line.split()[-1])
            return None

        def ids() -> list[str] | None:
            found = [
                next((str(e["worker_id"]) for e in json_lines(log) if "worker_id" in e), None)
                for log in logs
            ]
            return None if None in found else [str(f) for f in found]

        worker_ids = eventually(ids, "both workers' ids in their logs")
        host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())
        for w, worker_id in zip(workers, worker_ids, strict=True):
            assert re.fullmatch(rf"{re.escape(host)}-{w.pid}-[0-9a-f]{{6}}", worker_id)
        holder, token = eventually(lambda: election_holder(cluster), "a holder")
        leading = worker_ids.index(holder)
        eventually(lambda: is_leader(leading) == 1 or None, "the holder to lead")
        for _ in range(10):  # and the other does not, all along
            assert is_leader(1 - leading) == 0
            time.sleep(0.1)

        workers[leading].send_signal(signal.SIGTERM)
        assert workers[leading].wait(20) == 0
        new_holder, new_token = eventually(
            lambda: ((h := election_holder(cluster)) and h[1] > token and h) or None, "handover"
        )
        assert new_holder == worker_ids[1 - leading] and new_token > token
        eventually(lambda: is_leader(1 - leading) == 1 or None, "the other to lead")
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                w.wait(20)
