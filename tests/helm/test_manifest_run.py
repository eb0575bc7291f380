"""Run the pods the chart renders, as local processes.

Each rendered container's command, args and env are taken exactly as helm
rendered them and resolved as the kubelet does (downward API, Secrets,
``$(VAR)``). Then only what differs between a cluster and this machine is
substituted: each pod gets its own loopback IP (Linux answers all of 127/8,
so the rendered ports are kept), its DNS name and its 0.0.0.0/127.0.0.1
listen hosts become that IP, volumes become directories, and the ledger URL
a fresh schema of the local PostgreSQL. If the sidecars then elect a leader,
serve probes and metrics where the manifests say, and hand over on SIGTERM
within the grace period, the chart's wiring works.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc
from tests.helm.chart import (
    CHART,
    NAMESPACE,
    Manifests,
    command_line,
    literal_env,
    pre_stop_sleep_s,
    render,
    resolve_env,
    secret_value,
)
from tests.helm.programs import (
    VENV_BIN,
    Processes,
    ledger_url,
    metric,
    postgres_missing,
    program,
    scrape,
)
from tests.helm.tools import find_tool, unavailable
from tests.integration.cluster import eventually


def ip_block() -> int:
    """127.0.<block>.x for this test process: one block per pytest-xdist
    worker (gw0 -> 2, gw1 -> 3, ...), and no other test uses 127.0.2+.x."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return 2 + (int(worker) if worker.isdigit() else 0)


@dataclass
class Container:
    argv: list[str]
    env: dict[str, str]


@dataclass
class Pod:
    name: str
    ip: str
    root: Path
    sidecar: Container
    worker: Container
    channel: grpc.Channel | None = field(default=None, repr=False)

    def address(self, container: Container, variable: str) -> str:
        return container.env[variable]

    @property
    def api(self) -> str:
        return self.sidecar.env["RAFT_SIDECAR_API_LISTEN"]

    def stub(self) -> Any:
        if self.channel is None:
            self.channel = grpc.insecure_channel(self.api)
        return worker_pb2_grpc.ElectionServiceStub(self.channel)

    def status(self) -> Any | None:
        try:
            return self.stub().Status(worker_pb2.StatusRequest(), timeout=2)
        except grpc.RpcError:
            return None


class Localizer:
    """Maps what a pod sees in a cluster to what it is on this machine."""

    def __init__(self, m: Manifests, root: Path, secrets: Callable[[str, str], str]) -> None:
        self.m = m
        self.root = root
        self.secrets = secrets
        sts = m.statefulset
        self.sts_name = sts["metadata"]["name"]
        self.replicas = int(sts["spec"]["replicas"])
        domain = f"{m.headless_service()['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
        block = ip_block()
        self.ips = {f"{self.sts_name}-{i}": f"127.0.{block}.{i + 1}" for i in range(self.replicas)}
        self.dns = {f"{name}.{domain}": ip for name, ip in self.ips.items()}
        self.volume_dirs: dict[str, Path] = {}
        """Volumes shared by every pod (Secrets); others get a directory per pod."""

    def pods(self) -> list[Pod]:
        return [self.pod(name) for name in self.ips]

    def pod(self, name: str) -> Pod:
        ip, root = self.ips[name], self.root / name
        root.mkdir(parents=True, exist_ok=True)
        fields = {"metadata.name": name, "metadata.namespace": NAMESPACE}
        containers = {}
        for container_name in ("sidecar", "worker"):
            spec = self.m.container(container_name)
            env = resolve_env(spec, field=fields.__getitem__, secret=self.secrets)
            mounts = {
                v["mountPath"]: self.volume_dirs.get(v["name"], root / v["name"])
                for v in spec.get("volumeMounts") or []
            }
            for path in mounts.values():
                path.mkdir(parents=True, exist_ok=True)

            def local(value: str, ip: str = ip, mounts: dict[str, Path] = mounts) -> str:
                if "://" in value:
                    return value  # a URL (the ledger's, from the Secret): not a pod address
                # A path inside a volume: the longest mount path, replaced once.
                for mount_path in sorted(mounts, key=len, reverse=True):
                    prefix = mount_path.rstrip("/")
                    if value == prefix or value.startswith(prefix + "/"):
                        return str(mounts[mount_path]) + value[len(prefix) :]
                for host, host_ip in self.dns.items():
                    value = value.replace(host, host_ip)
                return re.sub(r"(?<![\d.])(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)", ip + r":\1", value)

            env = {k: local(v) for k, v in env.items()}
            admin = env.get("RAFT_SIDECAR_ADMIN_SOCKET", "")
            if container_name == "sidecar" and len(os.fsencode(admin)) > 100:
                # In the pod the admin socket's path is short; its copy below
                # pytest's tmp_path can exceed the 107 bytes of a Unix socket path,
                # which the sidecar refuses at start. Removed when the sidecar stops.
                admin_socket = Path(tempfile.gettempdir()) / f"rs-{os.getpid()}-{name}.sock"
                env["RAFT_SIDECAR_ADMIN_SOCKET"] = str(admin_socket)
            argv = [local(a) for a in command_line(spec, env)]
            argv = [*program(argv[0]), *argv[1:]]
            process_env = {
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                # The code under test, when it is not the installed one (a worktree).
                **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
                "HOME": str(root),
                "LANG": "C.UTF-8",
                "TMPDIR": str(mounts.get("/tmp", root)),
                **env,
            }
            containers[container_name] = Container(argv, process_env)
        return Pod(name, ip, root, containers["sidecar"], containers["worker"])


