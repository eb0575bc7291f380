"""The worker API server and the probe-only health server: their bounds, built once.

Both come from ``sidecar.grpcserver.new_server`` (bad bytes answered
INVALID_ARGUMENT, streams bounded per method), with the worker API's error
model: a refusal carries a ``google.rpc.ErrorInfo`` (reasons
``MALFORMED_REQUEST`` and ``TOO_MANY_STREAMS``). Why these numbers:
docs/sidecar.md, "Server bounds".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NoReturn

from sidecar.api.errors import ApiError
from sidecar.api.reflection import V1_SERVICE, V1ALPHA_SERVICE
from sidecar.grpcserver import ServerBounds, new_server

KiB: Final = 1024

_WATCH = "/grpc.health.v1.Health/Watch"
_REFLECTION_V1ALPHA = f"/{V1ALPHA_SERVICE}/ServerReflectionInfo"
_REFLECTION_V1 = f"/{V1_SERVICE}/ServerReflectionInfo"

API_STREAMS_PER_METHOD: Final = 512
"""Open Campaign, KeepAlive or Observe calls per sidecar, each: twice the
elections a cluster keeps (256), so a worker may campaign for and observe
every election while a re-attaching KeepAlive overlaps the old one."""

API_BOUNDS: Final = ServerBounds(
    name="worker API",
    max_receive_message_bytes=64 * KiB,
    max_concurrent_streams=1024,
    max_concurrent_rpcs=2048,
    max_streams_per_method=API_STREAMS_PER_METHOD,
    stream_limits={_WATCH: 64, _REFLECTION_V1ALPHA: 16, _REFLECTION_V1: 16},
    permit_keepalive_without_calls=True,
    min_ping_interval_ms=5_000,
    keepalive_time_ms=60_000,
    keepalive_timeout_ms=20_000,
)
"""Loopback, one worker: room for every stream it may legitimately hold on
one connection, and no idle or age limit (an age limit would cut KeepAlive
streams, which revokes their leases)."""

PROBE_BOUNDS: Final = ServerBounds(
    name="health",
    max_receive_message_bytes=4 * KiB,
    max_concurrent_streams=8,
    max_concurrent_rpcs=64,
    max_streams_per_method=16,
    permit_keepalive_without_calls=False,
    min_ping_interval_ms=5_000,
    keepalive_time_ms=60_000,
    keepalive_timeout_ms=20_000,
    max_connection_idle_ms=30_000,
    max_connection_age_ms=300_000,
    max_connection_age_grace_ms=10_000,
)
"""Reachable from the pod network, serving one tiny request type to the
kubelet (a new connection per probe): small, and nothing held for long."""


async def _refuse(context: Any, code: Any, reason: str, message: str) -> NoReturn:
    error = ApiError(reason, message)
    if error.code != code:
        raise AssertionError(f"{reason} is {error.code}, not {code}")
    await error.abort(context)


def api_server(interceptors: Sequence[Any] = ()) -> Any:
    """The worker API's ``grpc.aio`` server (not bound, not started)."""
    return new_server(API_BOUNDS, interceptors=interceptors, refuse=_refuse)


def probe_server() -> Any:
    """The probe-only health server (not bound, not started)."""
    return new_server(PROBE_BOUNDS, refuse=_refuse)
