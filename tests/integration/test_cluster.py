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
from tests.integration import worker_api
from tests.integration.cluster import Cluster, Sidecar, eventually
from tests.integration.worker_api import Granted, error_info, resign

ELECTION = "settlement-eur"


def campaign(
    stub: Any, candidate: str, timeout: float = 10, ttl_ms: int = 5000, **options: Any
) -> Granted:
    return worker_api.campaign(stub, ELECTION, candidate, ttl_ms=ttl_ms, timeout=timeout, **options)


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def refusal(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The status code, ErrorInfo reason and metadata of a call that must fail."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    reason, metadata = error_info(err.value)
    return err.value.code(), reason, metadata


def test_grant_handover_failover_and_restart(cluster: Cluster) -> None:
    leader = cluster.leader()
    stub = leader.stub()
    first = campaign(stub, "worker-a")
    assert first.fencing_token > 0 and first.candidate_id == "worker-a"
    again = campaign(stub, "worker-a", lease_key=first.lease_key)
    assert again.fencing_token == first.fencing_token, "idempotent"

    # worker-b queues behind worker-a and is granted, in FIFO order, on resign.
    granted: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: granted.update(b=campaign(stub, "worker-b", 20)))
    waiter.start()
    eventually(lambda: waiter.is_alive() or None, "worker-b waiting")
    resign(stub, ELECTION, first.lease_key, first.fencing_token)
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
    resign(rstub, ELECTION, second.lease_key, second.fencing_token)
    third = campaign(rstub, "worker-c")
    assert third.fencing_token > second.fencing_token


def test_bad_input_gets_clear_status_codes(cluster: Cluster) -> None:
    leader = cluster.leader()
    stub = leader.stub()
    code, reason, meta = refusal(lambda: campaign(stub, "", timeout=5))
    assert (code, reason, meta) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        {"field": "candidate_id"},
    )
    code, details = code_of(
        lambda: worker_api.campaign(stub, "x" * 200, "w", timeout=5),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "election" in details
    code, reason, meta = refusal(lambda: campaign(stub, "w", timeout=5, ttl_ms=10))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TTL_OUT_OF_RANGE")
    assert meta == {"field": "ttl_ms", "min_ttl_ms": "500", "max_ttl_ms": "60000"}
    code, reason, meta = refusal(lambda: campaign(stub, "w", timeout=5, lease_key="short"))
    assert (code, reason, meta) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        {"field": "lease_key"},
    )
    code, reason, _ = refusal(lambda: resign(stub, "no-such-election", worker_api.new_key(), 7))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "LEASE_NOT_FOUND")
    holder = campaign(stub, "holder")
    token = holder.fencing_token
    code, reason, _ = refusal(lambda: resign(stub, ELECTION, holder.lease_key, token + 1000))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "LEASE_NOT_FOUND")
    code, _ = code_of(lambda: campaign(stub, "late", timeout=0.5))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # Nothing above changed the holder.
    current = stub.Leader(worker_pb2.LeaderRequest(election=ELECTION), timeout=2).holder
    assert current.fencing_token == token


