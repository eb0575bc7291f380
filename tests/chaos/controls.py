"""Negative controls: which defect, how it is planted, and the faults that make it show.

A random schedule may take many minutes to hit the one interleaving a
defect needs; the controls run in the short CI budget, so each has a
targeted schedule built from the nemesis's own faults (and recorded the
same way). Each repeats its scenario a few times: one catch is enough, and
the checkers say which property broke.

* ``fencing-off`` (worker ``--fencing false``): the holder stops at the
  pause-before-write point until another worker holds, then writes its
  chunk: accepted, below the new holder's fence.
* ``amnesia-guard-off`` (sidecars through ``tests.chaos.planted``): grants
  committed by the leader and one follower while the third is down; then
  leader and follower die, the follower loses its disk and comes back under
  its old server id next to the third: two of three, neither has the grants,
  and the one that forgot its promises votes. The new leader hands out tokens
  that go backwards (the same scenario with the guard on waits for a node that
  has the log: ``test_disk_loss.py``).
* ``stale-leader-renewal`` (sidecars, with the ``disk-hold`` fault): the
  holder's own sidecar is the Raft leader; its disk stops answering a write
  of log entries (a proposal made through it to start one), so its Raft loop
  stalls while its API, on the event loop, still serves keep-alives. The
  others hear no heartbeat, elect a leader that expires the lease and grants
  it to another worker, while the stalled leader, without the read barrier,
  still acknowledges its worker's keep-alives with a full TTL: it never
  learns it lost the leadership, so no timing of the followers' answers
  hides it. (A SIGSTOP stall does not show it: the tick loop catches up at
  SIGCONT and CheckQuorum steps the leader down before it answers anything.
  Nor, once followers answer heartbeats only when asked, does cutting the
  leader off: it steps down before the others grant anew.)
* ``no-margin`` (workers through ``tests.chaos.planted``; sidecars with
  ``fast-lease-clock``, the fault, not the defect): the lease keeper's clock
  runs 8% fast, so the leader expires a lease 8% early; the holder's node is
  cut off so its keep-alives stop, and the holder, without its margin,
  still believes after the next worker's grant.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc  # type: ignore[import-untyped]

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.chaos.faults import Nemesis, poll
from tests.chaos.harness import Timings
from tests.chaos.nemesis import Step
from tests.chaos.planted import HOLD_FILE
from tests.integration import worker_api
from tests.integration.cluster import Sidecar

STALLED = "s2"
"""The leader whose disk stops answering (``stale-leader-renewal``): the
highest name, since a leader stopped by SIGTERM hands over to the caught-up
peer with the highest id, which is how the scenario makes it lead."""
STALL_PROBE_ELECTION = "chaos-disk-hold"
"""The election of the proposal that starts the held write (no worker's)."""


@dataclass(frozen=True, slots=True)
class Control:
    defect: str
    wrap_sidecars: tuple[str, ...] = ()
    wrap_workers: tuple[str, ...] = ()
    worker_args: tuple[str, ...] = ()
    node_flags: dict[str, tuple[str, ...]] | None = None
    timings: Timings = field(default_factory=Timings)


CONTROLS: dict[str, Control] = {
    "fencing-off": Control("fencing-off", worker_args=("--fencing", "false")),
    "amnesia-guard-off": Control("amnesia-guard-off", wrap_sidecars=("amnesia-guard-off",)),
    "stale-leader-renewal": Control(
        "stale-leader-renewal",
        wrap_sidecars=("stale-leader-renewal", "disk-hold"),
        timings=Timings(ttl_ms=4000),
    ),
    "no-margin": Control(
        "no-margin", wrap_sidecars=("fast-lease-clock",), wrap_workers=("no-margin",)
    ),
}
ROUNDS = 3


def run_control(defect: str, nemesis: Nemesis, until: float) -> None:
    """Play the targeted schedule of ``defect`` until done or ``until`` (monotonic)."""
    scenario: dict[str, Callable[[Nemesis, float], None]] = {
        "fencing-off": _fencing_off,
        "amnesia-guard-off": _amnesia,
        "stale-leader-renewal": _stale_leader,
        "no-margin": _no_margin,
    }
    scenario[defect](nemesis, until)


def _ttl_s(nemesis: Nemesis) -> float:
    return nemesis.system.timings.ttl_ms / 1000


def _fencing_off(nemesis: Nemesis, until: float) -> None:
    for _ in range(ROUNDS):
        if time.monotonic() >= until:
            return
        node = poll(nemesis.holder_node, 20.0)
        if node is None:
            continue
        step = Step(0.0, "pause_worker_at_write", "holder", 4 * _ttl_s(nemesis))
        nemesis.pause_worker_at_write(step, node)
        time.sleep(1.0)


def _holder_where(nemesis: Nemesis, wanted: Callable[[Sidecar, Sidecar], bool]) -> Sidecar | None:
    """Kill holders (restarting them) until the holder's node and the Raft
    leader satisfy ``wanted(holder node, leader)``; that node, or None."""
    system = nemesis.system
    for _ in range(8):
        node, leader = poll(nemesis.holder_node, 15.0), system.raft_leader()
        if node is None or leader is None:
            continue
        if wanted(node, leader):
            return node
        w = nemesis.worker_on(node)
        held = system.holder()
        killed = w.worker_id
        nemesis.start("kill_worker", [killed], "SIGKILL: the next holder may sit elsewhere")
        system.kill_worker(w, signal.SIGKILL)
        poll(lambda held=held: ((h := system.holder()) is not None and h != held) or None, 10.0)
        system.start_worker(w)
        nemesis.end("kill_worker", [killed], f"restarted as {w.worker_id}")
    return None


def _stale_leader(nemesis: Nemesis, until: float) -> None:
    system, ttl = nemesis.system, _ttl_s(nemesis)
    stalled = next(n for n in system.nodes if n.node_id == STALLED)
    hold = stalled.data_dir / HOLD_FILE
    for _ in range(ROUNDS):
        if time.monotonic() >= until:
            return
        if not _leading(nemesis, stalled, until):
            continue
        node = _holder_where(nemesis, lambda holder, leader: holder is stalled)
        if node is None or system.raft_leader() is not stalled:
            continue
        nemesis.start(
            "disk_stall", [STALLED], "log writes hang: the Raft loop stalls, the API serves"
        )
        hold.touch()
        try:
            _propose_through(stalled)  # the write that hangs
            time.sleep(ttl + 2.0)  # the others elect, expire the lease and grant it
        finally:
            hold.unlink(missing_ok=True)
        nemesis.end("disk_stall", [STALLED], "the disk answers again")
        time.sleep(1.0)


def _propose_through(node: Sidecar) -> None:
    """A Campaign through ``node`` that appends an entry; its answer does not
    matter (it waits for the held write, so it runs out of time)."""
    request = worker_pb2.CampaignRequest(
        election=STALL_PROBE_ELECTION,
        candidate_id="nemesis",
        ttl_ms=1000,
        lease_key=worker_api.new_key(),
    )
    with contextlib.suppress(grpc.RpcError):
        for _ in node.stub().Campaign(request, timeout=0.5):
            pass


def _leading(nemesis: Nemesis, node: Sidecar, until: float) -> bool:
    """SIGTERM (and restart) the Raft leader until ``node`` leads: a leader
    stopped by SIGTERM hands over to its caught-up peer with the highest id."""
    system = nemesis.system
    for _ in range(6):
        if time.monotonic() >= until:
            return False
        leader = poll(system.raft_leader, 10.0)
        if leader is node:
            return True
        if leader is None:
            continue
        nemesis.start("transfer", [leader.node_id], f"SIGTERM: hand over to {node.node_id}")
        system.stop_sidecar(leader, signal.SIGTERM)
        system.start_sidecar(leader)
        nemesis.end("transfer", [leader.node_id], "restarted")
    return system.raft_leader() is node


def _no_margin(nemesis: Nemesis, until: float) -> None:
    system, ttl = nemesis.system, _ttl_s(nemesis)
    lab = system.lab
    assert lab is not None
    everyone = [n.node_id for n in system.nodes]
    nemesis.start("clock_drift", everyone, "lease keeper clock 8% fast (tests.chaos.planted)")
    for _ in range(ROUNDS + 1):
        if time.monotonic() >= until:
            break
        node = _holder_where(nemesis, lambda holder, leader: holder is not leader)
        if node is None:
            continue
        nemesis.start("partition", [node.node_id], "isolate fastfail (the holder's node)")
        lab.isolate(node.node_id, "fastfail")
        time.sleep(2 * ttl)
        lab.heal()
        nemesis.end("partition", [node.node_id], "healed")
        time.sleep(1.0)
    nemesis.end("clock_drift", everyone, "")


def _amnesia(nemesis: Nemesis, until: float) -> None:
    system = nemesis.system
    if not nemesis.whole("amnesia scenario") or poll(nemesis.holder_node, 20.0) is None:
        return
    leader = system.raft_leader()
    if leader is None:
        return
    behind, forgetful = [n for n in system.nodes if n is not leader][:2]
    nemesis.start("kill_sidecar", [behind.node_id], "SIGKILL: it misses the next grants")
    system.stop_sidecar(behind, signal.SIGKILL)
    for _ in range(3):  # handovers committed by the leader and `forgetful` only
        held = poll(system.holder, 10.0)
        if held is None:
            break
        w = system.worker_of(held[0])
        if w is None:
            break
        nemesis.start("kill_worker", [w.worker_id], "SIGKILL: a new grant follows")
        system.kill_worker(w, signal.SIGKILL)
        poll(lambda t=held[1]: ((h := system.holder()) is not None and h[1] > t) or None, 10.0)
        system.start_worker(w)
        nemesis.end("kill_worker", [held[0]], f"restarted as {w.worker_id}")
    nemesis.start("kill_sidecar", [leader.node_id, forgetful.node_id], "SIGKILL both")
    system.stop_sidecar(leader, signal.SIGKILL)
    system.stop_sidecar(forgetful, signal.SIGKILL)
    nemesis.start("disk_loss", [forgetful.node_id], "data directory wiped")
    system.wipe(forgetful)
    system.start_sidecar(behind)
    system.start_sidecar(forgetful)
    nemesis.end("disk_loss", [forgetful.node_id], "restarted next to the node that missed grants")
    nemesis.end("kill_sidecar", [behind.node_id], "restarted (it missed the grants)")
    poll(system.holder, max(0.0, min(20.0, until - time.monotonic())))
    time.sleep(2.0)
    system.start_sidecar(leader)
    nemesis.end("kill_sidecar", [leader.node_id, forgetful.node_id], "the old leader is back")
