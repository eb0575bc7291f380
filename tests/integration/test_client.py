"""``sidecar.client`` against three real sidecar processes on loopback.

Async tests run their body with ``asyncio.run`` (no pytest-asyncio). The
tests that only campaign and resign share one cluster, each with its own
election; the tests that kill sidecars get a fresh cluster.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sidecar.client import (
    BlockingSidecarClient,
    InvalidRequest,
    KeyMismatch,
    LeaseLost,
    NotFound,
    SidecarClient,
)
from tests.integration.cluster import Cluster, Sidecar, running

TTL = timedelta(seconds=1)
MARGIN_S = 0.1  # default_margin_s(1 s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Shared by the tests that leave every sidecar running."""
    yield from running(tmp_path_factory.mktemp("shared"))


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """For the tests that kill sidecars."""
    yield from running(tmp_path)


@pytest.fixture
def proxied_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Sidecars configured as for a proxy between worker and sidecar: a
    broken KeepAlive stream keeps its leases for a re-attach grace."""
    yield from running(tmp_path, extra_args=lambda node: ["--keepalive-grace-ms", "1000"])


def follower(cluster: Cluster) -> Sidecar:
    """A node that is not the Raft leader: the worker's own sidecar."""
    leader = cluster.leader()
    return next(n for n in cluster.nodes if n is not leader)


def test_keep_alive_holds_the_lease_beyond_its_ttl(cluster: Cluster) -> None:
    home = follower(cluster)

    async def main() -> None:
        async with (
            SidecarClient(home.api) as client,
            client.leadership("client-hold", candidate_id="worker-a", ttl=TTL) as lease,
        ):
            assert lease.fencing_token > 0 and not lease.lost.is_set()
            await asyncio.sleep(2.5 * TTL.total_seconds())
            assert not lease.lost.is_set(), lease.lost_reason
            lease.check()
            assert 0 < lease.remaining() <= TTL.total_seconds() - MARGIN_S
            assert lease.acknowledged >= 5
            assert await client.validate("client-hold", lease.fencing_token)
            holder = await client.leader("client-hold")
            assert holder is not None and holder.candidate_id == "worker-a"
            token = lease.fencing_token
        # Leaving the block resigned: nobody holds the election any more.
        async with SidecarClient(home.api) as client:
            assert not await client.validate("client-hold", token)
            assert await client.leader("client-hold") is None
        assert lease.lost.is_set() and lease.remaining() == 0
        with pytest.raises(LeaseLost):
            lease.check()

    asyncio.run(main())


def test_second_candidate_waits_until_the_first_leaves(cluster: Cluster) -> None:
    election = "client-handover"
    leader = cluster.leader()
    first_home, second_home = leader, follower(cluster)

    async def main() -> None:
        granted = asyncio.Event()
        tokens: dict[str, int] = {}

        async def second() -> None:
            async with (
                SidecarClient(second_home.api) as client,
                client.leadership(election, candidate_id="worker-b", ttl=TTL) as lease,
            ):
                # Queued for longer than a TTL: the lease is handed out only
                # after a fresh keep-alive acknowledgement.
                assert not lease.lost.is_set()
                assert lease.remaining() > 0.5
                tokens["b"] = lease.fencing_token
                granted.set()
                await asyncio.sleep(0.3)
                lease.check()

        async with (
            SidecarClient(first_home.api) as client,
            client.leadership(election, candidate_id="worker-a", ttl=TTL) as lease,
        ):
            tokens["a"] = lease.fencing_token
            waiter = asyncio.create_task(second())
            await asyncio.sleep(1.5)
            assert not granted.is_set(), "granted while worker-a holds"
            assert not lease.lost.is_set(), lease.lost_reason
        await asyncio.wait_for(granted.wait(), 5)
        await asyncio.wait_for(waiter, 5)
        assert tokens["b"] > tokens["a"]

    asyncio.run(main())


