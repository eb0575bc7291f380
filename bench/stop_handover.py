"""The handover of a stopping sidecar: ``python -m bench.stop_handover [--trials N]``.

Three real sidecars on loopback (the integration harness) at the product's
default tick. Each trial: worker A holds an election through ``SidecarClient``
on a follower's sidecar (TTL 2 s), worker B waits in Campaign on the other
follower, and A's sidecar gets SIGTERM. Printed per trial and as p50/max:

- SIGTERM -> B's Campaign answers: how long the election has no holder;
- A's lease lost -> B's grant: the gap between the two beliefs (positive:
  they never overlapped; docs/worker-api.md, "When the sidecar stops");
- SIGTERM -> A's sidecar exited.

The stopped sidecar is restarted before the next trial. A benchmark, not a
test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from sidecar.client import SidecarClient
from tests.integration.cluster import Cluster, Sidecar, eventually
from tests.integration.worker_api import campaign

TICK_MS = 15  # the product default (sidecar.config)
TTL_S = 2.0


async def trial(cluster: Cluster, election: str) -> tuple[float, float, float]:
    leader = cluster.leader()
    home, other = [n for n in cluster.nodes if n is not leader]
    queued = threading.Event()
    granted_at: list[float] = []

    def campaign_b() -> None:
        campaign(
            other.stub(), election, "worker-b", ttl_ms=int(TTL_S * 1000), timeout=30,
            on_queued=lambda _position: queued.set(),
        )  # fmt: skip
        granted_at.append(time.monotonic())

    async with (
        SidecarClient(home.api) as client,
        client.leadership(election, candidate_id="worker-a", ttl=TTL_S) as lease,
    ):
        lost_at: list[float] = []
        lease._lost_callbacks.append(lambda _reason: lost_at.append(time.monotonic()))
        waiter = threading.Thread(target=campaign_b, daemon=True)
        waiter.start()
        if not await asyncio.to_thread(queued.wait, 20):
            raise RuntimeError("worker-b never queued")
        stopped_at = time.monotonic()
        await asyncio.to_thread(_stop, cluster, home)
        exited_at = time.monotonic()
        await asyncio.to_thread(waiter.join, 30)
        await asyncio.wait_for(lease.lost.wait(), 10)
    if not granted_at or not lost_at:
        raise RuntimeError("worker-b was never granted")
    await asyncio.to_thread(_restart, cluster, home)
    return granted_at[0] - stopped_at, granted_at[0] - lost_at[0], exited_at - stopped_at


def _stop(cluster: Cluster, node: Sidecar) -> None:
    if cluster.kill(node, signal.SIGTERM) != 0:
        raise RuntimeError(f"{node.node_id} did not exit 0 on SIGTERM")


def _restart(cluster: Cluster, node: Sidecar) -> None:
    cluster.start(node)
    eventually(node.answers, f"{node.node_id} to serve again", seconds=60)
    cluster.leader()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sidecar-stop-bench-", dir="/var/tmp"))
    cluster = Cluster(root, size=3, tick_ms=TICK_MS)
    try:
        cluster.start_all()
        rows = [asyncio.run(trial(cluster, f"bench-stop-{i}")) for i in range(args.trials)]
    finally:
        cluster.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    print(f"stop handover: 3 nodes on loopback, tick {TICK_MS} ms, TTL {TTL_S:g} s")
    print(f"  {'trial':>5} {'SIGTERM->grant ms':>18} {'lost->grant ms':>15} {'exit ms':>8}")
    for i, (no_holder, gap, exit_s) in enumerate(rows):
        print(f"  {i:>5} {no_holder * 1000:>18.1f} {gap * 1000:>15.1f} {exit_s * 1000:>8.1f}")
    for index, name in enumerate(("SIGTERM->grant", "lost->grant", "exit")):
        ordered = sorted(row[index] for row in rows)
        print(
            f"  {name:<15} p50 {ordered[len(ordered) // 2] * 1000:7.1f} ms"
            f"  min {ordered[0] * 1000:7.1f} ms  max {ordered[-1] * 1000:7.1f} ms"
        )


if __name__ == "__main__":
    main()
