"""The identity file of a data directory (sidecar/storage/identity.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.raft import Entry, HardState
from sidecar.serverid import incarnation_of, is_server_id, node_name
from sidecar.storage.disk import DiskStorage
from sidecar.storage.errors import CorruptionError
from sidecar.storage.identity import IdentityMismatch, IdentityStore, ServerRemoved


def test_a_new_directory_gets_a_new_incarnation_kept_across_restarts(tmp_path: Path) -> None:
    store = IdentityStore(str(tmp_path / "d"))
    first, created = store.load_or_create(cluster="pay", node="s0")
    assert created and first.initial_voters is None
    assert is_server_id(first.server_id) and node_name(first.server_id) == "s0"
    again, created_again = IdentityStore(str(tmp_path / "d")).load_or_create(
        cluster="pay", node="s0"
    )
    assert not created_again and again == first


def test_a_wiped_directory_is_a_new_incarnation(tmp_path: Path) -> None:
    a, _ = IdentityStore(str(tmp_path / "a")).load_or_create(cluster="pay", node="s0")
    b, _ = IdentityStore(str(tmp_path / "b")).load_or_create(cluster="pay", node="s0")
    assert incarnation_of(a.server_id) != incarnation_of(b.server_id)


def test_the_bootstrap_decision_is_durable(tmp_path: Path) -> None:
    store = IdentityStore(str(tmp_path))
    identity, _ = store.load_or_create(cluster="pay", node="s0")
    voters = (identity.server_id, "s1~0123456789abcdef")
    decided = store.decide(identity, voters)
    assert decided.initial_voters == tuple(sorted(voters))
    assert IdentityStore(str(tmp_path)).read() == decided
    joined = store.decide(identity, ())
    assert IdentityStore(str(tmp_path)).read() == joined and joined.initial_voters == ()


@pytest.mark.parametrize(
    ("cluster", "node", "says"),
    [("other", "s0", "belongs to cluster 'pay'"), ("pay", "s1", "belongs to node 's0'")],
)
def test_a_directory_of_another_cluster_or_node_is_refused(
    tmp_path: Path, cluster: str, node: str, says: str
) -> None:
    IdentityStore(str(tmp_path)).load_or_create(cluster="pay", node="s0")
    with pytest.raises(IdentityMismatch, match=says):
        IdentityStore(str(tmp_path)).load_or_create(cluster=cluster, node=node)


def test_raft_state_without_an_identity_is_refused_untouched(tmp_path: Path) -> None:
    storage = DiskStorage(str(tmp_path))
    storage.recover()
    storage.persist(HardState(term=3, voted_for="s1", commit=0), None, [Entry(3, 1, data=b"x")])
    storage.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(IdentityMismatch, match="no identity file"):
        IdentityStore(str(tmp_path)).load_or_create(cluster="pay", node="s0")
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing written"


def test_a_damaged_identity_file_stops_the_node(tmp_path: Path) -> None:
    store = IdentityStore(str(tmp_path))
    store.load_or_create(cluster="pay", node="s0")
    path = tmp_path / "identity"
    data = bytearray(path.read_bytes())
    data[data.index(b'"s0"') + 1] = ord("x")  # the node name, checksum unchanged
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="checksum"):
        store.read()
    path.write_bytes(b"not json")
    with pytest.raises(CorruptionError, match="malformed"):
        store.read()


def test_a_removed_server_never_starts_on_its_directory_again(tmp_path: Path) -> None:
    store = IdentityStore(str(tmp_path))
    identity, _ = store.load_or_create(cluster="pay", node="s0")
    admitted = store.record_admitted(identity, 0)
    assert admitted.admitted_index == 1, "a bootstrap voter is a member from index 1 on"
    assert IdentityStore(str(tmp_path)).read() == admitted
    store.record_removed(admitted, "s1~0123456789abcdef no longer holds it a member")
    with pytest.raises(ServerRemoved, match=r"was removed from the cluster .*wipe the whole"):
        IdentityStore(str(tmp_path)).load_or_create(cluster="pay", node="s0")
    assert issubclass(ServerRemoved, IdentityMismatch)


def test_an_identity_that_never_saw_admission_keeps_its_bytes(tmp_path: Path) -> None:
    store = IdentityStore(str(tmp_path))
    store.load_or_create(cluster="pay", node="s0")
    text = (tmp_path / "identity").read_text()
    assert "admitted_index" not in text and "removed" not in text
