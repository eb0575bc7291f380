"""The nemesis's schedule: which fault, on what, when and for how long, from a seed.

Pure: ``schedule(seed, seconds, nodes)`` is a function of its arguments (one
``random.Random(seed)``, no clock, no I/O), so a seed replays the same
sequence of faults; the runner (``tests/chaos/runner.py``) resolves the
targets that depend on the moment ("the Raft leader", "the holder's node")
when it applies each step, and records every fault it applied in the
history.

Faults follow each other (one at a time, with a short gap), so each one's
effect can be told apart in the report; the first ``len(KINDS)`` steps are
every kind once, in a seeded order, so even a short run draws each kind, and
the rest are drawn with ``WEIGHTS``. Sidecar faults and partitions aim at the
Raft leader more often than at a follower (``LEADER_BIAS``): losing the
leader is what moves leases between Raft terms; and often at the holder's
node (``HOLDER_NODE_BIAS``), which moves the lease itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KINDS: tuple[str, ...] = (
    "kill_worker",
    "pause_worker",
    "pause_worker_at_write",
    "kill_sidecar",
    "pause_sidecar",
    "term_sidecar",
    "partition",
    "disk_loss",
    "disk_full",
    "member_remove",
    "member_replace",
    "transfer",
)
"""Every fault the nemesis applies (``docs/chaos.md``, "The nemesis")."""

WEIGHTS: dict[str, int] = {
    "kill_worker": 3,
    "pause_worker": 3,
    "pause_worker_at_write": 3,
    "kill_sidecar": 3,
    "pause_sidecar": 3,
    "term_sidecar": 2,
    "partition": 5,
    "disk_loss": 1,
    "disk_full": 1,
    "member_remove": 1,
    "member_replace": 1,
    "transfer": 2,
}
PARTITION_SHAPES: tuple[str, ...] = ("isolate", "majority", "bridge", "rolling", "one_way")
"""``bridge`` needs 5 nodes (with 3 it is drawn as ``majority``)."""
MODES: tuple[str, ...] = ("blackhole", "fastfail")
LEADER_BIAS = 0.5
"""Chance that a sidecar fault or a partition aims at the Raft leader's node."""
HOLDER_NODE_BIAS = 0.3
"""Chance that it aims at the holding worker's node (which moves the lease
itself); the rest goes to a follower."""
HOLDER_BIAS = 0.7
"""Chance that a worker fault aims at the holding worker rather than another."""
_SIDECAR_FAULTS = ("kill_sidecar", "pause_sidecar", "term_sidecar", "disk_full")
_WORKER_FAULTS = ("kill_worker", "pause_worker")
_DURATION_S: dict[str, tuple[float, float]] = {
    "kill_worker": (0.3, 2.0),  # down before the restart
    "pause_worker": (0.3, 3.0),  # SIGSTOP to SIGCONT
    "pause_worker_at_write": (2.0, 6.0),  # the most to wait for a takeover
    "kill_sidecar": (0.5, 3.0),
    "pause_sidecar": (0.3, 3.0),
    "term_sidecar": (0.5, 2.0),
    "partition": (1.0, 5.0),
    "disk_loss": (0.5, 2.0),
    "disk_full": (1.0, 4.0),
    "member_remove": (2.0, 5.0),
    "member_replace": (0.5, 2.0),
    "transfer": (0.0, 0.0),
}
GAP_S = (0.5, 2.0)
"""Quiet time between two faults (the cluster settles; writes go on)."""


@dataclass(frozen=True, slots=True)
class Step:
    """One fault to apply ``at_s`` seconds into the fault phase.

    ``target``: ``"leader"`` (the Raft leader's node), ``"holder"`` (the
    holding worker's node), ``"follower"``, or ``"node:<i>"``; ``pick`` is a
    seeded number for choices the runner makes at the time (which follower,
    which side of a partition), so those replay too.
    """

    at_s: float
    kind: str
    target: str
    duration_s: float
    mode: str = ""
    shape: str = ""
    pick: int = 0

    def describe(self) -> str:
        extra = "".join(f" {v}" for v in (self.shape, self.mode) if v)
        return f"{self.kind}{extra} on {self.target} for {self.duration_s:.2f}s"


def schedule(seed: int, seconds: float, nodes: int) -> list[Step]:
    """The faults of a fault phase of ``seconds`` on a cluster of ``nodes``.

    Raises ValueError for fewer than 3 nodes or a negative duration."""
    if nodes < 3:
        raise ValueError(f"the nemesis needs at least 3 nodes, not {nodes}")
    if seconds < 0:
        raise ValueError(f"the fault phase cannot last {seconds} s")
    rng = random.Random(seed)
    first = list(KINDS)
    rng.shuffle(first)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    steps: list[Step] = []
    at = rng.uniform(*GAP_S)
    while at < seconds:
        kind = first.pop(0) if first else rng.choices(kinds, weights)[0]
        step = _step(rng, at, kind, nodes)
        steps.append(step)
        at += step.duration_s + rng.uniform(*GAP_S)
    return steps


def _step(rng: random.Random, at: float, kind: str, nodes: int) -> Step:
    duration = round(rng.uniform(*_DURATION_S[kind]), 3)
    pick = rng.randrange(1 << 30)
    if kind in _SIDECAR_FAULTS or kind == "partition":
        draw = rng.random()
        if draw < LEADER_BIAS:
            target = "leader"
        elif draw < LEADER_BIAS + HOLDER_NODE_BIAS:
            target = "holder"
        else:
            target = "follower"
    elif kind in _WORKER_FAULTS:
        target = "holder" if rng.random() < HOLDER_BIAS else f"node:{rng.randrange(nodes)}"
    elif kind == "pause_worker_at_write":
        target = "holder"
    elif kind == "transfer":
        target = "leader"
    else:  # disk loss and membership: a follower, so one change is in flight at a time
        target = "follower"
    mode = shape = ""
    if kind == "partition":
        shape = rng.choice(PARTITION_SHAPES)
        if shape == "bridge" and nodes < 5:
            shape = "majority"
        mode = "blackhole" if shape == "one_way" else rng.choice(MODES)
    return Step(round(at, 3), kind, target, duration, mode, shape, pick)


def partition_sides(shape: str, names: list[str], focus: str, pick: int) -> list[tuple[str, str]]:
    """The links (pairs of node names) a partition of ``shape`` cuts, around
    ``focus`` (the node the step aims at); ``rolling`` gives its first cut
    only (the runner moves it). For ``one_way`` the one pair is (from, to):
    what ``focus`` sends to that peer is lost, what it receives is not.

    Pure, for the schedule's tests and the runner alike."""
    others = [n for n in names if n != focus]
    rng = random.Random(pick)
    if shape in ("isolate", "rolling"):
        return [(focus, o) for o in others]
    if shape == "one_way":
        return [(focus, rng.choice(others))]
    if shape == "majority":
        minority = [focus, *rng.sample(others, (len(names) - 1) // 2 - 1)]
        majority = [n for n in names if n not in minority]
        return [(a, b) for a in minority for b in majority]
    if shape == "bridge":
        # Two halves that each see the bridge node and not each other: the
        # bridge is in both majorities (Jepsen's "bridge" nemesis).
        rest = rng.sample(others, len(others))
        half = len(rest) // 2
        left, right = rest[:half], rest[half:]
        return [(a, b) for a in left for b in right]
    raise ValueError(f"no partition shape {shape!r}")