def test_the_lease_key_not_the_public_token_proves_the_holder(cluster: Cluster) -> None:
    """Another worker knows the token (Leader shows it) but not the key: refused;
    the holder's own Resign with its key works, and a retry of it is idempotent."""
    leader = cluster.leader()
    home, other = (n for n in cluster.nodes if n is not leader)
    holder = campaign(home.stub(), "worker-a")

    def applied() -> Any:
        response = other.stub().Leader(worker_pb2.LeaderRequest(election=ELECTION), timeout=5)
        return response.holder if response.HasField("holder") else None

    public = eventually(applied, "the grant applied on the other follower")
    assert public.fencing_token == holder.fencing_token
    stolen_key = worker_api.new_key()

    # Campaign with the holder's candidate id but another key hands out nothing.
    code, reason, _ = refusal(lambda: campaign(other.stub(), "worker-a", timeout=5))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "CANDIDATE_ID_IN_USE")
    # Resign with the right token and a wrong key is refused.
    code, reason, _ = refusal(
        lambda: resign(other.stub(), ELECTION, stolen_key, public.fencing_token)
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "LEASE_KEY_MISMATCH")
    # KeepAlive with the right token and a wrong key: refused for that election.
    stop = threading.Event()
    answers = other.stub().KeepAlive(
        worker_api.keep_alive_requests(ELECTION, public.fencing_token, stolen_key, stop, 0.05),
        timeout=10,
    )
    answer = next(answers)
    assert answer.error.reason == "LEASE_KEY_MISMATCH" and answer.ttl_ms == 0
    assert answer.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    # ... and closing that stream revokes nothing.
    stop.set()
    answers.cancel()
    check = worker_pb2.ValidateTokenRequest(election=ELECTION, fencing_token=holder.fencing_token)
    assert home.stub().ValidateToken(check, timeout=5).valid

    # A never-granted token is NOT_FOUND, on KeepAlive as on Resign.
    stop = threading.Event()
    answers = home.stub().KeepAlive(
        worker_api.keep_alive_requests(ELECTION, 2**64 - 1, holder.lease_key, stop, 0.05),
        timeout=10,
    )
    answer = next(answers)
    assert answer.error.reason == "LEASE_NOT_FOUND"
    assert answer.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    stop.set()
    answers.cancel()

    # The holder's own calls work; a retried Resign answers the same index.
    first = resign(home.stub(), ELECTION, holder.lease_key, holder.fencing_token)
    assert first.outcome == worker_pb2.RESIGN_OUTCOME_RESIGNED and first.ended_at_index > 0
    retry = resign(other.stub(), ELECTION, holder.lease_key, holder.fencing_token)
    assert retry.outcome == worker_pb2.RESIGN_OUTCOME_ALREADY_RESIGNED
    assert retry.ended_at_index == first.ended_at_index
    assert not home.stub().ValidateToken(check, timeout=5).valid


def test_reads_of_an_election_nobody_campaigned_for_answer_ok_with_no_holder(
    cluster: Cluster,
) -> None:
    stub = cluster.leader().stub()
    nobody = "never-campaigned"
    assert not stub.Leader(worker_pb2.LeaderRequest(election=nobody), timeout=5).HasField("holder")
    check = worker_pb2.ValidateTokenRequest(election=nobody, fencing_token=7)
    assert stub.ValidateToken(check, timeout=5).current_token == 0
    grants = stub.ListGrants(worker_pb2.ListGrantsRequest(election=nobody), timeout=5)
    assert list(grants.grants) == [] and not grants.more
    first = next(stub.Observe(worker_pb2.ObserveRequest(election=nobody), timeout=5))
    assert first.change.fencing_token == 0 and first.change.holder == ""


def test_any_sidecar_serves_any_call(cluster: Cluster) -> None:
    """Followers forward writes and read barriers to the Raft leader."""
    leader = cluster.leader()
    first, second = (n for n in cluster.nodes if n is not leader)
    token = campaign(first.stub(), "worker-on-follower")
    assert token.candidate_id == "worker-on-follower"
    code, details = code_of(
        lambda: resign(second.stub(), ELECTION, token.lease_key, token.fencing_token + 7)
    )
    assert code == grpc.StatusCode.NOT_FOUND, details
    check = worker_pb2.ValidateTokenRequest(election=ELECTION, fencing_token=token.fencing_token)
    assert second.stub().ValidateToken(check, timeout=5).valid
    resign(second.stub(), ELECTION, token.lease_key, token.fencing_token)
    assert not first.stub().ValidateToken(check, timeout=5).valid
    nobody = first.stub().Leader(worker_pb2.LeaderRequest(election=ELECTION), timeout=5)
    assert not nobody.HasField("holder")


