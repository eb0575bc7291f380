"""Every setting of ``raft-sidecar serve``, as a flag and an environment variable.

One place defines each setting once: its flag, its environment variable
(``RAFT_SIDECAR_`` + the flag in upper snake case), its default and its
check. A flag beats the environment, which beats the default. ``load``
validates everything at start and reports every problem at once, so an
operator fixes a manifest in one round trip.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.transport.identity import naming_problems

ENV_PREFIX = "RAFT_SIDECAR_"
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})$")


class ConfigError(Exception):
    """One or more settings are invalid; the message lists each, one per line."""


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    node_id: str
    peers: dict[str, str]
    """Every voter of the initial cluster, this node included: id -> peer address."""
    cluster_id: str
    data_dir: str
    peer_listen: str
    api_listen: str
    metrics_listen: str
    tick_ms: int
    election_timeout_ticks: int
    heartbeat_ticks: int
    ttl_min_ms: int
    ttl_max_ms: int
    log_level: str = "info"
    event_loop: str = "uvloop"
    """uvloop or asyncio (the standard library's loop): docs/sidecar.md, "Running it"."""
    health_listen: str = ""
    """host:port of the health-only gRPC server for kubelet probes; empty: none."""
    tls: TlsFiles | None = None
    """Peer mutual TLS; None: plaintext peer traffic."""
    insecure_plaintext_peers: bool = False
    """Plaintext peer traffic beyond loopback was asked for deliberately."""
    insecure_api_listen: bool = False
    """The worker API may listen beyond loopback (asked for deliberately)."""
    keepalive_grace_ms: int = 0
    """Re-attach grace after a KeepAlive stream *breaks*: its leases are revoked
    after min(ttl/4, this) unless a new stream presents their keys (0: at once,
    as DESIGN.md asks; a deliberate end always waits a quarter TTL)."""
    admin_socket: str = ""
    """Unix socket path of the operators' AdminService (``--admin-socket``;
    default DATA_DIR/admin.sock)."""
    auto_membership: bool = True
    """The Raft leader admits, promotes and removes on its own (docs/membership.md);
    False: only operators change the membership (``raft-sidecar members``)."""
    membership_recheck_ms: int = 5000
    """The membership tasks act on events; with none, they recheck this often
    (a safety net, docs/membership.md)."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for peer mutual TLS: this node's certificate chain and key,
    and the CA bundle that every peer's certificate must chain to."""

    cert_file: str
    key_file: str
    ca_file: str


@dataclass(frozen=True, slots=True)
class _Setting:
    name: str
    help: str
    default: str | None
    parse: Callable[[str], Any]


def _int(value: str) -> int:
    return int(value, 10)


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise ValueError("use true or false")


def _peers(value: str) -> dict[str, str]:
    peers: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in value.split(","))):
        node_id, sep, address = item.partition("=")
        if not sep:
            raise ValueError(f"peer {item!r} is not of the form id=host:port")
        if node_id in peers:
            raise ValueError(f"peer {node_id!r} is listed twice")
        peers[node_id] = address
    return peers


