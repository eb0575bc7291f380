"""Backup, restore and recovery figures: ``python -m bench.disaster``.

1. Offline, in process, on a real directory: a node whose snapshot holds
   ``--elections`` elections with ``--grants`` grants each (full audit
   trails), followed by ``--tail`` log entries: time of ``snapshot save``
   (read, replay, encode, write), the backup's size, ``snapshot restore``
   (verify, write a new directory) and ``recover`` (replay the whole log,
   write, swap in place).
2. Real processes (the integration harness, default tick 15 ms): the
   restored directory seeds a new 3-node cluster whose two other nodes start
   empty; time from starting the three to three caught-up voters (the two
   receive the snapshot by InstallSnapshot), then to the first new grant.

A benchmark, not a test: figures depend on the machine; compare runs on one
machine only.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from sidecar.backup import encode_backup
from sidecar.disaster.recover import recover_directory
from sidecar.disaster.restore import restore_backup
from sidecar.disaster.save import backup_directory, write_backup
from sidecar.elections import ElectionsState, decode_command
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from sidecar.raft import Entry, EntryKind, HardState, Membership, Snapshot, SnapshotMetadata
from sidecar.storage.disk import DiskStorage
from sidecar.storage.identity import Identity, IdentityStore
from tests.disaster.states import campaign, resign
from tests.integration import worker_api
from tests.integration.cluster import Cluster, eventually


def make_directory(path: Path, elections: int, grants: int, tail: int) -> None:
    state = ElectionsState()
    index = 0
    for g in range(grants):
        for e in range(elections):
            for data in (campaign(f"e{e}", f"w{g}"), resign(f"e{e}", f"w{g}")):
                index += 1
                state.apply(index, decode_command(data))
    identity = Identity("old", "s0", "0123456789abcdef")
    identity = Identity("old", "s0", identity.incarnation, initial_voters=(identity.server_id,))
    IdentityStore(str(path)).write(identity)
    storage = DiskStorage(str(path))
    storage.recover()
    meta = SnapshotMetadata(index, 1, Membership(frozenset({identity.server_id})))
    storage.persist(HardState(1, None, index), Snapshot(meta, state.snapshot()), [])
    entries = [
        Entry(1, index + i, EntryKind.NORMAL, campaign(f"t{i % 200}", f"x{i}"))
        for i in range(1, tail + 1)
    ]
    storage.persist(HardState(1, None, index + tail), None, entries)
    storage.close()


def timed(what: str, call: object) -> float:
    started = time.monotonic()
    call()  # type: ignore[operator]
    seconds = time.monotonic() - started
    print(f"{what}: {seconds * 1000:.0f} ms")
    return seconds


def restored_cluster(root: Path, backup: bytes) -> None:
    cluster = Cluster(root, tick_ms=15)
    cluster.extra_args = lambda _node: ["--cluster-id", "restored"]
    seed = cluster.nodes[0]
    restore_backup(backup, str(seed.data_dir), cluster_id="restored", node=seed.node_id)
    try:
        started = time.monotonic()
        cluster.start_all()

        def three_voters() -> bool | None:
            try:
                status = cluster.leader().status()
            except Exception:  # a leader change mid-poll: poll again
                return None
            ready = [p for p in status.peers if p.role == worker_pb2.PEER_ROLE_VOTER]
            return (len([p for p in ready if p.caught_up]) == 2) or None

        eventually(three_voters, "three caught-up voters", seconds=180)
        voters_s = time.monotonic() - started
        print(f"restored cluster started to three caught-up voters: {voters_s * 1000:.0f} ms")
        worker_api.campaign(cluster.leader().stub(), "bench", "w", ttl_ms=5000, timeout=30)
        print(f"  ... to the first new grant: {(time.monotonic() - started) * 1000:.0f} ms")
    finally:
        cluster.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elections", type=int, default=64)
    parser.add_argument("--grants", type=int, default=200)
    parser.add_argument("--tail", type=int, default=10_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-disaster-", dir="/var/tmp"))
    try:
        node = root / "s0"
        make_directory(node, args.elections, args.grants, args.tail)
        print(
            f"a node with {args.elections} elections x {args.grants} grants in its snapshot "
            f"and {args.tail} entries after it"
        )
        box: dict[str, bytes] = {}

        def save() -> None:
            backup = backup_directory(str(node), now_unix_ms=0)
            write_backup(str(root / "b.rsbk"), backup)
            box["backup"] = encode_backup(backup)

        timed("snapshot save", save)
        print(f"  backup size: {len(box['backup']) / 1e6:.1f} MB")
        timed(
            "snapshot restore",
            lambda: restore_backup(box["backup"], str(root / "new"), cluster_id="n", node="s0"),
        )
        timed("recover", lambda: recover_directory(str(node), new_cluster_id="rebuilt"))
        (root / "cluster").mkdir()
        restored_cluster(root / "cluster", box["backup"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