def test_blocking_wrapper_grants_and_resigns(cluster: Cluster) -> None:
    election = "client-blocking"
    home = follower(cluster)
    with BlockingSidecarClient(home.api) as client:
        with client.leadership(election, candidate_id="thread-worker", ttl=TTL) as lease:
            assert lease.fencing_token > 0
            assert not lease.lost.wait(1.5), lease.lost_reason
            lease.check()
            assert 0 < lease.remaining() <= TTL.total_seconds() - MARGIN_S
            assert client.validate(election, lease.fencing_token)
            holder = client.leader(election)
            assert holder is not None and holder.fencing_token == lease.fencing_token
        assert lease.lost.is_set() and lease.remaining() == 0
        assert not client.validate(election, lease.fencing_token)
        assert client.leader(election) is None
        assert client.status().node_id == home.node_id
        with (
            pytest.raises(InvalidRequest),
            client.leadership("", candidate_id="thread-worker", ttl=TTL),
        ):
            pytest.fail("granted an empty election")
    assert not any(t.name == "sidecar-client" for t in threading.enumerate())


def test_bad_input_raises_typed_errors_at_once(cluster: Cluster) -> None:
    home = follower(cluster)

    async def main() -> None:
        async with SidecarClient(home.api) as client:
            started = time.monotonic()
            with pytest.raises(InvalidRequest) as err:
                async with client.leadership("", candidate_id="w", ttl=TTL):
                    pytest.fail("granted an empty election")
            assert "election" in err.value.details and err.value.code == "INVALID_ARGUMENT"
            with pytest.raises(InvalidRequest) as err:  # below the sidecar's --ttl-min-ms
                async with client.leadership("client-bad", candidate_id="w", ttl=0.3, margin=0.05):
                    pass
            assert "ttl_ms" in err.value.details and err.value.code == "INVALID_ARGUMENT"
            with pytest.raises(InvalidRequest):  # checked locally
                async with client.leadership("client-bad", candidate_id="w", ttl=1, margin=2):
                    pass
            with pytest.raises(NotFound) as missing:
                await client.resign("client-no-such-election", client.lease_key("x", "w"), 7)
            assert missing.value.reason == "LEASE_NOT_FOUND"
            assert time.monotonic() - started < 1.0, "bad input must not be retried"
            async with client.leadership("client-bad", candidate_id="w", ttl=TTL) as lease:
                with pytest.raises(KeyMismatch) as wrong:  # the token is public, the key is not
                    await client.resign("client-bad", "k" * 32, lease.fencing_token)
                assert wrong.value.reason == "LEASE_KEY_MISMATCH"
                with pytest.raises(KeyMismatch) as taken:  # another process, same candidate id
                    async with (
                        SidecarClient(home.api) as other,
                        other.leadership("client-bad", candidate_id="w", ttl=TTL),
                    ):
                        pytest.fail("granted a candidate id held under another key")
                assert taken.value.reason == "CANDIDATE_ID_IN_USE"
                assert not lease.lost.is_set()

    asyncio.run(main())


def test_killing_the_home_sidecar_loses_the_lease_at_once(fresh_cluster: Cluster) -> None:
    home = follower(fresh_cluster)

    async def main() -> None:
        async with (
            SidecarClient(home.api) as client,
            client.leadership("client-kill", candidate_id="worker-a", ttl=TTL) as lease,
        ):
            await asyncio.sleep(0.6)
            assert lease.acknowledged >= 2
            killed_at = time.monotonic()
            await asyncio.to_thread(fresh_cluster.kill, home, signal.SIGKILL)
            await asyncio.wait_for(lease.lost.wait(), TTL.total_seconds() + 1)
            assert time.monotonic() - killed_at <= TTL.total_seconds() + 1
            assert lease.remaining() == 0
            with pytest.raises(LeaseLost):
                lease.check()
            # Once lost, the lease stays lost.
            await asyncio.sleep(0.3)
            assert lease.remaining() == 0 and lease.lost.is_set()

    asyncio.run(main())


