"""The leader's plan for admitting new incarnations (sidecar.membership.plan_change),
and when hellos may slow down (sidecar.membership.unsettled)."""

from __future__ import annotations

from sidecar.membership import plan_change, unsettled
from sidecar.raft import ConfChangeKind, Membership

A, B, C = "a~" + "a" * 16, "b~" + "b" * 16, "c~" + "c" * 16
C2 = "c~" + "2" * 16


def plan(
    membership: Membership,
    current: dict[str, str],
    live: set[str],
    match: dict[str, int] | None = None,
    commit: int = 10,
) -> tuple[ConfChangeKind, str] | None:
    planned = plan_change(
        me=A,
        membership=membership,
        names=["a", "b", "c"],
        current=current,
        live=frozenset(live),
        match=match or {},
        commit_index=commit,
    )
    return None if planned is None else (planned.change.kind, planned.change.node_id)


THREE = Membership(frozenset({A, B, C}))


def test_nothing_to_do_when_every_name_is_its_member() -> None:
    assert plan(THREE, {"b": B, "c": C}, {A, B, C}) is None
    assert plan(THREE, {}, {A}) is None, "no news is no change"


def test_a_new_incarnation_first_removes_the_old_one_then_joins_as_learner() -> None:
    assert plan(THREE, {"b": B, "c": C2}, {A, B}) == (ConfChangeKind.REMOVE_NODE, C)
    after_removal = Membership(frozenset({A, B}))
    assert plan(after_removal, {"b": B, "c": C2}, {A, B}) == (ConfChangeKind.ADD_LEARNER, C2)


def test_the_old_incarnation_stays_while_the_rest_would_lack_a_quorum() -> None:
    """Removing c from {a, b, c} leaves {a, b}: both must answer."""
    assert plan(THREE, {"c": C2}, {A}) is None
    five = Membership(frozenset({A, B, C, "d~" + "d" * 16, "e~" + "e" * 16}))
    # {a, b, d, e} needs 3 live voters.
    assert plan(five, {"c": C2, "b": B}, {A, B}) is None
    assert plan(five, {"c": C2, "b": B}, {A, B, "d~" + "d" * 16}) == (
        ConfChangeKind.REMOVE_NODE,
        C,
    )


def test_an_old_incarnation_is_removed_also_when_the_new_one_was_added_first() -> None:
    """An operator may add the new incarnation before the old one is removed
    (``members add``): the old one, a voter that never answers again, must
    still go, under the same quorum guard."""
    both = Membership(frozenset({A, B, C}), frozenset({C2}))
    assert plan(both, {"b": B, "c": C2}, {A, B, C2}) == (ConfChangeKind.REMOVE_NODE, C)
    assert plan(both, {"c": C2}, {A, C2}) is None, "{a, b} without b: no quorum"
    promoted = Membership(frozenset({A, B, C, C2}))
    assert plan(promoted, {"b": B, "c": C2}, {A, B, C2}) == (ConfChangeKind.REMOVE_NODE, C)


def test_a_learner_is_promoted_only_once_caught_up_and_answering() -> None:
    with_learner = Membership(frozenset({A, B}), frozenset({C2}))
    assert plan(with_learner, {"b": B, "c": C2}, {A, B, C2}, {C2: 9}) is None
    assert plan(with_learner, {"b": B, "c": C2}, {A, B}, {C2: 10}) is None
    assert plan(with_learner, {"b": B, "c": C2}, {A, B, C2}, {C2: 10}) == (
        ConfChangeKind.PROMOTE_LEARNER,
        C2,
    )


def test_a_name_outside_the_contact_list_and_membership_is_not_admitted() -> None:
    stranger = "z~" + "f" * 16
    assert plan(THREE, {"z": stranger}, {A, B, C}) is None


def test_a_node_that_said_hello_beyond_the_contact_list_joins_as_learner() -> None:
    """A StatefulSet scaled up: the new name is not in the leader's --peers."""
    d = "d~" + "d" * 16
    planned = plan_change(
        me=A,
        membership=THREE,
        names=["a", "b", "c", "d"],
        current={"b": B, "c": C, "d": d},
        live=frozenset({A, B, C, d}),
        match={},
        commit_index=10,
        contacts=frozenset({"a", "b", "c"}),
    )
    assert planned is not None and planned.change.kind is ConfChangeKind.ADD_LEARNER
    assert planned.change.node_id == d


def test_a_gone_member_outside_the_contact_list_is_removed_a_configured_one_stays() -> None:
    d, e = "d~" + "d" * 16, "e~" + "e" * 16
    five = Membership(frozenset({A, B, C, d, e}))

    def removal(gone: set[str], live: set[str]) -> tuple[ConfChangeKind, str] | None:
        planned = plan_change(
            me=A,
            membership=five,
            names=["a", "b", "c", "d", "e"],
            current={},
            live=frozenset(live),
            match={},
            commit_index=10,
            contacts=frozenset({"a", "b", "c"}),
            gone=frozenset(gone),
        )
        return None if planned is None else (planned.change.kind, planned.change.node_id)

    assert removal({d, e}, {A, B, C}) == (ConfChangeKind.REMOVE_NODE, d)
    assert removal({B}, {A, C, d, e}) is None, "b is in --peers: it comes back"
    assert removal({d}, {A}) is None, "the rest would lack a quorum"


def settle(
    membership: Membership = THREE,
    current: dict[str, str] | None = None,
    *,
    committed: Membership | None = None,
    leader: str | None = B,
    peer_silent: bool = False,
    me: str = A,
) -> str:
    """Why node ``me`` keeps its hellos fast (sidecar.membership.unsettled)."""
    return unsettled(
        me=me,
        leader=leader,
        membership=membership,
        committed=membership if committed is None else committed,
        names=["b", "c"],
        current={"b": B, "c": C} if current is None else current,
        peer_silent=peer_silent,
    )


def test_a_cluster_whose_every_name_is_its_current_member_is_settled() -> None:
    assert settle() == ""


def test_hellos_stay_fast_while_anything_is_unsettled() -> None:
    # A name came back as a new incarnation (a wiped disk): the leader must
    # hear it promptly to admit it.
    assert "c" in settle(current={"b": B, "c": C2})
    # A name not heard from (recently).
    assert "c" in settle(current={"b": B})
    # This server is not (yet) in its committed membership: a joining node,
    # or one the others removed.
    assert "not a member" in settle(membership=Membership(frozenset({B, C})))
    # No leader known: a removed member no longer hears one, and must ask.
    assert "no leader" in settle(leader=None)
    assert "did not answer" in settle(peer_silent=True)
    # A change pending: appended and not committed, or a learner not promoted.
    assert "pending" in settle(
        membership=Membership(frozenset({A, B})), committed=THREE, current={"b": B, "c": C}
    )
    assert "pending" in settle(
        membership=Membership(frozenset({A, B, C}), frozenset({C2})),
        current={"b": B, "c": C},
    )
    # A member beyond the names greeted that is not heard (scaled away: the
    # leader removes it once gone).
    d = "d~" + "d" * 16
    assert d in settle(membership=Membership(frozenset({A, B, C, d})))