SETTINGS: tuple[_Setting, ...] = (
    _Setting("node-id", "this sidecar's id; one of --peers", None, str),
    _Setting(
        "peers",
        "every voter of the initial cluster, this node included: id=host:port,id=host:port",
        None,
        _peers,
    ),
    _Setting("cluster-id", "refuse peers of another cluster", "raft-sidecar", str),
    _Setting("data-dir", "directory of the Raft log, hard state and snapshots", None, str),
    _Setting("peer-listen", "host:port for the peer Raft API", "0.0.0.0:7400", str),
    _Setting(
        "api-listen",
        "host:port or unix:/path for the worker API (keep it inside the pod)",
        "127.0.0.1:7401",
        str,
    ),
    _Setting("metrics-listen", "host:port for Prometheus /metrics", "0.0.0.0:7402", str),
    _Setting(
        "health-listen",
        "host:port serving only grpc.health.v1 (kubelet probes); empty for none",
        "0.0.0.0:7403",
        str,
    ),
    _Setting("tick-ms", "one Raft tick in milliseconds", "15", _int),
    _Setting(
        "election-timeout-ticks",
        "ticks before a follower campaigns (randomized in [T, 2T))",
        "10",
        _int,
    ),
    _Setting("heartbeat-ticks", "ticks between leader heartbeats", "2", _int),
    _Setting("ttl-min-ms", "smallest lease TTL a worker may ask for", "1000", _int),
    _Setting("ttl-max-ms", "largest lease TTL a worker may ask for", "60000", _int),
    _Setting(
        "keepalive-grace-ms",
        "after a keep-alive stream breaks, wait min(ttl/4, this) for the worker to re-attach "
        "before revoking its leases (0: at once; a stream the client ended on purpose always "
        "waits a quarter TTL)",
        "0",
        _int,
    ),
    _Setting("log-level", "debug, info, warning or error", "info", str),
    _Setting(
        "event-loop",
        "uvloop, or asyncio for the standard library's loop (a fallback: uvloop costs "
        "less CPU per message)",
        "uvloop",
        str,
    ),
    _Setting(
        "admin-socket",
        "Unix socket path of the operators' admin service (raft-sidecar members); "
        "empty for DATA_DIR/admin.sock",
        "",
        str,
    ),
    _Setting(
        "auto-membership",
        "the Raft leader admits new incarnations, promotes caught-up learners and removes "
        "scaled-away members on its own; false: only operators do (raft-sidecar members)",
        "true",
        _bool,
    ),
    _Setting(
        "membership-recheck-ms",
        "the membership tasks act on events (a hello's news, a membership change); with "
        "none, the leader's plan is rechecked this often",
        "5000",
        _int,
    ),
    _Setting("tls-cert-file", "PEM certificate chain for peer mTLS (with key and CA)", "", str),
    _Setting("tls-key-file", "PEM private key for peer mTLS", "", str),
    _Setting("tls-ca-file", "PEM CA bundle that peers' certificates must chain to", "", str),
    _Setting(
        "insecure-plaintext-peers",
        "allow plaintext, unauthenticated peer traffic beyond loopback (without TLS files)",
        "false",
        _bool,
    ),
    _Setting(
        "insecure-api-listen",
        "allow --api-listen beyond loopback: the worker API is plaintext and unauthenticated, "
        "and lease keys cross it",
        "false",
        _bool,
    ),
)

_TLS_SETTINGS = ("tls-cert-file", "tls-key-file", "tls-ca-file")


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper().replace("-", "_")


def valid_node_id(value: str) -> bool:
    """Whether ``value`` may be a ``--node-id`` (offline tools check names the same way)."""
    return bool(_NODE_ID.match(value))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for s in SETTINGS:
        if s.default is None:
            default = " (required)"
        else:
            default = f" (default {s.default})" if s.default else " (default: none)"
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if s.parse is _bool else {}
        parser.add_argument(
            f"--{s.name}",
            dest=s.name.replace("-", "_"),
            default=None,
            help=f"{s.help}{default}; env {env_name(s.name)}",
            **switch,
        )


