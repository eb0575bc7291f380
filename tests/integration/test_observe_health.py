"""Three real sidecar processes on loopback: Observe streams, grpc.health.v1
health checking and server reflection on the worker API port."""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from sidecar.api import service as api_service
from sidecar.elections import Campaign, Resign, encode_command, lease_key_digest
from sidecar.machine import ElectionsMachine
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.integration import worker_api
from tests.integration.cluster import Cluster, Sidecar, eventually

ELECTION = "settlement-eur"
ELECTION_SERVICE = "raftsidecar.worker.v1.ElectionService"


def campaign(stub: Any, candidate: str, timeout: float = 10) -> worker_api.Granted:
    return worker_api.campaign(stub, ELECTION, candidate, timeout=timeout)


def resign(stub: Any, granted: worker_api.Granted) -> None:
    worker_api.resign(stub, ELECTION, granted.lease_key, granted.fencing_token)


class Observer:
    """Reads an Observe stream on a thread, so the test can wait per event."""

    def __init__(self, node: Sidecar, election: str = ELECTION) -> None:
        self.call = node.stub().Observe(worker_pb2.ObserveRequest(election=election))
        self.events: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.events.put(response.change)
        except grpc.RpcError as exc:
            self.events.put(exc)

    def next(self, timeout: float = 5) -> Any:
        event = self.events.get(timeout=timeout)
        if isinstance(event, grpc.RpcError):
            raise event
        return event

    def cancel(self) -> grpc.RpcError:
        self.call.cancel()
        self.thread.join(5)
        assert not self.thread.is_alive()
        end = self.events.get(timeout=1)
        assert isinstance(end, grpc.RpcError), end
        return end


def channel(node: Sidecar) -> grpc.Channel:
    node.stub()  # opens node.channel
    assert node.channel is not None
    return node.channel


def health(node: Sidecar, service: str = "") -> Any:
    stub = health_pb2_grpc.HealthStub(channel(node))
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status


def serving_everywhere(nodes: list[Sidecar]) -> bool | None:
    for node in nodes:
        for service in ("", ELECTION_SERVICE):
            try:
                if health(node, service) != health_pb2.HealthCheckResponse.SERVING:
                    return None
            except grpc.RpcError:
                return None
    return True


