"""Operators' membership requests, served on the Raft leader.

Theory of operation
-------------------
An operator's request (``AdminService``, on a node's Unix socket) arrives at
any node. ``MembershipAdmin.serve`` answers it where the Raft leader is:

* on a follower it is forwarded once to the leader it knows
  (``RaftPeerService/ForwardAdmin``, over the authenticated peer transport)
  and the leader's answer or refusal is relayed; with no leader known, or on
  a node that is not the leader any more when a forwarded request reaches
  it, the answer is UNAVAILABLE naming the leader it knows (never a second
  hop, so a request cannot loop);
* on the leader, ``list`` reads the core's membership, progress and
  CheckQuorum view; ``add``, ``promote`` and ``remove`` check what the
  operator asked (``members.py``, pure), then propose one single-server
  change through the log (``RaftNode.change_membership``: the core refuses
  a second change before the first commits, and a promotion of a learner
  that has not caught up) and answer once it has committed and applied here.

Removing the leader itself: the core refuses a leader's change of its own
membership, so the leader hands leadership to the most caught-up reachable
voter (TimeoutNow), waits until another node leads, and forwards the removal
to it. A removed server learns it from the hellos (``sidecar.membership``),
records it in its identity file and stops for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog

from sidecar.admin.members import check_name, removal_problem, resolve_member, transfer_target
from sidecar.membership import SEEN_FRESH_S, MembershipManager
from sidecar.node import NodeError, RaftNode
from sidecar.pb.raftsidecar.admin.v1 import admin_pb2
from sidecar.pb.raftsidecar.peer.v1 import peer_pb2
from sidecar.raft import ConfChange, ConfChangeKind, ConfChangeRejected, RaftError, Role
from sidecar.serverid import incarnation_of, node_name
from sidecar.transport.errors import AdminRefused
from sidecar.transport.forward import Forwarder

_log = structlog.get_logger("sidecar.admin")

COMMIT_WAIT_S = 10.0
"""How long a change may take to commit before the operator hears DEADLINE_EXCEEDED."""
TRANSFER_WAIT_S = 10.0
"""How long a leader about to be removed waits for another node to lead."""
FORWARD_TIMEOUT_S = 30.0
"""Deadline of a forwarded request (it may wait for a commit and a transfer)."""


class MembershipAdmin:
    """Serves ``peer_pb2.ForwardAdminRequest`` (the operator's request, whichever
    node received it); see the module docstring."""

    def __init__(
        self,
        node: RaftNode,
        manager: MembershipManager,
        forwarder: Forwarder,
        addresses: Mapping[str, str],
    ) -> None:
        self._node = node
        self._manager = manager
        self._forwarder = forwarder
        self._addresses = dict(addresses)
        """Peer addresses of the names configured in --peers."""
        self._busy = asyncio.Lock()
        """One operator change at a time on this node (the core enforces it
        cluster-wide; this keeps a transfer and its removal together)."""

    async def serve(
        self, request: peer_pb2.ForwardAdminRequest, *, forwarded: bool
    ) -> peer_pb2.ForwardAdminResponse:
        """Answer ``request`` here if this node leads, else forward it (once).

        Raises AdminRefused with the status code the operator sees.
        """
        kind = request.WhichOneof("request")
        if kind is None:
            raise AdminRefused("INVALID_ARGUMENT", "the request names no operation")
        _check(request)
        raft = self._node.raft
        if raft.role is not Role.LEADER:
            leader = raft.leader_id
            if leader is None:
                raise AdminRefused(
                    "UNAVAILABLE", f"{node_name(raft.id)} knows no Raft leader now; retry"
                )
            if forwarded:
                raise AdminRefused(
                    "UNAVAILABLE",
                    f"{node_name(raft.id)} is not the Raft leader (the leader is "
                    f"{node_name(leader)}); retry",
                )
            return await self._forwarder.admin(leader, request, FORWARD_TIMEOUT_S)
        if kind == "list_members":
            return peer_pb2.ForwardAdminResponse(list_members=self.list_members())
        async with self._busy:
            if kind == "add_member":
                added = await self._add(request.add_member.name)
                return peer_pb2.ForwardAdminResponse(add_member=added)
            if kind == "promote_member":
                promoted = await self._promote(request.promote_member.name)
                return peer_pb2.ForwardAdminResponse(promote_member=promoted)
            return await self._remove(request)

    # ---- list ----------------------------------------------------------------------

    def list_members(self) -> admin_pb2.ListMembersResponse:
        """The membership as this leader sees it."""
        raft = self._node.raft
        members = raft.membership.members
        visitors = []
        once_admitted = self._manager.once_admitted()
        for name, server in sorted(self._manager.current().items()):
            if server not in members:
                visitors.append(
                    admin_pb2.Visitor(
                        name=name,
                        incarnation=incarnation_of(server),
                        removed=server in once_admitted,
                    )
                )
        return admin_pb2.ListMembersResponse(
            leader=node_name(raft.id),
            term=raft.term,
            commit_index=raft.commit_index,
            members=[self._member(m) for m in sorted(members)],
            visitors=visitors,
        )

    def _member(self, server: str) -> admin_pb2.Member:
        raft = self._node.raft
        progress = raft.progress.get(server)
        if server == raft.id:
            match = raft.log.last_index
        else:
            match = progress.match if progress is not None else 0
        name = node_name(server)
        return admin_pb2.Member(
            name=name,
            incarnation=incarnation_of(server),
            role=admin_pb2.MEMBER_ROLE_VOTER
            if server in raft.membership.voters
            else admin_pb2.MEMBER_ROLE_LEARNER,
            address=self._addresses.get(name) or self._manager.addresses.get(name, ""),
            match_index=match,
            caught_up=match >= raft.commit_index,
            leader=server == raft.id,
            reachable=server in raft.recently_active(),
        )

    # ---- changes -------------------------------------------------------------------

    async def _add(self, name: str) -> admin_pb2.AddMemberResponse:
        raft = self._node.raft
        server = self._manager.current().get(name)
        if server is None:
            raise AdminRefused(
                "NOT_FOUND",
                f"no node named {name} has said hello in the last {SEEN_FRESH_S:.0f} s",
            )
        if server in raft.membership.members:
            raise AdminRefused("ALREADY_EXISTS", f"{server} is already a member")
        if server in self._manager.once_admitted():
            raise AdminRefused(
                "FAILED_PRECONDITION",
                f"{server} was removed from the cluster and never rejoins: wipe its data "
                "directory to make a new incarnation, then add that",
            )
        older = sorted(m for m in raft.membership.members if node_name(m) == name)
        if older:
            raise AdminRefused(
                "FAILED_PRECONDITION",
                f"{older[0]} (an older incarnation of {name}) is a member: remove it first",
            )
        index = await self._change(ConfChange(ConfChangeKind.ADD_LEARNER, server))
        return admin_pb2.AddMemberResponse(member=self._member(server), index=index)

    async def _promote(self, name: str) -> admin_pb2.PromoteMemberResponse:
        raft = self._node.raft
        server = resolve_member(raft.membership, name)
        if server in raft.membership.voters:
            raise AdminRefused("FAILED_PRECONDITION", f"{server} is already a voter")
        progress = raft.progress.get(server)
        match = progress.match if progress is not None else 0
        if match < raft.commit_index:
            raise AdminRefused(
                "FAILED_PRECONDITION",
                f"learner {server} has not caught up (match {match} < commit "
                f"{raft.commit_index}); promote it once `members list` shows it caught up",
            )
        index = await self._change(ConfChange(ConfChangeKind.PROMOTE_LEARNER, server))
        return admin_pb2.PromoteMemberResponse(member=self._member(server), index=index)

    async def _remove(self, request: peer_pb2.ForwardAdminRequest) -> peer_pb2.ForwardAdminResponse:
        raft = self._node.raft
        asked = request.remove_member
        server = resolve_member(raft.membership, asked.name)
        problem = removal_problem(raft.membership, server, raft.recently_active())
        if problem is not None and (not asked.force or raft.membership.voters == {server}):
            raise AdminRefused(
                "FAILED_PRECONDITION",
                f"{problem}: the cluster could stop committing; bring voters back, "
                "or pass --force to remove it anyway",
            )
        if server == raft.id:
            return await self._remove_self(request)
        index = await self._change(ConfChange(ConfChangeKind.REMOVE_NODE, server))
        removed = admin_pb2.RemoveMemberResponse(
            name=node_name(server),
            incarnation=incarnation_of(server),
            index=index,
            leader=node_name(raft.id),
        )
        return peer_pb2.ForwardAdminResponse(remove_member=removed)

    async def _remove_self(
        self, request: peer_pb2.ForwardAdminRequest
    ) -> peer_pb2.ForwardAdminResponse:
        """Hand leadership over, then have the new leader remove this server."""
        raft = self._node.raft
        me = raft.id
        match = {peer: pr.match for peer, pr in raft.progress.items()}
        target = transfer_target(raft.membership, me, match, raft.recently_active())
        if target is None:
            raise AdminRefused(
                "FAILED_PRECONDITION",
                f"{me} leads and no other voter is reachable to take over; it cannot be removed",
            )
        _log.warning("transferring_leadership", target=target, reason="operator removes the leader")
        self._node.transfer_leadership(target)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TRANSFER_WAIT_S
        while raft.role is Role.LEADER or raft.leader_id in (None, me):
            if loop.time() >= deadline:
                raise AdminRefused(
                    "UNAVAILABLE",
                    f"leadership did not move from {node_name(me)} within "
                    f"{TRANSFER_WAIT_S:.0f} s; nothing was removed; retry",
                )
            await asyncio.sleep(0.02)
        leader = raft.leader_id
        assert leader is not None
        forward = peer_pb2.ForwardAdminRequest()
        forward.remove_member.CopyFrom(request.remove_member)
        forward.remove_member.name = me  # exactly this incarnation
        answer = await self._forwarder.admin(leader, forward, FORWARD_TIMEOUT_S)
        answer.remove_member.leadership_transferred = True
        return answer

    async def _change(self, change: ConfChange) -> int:
        """Propose ``change`` and wait until it has committed and applied here;
        returns its index. Raises AdminRefused."""
        node = self._node
        try:
            # A new leader commits an entry of its own term before the core
            # takes a membership change; a read barrier waits for exactly that.
            await asyncio.wait_for(node.read_barrier(), COMMIT_WAIT_S)
            index = await node.change_membership(change)
            term = node.raft.term
        except ConfChangeRejected as exc:
            raise AdminRefused("FAILED_PRECONDITION", str(exc)) from exc
        except (RaftError, NodeError, TimeoutError) as exc:
            raise AdminRefused("UNAVAILABLE", f"not changed: {exc or 'no quorum'}; retry") from exc
        _log.warning(
            "membership_change_proposed",
            change=change.kind.value,
            server=change.node_id,
            index=index,
            reason="asked by an operator (raft-sidecar members)",
            by="operator",
        )
        try:
            await asyncio.wait_for(node.wait_applied(index), COMMIT_WAIT_S)
        except TimeoutError as exc:
            raise AdminRefused(
                "DEADLINE_EXCEEDED",
                f"the change is at log index {index} but did not commit within "
                f"{COMMIT_WAIT_S:.0f} s; see `members list`",
            ) from exc
        except NodeError as exc:
            raise AdminRefused("UNAVAILABLE", f"the node stopped: {exc}") from exc
        applied_term = node.raft.log.term(index)
        if applied_term is not None and applied_term != term:
            raise AdminRefused("UNAVAILABLE", "leadership changed and the change was lost; retry")
        return index


def _check(request: peer_pb2.ForwardAdminRequest) -> None:
    """Refuse a bad name before anything is forwarded or proposed."""
    kind = request.WhichOneof("request")
    if kind == "add_member":
        check_name(request.add_member.name, incarnation_allowed=False)
    elif kind == "promote_member":
        check_name(request.promote_member.name)
    elif kind == "remove_member":
        check_name(request.remove_member.name)
