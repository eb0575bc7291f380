"""A real 3-member etcd cluster on loopback, for the etcd baseline bench.

Each member is the ``etcd`` binary (Debian's ``etcd-server``; see
``scripts/install_etcd.sh``) with its own data dir under the bench's temp dir
and its own client and peer ports, started exactly as an operator would
start a static cluster. Members are stopped by process id (the ``Popen``
handle), never by name: the machine is shared.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]

from bench.etcd_api import EtcdModules
from tests.integration.cluster import eventually, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = (
    "etcd not found: `make bench-etcd` (or `bash scripts/install_etcd.sh`) unpacks "
    "Debian's etcd-server into .tools/bin; `apt-get install -y etcd-server` also works"
)


def find_etcd() -> str | None:
    """The etcd binary: .tools/bin first (scripts/install_etcd.sh), then PATH."""
    local = REPO_ROOT / ".tools" / "bin" / "etcd"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("etcd")


def etcd_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].removeprefix("etcd Version: ").strip()


@dataclass
class Member:
    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def open_channel(self) -> grpc.Channel:
        if self.channel is None:
            self.channel = grpc.insecure_channel(self.target)
        return self.channel

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


class EtcdCluster:
    """Three members; ``heartbeat_ms``/``election_ms`` are etcd's two timing flags."""

    def __init__(
        self, binary: str, root: Path, api: EtcdModules, heartbeat_ms: int, election_ms: int
    ) -> None:
        self.binary = binary
        self.root = root
        self.api = api
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        root.mkdir(parents=True, exist_ok=True)
        self.token = f"bench-{secrets.token_hex(4)}"
        self.members = [
            Member(f"e{i}", root / f"e{i}", free_port(), free_port(), root / f"e{i}.log")
            for i in range(3)
        ]
        self.initial_cluster = ",".join(
            f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members
        )

    def start(self, member: Member) -> None:
        """Start one member; a restart reuses its data dir (the flags of the
        initial cluster are then ignored by etcd, as for any restart)."""
        peer = f"http://127.0.0.1:{member.peer_port}"
        client = f"http://127.0.0.1:{member.client_port}"
        command = [
            self.binary,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        log = member.log_path.open("ab")
        member.process = subprocess.Popen(command, stdout=log, stderr=log)

    def start_all(self) -> None:
        """Start every member and wait until the cluster has one leader that
        every member names. Raises AssertionError (and stops what it started)
        when that takes over 60 s."""
        try:
            for member in self.members:
                self.start(member)
            self.leader()
        except BaseException:
            self.stop_all()
            raise

    def status(self, member: Member, timeout: float = 0.5) -> Any | None:
        """Maintenance.Status of ``member``, None while it does not answer."""
        if member.process is None:
            return None
        stub = self.api.rpc_grpc.MaintenanceStub(member.open_channel())
        try:
            return stub.Status(self.api.rpc.StatusRequest(), timeout=timeout)
        except grpc.RpcError:
            return None

    def leader(self, seconds: float = 60) -> Member:
        """The member every live member names as leader."""

        def find() -> Member | None:
            statuses = []
            for m in self.members:
                if m.process is None:
                    continue
                st = self.status(m)
                if st is None:
                    return None  # restarting or cut off: it has a say, so wait
                statuses.append((m, st))
            leaders = {st.leader for _, st in statuses}
            if len(leaders) != 1 or 0 in leaders:
                return None
            (leader_id,) = leaders
            for m, st in statuses:
                if st.header.member_id == leader_id:
                    return m
            return None

        return eventually(find, "one etcd leader named by every member", seconds=seconds)

    def kill(self, member: Member, sig: int = signal.SIGKILL) -> None:
        if member.process is None:
            return
        member.process.send_signal(sig)
        try:
            member.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            member.process.kill()
            member.process.wait(timeout=20)
        member.process = None
        member.close_channel()

    def stop_all(self) -> None:
        for member in self.members:
            with contextlib.suppress(Exception):
                self.kill(member, signal.SIGTERM)

    def failover(self) -> float:
        """SIGKILL the leader; seconds until a survivor reports itself leader
        (Status polled every 5 ms). The killed member is restarted and the
        cluster left with one agreed leader. Raises RuntimeError after 20 s."""
        old = self.leader()
        survivors = [m for m in self.members if m is not old]
        t0 = time.monotonic()
        self.kill(old, signal.SIGKILL)
        elapsed: float | None = None
        while elapsed is None and time.monotonic() - t0 < 20:
            for member in survivors:
                st = self.status(member)
                if st is not None and st.leader == st.header.member_id:
                    elapsed = time.monotonic() - t0
                    break
            else:
                time.sleep(0.005)
        if elapsed is None:
            raise RuntimeError("no new etcd leader within 20 s")
        self.start(old)
        self.leader()
        return elapsed

    def logs(self) -> str:
        return "\n".join(
            f"--- {m.name} ---\n{m.log_path.read_text(errors='replace')[-3000:]}"
            for m in self.members
            if m.log_path.exists()
        )
