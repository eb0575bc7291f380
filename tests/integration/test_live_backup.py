"""``raft-sidecar snapshot save`` on a running cluster (AdminService/SaveSnapshot).

The backup is taken after a linearizable read, so a grant acknowledged on the
Raft leader just before the call is in a backup made through a follower;
it restores like an offline one. Without a leader the command fails with
one line and writes nothing.
"""

from __future__ import annotations

import signal
from pathlib import Path

from sidecar.backup import decode_backup, highest_token
from sidecar.elections import ElectionsState
from tests.disaster.cli_process import run_cli
from tests.integration import worker_api
from tests.integration.cluster import Cluster


def test_a_running_follower_backs_up_every_acknowledged_grant(
    cluster: Cluster, tmp_path: Path
) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    tokens = [
        worker_api.campaign(leader.stub(), f"run-{i}", f"worker-{i}", ttl_ms=60_000).fencing_token
        for i in range(5)
    ]
    path = tmp_path / "live.rsbk"

    done = run_cli("snapshot", "save", "--data-dir", str(follower.data_dir), str(path))

    assert done.returncode == 0, done.stderr
    assert f"from the running sidecar at {follower.data_dir / 'admin.sock'}" in done.stdout
    backup = decode_backup(path.read_bytes())
    assert highest_token(backup.state) == max(tokens)
    assert backup.index >= max(tokens)
    state = ElectionsState.restore(backup.state)
    for i, token in enumerate(tokens):
        holder = state.holder(f"run-{i}")
        assert holder is not None and holder.token == token
    # The directory it would read offline was not used: the follower runs.
    assert follower.process is not None and follower.process.poll() is None


def test_without_a_leader_the_backup_fails_with_one_line(cluster: Cluster, tmp_path: Path) -> None:
    leader = cluster.leader()
    survivor, *others = [n for n in cluster.nodes if n is not leader]
    cluster.kill(leader, signal.SIGKILL)
    for node in others:
        cluster.kill(node, signal.SIGKILL)
    path = tmp_path / "none.rsbk"

    done = run_cli(
        "snapshot", "save", "--data-dir", str(survivor.data_dir), "--timeout", "5", str(path)
    )

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "UNAVAILABLE" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not path.exists()
