"""A rolling restart with SIGTERM, one sidecar at a time, while a worker leads.

Restarting the other sidecars (the Raft leader among them, which hands Raft
leadership over first) must not cost the worker its lease or change its
token. Restarting the worker's own pod ends its keep-alive stream, so the
grant is revoked at once and the next worker is granted far sooner than a
TTL: a rolling restart costs far less than one TTL of no holder.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import timedelta

from sidecar.client import SidecarClient
from tests.integration.cluster import Cluster, eventually

TTL = timedelta(seconds=3)


def test_rolling_restart_keeps_the_lease_and_hands_over_fast(cluster: Cluster) -> None:
    home, *others = cluster.nodes

    async def main() -> None:
        async with (
            SidecarClient(home.api) as client,
            client.leadership("rolling", candidate_id="worker-a", ttl=TTL) as lease,
        ):
            token = lease.fencing_token
            for node in others:  # every other pod, one at a time
                code = await asyncio.to_thread(cluster.kill, node, signal.SIGTERM)
                assert code == 0, f"{node.node_id} exited {code} on SIGTERM"
                await asyncio.to_thread(cluster.start, node)
                await asyncio.to_thread(eventually, lambda n=node: n.answers(), "restarted")
                await asyncio.to_thread(cluster.leader)
            assert not lease.lost.is_set(), lease.lost_reason
            lease.check()
            assert lease.fencing_token == token

            # The worker's own pod restarts: its successor on another pod
            # is granted long before a TTL passes.
            async with SidecarClient(others[0].api) as successor_client:
                successor = asyncio.create_task(_lead_once(successor_client, "worker-b", token))
                await asyncio.sleep(0.5)  # worker-b queued behind worker-a
                stopped_at = time.monotonic()
                await asyncio.to_thread(cluster.kill, home, signal.SIGTERM)
                granted_after_s = await asyncio.wait_for(successor, 10) - stopped_at
                assert granted_after_s < TTL.total_seconds() / 2, granted_after_s

    asyncio.run(main())


async def _lead_once(client: SidecarClient, candidate: str, previous_token: int) -> float:
    async with client.leadership("rolling", candidate_id=candidate, ttl=TTL) as lease:
        assert lease.fencing_token > previous_token
        return time.monotonic()
