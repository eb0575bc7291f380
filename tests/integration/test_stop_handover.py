"""A sidecar that stops hands its worker's election over only once the
worker stopped believing it holds it (docs/worker-api.md, "When the
sidecar stops"; sidecar/api/keepalive.py).

Real sidecars, real signals. The first test's worker is ``SidecarClient``
in this process, so the moment its lease is lost (a lost callback) and the
moment the next candidate's Campaign answers are read on one clock: the
two beliefs must not overlap. The second test's worker is a process
stopped with SIGSTOP: it cannot confirm, so its grant must run out on the
Raft leader's clock, after the worker's own safe deadline. The third's
client half-closed its stream just before the stop: it never saw the
notice, so its grant must outlive the stopped sidecar.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from sidecar.client import Lease, SidecarClient
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.integration.cluster import Cluster, Sidecar, eventually
from tests.integration.worker_api import Granted, campaign, resign, unary_retrying

ELECTION = "stop-handover"
TTL = timedelta(seconds=2)


def _grant_record(node: Sidecar, token: int) -> worker_pb2.GrantRecord:
    request = worker_pb2.ListGrantsRequest(election=ELECTION)
    grants = node.stub().ListGrants(request, timeout=5).grants
    return next(g for g in grants if g.fencing_token == token)


def _campaign_in_thread(node: Sidecar, candidate: str) -> tuple[threading.Event, dict[str, object]]:
    """Campaign through ``node`` on a thread; the dict gets the grant and the
    moment its Campaign answered (time.monotonic())."""
    queued = threading.Event()
    out: dict[str, object] = {}

    def run() -> None:
        granted = campaign(
            node.stub(),
            ELECTION,
            candidate,
            ttl_ms=int(TTL.total_seconds() * 1000),
            timeout=30,
            on_queued=lambda _position: queued.set(),
        )
        out["granted_at"] = time.monotonic()
        out["grant"] = granted

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    out["thread"] = thread
    return queued, out


@pytest.mark.parametrize("stopped", ["follower", "raft-leader"])
def test_the_worker_stops_believing_before_the_next_candidate_is_granted(
    cluster: Cluster, stopped: str
) -> None:
    leader = cluster.leader()
    followers = [n for n in cluster.nodes if n is not leader]
    home = leader if stopped == "raft-leader" else followers[0]  # the worker's own sidecar
    other = next(n for n in followers if n is not home)

    async def main() -> None:
        async with (
            SidecarClient(home.api) as client,
            client.leadership(ELECTION, candidate_id="worker-a", ttl=TTL) as lease,
        ):
            lost_at: list[float] = []
            lease._lost_callbacks.append(lambda _reason: lost_at.append(time.monotonic()))
            queued, second = _campaign_in_thread(other, "worker-b")
            assert await asyncio.to_thread(queued.wait, 20), "worker-b never queued"

            assert await asyncio.to_thread(cluster.kill, home, signal.SIGTERM) == 0
            await _await_handover(second, lease)
            grant = second["grant"]
            assert isinstance(grant, Granted)
            assert grant.fencing_token > lease.fencing_token
            # REVOKED when the client's end of the stream reached the sidecar
            # within its 2 s bound (the usual case; the contract test pins it
            # with stubs); EXPIRED when a loaded machine delayed it past the
            # bound, which is the safe fallback.
            _assert_told_first_and_ended(other, lease, lost_at, second)

    asyncio.run(main())


def test_a_worker_that_cannot_confirm_keeps_its_grant_until_it_expires(
    cluster: Cluster, tmp_path: Path
) -> None:
    leader = cluster.leader()
    home, other = [n for n in cluster.nodes if n is not leader]
    beliefs = tmp_path / "worker-a.jsonl"
    with beliefs.open("wb") as out:
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "tests.integration.holder",
                home.api, ELECTION, "worker-a", str(int(TTL.total_seconds() * 1000)),
            ],
            stdout=out,
        )  # fmt: skip
    try:

        def events() -> list[dict[str, object]]:
            lines = beliefs.read_text().splitlines()
            return [json.loads(line) for line in lines if line.endswith("}")]

        eventually(lambda: any(e["event"] == "renewed" for e in events()) or None, "a renewal")
        worker.send_signal(signal.SIGSTOP)  # paused while it holds the election
        believed = [e for e in events() if e["event"] in ("granted", "renewed")]
        assert not any(e["event"] == "lost" for e in events())
        deadline = max(float(str(e["deadline"])) for e in believed)
        token = int(str(next(e["token"] for e in believed if e["event"] == "granted")))

        queued, second = _campaign_in_thread(other, "worker-b")
        assert queued.wait(20), "worker-b never queued"
        assert cluster.kill(home, signal.SIGTERM) == 0
        thread = second["thread"]
        assert isinstance(thread, threading.Thread)
        thread.join(30)

        granted_at = second["granted_at"]
        assert isinstance(granted_at, float)
        assert granted_at > deadline, "granted while the paused worker still believed it held"
        record = _grant_record(other, token)
        assert record.end_reason == worker_pb2.GRANT_END_REASON_EXPIRED, record
        assert "lease_left_to_expire" in home.log_path.read_text()
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.kill()
        worker.wait(10)


def test_a_stream_half_closed_before_the_notice_does_not_confirm(cluster: Cluster) -> None:
    """A client that ended its stream on purpose (its own deadline, a
    half-close) still believes it holds: the lease waits for a re-attach, so
    the stop neither saw the worker stop nor revokes; the grant outlives the
    stopped sidecar."""
    leader = cluster.leader()
    home = next(n for n in cluster.nodes if n is not leader)
    granted = campaign(home.stub(), ELECTION, "worker-a", ttl_ms=20_000)
    renew = worker_pb2.KeepAliveRequest(
        election=ELECTION,
        fencing_token=granted.fencing_token,
        lease_key=granted.lease_key,
        sequence=1,
    )
    answers = list(home.stub().KeepAlive(iter([renew]), timeout=10))  # then half-closed
    assert [a.ttl_ms for a in answers] == [20_000], answers

    assert cluster.kill(home, signal.SIGTERM) == 0  # within the 5 s re-attach window
    check = worker_pb2.ValidateTokenRequest(election=ELECTION, fencing_token=granted.fencing_token)
    assert unary_retrying(leader.stub().ValidateToken, check).valid, "revoked under its worker"
    assert "lease_left_to_expire" in home.log_path.read_text()
    resign(leader.stub(), ELECTION, granted.lease_key)


def test_a_removed_members_stop_tells_its_worker_first(cluster: Cluster) -> None:
    """``members remove`` of the holder's sidecar: it learns it was removed
    and stops by the same path as on SIGTERM (exit 1): its worker is told
    at once, before the next candidate is granted."""
    leader = cluster.leader()
    home, other = [n for n in cluster.nodes if n is not leader]

    async def main() -> None:
        async with (
            SidecarClient(home.api) as client,
            client.leadership(ELECTION, candidate_id="worker-a", ttl=TTL) as lease,
        ):
            lost_at: list[float] = []
            lease._lost_callbacks.append(lambda _reason: lost_at.append(time.monotonic()))
            queued, second = _campaign_in_thread(other, "worker-b")
            assert await asyncio.to_thread(queued.wait, 20), "worker-b never queued"

            removed = await asyncio.to_thread(leader.members, "remove", home.node_id)
            assert removed.returncode == 0, removed.stderr
            assert home.process is not None
            assert await asyncio.to_thread(home.process.wait, 60) == 1
            home.process = None
            await _await_handover(second, lease)
            # A removed server knows no leader to carry its Revoke, so the
            # grant usually runs out on the leader's clock instead: later,
            # never sooner, than the worker was told.
            _assert_told_first_and_ended(other, lease, lost_at, second)

    asyncio.run(main())


async def _await_handover(second: dict[str, object], lease: Lease) -> None:
    """Wait for the second candidate's Campaign thread and for the first lease's loss."""
    thread = second["thread"]
    assert isinstance(thread, threading.Thread)
    await asyncio.to_thread(thread.join, 30)
    await asyncio.wait_for(lease.lost.wait(), 10)


def _assert_told_first_and_ended(
    other: Sidecar, lease: Lease, lost_at: list[float], second: dict[str, object]
) -> None:
    """The stopped sidecar's worker stopped believing before the next grant, because
    the sidecar told it so, and its grant then ended (REVOKED or EXPIRED): never
    two believers at once."""
    granted_at = second["granted_at"]
    assert isinstance(granted_at, float)
    assert lost_at[0] < granted_at, "two workers believed they held the election at once"
    assert lease.lost_reason is not None and "sidecar is stopping" in lease.lost_reason
    record = _grant_record(other, lease.fencing_token)
    assert record.end_reason in (
        worker_pb2.GRANT_END_REASON_REVOKED,
        worker_pb2.GRANT_END_REASON_EXPIRED,
    ), record
