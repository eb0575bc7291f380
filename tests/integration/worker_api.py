"""Small synchronous helpers over the generated worker API stubs, for tests.

They speak the wire contract directly (no ``sidecar.client``): Campaign is a
server stream of queue positions then a grant, KeepAlive and Resign need the
lease key the grant came with, and errors carry a ``google.rpc.ErrorInfo``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2


def new_key() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Granted:
    token: Any  # worker_pb2.LeadershipToken
    lease_key: str
    positions: tuple[int, ...] = ()
    """Queue positions reported before the grant, in order."""

    @property
    def fencing_token(self) -> int:
        return int(self.token.fencing_token)

    @property
    def election(self) -> str:
        return str(self.token.election)

    @property
    def candidate_id(self) -> str:
        return str(self.token.candidate_id)


def campaign(
    stub: Any,
    election: str,
    candidate: str,
    *,
    ttl_ms: int = 5000,
    timeout: float = 10,
    lease_key: str | None = None,
    on_queued: Callable[[int], None] | None = None,
) -> Granted:
    """Campaign until granted; raises grpc.RpcError as the stream ends otherwise.

    UNAVAILABLE (a Raft election under way) is retried with the same key
    until ``timeout`` runs out, as docs/worker-api.md tells clients to.
    """
    request = worker_pb2.CampaignRequest(
        election=election,
        candidate_id=candidate,
        ttl_ms=ttl_ms,
        lease_key=lease_key if lease_key is not None else new_key(),
    )
    deadline = time.monotonic() + timeout
    while True:
        positions: list[int] = []
        try:
            for event in stub.Campaign(request, timeout=max(0.1, deadline - time.monotonic())):
                if event.HasField("queued"):
                    positions.append(event.queued.position)
                    if on_queued is not None:
                        on_queued(event.queued.position)
                else:
                    return Granted(event.granted.token, event.granted.lease_key, tuple(positions))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
            continue
        raise AssertionError("the Campaign stream ended without a grant")


def resign(stub: Any, election: str, lease_key: str, token: int = 0, timeout: float = 5) -> Any:
    """Resign; UNAVAILABLE (a Raft election under way) is retried until
    ``timeout``, as docs/worker-api.md tells clients: a retried Resign with
    the same lease key answers as the first did."""
    request = worker_pb2.ResignRequest(election=election, lease_key=lease_key, fencing_token=token)
    return unary_retrying(stub.Resign, request, timeout)


def unary_retrying(method: Any, request: Any, timeout: float = 10) -> Any:
    """A unary call whose UNAVAILABLE (a Raft election under way) is retried
    until ``timeout``, as docs/worker-api.md tells clients to."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return method(request, timeout=max(0.1, deadline - time.monotonic()))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def error_info(error: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and metadata of a failed call ("" if it has none)."""
    status = rpc_status.from_call(error)
    if status is None:
        return "", {}
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "raftsidecar.dev"
            return info.reason, dict(info.metadata)
    return "", {}


def keep_alive_requests(
    election: str, token: int, lease_key: str, stop: threading.Event, every_s: float
) -> Iterator[Any]:
    sequence = 0
    while not stop.is_set():
        sequence += 1
        yield worker_pb2.KeepAliveRequest(
            election=election, fencing_token=token, lease_key=lease_key, sequence=sequence
        )
        stop.wait(every_s)
