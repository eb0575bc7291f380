"""The leader's plan for admitting new incarnations (sidecar.membership.plan_change)."""

from __future__ import annotations

from sidecar.membership import plan_change
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
