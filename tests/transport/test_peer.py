"""The peer transport over real grpc.aio servers on 127.0.0.1 (no mocks).

Every test runs its own event loop through ``asyncio.run`` and ends by
checking that no task outlived ``stop()``. Waiting is always "poll until a
condition holds or a deadline passes", never a sleep that asserts timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import structlog

from sidecar.pb.raftsidecar.admin.v1 import admin_pb2
from sidecar.pb.raftsidecar.peer.v1 import peer_pb2, peer_pb2_grpc
from sidecar.raft.messages import (
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    SnapshotRequest,
    TimeoutNowRequest,
    VoteRequest,
    VoteResponse,
)
from sidecar.raft.types import Entry, EntryKind, Membership, Snapshot, SnapshotMetadata
from sidecar.transport.codec import snapshot_header, to_wire
from sidecar.transport.errors import InboxFull, TransportUsageError
from sidecar.transport.peer import Inbox, PeerServer, PeerServicer, Transport, TransportConfig

CLUSTER = "settlement-test"
MiB = 1 << 20
FAST = TransportConfig(rpc_timeout_s=1.0, backoff_multiplier_s=0.02, backoff_max_s=0.5)


def reserve_port() -> int:
    """A free port to bind later (closed at once; fine on a test machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> float:
    """Poll ``condition`` until true; returns the seconds it took, fails at the deadline."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"after {timeout_s} s still not: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def assert_no_tasks_left() -> None:
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not others, f"tasks left behind: {others}"


@contextlib.asynccontextmanager
async def pair(
    config: TransportConfig = FAST, inbox: Inbox | None = None
) -> AsyncIterator[tuple[Transport, Transport, Inbox]]:
    """Node a (sender) and node b (receiver with an inbox), both started."""
    inbox = Inbox() if inbox is None else inbox
    b = Transport(
        node_id="b",
        cluster_id=CLUSTER,
        listen_address="127.0.0.1:0",
        peers={},
        deliver=inbox.deliver,
        config=config,
    )
    await b.start()
    a = Transport(
        node_id="a",
        cluster_id=CLUSTER,
        listen_address="127.0.0.1:0",
        peers={"a": "ignored:1", "b": f"127.0.0.1:{b.port}"},
        deliver=Inbox().deliver,
        config=config,
    )
    await a.start()
    try:
        yield a, b, inbox
    finally:
        await a.stop()
        await b.stop()


def sender_to(
    port: int,
    config: TransportConfig = FAST,
    on_peer_unreachable: Callable[[str], None] | None = None,
) -> Transport:
    """Node a, sending to a server of node b on ``port`` (not started)."""
    return Transport(
        node_id="a",
        cluster_id=CLUSTER,
        listen_address="127.0.0.1:0",
        peers={"b": f"127.0.0.1:{port}"},
        deliver=Inbox().deliver,
        config=config,
        on_peer_unreachable=on_peer_unreachable,
    )


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def wrapped() -> None:
        await main()
        assert_no_tasks_left()

    asyncio.run(wrapped())


def every_kind(n: int) -> list[Message]:
    """``n`` rounds of each message kind that travels by Deliver, a to b."""
    env = {"sender": "a", "recipient": "b"}
    out: list[Message] = []
    for i in range(1, n + 1):
        out += [
            VoteRequest(term=i, last_log_index=i, last_log_term=i, pre_vote=i % 2 == 0, **env),
            VoteResponse(term=i, granted=True, **env),
            AppendRequest(
                term=i,
                prev_log_index=i,
                prev_log_term=i,
                entries=(Entry(i, i + 1, EntryKind.NORMAL, b"x" * i), Entry(i, i + 2)),
                leader_commit=i,
                **env,
            ),
            AppendResponse(term=i, success=False, index=i, reject_hint_index=1, **env),
            HeartbeatRequest(term=i, leader_commit=i, read_seq=i, **env),
            HeartbeatResponse(term=i, read_seq=i, **env),
            TimeoutNowRequest(term=i, **env),
        ]
    return out


def big_snapshot(size: int) -> SnapshotRequest:
    data = bytes(range(256)) * (size // 256) + b"tail!"
    return SnapshotRequest(
        term=9,
        sender="a",
        recipient="b",
        snapshot=Snapshot(
            SnapshotMetadata(index=500, term=8, membership=Membership(frozenset("abc"))), data
        ),
    )


# --- delivery -------------------------------------------------------------------


def test_messages_of_every_kind_arrive_decoded_and_in_order() -> None:
    async def main() -> None:
        config = TransportConfig(max_batch_messages=8)
        async with pair(config) as (a, _, inbox):
            sent = every_kind(30)
            for i in range(0, len(sent), 7):  # several send() calls, several batches
                a.send(sent[i : i + 7])
                await asyncio.sleep(0)
            await eventually(lambda: len(inbox) >= len(sent), "all messages delivered")
            assert inbox.drain() == sent
            # The server delivers before it answers: the sender counts a moment later.
            await eventually(lambda: a.stats()["b"].sent == len(sent), "batches acknowledged")
            stats = a.stats()["b"]
            assert stats.dropped == stats.failed_rpcs == 0
            assert stats.last_rtt_s is not None and 0 < stats.last_rtt_s < 1

    run(main)


def test_self_and_unknown_recipients_are_not_routed() -> None:
    async def main() -> None:
        async with pair() as (a, _, _inbox):
            assert sorted(a.stats()) == ["b"]
            a.send([TimeoutNowRequest(term=1, sender="a", recipient="z")])
            assert a.unroutable == 1

    run(main)


def test_a_snapshot_of_several_mib_arrives_whole_through_chunks() -> None:
    async def main() -> None:
        # A 2 MiB message limit: the 5 MiB snapshot can only pass in chunks.
        config = TransportConfig(
            max_message_bytes=2 * MiB, max_batch_bytes=MiB, snapshot_chunk_bytes=MiB
        )
        async with pair(config) as (a, b, inbox):
            snap = big_snapshot(5 * MiB)
            a.send([snap, HeartbeatRequest(term=9, leader_commit=1, read_seq=0, **ENV_AB)])
            await eventually(lambda: len(inbox) >= 2, "snapshot and heartbeat delivered")
            got = inbox.drain()
            assert [m for m in got if isinstance(m, SnapshotRequest)] == [snap]
            assert any(isinstance(m, HeartbeatRequest) for m in got)
            # The server delivers before it answers: the sender counts a moment later.
            await eventually(lambda: a.stats()["b"].snapshots_sent == 1, "snapshot acknowledged")
            assert b.servicer.snapshots_received == 1

    run(main)


ENV_AB = {"sender": "a", "recipient": "b"}


# --- refusals, through a raw stub --------------------------------------------------


@contextlib.asynccontextmanager
async def receiver(
    inbox: Inbox | None = None, config: TransportConfig = FAST
) -> AsyncIterator[tuple[peer_pb2_grpc.RaftPeerServiceAsyncStub, Transport, Inbox]]:
    inbox = Inbox() if inbox is None else inbox
    b = Transport(
        node_id="b",
        cluster_id=CLUSTER,
        listen_address="127.0.0.1:0",
        peers={},
        deliver=inbox.deliver,
        config=config,
    )
    await b.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{b.port}")
    try:
        yield peer_pb2_grpc.RaftPeerServiceStub(channel), b, inbox
    finally:
        await channel.close()
        await b.stop()


def deliver_request(**changes: str) -> peer_pb2.DeliverRequest:
    fields = {"cluster_id": CLUSTER, "from_node": "a", "to_node": "b"} | changes
    hb = HeartbeatRequest(term=1, leader_commit=0, read_seq=0, **ENV_AB)
    return peer_pb2.DeliverRequest(messages=[to_wire(hb)], **fields)


@pytest.mark.parametrize(
    ("changes", "code", "details"),
    [
        ({"cluster_id": "payments-prod"}, grpc.StatusCode.FAILED_PRECONDITION, "cluster"),
        ({"to_node": "c"}, grpc.StatusCode.FAILED_PRECONDITION, "for node 'c' reached node 'b'"),
        ({"from_node": ""}, grpc.StatusCode.INVALID_ARGUMENT, "sender node id is empty"),
        ({"from_node": "b"}, grpc.StatusCode.INVALID_ARGUMENT, "the same"),
    ],
    ids=["wrong cluster", "wrong node", "no sender", "from itself"],
)
def test_misaddressed_deliver_is_refused_and_nothing_is_delivered(
    changes: dict[str, str], code: grpc.StatusCode, details: str
) -> None:
    async def main() -> None:
        async with receiver() as (stub, _, inbox):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Deliver(deliver_request(**changes))
            assert info.value.code() == code
            assert details in (info.value.details() or "")
            assert "Traceback" not in (info.value.details() or "")
            assert len(inbox) == 0
            await stub.Deliver(deliver_request())  # the server still works
            assert len(inbox) == 1

    run(main)


@pytest.mark.parametrize(
    ("changes", "code", "details"),
    [
        ({"cluster_id": "payments-prod"}, grpc.StatusCode.FAILED_PRECONDITION, "cluster"),
        ({"to_node": "c"}, grpc.StatusCode.FAILED_PRECONDITION, "for node 'c' reached node 'b'"),
    ],
    ids=["wrong cluster", "wrong node"],
)
def test_a_misaddressed_operator_request_never_reaches_the_admin(
    changes: dict[str, str], code: grpc.StatusCode, details: str
) -> None:
    """ForwardAdmin changes the membership on the leader: a request of another
    cluster or for another node is refused before the operator code sees it."""

    async def main() -> None:
        served: list[Any] = []

        async def admin(request: Any) -> Any:
            served.append(request)
            return peer_pb2.ForwardAdminResponse()

        async with receiver() as (stub, b, _):
            b.servicer.admin = admin
            fields = {"cluster_id": CLUSTER, "from_node": "a", "to_node": "b"} | changes
            request = peer_pb2.ForwardAdminRequest(
                remove_member=admin_pb2.RemoveMemberRequest(name="c"), **fields
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ForwardAdmin(request)
            assert info.value.code() == code
            assert details in (info.value.details() or "")
            assert served == []
            with pytest.raises(grpc.aio.AioRpcError) as empty:  # no operation in it
                await stub.ForwardAdmin(
                    peer_pb2.ForwardAdminRequest(cluster_id=CLUSTER, from_node="a", to_node="b")
                )
            assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert served == []
            proper = {"cluster_id": CLUSTER, "from_node": "a", "to_node": "b"}
            await stub.ForwardAdmin(
                peer_pb2.ForwardAdminRequest(
                    remove_member=admin_pb2.RemoveMemberRequest(name="c"), **proper
                )
            )
            assert len(served) == 1  # the server still serves a proper one

    run(main)


def test_a_batch_with_one_malformed_message_is_refused_whole() -> None:
    async def main() -> None:
        async with receiver() as (stub, _, inbox):
            request = deliver_request()
            request.messages.append(peer_pb2.RaftMessage())  # unset oneof
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Deliver(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed messages[1]" in (info.value.details() or "")
            assert len(inbox) == 0

    run(main)


def test_a_full_inbox_answers_resource_exhausted_and_drops_the_batch() -> None:
    async def main() -> None:
        async with receiver(Inbox(max_messages=2)) as (stub, _, inbox):
            await stub.Deliver(deliver_request())
            request = deliver_request()
            request.messages.append(request.messages[0])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Deliver(request)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(inbox) == 1

    run(main)


def snapshot_stream(
    total_size_bytes: int, chunks: list[bytes], **changes: str
) -> list[peer_pb2.InstallSnapshotRequest]:
    env = {"cluster_id": CLUSTER, "from_node": "a", "to_node": "b"} | changes
    header = snapshot_header(big_snapshot(0))
    header.total_size_bytes = total_size_bytes
    return [peer_pb2.InstallSnapshotRequest(header=header, **env)] + [
        peer_pb2.InstallSnapshotRequest(chunk=c, **env) for c in chunks
    ]


async def as_stream(
    requests: list[peer_pb2.InstallSnapshotRequest],
) -> AsyncIterator[peer_pb2.InstallSnapshotRequest]:
    for r in requests:
        yield r


def test_a_truncated_snapshot_stream_is_not_accepted() -> None:
    async def main() -> None:
        async with receiver() as (stub, _, inbox):
            with structlog.testing.capture_logs() as logs:
                response = await stub.InstallSnapshot(
                    as_stream(snapshot_stream(3 * MiB, [b"x" * MiB, b"y" * MiB]))
                )
            assert not response.accepted
            assert response.received_bytes == 2 * MiB
            assert len(inbox) == 0
            assert any(e["event"] == "snapshot_truncated" for e in logs)

    run(main)


@pytest.mark.parametrize(
    ("requests", "code", "details"),
    [
        (snapshot_stream(3, [b"abcd"]), grpc.StatusCode.INVALID_ARGUMENT, "more than"),
        (snapshot_stream(3, [b"abc"])[1:], grpc.StatusCode.INVALID_ARGUMENT, "open with a header"),
        (
            snapshot_stream(3, [b"abc"]) + snapshot_stream(3, [])[:1],
            grpc.StatusCode.INVALID_ARGUMENT,
            "only chunks",
        ),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "empty snapshot stream"),
        (snapshot_stream(65 * MiB, []), grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the limit"),
        (
            snapshot_stream(3, [b"abc"], cluster_id="other"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "cluster",
        ),
        (
            snapshot_stream(3, [b"abc"], to_node="c"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "reached node 'b'",
        ),
    ],
    ids=["overlong", "no header", "second header", "empty", "oversize", "cluster", "node"],
)
def test_malformed_snapshot_streams_are_refused(
    requests: list[peer_pb2.InstallSnapshotRequest], code: grpc.StatusCode, details: str
) -> None:
    async def main() -> None:
        config = TransportConfig(max_snapshot_bytes=64 * MiB)
        async with receiver(config=config) as (stub, _, inbox):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.InstallSnapshot(as_stream(requests))
            assert info.value.code() == code
            assert details in (info.value.details() or "")
            assert len(inbox) == 0

    run(main)


def test_a_snapshot_stream_cancelled_midway_delivers_nothing() -> None:
    async def main() -> None:
        async with receiver() as (stub, b, inbox):
            sent_one = asyncio.Event()

            async def stalls() -> AsyncIterator[peer_pb2.InstallSnapshotRequest]:
                for r in snapshot_stream(2 * MiB, [b"x" * MiB]):
                    yield r
                sent_one.set()
                await asyncio.Event().wait()  # never sends the second chunk

            call = stub.InstallSnapshot(stalls())
            await sent_one.wait()
            await eventually(lambda: b.servicer.snapshots_in_progress == 1, "stream being read")
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await eventually(lambda: b.servicer.snapshots_in_progress == 0, "stream ended")
            assert len(inbox) == 0

    run(main)


# --- the stream -----------------------------------------------------------------


def heartbeat(seq: int) -> HeartbeatRequest:
    return HeartbeatRequest(term=1, leader_commit=0, read_seq=seq, **ENV_AB)


def read_seqs(messages: list[Message]) -> list[int]:
    return [m.read_seq for m in messages if isinstance(m, HeartbeatRequest)]


def test_many_batches_arrive_in_order_over_one_stream() -> None:
    async def main() -> None:
        config = TransportConfig(max_batch_messages=8, max_queue_messages=10_000)
        async with pair(config) as (a, b, inbox):
            n = 3000
            for i in range(1, n + 1):
                a.send([heartbeat(i)])
                if i % 7 == 0:  # let the sender cut batches of varying sizes
                    await asyncio.sleep(0)
            await eventually(lambda: len(inbox) >= n, "every message delivered")
            assert read_seqs(inbox.drain()) == list(range(1, n + 1))
            stats = a.stats()["b"]
            assert (stats.sent, stats.dropped, stats.failed_rpcs) == (n, 0, 0)  # one stream
            assert b.servicer.delivered_messages == n

    run(main)


def test_batches_are_pipelined_while_the_peer_still_processes_the_first() -> None:
    async def main() -> None:
        inbox = Inbox()
        release = asyncio.Event()
        handed_over: list[list[Message]] = []

        async def slow(messages: list[Message]) -> None:
            handed_over.append(messages)
            if len(handed_over) == 1:
                await release.wait()  # the node is still busy with the first batch
            await inbox.deliver(messages)

        config = TransportConfig(max_batch_messages=1, rpc_timeout_s=30.0)
        b = Transport(
            node_id="b",
            cluster_id=CLUSTER,
            listen_address="127.0.0.1:0",
            peers={},
            deliver=slow,
            config=config,
        )
        await b.start()
        a = Transport(
            node_id="a",
            cluster_id=CLUSTER,
            listen_address="127.0.0.1:0",
            peers={"b": f"127.0.0.1:{b.port}"},
            deliver=Inbox().deliver,
            config=config,
        )
        await a.start()
        for i in range(1, 21):
            a.send([heartbeat(i)])
            await asyncio.sleep(0)
        # A unary Deliver per batch could not count a second batch before the
        # first was answered: here ten are written while the first is held.
        await eventually(lambda: a.stats()["b"].sent >= 10, "batches written ahead")
        assert len(handed_over) == 1
        assert len(inbox) == 0
        release.set()
        await eventually(lambda: len(inbox) == 20, "every batch delivered")
        assert read_seqs(inbox.drain()) == list(range(1, 21))
        assert a.stats()["b"].failed_rpcs == 0
        await a.stop()
        await b.stop()

    run(main)


def test_an_idle_stream_keeps_measuring_the_round_trip() -> None:
    async def main() -> None:
        config = TransportConfig(ack_interval_s=0.05, idle_ack_interval_s=0.1)
        async with pair(config) as (a, _, inbox):
            client = a.clients["b"]
            # No message is sent at all: empty probe batches ask for acks.
            await eventually(lambda: client.last_rtt_s is not None, "a probe answered")
            client.last_rtt_s = None
            await eventually(lambda: client.last_rtt_s is not None, "a later probe answered")
            stats = client.stats()
            assert stats.last_rtt_s is not None and 0 < stats.last_rtt_s < 1
            assert stats.reachable and stats.sent == stats.failed_rpcs == 0
            assert len(inbox) == 0

    run(main)


class _RecordingServicer(PeerServicer):
    """Records (messages, ack_requested) of every stream batch it reads."""

    batches: list[tuple[int, bool]]

    async def DeliverStream(  # type: ignore[override]  # noqa: N802
        self, request_iterator: AsyncIterator[peer_pb2.DeliverStreamRequest], context: object
    ) -> AsyncIterator[peer_pb2.DeliverStreamResponse]:
        async def recorded() -> AsyncIterator[peer_pb2.DeliverStreamRequest]:
            async for request in request_iterator:
                self.batches.append((len(request.messages), request.ack_requested))
                yield request

        async for response in super().DeliverStream(recorded(), context):
            yield response


def test_probes_ride_on_traffic_and_an_idle_stream_asks_alone_only_at_the_idle_interval() -> None:
    async def main() -> None:
        config = TransportConfig(rpc_timeout_s=5.0, ack_interval_s=0.02, idle_ack_interval_s=60.0)
        inbox = Inbox()
        servicer = _RecordingServicer(
            node_id="b", cluster_id=CLUSTER, deliver=inbox.deliver, config=config
        )
        servicer.batches = []
        server = PeerServer(servicer, "127.0.0.1:0", config=config)
        a = sender_to(await server.start(), config)
        await a.start()
        client = a.clients["b"]
        try:
            await eventually(lambda: client.last_rtt_s is not None, "the first probe answered")
            await asyncio.sleep(0.3)  # fifteen ack intervals with nothing to send
            assert servicer.batches == [(0, True)], "an idle stream asked again, alone"
            for i in range(1, 41):
                a.send([heartbeat(i)])
                await asyncio.sleep(0.01)
            await eventually(lambda: len(inbox) == 40, "delivered")
            asked = [messages for messages, ack in servicer.batches[1:] if ack]
            assert asked, "traffic asked for no acknowledgement"
            assert all(asked), f"an empty batch asked while there was traffic: {asked}"
        finally:
            await a.stop()
            await server.stop(0)

    run(main)


def test_a_stream_to_a_peer_never_addressed_waits_without_spinning() -> None:
    """A follower never writes to the other follower, so the core never tells
    its stream whom (which incarnation) to address: there is nothing to probe.
    The writer then waited on a probe alarm that was already due and woke at
    once, again and again: an idle follower burned a core (13 CPU s a minute).
    Its thread must now use next to no CPU while the stream is open."""

    async def main() -> None:
        b = Transport(
            node_id="b~00000000000000b2",
            cluster_id=CLUSTER,
            listen_address="127.0.0.1:0",
            peers={},
            deliver=Inbox().deliver,
            config=FAST,
        )
        await b.start()
        a = Transport(
            node_id="a~00000000000000a1",
            cluster_id=CLUSTER,
            listen_address="127.0.0.1:0",
            peers={"b": f"127.0.0.1:{b.port}"},
            deliver=Inbox().deliver,
            config=FAST,
        )
        await a.start()
        try:
            client = a.clients["b"]
            assert not client.target_known
            await asyncio.sleep(FAST.ack_interval_s * 1.5)  # the first probe is due
            cpu_before, wall_before = time.thread_time(), time.monotonic()
            await asyncio.sleep(1.0)
            cpu = time.thread_time() - cpu_before
            wall = time.monotonic() - wall_before
            # A spinning loop takes whatever CPU the machine gives it (at least
            # a tenth of the wall time even with ten busy processes per core).
            assert cpu < 0.05 * wall, f"{cpu:.3f} s of CPU in {wall:.3f} s while idle"
        finally:
            await a.stop()
            await b.stop()

    run(main)


def test_delivery_resumes_after_the_peer_restarts() -> None:
    async def main() -> None:
        port = reserve_port()

        def receiver_on(inbox: Inbox) -> Transport:
            return Transport(
                node_id="b",
                cluster_id=CLUSTER,
                listen_address=f"127.0.0.1:{port}",
                peers={},
                deliver=inbox.deliver,
                config=FAST,
            )

        first, second = Inbox(), Inbox()
        b = receiver_on(first)
        await b.start()
        lost: list[str] = []
        a = sender_to(port, FAST, on_peer_unreachable=lost.append)
        await a.start()
        seq = 0

        def send_next() -> None:
            nonlocal seq
            seq += 1
            a.send([heartbeat(seq)])

        send_next()
        await eventually(lambda: len(first) == 1, "delivered before the restart")
        with structlog.testing.capture_logs() as logs:
            await b.stop(grace_s=0)
            b = receiver_on(second)
            await b.start()
            await eventually_with_traffic(lambda: len(second) > 0, send_next, 10.0)
            await eventually(lambda: a.stats()["b"].reachable, "the peer acknowledged again")
        got = read_seqs(second.drain())
        assert got == sorted(got) and got[-1] <= seq
        stats = a.stats()["b"]
        assert stats.failed_rpcs >= 1
        events = [e["event"] for e in logs]
        assert events.count("peer_unreachable") == 1
        assert lost == ["b"], "the node is told once that the peer went away"
        assert events.index("peer_unreachable") < events.index("peer_reachable")
        await a.stop()
        await b.stop()

    run(main)


class _StallingServicer(PeerServicer):
    """A peer that accepts streams but reads nothing until released (a frozen process)."""

    release: asyncio.Event

    async def DeliverStream(  # type: ignore[override]  # noqa: N802
        self, request_iterator: AsyncIterator[peer_pb2.DeliverStreamRequest], context: object
    ) -> AsyncIterator[peer_pb2.DeliverStreamResponse]:
        await self.release.wait()
        async for response in super().DeliverStream(request_iterator, context):
            yield response


def test_a_stalled_peer_is_detected_and_costs_only_the_queue_bound() -> None:
    async def main() -> None:
        inbox = Inbox()
        bound = 32
        config = TransportConfig(
            max_queue_messages=bound,
            rpc_timeout_s=0.3,
            ack_interval_s=0.05,
            backoff_multiplier_s=0.02,
            backoff_max_s=0.2,
        )
        servicer = _StallingServicer(
            node_id="b", cluster_id=CLUSTER, deliver=inbox.deliver, config=config
        )
        servicer.release = asyncio.Event()
        server = PeerServer(servicer, "127.0.0.1:0", config=config)
        port = await server.start()
        a = sender_to(port, config)
        client = a.clients["b"]
        seq = 0

        def send_next() -> None:
            nonlocal seq
            seq += 1
            a.send([heartbeat(seq)])

        with structlog.testing.capture_logs() as logs:
            await a.start()
            send_next()
            await eventually(lambda: not client.stats().reachable, "the stall noticed")
            for _ in range(50):  # 0.5 s of traffic to the frozen peer
                for _ in range(20):
                    send_next()
                    assert client.queue_len <= bound
                await asyncio.sleep(0.01)
            stats = client.stats()
            assert not stats.reachable, "no flapping while the peer stays frozen"
            assert 1 <= stats.failed_rpcs < 20
            [unreachable] = [e for e in logs if e["event"] == "peer_unreachable"]
            assert unreachable["code"] == "DEADLINE_EXCEEDED"
            assert len(inbox) == 0
            servicer.release.set()
            await eventually_with_traffic(lambda: len(inbox) > 0, send_next, 10.0)
            await eventually(lambda: client.stats().reachable, "acknowledged again")
        got = read_seqs(inbox.drain())
        assert got == sorted(got)
        await a.stop()
        await server.stop(0)

    run(main)


class _UnaryOnlyServicer(PeerServicer):
    """A peer of an older version: no DeliverStream."""

    async def DeliverStream(  # type: ignore[override]  # noqa: N802
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[peer_pb2.DeliverStreamResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        yield peer_pb2.DeliverStreamResponse()  # pragma: no cover - makes it a generator


def test_a_peer_without_the_stream_is_served_by_unary_deliver() -> None:
    async def main() -> None:
        inbox = Inbox()
        servicer = _UnaryOnlyServicer(node_id="b", cluster_id=CLUSTER, deliver=inbox.deliver)
        server = PeerServer(servicer, "127.0.0.1:0")
        port = await server.start()
        a = sender_to(port, FAST)
        with structlog.testing.capture_logs() as logs:
            await a.start()
            # What the refused stream carried is sent again by Deliver calls.
            for i in range(1, 31):
                a.send([heartbeat(i)])
                await asyncio.sleep(0)
            await eventually(lambda: len(inbox) == 30, "delivered by Deliver calls")
            # The server hands the batch over before its answer reaches the
            # client, so the client records the answer a little later. A refused
            # stream (UNIMPLEMENTED) never marked the peer unreachable, so wait
            # for the round trip of an answered Deliver, not for reachable.
            await eventually(
                lambda: a.stats()["b"].reachable and a.stats()["b"].last_rtt_s is not None,
                "a Deliver answer recorded",
            )
        assert read_seqs(inbox.drain()) == list(range(1, 31))
        assert [e["event"] for e in logs].count("peer_stream_unsupported") == 1
        stats = a.stats()["b"]
        assert stats.failed_rpcs >= 1 and stats.last_rtt_s is not None
        await a.stop()
        await server.stop()

    run(main)


# --- stream refusals, through a raw stub ---------------------------------------------


def stream_request(
    sequence: int,
    *,
    ack: bool = False,
    extra: list[peer_pb2.RaftMessage] | None = None,
    **changes: str,
) -> peer_pb2.DeliverStreamRequest:
    fields = {"cluster_id": CLUSTER, "from_node": "a", "to_node": "b"} | changes
    messages = [to_wire(heartbeat(sequence)), *(extra or [])]
    return peer_pb2.DeliverStreamRequest(
        messages=messages, sequence=sequence, ack_requested=ack, **fields
    )


@pytest.mark.parametrize(
    ("bad", "code", "details"),
    [
        (
            stream_request(2, cluster_id="payments-prod"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "cluster",
        ),
        (
            stream_request(2, to_node="c"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "for node 'c' reached node 'b'",
        ),
        (
            stream_request(2, extra=[peer_pb2.RaftMessage()]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "malformed messages[1]",
        ),
        (stream_request(3), grpc.StatusCode.INVALID_ARGUMENT, "sequence 3 where 2 was due"),
        (stream_request(2, from_node="z"), grpc.StatusCode.INVALID_ARGUMENT, "from_node changed"),
        (stream_request(2, from_node="b"), grpc.StatusCode.INVALID_ARGUMENT, "the same"),
    ],
    ids=["wrong cluster", "wrong node", "malformed", "sequence gap", "sender changed", "self"],
)
def test_a_refused_batch_ends_the_stream_and_nothing_of_it_is_delivered(
    bad: peer_pb2.DeliverStreamRequest, code: grpc.StatusCode, details: str
) -> None:
    async def main() -> None:
        async with receiver() as (stub, b, inbox):
            call = stub.DeliverStream()
            await call.write(stream_request(1, ack=True))
            assert (await call.read()).sequence == 1
            await call.write(bad)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call.read()
            assert info.value.code() == code
            assert details in (info.value.details() or "")
            assert "Traceback" not in (info.value.details() or "")
            assert read_seqs(inbox.drain()) == [1]  # the batch before it, not the refused one
            assert b.servicer.refused_requests == 1

    run(main)


def test_a_full_inbox_drops_the_stream_batch_and_the_stream_goes_on() -> None:
    async def main() -> None:
        async with receiver(Inbox(max_messages=1)) as (stub, b, inbox):
            with structlog.testing.capture_logs() as logs:
                call = stub.DeliverStream()
                await call.write(stream_request(1))
                await call.write(stream_request(2))  # no room: dropped
                await call.write(stream_request(3, ack=True))  # dropped too, still answered
                assert (await call.read()).sequence == 3
                assert read_seqs(inbox.drain()) == [1]
                await call.write(stream_request(4, ack=True))
                assert (await call.read()).sequence == 4
                await call.done_writing()
                assert await call.code() == grpc.StatusCode.OK
            assert read_seqs(inbox.drain()) == [4]
            assert b.servicer.dropped_batches == 2
            assert b.servicer.refused_requests == 0
            assert [e["event"] for e in logs].count("peer_batch_dropped") == 1

    run(main)


# --- a peer that is down ----------------------------------------------------------


def test_sends_to_a_down_peer_stay_bounded_and_delivery_resumes_when_it_starts() -> None:
    async def main() -> None:
        port = reserve_port()
        bound = 16
        config = TransportConfig(
            max_queue_messages=bound,
            max_batch_messages=4,
            rpc_timeout_s=0.5,
            backoff_multiplier_s=0.02,
            backoff_max_s=0.5,
        )
        a = sender_to(port, config)
        inbox = Inbox()
        b = Transport(
            node_id="b",
            cluster_id=CLUSTER,
            listen_address=f"127.0.0.1:{port}",
            peers={},
            deliver=inbox.deliver,
            config=config,
        )
        await a.start()
        client = a.clients["b"]
        seq = 0

        def heartbeat() -> None:
            nonlocal seq
            seq += 1
            a.send([HeartbeatRequest(term=1, leader_commit=0, read_seq=seq, **ENV_AB)])

        with structlog.testing.capture_logs() as logs:
            for _ in range(100):  # ~1 s of traffic to a dead peer, 20 messages a tick
                for _ in range(20):
                    heartbeat()
                    assert client.queue_len <= bound
                await asyncio.sleep(0.01)
        stats = client.stats()
        # Backoff: a handful of attempts per second, not one per message or per loop turn.
        assert 0 < stats.failed_rpcs < 50
        assert not stats.reachable
        assert stats.sent == 0
        # Everything not queued (or in the one batch in flight) was dropped.
        assert stats.dropped >= seq - bound - config.max_batch_messages
        assert [e["event"] for e in logs].count("peer_unreachable") == 1

        await b.start()
        deadline_s = 10.0
        took = await eventually_with_traffic(lambda: len(inbox) > 0, heartbeat, deadline_s)
        assert took < deadline_s
        # An empty queue is not delivery: the last batches may still be on
        # the stream. Wait until the last message sent has arrived.
        got: list[int] = []

        def caught_up() -> bool:
            got.extend(m.read_seq for m in inbox.drain() if isinstance(m, HeartbeatRequest))
            return bool(got) and got[-1] == seq

        await eventually(caught_up, "the last message delivered")
        assert client.queue_len == 0
        # Oldest dropped: what arrives is an in-order suffix of what was sent.
        assert got == sorted(got)
        # The acknowledgement reaches the client after the server took the batch.
        await eventually(lambda: client.stats().reachable, "peer marked reachable")
        await a.stop()
        await b.stop()

    run(main)


async def eventually_with_traffic(
    condition: Callable[[], bool], send: Callable[[], None], timeout_s: float
) -> float:
    """Like ``eventually``, sending one message every 50 ms as a running node would."""
    start = time.monotonic()
    last_send = 0.0
    while not condition():
        now = time.monotonic()
        if now - start > timeout_s:
            pytest.fail(f"delivery did not resume within {timeout_s} s")
        if now - last_send > 0.05:
            send()
            last_send = now
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def test_stop_while_backing_off_from_a_down_peer_leaves_no_task() -> None:
    async def main() -> None:
        a = Transport(
            node_id="a",
            cluster_id=CLUSTER,
            listen_address="127.0.0.1:0",
            peers={"b": f"127.0.0.1:{reserve_port()}", "c": f"127.0.0.1:{reserve_port()}"},
            deliver=Inbox().deliver,
        )
        await a.start()
        a.send([TimeoutNowRequest(term=1, sender="a", recipient="b"), big_snapshot(10)])
        await eventually(lambda: a.stats()["b"].failed_rpcs >= 2, "both calls failed")
        await a.stop()
        stats = a.stats()["b"]
        assert stats.queue_len == 0
        a.send([TimeoutNowRequest(term=1, sender="a", recipient="b")])  # after stop: dropped
        assert a.stats()["b"].dropped == stats.dropped + 1

    run(main)


def test_a_client_of_another_cluster_is_refused_and_backs_off() -> None:
    async def main() -> None:
        inbox = Inbox()
        b = Transport(
            node_id="b",
            cluster_id=CLUSTER,
            listen_address="127.0.0.1:0",
            peers={},
            deliver=inbox.deliver,
        )
        await b.start()
        lost: list[str] = []
        a = Transport(
            node_id="a",
            cluster_id="another-cluster",
            listen_address="127.0.0.1:0",
            peers={"b": f"127.0.0.1:{b.port}"},
            deliver=Inbox().deliver,
            config=FAST,
            on_peer_unreachable=lost.append,
        )
        with structlog.testing.capture_logs() as logs:
            await a.start()
            a.send([TimeoutNowRequest(term=1, **ENV_AB)])
            await eventually(lambda: a.stats()["b"].failed_rpcs >= 1, "stream refused")
            await asyncio.sleep(0.5)
        stats = a.stats()["b"]
        assert not stats.reachable
        assert stats.queue_len == 0
        # Each reopened stream is refused again: a few attempts, not a storm.
        # (The last refusal may still be on its way back to the client.)
        assert 1 <= stats.failed_rpcs < 15
        assert stats.failed_rpcs <= b.servicer.refused_requests <= stats.failed_rpcs + 1
        assert len(inbox) == 0
        assert lost == [], "a refusing peer is not reported as gone"
        [unreachable] = [e for e in logs if e["event"] == "peer_unreachable"]
        assert unreachable["code"] == "FAILED_PRECONDITION"
        assert "another-cluster" in unreachable["details"]
        await a.stop()
        await b.stop()

    run(main)


def test_inbox_refuses_a_batch_that_does_not_fit_whole() -> None:
    async def main() -> None:
        inbox = Inbox(max_messages=3)
        await inbox.deliver(every_kind(1)[:2])
        with pytest.raises(InboxFull):
            await inbox.deliver(every_kind(1)[:2])
        assert len(inbox) == 2
        assert inbox.dropped_batches == 1

    run(main)


def test_a_newer_snapshot_replaces_an_unsent_older_one() -> None:
    async def main() -> None:
        inbox = Inbox()
        b = Transport(
            node_id="b",
            cluster_id=CLUSTER,
            listen_address="127.0.0.1:0",
            peers={},
            deliver=inbox.deliver,
        )
        await b.start()
        a = Transport(
            node_id="a",
            cluster_id=CLUSTER,
            listen_address="127.0.0.1:0",
            peers={"b": f"127.0.0.1:{b.port}"},
            deliver=Inbox().deliver,
        )
        older, newer = big_snapshot(1000), big_snapshot(2000)
        a.send([older, newer])  # queued before start: the first never leaves
        assert a.stats()["b"].dropped == 1
        await a.start()
        await eventually(lambda: len(inbox) == 1, "snapshot delivered")
        assert inbox.drain() == [newer]
        await a.stop()
        await b.stop()

    run(main)


def test_a_taken_port_is_refused_clearly_and_leaves_no_server_behind() -> None:
    async def main() -> None:
        async with pair() as (_, b, _inbox):
            # The port b serves on: SO_REUSEPORT is off, so a second bind fails.
            servicer = PeerServicer(node_id="c", cluster_id=CLUSTER, deliver=Inbox().deliver)
            second = PeerServer(servicer, f"127.0.0.1:{b.port}")
            with pytest.raises(TransportUsageError, match=f"cannot listen on 127.0.0.1:{b.port}"):
                await second.start()
            assert second.port == 0
            await second.stop()  # nothing to stop: harmless

    run(main)
