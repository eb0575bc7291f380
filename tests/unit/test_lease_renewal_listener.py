"""``Lease.add_renewal_listener``: told (sent_at, new deadline) exactly when a
keep-alive acknowledgement extends the safe deadline, and never otherwise."""

from __future__ import annotations

import asyncio

from sidecar.client import Lease
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2


def test_a_listener_hears_every_extension_and_nothing_else() -> None:
    heard: list[tuple[float, float]] = []

    async def scenario() -> None:
        token = worker_pb2.LeadershipToken(election="e", candidate_id="w", fencing_token=3)
        lease = Lease(token, lease_key="k", ttl_s=2.0, margin_s=0.2, first_sent_at=None)
        lease._deadline = 0.0  # as if granted long ago: any renewal extends it
        lease.add_renewal_listener(lambda sent_at, deadline: heard.append((sent_at, deadline)))
        lease._sent_at.update({1: 1e9, 2: 1e9 + 1, 3: 1e9 + 2, 4: 1e9 - 5})
        ack = worker_pb2.KeepAliveResponse
        lease._acknowledge(ack(election="e", sequence=1, ttl_ms=2000, safety_margin_ms=100))
        lease._acknowledge(ack(election="e", sequence=2, ttl_ms=0))  # not renewed
        lease._acknowledge(ack(election="e", sequence=3, ttl_ms=2000, safety_margin_ms=500))
        lease._sent_at[4] = 1e9 - 5
        lease._acknowledge(ack(election="e", sequence=4, ttl_ms=2000))  # earlier: no extension
        lease._lose("test over", expected=True)

    asyncio.run(scenario())
    assert heard == [(1e9, 1e9 + 1.8), (1e9 + 2, 1e9 + 3.5)]