def load(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> SidecarConfig:
    """Build the configuration from flags, then environment, then defaults.

    Raises ConfigError listing every invalid or missing setting.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for s in SETTINGS:
        raw = getattr(args, s.name.replace("-", "_"), None)
        source = f"--{s.name}"
        if raw is None:
            raw, source = env.get(env_name(s.name)), env_name(s.name)
        if raw is None:
            raw, source = s.default, "default"
        if raw is None:
            problems.append(f"--{s.name} (or {env_name(s.name)}) is required: {s.help}")
            continue
        try:
            values[s.name] = s.parse(raw)
        except ValueError as exc:
            problems.append(f"{source}={raw!r}: {exc}")
    problems.extend(_check(values))
    if problems:
        raise ConfigError("\n".join(problems))
    return SidecarConfig(
        node_id=values["node-id"],
        peers=values["peers"],
        cluster_id=values["cluster-id"],
        data_dir=values["data-dir"],
        peer_listen=values["peer-listen"],
        api_listen=values["api-listen"],
        metrics_listen=values["metrics-listen"],
        tick_ms=values["tick-ms"],
        election_timeout_ticks=values["election-timeout-ticks"],
        heartbeat_ticks=values["heartbeat-ticks"],
        ttl_min_ms=values["ttl-min-ms"],
        ttl_max_ms=values["ttl-max-ms"],
        log_level=values["log-level"],
        event_loop=values["event-loop"],
        keepalive_grace_ms=values["keepalive-grace-ms"],
        health_listen=values["health-listen"],
        tls=TlsFiles(*(values[name] for name in _TLS_SETTINGS))
        if values["tls-cert-file"]
        else None,
        insecure_plaintext_peers=values["insecure-plaintext-peers"],
        insecure_api_listen=values["insecure-api-listen"],
        admin_socket=admin_socket_path(values["admin-socket"], values["data-dir"]),
        auto_membership=values["auto-membership"],
        membership_recheck_ms=values["membership-recheck-ms"],
    )


MAX_UNIX_SOCKET_PATH_BYTES = 107
"""sun_path holds 108 bytes on Linux, the last one a NUL."""
ADMIN_SOCKET_NAME = "admin.sock"


def admin_socket_path(given: str, data_dir: str) -> str:
    """The admin socket's path: ``given``, or DATA_DIR/admin.sock."""
    return given or os.path.join(data_dir, ADMIN_SOCKET_NAME)


def _check_admin_socket(v: Mapping[str, Any]) -> Sequence[str]:
    if "data-dir" not in v or "admin-socket" not in v:
        return []
    path = admin_socket_path(v["admin-socket"], v["data-dir"])
    size = len(os.fsencode(path))
    if size <= MAX_UNIX_SOCKET_PATH_BYTES:
        return []
    source = "--admin-socket" if v["admin-socket"] else "the admin socket (DATA_DIR/admin.sock)"
    return [
        f"{source}={path!r} is {size} bytes long; a Unix socket path holds at most "
        f"{MAX_UNIX_SOCKET_PATH_BYTES}: pass a shorter --admin-socket"
    ]


def _check_tls(v: Mapping[str, Any]) -> Sequence[str]:
    given = [name for name in _TLS_SETTINGS if v.get(name)]
    if not given:
        return _check_plaintext(v)
    if len(given) < len(_TLS_SETTINGS):
        missing = ", ".join(f"--{n}" for n in _TLS_SETTINGS if n not in given)
        return [
            "peer TLS needs all of --tls-cert-file, --tls-key-file, --tls-ca-file: "
            f"{missing} missing"
        ]
    problems = []
    for name in _TLS_SETTINGS:
        try:
            with open(v[name], "rb") as f:
                pem = f.read()
        except OSError as exc:
            problems.append(f"--{name}={v[name]!r}: cannot read: {exc.strerror}")
            continue
        if b"-----BEGIN " not in pem:
            problems.append(f"--{name}={v[name]!r}: not a PEM file")
    if v.get("insecure-plaintext-peers"):
        problems.append("--insecure-plaintext-peers contradicts the peer TLS files: drop one")
    if "cluster-id" in v and "node-id" in v:
        problems.extend(naming_problems(v["cluster-id"], [v["node-id"], *v.get("peers", {})]))
    return problems


def _check_plaintext(v: Mapping[str, Any]) -> Sequence[str]:
    """Without TLS, peer traffic stays on loopback unless asked otherwise."""
    if v.get("insecure-plaintext-peers", True):
        return []
    exposed = []
    listen = v.get("peer-listen")
    if listen is not None and _valid_address(listen) and not _is_loopback(listen):
        exposed.append(f"--peer-listen={listen}")
    remote = sorted(p for p, a in (v.get("peers") or {}).items() if not _is_loopback(a))
    if remote:
        exposed.append(f"--peers {', '.join(remote)}")
    if not exposed:
        return []
    return [
        f"plaintext peer traffic must stay on loopback ({'; '.join(exposed)}: not loopback): "
        "configure peer TLS (--tls-cert-file, --tls-key-file, --tls-ca-file) "
        "or pass --insecure-plaintext-peers to run plaintext deliberately"
    ]


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def _check(v: Mapping[str, Any]) -> Sequence[str]:
    problems: list[str] = []
    node_id, peers = v.get("node-id"), v.get("peers")
    if node_id is not None and not _NODE_ID.match(node_id):
        problems.append(f"--node-id={node_id!r}: use 1-63 of [A-Za-z0-9._-], starting alphanumeric")
    if peers is not None:
        if not peers:
            problems.append("--peers is empty: list every voter, this node included")
        for peer_id, address in sorted(peers.items()):
            if not _NODE_ID.match(peer_id):
                problems.append(f"--peers: bad node id {peer_id!r}")
            if not _valid_address(address):
                problems.append(f"--peers: {peer_id}={address!r} is not host:port")
        if node_id is not None and peers and node_id not in peers:
            problems.append(
                f"--node-id={node_id!r} is not one of --peers ({', '.join(sorted(peers))})"
            )
    for name in ("peer-listen", "metrics-listen"):
        if name in v and not _valid_address(v[name]):
            problems.append(f"--{name}={v[name]!r} is not host:port")
    health = v.get("health-listen")
    if health and not _valid_address(health):
        problems.append(f"--health-listen={health!r} is not host:port (or empty for none)")
    problems.extend(_check_tls(v))
    problems.extend(_check_admin_socket(v))
    recheck = v.get("membership-recheck-ms")
    if recheck is not None and recheck < 100:
        problems.append(f"--membership-recheck-ms={recheck}: use 100 or more")
    api = v.get("api-listen")
    if (
        api is not None
        and not (api.startswith("unix:") and len(api) > 5)
        and not _valid_address(api)
    ):
        problems.append(f"--api-listen={api!r} is neither host:port nor unix:/path")
    elif (
        api is not None
        and not api.startswith("unix:")
        and not _is_loopback(api)
        and not v.get("insecure-api-listen", True)
    ):
        problems.append(
            f"--api-listen={api}: the worker API is plaintext and unauthenticated (lease keys "
            "cross it), so it stays on loopback or a unix: socket inside the pod; pass "
            "--insecure-api-listen to expose it deliberately"
        )
    ranges = {
        "tick-ms": (1, 10_000),
        "election-timeout-ticks": (2, 10_000),
        "heartbeat-ticks": (1, 10_000),
        "ttl-min-ms": (1, 3_600_000),
        "ttl-max-ms": (1, 3_600_000),
        "keepalive-grace-ms": (0, 60_000),
    }
    for name, (lo, hi) in ranges.items():
        if name in v and not lo <= v[name] <= hi:
            problems.append(f"--{name}={v[name]} is outside [{lo}, {hi}]")
    if v.get("heartbeat-ticks", 0) >= v.get("election-timeout-ticks", 10**9):
        problems.append("--heartbeat-ticks must be smaller than --election-timeout-ticks")
    if v.get("ttl-min-ms", 0) > v.get("ttl-max-ms", 10**12):
        problems.append("--ttl-min-ms must not exceed --ttl-max-ms")
    election_ms = v.get("tick-ms", 0) * v.get("election-timeout-ticks", 0)
    if "ttl-min-ms" in v and election_ms and v["ttl-min-ms"] < 2 * election_ms:
        problems.append(
            f"--ttl-min-ms={v['ttl-min-ms']} is below two election timeouts "
            f"({2 * election_ms} ms): a Raft leader change alone could outlast a lease"
        )
    if v.get("log-level") not in (None, "debug", "info", "warning", "error"):
        problems.append(f"--log-level={v['log-level']!r}: use debug, info, warning or error")
    if v.get("event-loop") not in (None, "uvloop", "asyncio"):
        problems.append(f"--event-loop={v['event-loop']!r}: use uvloop or asyncio")
    return problems


def _valid_address(address: str) -> bool:
    match = _HOST_PORT.match(address)
    return match is not None and 0 < int(match.group("port")) < 65536
