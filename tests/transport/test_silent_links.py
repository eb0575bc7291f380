"""Links that go silent (issue 13 item 1): deadlines on writes, channels dialled anew.

Real ``grpc.aio`` servers on loopback. A peer that reads nothing stands for a
silent link: its HTTP/2 flow-control window closes and writes wait. The
blackholed links themselves (frames dropped by the kernel) are in
``tests/integration/test_link_heal.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import structlog

from sidecar.pb.raftsidecar.peer.v1 import peer_pb2
from sidecar.raft.messages import AppendRequest, HeartbeatRequest
from sidecar.raft.types import Entry, EntryKind
from sidecar.transport.errors import TransportUsageError
from sidecar.transport.forward import Forwarder, ForwardUnavailable
from sidecar.transport.peer import Inbox, PeerServer, PeerServicer, TransportConfig
from tests.transport.test_peer import (
    CLUSTER,
    eventually,
    eventually_with_traffic,
    run,
    sender_to,
)

MiB = 1 << 20


class _StopsReadingAfterTheFirstAck(PeerServicer):
    """Answers the first stream's first probe, then reads nothing more on it
    (the link went silent after it worked); later streams are served."""

    streams = 0

    async def DeliverStream(  # type: ignore[override]  # noqa: N802
        self, request_iterator: AsyncIterator[peer_pb2.DeliverStreamRequest], context: object
    ) -> AsyncIterator[peer_pb2.DeliverStreamResponse]:
        self.streams += 1
        if self.streams > 1:
            async for response in super().DeliverStream(request_iterator, context):
                yield response
            return
        first = await anext(aiter(request_iterator))
        yield peer_pb2.DeliverStreamResponse(sequence=first.sequence)
        await asyncio.Event().wait()  # never reads again; cancelled with the call


def bulky(seq: int) -> AppendRequest:
    """A 1 MiB append: a few of them fill any flow-control window."""
    return AppendRequest(
        term=1,
        prev_log_index=seq - 1,
        prev_log_term=1 if seq > 1 else 0,
        entries=(Entry(seq, 1, EntryKind.NORMAL, b"x" * MiB),),
        leader_commit=0,
        sender="a",
        recipient="b",
    )


def test_a_write_held_by_flow_control_ends_the_stream_and_the_next_one_dials_anew() -> None:
    async def main() -> None:
        # No second probe for a minute: only the write deadline can notice.
        config = TransportConfig(
            rpc_timeout_s=0.5,
            ack_interval_s=60.0,
            backoff_multiplier_s=0.02,
            backoff_max_s=0.2,
            max_queue_messages=64,
        )
        inbox = Inbox()
        servicer = _StopsReadingAfterTheFirstAck(
            node_id="b", cluster_id=CLUSTER, deliver=inbox.deliver, config=config
        )
        server = PeerServer(servicer, "127.0.0.1:0", config=config)
        port = await server.start()
        a = sender_to(port, config)
        client = a.clients["b"]
        lost: list[str] = []
        client.on_unreachable = lost.append
        with structlog.testing.capture_logs() as logs:
            await a.start()
            a.send(
                [HeartbeatRequest(term=1, leader_commit=0, read_seq=0, sender="a", recipient="b")]
            )
            await eventually(lambda: client.stats().last_rtt_s is not None, "the first ack")
            assert client.stats().reachable
            a.send([bulky(seq) for seq in range(1, 61)])  # 60 MiB for a peer that reads none
            await eventually(lambda: not client.stats().reachable, "the held write noticed")
            [event] = [e for e in logs if e["event"] == "peer_unreachable"]
            assert event["code"] == "DEADLINE_EXCEEDED"
            assert "a write blocked for 0.5 s" in event["details"]
            assert lost == ["b"], "the node is told the peer is unreachable"
            assert client._link is not None and client._link.resets == 1

            # The next stream goes over a new connection, and is served.
            seq = 0

            def send_next() -> None:
                nonlocal seq
                seq += 1
                a.send(
                    [
                        HeartbeatRequest(
                            term=2, leader_commit=seq, read_seq=0, sender="a", recipient="b"
                        )
                    ]
                )

            await eventually_with_traffic(lambda: servicer.streams >= 2, send_next, 10.0)
            await eventually_with_traffic(lambda: client.stats().reachable, send_next, 10.0)
        await a.stop()
        await server.stop(0)

    run(main)


class _NeverAnswers(PeerServicer):
    async def Propose(self, request: object, context: object) -> peer_pb2.ProposeResponse:  # type: ignore[override]  # noqa: N802
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_a_forwarded_call_past_its_deadline_makes_the_next_call_dial_anew() -> None:
    async def main() -> None:
        servicer = _NeverAnswers(node_id="b", cluster_id=CLUSTER, deliver=Inbox().deliver)
        server = PeerServer(servicer, "127.0.0.1:0")
        port = await server.start()
        forwarder = Forwarder(
            node_id="a", cluster_id=CLUSTER, peers={"b": f"127.0.0.1:{port}"}, timeout_s=0.3
        )
        with pytest.raises(ForwardUnavailable, match="DEADLINE_EXCEEDED"):
            await forwarder.propose("b", b"command")
        assert forwarder._links["b"].resets == 1
        with pytest.raises(ForwardUnavailable, match="DEADLINE_EXCEEDED"):
            await forwarder.propose("b", b"command")
        assert forwarder._links["b"].resets == 2, "a new channel, reset again"
        await forwarder.close()
        await server.stop(0)

    run(main)


# --- timings derived from Raft's (pure) -----------------------------------------


def test_default_raft_timings_give_fast_reconnects_and_sparse_pings() -> None:
    config = TransportConfig.for_raft(0.150)  # 15 ms ticks x 10
    assert config.backoff_max_s == pytest.approx(0.150)
    assert config.rpc_timeout_s == 2.0
    assert config.keepalive_time_s == 10.0
    assert config.keepalive_timeout_s == 2.5


def test_slow_raft_timings_stretch_the_deadlines() -> None:
    config = TransportConfig.for_raft(2.0)
    assert config.backoff_max_s == 0.5, "capped: a returning peer is reached within 0.5 s"
    assert config.rpc_timeout_s == 16.0, "four of the longest election timeouts"
    assert config.keepalive_time_s == 80.0
    assert config.keepalive_timeout_s == 20.0
    fast = TransportConfig.for_raft(0.01)
    assert fast.backoff_max_s == 0.1, "at least 0.1 s: at most ten connects a second"


@pytest.mark.parametrize("election_timeout_s", [0.01, 0.05, 0.15, 0.3, 1.0, 5.0, 60.0])
def test_the_peer_server_never_counts_our_pings_as_abuse(election_timeout_s: float) -> None:
    config = TransportConfig.for_raft(election_timeout_s)
    bounds = config.server_bounds()
    assert bounds.permit_keepalive_without_calls, "a forwarding channel pings between calls"
    assert bounds.min_ping_interval_ms * 2 <= config.keepalive_time_s * 1000
    assert config.keepalive_timeout_s >= config.rpc_timeout_s


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_an_election_timeout_that_is_not_positive_is_refused(bad: float) -> None:
    with pytest.raises(TransportUsageError, match="election_timeout_s must be > 0"):
        TransportConfig.for_raft(bad)


def test_a_keepalive_the_peer_server_would_refuse_is_refused() -> None:
    with pytest.raises(TransportUsageError, match="keepalive_time_s must be >= 1"):
        TransportConfig(keepalive_time_s=0.5)


def test_a_stream_stalled_before_its_connection_is_made_is_dialled_again() -> None:
    """The first write of a stream waits until gRPC has sent the call's
    headers, which needs a connection. A stall declared before that (a
    connection still being made across a silent link) cancels the call, and
    grpc.aio never releases a write waiting for headers of a cancelled call:
    the sender used to hang there for good, and the peer stayed unreachable
    after the link came back (found by test_link_heal.py's blackhole cases)."""

    async def main() -> None:
        # The stall deadline (20 ms) comes well before gRPC gives up on a
        # connection that never says hello (its connect timeout, 100 ms).
        config = TransportConfig(
            rpc_timeout_s=0.02, ack_interval_s=60.0, backoff_multiplier_s=0.02, backoff_max_s=0.1
        )
        held: list[asyncio.StreamWriter] = []

        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # accepted, never answered: no HTTP/2 settings

        silent = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        a = sender_to(port, config)
        client = a.clients["b"]
        await a.start()
        a.send([HeartbeatRequest(term=1, leader_commit=0, read_seq=0, sender="a", recipient="b")])
        # Each attempt stalls (or, on a busy machine, fails on gRPC's own
        # connect timeout first), ends and is followed by the next one.
        await eventually(lambda: client.failed_rpcs >= 5, "attempts after the first stall", 10.0)

        # The peer comes back on the same address: the sender reaches it.
        silent.close()
        for writer in held:
            writer.close()
        await silent.wait_closed()
        inbox = Inbox()
        servicer = PeerServicer(node_id="b", cluster_id=CLUSTER, deliver=inbox.deliver)
        server = PeerServer(servicer, f"127.0.0.1:{port}", config=TransportConfig())
        await server.start()
        await eventually(lambda: servicer.delivered_messages >= 1, "the heartbeat delivered", 10.0)
        await a.stop()
        await server.stop(0)

    run(main)