def rendered_ledger_secret(m: Manifests, local_url: str | None) -> Callable[[str, str], str]:
    def secret(name: str, key: str) -> str:
        value = secret_value(m, name, key)
        assert value is not None, f"Secret {name} is not rendered by the chart"
        assert value.startswith("postgresql://"), value
        if local_url is None:
            return "postgresql://unused"  # the sidecar-only runs start no worker
        return local_url

    return secret


class RunningPods:
    def __init__(
        self, pods: list[Pod], processes: Processes, peer_secrets: PeerSecrets | None = None
    ) -> None:
        self.pods = pods
        self.processes = processes
        self.peer_secrets = peer_secrets

    def start_sidecars(self) -> None:
        for pod in self.pods:
            self.processes.start(f"{pod.name}-sidecar", pod.sidecar.argv, pod.sidecar.env)

    def start_workers(self) -> None:
        for pod in self.pods:
            self.processes.start(f"{pod.name}-worker", pod.worker.argv, pod.worker.env)

    def check_alive(self) -> None:
        exited = self.processes.exited()
        assert not exited, f"exited: {exited}\n{self.processes.logs()}"

    def leader(self, among: list[Pod] | None = None) -> tuple[Pod, Any]:
        """The one pod that is Raft leader, once every live pod follows it."""

        def find() -> tuple[Pod, Any] | None:
            self.check_alive()
            statuses = [(pod, pod.status()) for pod in among or self.pods]
            if any(s is None for _, s in statuses):
                return None
            leaders = [(p, s) for p, s in statuses if s.role == worker_pb2.RAFT_ROLE_LEADER]
            if len(leaders) != 1:
                return None
            leader = leaders[0][1].node_id
            return leaders[0] if all(s.leader_id == leader for _, s in statuses) else None

        return eventually(find, "one Raft leader followed by every pod", seconds=30)

    def close(self) -> None:
        for pod in self.pods:
            if pod.channel is not None:
                pod.channel.close()
        self.processes.stop_all()


