"""The request guard and server bounds of ``sidecar.grpcserver``, on a real
``grpc.aio`` server on 127.0.0.1 with a small servicer of all four call
shapes. Raw bytes go out through a generic channel method, so nothing on
the client side checks them first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from sidecar.grpcserver import RequestGuard, ServerBounds, new_server
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2

REQUEST = worker_pb2.LeaderRequest  # one string field: election = 1
RESPONSE = worker_pb2.LeaderResponse
TYPE = "raftsidecar.worker.v1.LeaderRequest"
SERVICE = "test.Shapes"
BOUNDS = ServerBounds(
    name="test",
    max_receive_message_bytes=1024,
    max_concurrent_streams=16,
    max_concurrent_rpcs=64,
    max_streams_per_method=2,
)

TRUNCATED = b"\x0a\x05ab"  # field 1, length 5, two bytes follow
LONE_SURROGATE = b"\x0a\x03\xed\xa0\x80"  # U+D800 as a JavaScript encoder may write it
MALFORMED = (TRUNCATED, LONE_SURROGATE, b"\xff\xff\xff\xff")


class Shapes:
    """Echoes elections; records how every streaming call ended."""

    def __init__(self) -> None:
        self.finished: list[str] = []
        self.release = asyncio.Event()

    async def unary(self, request: Any, context: Any) -> Any:
        return RESPONSE(lease_known=request.election == "yes")

    async def server_stream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            yield RESPONSE()
            await self.release.wait()
        finally:
            self.finished.append("server_stream")

    async def client_stream(self, requests: AsyncIterator[Any], context: Any) -> Any:
        try:
            count = 0
            async for _ in requests:
                count += 1
            return RESPONSE(lease_remaining_ms=count)
        finally:
            self.finished.append("client_stream")

    async def bidi(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        try:
            async for request in requests:
                yield RESPONSE(lease_known=bool(request.election))
        finally:
            self.finished.append("bidi")

    def handler(self) -> Any:
        kw = {
            "request_deserializer": REQUEST.FromString,
            "response_serializer": RESPONSE.SerializeToString,
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary, **kw),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream, **kw),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream, **kw),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi, **kw),
            },
        )


@dataclass
class Served:
    shapes: Shapes
    guard: RequestGuard
    channel: Any


def run(scenario: Callable[[Served], Awaitable[None]]) -> None:
    """``scenario`` against a fresh guarded server, with a channel to it."""

    async def main() -> None:
        shapes, guard = Shapes(), RequestGuard(BOUNDS)
        server = new_server(BOUNDS, guard=guard)
        server.add_generic_rpc_handlers((shapes.handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await scenario(Served(shapes, guard, channel))
        finally:
            await server.stop(None)

    asyncio.run(main())


def _raw(channel: Any, shape: str, kind: str) -> Any:
    method = getattr(channel, kind)
    return method(
        f"/{SERVICE}/{shape}",
        request_serializer=lambda raw: raw,
        response_deserializer=RESPONSE.FromString,
    )


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        result = call
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    return caught.value


def _clean(error: grpc.aio.AioRpcError, code: grpc.StatusCode, details: str) -> None:
    assert (error.code(), error.details()) == (code, details)
    assert "<class" not in details and "Traceback" not in details


async def _eventually(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"still not {what}")
        await asyncio.sleep(0.01)


def test_malformed_requests_are_invalid_argument_in_every_call_shape() -> None:
    async def scenario(served: Served) -> None:
        channel, expected = served.channel, f"request is not a valid {TYPE}"
        good = REQUEST(election="yes").SerializeToString()
        assert (await _raw(channel, "Unary", "unary_unary")(good)).lease_known
        for bad in MALFORMED:
            for shape, kind, call in (
                ("Unary", "unary_unary", lambda m, b=bad: m(b)),
                ("ServerStream", "unary_stream", lambda m, b=bad: m(b)),
                # In a stream, after a good message: the call ends there.
                ("ClientStream", "stream_unary", lambda m, b=bad: m(iter([good, b, good]))),
                ("Bidi", "stream_stream", lambda m, b=bad: m(iter([good, b, good]))),
            ):
                error = await _refused(call(_raw(channel, shape, kind)))
                _clean(error, grpc.StatusCode.INVALID_ARGUMENT, expected)
        # The servicers' own cleanup ran for the streams refused midway.
        assert served.shapes.finished.count("client_stream") == len(MALFORMED)
        assert served.shapes.finished.count("bidi") == len(MALFORMED)
        # Good requests are untouched, in every shape.
        replies = _raw(channel, "Bidi", "stream_stream")(iter([good, good]))
        assert [r.lease_known async for r in replies] == [True, True]
        total = await _raw(channel, "ClientStream", "stream_unary")(iter([good] * 3))
        assert total.lease_remaining_ms == 3
        for method in ("ServerStream", "ClientStream", "Bidi"):
            await _eventually(
                lambda m=method: served.guard.open_streams(f"/{SERVICE}/{m}") == 0,
                f"no {method} call counted",
            )

    run(scenario)


def test_streams_beyond_the_bound_are_refused_until_one_ends() -> None:
    async def scenario(served: Served) -> None:
        channel, guard = served.channel, served.guard
        method = f"/{SERVICE}/ServerStream"
        good = REQUEST().SerializeToString()
        open_calls = [_raw(channel, "ServerStream", "unary_stream")(good) for _ in range(2)]
        for call in open_calls:
            await call.read()  # the first response: the handler runs
        assert guard.open_streams(method) == 2
        error = await _refused(_raw(channel, "ServerStream", "unary_stream")(good))
        _clean(
            error,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "too many open ServerStream calls on this test server (limit 2); "
            "end the streams you no longer read",
        )
        # Other methods have bounds of their own.
        assert (await _raw(channel, "Unary", "unary_unary")(good)) == RESPONSE()
        open_calls[0].cancel()
        await _eventually(lambda: guard.open_streams(method) == 1, "one stream open")
        again = _raw(channel, "ServerStream", "unary_stream")(good)
        await again.read()
        served.shapes.release.set()
        for call in (open_calls[1], again):
            assert await call.code() == grpc.StatusCode.OK
        await _eventually(lambda: guard.open_streams(method) == 0, "every stream closed")

    run(scenario)


def test_a_request_above_the_size_bound_is_resource_exhausted() -> None:
    async def scenario(served: Served) -> None:
        big = REQUEST(election="x" * 2000).SerializeToString()
        error = await _refused(_raw(served.channel, "Unary", "unary_unary")(big))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    run(scenario)


def test_bounds_become_server_options() -> None:
    options = dict(BOUNDS.options())
    assert options["grpc.max_receive_message_length"] == 1024
    assert options["grpc.max_concurrent_streams"] == 16
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 5000
    assert options["grpc.so_reuseport"] == 0
    assert "grpc.max_connection_age_ms" not in options
    with pytest.raises(ValueError, match="max_streams_per_method"):
        ServerBounds("x", 1, 1, 1, 0)


def test_synchronous_handlers_get_the_same_refusal() -> None:
    """gRPC runs a plain function on a thread; the guard still answers first."""

    def unary(request: Any, context: Any) -> Any:
        return RESPONSE(lease_known=request.election == "yes")

    def client_stream(requests: Any, context: Any) -> Any:
        return RESPONSE(lease_remaining_ms=sum(1 for _ in requests))

    kw = {
        "request_deserializer": REQUEST.FromString,
        "response_serializer": RESPONSE.SerializeToString,
    }
    handler = grpc.method_handlers_generic_handler(
        "test.Sync",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, **kw),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, **kw),
        },
    )

    async def main() -> None:
        server = new_server(BOUNDS)
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        expected = f"request is not a valid {TYPE}"
        raw = {"request_serializer": lambda b: b, "response_deserializer": RESPONSE.FromString}
        good = REQUEST(election="yes").SerializeToString()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/test.Sync/Unary", **raw)
                assert (await call(good)).lease_known
                _clean(
                    await _refused(call(LONE_SURROGATE)), grpc.StatusCode.INVALID_ARGUMENT, expected
                )
                stream = channel.stream_unary("/test.Sync/ClientStream", **raw)
                assert (await stream(iter([good, good]))).lease_remaining_ms == 2
                error = await _refused(stream(iter([good, TRUNCATED])))
                _clean(error, grpc.StatusCode.INVALID_ARGUMENT, expected)
        finally:
            await server.stop(None)

    asyncio.run(main())
