"""Offline backup, restore and recovery on real data directories
(``sidecar.disaster``): what is kept, where the new log starts, what is
refused, and that a recovery interrupted at any step can be finished.

The directories are written and read back by the real storage code
(``DiskStorage``, ``IdentityStore``): what the tests read is what ``serve``
would recover at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sidecar.backup import Backup, decode_backup, encode_backup
from sidecar.disaster import DisasterError
from sidecar.disaster.fresh import TOKEN_MARGIN, start_index
from sidecar.disaster.recover import KEEP_PREFIX, recover_directory
from sidecar.disaster.replay import read_stopped_directory
from sidecar.disaster.restore import restore_backup
from sidecar.disaster.save import backup_directory, write_backup
from sidecar.elections import ElectionsState
from sidecar.raft import Membership, Snapshot, SnapshotMetadata
from sidecar.storage.disk import DiskStorage
from sidecar.storage.fs import OsFileSystem
from sidecar.storage.identity import IdentityMismatch, IdentityStore
from tests.disaster.nodedir import OLD_INCARNATION, TERM, make_node_dir, state_at


def holders(state: bytes) -> dict[str, int]:
    loaded = ElectionsState.restore(state)
    return {
        name: grant.token
        for name in loaded.elections()
        if (grant := loaded.holder(name)) is not None
    }


def recovered_state(directory: Path) -> tuple[int, int, frozenset[str], bytes, int]:
    """(snapshot index, term, voters, data, number of log entries) as serve sees it."""
    storage = DiskStorage(str(directory))
    with capture_logs() as logs:
        state = storage.recover()
    storage.close()
    assert not logs, f"recovery had to repair something: {logs}"
    assert state.snapshot is not None
    meta = state.snapshot.metadata
    assert state.hard_state.term >= meta.term and state.hard_state.voted_for is None
    assert state.hard_state.commit == meta.index
    return meta.index, meta.term, meta.membership.voters, state.snapshot.data, len(state.entries)


# ---- save ------------------------------------------------------------------------------


def test_save_holds_the_committed_state_only_and_changes_nothing(tmp_path: Path) -> None:
    node = tmp_path / "s0"
    make_node_dir(node, last=7, commit=6, snapshot_at=3)
    before = {p: p.read_bytes() for p in node.rglob("*") if p.is_file()}
    backup = backup_directory(str(node), now_unix_ms=1234)
    assert (backup.cluster_id, backup.index, backup.term) == ("old", 6, TERM)
    assert backup.created_at_unix_ms == 1234
    assert holders(backup.state) == {"eur": 4, "usd": 6}, "gbp (index 7) is not committed"
    assert backup.state == state_at(6)
    after = {p: p.read_bytes() for p in node.rglob("*") if p.is_file()}
    assert after == before, "save only reads"

    path = tmp_path / "b.rsbk"
    write_backup(str(path), backup)
    assert decode_backup(path.read_bytes()) == backup


def test_save_refuses_a_directory_that_is_not_a_sidecars(tmp_path: Path) -> None:
    with pytest.raises(DisasterError, match="does not exist"):
        backup_directory(str(tmp_path / "nope"), now_unix_ms=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DisasterError, match="no identity file"):
        backup_directory(str(tmp_path / "empty"), now_unix_ms=0)


def test_save_refuses_a_corrupt_directory(tmp_path: Path) -> None:
    node = tmp_path / "s0"
    make_node_dir(node, snapshot_at=3)
    snap = next((node / "snapshots").iterdir())
    data = bytearray(snap.read_bytes())
    data[10] ^= 0xFF
    snap.write_bytes(bytes(data))
    with pytest.raises(DisasterError, match="checksum mismatch"):
        backup_directory(str(node), now_unix_ms=0)


def test_save_refuses_a_snapshot_ahead_of_its_own_log(tmp_path: Path) -> None:
    node = tmp_path / "s0"
    identity = make_node_dir(node, last=7, commit=7)
    storage = DiskStorage(str(node))
    storage.recover()
    meta = SnapshotMetadata(3, TERM, Membership(frozenset({identity.server_id})))
    storage.save_snapshot(Snapshot(meta, state_at(7)))  # claims index 7 applied at 3
    storage.close()
    with pytest.raises(DisasterError, match="the log does not apply after the snapshot"):
        backup_directory(str(node), now_unix_ms=0)


# ---- restore ---------------------------------------------------------------------------


def _backup(index: int = 7) -> bytes:
    return encode_backup(Backup("old", index, TERM, 0, state_at(index)))


def test_restore_starts_the_log_above_the_backup_and_the_floor(tmp_path: Path) -> None:
    target = tmp_path / "new"
    restored = restore_backup(_backup(), str(target), cluster_id="new", node="s0", min_token=50)
    assert restored.start_index == 50 + TOKEN_MARGIN
    identity = IdentityStore(str(target)).read()
    assert identity == restored.identity
    assert identity is not None and identity.cluster == "new" and identity.node == "s0"
    assert identity.incarnation != OLD_INCARNATION
    assert identity.initial_voters == (identity.server_id,), "already decided: no decide_entry"
    index, term, voters, data, entries = recovered_state(target)
    assert (index, term, entries) == (50 + TOKEN_MARGIN, TERM, 0)
    assert voters == {identity.server_id}
    assert data == state_at(7), "the elections state is the backup's, unchanged"


def test_without_a_floor_the_log_starts_a_margin_above_the_backup(tmp_path: Path) -> None:
    restored = restore_backup(_backup(7), str(tmp_path / "n"), cluster_id="new", node="s0")
    assert restored.start_index == 7 + TOKEN_MARGIN
    assert start_index(900, 20) == 900 + TOKEN_MARGIN


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cluster_id": "old"}, "must differ from the backup's cluster id"),
        ({"node": "bad~name"}, "node id"),
        ({"cluster_id": ""}, "cluster id"),
        ({"min_token": -1}, "must not be negative"),
        ({"min_token": 1 << 63}, "too little room"),
    ],
)
def test_restore_refusals_write_nothing(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    target = tmp_path / "new"
    args: dict[str, object] = {"cluster_id": "new", "node": "s0", "min_token": 0, **kwargs}
    with pytest.raises(DisasterError, match=message):
        restore_backup(_backup(), str(target), **args)  # type: ignore[arg-type]
    assert not target.exists()


def test_restore_refuses_a_corrupt_backup_and_a_non_empty_directory(tmp_path: Path) -> None:
    data = bytearray(_backup())
    data[40] ^= 1
    with pytest.raises(DisasterError, match="the backup is refused: checksum mismatch"):
        restore_backup(bytes(data), str(tmp_path / "a"), cluster_id="new", node="s0")
    assert not (tmp_path / "a").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "anything").write_text("x")
    with pytest.raises(DisasterError, match="is not empty"):
        restore_backup(_backup(), str(busy), cluster_id="new", node="s0")
    assert [p.name for p in busy.iterdir()] == ["anything"]
    with pytest.raises(DisasterError, match="cannot be used"):
        restore_backup(_backup(), str(busy / "anything"), cluster_id="new", node="s0")
    assert (busy / "anything").read_text() == "x"


# ---- recover ---------------------------------------------------------------------------


def test_recover_applies_the_whole_log_and_keeps_the_old_contents(tmp_path: Path) -> None:
    node = tmp_path / "s0"
    make_node_dir(node, last=7, commit=5, snapshot_at=3)
    old_files = {p.relative_to(node): p.read_bytes() for p in node.rglob("*") if p.is_file()}
    recovered = recover_directory(str(node), new_cluster_id="rebuilt", min_token=3)
    assert not recovered.resumed
    assert (recovered.old_last_index, recovered.old_commit_index) == (7, 5)
    assert recovered.start_index == 7 + TOKEN_MARGIN, "above the last index, not the floor"

    identity = IdentityStore(str(node)).read()
    assert identity == recovered.identity
    assert identity is not None and identity.cluster == "rebuilt" and identity.node == "s0"
    assert identity.incarnation != OLD_INCARNATION
    index, term, voters, data, _ = recovered_state(node)
    assert (index, voters) == (7 + TOKEN_MARGIN, {identity.server_id})
    assert term == TERM + 1, "the survivor's current term"
    assert holders(data) == {"eur": 4, "usd": 6, "gbp": 7}, "the uncommitted tail is applied"

    kept = node / f"{KEEP_PREFIX}{OLD_INCARNATION}"
    assert Path(recovered.kept) == kept
    for rel, content in old_files.items():
        assert (kept / rel).read_bytes() == content, f"{rel} kept byte for byte"
    old = read_stopped_directory(str(kept))
    assert old.identity.cluster == "old" and old.last_index == 7


def test_recover_uses_the_floor_when_it_is_higher(tmp_path: Path) -> None:
    node = tmp_path / "s0"
    make_node_dir(node)
    recovered = recover_directory(str(node), new_cluster_id="rebuilt", min_token=10_000)
    assert recovered.start_index == 10_000 + TOKEN_MARGIN


def test_recover_refuses_the_same_cluster_id_and_changes_nothing(tmp_path: Path) -> None:
    node = tmp_path / "s0"
    make_node_dir(node)
    before = sorted(p.name for p in node.iterdir())
    with pytest.raises(DisasterError, match="must differ from the old cluster id"):
        recover_directory(str(node), new_cluster_id="old")
    with pytest.raises(DisasterError, match="no identity file"):
        recover_directory(str(tmp_path), new_cluster_id="new")
    assert sorted(p.name for p in node.iterdir()) == before


class _CrashAfter(OsFileSystem):
    """The real file system, until the ``n``-th rename: then the process "dies"."""

    def __init__(self, n: int) -> None:
        self.left = n

    def rename(self, src: str, dst: str) -> None:
        if self.left == 0:
            raise _Crash
        self.left -= 1
        super().rename(src, dst)


class _Crash(Exception):
    pass


def _serve_would(directory: Path) -> str:
    """What ``serve`` would make of the directory: the cluster of its identity,
    or "refused" (Raft state without an identity)."""
    store = IdentityStore(str(directory))
    identity = store.read()
    if identity is not None:
        return identity.cluster
    with pytest.raises(IdentityMismatch, match="no identity file"):
        store.load_or_create(cluster="rebuilt", node="s0")
    return "refused"


def test_a_recovery_interrupted_at_any_rename_is_refused_then_finished(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    make_node_dir(reference, last=7, commit=5)
    done = recover_directory(str(reference), new_cluster_id="rebuilt")
    expected = recovered_state(reference)
    crashes = 0
    for n in range(100):
        node = tmp_path / f"s0-{n}"
        make_node_dir(node, last=7, commit=5)
        try:
            recover_directory(str(node), new_cluster_id="rebuilt", fs=_CrashAfter(n))
        except _Crash:
            crashes += 1
        else:
            break
        seen = _serve_would(node)
        assert seen in ("old", "refused"), f"crash after {n} renames"
        if seen == "refused":  # the old identity moved out: only the same run may finish
            with pytest.raises(DisasterError, match="run recover again with --new-cluster-id"):
                recover_directory(str(node), new_cluster_id="other")
        again = recover_directory(str(node), new_cluster_id="rebuilt")
        assert _serve_would(node) == "rebuilt"
        index, term, voters, data, entries = recovered_state(node)
        assert (index, term, data, entries) == expected[:2] + expected[3:]
        assert len(voters) == 1 and next(iter(voters)).startswith("s0~")
        assert again.start_index == done.start_index
        old = read_stopped_directory(again.kept)
        assert old.identity.cluster == "old" and old.last_index == 7
    assert crashes >= 8, "every rename of the swap was interrupted once"
