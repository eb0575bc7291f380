"""``ElectionService``: the worker API, on top of the node and the elections state.

Theory of operation. Writes (Campaign, Resign) become elections commands,
proposed through the Raft leader and answered once applied. Reads (Leader,
ListGrants, Status) answer from the local applied state; ValidateToken first
passes a ReadIndex barrier, so its answer is linearizable. Elections exist by
name: a read of an election nobody campaigned for answers OK with no holder.
Every refusal is an ``ApiError`` (sidecar.api.errors): a status code plus a
``google.rpc.ErrorInfo`` with a stable reason, mapped here and only here; no
stack trace ever reaches a worker, and a refused request changes no state.

Lease keys. Campaign takes the worker's secret lease key (or makes one with
``secrets``: randomness lives here, never in the state machine) and proposes
only its SHA-256 digest; the key goes back to the worker in the Campaign
stream and nowhere else: not into the log, a snapshot, a log line, an error
or a metric. Resign proposes the digest of the key it is given, and the state
machine checks it; KeepAlive checks it against this node's applied state
(sidecar.api.keepalive).

Campaign streams where the candidate stands: ``queued`` at once (and when
its position changes), then ``granted``. A caller that goes away while queued
(deadline, cancel, lost connection) is withdrawn through the log (Withdraw),
unless another live Campaign call on this sidecar waits for the same place;
a live call whose place was withdrawn by another call's end campaigns again.

Any sidecar serves any call: a follower forwards writes and read barriers to
the Raft leader (sidecar.transport.forward) and answers from its own applied
state. UNAVAILABLE means no leader is known or reachable right now; the
worker's client library retries. Observe streams an election's holder
changes as this sidecar applies them, through a bounded per-stream queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from sidecar.api import errors
from sidecar.api.errors import ApiError, invalid_field
from sidecar.api.keepalive import KeepAlives, now_ms
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
    Withdraw,
    encode_command,
    lease_key_digest,
    validate_lease_key,
    validate_name,
    validate_token,
    validate_ttl_ms,
)
from sidecar.leases import LeaseKeeper
from sidecar.machine import ElectionsMachine, SkippedEntry
from sidecar.node import InvalidProposal, NodeError, Overloaded, RaftNode
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc
from sidecar.raft import Membership, NotLeader, RaftError, Role
from sidecar.serverid import incarnation_of, node_name
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

_RESIGN_OUTCOMES = {
    Outcome.RESIGNED: worker_pb2.RESIGN_OUTCOME_RESIGNED,
    Outcome.ALREADY_RESIGNED: worker_pb2.RESIGN_OUTCOME_ALREADY_RESIGNED,
    Outcome.LEFT_QUEUE: worker_pb2.RESIGN_OUTCOME_LEFT_QUEUE,
}

_REJECTIONS = {
    RejectReason.LEASE_NOT_FOUND: errors.LEASE_NOT_FOUND,
    RejectReason.LEASE_KEY_MISMATCH: errors.LEASE_KEY_MISMATCH,
    RejectReason.LEASE_ENDED: errors.LEASE_ENDED,
    RejectReason.CANDIDATE_ID_IN_USE: errors.CANDIDATE_ID_IN_USE,
    RejectReason.LEASE_KEY_IN_USE: errors.LEASE_KEY_IN_USE,
    RejectReason.QUEUE_FULL: errors.QUEUE_FULL,
    RejectReason.TOO_MANY_ELECTIONS: errors.TOO_MANY_ELECTIONS,
}

_REJECTION_TEXT = {
    RejectReason.LEASE_NOT_FOUND: "this lease key holds no grant or queue place here, "
    "and no kept grant has this token",
    RejectReason.LEASE_KEY_MISMATCH: "the lease key is not the key of this grant",
    RejectReason.LEASE_ENDED: "the grant has ended (expired or revoked): stop acting as leader",
    RejectReason.CANDIDATE_ID_IN_USE: "the candidate id holds or waits under another lease key",
    RejectReason.LEASE_KEY_IN_USE: "another candidate holds or waits with this lease key",
    RejectReason.QUEUE_FULL: "the queue is full",
    RejectReason.TOO_MANY_ELECTIONS: "too many active elections",
}

OBSERVE_QUEUE_SIZE = 256
"""Changes buffered per Observe stream; an observer that falls further behind
is cut off with RESOURCE_EXHAUSTED instead of growing this process's memory."""
OBSERVE_RESYNC_SECONDS = 1.0
"""How often an idle Observe stream compares its last event with the applied
state, to catch a holder change that arrived inside a Raft snapshot (which
replaces the state without calling the apply listeners)."""
CAMPAIGN_RESYNC_SECONDS = 1.0
"""How often a queued Campaign re-reads its position without an apply (snapshots)."""

T = TypeVar("T")


