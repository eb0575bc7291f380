"""No secret of a running sidecar reaches a log line, an error or /metrics.

A real ``raft-sidecar serve`` with peer TLS files and a lease key in use is
provoked into every kind of refusal that handles a secret: wrong lease keys
(KeepAlive, Resign, Campaign), a key in the wrong shape, malformed and
oversized requests that carry the key, a KeepAlive stream that breaks, a TLS
key file replaced by a bad one while it runs, and a second sidecar started
with a key that does not match its certificate. Then every log line, every
status message and trailer, every per-election error, the failed start's
stderr and /metrics are searched for the lease keys and for every line of
both private keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
from grpc_status import rpc_status

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.integration import worker_api
from tests.integration.certs import CertificateAuthority, TlsFiles, write_atomically
from tests.integration.cluster import Sidecar, eventually, free_port, running

ELECTION = "secret-run"


def key_lines(pem: bytes) -> list[str]:
    """The base64 lines of a PEM private key (the secret part)."""
    lines = [line.strip() for line in pem.decode().splitlines()]
    body = [line for line in lines if line and not line.startswith("-----")]
    assert body
    return body


class Seen:
    """Every error text the sidecar sent back."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def error(self, error: Any) -> Any:
        self.texts.append(str(error.details()))
        for key, value in error.trailing_metadata() or ():
            self.texts.append(f"{key}={value!r}")
        status = rpc_status.from_call(error)
        if status is not None:
            self.texts.append(str(status))
        return error

    def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            function(*args, **kwargs)
        except grpc.RpcError as error:
            return self.error(error).code()
        raise AssertionError(f"{function} did not fail")

    def lease_error(self, response: Any) -> None:
        assert response.HasField("error"), response
        self.texts.append(str(response.error))


def failed_start(data_dir: Path, cert: Path, key: Path, ca: Path) -> str:
    """Start a sidecar with these TLS files, which must refuse them (exit 2); its output."""
    result = subprocess.run(
        [
            sys.executable, "-m", "sidecar.cli", "serve",
            "--node-id", "s0", "--peers", f"s0=127.0.0.1:{free_port()}",
            "--data-dir", str(data_dir),
            "--peer-listen", f"127.0.0.1:{free_port()}",
            "--api-listen", f"127.0.0.1:{free_port()}",
            "--metrics-listen", f"127.0.0.1:{free_port()}",
            "--health-listen", "",
            "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-file", str(ca),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "--tls-key-file" in result.stderr, result.stderr
    return result.stdout + result.stderr


def provoke(node: Sidecar, key: str, wrong: str, seen: Seen) -> list[str]:
    """Every refusal that handles a lease key; returns further secrets it used."""
    stub = node.stub()
    granted = worker_api.campaign(stub, ELECTION, "w", ttl_ms=2000, lease_key=key)
    token = granted.fencing_token

    # Wrong keys, on every call that takes one.
    stop = threading.Event()
    answers = stub.KeepAlive(
        worker_api.keep_alive_requests(ELECTION, token, wrong, stop, 0.1), timeout=10
    )
    seen.lease_error(next(answers))
    stop.set()
    answers.cancel()
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert seen.call(worker_api.resign, stub, ELECTION, wrong, token) == denied
    assert seen.call(worker_api.campaign, stub, ELECTION, "w", lease_key=wrong) == denied
    assert seen.call(worker_api.campaign, stub, ELECTION, "x", lease_key=key) == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    bad_shape = worker_api.new_key() + "!"
    assert seen.call(worker_api.resign, stub, ELECTION, bad_shape, token) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )

    # Malformed and oversized requests carrying the key.
    request = worker_pb2.CampaignRequest(election=ELECTION, candidate_id="w", lease_key=key)
    raw = request.SerializeToString() + b"\x0a\x03\xed\xa0\x80"
    assert node.channel is not None
    campaign = node.channel.unary_stream(
        "/raftsidecar.worker.v1.ElectionService/Campaign",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    assert seen.call(lambda: list(campaign(raw, timeout=10))) == grpc.StatusCode.INVALID_ARGUMENT
    huge = worker_pb2.ResignRequest(election=ELECTION, lease_key=key * 2000)
    assert seen.call(stub.Resign, huge, timeout=10) == grpc.StatusCode.RESOURCE_EXHAUSTED

    # A keep-alive stream with the right key that breaks: revoked and logged.
    stop = threading.Event()
    answers = stub.KeepAlive(
        worker_api.keep_alive_requests(ELECTION, token, key, stop, 0.1), timeout=10
    )
    assert next(answers).ttl_ms > 0
    answers.cancel()

    def revoked() -> bool | None:
        holder = stub.Leader(worker_pb2.LeaderRequest(election=ELECTION), timeout=5).holder
        return holder.fencing_token == 0 or None

    eventually(revoked, "the broken stream's lease to be revoked")
    return [bad_shape.rstrip("!")]


def test_no_secret_reaches_a_log_line_an_error_or_metrics(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    directory = tmp_path / "tls"
    directory.mkdir()
    files = TlsFiles(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
    files.replace_with(ca.issue("s0"))
    other = ca.issue("s0", stem="other")  # a valid key of another certificate
    key, wrong = worker_api.new_key(), worker_api.new_key()
    secrets = [key, wrong, *key_lines(files.key.read_bytes()), *key_lines(other.key.read_bytes())]
    seen = Seen()

    for cluster in running(tmp_path, size=1, extra_args=lambda _: files.flags()):
        node = cluster.leader()
        secrets += provoke(node, key, wrong, seen)
        # A bad key file while it runs: refused, logged, the old set kept.
        write_atomically(files.key, other.key.read_bytes())
        eventually(
            lambda n=node: "peer_tls_reload_refused" in n.log_path.read_text() or None,
            "the refused reload to be logged",
        )
        metrics = node.metrics()
    log = node.log_path.read_text(errors="replace")  # shutdown lines included

    # Sidecars started with a truncated key file, and with a key that does not
    # match the certificate.
    lines = other.key.read_bytes().splitlines(keepends=True)
    truncated = tmp_path / "truncated.key"
    truncated.write_bytes(b"".join(lines[:2] + lines[-1:]))
    stderr = failed_start(tmp_path / "a", other.cert, truncated, files.ca)
    stderr += failed_start(tmp_path / "b", files.cert, other.key, files.ca)

    # Every line is JSON and none carries a secret; nor does anything else.
    lines = [line for line in log.splitlines() if line.strip()]
    assert any(json.loads(line)["event"] == "peer_tls_reload_refused" for line in lines)
    assert len(seen.texts) >= 8
    places = {"log": log, "errors": "\n".join(seen.texts), "metrics": metrics, "stderr": stderr}
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a secret reached the {where}"
