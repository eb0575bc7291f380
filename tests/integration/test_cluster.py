"""Three real sidecar processes on loopback: elections, grants, handover,
fencing tokens across failover and full restarts, and bad input."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
from typing import Any

import grpc
import pytest

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.integration.cluster import Cluster, eventually

ELECTION = "settlement-eur"


def campaign(stub: Any, candidate: str, timeout: float = 10, ttl_ms: int = 5000) -> Any:
    request = worker_pb2.CampaignRequest(election=ELECTION, candidate_id=candidate, ttl_ms=ttl_ms)
    return stub.Campaign(request, timeout=timeout).token


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_grant_handover_failover_and_restart(cluster: Cluster) -> None:
    leader = cluster.leader()
    stub = leader.stub()
    first = campaign(stub, "worker-a")
    assert first.fencing_token > 0 and first.candidate_id == "worker-a"
    assert campaign(stub, "worker-a").fencing_token == first.fencing_token, "idempotent"

    # worker-b queues behind worker-a and is granted, in FIFO order, on resign.
    granted: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: granted.update(b=campaign(stub, "worker-b", 20)))
    waiter.start()
    eventually(lambda: waiter.is_alive() or None, "worker-b waiting")
    stub.Resign(
        worker_pb2.ResignRequest(election=ELECTION, fencing_token=first.fencing_token), timeout=5
    )
    waiter.join(20)
    second = granted["b"]
    assert second.candidate_id == "worker-b"
    assert second.fencing_token > first.fencing_token

    valid = stub.ValidateToken(
        worker_pb2.ValidateTokenRequest(election=ELECTION, fencing_token=second.fencing_token),
        timeout=5,
    )
    stale = stub.ValidateToken(
        worker_pb2.ValidateTokenRequest(election=ELECTION, fencing_token=first.fencing_token),
        timeout=5,
    )
    assert valid.valid and not stale.valid and stale.current_token == second.fencing_token

    # The Raft leader dies: a new one takes over and the holder keeps its token.
    assert cluster.kill(leader, signal.SIGKILL) == -signal.SIGKILL
    survivors = [n for n in cluster.nodes if n.process is not None]
    new_leader = cluster.leader(survivors)
    assert new_leader is not leader
    holder = eventually(
        lambda: (
            new_leader.stub()
            .Leader(worker_pb2.LeaderRequest(election=ELECTION), timeout=2)
            .holder.fencing_token
            or None
        ),
        "the holder on the new leader",
    )
    assert holder == second.fencing_token

    # Full-cluster restart: tokens keep increasing.
    cluster.stop_all()
    cluster.start_all()
    restarted = cluster.leader()
    rstub = restarted.stub()
    rstub.Resign(
        worker_pb2.ResignRequest(election=ELECTION, fencing_token=second.fencing_token), timeout=5
    )
    third = campaign(rstub, "worker-c")
    assert third.fencing_token > second.fencing_token


def test_bad_input_gets_clear_status_codes(cluster: Cluster) -> None:
    leader = cluster.leader()
    stub = leader.stub()
    code, details = code_of(lambda: campaign(stub, "", timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "candidate" in details
    code, details = code_of(
        lambda: stub.Campaign(
            worker_pb2.CampaignRequest(election="x" * 200, candidate_id="w", ttl_ms=5000),
            timeout=5,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "election" in details
    code, details = code_of(lambda: campaign(stub, "w", timeout=5, ttl_ms=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ttl_ms" in details
    code, details = code_of(
        lambda: stub.Resign(
            worker_pb2.ResignRequest(election="no-such-election", fencing_token=7), timeout=5
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND, details
    token = campaign(stub, "holder").fencing_token
    code, details = code_of(
        lambda: stub.Resign(
            worker_pb2.ResignRequest(election=ELECTION, fencing_token=token + 1000), timeout=5
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    code, _ = code_of(lambda: campaign(stub, "late", timeout=0.5))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # Nothing above changed the holder.
    holder = stub.Leader(worker_pb2.LeaderRequest(election=ELECTION), timeout=2).holder
    assert holder.fencing_token == token


def test_any_sidecar_serves_any_call(cluster: Cluster) -> None:
    """Followers forward writes and read barriers to the Raft leader."""
    leader = cluster.leader()
    first, second = (n for n in cluster.nodes if n is not leader)
    token = campaign(first.stub(), "worker-on-follower")
    assert token.candidate_id == "worker-on-follower"
    code, details = code_of(
        lambda: second.stub().Resign(
            worker_pb2.ResignRequest(election=ELECTION, fencing_token=token.fencing_token + 7),
            timeout=5,
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    check = worker_pb2.ValidateTokenRequest(election=ELECTION, fencing_token=token.fencing_token)
    assert second.stub().ValidateToken(check, timeout=5).valid
    second.stub().Resign(
        worker_pb2.ResignRequest(election=ELECTION, fencing_token=token.fencing_token), timeout=5
    )
    assert not first.stub().ValidateToken(check, timeout=5).valid
    nobody = first.stub().Leader(worker_pb2.LeaderRequest(election=ELECTION), timeout=5)
    assert not nobody.HasField("holder")


def test_sigterm_exits_cleanly_and_hands_over_leadership(cluster: Cluster) -> None:
    leader = cluster.leader()
    assert cluster.kill(leader, signal.SIGTERM) == 0
    survivors = [n for n in cluster.nodes if n.process is not None]
    assert cluster.leader(survivors) is not leader


def test_invalid_settings_exit_2_with_every_problem() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "serve", "--node-id", "zz", "--peers", "a=h:1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--data-dir" in result.stderr and "is not one of --peers" in result.stderr
    assert "Traceback" not in result.stderr


def keep_alive_requests(token: Any, stop: threading.Event, every_s: float) -> Any:
    sequence = 0
    while not stop.is_set():
        sequence += 1
        yield worker_pb2.KeepAliveRequest(
            election=ELECTION, fencing_token=token.fencing_token, sequence=sequence
        )
        stop.wait(every_s)


def test_keep_alive_holds_the_lease_and_its_end_revokes_at_once(cluster: Cluster) -> None:
    leader = cluster.leader()
    home = next(n for n in cluster.nodes if n is not leader)  # the worker's own sidecar
    token = campaign(home.stub(), "worker-a", ttl_ms=1000)
    stop = threading.Event()
    stream = home.stub().KeepAlive(keep_alive_requests(token, stop, 0.2), timeout=30)
    answers = []
    for answer in stream:  # 2.5 TTLs of keep-alives: the lease holds
        answers.append(answer)
        if len(answers) >= 12:
            break
    assert all(a.remaining_ttl_ms == 1000 for a in answers)
    check = worker_pb2.ValidateTokenRequest(election=ELECTION, fencing_token=token.fencing_token)
    assert home.stub().ValidateToken(check, timeout=5).valid

    # worker-b queues; worker-a's stream breaks (the worker died): revoked at
    # once, well before its TTL, and worker-b gets a larger token.
    granted: dict[str, Any] = {}
    waiter = threading.Thread(
        target=lambda: granted.update(b=campaign(leader.stub(), "worker-b", 20, ttl_ms=1000))
    )
    waiter.start()
    eventually(lambda: waiter.is_alive() or None, "worker-b queued")
    stream.cancel()
    stop.set()
    waiter.join(20)
    assert granted["b"].fencing_token > token.fencing_token
    audit = leader.stub().ListGrants(worker_pb2.ListGrantsRequest(election=ELECTION), timeout=5)
    assert audit.grants[0].end_reason == worker_pb2.GRANT_END_REASON_REVOKED


def test_lease_without_keep_alive_expires_on_the_leaders_clock(cluster: Cluster) -> None:
    leader = cluster.leader()
    token = campaign(leader.stub(), "silent-worker", ttl_ms=1000)
    successor = campaign(leader.stub(), "next-worker", timeout=15, ttl_ms=1000)
    assert successor.fencing_token > token.fencing_token
    audit = leader.stub().ListGrants(worker_pb2.ListGrantsRequest(election=ELECTION), timeout=5)
    assert audit.grants[0].end_reason == worker_pb2.GRANT_END_REASON_EXPIRED
    ended_after_ms = audit.grants[0].ended_at_unix_ms - audit.grants[0].granted_at_unix_ms
    assert ended_after_ms >= 1000, "never before the TTL"


def test_raft_leader_loss_does_not_end_a_kept_lease(cluster: Cluster) -> None:
    leader = cluster.leader()
    home = next(n for n in cluster.nodes if n is not leader)
    token = campaign(home.stub(), "steady-worker", ttl_ms=2000)
    stop = threading.Event()
    stream = home.stub().KeepAlive(keep_alive_requests(token, stop, 0.2), timeout=60)
    received: list[Any] = []

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end of the test
            received.extend(stream)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    eventually(lambda: len(received) >= 2 or None, "keep-alives answered")
    cluster.kill(leader, signal.SIGKILL)
    survivors = [n for n in cluster.nodes if n.process is not None]
    new_leader = cluster.leader(survivors)
    count = len(received)
    eventually(lambda: len(received) >= count + 5 or None, "keep-alives through the new leader")
    check = worker_pb2.ValidateTokenRequest(election=ELECTION, fencing_token=token.fencing_token)
    assert new_leader.stub().ValidateToken(check, timeout=5).valid, "same token after failover"
    stop.set()
    stream.cancel()
