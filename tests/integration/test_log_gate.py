"""Nothing undecodable enters the log, and nothing undecodable in it stops a
replica: real sidecar processes, called on the peer port by a process that is
not a peer, and started on data directories with a planted entry."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.elections import Campaign, Expire, encode_command, lease_key_digest
from sidecar.pb.raftsidecar.peer.v1 import peer_pb2, peer_pb2_grpc
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from sidecar.raft import Entry, HardState
from sidecar.storage.disk import DiskStorage
from sidecar.storage.identity import IdentityStore
from tests.integration import worker_api
from tests.integration.cluster import Cluster, Sidecar, eventually

PLANTED = b"\xffPLANTED-NOT-A-COMMAND\x00"


def propose_on_peer_port(node: Sidecar, command: bytes) -> Any:
    with grpc.insecure_channel(f"127.0.0.1:{node.peer_port}") as channel:
        stub = peer_pb2_grpc.RaftPeerServiceStub(channel)
        request = peer_pb2.ProposeRequest(
            cluster_id="raft-sidecar",
            from_node="intruder",
            to_node=node.server_id(),
            command=command,
        )
        return stub.Propose(request, timeout=5)


def grant(node: Sidecar, candidate: str) -> Any:
    return worker_api.campaign(node.stub(), "settlement-eur", candidate).token


def undecodable_count(node: Sidecar) -> float:
    found = re.search(r"^raft_sidecar_undecodable_entries_total (\S+)$", node.metrics(), re.M)
    assert found, "the counter exists from the start"
    return float(found.group(1))


BAD_COMMANDS = {
    "not json": PLANTED,
    "unknown type": b'{"type":"seize","v":2}',
    "newer version": b'{"type":"campaign","v":3}',
    "older version": b'{"type":"campaign","v":1}',
    "expire from a peer": encode_command(
        Expire(election="settlement-eur", token=1, proposed_at_unix_ms=0)
    ),
    "ttl of a day": encode_command(
        Campaign(
            election="settlement-eur",
            candidate="x",
            ttl_ms=86_400_000,
            key_digest=lease_key_digest("x" * 22),
            proposed_at_unix_ms=0,
        )
    ),
}


def test_the_leader_refuses_invalid_commands_from_the_peer_port(cluster: Cluster) -> None:
    leader = cluster.leader()
    before = leader.status().commit_index
    for name, command in BAD_COMMANDS.items():
        with pytest.raises(grpc.RpcError) as err:
            propose_on_peer_port(leader, command)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        details = err.value.details()
        assert "\n" not in details and "<class" not in details and "Traceback" not in details
    assert leader.status().commit_index == before, "nothing entered the log"
    # The cluster is whole and grants through any node.
    for node in cluster.nodes:
        assert node.process is not None and node.process.poll() is None
    token = grant(cluster.nodes[0], "worker-a")
    assert token.fencing_token > before
    assert all(undecodable_count(n) == 0 for n in cluster.nodes)


def plant(cluster: Cluster) -> None:
    """A committed entry at index 1 that no build of ours wrote, on every
    node of a cluster whose bootstrap was decided with all three."""
    stores = [IdentityStore(str(n.data_dir)) for n in cluster.nodes]
    identities = [
        store.load_or_create(cluster="raft-sidecar", node=n.node_id)[0]
        for store, n in zip(stores, cluster.nodes, strict=True)
    ]
    voters = tuple(i.server_id for i in identities)
    for store, identity, node in zip(stores, identities, cluster.nodes, strict=True):
        store.decide(identity, voters)
        storage = DiskStorage(str(node.data_dir))
        try:
            storage.recover()
            storage.persist(
                HardState(term=1, voted_for=None, commit=1), None, [Entry(1, 1, data=PLANTED)]
            )
        finally:
            storage.close()


def test_a_committed_undecodable_entry_is_skipped_alike_and_never_crash_loops(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path)
    plant(cluster)
    cluster.start_all()
    try:
        leader = cluster.leader()
        first = grant(leader, "worker-a")
        assert first.fencing_token > 1, "the planted index is never a token"
        for node in cluster.nodes:
            eventually(lambda n=node: undecodable_count(n) == 1 or None, f"{node.node_id} skips")

        # A restart re-applies the committed log: it skips again and serves.
        victim = next(n for n in cluster.nodes if n is not leader)
        cluster.kill(victim, signal.SIGKILL)
        cluster.start(victim)
        eventually(victim.answers, "the restarted node to serve")
        eventually(lambda: undecodable_count(victim) == 1 or None, "the restarted node skips")
        holder = eventually(
            lambda: (
                victim.stub()
                .Leader(worker_pb2.LeaderRequest(election="settlement-eur"), timeout=5)
                .holder.fencing_token
                or None
            ),
            "the restarted node to see the holder",
        )
        assert holder == first.fencing_token, "replicas agree on the state"
        for node in cluster.nodes:
            assert node.process is not None and node.process.poll() is None
            log = node.log_path.read_text(errors="replace")
            assert "undecodable_entry_skipped" in log
            assert "PLANTED" not in log, "unvalidated bytes never reach a log line"
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()
