"""``ElectionService``: the worker API, on top of the node and the elections state.

Theory of operation. Writes (Campaign, Resign) become elections commands,
proposed through the Raft leader and answered once applied. A queued
Campaign then waits, until the call's deadline, for the apply that grants it.
Reads (Leader, ListGrants, Status) answer from the local applied state;
ValidateToken first passes a ReadIndex barrier, so its answer is
linearizable. Every refusal is a gRPC status with a one-line message, mapped
here and only here; no stack trace ever reaches a worker, and a refused
request changes no state.

Any sidecar serves any call: a follower forwards writes and read barriers to
the Raft leader (sidecar.transport.forward) and answers from its own applied
state. UNAVAILABLE means no leader is known or reachable right now; the
worker's client library retries. Leases: see KeepAlive and sidecar.leases.
Observe streams an election's holder changes as this sidecar applies them,
through a bounded per-stream queue (see Observe).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
import structlog

from sidecar.config import SidecarConfig
from sidecar.elections import (
    ApplyResult,
    Campaign,
    ElectionsError,
    EndReason,
    Grant,
    InvalidArgument,
    Outcome,
    RejectReason,
    Resign,
    Revoke,
    encode_command,
    validate_name,
    validate_token,
    validate_ttl_ms,
)
from sidecar.leases import LeaseKeeper
from sidecar.machine import ElectionsMachine, SkippedEntry
from sidecar.node import InvalidProposal, NodeError, Overloaded, RaftNode
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc
from sidecar.raft import NotLeader, RaftError, Role
from sidecar.serverid import node_name
from sidecar.transport.errors import ForwardInvalid, TransportError

_log = structlog.get_logger("sidecar.api")

_ROLES = {
    Role.FOLLOWER: worker_pb2.RAFT_ROLE_FOLLOWER,
    Role.PRE_CANDIDATE: worker_pb2.RAFT_ROLE_PRE_CANDIDATE,
    Role.CANDIDATE: worker_pb2.RAFT_ROLE_CANDIDATE,
    Role.LEADER: worker_pb2.RAFT_ROLE_LEADER,
}

_END_REASONS = {
    EndReason.RESIGNED: worker_pb2.GRANT_END_REASON_RESIGNED,
    EndReason.EXPIRED: worker_pb2.GRANT_END_REASON_EXPIRED,
    EndReason.REVOKED: worker_pb2.GRANT_END_REASON_REVOKED,
}

OBSERVE_QUEUE_SIZE = 256
"""Changes buffered per Observe stream; an observer that falls further behind
is cut off with RESOURCE_EXHAUSTED instead of growing this process's memory."""

OBSERVE_RESYNC_SECONDS = 1.0
"""How often an idle Observe stream compares its last event with the applied
state, to catch a holder change that arrived inside a Raft snapshot (which
replaces the state without calling the apply listeners)."""

T = TypeVar("T")


