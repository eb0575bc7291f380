"""Membership figures of real sidecar processes: ``python -m bench.membership``.

1. A wiped follower: SIGKILL a follower, delete its data directory, start it
   again; time from the restart until the Raft leader's Status shows that
   node as a caught-up voter under its new incarnation (remove the old
   incarnation, add the new one as a learner, promote it).
2. Scale 3 to 5: start two new sidecars whose --peers list all five; time
   until the leader reports five voters, both new ones caught up.

Uses the integration harness (tests.integration.cluster) with the product's
default tick (15 ms; election timeout 150-300 ms). A benchmark, not a test:
figures depend on the machine; compare runs on one machine only.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.integration.cluster import Cluster, Sidecar, eventually


def caught_up_voters(leader: Sidecar) -> dict[str, str]:
    """Name -> incarnation of every caught-up voter, as the leader sees them."""
    status = leader.status()
    voters = {
        p.id: p.incarnation
        for p in status.peers
        if p.role == worker_pb2.PEER_ROLE_VOTER and p.caught_up
    }
    voters[status.node_id] = status.incarnation
    return voters


def wiped_follower(cluster: Cluster, trials: int) -> list[float]:
    samples = []
    for _ in range(trials):
        leader = cluster.leader()
        victim = next(n for n in cluster.nodes if n is not leader)
        cluster.kill(victim, signal.SIGKILL)
        shutil.rmtree(victim.data_dir)
        started = time.monotonic()
        cluster.start(victim)
        eventually(victim.answers, "the wiped node to serve", seconds=60)

        def replaced(v: Sidecar = victim) -> bool | None:
            try:
                leader = cluster.leader()
                return caught_up_voters(leader).get(v.node_id) == v.incarnation() or None
            except Exception:  # a leader change mid-poll: poll again
                return None

        eventually(replaced, "the new incarnation to be a caught-up voter", seconds=120)
        samples.append(time.monotonic() - started)
    return samples


def scale_three_to_five(root: Path) -> float:
    cluster = Cluster(root, size=5, tick_ms=15)
    old, new = cluster.nodes[:3], cluster.nodes[3:]
    three = ",".join(f"{n.node_id}=127.0.0.1:{n.peer_port}" for n in old)
    cluster.peers_of = lambda node: three if node in old else cluster.peers
    try:
        for node in old:
            cluster.start(node)
        for node in old:
            eventually(node.answers, f"{node.node_id} to serve", seconds=60)
        cluster.leader(old)
        started = time.monotonic()
        for node in new:
            cluster.start(node)
        names = {n.node_id for n in cluster.nodes}
        eventually(
            lambda: set(caught_up_voters(cluster.leader(old))) == names or None,
            "five caught-up voters",
            seconds=120,
        )
        return time.monotonic() - started
    finally:
        cluster.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-membership-", dir="/var/tmp"))
    try:
        (root / "wipe").mkdir()
        (root / "scale").mkdir()
        cluster = Cluster(root / "wipe", tick_ms=15)
        cluster.start_all()
        try:
            samples = wiped_follower(cluster, args.trials)
        finally:
            cluster.stop_all()
        print(
            f"wiped follower to caught-up voter ({len(samples)} trials): "
            f"p50 {statistics.median(samples) * 1000:.0f} ms, "
            f"max {max(samples) * 1000:.0f} ms"
        )
        scale = scale_three_to_five(root / "scale")
        print(f"scale 3 -> 5, new sidecars started to five caught-up voters: {scale * 1000:.0f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
