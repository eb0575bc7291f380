"""Operator membership figures of real sidecar processes: ``python -m bench.members``.

1. ``ListMembers`` through a node's admin Unix socket: answered by the
   leader itself, and by a follower that forwards to the leader
   (``ForwardAdmin`` over the peer transport); p50 and p99 of N calls.
2. ``raft-sidecar members list`` as an operator runs it: one CLI process
   (Python start and gRPC import included).
3. ``RemoveMember`` of a follower: the call's duration, i.e. until the
   change has committed and applied on the leader.
4. ``RemoveMember`` of the leader itself: leadership transfer (TimeoutNow),
   then the removal by the new leader, until it has committed.

Uses the integration harness (tests.integration.cluster) with the product's
default tick (15 ms). A benchmark, not a test: figures depend on the
machine; compare runs on one machine only.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from sidecar.pb.raftsidecar.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.cluster import Cluster, Sidecar, eventually


def answering(admin: admin_pb2_grpc.AdminServiceStub) -> None:
    """Connect, and wait out a Raft election (UNAVAILABLE) before measuring."""

    def lists() -> bool | None:
        try:
            admin.ListMembers(admin_pb2.ListMembersRequest(), timeout=10)
        except grpc.RpcError:
            return None
        return True

    eventually(lists, "the admin service to answer", seconds=60)


def list_latencies(node: Sidecar, calls: int) -> list[float]:
    samples = []
    with grpc.insecure_channel(f"unix:{node.admin_socket}") as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        answering(admin)
        for _ in range(calls):
            started = time.monotonic()
            admin.ListMembers(admin_pb2.ListMembersRequest(), timeout=10)
            samples.append(time.monotonic() - started)
    return samples


def timed_remove(node: Sidecar, name: str) -> tuple[float, admin_pb2.RemoveMemberResponse]:
    with grpc.insecure_channel(f"unix:{node.admin_socket}") as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        answering(admin)
        started = time.monotonic()
        answer = admin.RemoveMember(admin_pb2.RemoveMemberRequest(name=name), timeout=60)
        return time.monotonic() - started, answer


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-members-", dir="/var/tmp"))
    try:
        cluster = Cluster(root, size=4, tick_ms=15)
        cluster.start_all()
        try:
            leader = cluster.leader()
            follower, victim, last = (n for n in cluster.nodes if n is not leader)
            for who, node in (("leader", leader), ("follower (forwarded)", follower)):
                samples = sorted(list_latencies(node, args.calls))
                p99 = samples[int(len(samples) * 0.99) - 1]
                print(
                    f"ListMembers via the {who}'s socket ({len(samples)} calls): "
                    f"p50 {ms(statistics.median(samples))}, p99 {ms(p99)}"
                )
            started = time.monotonic()
            result = follower.members("list")
            print(
                f"`raft-sidecar members list` (one CLI process, exit {result.returncode}): "
                f"{ms(time.monotonic() - started)}"
            )
            took, _ = timed_remove(follower, victim.node_id)
            print(f"RemoveMember of a follower, 4 -> 3 voters, until committed: {ms(took)}")
            took, answer = timed_remove(last, leader.node_id)
            print(
                f"RemoveMember of the leader, 3 -> 2 voters (transfer, then removal by "
                f"{answer.leader}), until committed: {ms(took)}"
            )
        finally:
            cluster.stop_all()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