def test_observe_on_a_follower_sees_grant_handover_and_end(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    stub = leader.stub()

    observer = Observer(follower)
    initial = observer.next()
    assert (initial.election, initial.holder, initial.fencing_token) == (ELECTION, "", 0)
    assert (initial.lease_known, initial.lease_remaining_ms) == (False, 0)

    first = campaign(stub, "worker-a")
    grant = observer.next()
    assert (grant.holder, grant.fencing_token) == ("worker-a", first.fencing_token)
    assert grant.applied_index == first.fencing_token > initial.applied_index

    # worker-b queues behind worker-a, in a live Campaign call.
    queued = threading.Event()
    second: list[worker_api.Granted] = []
    waiter = threading.Thread(
        target=lambda: second.append(
            worker_api.campaign(
                stub, ELECTION, "worker-b", timeout=20, on_queued=lambda _: queued.set()
            )
        )
    )
    waiter.start()
    assert queued.wait(10)
    resign(stub, first)
    waiter.join(10)
    handover = observer.next()
    assert handover.holder == "worker-b"
    assert handover.fencing_token > first.fencing_token
    assert handover.applied_index == handover.fencing_token

    assert second[0].fencing_token == handover.fencing_token
    resign(stub, second[0])
    end = observer.next()
    assert (end.holder, end.fencing_token, end.lease_known) == ("", 0, False)
    assert end.applied_index > handover.applied_index
    assert observer.events.empty(), "one event per holder change"

    assert observer.cancel().code() == grpc.StatusCode.CANCELLED

    # A new subscriber starts from the current state, here on the leader.
    again = Observer(leader)
    current = again.next()
    assert (current.holder, current.fencing_token) == ("", 0)
    assert current.applied_index >= end.applied_index
    again.cancel()


def test_observe_rejects_a_bad_election_name(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    for name in ("", "x" * 200):
        observer = Observer(node, election=name)
        with pytest.raises(grpc.RpcError) as err:
            observer.next()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "election" in (err.value.details() or "")


LIST_SERVICES = b"\x3a\x00"
"""A grpc.reflection.v1 ServerReflectionRequest with list_services = "" (field 7)."""


def symbol(name: str) -> bytes:
    """A v1 ServerReflectionRequest with file_containing_symbol = name (field 4)."""
    encoded = name.encode()
    return bytes([0x22, len(encoded)]) + encoded


def reflect_v1(node: Sidecar, request: bytes) -> Any:
    """One request on a raw grpc.reflection.v1 stream (no v1 stub ships with
    grpcio-reflection); the answer is read with the v1alpha message, which has
    the same fields and numbers as v1's."""
    stream = channel(node).stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda raw: raw,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (response,) = list(stream(iter([request]), timeout=5))
    assert not response.HasField("error_response"), response.error_response
    return response


def described(response: Any) -> list[Any]:
    files = []
    for raw in response.file_descriptor_response.file_descriptor_proto:
        files.append(descriptor_pb2.FileDescriptorProto.FromString(raw))
    return files


def test_health_and_reflection(cluster: Cluster) -> None:
    leader = cluster.leader()
    eventually(lambda: serving_everywhere(cluster.nodes), "SERVING on every node")
    with pytest.raises(grpc.RpcError) as err:
        health(leader, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # List answers (the stock asyncio servicer had none and leaked a class name).
    listed = health_pb2_grpc.HealthStub(channel(leader)).List(health_pb2.HealthListRequest())
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING,
        ELECTION_SERVICE: health_pb2.HealthCheckResponse.SERVING,
        "raftsidecar.liveness": health_pb2.HealthCheckResponse.SERVING,
    }

    services = set(ProtoReflectionDescriptorDatabase(channel(cluster.nodes[0])).get_services())
    assert services == {
        ELECTION_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
    assert reflect_v1(cluster.nodes[1], LIST_SERVICES).list_services_response == (
        reflection_pb2.ListServiceResponse(
            service=[reflection_pb2.ServiceResponse(name=name) for name in sorted(services)]
        )
    )
    # A v1 client can describe the reflection service itself, and ours.
    (v1_file,) = described(
        reflect_v1(cluster.nodes[1], symbol("grpc.reflection.v1.ServerReflection"))
    )
    assert (v1_file.name, v1_file.package) == (
        "grpc/reflection/v1/reflection.proto",
        "grpc.reflection.v1",
    )
    (method,) = v1_file.service[0].method
    assert (method.name, method.input_type, method.output_type) == (
        "ServerReflectionInfo",
        ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse",
    )
    assert method.client_streaming and method.server_streaming
    names = {f.name for f in described(reflect_v1(cluster.nodes[1], symbol(ELECTION_SERVICE)))}
    assert "raftsidecar/worker/v1/worker.proto" in names

    # The Raft leader dies: once a new one is elected, the survivors serve again.
    cluster.kill(leader, signal.SIGKILL)
    survivors = [n for n in cluster.nodes if n.process is not None]
    new_leader = cluster.leader(survivors)
    assert new_leader is not leader
    eventually(lambda: serving_everywhere(survivors), "SERVING on the survivors")


class _Aborted(Exception):
    pass


class _Context:
    code: Any = None
    details = ""

    async def abort(self, code: Any, details: str, trailing_metadata: Any = ()) -> None:
        self.code, self.details = code, details
        raise _Aborted(details)


def test_slow_observer_is_cut_off_and_listeners_are_removed() -> None:
    """In process: an observer that does not read overflows its bounded queue
    and ends with RESOURCE_EXHAUSTED; no stream leaves its listener behind."""

    class Leases:
        def remaining_ms(self, election: str, token: int) -> int | None:
            return None

    class Config:
        keepalive_grace_ms = 250

    async def scenario() -> None:
        machine = ElectionsMachine()
        api = api_service.ElectionService(Config(), None, machine, Leases())  # type: ignore[arg-type]
        baseline = len(machine.listeners)
        context = _Context()
        stream = api.Observe(worker_pb2.ObserveRequest(election=ELECTION), context)
        first = await anext(stream)
        assert first.change.applied_index == 0 and len(machine.listeners) == baseline + 1
        index = 0
        for _ in range(api_service.OBSERVE_QUEUE_SIZE + 1):  # grant, resign, grant, ...
            index += 1
            machine.apply(
                index,
                encode_command(
                    Campaign(
                        election=ELECTION,
                        candidate="w",
                        ttl_ms=5000,
                        key_digest=lease_key_digest("w" * 22),
                        proposed_at_unix_ms=0,
                    )
                ),
            )
            index += 1
            machine.apply(
                index,
                encode_command(
                    Resign(
                        election=ELECTION,
                        key_digest=lease_key_digest("w" * 22),
                        proposed_at_unix_ms=0,
                        token=index - 1,
                    )
                ),
            )
        with pytest.raises(_Aborted):
            while True:
                await anext(stream)
        assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert context.details == "observer too slow; re-subscribe"
        assert len(machine.listeners) == baseline

        # A client going away (the generator closed) removes its listener too.
        other = api.Observe(worker_pb2.ObserveRequest(election=ELECTION), _Context())
        await anext(other)
        assert len(machine.listeners) == baseline + 1
        await other.aclose()
        assert len(machine.listeners) == baseline

    asyncio.run(scenario())


def test_a_new_node_waiting_for_its_peers_is_alive_but_not_ready(tmp_path: Any) -> None:
    """A new cluster forms only when every initial voter answers
    (docs/membership.md), so the first pod of a new StatefulSet may wait
    minutes for the others: its startup and liveness probes (the
    ``raftsidecar.liveness`` service) must say SERVING meanwhile, or the
    kubelet restarts it into the same wait; readiness says NOT_SERVING."""
    c = Cluster(tmp_path)
    first, *rest = c.nodes
    try:
        c.start(first)
        eventually(
            lambda: True if _probe(first, "raftsidecar.liveness") == _SERVING else None,
            "the waiting node alive on its probe port",
            seconds=60,
        )
        assert _probe(first, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert "waiting_for_peers_to_decide_bootstrap" in first.log_path.read_text()
        for node in rest:
            c.start(node)
        eventually(lambda: serving_everywhere(c.nodes), "SERVING once the peers are up", 60)
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()


_SERVING = health_pb2.HealthCheckResponse.SERVING


def _probe(node: Sidecar, service: str) -> int | None:
    """The probe port's answer, or None while it does not listen yet."""
    try:
        return node.health(service)
    except grpc.RpcError:
        return None