def _member_role(membership: Membership, server: str) -> Any:
    if server in membership.voters:
        return worker_pb2.PEER_ROLE_VOTER
    if server in membership.learners:
        return worker_pb2.PEER_ROLE_LEARNER
    return worker_pb2.PEER_ROLE_UNSPECIFIED


def _token(grant: Grant) -> worker_pb2.LeadershipToken:
    return worker_pb2.LeadershipToken(
        election=grant.election,
        candidate_id=grant.holder,
        fencing_token=grant.token,
        ttl_ms=grant.ttl_ms,
        granted_at_index=grant.granted_index,
    )


def _invalid(exc: InvalidArgument, config: SidecarConfig | None) -> ApiError:
    if exc.field == "ttl_ms" and config is not None:
        return ApiError(
            errors.TTL_OUT_OF_RANGE,
            str(exc),
            field="ttl_ms",
            min_ttl_ms=config.ttl_min_ms,
            max_ttl_ms=config.ttl_max_ms,
        )
    return invalid_field(exc.field, str(exc))


def _rejection(result: ApplyResult) -> ApiError:
    reason = result.reason
    if reason is None:
        raise AssertionError(f"rejected without a reason: {result!r}")
    return ApiError(
        _REJECTIONS[reason], f"{_REJECTION_TEXT[reason]} (election {result.election!r})"
    )


@dataclass
class _Waiting:
    """What the applies told one queued Campaign call about its candidate."""

    changed: asyncio.Event = field(default_factory=asyncio.Event)
    granted: Grant | None = None
    left: Outcome | None = None


