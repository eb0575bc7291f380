"""Three sidecars and three settlement workers as local processes on loopback.

What the demo drives: real ``raft-sidecar serve`` and ``settlement-demo
worker`` processes, started the way an operator would, killed and paused with
real signals. Ports are picked once (a restarted sidecar keeps its address,
since the peer list is static).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc  # type: ignore[import-untyped]

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stopped_by_signal(self) -> bool:
        """True while the process is stopped (SIGSTOP): state T in /proc."""
        if not self.alive():
            return False
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def start(self, argv: list[str]) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=os.environ.copy()
            )


@dataclass
class SidecarProc(Proc):
    node_id: str = ""
    peer_port: int = 0
    api_port: int = 0
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    def stub(self) -> worker_pb2_grpc.ElectionServiceStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.api)
        return worker_pb2_grpc.ElectionServiceStub(self._channel)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


@dataclass
class WorkerProc(Proc):
    worker_id: str = ""
    sidecar: SidecarProc | None = None
    fault_file: Path | None = None


class LocalCluster:
    def __init__(
        self,
        root: Path,
        *,
        ledger_url: str,
        election: str,
        size: int = 3,
        worker_args: list[str] | None = None,
    ) -> None:
        self.root = root
        self.election = election
        self.ledger_url = ledger_url
        self.worker_args = worker_args or []
        self.sidecars = [
            SidecarProc(
                f"sidecar s{i}", root / f"s{i}.log", node_id=f"s{i}",
                peer_port=free_port(), api_port=free_port(),
            )
            for i in range(size)
        ]  # fmt: skip
        self.workers = [
            WorkerProc(
                f"worker w{i}", root / f"w{i}.log", worker_id=f"w{i}",
                sidecar=self.sidecars[i], fault_file=root / f"w{i}.fault",
            )
            for i in range(size)
        ]  # fmt: skip
        self.peers = ",".join(f"{s.node_id}=127.0.0.1:{s.peer_port}" for s in self.sidecars)

    # ---- processes ---------------------------------------------------------------

    def start_sidecar(self, s: SidecarProc) -> None:
        s.start([
            sys.executable, "-m", "sidecar.cli", "serve",
            "--node-id", s.node_id, "--peers", self.peers,
            "--data-dir", str(self.root / s.node_id),
            "--peer-listen", f"127.0.0.1:{s.peer_port}",
            "--api-listen", s.api,
            "--metrics-listen", f"127.0.0.1:{free_port()}",
            "--health-listen", "",
        ])  # fmt: skip

    def start_worker(self, w: WorkerProc) -> None:
        assert w.sidecar is not None and w.fault_file is not None
        w.fault_file.unlink(missing_ok=True)
        w.start([
            sys.executable, "-m", "settlement_demo.cli", "worker",
            "--sidecar", w.sidecar.api, "--election", self.election,
            "--worker-id", w.worker_id, "--ledger-url", self.ledger_url,
            "--http-listen", "", "--fault-file", str(w.fault_file),
            *self.worker_args,
        ])  # fmt: skip

    def stop_all(self) -> None:
        for p in [*self.workers, *self.sidecars]:
            if p.stopped_by_signal():
                p.signal(signal.SIGCONT)
            p.signal(signal.SIGTERM)
        for p in [*self.workers, *self.sidecars]:
            p.wait(10)
        for s in self.sidecars:
            s.close()

    # ---- what the cluster says -----------------------------------------------------

    def holder(self) -> tuple[str, int] | None:
        """(candidate id, token) of the holder as a live sidecar applied it, or None."""
        for s in self.sidecars:
            if not s.alive():
                continue
            try:
                answer = s.stub().Leader(
                    worker_pb2.LeaderRequest(election=self.election), timeout=1
                )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                continue
            if not answer.HasField("holder"):
                return None
            return answer.holder.candidate_id, int(answer.holder.fencing_token)
        return None

    def raft_leader(self) -> SidecarProc | None:
        for s in self.sidecars:
            if not s.alive():
                continue
            try:
                status = s.stub().Status(worker_pb2.StatusRequest(), timeout=1)
            except grpc.RpcError:
                continue
            if status.role == worker_pb2.RAFT_ROLE_LEADER:
                return s
        return None

    def grants(self) -> list[worker_pb2.GrantRecord]:
        """The election's audit trail from the first live sidecar that answers."""
        for s in self.sidecars:
            if not s.alive():
                continue
            records: list[worker_pb2.GrantRecord] = []
            after = 0
            try:
                while True:
                    page = s.stub().ListGrants(
                        worker_pb2.ListGrantsRequest(
                            election=self.election, after_fencing_token=after
                        ),
                        timeout=3,
                    )
                    records.extend(page.grants)
                    if not page.more or not page.grants:
                        return records
                    after = page.grants[-1].fencing_token
            except grpc.RpcError:
                continue
        return []

    def worker(self, worker_id: str) -> WorkerProc:
        return next(w for w in self.workers if w.worker_id == worker_id)


def wait_until(probe: Callable[[], T | None], what: str, timeout: float, poll: float = 0.01) -> T:
    """Poll ``probe()`` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)
