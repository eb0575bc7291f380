"""The worker API's one error model: a gRPC status code plus a ``google.rpc.ErrorInfo``.

Every refusal the worker API sends is an ``ApiError``: a status code, a stable
``reason`` (upper snake case, listed in the header of worker.proto and in
docs/worker-api.md), one human-readable line, and string metadata. It leaves
the sidecar either as the call's status, with the ErrorInfo packed into the
standard ``grpc-status-details-bin`` trailer (``abort``), or, for one
election of a KeepAlive stream, as a ``LeaseError`` message with the same
code, reason and metadata (``lease_error``). Clients branch on the reason,
never on the message text.

Messages and metadata never carry a lease key: the callers build them from
names, tokens and numbers only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NoReturn

import grpc  # type: ignore[import-untyped]
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from sidecar import grpcserver
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2

DOMAIN: Final = "raftsidecar.dev"
"""``ErrorInfo.domain`` of every error this API sends."""

INVALID_FIELD: Final = "INVALID_FIELD"
TTL_OUT_OF_RANGE: Final = "TTL_OUT_OF_RANGE"
LEASE_KEY_MISMATCH: Final = "LEASE_KEY_MISMATCH"
LEASE_NOT_FOUND: Final = "LEASE_NOT_FOUND"
LEASE_ENDED: Final = "LEASE_ENDED"
CANDIDATE_ID_IN_USE: Final = "CANDIDATE_ID_IN_USE"
LEASE_KEY_IN_USE: Final = "LEASE_KEY_IN_USE"
QUEUE_FULL: Final = "QUEUE_FULL"
TOO_MANY_ELECTIONS: Final = "TOO_MANY_ELECTIONS"
OBSERVER_TOO_SLOW: Final = "OBSERVER_TOO_SLOW"
NO_LEADER: Final = "NO_LEADER"
NODE_UNAVAILABLE: Final = "NODE_UNAVAILABLE"
OVERLOADED: Final = "OVERLOADED"
UNDECODABLE_ENTRY: Final = "UNDECODABLE_ENTRY"
# Sent by the request guard of every server, for every service on it.
MALFORMED_REQUEST: Final = grpcserver.MALFORMED_REQUEST
TOO_MANY_STREAMS: Final = grpcserver.TOO_MANY_STREAMS

CODES: Final[Mapping[str, Any]] = {
    INVALID_FIELD: grpc.StatusCode.INVALID_ARGUMENT,
    MALFORMED_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    TTL_OUT_OF_RANGE: grpc.StatusCode.INVALID_ARGUMENT,
    LEASE_KEY_MISMATCH: grpc.StatusCode.PERMISSION_DENIED,
    CANDIDATE_ID_IN_USE: grpc.StatusCode.PERMISSION_DENIED,
    LEASE_KEY_IN_USE: grpc.StatusCode.ALREADY_EXISTS,
    LEASE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    LEASE_ENDED: grpc.StatusCode.FAILED_PRECONDITION,
    QUEUE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TOO_MANY_ELECTIONS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    OBSERVER_TOO_SLOW: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TOO_MANY_STREAMS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NO_LEADER: grpc.StatusCode.UNAVAILABLE,
    NODE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    OVERLOADED: grpc.StatusCode.UNAVAILABLE,
    UNDECODABLE_ENTRY: grpc.StatusCode.INTERNAL,
}
"""The one status code of each reason."""


class ApiError(Exception):
    """A refusal: ``reason`` decides the status code (``CODES``)."""

    def __init__(self, reason: str, message: str, **metadata: str | int) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = CODES[reason]
        self.message = message
        self.metadata = {key: str(value) for key, value in sorted(metadata.items())}

    def status(self) -> Any:
        """This error as a ``grpc.Status`` whose trailer carries the ErrorInfo."""
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=DOMAIN, metadata=self.metadata
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        return rpc_status.to_status(
            status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        )

    async def abort(self, context: Any) -> NoReturn:
        """End the call with this error (raises, as ``context.abort`` does)."""
        status = self.status()
        await context.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("unreachable: context.abort raises")

    def lease_error(self) -> worker_pb2.LeaseError:
        """This error as the per-election ``LeaseError`` of a KeepAlive response."""
        return worker_pb2.LeaseError(
            code=self.code.value[0],
            reason=self.reason,
            message=self.message,
            metadata=self.metadata,
        )


def invalid_field(field: str, message: str) -> ApiError:
    return ApiError(INVALID_FIELD, message, field=field)