@pytest.fixture
def run_pods(helm: str, helm_home: Path, tmp_path: Path) -> Iterator[Callable[..., RunningPods]]:
    """``run_pods(values, ledger=None, setup=None)`` renders the chart and
    makes its pods' processes (started by the test); all stopped at the end."""
    started: list[RunningPods] = []

    def make(
        values: tuple[Path, ...] = (),
        *,
        ledger: str | None = None,
        setup: Callable[[Localizer], None] | None = None,
    ) -> RunningPods:
        m = Manifests(render(helm, helm_home, values))
        localizer = Localizer(m, tmp_path / "pods", rendered_ledger_secret(m, ledger))
        peer_secrets = None
        if any(v["name"] == "tls" for v in m.pod_spec["volumes"]):
            peer_secrets = PeerSecrets(tmp_path / "tls-volume", localizer)
            localizer.volume_dirs["tls"] = peer_secrets.root
        if setup is not None:
            setup(localizer)
        running = RunningPods(localizer.pods(), Processes(tmp_path), peer_secrets)
        started.append(running)
        return running

    yield make
    for running in started:
        running.close()


def rendered_grace(m: Manifests) -> tuple[int, int]:
    return pre_stop_sleep_s(m.container("sidecar")), int(
        m.pod_spec["terminationGracePeriodSeconds"]
    )


def health(address: str, service: str = "") -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError:
            return None
    return int(reply.status)


# ---- the tests ---------------------------------------------------------------------

THREE = (CHART / "ci" / "replicas-3-values.yaml",)


def test_rendered_pods_elect_a_leader_serve_probes_and_hand_over(
    run_pods: Callable[..., RunningPods], helm: str, helm_home: Path
) -> None:
    pods = run_pods(THREE)
    pods.start_sidecars()
    leader, status = pods.leader()

    # The Raft cluster is the rendered peers list: pod names at their DNS names.
    names = [pod.name for pod in pods.pods]
    peer_port = int(pods.pods[0].sidecar.env["RAFT_SIDECAR_PEER_LISTEN"].rpartition(":")[2])
    assert sorted({status.node_id, *(p.id for p in status.peers)}) == names
    ips = {pod.name: pod.ip for pod in pods.pods}
    for peer in status.peers:
        assert peer.address == f"{ips[peer.id]}:{peer_port}", peer

    for pod in pods.pods:
        # The kubelet's gRPC probes: grpc.health.v1 on the health port says SERVING.
        probe = pod.sidecar.env["RAFT_SIDECAR_HEALTH_LISTEN"]
        assert probe.endswith(":7403")
        eventually(
            lambda probe=probe: health(probe) == health_pb2.HealthCheckResponse.SERVING or None,
            f"{pod.name} health port to say SERVING",
        )
        # Prometheus' target: /metrics on the metrics port (sampled every second).
        target = pod.sidecar.env["RAFT_SIDECAR_METRICS_LISTEN"]
        eventually(
            lambda target=target: metric(target, "raft_sidecar_raft_term") == status.term or None,
            f"{pod.name} /metrics to show the term",
        )

    # SIGTERM (after the preStop sleep, which this run skips): the leader
    # hands Raft leadership over and exits 0 well within the grace period.
    m = Manifests(render(helm, helm_home, THREE))
    pre_stop_s, grace_s = rendered_grace(m)
    started = time.monotonic()
    code = pods.processes.stop(f"{leader.name}-sidecar", signal.SIGTERM, timeout_s=grace_s)
    took_s = time.monotonic() - started
    assert code == 0, pods.processes.logs()
    assert took_s < grace_s - pre_stop_s, f"SIGTERM took {took_s:.1f} s"
    rest = [pod for pod in pods.pods if pod is not leader]
    new_leader, new_status = pods.leader(rest)
    assert new_leader is not leader
    assert new_status.term > status.term


