"""Real sidecar processes on loopback, for integration tests.

Each node is ``python -m sidecar.cli serve`` with its own data directory,
peer port and API port, exactly as an operator would start it; tests talk to
it with the generated gRPC stubs and kill it with real signals.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.pb.raftsidecar.admin.v1 import admin_pb2, admin_pb2_grpc
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc

T = TypeVar("T")


_PORTS = random.Random()
_HANDED_OUT: set[int] = set()
"""Ports already given to a node of this process: never hand one out twice."""


def _port_range() -> tuple[int, int]:
    """Below the kernel's ephemeral range (32768 and up here), so no outgoing
    connection takes a port between this check and the bind; one slice per
    pytest-xdist worker, so parallel tests do not pick the same ports."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    low = 20000 + (index % 6) * 2000
    return low, low + 2000


def free_port() -> int:
    """A port that is free now (a process of another test run may still take
    it first: ``Cluster.start_all`` then retries with new ports)."""
    low, high = _port_range()
    for _ in range(1000):
        port = _PORTS.randrange(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


@dataclass
class Sidecar:
    node_id: str
    data_dir: Path
    peer_port: int
    api_port: int
    metrics_port: int
    health_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    """Where its worker API, metrics and health ports listen (and tests reach them)."""
    peer_host: str = "127.0.0.1"
    """Where its peer port listens (and its peers reach it)."""

    @property
    def api(self) -> str:
        return f"{self.host}:{self.api_port}"

    def stub(self) -> Any:
        if self.channel is None:
            self.channel = grpc.insecure_channel(self.api)
        return worker_pb2_grpc.ElectionServiceStub(self.channel)

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://{self.host}:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())

    def answers(self) -> bool | None:
        """True when the worker API answers Status, None while it does not (for ``eventually``)."""
        try:
            self.status()
        except grpc.RpcError:
            return None
        return True

    def status(self) -> Any:
        return self.stub().Status(worker_pb2.StatusRequest(), timeout=2)

    def health(self, service: str = "") -> int:
        """grpc.health.v1 status of ``service`` on its probe-only health port."""
        with grpc.insecure_channel(f"{self.host}:{self.health_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=service)
            return int(stub.Check(request, timeout=3).status)

    def incarnation(self) -> str:
        """The incarnation of its data directory (docs/membership.md)."""
        body = json.loads((self.data_dir / "identity").read_text())["body"]
        return str(body["incarnation"])

    def membership_changes(self) -> list[tuple[str, str]]:
        """(change, server id) of every membership change it proposed as leader,
        in order, from its log (``membership_change_proposed``)."""
        changes = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "membership_change_proposed" in line:
                event = json.loads(line)
                changes.append((event["change"], event["server"]))
        return changes

    def server_id(self) -> str:
        """Its Raft server id, ``<name>~<incarnation>``, as peers address it."""
        return f"{self.node_id}~{self.incarnation()}"

    @property
    def admin_socket(self) -> Path:
        """Its operators' admin socket (the default, DATA_DIR/admin.sock)."""
        return self.data_dir / "admin.sock"

    def members(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``raft-sidecar members ARGS`` through its admin socket, as an operator
        runs it inside the pod."""
        command = [sys.executable, "-m", "sidecar.cli", "members", "--data-dir", str(self.data_dir)]
        return subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=os.environ.copy(),
            check=False,
        )

    def list_members(self) -> Any:
        """AdminService.ListMembers through its admin socket; raises grpc.RpcError."""
        with grpc.insecure_channel(f"unix:{self.admin_socket}") as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            return stub.ListMembers(admin_pb2.ListMembersRequest(), timeout=5)


class Cluster:
    """Real sidecars. ``tick_ms`` 20 (election timeout 200-400 ms): with 10 ms
    a machine loaded by other work (two cores, load average 10 and more)
    changed Raft leaders for nothing, and tests that assume one leader for a
    few calls failed; 25 is the most the 500 ms minimum TTL the harness uses
    allows (two election timeouts)."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        tick_ms: int = 20,
        hosts: Callable[[int], tuple[str, str]] | None = None,
    ) -> None:
        self.root = root
        self.tick_ms = tick_ms
        self.size = size
        self.hosts = hosts
        """(host, peer host) of node i; loopback for both by default."""
        self.wrap: Callable[[Sidecar], list[str]] | None = None
        """A prefix for a node's command line (e.g. ``ip netns exec NS``)."""
        self.started_once = False
        self.peers_of: Callable[[Sidecar], str] | None = None
        """Per-node --peers (e.g. through fault proxies); by default one shared list."""
        self.extra_args: Callable[[Sidecar], list[str]] | None = None
        """Per-node extra flags (e.g. TLS files)."""
        self.nodes = self._fresh_nodes()

    def _fresh_nodes(self) -> list[Sidecar]:
        nodes = [
            Sidecar(
                f"s{i}",
                self.root / f"s{i}",
                free_port(),
                free_port(),
                free_port(),
                free_port(),
                self.root / f"s{i}.log",
                host=self.hosts(i)[0] if self.hosts else "127.0.0.1",
                peer_host=self.hosts(i)[1] if self.hosts else "127.0.0.1",
            )
            for i in range(self.size)
        ]
        self.peers = ",".join(f"{n.node_id}={n.peer_host}:{n.peer_port}" for n in nodes)
        return nodes

    def start(self, node: Sidecar) -> None:
        command = [
            sys.executable, "-m", "sidecar.cli", "serve",
            "--node-id", node.node_id,
            "--peers", self.peers_of(node) if self.peers_of else self.peers,
            "--data-dir", str(node.data_dir),
            "--peer-listen", f"{node.peer_host}:{node.peer_port}",
            "--api-listen", node.api,
            "--metrics-listen", f"{node.host}:{node.metrics_port}",
            "--health-listen", f"{node.host}:{node.health_port}",
            "--tick-ms", str(self.tick_ms),
            "--ttl-min-ms", "500",
        ]  # fmt: skip
        if self.extra_args is not None:
            command += self.extra_args(node)
        if self.wrap is not None:
            command = [*self.wrap(node), *command]
        log = node.log_path.open("ab")
        node.process = subprocess.Popen(command, stdout=log, stderr=log, env=os.environ.copy())

    def start_all(self) -> None:
        """Start every node and wait until each answers on its worker API.

        On the first start, a node that exits at once lost a port race with
        another process: every node then starts again on new ports (twice at
        most). Later restarts keep their ports.
        """
        attempts = 1 if self.started_once else 3
        for attempt in range(attempts):
            for node in self.nodes:
                self.start(node)
            try:
                for node in self.nodes:
                    # A new node first agrees with its peers on the cluster's
                    # bootstrap (docs/membership.md): on a loaded machine that
                    # takes a few round trips more.
                    eventually(
                        lambda n=node: _answers(n, self),
                        f"{node.node_id} to serve its API",
                        seconds=60,
                    )
            except _NodeExited:
                self.stop_all()
                if attempt == attempts - 1:
                    raise
                self.nodes = self._fresh_nodes()
                continue
            except BaseException:
                self.stop_all()  # never leave processes behind a failed start
                raise
            self.started_once = True
            return

    def kill(self, node: Sidecar, sig: int = signal.SIGKILL) -> int:
        assert node.process is not None
        node.process.send_signal(sig)
        code = node.process.wait(timeout=20)
        node.process = None
        if node.channel is not None:
            node.channel.close()
            node.channel = None
        return code

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                self.kill(node, signal.SIGTERM)

    def leader(self, among: list[Sidecar] | None = None) -> Sidecar:
        """The one live node that reports itself leader, once every node of
        ``among`` that answers names it too.

        Waiting for agreement matters: a node that started or came back a
        moment ago may not have heard the leader yet, and a test that then
        sends it a call would see UNAVAILABLE ("no leader known").
        """

        def find() -> Sidecar | None:
            statuses = []
            for node in among or self.nodes:
                if node.process is None:
                    continue
                try:
                    statuses.append((node, node.status()))
                except grpc.RpcError:
                    continue  # frozen or not serving yet: it has no say
            leaders = [n for n, st in statuses if st.role == worker_pb2.RAFT_ROLE_LEADER]
            if len(leaders) != 1:
                return None
            if any(st.leader_id != leaders[0].node_id for _, st in statuses):
                return None
            return leaders[0]

        return eventually(find, "a single leader")

    def logs(self) -> str:
        return "\n".join(
            f"--- {n.node_id} ---\n{n.log_path.read_text(errors='replace')[-3000:]}"
            for n in self.nodes
            if n.log_path.exists()
        )


class _NodeExited(AssertionError):
    pass


def _answers(node: Sidecar, cluster: Cluster) -> bool | None:
    if node.process is not None and node.process.poll() is not None:
        raise _NodeExited(f"{node.node_id} exited at start:\n{cluster.logs()}")
    return node.answers()


def running(
    root: Path,
    size: int = 3,
    extra_args: Callable[[Sidecar], list[str]] | None = None,
    tick_ms: int = 20,
) -> Iterator[Cluster]:
    """A started cluster for a fixture: logs printed on failure, every process stopped."""
    c = Cluster(root, size, tick_ms=tick_ms)
    c.extra_args = extra_args
    c.start_all()
    try:
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()


def eventually(probe: Callable[[], T | None], what: str, seconds: float = 20.0) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
