"""The nemesis's schedule: a seed replays it, a run draws every kind, and the
partition shapes cut what they say."""

from __future__ import annotations

import itertools

import pytest

from tests.chaos.nemesis import KINDS, PARTITION_SHAPES, Step, partition_sides, schedule

NAMES3 = ["s0", "s1", "s2"]
NAMES5 = ["s0", "s1", "s2", "s3", "s4"]


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert schedule(7, 180, 3) == schedule(7, 180, 3)
    assert schedule(7, 180, 3) != schedule(8, 180, 3)


def test_a_short_run_draws_every_fault_kind_first() -> None:
    for seed in range(20):
        steps = schedule(seed, 75, 3)
        assert {s.kind for s in steps[: len(KINDS)]} == set(KINDS), seed


def test_faults_follow_each_other_within_the_phase() -> None:
    steps = schedule(3, 120, 5)
    assert steps and all(s.at_s < 120 for s in steps)
    for a, b in itertools.pairwise(steps):
        assert b.at_s >= a.at_s + a.duration_s, "one fault at a time"


def test_partitions_use_both_modes_and_every_shape_with_five_nodes() -> None:
    parts = [s for seed in range(40) for s in schedule(seed, 300, 5) if s.kind == "partition"]
    assert {s.mode for s in parts} == {"blackhole", "fastfail"}
    assert {s.shape for s in parts} == set(PARTITION_SHAPES)
    three = [s for seed in range(40) for s in schedule(seed, 300, 3) if s.kind == "partition"]
    assert "bridge" not in {s.shape for s in three}, "a bridge needs five nodes"


def test_sidecar_faults_aim_at_the_raft_leader_more_often() -> None:
    kinds = ("kill_sidecar", "pause_sidecar", "term_sidecar")
    targets = [s.target for seed in range(60) for s in schedule(seed, 300, 3) if s.kind in kinds]
    assert targets.count("leader") > 1.5 * targets.count("follower")
    assert targets.count("holder") > 0, "the holder's node too"


def test_a_schedule_needs_three_nodes_and_a_phase() -> None:
    with pytest.raises(ValueError, match="at least 3 nodes"):
        schedule(1, 60, 2)
    with pytest.raises(ValueError, match="cannot last"):
        schedule(1, -1, 3)
    assert schedule(1, 0, 3) == []


def test_isolate_cuts_every_link_of_the_focus() -> None:
    assert sorted(partition_sides("isolate", NAMES3, "s1", 0)) == [("s1", "s0"), ("s1", "s2")]


def test_majority_leaves_a_minority_with_the_focus() -> None:
    for pick in range(10):
        pairs = partition_sides("majority", NAMES5, "s0", pick)
        minority = {a for a, _ in pairs}
        majority = {b for _, b in pairs}
        assert "s0" in minority and len(minority) == 2 and len(majority) == 3
        assert len(pairs) == 6, "every minority-majority link"


def test_a_bridge_node_keeps_every_link_and_the_halves_lose_each_other() -> None:
    for pick in range(10):
        pairs = partition_sides("bridge", NAMES5, "s2", pick)
        assert all("s2" not in pair for pair in pairs)
        left = {a for a, _ in pairs}
        right = {b for _, b in pairs}
        assert len(left) == len(right) == 2 and not left & right and len(pairs) == 4


def test_one_way_names_one_direction_from_the_focus() -> None:
    ((a, b),) = partition_sides("one_way", NAMES3, "s0", 5)
    assert a == "s0" and b in ("s1", "s2")


def test_a_step_describes_itself() -> None:
    step = Step(1.0, "partition", "leader", 2.5, "blackhole", "isolate")
    assert step.describe() == "partition isolate blackhole on leader for 2.50s"