class _Abort(Exception):
    def __init__(self, code: Any, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _now_ms() -> int:
    return int(time.time() * 1000)


def _token(grant: Grant) -> worker_pb2.LeadershipToken:
    return worker_pb2.LeadershipToken(
        election=grant.election,
        candidate_id=grant.holder,
        fencing_token=grant.token,
        ttl_ms=grant.ttl_ms,
        granted_at_index=grant.granted_index,
    )


class ElectionService(worker_pb2_grpc.ElectionServiceServicer):
    def __init__(
        self, config: SidecarConfig, node: RaftNode, machine: ElectionsMachine, leases: LeaseKeeper
    ) -> None:
        self._config = config
        self._node = node
        self._machine = machine
        self._leases = leases
        self._background: set[asyncio.Task[None]] = set()
        self._local_grants: set[tuple[str, int]] = set()
        """Grants kept alive by streams on this sidecar: its own workers'."""
        self._grant_waiters: dict[tuple[str, str], list[asyncio.Future[Grant]]] = {}
        machine.listeners.append(self._on_apply)

    # ---- plumbing ------------------------------------------------------------------

    def _on_apply(self, result: ApplyResult) -> None:
        granted = result.granted
        if granted is None:
            return
        for waiter in self._grant_waiters.pop((granted.election, granted.holder), []):
            if not waiter.done():
                waiter.set_result(granted)

    async def _guard(self, context: Any, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call``, turning every refusal into a status with a clear message."""
        try:
            return await call()
        except _Abort as abort:
            await context.abort(abort.code, abort.message)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotLeader as exc:
            hint = exc.leader_hint or "unknown (an election is under way)"
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"this sidecar is not the Raft leader; leader: {hint}"
            )
        except (InvalidProposal, ForwardInvalid) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except (NodeError, RaftError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"try again: {exc}")
        except ElectionsError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except TransportError as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"the Raft leader is unreachable: {exc}"
            )
        raise AssertionError("unreachable: context.abort raises")

    async def _propose(self, command: Any) -> ApplyResult:
        index, result = await self._node.submit(encode_command(command))
        if isinstance(result, SkippedEntry):
            # Only a build that encodes what it cannot decode gets here.
            raise _Abort(grpc.StatusCode.INTERNAL, f"entry {index} did not decode and was skipped")
        if not isinstance(result, ApplyResult):
            raise AssertionError(f"unexpected apply result {result!r}")
        return result

    @staticmethod
    def _check_rejection(result: ApplyResult) -> None:
        if result.outcome is not Outcome.REJECTED:
            return
        reason = result.reason
        if reason is RejectReason.UNKNOWN_ELECTION:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"no election named {result.election!r}")
        if reason in (RejectReason.QUEUE_FULL, RejectReason.TOO_MANY_ELECTIONS):
            raise _Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{reason.value} for {result.election!r}"
            )
        raise _Abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{reason.value if reason else 'rejected'}: the token is not the current holder's",
        )

    # ---- RPCs ----------------------------------------------------------------------

    async def Campaign(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def call() -> Any:
            command = Campaign(
                election=validate_name("election", request.election),
                candidate=validate_name("candidate_id", request.candidate_id),
                ttl_ms=validate_ttl_ms(
                    request.ttl_ms,
                    min_ttl_ms=self._config.ttl_min_ms,
                    max_ttl_ms=self._config.ttl_max_ms,
                ),
                proposed_at_unix_ms=_now_ms(),
            )
            key = (command.election, command.candidate)
            waiter: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
            self._grant_waiters.setdefault(key, []).append(waiter)
            try:
                result = await self._propose(command)
                self._check_rejection(result)
                if result.outcome in (Outcome.GRANTED, Outcome.ALREADY_HOLDER) and result.holder:
                    return worker_pb2.CampaignResponse(token=_token(result.holder))
                remaining = context.time_remaining()
                try:
                    grant = await asyncio.wait_for(asyncio.shield(waiter), remaining)
                except TimeoutError:
                    raise _Abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"{command.candidate} is queued for {command.election!r} "
                        f"(position {result.queue_position}); not granted before the deadline",
                    ) from None
                return worker_pb2.CampaignResponse(token=_token(grant))
            finally:
                waiters = self._grant_waiters.get(key, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._grant_waiters.pop(key, None)

        return await self._guard(context, call)

    async def Resign(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def call() -> Any:
            command = Resign(
                election=validate_name("election", request.election),
                token=validate_token(request.fencing_token),
                proposed_at_unix_ms=_now_ms(),
            )
            result = await self._propose(command)
            self._check_rejection(result)
            return worker_pb2.ResignResponse(ended_at_index=result.index)

        return await self._guard(context, call)

    async def Leader(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def call() -> Any:
            election = validate_name("election", request.election)
            grant = self._machine.state.holder(election)
            if grant is None:
                return worker_pb2.LeaderResponse()
            return worker_pb2.LeaderResponse(
                holder=_token(grant), remaining_ms=self._leases.remaining_ms(election, grant.token)
            )

        return await self._guard(context, call)

    async def ValidateToken(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def call() -> Any:
            election = validate_name("election", request.election)
            token = validate_token(request.fencing_token)
            await self._node.read_anywhere()
            grant = self._machine.state.holder(election)
            current = grant.token if grant is not None else 0
            return worker_pb2.ValidateTokenResponse(valid=current == token, current_token=current)

        return await self._guard(context, call)

    async def Status(self, request: Any, context: Any) -> Any:  # noqa: N802
        raft = self._node.raft
        membership = raft.membership
        peers = []
        for peer_id in sorted(membership.members):
            progress = raft.progress.get(peer_id)
            peers.append(
                worker_pb2.Peer(
                    id=node_name(peer_id),
                    address=self._config.peers.get(node_name(peer_id), ""),
                    match_index=progress.match if progress else 0,
                    role=worker_pb2.PEER_ROLE_VOTER
                    if peer_id in membership.voters
                    else worker_pb2.PEER_ROLE_LEARNER,
                )
            )
        return worker_pb2.StatusResponse(
            node_id=node_name(raft.id),
            role=_ROLES[raft.role],
            term=raft.term,
            commit_index=raft.commit_index,
            applied_index=raft.applied_index,
            leader_id=node_name(raft.leader_id) if raft.leader_id else "",
            peers=peers,
        )

    async def KeepAlive(  # noqa: N802
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        """Renew leases on the Raft leader's clock for as long as the stream lives.

        A keep-alive that cannot reach a leader right now (an election is
        under way) gets no answer: the worker's safe deadline keeps running
        down from its last acknowledged one, and the new leader will extend
        every lease by a full TTL. A token that is no longer current ends the
        stream with FAILED_PRECONDITION. When the stream ends for any reason,
        the worker is gone: every grant it kept alive is revoked at once.
        """
        kept: dict[str, int] = {}
        try:
            async for request in request_iterator:
                try:
                    election = validate_name("election", request.election)
                    token = validate_token(request.fencing_token)
                except InvalidArgument as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                try:
                    current, remaining_ms = await self._renew(election, token)
                except (NodeError, RaftError, TransportError):
                    continue
                if not current:
                    kept.pop(election, None)
                    await context.abort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"token {token} no longer holds {election!r}: stop acting as its leader",
                    )
                if kept.get(election) not in (None, token):
                    self._local_grants.discard((election, kept[election]))
                kept[election] = token
                self._local_grants.add((election, token))
                yield worker_pb2.KeepAliveResponse(
                    sequence=request.sequence, remaining_ttl_ms=remaining_ms
                )
        finally:
            for election, token in sorted(kept.items()):
                self._local_grants.discard((election, token))
                task = asyncio.get_running_loop().create_task(self._revoke(election, token))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def release_local_grants(self, timeout_s: float = 2.0) -> None:
        """On shutdown: end every grant this sidecar's workers hold, and wait for it.

        A pod going away takes its worker with it; revoking now (rather than
        when the keep-alive streams are torn down with the server, too late
        for the proposal to commit) hands each election to the next candidate
        at once instead of after a TTL.
        """
        grants = sorted(self._local_grants)
        self._local_grants.clear()
        if not grants:
            return
        revokes = [self._revoke(election, token) for election, token in grants]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*revokes), timeout_s)

    async def _renew(self, election: str, token: int) -> tuple[bool, int]:
        if self._node.raft.role is Role.LEADER:
            return await self._leases.renew(election, token)
        leader = self._node.raft.leader_id
        if leader is None or self._node.forwarder is None:
            raise NotLeader(leader)
        return await self._node.forwarder.renew_lease(leader, election, token)

    async def _revoke(self, election: str, token: int) -> None:
        command = Revoke(
            election=election,
            token=token,
            proposed_at_unix_ms=_now_ms(),
            reason="the worker's keep-alive stream ended",
        )
        try:
            result = await self._propose(command)
            _log.info(
                "lease_revoked",
                election=election,
                fencing_token=token,
                outcome=result.outcome.value,
            )
        except (NodeError, RaftError, TransportError) as exc:
            # The lease then runs out on the leader's clock instead.
            _log.warning("revoke_failed", election=election, fencing_token=token, error=str(exc))

    async def Observe(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        """Stream an election's holder changes as this sidecar applies them.

        The first message is the election's current state here: the holder
        (empty when none), its token, the lease time left as known on this
        node (0 on followers) and ``applied_index`` = this node's last applied
        index. Then one message per applied command that changed the holder
        (grant, handover, resign, revoke, expire), carrying that command's
        index, in log order, until the client cancels. Each stream has a
        bounded queue: an observer that falls OBSERVE_QUEUE_SIZE changes
        behind is ended with RESOURCE_EXHAUSTED and must re-subscribe (its
        first message then resynchronises it). A holder change that reaches
        this node inside a Raft snapshot is reported, once noticed, with the
        snapshot's applied index.
        """
        try:
            election = validate_name("election", request.election)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        queue: asyncio.Queue[ApplyResult] = asyncio.Queue(maxsize=OBSERVE_QUEUE_SIZE)
        overflowed = False
        getter: asyncio.Future[ApplyResult] | None = None

        def listener(result: ApplyResult) -> None:
            nonlocal overflowed
            if overflowed or result.election != election or not result.holder_changed:
                return
            try:
                queue.put_nowait(result)
            except asyncio.QueueFull:
                overflowed = True

        # Registering and reading the state happen in one turn of the event
        # loop: every change after this snapshot reaches the queue.
        self._machine.listeners.append(listener)
        try:
            state = self._machine.state
            current = state.holder(election)
            yield self._change(election, current, state.last_applied)
            last_token = current.token if current is not None else 0
            while True:
                # Not asyncio.wait_for: on Python 3.11 it can swallow a
                # cancellation (the client going away) that races with the get.
                if getter is None:
                    getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter}, timeout=OBSERVE_RESYNC_SECONDS)
                if overflowed:
                    break
                if not done:
                    state = self._machine.state
                    current = state.holder(election)
                    token = current.token if current is not None else 0
                    if token != last_token:  # changed inside a snapshot
                        last_token = token
                        yield self._change(election, current, state.last_applied)
                    continue
                result, getter = getter.result(), None
                last_token = result.holder.token if result.holder is not None else 0
                yield self._change(election, result.holder, result.index)
        finally:
            if getter is not None:
                getter.cancel()
            with contextlib.suppress(ValueError):
                self._machine.listeners.remove(listener)
        _log.warning("observer_too_slow", election=election, queue_size=OBSERVE_QUEUE_SIZE)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "observer too slow; re-subscribe")

    def _change(self, election: str, holder: Grant | None, index: int) -> Any:
        if holder is None:
            change = worker_pb2.LeadershipChange(election=election, applied_index=index)
        else:
            change = worker_pb2.LeadershipChange(
                election=election,
                holder=holder.holder,
                fencing_token=holder.token,
                remaining_ms=self._leases.remaining_ms(election, holder.token),
                applied_index=index,
            )
        return worker_pb2.ObserveResponse(change=change)

    async def ListGrants(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def call() -> Any:
            election = validate_name("election", request.election)
            limit = min(request.max_records or 100, 1000)
            records = self._machine.state.audit(
                election, after_token=request.after_fencing_token, limit=limit + 1
            )
            grants = [
                worker_pb2.GrantRecord(
                    fencing_token=r.token,
                    holder=r.holder,
                    granted_at_index=r.granted_index,
                    ended_at_index=r.ended_index or 0,
                    granted_at_unix_ms=r.granted_at_unix_ms,
                    ended_at_unix_ms=r.ended_at_unix_ms or 0,
                    end_reason=_END_REASONS[r.end_reason]
                    if r.end_reason is not None
                    else worker_pb2.GRANT_END_REASON_UNSPECIFIED,
                )
                for r in records[:limit]
            ]
            return worker_pb2.ListGrantsResponse(grants=grants, more=len(records) > limit)

        return await self._guard(context, call)
