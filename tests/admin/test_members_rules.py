"""The operator's pure membership rules (sidecar/admin/members.py) and the
removed-server verdict (sidecar.membership.was_removed)."""

from __future__ import annotations

import pytest

from sidecar.admin.members import check_name, removal_problem, resolve_member, transfer_target
from sidecar.membership import plan_change, was_removed
from sidecar.raft import ConfChangeKind, Membership
from sidecar.transport.errors import AdminRefused

A, B, C = "a~" + "a" * 16, "b~" + "b" * 16, "c~" + "c" * 16
C2 = "c~" + "2" * 16
THREE = Membership(frozenset({A, B, C}))


def code(call: object, *args: object) -> str:
    with pytest.raises(AdminRefused) as caught:
        call(*args)  # type: ignore[operator]
    assert "\n" not in str(caught.value)
    return caught.value.code


def test_names_are_node_names_or_name_tilde_incarnation() -> None:
    check_name("sidecar-2")
    check_name(C)
    assert code(check_name, "") == "INVALID_ARGUMENT"
    assert code(check_name, "bad name!") == "INVALID_ARGUMENT"
    assert code(check_name, "c~xyz") == "INVALID_ARGUMENT"
    assert code(check_name, "x" * 10_000) == "INVALID_ARGUMENT"
    with pytest.raises(AdminRefused, match=r"is not a node name$"):
        check_name(C, incarnation_allowed=False)


def test_a_name_means_its_only_member_or_the_exact_incarnation() -> None:
    assert resolve_member(THREE, "c") == C
    assert resolve_member(THREE, C) == C
    assert code(resolve_member, THREE, "d") == "NOT_FOUND"
    assert code(resolve_member, THREE, C2) == "NOT_FOUND"
    both = Membership(frozenset({A, B, C}), frozenset({C2}))
    assert code(resolve_member, both, "c") == "FAILED_PRECONDITION"
    assert resolve_member(both, C2) == C2


def test_a_removal_must_leave_a_reachable_quorum_of_the_remaining_voters() -> None:
    assert removal_problem(THREE, C, frozenset({A, B})) is None
    problem = removal_problem(THREE, C, frozenset({A}))  # b down: a alone of {a, b}
    assert problem is not None and "1 are reachable" in problem and "quorum of 2" in problem
    learner = Membership(frozenset({A}), frozenset({B}))
    assert removal_problem(learner, B, frozenset({A})) is None, "a learner never counts"
    assert (
        removal_problem(Membership(frozenset({A})), A, frozenset({A})) == f"{A} is the last voter"
    )
    five = Membership(frozenset({A, B, C, "d", "e"}))
    assert removal_problem(five, "e", frozenset({A, B, C})) is None  # 3 of 4 >= 3
    assert removal_problem(five, "e", frozenset({A, B})) is not None  # 2 of 4 < 3


def test_a_leader_hands_over_to_the_most_caught_up_reachable_voter() -> None:
    match = {B: 7, C: 9}
    assert transfer_target(THREE, A, match, frozenset({A, B, C})) == C
    assert transfer_target(THREE, A, match, frozenset({A, B})) == B
    assert transfer_target(THREE, A, {B: 9, C: 9}, frozenset({A, B, C})) == B  # ties by id
    assert transfer_target(THREE, A, match, frozenset({A})) is None
    learner = Membership(frozenset({A}), frozenset({B}))
    assert transfer_target(learner, A, {B: 9}, frozenset({A, B})) is None


def test_a_server_admitted_once_and_missing_from_a_later_committed_membership_was_removed() -> None:
    members = frozenset({A, B})
    assert was_removed(C, 5, commit_index=9, committed_members=members)
    assert not was_removed(C, 0, commit_index=9, committed_members=members), "never admitted"
    assert not was_removed(C, 12, commit_index=9, committed_members=members), "judge is behind"
    assert not was_removed(B, 5, commit_index=9, committed_members=members), "still a member"


def test_the_leader_never_adds_a_server_that_was_a_member_before() -> None:
    two = Membership(frozenset({A, B}))

    def plan(once: frozenset[str]) -> tuple[ConfChangeKind, str] | None:
        planned = plan_change(
            me=A,
            membership=two,
            names=["a", "b", "c"],
            current={"b": B, "c": C},
            live=frozenset({A, B, C}),
            match={},
            commit_index=10,
            once_admitted=once,
        )
        return None if planned is None else (planned.change.kind, planned.change.node_id)

    assert plan(frozenset()) == (ConfChangeKind.ADD_LEARNER, C)  # a new server: admitted
    assert plan(frozenset({C})) is None  # removed before: stays out
