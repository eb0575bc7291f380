"""MembershipAdmin on a real Raft core (tests/unit/cluster.py, no I/O): where a
request is answered, and how the core's refusals reach the operator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.admin.operator import MembershipAdmin
from sidecar.pb.raftsidecar.admin.v1 import admin_pb2
from sidecar.pb.raftsidecar.peer.v1 import peer_pb2
from sidecar.raft import ConfChange, ConfChangeKind, Raft
from sidecar.transport.errors import AdminRefused
from tests.unit.cluster import Cluster


class CoreNode:
    """The parts of RaftNode the operator uses, over a core the test drives."""

    def __init__(self, cluster: Cluster, node_id: str) -> None:
        self.cluster, self.node_id = cluster, node_id

    @property
    def raft(self) -> Raft:
        return self.cluster[self.node_id]

    async def read_barrier(self) -> int:
        return self.raft.commit_index

    async def change_membership(self, change: ConfChange) -> int:
        index = self.raft.propose_conf_change(change)
        self.cluster.process_ready(self.node_id)
        return index

    async def wait_applied(self, index: int) -> None:
        self.cluster.deliver_all()
        assert self.raft.applied_index >= index


class NoHellos:
    addresses: dict[str, str] = {}

    def current(self) -> dict[str, str]:
        return {}

    def once_admitted(self) -> frozenset[str]:
        return frozenset()


class NoForwarding:
    async def admin(self, leader: str, request: Any, timeout_s: float) -> Any:
        raise AdminRefused("UNAVAILABLE", f"would forward to {leader}")


def serve(node: CoreNode, forwarded: bool = False, **request: Any) -> Any:
    admin = MembershipAdmin(node, NoHellos(), NoForwarding(), {})  # type: ignore[arg-type]
    return asyncio.run(admin.serve(peer_pb2.ForwardAdminRequest(**request), forwarded=forwarded))


def refusal(node: CoreNode, forwarded: bool = False, **request: Any) -> AdminRefused:
    with pytest.raises(AdminRefused) as caught:
        serve(node, forwarded, **request)
    return caught.value


@pytest.fixture
def cluster() -> Cluster:
    c = Cluster(4, voters=["a", "b", "c"], learners=["d"])
    c.elect("a")
    c.deliver_all()
    return c


def test_a_second_change_before_the_first_commits_is_failed_precondition(cluster: Cluster) -> None:
    cluster["a"].propose_conf_change(ConfChange(ConfChangeKind.REMOVE_NODE, "d"))
    cluster.process_ready("a")  # appended, not delivered: not committed
    refused = refusal(CoreNode(cluster, "a"), remove_member=admin_pb2.RemoveMemberRequest(name="c"))
    assert refused.code == "FAILED_PRECONDITION"
    assert "another membership change is not yet committed" in str(refused)
    assert cluster["a"].membership.voters == {"a", "b", "c"}


def test_a_learner_behind_the_commit_index_is_not_promoted(cluster: Cluster) -> None:
    cluster.isolate("d")
    cluster.propose("a", b"x")
    cluster.deliver_all()
    refused = refusal(
        CoreNode(cluster, "a"), promote_member=admin_pb2.PromoteMemberRequest(name="d")
    )
    assert refused.code == "FAILED_PRECONDITION" and "has not caught up" in str(refused)
    cluster.heal()
    cluster.tick_all(5)
    answer = serve(CoreNode(cluster, "a"), promote_member=admin_pb2.PromoteMemberRequest(name="d"))
    assert answer.promote_member.member.role == admin_pb2.MEMBER_ROLE_VOTER
    assert cluster["a"].membership.voters == {"a", "b", "c", "d"}


def test_a_follower_forwards_once_and_a_forwarded_request_is_never_forwarded_again(
    cluster: Cluster,
) -> None:
    listing = {"list_members": admin_pb2.ListMembersRequest()}
    assert "would forward to a" in str(refusal(CoreNode(cluster, "b"), **listing))
    again = refusal(CoreNode(cluster, "b"), forwarded=True, **listing)
    assert again.code == "UNAVAILABLE" and "the leader is a" in str(again)
    answer = serve(CoreNode(cluster, "a"), **listing).list_members
    assert answer.leader == "a"
    assert [(m.name, m.role) for m in answer.members] == [
        ("a", admin_pb2.MEMBER_ROLE_VOTER),
        ("b", admin_pb2.MEMBER_ROLE_VOTER),
        ("c", admin_pb2.MEMBER_ROLE_VOTER),
        ("d", admin_pb2.MEMBER_ROLE_LEARNER),
    ]


def test_a_node_without_a_leader_answers_unavailable() -> None:
    c = Cluster(3)
    refused = refusal(CoreNode(c, "a"), list_members=admin_pb2.ListMembersRequest())
    assert refused.code == "UNAVAILABLE" and "knows no Raft leader" in str(refused)
