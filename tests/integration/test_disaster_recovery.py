"""Backup, restore and recovery from a lost quorum with real sidecar
processes: the rebuilt cluster holds every old grant and its first token is
above every token the old cluster issued and above the ledger's floor
(docs/membership.md, "Backup, restore and recovery").

Old clusters run under the default cluster id; the offline commands run as an
operator runs them (``python -m sidecar.cli``), on directories of processes
that were really stopped or killed."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import grpc

from sidecar.disaster.fresh import TOKEN_MARGIN
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.disaster.cli_process import run_cli
from tests.integration import worker_api
from tests.integration.cluster import Cluster, Sidecar, eventually

TTL_MS = 600_000
"""Long enough that no old grant expires while a test runs, even on a loaded machine."""
LONG_TTLS = ["--ttl-max-ms", str(TTL_MS)]


def cli(*args: str) -> str:
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def grant(node: Sidecar, election: str, candidate: str) -> int:
    return worker_api.campaign(
        node.stub(), election, candidate, ttl_ms=TTL_MS, timeout=30
    ).fencing_token


def holder_token(node: Sidecar, election: str) -> int | None:
    try:
        response = node.stub().Leader(worker_pb2.LeaderRequest(election=election), timeout=2)
    except grpc.RpcError:
        return None
    return int(response.holder.fencing_token) or None


def grants(node: Sidecar, election: str) -> list[tuple[int, str, int]]:
    """(token, holder, ended at index) of every grant in the audit trail."""
    response = node.stub().ListGrants(worker_pb2.ListGrantsRequest(election=election), timeout=5)
    return [(g.fencing_token, g.holder, g.ended_at_index) for g in response.grants]


def all_voters_caught_up(cluster: Cluster, size: int) -> bool | None:
    """Whether the current leader reports itself and ``size - 1`` others as
    caught-up voters (None to poll again)."""
    try:
        status = cluster.leader().status()
    except (grpc.RpcError, AssertionError):  # a leader change mid-poll
        return None
    peers = [p for p in status.peers if p.role == worker_pb2.PEER_ROLE_VOTER and p.caught_up]
    voter = status.member_role == worker_pb2.PEER_ROLE_VOTER
    return (voter and len(peers) == size - 1) or None


def new_cluster(root: Path, cluster_id: str) -> Cluster:
    root.mkdir()
    cluster = Cluster(root)
    cluster.extra_args = lambda _node: ["--cluster-id", cluster_id, *LONG_TTLS]
    return cluster


def _try(call: Any) -> Any:
    try:
        return call()
    except grpc.RpcError:
        return None


def test_restore_into_a_new_cluster_continues_above_every_old_token(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    old = Cluster(tmp_path / "old")
    old.extra_args = lambda _node: LONG_TTLS
    old.start_all()
    restored: Cluster | None = None
    intruder: Cluster | None = None
    try:
        leader = old.leader()
        first = worker_api.campaign(leader.stub(), "eur", "worker-a", ttl_ms=TTL_MS)
        eur_first = first.fencing_token
        worker_api.resign(leader.stub(), "eur", first.lease_key)
        eur = grant(leader, "eur", "worker-b")
        usd_grant = worker_api.campaign(leader.stub(), "usd", "worker-c", ttl_ms=TTL_MS)
        usd = usd_grant.fencing_token
        old_eur_trail = eventually(lambda: grants(leader, "eur") or None, "the eur trail")
        assert [t for t, _, _ in old_eur_trail] == [eur_first, eur]
        old.stop_all()  # SIGTERM: an orderly stop; no keep-alive, so the grants stay

        backup = tmp_path / "backup.rsbk"
        saved = cli("snapshot", "save", "--data-dir", str(leader.data_dir), str(backup))
        assert f"highest token {usd}" in saved
        min_token = usd + 1000  # the ledger's fence table saw a higher token since
        restored = new_cluster(tmp_path / "new", "restored")
        seed = restored.nodes[0]
        cli(
            "snapshot", "restore", str(backup), "--data-dir", str(seed.data_dir),
            "--cluster-id", "restored", "--node-id", seed.node_id,
            "--min-token", str(min_token),
        )  # fmt: skip
        restored.start_all()  # the other two start with empty directories and join
        eventually(
            lambda: all_voters_caught_up(restored, 3),
            "both empty nodes to be admitted and promoted",
            seconds=60,
        )
        new_leader = restored.leader()  # any node would do: followers forward
        for node in restored.nodes:
            eventually(
                lambda n=node: (
                    (holder_token(n, "eur"), holder_token(n, "usd")) == (eur, usd) or None
                ),
                f"{node.node_id} to hold the restored grants",
            )
            assert grants(node, "eur") == old_eur_trail, "the audit trail is the backup's"
        token = grant(new_leader, "jpy", "worker-d")
        assert token > min_token + TOKEN_MARGIN > min_token > usd > eur > eur_first
        # The backup's holder still owns its grant: its lease key works here.
        worker_api.resign(new_leader.stub(), "usd", usd_grant.lease_key)
        eventually(lambda: holder_token(new_leader, "usd") is None or None, "usd to be free")
        assert grant(new_leader, "usd", "worker-e") > token

        # A node of the old cluster, restarted by mistake against the new
        # cluster's addresses, is refused: it is of another cluster.
        intruder = Cluster(tmp_path / "old")
        stray = intruder.nodes[1]
        peers = {n.node_id: f"127.0.0.1:{n.peer_port}" for n in restored.nodes}
        peers[stray.node_id] = f"127.0.0.1:{stray.peer_port}"
        intruder.peers_of = lambda _node: ",".join(f"{k}={v}" for k, v in sorted(peers.items()))
        intruder.start(stray)
        contacted = [n for n in restored.nodes if n.node_id != stray.node_id]
        refusal = "cluster_id 'raft-sidecar' is not this node's cluster 'restored'"
        eventually(
            lambda: all(refusal in n.log_path.read_text() for n in contacted) or None,
            "the nodes it contacts to refuse it",
        )
        assert _try(lambda: grant(stray, "eur", "worker-x")) is None, "no quorum for it"
        # The membership is unchanged (caught-up may lag a commit for a heartbeat).
        eventually(lambda: all_voters_caught_up(restored, 3), "the three voters, caught up")
        statuses = [n.status() for n in restored.nodes]
        servers = {n.node_id: n.server_id() for n in restored.nodes}
        for status in statuses:
            assert {p.id: f"{p.id}~{p.incarnation}" for p in status.peers}.items() <= (
                servers.items()
            ), "only the new cluster's servers are members"
    except BaseException:
        for c in (old, restored, intruder):
            if c is not None:
                print(c.logs())
        raise
    finally:
        for c in (old, restored, intruder):
            if c is not None:
                c.stop_all()


def test_recovery_from_one_survivor_keeps_the_grants_and_issues_higher_tokens(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path)
    cluster.extra_args = lambda _node: LONG_TTLS
    cluster.start_all()
    try:
        leader = cluster.leader()
        eur = grant(leader, "eur", "worker-a")
        usd = grant(leader, "usd", "worker-b")
        survivor = next(n for n in cluster.nodes if n is not leader)
        eventually(
            lambda: holder_token(survivor, "usd") == usd or None, "the survivor to apply the grants"
        )
        for node in cluster.nodes:  # the quorum is lost: two nodes and their disks are gone
            cluster.kill(node, signal.SIGKILL)
            if node is not survivor:
                shutil.rmtree(node.data_dir)

        min_token = usd + 500
        out = cli(
            "recover", "--data-dir", str(survivor.data_dir),
            "--new-cluster-id", "rebuilt", "--min-token", str(min_token),
        )  # fmt: skip
        assert "pre-recovery-" in out
        cluster.extra_args = lambda _node: ["--cluster-id", "rebuilt", *LONG_TTLS]
        cluster.start_all()
        eventually(lambda: all_voters_caught_up(cluster, 3), "two empty nodes to join", seconds=60)
        leader = cluster.leader()
        for node in cluster.nodes:
            eventually(
                lambda n=node: (
                    (holder_token(n, "eur"), holder_token(n, "usd")) == (eur, usd) or None
                ),
                f"{node.node_id} to hold the survivor's grants",
            )
        token = grant(leader, "jpy", "worker-c")
        assert token > min_token + TOKEN_MARGIN
        # The rebuilt cluster tolerates a failure again: without the survivor,
        # the two nodes that joined empty elect a leader and grant.
        cluster.kill(survivor, signal.SIGKILL)
        others = [n for n in cluster.nodes if n is not survivor]
        later = eventually(
            lambda: _try(lambda: grant(cluster.leader(others), "chf", "worker-d")),
            "a grant without the survivor",
            seconds=60,
        )
        assert later > token
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()