def test_status_lists_the_other_members(cluster: Cluster) -> None:
    def replicated() -> tuple[Sidecar, Any] | None:
        """A leader that has heard a match from every follower (just after an
        election it may not yet: match 0 until the first answer)."""
        leader = cluster.leader()
        status = leader.status()
        if status.role != worker_pb2.RAFT_ROLE_LEADER:
            return None  # lost the lead in between (a loaded machine)
        return (leader, status) if all(p.match_index > 0 for p in status.peers) else None

    leader, status = eventually(replicated, "the leader's match index for every follower")
    others = sorted(n.node_id for n in cluster.nodes if n is not leader)
    assert [p.id for p in status.peers] == others
    # Incarnations as the data directories record them; everyone a voter.
    by_name = {n.node_id: n for n in cluster.nodes}
    assert status.incarnation == leader.incarnation()
    assert status.member_role == worker_pb2.PEER_ROLE_VOTER
    for peer in status.peers:
        assert peer.incarnation == by_name[peer.id].incarnation()
        assert peer.role == worker_pb2.PEER_ROLE_VOTER
    # The CLI shows the same.
    shown = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "status", "--api", leader.api],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"incarnation {leader.incarnation()}, voter" in shown
    assert all(by_name[name].incarnation() in shown for name in others)


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


def keep_alive_requests(token: Granted, stop: threading.Event, every_s: float) -> Any:
    return worker_api.keep_alive_requests(
        ELECTION, token.fencing_token, token.lease_key, stop, every_s
    )


def test_keep_alive_holds_the_lease_and_its_end_revokes_after_the_grace(
    cluster: Cluster,
) -> None:
    leader = cluster.leader()
    home = next(n for n in cluster.nodes if n is not leader)  # the worker's own sidecar
    # A TTL of 2 s, not 1: on a loaded machine a 1 s lease could really run
    # out before its first keep-alive, which is the lease working, not failing.
    token = campaign(home.stub(), "worker-a", ttl_ms=2000)
    stop = threading.Event()
    stream = home.stub().KeepAlive(keep_alive_requests(token, stop, 0.2), timeout=30)
    answers = []
    for answer in stream:  # 2.5 TTLs of keep-alives: the lease holds
        answers.append(answer)
        if len(answers) >= 25:
            break
    # Each answer renews by the full TTL with the default margin, or (a
    # leader election under load) says NO_LEADER and renews nothing; none
    # may say the lease is gone.
    renewed = [a for a in answers if not a.HasField("error")]
    assert all(a.ttl_ms == 2000 and a.safety_margin_ms == 200 for a in renewed), answers
    assert all(a.error.reason == "NO_LEADER" for a in answers if a.HasField("error")), answers
    assert renewed, answers
    check = worker_pb2.ValidateTokenRequest(election=ELECTION, fencing_token=token.fencing_token)
    assert home.stub().ValidateToken(check, timeout=5).valid

    # worker-b queues; worker-a's stream breaks (the worker died): revoked
    # after the re-attach grace, well before its TTL, and worker-b gets a
    # larger token.
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


def test_a_new_leader_times_the_leases_it_inherits_with_nothing_written(
    cluster: Cluster,
) -> None:
    """The lease keeper of a follower sleeps (it has nothing to time); when it
    becomes the Raft leader, the turn that made it leader wakes it, so a lease
    nobody keeps alive still expires, though no entry is applied after the
    election (a new leader's no-op reaches no state machine)."""
    leader = cluster.leader()
    home = next(n for n in cluster.nodes if n is not leader)
    token = campaign(home.stub(), "silent-worker", ttl_ms=5000)
    cluster.kill(leader, signal.SIGKILL)
    survivors = [n for n in cluster.nodes if n.process is not None]
    new_leader = cluster.leader(survivors)
    request = worker_pb2.ListGrantsRequest(election=ELECTION)

    def ended() -> Any:
        with contextlib.suppress(grpc.RpcError):  # an election still going on
            for grant in new_leader.stub().ListGrants(request, timeout=5).grants:
                if grant.fencing_token == token.fencing_token and grant.ended_at_index:
                    return grant
        return None

    grant = eventually(ended, "the unkept lease expired on the new leader", seconds=60)
    assert grant.end_reason == worker_pb2.GRANT_END_REASON_EXPIRED


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