def test_unanswered_keep_alives_lose_the_lease_at_the_safe_deadline(
    fresh_cluster: Cluster,
) -> None:
    """The home sidecar lives but reaches no Raft leader: keep-alives go
    unanswered, and the lease is lost when the safe deadline passes, not
    before and not much later."""
    home = follower(fresh_cluster)
    others = [n for n in fresh_cluster.nodes if n is not home]

    async def main() -> None:
        async with (
            SidecarClient(home.api) as client,
            client.leadership("client-quorum", candidate_id="worker-a", ttl=TTL) as lease,
        ):
            await asyncio.sleep(0.6)
            for node in others:
                await asyncio.to_thread(fresh_cluster.kill, node, signal.SIGKILL)
            # Every acknowledgement from now on can only move it later.
            deadline = lease.deadline
            await asyncio.wait_for(lease.lost.wait(), TTL.total_seconds() + 1)
            lost_at = time.monotonic()
            assert lost_at >= deadline, "lost before the safe deadline"
            assert lost_at - deadline < 0.5 + TTL.total_seconds(), "lost far too late"
            assert "deadline" in (lease.lost_reason or ""), lease.lost_reason
            assert lease.remaining() == 0

    asyncio.run(main())
    assert home.process is not None and home.process.poll() is None, "home sidecar still runs"


def test_a_queued_candidate_learns_its_position_and_a_closed_stream_is_reattached(
    proxied_cluster: Cluster,
) -> None:
    """The Campaign stream reports queue positions; a KeepAlive stream that
    breaks (here: cancelled under the client's feet, as a proxy's idle timeout
    would) is re-opened with the same key within the sidecar's configured
    grace, and the same token stays current."""
    election = "client-reattach"
    home = follower(proxied_cluster)

    async def main() -> None:
        async with SidecarClient(home.api) as client:
            async with client.leadership(election, candidate_id="holder", ttl=TTL) as lease:
                positions: list[int] = []
                queued = asyncio.Event()

                def on_queued(position: int) -> None:
                    positions.append(position)
                    queued.set()

                async def wait() -> int:
                    async with (
                        SidecarClient(home.api) as other,
                        other.leadership(
                            election, candidate_id="waiter", ttl=TTL, on_queued=on_queued
                        ) as second,
                    ):
                        return second.fencing_token

                waiter = asyncio.create_task(wait())
                await asyncio.wait_for(queued.wait(), 5)
                assert positions == [1]
                for _ in range(3):
                    acknowledged = lease.acknowledged
                    assert lease._stream is not None
                    lease._stream.cancel()  # the stream dies; the lease must not
                    while lease.acknowledged <= acknowledged:
                        await asyncio.sleep(0.05)
                        lease.check()
                assert lease.reattached >= 3
                await asyncio.sleep(TTL.total_seconds())
                lease.check()
                assert await client.validate(election, lease.fencing_token)
                token = lease.fencing_token
            assert await asyncio.wait_for(waiter, 10) > token

    asyncio.run(main())


def test_the_client_logs_through_stdlib_logging_never_the_key(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    home = follower(cluster)
    caplog.set_level(logging.DEBUG, logger="raftsidecar.client")

    async def main() -> str:
        async with (
            SidecarClient(home.api) as client,
            client.leadership("client-logs", candidate_id="w", ttl=TTL) as lease,
        ):
            assert "key" not in repr(lease).lower()
            return client.lease_key("client-logs", "w")

    key = asyncio.run(main())
    events = [r.getMessage() for r in caplog.records if r.name == "raftsidecar.client"]
    assert any(e.startswith("lease_granted") for e in events), events
    assert all(key not in e for e in events)
    out = capsys.readouterr()
    assert "lease_granted" not in out.out, "nothing on the application's stdout"