def test_a_sidecar_restarted_during_an_outage_passes_startup_but_is_not_ready(
    run_pods: Callable[..., RunningPods], helm: str, helm_home: Path
) -> None:
    """A pod that restarts while its peers are down must wait for them, not
    be restarted again: the rendered startup and liveness probes succeed on a
    lone sidecar once its API serves, while its readiness probe fails (it
    knows no leader). When the peers come back it becomes ready."""
    m = Manifests(render(helm, helm_home, THREE))
    sidecar = m.container("sidecar")
    probes = {name: sidecar[name]["grpc"].get("service", "") for name in PROBES}
    pods = run_pods(THREE)
    pods.start_sidecars()
    pods.leader()
    # The whole cluster goes down (a zone outage); one pod comes back alone.
    for pod in pods.pods:
        pods.processes.stop(f"{pod.name}-sidecar", signal.SIGKILL)
    lone, *peers = pods.pods
    pods.processes.start(f"{lone.name}-sidecar", lone.sidecar.argv, lone.sidecar.env)
    address = lone.sidecar.env["RAFT_SIDECAR_HEALTH_LISTEN"]
    serving = health_pb2.HealthCheckResponse.SERVING

    def started() -> bool | None:
        pods.check_alive()
        return health(address, probes["startupProbe"]) == serving or None

    eventually(started, "the lone sidecar's startup probe to succeed", seconds=30)
    # Several election timeouts (1 s each, randomized up to 2 s) without a
    # quorum: started and alive all along, never ready.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pods.check_alive()
        assert health(address, probes["startupProbe"]) == serving
        assert health(address, probes["livenessProbe"]) == serving
        assert health(address, probes["readinessProbe"]) != serving
        time.sleep(0.5)
    status = lone.status()
    assert status is not None and status.leader_id == ""
    for pod in peers:
        pods.processes.start(f"{pod.name}-sidecar", pod.sidecar.argv, pod.sidecar.env)
    pods.leader()
    eventually(
        lambda: health(address, probes["readinessProbe"]) == serving or None,
        "the sidecar to become ready once a quorum is back",
        seconds=30,
    )


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def test_helm_test_pod_passes_on_a_healthy_cluster_and_names_a_missing_pod(
    run_pods: Callable[..., RunningPods], helm: str, helm_home: Path
) -> None:
    """`helm test`'s pod, its rendered command run as a local process with
    the pods' DNS names pointing at their local addresses: exit 0 while every
    sidecar is SERVING, exit 1 naming the pod whose sidecar is gone."""
    m = Manifests(render(helm, helm_home, THREE))
    (test_pod,) = m.of_kind("Pod")
    (container,) = test_pod["spec"]["containers"]
    pods = run_pods(THREE)
    pods.start_sidecars()
    pods.leader()
    domain = f"{m.headless_service()['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    local = {f"{pod.name}.{domain}": pod.ip for pod in pods.pods}

    def run_test_pod() -> subprocess.CompletedProcess[str]:
        argv = [*container["command"], *container["args"]]
        argv[0] = sys.executable  # the image's python
        for host, ip in local.items():
            argv = [a.replace(host, ip) for a in argv]
        env = {k: v for k, v in os.environ.items() if k in {"PATH", "PYTHONPATH", "HOME"}}
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env=env, check=False
        )

    def passes() -> subprocess.CompletedProcess[str] | None:
        result = run_test_pod()
        return result if result.returncode == 0 else None

    result = eventually(passes, "helm test to pass on the running cluster", seconds=30)
    assert result.stdout.count("SERVING") == len(pods.pods), result.stdout
    gone = pods.pods[-1]
    pods.processes.stop(f"{gone.name}-sidecar", signal.SIGKILL)
    result = run_test_pod()
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if not x.endswith(" SERVING")]
    assert line.startswith(f"{gone.ip}:") and line.endswith(" UNAVAILABLE"), line


def openssl(directory: Path, *args: str) -> None:
    tool = find_tool("openssl")
    if tool is None:
        unavailable("openssl not found: it makes the test certificates")
        return
    subprocess.run([tool, *args], cwd=directory, check=True, capture_output=True)


EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


