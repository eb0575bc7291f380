"""Disk loss with and without the amnesia guard (issue 11), on the simulator.

The random campaign (``test_simulation.py``) mixes disk losses with every
other fault and ``test_mutants.py`` requires it to catch the guard switched
off; here the scripted case of the issue ("the node that lost its disk is
needed for a majority") shows both ends, and the replay of a disk-loss seed
is shown independent of Python's string hashing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from sidecar.raft import ConfChangeKind, Entry, EntryKind, Raft
from sidecar.serverid import is_server_id, node_name
from tests.sim.checkers import Checkers, SafetyViolation
from tests.sim.cluster import SimNode
from tests.sim.mutants import RejoinsWithAmnesia
from tests.sim.scenarios import disk_loss_needed_for_majority

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_wiped_node_is_a_new_server_that_only_the_log_admits(seed: int) -> None:
    seen = disk_loss_needed_for_majority(Raft, seed)
    assert is_server_id(seen.new_server), seen
    assert not seen.leader_without_the_entries, "a wiped node helped elect a leader"
    assert seen.admitted and seen.old_server_removed, seen
    old = next(server for kind, server in seen.admissions if kind is ConfChangeKind.REMOVE_NODE)
    assert node_name(old) == node_name(seen.new_server) and old != seen.new_server
    assert seen.admissions == (
        (ConfChangeKind.REMOVE_NODE, old),
        (ConfChangeKind.ADD_LEARNER, seen.new_server),
        (ConfChangeKind.PROMOTE_LEARNER, seen.new_server),
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_without_the_guard_the_wiped_node_elects_a_leader_without_the_grants(
    seed: int,
) -> None:
    with pytest.raises(SafetyViolation, match="Leader Completeness"):
        disk_loss_needed_for_majority(RejoinsWithAmnesia, seed)


_FINGERPRINT = """
import hashlib
from tests.sim.cluster import Simulation
from tests.sim.trace import describe
sim = Simulation(7)
sim.run(2000)
assert sim.stats["disk_losses"] >= 2 and sim.stats["admissions"] >= 2, sim.stats
h = hashlib.sha256(repr((sim.now, sorted(sim.stats.items()), sim.current_servers())).encode())
for t, event in sim.trace:
    h.update(b"%d %s" % (t, describe(event).encode()))
print(h.hexdigest())
"""


def test_a_disk_loss_seed_replays_identically_under_any_string_hashing() -> None:
    """Server ids are strings: nothing may depend on the order of a set of them."""
    digests = set()
    for hash_seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", _FINGERPRINT],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
            check=True,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


def test_the_token_checker_names_both_holders_across_incarnations() -> None:
    """Two servers of one name (its lives before and after a disk loss) apply
    different grants at index 1: one fencing token, two holders."""
    check = Checkers()
    old = cast(SimNode, SimpleNamespace(id="n1", incarnation=3, sm_index=0))
    new = cast(SimNode, SimpleNamespace(id="n1~00000000000000aa", incarnation=1, sm_index=0))
    first = Entry(term=2, index=1, kind=EntryKind.NORMAL, data=b"grant-a")
    check.committed.append(first)
    check.on_apply(old, first)
    with pytest.raises(SafetyViolation, match=r"fencing token 1 .*n1 \(life 3\).*n1~0+aa"):
        check.on_apply(new, Entry(term=3, index=1, kind=EntryKind.NORMAL, data=b"grant-b"))
