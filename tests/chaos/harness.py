"""The system under test: one real sidecar and one real worker per node, each
node in its own network namespace, all on one ledger.

Theory of operation
-------------------
* Sidecars are ``tests.integration.cluster.Cluster`` nodes run inside a
  ``tests.netlab.NetLab`` (``raft-sidecar serve`` as an operator starts it);
  each data directory is a small tmpfs of its own, so the nemesis can fill
  one disk without touching the others.
* Worker ``i`` is ``settlement-demo worker`` in node ``i``'s namespace,
  talking to sidecar ``i`` only, with ``--history`` (its own JSON-lines
  file) and ``--fault-file`` (the pause-before-write point). A restarted
  worker gets a new worker id (``w<i>.<restarts>``): a new process is a new
  holder for the fence, as in production (``default_worker_id``).
* The ledger: a SQLite file all workers share (namespaces share the file
  system), or PostgreSQL at 127.0.0.1:5432 in a fresh schema of its own,
  which the namespaces reach through ``tests.chaos.relay.Relay`` on the root
  ends of their host links (never cut).
* A negative control wraps the sidecar or worker command line in
  ``python -m tests.chaos.planted DEFECT --`` (``wrap_sidecars`` /
  ``wrap_workers``).

Everything started is stopped by process id in ``close()`` (stopped ones
get SIGCONT first); the lab removes its namespaces (also after a crash of
this process: the next lab cleans up after dead ones); tmpfs mounts of dead
runs are unmounted at the next start (``clean_leftover_mounts``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from settlement_demo.ledger import Ledger, open_ledger
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.chaos.relay import Relay
from tests.integration.cluster import Cluster, Sidecar
from tests.netlab import NetLab

ELECTION = "settlement-eur"
PG_URL_ENV = "RAFT_SIDECAR_PG_URL"
DEFAULT_PG_URL = "postgresql://127.0.0.1:5432/test"
DISK_BYTES = 32 << 20
"""Size of each node's tmpfs data directory."""
_MOUNT_MARK = "rschaos-"
_MOUNT_NAME = re.compile(rf"/{_MOUNT_MARK}(\d+)-")


@dataclass(frozen=True, slots=True)
class Timings:
    """The run's pace: fast enough that a few minutes see many failovers, slow
    enough for two loaded cores (the demo's timings halved)."""

    tick_ms: int = 20
    ttl_ms: int = 1000
    chunk_size: int = 5
    step_delay_ms: int = 20


@dataclass
class Worker:
    index: int
    log: Path
    history: Path
    fault_file: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    ids: list[str] = field(default_factory=list)

    @property
    def worker_id(self) -> str:
        return f"w{self.index}.{self.restarts}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def pg_base_url() -> str:
    return os.environ.get(PG_URL_ENV, DEFAULT_PG_URL)


def with_search_path(url: str, schema: str) -> str:
    option = urllib.parse.quote(f"-csearch_path={schema}", safe="")
    return f"{url}{'&' if '?' in url else '?'}options={option}"