class PeerSecrets:
    """Every pod's peer TLS Secret as the kubelet lays out the projected volume:
    ``<pod>/{tls.crt,tls.key,ca.crt}`` reached through the ``..data`` symlink,
    which an update swaps atomically to a new directory. The certificates are
    made with openssl, like cert-manager's: one CA, and per pod one
    certificate naming ``<pod>.<cluster id>.raft-sidecar.internal``."""

    def __init__(self, root: Path, localizer: Localizer) -> None:
        self.root = root
        self.pods = list(localizer.ips)
        self.cluster_id = literal_env(localizer.m.container("sidecar"))["RAFT_SIDECAR_CLUSTER_ID"]
        self.ca_dir = root.parent / "tls-ca"
        self.ca_dir.mkdir(parents=True)
        root.mkdir(parents=True)
        openssl(self.ca_dir, "req", "-x509", *EC_KEY, "-keyout", "ca.key", "-out", "ca.crt",
                "-days", "2", "-subj", "/CN=raft-sidecar test CA")  # fmt: skip
        self.generation = 0
        self.publish()
        for pod in self.pods:
            (root / pod).symlink_to(Path("..data") / pod)

    def publish(self) -> None:
        """New keys and certificates for every pod, swapped in at once."""
        self.generation += 1
        version = self.root / f"..version-{self.generation}"
        for pod in self.pods:
            directory = version / pod
            directory.mkdir(parents=True)
            identity = f"{pod}.{self.cluster_id}.raft-sidecar.internal"
            (directory / "ext.cnf").write_text(
                f"subjectAltName=DNS:{identity}\nextendedKeyUsage=serverAuth,clientAuth\n"
            )
            openssl(directory, "req", *EC_KEY, "-keyout", "tls.key", "-out", "tls.csr",
                    "-subj", f"/CN={pod}")  # fmt: skip
            openssl(directory, "x509", "-req", "-in", "tls.csr",
                    "-CA", str(self.ca_dir / "ca.crt"), "-CAkey", str(self.ca_dir / "ca.key"),
                    "-CAcreateserial", "-out", "tls.crt", "-days", "2",
                    "-extfile", "ext.cnf")  # fmt: skip
            (directory / "ca.crt").write_bytes((self.ca_dir / "ca.crt").read_bytes())
        swap = self.root / "..data_tmp"
        swap.symlink_to(version.name)
        os.replace(swap, self.root / "..data")

    def files(self, pod: str) -> Path:
        return self.root / pod

    def identity(self, pod: str) -> str:
        return f"{pod}.{self.cluster_id}.raft-sidecar.internal"


def served_certificate(secrets: PeerSecrets, server: Pod, client: str) -> bytes:
    """DER of the certificate ``server``'s peer port shows a new connection
    with ``client``'s files that expects ``server``'s identity."""
    host, _, port = server.sidecar.env["RAFT_SIDECAR_PEER_LISTEN"].rpartition(":")
    context = ssl.create_default_context(cafile=str(secrets.files(client) / "ca.crt"))
    context.load_cert_chain(secrets.files(client) / "tls.crt", secrets.files(client) / "tls.key")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=secrets.identity(server.name)) as tls,
    ):
        served = tls.getpeercert(binary_form=True)
    assert served is not None
    return served


def test_rendered_pods_with_tls_elect_a_leader_over_mtls_and_reload(
    run_pods: Callable[..., RunningPods], tmp_path: Path
) -> None:
    pods = run_pods((CHART / "ci" / "tls-values.yaml",))
    secrets_root = tmp_path / "tls-volume"
    for pod in pods.pods:
        assert pod.sidecar.env["RAFT_SIDECAR_TLS_CA_FILE"] == str(
            secrets_root / pod.name / "ca.crt"
        )
    pods.start_sidecars()
    leader, _ = pods.leader()

    def reachable_peers() -> set[str] | None:
        text = scrape(leader.sidecar.env["RAFT_SIDECAR_METRICS_LISTEN"])
        if text is None:
            return None
        reachable = {
            s.labels["peer"]
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "raft_sidecar_peer_reachable" and s.value == 1
        }
        return reachable if len(reachable) == 2 else None

    # The leader reaches both peers, and the peer port shows each pod's own
    # certificate from the mounted Secrets.
    assert eventually(reachable_peers, "the leader to reach both peers") == {
        pod.name for pod in pods.pods if pod is not leader
    }
    secrets = pods.peer_secrets
    assert secrets is not None
    other = next(pod for pod in pods.pods if pod is not leader)

    def own(pod: Pod) -> bytes:
        return ssl.PEM_cert_to_DER_cert((secrets.files(pod.name) / "tls.crt").read_text())

    assert served_certificate(secrets, leader, other.name) == own(leader)

    # cert-manager renews, the kubelet swaps ..data: every sidecar reloads.
    secrets.publish()
    for pod in pods.pods:
        target = pod.sidecar.env["RAFT_SIDECAR_METRICS_LISTEN"]
        expiry = "raft_sidecar_peer_certificate_expiry_timestamp_seconds"
        eventually(
            lambda p=pod, t=target: served_certificate(secrets, p, other.name) == own(p) or None,
            f"{pod.name} to serve its renewed certificate",
        )
        assert metric(target, expiry) is not None
    pods.leader()


