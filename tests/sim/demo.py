"""A 3-node Raft cluster in the simulator, told as a story (``make demo``).

Stands in for the settlement demo until the sidecar runtime exists: it shows
an election, replication, a leader crash, a failover, a restart from disk and
the logs converging, all deterministic from one seed.
"""

from __future__ import annotations

import argparse
import dataclasses

from sidecar.raft import RaftError, Role
from tests.sim.cluster import SimNode, Simulation
from tests.sim.swarm import SwarmSettings


def _calm_settings(seed: int) -> SwarmSettings:
    drawn = SwarmSettings.draw(seed)
    quiet = {f.name: 0.0 for f in dataclasses.fields(SwarmSettings) if f.name.startswith("p_")}
    return dataclasses.replace(
        drawn,
        voters=3,
        spares=0,
        election_timeout_ticks=10,
        heartbeat_ticks=1,
        max_entries_per_append=64,
        max_inflight_appends=8,
        clock_skew=0.1,
        delay_min=1,
        delay_max=8,
        loss=0.0,
        duplication=0.0,
        eager_reconfig=False,
        **quiet,
    )


def _leader(sim: Simulation) -> SimNode | None:
    leaders = [n for n in sim.nodes.values() if n.raft is not None and n.raft.role is Role.LEADER]
    return leaders[0] if leaders else None


def _run_until(sim: Simulation, done: object, limit: int = 20_000) -> None:
    for _ in range(limit):
        if callable(done) and done():
            return
        sim.step()
    raise SystemExit("demo: the cluster did not get there in time (this is a bug)")


def _show(sim: Simulation) -> None:
    for node_id in sorted(sim.nodes):
        n = sim.nodes[node_id]
        if n.raft is None:
            print(f"    {node_id}: down (disk holds {n.disk.last_index()} entries)")
        else:
            r = n.raft
            print(
                f"    {node_id}: {r.role.value:<9} term {r.term:<3} "
                f"log {r.log.last_index:<3} commit {r.commit_index:<3} applied {n.sm_index}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    seed = parser.parse_args().seed
    sim = Simulation(seed, settings=_calm_settings(seed))
    sim.faults_enabled = False
    print(f"raft-sidecar core demo: 3 nodes in the deterministic simulator, seed {seed}\n")

    _run_until(sim, lambda: _leader(sim) is not None)
    leader = _leader(sim)
    assert leader is not None and leader.raft is not None
    print(f"1. {leader.id} won the election for term {leader.raft.term} at t={sim.now}")

    for i in range(5):
        leader.raft.propose(b"settle-batch-%d" % i)
        sim.drain(leader)
    target = leader.raft.log.last_index
    _run_until(sim, lambda: all(n.sm_index >= target for n in sim.nodes.values()))
    print(f"2. five commands committed and applied on every node by t={sim.now}")
    _show(sim)

    crashed = leader
    sim.crash(crashed)
    print(f"\n3. {crashed.id} (the leader) crashes at t={sim.now}")
    _run_until(sim, lambda: _leader(sim) is not None)
    leader = _leader(sim)
    assert leader is not None and leader.raft is not None
    print(f"4. {leader.id} takes over in term {leader.raft.term} at t={sim.now}")
    try:
        leader.raft.propose(b"settle-batch-after-failover")
        sim.drain(leader)
    except RaftError as exc:
        print(f"   proposal refused: {exc}")

    sim.start(crashed)
    print(f"5. {crashed.id} restarts from its disk at t={sim.now} and catches up")
    target = leader.raft.log.last_index
    _run_until(sim, lambda: all(n.sm_index >= target for n in sim.nodes.values()))
    _show(sim)
    digests = {n.sm_digest for n in sim.nodes.values()}
    same = "identical" if len(digests) == 1 else "DIFFERENT"
    print(f"\nState machines on all three nodes are {same}; every safety checker held.")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