class ElectionService(worker_pb2_grpc.ElectionServiceServicer):
    def __init__(
        self, config: SidecarConfig, node: RaftNode, machine: ElectionsMachine, leases: LeaseKeeper
    ) -> None:
        self._config = config
        self._node = node
        self._machine = machine
        self._leases = leases
        self._background: set[asyncio.Task[None]] = set()
        self._campaigners: dict[tuple[str, str], int] = {}
        """Live Campaign calls per (election, candidate) on this sidecar."""
        self._keep_alives = KeepAlives(
            machine,
            self._renew,
            self._propose,
            self._read_anywhere,
            grace_cap_ms=config.keepalive_grace_ms,
        )

    # ---- plumbing ------------------------------------------------------------------

    async def _guard(self, context: Any, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call``, turning every refusal into a status with ErrorInfo."""
        try:
            return await call()
        except ApiError as error:
            await error.abort(context)

    @staticmethod
    def _translate(exc: Exception) -> ApiError:
        """The one mapping from the node's, transport's and state's exceptions to errors."""
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, NotLeader):
            hint = exc.leader_hint or "unknown (an election is under way)"
            return ApiError(
                errors.NO_LEADER, f"this sidecar is not the Raft leader; leader: {hint}"
            )
        if isinstance(exc, InvalidProposal | ForwardInvalid):
            return invalid_field("command", str(exc))
        if isinstance(exc, Overloaded):
            return ApiError(errors.OVERLOADED, str(exc))
        if isinstance(exc, NodeError | RaftError):
            return ApiError(errors.NODE_UNAVAILABLE, f"try again: {exc}")
        if isinstance(exc, InvalidArgument):
            return invalid_field(exc.field, str(exc))
        if isinstance(exc, ElectionsError):
            return invalid_field("command", str(exc))
        if isinstance(exc, TransportError):
            return ApiError(errors.NO_LEADER, f"the Raft leader is unreachable: {exc}")
        raise exc

    async def _propose(self, command: Any) -> ApplyResult:
        """Propose and wait until applied here. Raises ApiError (and nothing else expected)."""
        try:
            index, result = await self._node.submit(encode_command(command))
        except (NodeError, RaftError, TransportError, ElectionsError) as exc:
            raise self._translate(exc) from None
        if isinstance(result, SkippedEntry):
            # Only a build that encodes what it cannot decode gets here.
            raise ApiError(
                errors.UNDECODABLE_ENTRY, f"entry {index} did not decode and was skipped"
            )
        if not isinstance(result, ApplyResult):
            raise AssertionError(f"unexpected apply result {result!r}")
        return result

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- Campaign ------------------------------------------------------------------

    def _campaign_command(self, request: Any) -> tuple[Campaign, str]:
        """The command and the lease key (the request's, or a new one). Raises ApiError."""
        try:
            key = (
                validate_lease_key(request.lease_key)
                if request.lease_key
                else secrets.token_urlsafe(32)
            )
            command = Campaign(
                election=validate_name("election", request.election),
                candidate=validate_name("candidate_id", request.candidate_id),
                ttl_ms=validate_ttl_ms(
                    request.ttl_ms,
                    min_ttl_ms=self._config.ttl_min_ms,
                    max_ttl_ms=self._config.ttl_max_ms,
                ),
                key_digest=lease_key_digest(key),
                proposed_at_unix_ms=now_ms(),
            )
        except InvalidArgument as exc:
            raise _invalid(exc, self._config) from None
        return command, key

    async def Campaign(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        """Queue, report the position, grant; withdraw the place if the caller goes away."""
        try:
            command, key = self._campaign_command(request)
        except ApiError as error:
            await error.abort(context)
        election, candidate, digest = command.election, command.candidate, command.key_digest
        waiting = _Waiting()

        def listener(result: ApplyResult) -> None:
            if result.election != election:
                return
            granted = result.granted
            if granted is not None and granted.holder == candidate:
                if granted.key_digest == digest:
                    waiting.granted = granted
            elif result.candidate == candidate and result.outcome in (
                Outcome.LEFT_QUEUE,
                Outcome.WITHDRAWN,
            ):
                waiting.left = result.outcome
            waiting.changed.set()

        place = (election, candidate)
        self._machine.listeners.append(listener)
        self._campaigners[place] = self._campaigners.get(place, 0) + 1
        granted = False
        try:
            position = 0
            while not granted:
                waiting.left = None
                result = await self._propose(command)
                if result.rejected:
                    raise _rejection(result)
                if result.outcome in (Outcome.GRANTED, Outcome.ALREADY_HOLDER) and result.holder:
                    waiting.granted = result.holder
                while waiting.granted is None:
                    holder = self._machine.state.holder(election)
                    if holder is not None and (holder.holder, holder.key_digest) == (
                        candidate,
                        digest,
                    ):
                        # Granted without an apply here to say so: the grant
                        # reached this node inside a snapshot.
                        waiting.granted = holder
                        break
                    now = self._position(election, candidate, digest)
                    if waiting.left is Outcome.LEFT_QUEUE or (now is None and not waiting.left):
                        raise ApiError(
                            errors.LEASE_ENDED,
                            f"{candidate} no longer waits for {election!r}: its queue place "
                            "was given up with its lease key",
                        )
                    if now is None:  # withdrawn as another call on its place ended
                        break
                    if now != position:
                        position = now
                        yield worker_pb2.CampaignResponse(
                            queued=worker_pb2.CampaignQueued(position=position, lease_key=key)
                        )
                    waiting.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiting.changed.wait(), CAMPAIGN_RESYNC_SECONDS)
                grant = waiting.granted
                if grant is not None:
                    granted = True
                    yield worker_pb2.CampaignResponse(
                        granted=worker_pb2.CampaignGranted(token=_token(grant), lease_key=key)
                    )
        except ApiError as error:
            await error.abort(context)
        finally:
            with contextlib.suppress(ValueError):
                self._machine.listeners.remove(listener)
            left = self._campaigners.get(place, 1) - 1
            if left:
                self._campaigners[place] = left
            else:
                self._campaigners.pop(place, None)
                if not granted and self._position(election, candidate, digest) is not None:
                    self._spawn(self._withdraw(election, candidate))

    def _position(self, election: str, candidate: str, digest: str) -> int | None:
        """1-based queue place of (candidate, key) as applied here; None if not queued."""
        for place, queued in enumerate(self._machine.state.queue(election), start=1):
            if queued.candidate == candidate:
                return place if queued.key_digest == digest else None
        return None

    async def _withdraw(self, election: str, candidate: str) -> None:
        command = Withdraw(election=election, candidate=candidate, proposed_at_unix_ms=now_ms())
        try:
            result = await self._propose(command)
            _log.info(
                "candidate_withdrawn",
                election=election,
                candidate=candidate,
                outcome=result.outcome.value,
            )
        except ApiError as error:
            # The place is then granted in its turn and expires after a TTL.
            _log.warning(
                "withdraw_failed", election=election, candidate=candidate, error=error.message
            )

    # ---- Resign, reads -------------------------------------------------------------

    async def Resign(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def call() -> Any:
            try:
                command = Resign(
                    election=validate_name("election", request.election),
                    key_digest=lease_key_digest(request.lease_key),
                    token=validate_token(request.fencing_token) if request.fencing_token else None,
                    proposed_at_unix_ms=now_ms(),
                )
            except InvalidArgument as exc:
                raise _invalid(exc, self._config) from None
            result = await self._propose(command)
            if result.rejected:
                raise _rejection(result)
            ended_at = result.index
            if result.outcome is Outcome.ALREADY_RESIGNED and result.ended is not None:
                ended_at = result.ended.ended_index or result.index
            return worker_pb2.ResignResponse(
                ended_at_index=ended_at, outcome=_RESIGN_OUTCOMES[result.outcome]
            )

        return await self._guard(context, call)

    def _lease_fields(self, election: str, grant: Grant | None) -> dict[str, Any]:
        remaining = None if grant is None else self._leases.remaining_ms(election, grant.token)
        if remaining is None:
            return {"lease_known": False, "lease_remaining_ms": 0}
        return {"lease_known": True, "lease_remaining_ms": remaining}

    async def Leader(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def call() -> Any:
            election = self._name(request.election)
            grant = self._machine.state.holder(election)
            if grant is None:
                return worker_pb2.LeaderResponse()
            return worker_pb2.LeaderResponse(
                holder=_token(grant), **self._lease_fields(election, grant)
            )

        return await self._guard(context, call)

    @staticmethod
    def _name(value: str) -> str:
        try:
            return validate_name("election", value)
        except InvalidArgument as exc:
            raise invalid_field(exc.field, str(exc)) from None

    async def ValidateToken(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def call() -> Any:
            election = self._name(request.election)
            try:
                token = validate_token(request.fencing_token)
                await self._node.read_anywhere()
            except (InvalidArgument, NodeError, RaftError, TransportError) as exc:
                raise self._translate(exc) from None
            grant = self._machine.state.holder(election)
            current = grant.token if grant is not None else 0
            return worker_pb2.ValidateTokenResponse(valid=current == token, current_token=current)

        return await self._guard(context, call)

    async def Status(self, request: Any, context: Any) -> Any:  # noqa: N802
        raft = self._node.raft
        membership = raft.membership
        peers = []
        for peer_id in sorted(membership.members):
            if peer_id == raft.id:
                continue
            progress = raft.progress.get(peer_id) if raft.role is Role.LEADER else None
            peers.append(
                worker_pb2.Peer(
                    id=node_name(peer_id),
                    address=self._config.peers.get(node_name(peer_id), ""),
                    match_index=progress.match if progress else 0,
                    role=_member_role(membership, peer_id),
                    incarnation=incarnation_of(peer_id),
                    caught_up=progress is not None and progress.match >= raft.commit_index,
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
            incarnation=incarnation_of(raft.id),
            member_role=_member_role(membership, raft.id),
        )

    # ---- KeepAlive -----------------------------------------------------------------

    async def KeepAlive(  # noqa: N802
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        """Renew leases, one answer per request; see sidecar.api.keepalive."""

        # grpc.aio serves a response stream only from an async generator function.
        def deadline_passed() -> bool:
            remaining = context.time_remaining()
            return remaining is not None and remaining <= 0

        stream = self._keep_alives.stream(request_iterator, deadline_passed=deadline_passed)
        try:
            async for response in stream:
                yield response
        finally:
            await stream.aclose()

    async def release_local_grants(self, timeout_s: float = 2.0) -> None:
        """On shutdown (SIGTERM, a removed member's stop, the Raft leader's stop
        that transfers leadership): hand every grant of this sidecar's workers
        over, waiting at most ``timeout_s``.

        Each worker is told first (LEASE_ENDED on its keep-alive stream), and
        its grant is revoked only once it showed it stopped acting as leader,
        so the next candidate is granted at once instead of after a TTL, yet
        never while the old holder still believes; a worker that does not
        answer in time keeps its grant until it expires on the Raft leader's
        clock (sidecar.api.keepalive, "When this sidecar stops").
        """
        await self._keep_alives.release_all(timeout_s)

    async def _read_anywhere(self) -> int:
        return await self._node.read_anywhere()

    async def _renew(self, election: str, token: int) -> tuple[bool, int]:
        if self._node.raft.role is Role.LEADER:
            return await self._leases.renew(election, token)
        leader = self._node.raft.leader_id
        if leader is None or self._node.forwarder is None:
            raise NotLeader(leader)
        return await self._node.forwarder.renew_lease(leader, election, token)

    # ---- Observe, ListGrants -------------------------------------------------------

    async def Observe(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        """Stream an election's holder changes as this sidecar applies them.

        The first message is the election's current state here: the holder
        (empty when none), its token, the lease time left (``lease_known`` only
        on the Raft leader) and ``applied_index`` = this node's last applied
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
            election = self._name(request.election)
        except ApiError as error:
            await error.abort(context)
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
        await ApiError(errors.OBSERVER_TOO_SLOW, "observer too slow; re-subscribe").abort(context)

    def _change(self, election: str, holder: Grant | None, index: int) -> Any:
        if holder is None:
            change = worker_pb2.LeadershipChange(election=election, applied_index=index)
        else:
            change = worker_pb2.LeadershipChange(
                election=election,
                holder=holder.holder,
                fencing_token=holder.token,
                applied_index=index,
                **self._lease_fields(election, holder),
            )
        return worker_pb2.ObserveResponse(change=change)

    async def ListGrants(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def call() -> Any:
            election = self._name(request.election)
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