def test_rendered_workers_one_holds_the_election(
    run_pods: Callable[..., RunningPods],
) -> None:
    no_postgres = postgres_missing()
    if no_postgres is not None:
        unavailable(no_postgres)
    with ledger_url() as url:
        pods = run_pods(THREE, ledger=url)
        pods.start_sidecars()
        leader, _ = pods.leader()
        pods.start_workers()
        election = pods.pods[0].worker.env["SETTLEMENT_DEMO_ELECTION"]

        def one_holder() -> tuple[str, int] | None:
            pods.check_alive()
            leading = []
            for pod in pods.pods:
                http = pod.worker.env["SETTLEMENT_DEMO_HTTP_LISTEN"]
                is_leader = metric(http, "settlement_worker_is_leader")
                if is_leader is None:
                    return None
                if is_leader == 1:
                    leading.append(pod.name)
            reply = leader.stub().Leader(worker_pb2.LeaderRequest(election=election), timeout=2)
            holder = reply.holder if reply.HasField("holder") else None
            if len(leading) != 1 or holder is None or holder.candidate_id != leading[0]:
                return None
            return leading[0], holder.fencing_token

        holder, token = eventually(one_holder, "exactly one worker to hold the election", 45)
        assert holder in {pod.name for pod in pods.pods}
        assert token > 0
        # The worker's own probes answer where the manifest's probes look.
        for pod in pods.pods:
            http = pod.worker.env["SETTLEMENT_DEMO_HTTP_LISTEN"]
            assert scrape(http, "/healthz") is not None, pod.name
        pods.close()


def test_localizer_maps_only_cluster_addresses(helm: str, helm_home: Path, tmp_path: Path) -> None:
    """The substitutions touch hosts, directories and the ledger URL, nothing else."""
    m = Manifests(render(helm, helm_home, THREE))
    localizer = Localizer(m, tmp_path, rendered_ledger_secret(m, "postgresql://local/x"))
    pod = localizer.pod(f"{localizer.sts_name}-1")
    block = ip_block()
    rendered = literal_env(m.container("sidecar"))
    env = pod.sidecar.env
    assert env["RAFT_SIDECAR_NODE_ID"] == f"{localizer.sts_name}-1"
    assert env["RAFT_SIDECAR_PEERS"] == ",".join(
        f"{localizer.sts_name}-{i}=127.0.{block}.{i + 1}:7400" for i in range(3)
    )
    assert env["RAFT_SIDECAR_API_LISTEN"] == f"127.0.{block}.2:7401"
    assert env["RAFT_SIDECAR_HEALTH_LISTEN"] == f"127.0.{block}.2:7403"
    assert env["RAFT_SIDECAR_DATA_DIR"] == str(tmp_path / pod.name / "data" / "raft")
    for name in ("RAFT_SIDECAR_TICK_MS", "RAFT_SIDECAR_TTL_MIN_MS", "RAFT_SIDECAR_CLUSTER_ID"):
        assert env[name] == rendered[name]
    worker = pod.worker.env
    assert worker["SETTLEMENT_DEMO_SIDECAR"] == f"127.0.{block}.2:7401"
    assert worker["SETTLEMENT_DEMO_WORKER_ID"] == pod.name
    assert worker["SETTLEMENT_DEMO_LEDGER_URL"] == "postgresql://local/x"
    assert pod.sidecar.argv[-1] == "serve" and pod.worker.argv[-1] == "worker"