def stopped(process: subprocess.Popen[bytes] | None) -> bool:
    """True while ``process`` is stopped by a signal (state T in /proc)."""
    if process is None or process.poll() is not None:
        return False
    try:
        stat = Path(f"/proc/{process.pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def clean_leftover_mounts() -> list[str]:
    """Unmount the tmpfs data directories of chaos runs whose process is gone."""
    gone = []
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[2] != "tmpfs":
            continue
        match = _MOUNT_NAME.search(parts[1])
        if match and not Path(f"/proc/{match.group(1)}").exists():
            subprocess.run(["umount", "-l", parts[1]], check=False, capture_output=True)
            gone.append(parts[1])
    return gone


class System:
    """Sidecars, workers and the ledger of one chaos run, under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        nodes: int,
        backend: str,
        timings: Timings = Timings(),
        wrap_sidecars: Sequence[str] = (),
        wrap_workers: Sequence[str] = (),
        worker_args: Sequence[str] = (),
        node_flags: dict[str, Sequence[str]] | None = None,
    ) -> None:
        if backend not in ("sqlite", "postgres"):
            raise ValueError(f"ledger must be sqlite or postgres, not {backend!r}")
        self.root = root.resolve()
        self.backend = backend
        self.timings = timings
        self.planted_sidecar = list(wrap_sidecars)
        self.planted_worker = list(wrap_workers)
        self.worker_args = list(worker_args)
        self.node_flags = {name: list(flags) for name, flags in (node_flags or {}).items()}
        """More ``serve`` flags for some nodes (after the common ones: they win)."""
        self.lab: NetLab | None = None
        self.cluster: Cluster | None = None
        self.relay: Relay | None = None
        self.workers: list[Worker] = []
        self.mounts: list[Path] = []
        self.schema: str | None = None
        self._disk_root = self.root / f"{_MOUNT_MARK}{os.getpid()}-disks"
        self.size = nodes

    # -- life cycle --

    def start(self) -> None:
        """Lab, disks, ledger, sidecars (until each answers), then workers."""
        clean_leftover_mounts()
        self.root.mkdir(parents=True, exist_ok=True)
        self.lab = NetLab(self.size)
        lab = self.lab
        self.cluster = Cluster(
            self._disk_root,
            self.size,
            tick_ms=self.timings.tick_ms,
            hosts=lambda i: (lab.host_address(f"s{i}"), lab.peer_address(f"s{i}")),
        )
        for node in self.cluster.nodes:
            node.log_path = self.root / f"{node.node_id}.log"
            self._mount(node.data_dir)
        planted = self._planted(self.planted_sidecar)
        self.cluster.wrap = lambda node: [*lab.wrap(node.node_id), *planted]
        flags = ["--insecure-plaintext-peers", "--insecure-api-listen"]
        self.cluster.extra_args = lambda node: [*flags, *self.node_flags.get(node.node_id, [])]
        self._open_ledger_backend()
        self.cluster.start_all()
        self.workers = [
            Worker(
                i,
                self.root / f"w{i}.log",
                self.root / f"w{i}.history.jsonl",
                self.root / f"w{i}.fault",
            )
            for i in range(self.size)
        ]
        for w in self.workers:
            self.start_worker(w)

    def close(self) -> None:
        """Stop every process by id, drop the relay, unmount the disks, remove the lab."""
        for w in self.workers:
            self._end(w.process, signal.SIGTERM)
            w.process = None
        if self.cluster is not None:
            for node in self.cluster.nodes:
                self._end(node.process, signal.SIGTERM)
                node.process = None
                if node.channel is not None:
                    node.channel.close()
                    node.channel = None
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        for mount in self.mounts:
            subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
        self.mounts = []
        if self.lab is not None:
            self.lab.close()
            self.lab = None
        if self.schema is not None:
            self._drop_schema()

    @staticmethod
    def _end(process: subprocess.Popen[bytes] | None, sig: int) -> None:
        if process is None or process.poll() is not None:
            return
        if stopped(process):
            process.send_signal(signal.SIGCONT)
        process.send_signal(sig)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    @staticmethod
    def _planted(defects: Sequence[str]) -> list[str]:
        if not defects:
            return []
        return [sys.executable, "-m", "tests.chaos.planted", ",".join(defects), "--"]

    # -- disks --

    def _mount(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(path)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.mounts.append(path)

    def wipe(self, node: Sidecar) -> None:
        """Everything in the node's data directory gone (a lost disk); the mount stays."""
        for entry in node.data_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def fill(self, node: Sidecar) -> int:
        """Fill the node's disk with one file until ENOSPC; returns the bytes written."""
        written = 0
        chunk = b"\0" * (1 << 20)
        with (node.data_dir / "chaos-filler").open("wb") as f:
            try:
                while True:
                    written += f.write(chunk)
                    f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        return written

    def unfill(self, node: Sidecar) -> None:
        (node.data_dir / "chaos-filler").unlink(missing_ok=True)

    # -- the ledger --

    def _open_ledger_backend(self) -> None:
        assert self.lab is not None
        if self.backend == "sqlite":
            return
        import psycopg  # noqa: PLC0415

        self.schema = f"chaos_{os.getpid()}_{time.monotonic_ns() % 10**9}"
        with psycopg.connect(pg_base_url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        target = urllib.parse.urlsplit(pg_base_url())
        self.relay = Relay(
            [(self.lab.host_gateway(n), 0) for n in self.lab.names],
            (target.hostname or "127.0.0.1", target.port or 5432),
        )

    def _drop_schema(self) -> None:
        import psycopg  # noqa: PLC0415

        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(pg_base_url(), autocommit=True, connect_timeout=5) as conn,
        ):
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        self.schema = None

    @property
    def ledger_url(self) -> str:
        """The ledger as the runner (root namespace) reaches it."""
        if self.backend == "sqlite":
            return f"sqlite:///{self.root / 'ledger.sqlite3'}"
        assert self.schema is not None
        return with_search_path(pg_base_url(), self.schema)

    def worker_ledger_url(self, index: int) -> str:
        """The ledger as worker ``index`` reaches it (through the relay for PostgreSQL)."""
        if self.backend == "sqlite":
            return self.ledger_url
        assert self.relay is not None and self.schema is not None
        host, port = self.relay.addresses[index]
        base = urllib.parse.urlsplit(pg_base_url())
        user = f"{base.username}@" if base.username else ""
        path = base.path or "/test"
        return with_search_path(f"postgresql://{user}{host}:{port}{path}", self.schema)

    def ledger(self) -> Ledger:
        ledger = open_ledger(self.ledger_url)
        ledger.create_schema()
        return ledger

    # -- processes --

    @property
    def nodes(self) -> list[Sidecar]:
        assert self.cluster is not None
        return self.cluster.nodes

    def start_worker(self, w: Worker) -> None:
        assert self.lab is not None
        if w.process is not None:
            w.restarts += 1
        w.fault_file.unlink(missing_ok=True)
        node = self.nodes[w.index]
        w.ids.append(w.worker_id)
        t = self.timings
        command = [
            *self.lab.wrap(node.node_id), *self._planted(self.planted_worker),
            sys.executable, "-m", "settlement_demo.cli", "worker",
            "--sidecar", node.api, "--election", ELECTION, "--worker-id", w.worker_id,
            "--ledger-url", self.worker_ledger_url(w.index), "--http-listen", "",
            "--ttl-ms", str(t.ttl_ms), "--chunk-size", str(t.chunk_size),
            "--step-delay-ms", str(t.step_delay_ms), "--generate-interval-ms", "0",
            "--fault-file", str(w.fault_file), "--history", str(w.history),
            *self.worker_args,
        ]  # fmt: skip
        with w.log.open("ab") as out:
            w.process = subprocess.Popen(
                command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=os.environ.copy()
            )

    def kill_worker(self, w: Worker, sig: int = signal.SIGKILL) -> None:
        if w.process is not None and w.process.poll() is None:
            if stopped(w.process):
                w.process.send_signal(signal.SIGCONT)
            w.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.process.wait(15)

    def start_sidecar(self, node: Sidecar) -> None:
        assert self.cluster is not None
        if node.channel is not None:
            node.channel.close()
            node.channel = None
        self.cluster.start(node)

    def stop_sidecar(self, node: Sidecar, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL or SIGTERM) and wait for the exit."""
        if node.process is None:
            return
        if node.process.poll() is None:
            if stopped(node.process):
                node.process.send_signal(signal.SIGCONT)
            node.process.send_signal(sig)
            try:
                node.process.wait(20)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(10)
        node.process = None
        if node.channel is not None:
            node.channel.close()
            node.channel = None

    def sidecar_down(self, node: Sidecar) -> bool:
        return node.process is None or node.process.poll() is not None

    # -- what the cluster says (quick, never waiting) --

    def status(self, node: Sidecar) -> worker_pb2.StatusResponse | None:
        if self.sidecar_down(node) or stopped(node.process):
            return None
        try:
            return node.stub().Status(worker_pb2.StatusRequest(), timeout=1)
        except grpc.RpcError:
            return None

    def raft_leader(self) -> Sidecar | None:
        for node in self.nodes:
            st = self.status(node)
            if st is not None and st.role == worker_pb2.RAFT_ROLE_LEADER:
                return node
        return None

    def holder(self) -> tuple[str, int] | None:
        """(worker id, token) of the holder as the Raft leader applied it."""
        leader = self.raft_leader()
        if leader is None:
            return None
        try:
            answer = leader.stub().Leader(worker_pb2.LeaderRequest(election=ELECTION), timeout=1)
        except grpc.RpcError:
            return None
        if not answer.HasField("holder") or not answer.holder.candidate_id:
            return None
        return answer.holder.candidate_id, int(answer.holder.fencing_token)

    def worker_of(self, worker_id: str) -> Worker | None:
        return next((w for w in self.workers if w.worker_id == worker_id), None)

    def logs_tail(self, chars: int = 2000) -> str:
        paths = sorted(self.root.glob("s*.log")) + sorted(self.root.glob("w*.log"))
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-chars:]}" for p in paths
        )
