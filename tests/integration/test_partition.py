"""The Raft leader cut off by a partition (userspace fault proxies).

The minority side grants nothing and cannot confirm tokens; the majority
elects a new leader and grants the election to another worker only after the
old holder's lease has run out, with a larger token; healing reunites them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.integration import worker_api
from tests.integration.cluster import Cluster, eventually
from tests.integration.faultproxy import FaultNetwork, partitionable

TTL_MS = 2000
MARGIN_S = 0.2  # what a client subtracts (the library's default for 2 s)


@pytest.fixture
def partitioned(tmp_path: Path) -> Iterator[tuple[Cluster, FaultNetwork]]:
    with partitionable(tmp_path) as (c, net):
        yield c, net


def test_isolated_leader_grants_nothing_and_majority_waits_out_the_lease(
    partitioned: tuple[Cluster, FaultNetwork],
) -> None:
    cluster, net = partitioned
    old = cluster.leader()
    held = worker_api.campaign(old.stub(), "pay", "worker-a", ttl_ms=TTL_MS)
    token = held.token

    # worker-a keeps its lease alive through the (soon isolated) leader.
    sent_at: dict[int, float] = {}
    acked: list[int] = []
    stop = threading.Event()

    def requests() -> Iterator[Any]:
        sequence = 0
        while not stop.is_set():
            sequence += 1
            sent_at[sequence] = time.monotonic()
            yield worker_pb2.KeepAliveRequest(
                election="pay",
                fencing_token=token.fencing_token,
                lease_key=held.lease_key,
                sequence=sequence,
            )
            stop.wait(0.1)

    stream = old.stub().KeepAlive(requests(), timeout=60)

    def read() -> None:
        try:
            for answer in stream:
                if answer.ttl_ms:  # renewed (not an UNAVAILABLE answer)
                    acked.append(answer.sequence)
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    eventually(lambda: len(acked) >= 3 or None, "keep-alives acknowledged")

    net.isolate(old.node_id)
    majority = [n for n in cluster.nodes if n is not old]
    new = cluster.leader(majority)

    # The majority grants worker-b only once worker-a's lease is over.
    # worker-b sends no keep-alives: a long TTL keeps its grant in place while
    # the healed node catches up below.
    granted = worker_api.campaign(new.stub(), "pay", "worker-b", ttl_ms=30_000, timeout=20).token
    granted_at = time.monotonic()
    assert granted.fencing_token > token.fencing_token
    last_safe = max(sent_at[s] for s in acked) + TTL_MS / 1000 - MARGIN_S
    assert granted_at >= last_safe, (
        f"worker-b granted {last_safe - granted_at:.3f}s before worker-a's safe deadline"
    )

    # The minority side grants nothing and cannot vouch for any token.
    for call in (
        lambda: worker_api.campaign(old.stub(), "other", "worker-m", ttl_ms=TTL_MS, timeout=2),
        lambda: old.stub().ValidateToken(
            worker_pb2.ValidateTokenRequest(election="pay", fencing_token=token.fencing_token),
            timeout=2,
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ), err.value

    stop.set()
    stream.cancel()
    net.isolate(old.node_id, cut=False)

    def old_side_sees_worker_b() -> bool | None:
        try:
            holder = old.stub().Leader(worker_pb2.LeaderRequest(election="pay"), timeout=2).holder
        except grpc.RpcError:
            return None
        return holder.fencing_token == granted.fencing_token or None

    eventually(old_side_sees_worker_b, "the healed node to learn the new holder")
    nobody_else = [
        n.stub().Status(worker_pb2.StatusRequest(), timeout=2).role for n in cluster.nodes
    ]
    assert nobody_else.count(worker_pb2.RAFT_ROLE_LEADER) == 1
