"""Bad bytes and bounds on every port of a real ``raft-sidecar serve`` process.

Requests go out as raw bytes through generic channel methods, so the client
checks nothing: every RPC of every service on the worker API port, the
probe-only health port and the peer port gets bytes that do not parse as
its request message (truncated, and a string holding a lone surrogate as a
JavaScript encoder may write it), and must answer INVALID_ARGUMENT with one
line naming the message type, never UNKNOWN or a Python class name. Then the
bounds: an oversized request, and the stream beyond the per-method bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from sidecar.api import reflection as api_reflection
from sidecar.api.servers import API_STREAMS_PER_METHOD
from sidecar.pb.raftsidecar.peer.v1 import peer_pb2
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc
from tests.integration.cluster import Sidecar, eventually, running

TRUNCATED = b"\x0a\x05ab"  # field 1, length-delimited, 5 bytes announced, 2 follow
LONE_SURROGATE = b"\xed\xa0\x80"  # U+D800 in "UTF-8": not valid UTF-8

WORKER = worker_pb2.DESCRIPTOR.services_by_name["ElectionService"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION_V1ALPHA = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
REFLECTION_V1 = descriptor_pool.Default().FindServiceByName(api_reflection.V1_SERVICE)
PEER = peer_pb2.DESCRIPTOR.services_by_name["RaftPeerService"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    root: Path = tmp_path_factory.mktemp("bad-bytes")
    for cluster in running(root, size=1):
        cluster.leader()
        yield cluster.nodes[0]


def malformed(message: Any) -> list[bytes]:
    """Bytes that do not parse as ``message``: always a truncated field, and
    a lone surrogate in its first string field if it has one."""
    payloads = [TRUNCATED]
    strings = [f for f in message.fields if f.type == f.TYPE_STRING]
    if strings:
        tag = (strings[0].number << 3) | 2
        payloads.append(bytes([tag, len(LONE_SURROGATE)]) + LONE_SURROGATE)
    return payloads


def call_raw(channel: grpc.Channel, method: Any, payload: bytes) -> grpc.RpcError:
    """Send ``payload`` as the (only) request of ``method``; the error it ends with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    raw = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path, **raw)(iter([payload]), timeout=10))
        elif method.client_streaming:
            channel.stream_unary(path, **raw)(iter([payload]), timeout=10)
        elif method.server_streaming:
            list(channel.unary_stream(path, **raw)(payload, timeout=10))
        else:
            channel.unary_unary(path, **raw)(payload, timeout=10)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"{path} accepted {payload!r}")


def reason(error: Any) -> str | None:
    status = rpc_status.from_call(error)
    if status is None:
        return None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return str(info.reason)


def test_every_rpc_of_every_port_answers_bad_bytes_with_invalid_argument(node: Sidecar) -> None:
    ports = [
        (node.api_port, (WORKER, HEALTH, REFLECTION_V1ALPHA, REFLECTION_V1), "MALFORMED_REQUEST"),
        (node.health_port, (HEALTH,), "MALFORMED_REQUEST"),
        (node.peer_port, (PEER,), None),  # the peer port sends plain statuses
    ]
    tried = 0
    for port, services, error_reason in ports:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for service in services:
                for method in service.methods:
                    for payload in malformed(method.input_type):
                        error = call_raw(channel, method, payload)
                        where = f"port {port} {method.full_name} {payload!r}"
                        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, where
                        expected = f"request is not a valid {method.input_type.full_name}"
                        assert error.details() == expected, where
                        assert reason(error) == error_reason, where
                        tried += 1
    assert tried >= 2 * (len(WORKER.methods) + len(PEER.methods))
    # The sidecar stayed up, logged no stack trace and still serves.
    assert node.status().role == worker_pb2.RAFT_ROLE_LEADER
    log = node.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "DecodeError" not in log


def test_a_malformed_message_ends_a_keepalive_stream_after_good_ones(node: Sidecar) -> None:
    with grpc.insecure_channel(node.api) as channel:
        stream = channel.stream_stream(
            f"/{WORKER.full_name}/KeepAlive",
            request_serializer=lambda b: b,
            response_deserializer=worker_pb2.KeepAliveResponse.FromString,
        )
        good = worker_pb2.KeepAliveRequest(election="e", fencing_token=1, sequence=1)
        call = stream(iter([good.SerializeToString(), TRUNCATED]), timeout=10)
        answers = []
        with pytest.raises(grpc.RpcError) as caught:
            answers.extend(call)
        # The good request was answered (its own refusal: no such grant), then the stream ended.
        assert [a.sequence for a in answers] == [1]
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            caught.value.details()
            == "request is not a valid raftsidecar.worker.v1.KeepAliveRequest"
        )


def test_an_oversized_request_is_refused_with_resource_exhausted(node: Sidecar) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        node.stub().Leader(worker_pb2.LeaderRequest(election="x" * 70_000), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A request of ordinary size still goes through on the same channel.
    assert node.stub().Leader(worker_pb2.LeaderRequest(election="x"), timeout=10) is not None


def test_the_observe_stream_beyond_the_bound_is_refused_until_one_ends(node: Sidecar) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(node.api) as channel:
            stub = worker_pb2_grpc.ElectionServiceStub(channel)
            request = worker_pb2.ObserveRequest(election="bounded")
            calls = [stub.Observe(request) for _ in range(API_STREAMS_PER_METHOD)]
            # Each call has its first message (the current state): all are open.
            await asyncio.gather(*(call.read() for call in calls))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Observe(request).read()
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert caught.value.details() == (
                f"too many open Observe calls on this worker API server "
                f"(limit {API_STREAMS_PER_METHOD}); end the streams you no longer read"
            )
            assert reason(caught.value) == "TOO_MANY_STREAMS"
            # KeepAlive has a bound of its own: still served.
            keep = stub.KeepAlive()
            await keep.write(worker_pb2.KeepAliveRequest(election="e", fencing_token=1, sequence=1))
            assert (await keep.read()).sequence == 1
            keep.cancel()
            calls.pop().cancel()

            async def opens() -> bool:
                try:
                    again = stub.Observe(request)
                    await again.read()
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    return False
                calls.append(again)
                return True

            deadline = asyncio.get_running_loop().time() + 20
            while not await opens():
                assert asyncio.get_running_loop().time() < deadline, "the freed place never came"
                await asyncio.sleep(0.05)
            for call in calls:
                call.cancel()

    asyncio.run(main())
    eventually(node.answers, "the sidecar to answer after the streams")


def test_a_client_that_pings_too_often_loses_its_connection(node: Sidecar) -> None:
    """The worker API allows a client ping every 5 s at most: one every 100 ms
    on a connection whose server sends nothing (an idle Observe) is closed
    with GOAWAY too_many_pings, which ends the call UNAVAILABLE."""
    options = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    with grpc.insecure_channel(node.api, options=options) as channel:
        stream = channel.unary_stream(
            f"/{WORKER.full_name}/Observe",
            request_serializer=worker_pb2.ObserveRequest.SerializeToString,
            response_deserializer=worker_pb2.ObserveResponse.FromString,
        )
        call = stream(worker_pb2.ObserveRequest(election="quiet"), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "ping" in (caught.value.details() or "").lower(), caught.value.details()
