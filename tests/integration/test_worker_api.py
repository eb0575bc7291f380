"""The worker API's queue, stream and secrecy rules, over real sockets with the
generated stubs only: ghosts are withdrawn, positions are reported, one
election's error leaves the others on a shared KeepAlive stream alone, and
the lease key never reaches a log file or /metrics."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.integration import worker_api
from tests.integration.cluster import Cluster


def test_a_campaign_that_goes_away_is_withdrawn_and_the_next_live_one_granted(
    cluster: Cluster,
) -> None:
    election = "ghosts"
    leader = cluster.leader()
    stub = leader.stub()
    holder = worker_api.campaign(stub, election, "holder")
    # Two ghosts: one gives up at its deadline, one is cancelled by its caller.
    with pytest.raises(grpc.RpcError) as late:
        worker_api.campaign(stub, election, "ghost-deadline", timeout=0.5)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    ghost = stub.Campaign(
        worker_pb2.CampaignRequest(
            election=election,
            candidate_id="ghost-cancel",
            ttl_ms=5000,
            lease_key=worker_api.new_key(),
        ),
        timeout=30,
    )
    assert next(ghost).queued.position >= 1
    ghost.cancel()

    positions: list[int] = []
    queued = threading.Event()
    granted: list[worker_api.Granted] = []

    def live() -> None:
        granted.append(
            worker_api.campaign(
                stub,
                election,
                "live",
                timeout=30,
                on_queued=lambda p: (positions.append(p), queued.set()),
            )
        )

    waiter = threading.Thread(target=live)
    waiter.start()
    assert queued.wait(10)
    # The ghosts are gone from the queue: the live candidate is next in line.
    deadline = time.monotonic() + 10
    while positions[-1] != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert positions[-1] == 1, positions
    worker_api.resign(stub, election, holder.lease_key, holder.fencing_token)
    waiter.join(10)
    assert granted and granted[0].candidate_id == "live"
    audit = stub.ListGrants(worker_pb2.ListGrantsRequest(election=election), timeout=5)
    assert [g.holder for g in audit.grants] == ["holder", "live"], "no ghost was ever granted"


def test_one_elections_error_does_not_end_another_on_the_same_stream(cluster: Cluster) -> None:
    home = next(n for n in cluster.nodes if n is not cluster.leader())
    stub = home.stub()
    good = worker_api.campaign(stub, "shared-a", "w", ttl_ms=1000)
    ended = worker_api.campaign(stub, "shared-b", "w", ttl_ms=1000)
    worker_api.resign(stub, "shared-b", ended.lease_key, ended.fencing_token)
    answers: list[Any] = []
    stop = threading.Event()

    def requests() -> Any:
        sequence = 0
        while not stop.is_set():
            for granted, election in ((good, "shared-a"), (ended, "shared-b")):
                sequence += 1
                yield worker_pb2.KeepAliveRequest(
                    election=election,
                    fencing_token=granted.fencing_token,
                    lease_key=granted.lease_key,
                    sequence=sequence,
                )
            yield worker_pb2.KeepAliveRequest(  # a repeated sequence: refused, ignored
                election="shared-a",
                fencing_token=good.fencing_token,
                lease_key=good.lease_key,
                sequence=sequence,
            )
            stop.wait(0.2)

    stream = stub.KeepAlive(requests(), timeout=30)
    for answer in stream:
        answers.append(answer)
        if len(answers) >= 3 * 8:  # 8 rounds: well beyond the 1 s TTL
            break
    # Still current while its stream lives (a broken stream revokes at once).
    check = worker_pb2.ValidateTokenRequest(election="shared-a", fencing_token=good.fencing_token)
    assert worker_api.unary_retrying(stub.ValidateToken, check).valid
    stop.set()
    stream.cancel()
    by_election: dict[str, list[Any]] = {"shared-a": [], "shared-b": []}
    for answer in answers:
        by_election[answer.election].append(answer)
    renewed = [a for a in by_election["shared-a"] if not a.HasField("error")]
    repeated = [a for a in by_election["shared-a"] if a.HasField("error")]
    assert len(renewed) == 8 and all(a.ttl_ms == 1000 for a in renewed)
    assert all(a.error.reason == "INVALID_FIELD" for a in repeated)
    assert all(a.error.metadata["field"] == "sequence" for a in repeated)
    assert all(a.error.reason == "LEASE_ENDED" for a in by_election["shared-b"])


def test_the_lease_key_never_reaches_a_log_or_metrics(cluster: Cluster) -> None:
    leader = cluster.leader()
    home = next(n for n in cluster.nodes if n is not leader)
    key = worker_api.new_key()
    granted = worker_api.campaign(home.stub(), "secret", "w", ttl_ms=1000, lease_key=key)
    assert granted.lease_key == key
    stop = threading.Event()
    stream = home.stub().KeepAlive(
        worker_api.keep_alive_requests("secret", granted.fencing_token, key, stop, 0.1),
        timeout=10,
    )
    next(stream)
    # Resign answers once applied everywhere it matters: every line about the
    # grant (campaign, keep-alive, resign) is written before we read the logs.
    # (Resign before the stream ends: a broken stream revokes at once.)
    worker_api.resign(home.stub(), "secret", key, granted.fencing_token)
    stop.set()
    stream.cancel()
    for node in cluster.nodes:
        assert key not in node.metrics()
        assert key not in node.log_path.read_text(errors="replace")
