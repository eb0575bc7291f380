"""Settings of ``settlement-demo worker``: each a flag and an environment variable.

As for the sidecar (``sidecar/config.py``): ``SETTLEMENT_DEMO_`` + the flag in
upper snake case, a flag beats the environment, which beats the default, and
every problem is reported at once, so a manifest is fixed in one round trip.
Problems are reported with passwords redacted (the ledger URL comes from a
Secret, and a misplaced value may land in any setting).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from settlement_demo.ledger_db import ledger_url_scheme
from settlement_demo.ledger_errors import LedgerConnectError
from settlement_demo.redact import redact, remember_secrets

ENV_PREFIX = "SETTLEMENT_DEMO_"
# Election names and candidate ids: what the sidecar accepts.
_ELECTION = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_NAME_MAX = 128
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")
_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """One or more settings are invalid; the message lists each, one per line."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    sidecar: str
    election: str
    worker_id: str
    ledger_url: str
    ttl_ms: int
    http_listen: str
    generate_interval_ms: int
    chunk_size: int
    step_delay_ms: int
    sidecar_wait_ms: int
    fencing: bool
    fault_file: Path | None
    log_level: str
    history: Path | None = None


@dataclass(frozen=True, slots=True)
class _Setting:
    name: str
    help: str
    default: str
    parse: Callable[[str], Any]
    #: Computes the default at load time; ``default`` then only describes it.
    make_default: Callable[[], str] | None = None


def _int(value: str) -> int:
    return int(value, 10)


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean (true/false)")


def default_worker_id() -> str:
    """``<host>-<pid>-<6 random hex>``: unique per process, so two workers on
    one host (or a restarted one) never campaign, nor write, as one holder.

    Characters the sidecar does not take in a candidate id become ``-``, and
    the host name is shortened so the whole stays within 128 characters.
    """
    suffix = f"-{os.getpid()}-{secrets.token_hex(3)}"
    host = _NOT_NAME_CHAR.sub("-", socket.gethostname()) or "worker"
    return host[: _NAME_MAX - len(suffix)] + suffix


SETTINGS: tuple[_Setting, ...] = (
    _Setting("sidecar", "the local sidecar's worker API: host:port or unix:/path",
             "127.0.0.1:7401", str),
    _Setting("election", "the election this worker campaigns for", "settlement-eur", str),
    _Setting("worker-id", "this worker's candidate id, unique per worker process; the "
             "ledger's fence records it as the holder (in Kubernetes: the pod name)",
             "<host>-<pid>-<6 random hex>", str, default_worker_id),
    _Setting("ledger-url", "sqlite:///path, a file path, or postgresql://...",
             "sqlite:///ledger.sqlite3", str),
    _Setting("ttl-ms", "lease TTL asked of the sidecar", "5000", _int),
    _Setting("http-listen", "host:port of /healthz, /readyz and /metrics; empty for none",
             "0.0.0.0:8080", str),
    _Setting("generate-interval-ms", "the leader adds a demo batch this often; 0 = never",
             "0", _int),
    _Setting("chunk-size", "payout instructions written per step", "10", _int),
    _Setting("step-delay-ms", "pause before each step (demo pacing, so failovers land mid-run)",
             "0", _int),
    _Setting("sidecar-wait-ms", "give up at start if the sidecar does not answer this long",
             "30000", _int),
    _Setting("fencing", "check the ledger fence on every write (false only to demonstrate "
             "the duplicates it prevents)", "true", _bool),
    _Setting("fault-file", "demo fault injection: when this file says pause-before-write, "
             "the worker stops itself (SIGSTOP) right before its next chunk write", "", str),
    _Setting("log-level", "debug, info, warning or error", "info", str),
    _Setting("history", "append what this worker saw (campaigns, grants, renewals, losses, "
             "ledger writes and their outcomes) to this JSON-lines file, on the monotonic "
             "clock, for post-mortems (docs/settlement-demo.md); empty for none", "", str),
)  # fmt: skip


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper().replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for s in SETTINGS:
        default = f"default {s.default}" if s.default else "default: none"
        parser.add_argument(
            f"--{s.name}",
            dest=s.name.replace("-", "_"),
            default=None,
            help=f"{s.help} ({default}; env {env_name(s.name)})",
        )


def load(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """Flags, then environment, then defaults; raises ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for s in SETTINGS:
        raw = getattr(args, s.name.replace("-", "_"), None)
        source = f"--{s.name}"
        if raw is None:
            raw, source = env.get(env_name(s.name)), env_name(s.name)
        if raw is None:
            raw, source = (s.make_default() if s.make_default else s.default), "default"
        try:
            values[s.name] = s.parse(raw)
        except ValueError as exc:
            problems.append(f"{source}={raw!r}: {exc}")
    if isinstance(values.get("ledger-url"), str):
        remember_secrets(values["ledger-url"])
    problems.extend(_check(values))
    if problems:
        raise ConfigError(redact("\n".join(problems)))
    fault = values["fault-file"]
    return WorkerConfig(
        sidecar=values["sidecar"],
        election=values["election"],
        worker_id=values["worker-id"],
        ledger_url=values["ledger-url"],
        ttl_ms=values["ttl-ms"],
        http_listen=values["http-listen"],
        generate_interval_ms=values["generate-interval-ms"],
        chunk_size=values["chunk-size"],
        step_delay_ms=values["step-delay-ms"],
        sidecar_wait_ms=values["sidecar-wait-ms"],
        fencing=values["fencing"],
        fault_file=Path(fault) if fault else None,
        log_level=values["log-level"],
        history=Path(values["history"]) if values["history"] else None,
    )


def _check(v: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    election = v.get("election")
    if election is not None and not _ELECTION.match(election):
        problems.append(f"--election={election!r}: use 1-128 of [A-Za-z0-9._-]")
    worker_id = v.get("worker-id")
    if worker_id is not None and not _ELECTION.match(worker_id):
        problems.append(f"--worker-id={worker_id!r}: use 1-128 of [A-Za-z0-9._-]")
    sidecar = v.get("sidecar")
    if sidecar is not None and not (
        (sidecar.startswith("unix:") and len(sidecar) > 5) or _valid_address(sidecar)
    ):
        problems.append(f"--sidecar={sidecar!r} is neither host:port nor unix:/path")
    http = v.get("http-listen")
    if http and not _valid_address(http):
        problems.append(f"--http-listen={http!r} is not host:port (or empty for none)")
    url = v.get("ledger-url")
    if url == "":
        problems.append("--ledger-url is empty")
    elif url is not None:
        try:
            ledger_url_scheme(url)
        except LedgerConnectError as exc:
            problems.append(f"--ledger-url: {exc}")
    ranges = {
        "ttl-ms": (100, 3_600_000),
        "generate-interval-ms": (0, 86_400_000),
        "chunk-size": (1, 10_000),
        "step-delay-ms": (0, 60_000),
        "sidecar-wait-ms": (0, 3_600_000),
    }
    for name, (lo, hi) in ranges.items():
        if name in v and not lo <= v[name] <= hi:
            problems.append(f"--{name}={v[name]} is outside [{lo}, {hi}]")
    if v.get("log-level") not in _LEVELS:
        problems.append(f"--log-level={v.get('log-level')!r}: use one of {', '.join(_LEVELS)}")
    return problems


def _valid_address(address: str) -> bool:
    m = _HOST_PORT.match(address)
    return m is not None and 0 < int(m.group(2)) < 65536
