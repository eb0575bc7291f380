"""The client library worker apps use to hold a fenced leadership lease.

Usage::

    async with SidecarClient("127.0.0.1:7401") as client:
        async with client.leadership(
            "settlement-eur", candidate_id="worker-a", ttl=timedelta(seconds=5)
        ) as lease:
            lease.check()                  # raises LeaseLost once the lease is gone
            ledger.write(..., fence=lease.fencing_token)

Theory of operation.

*Campaign.* ``leadership()`` sends Campaign to the local sidecar, which
answers once the grant is committed and applied (a queued candidate waits in
that call). UNAVAILABLE, and DEADLINE_EXCEEDED while the caller's own
``campaign_timeout`` has not passed, are retried with a capped, jittered
exponential backoff; Campaign is idempotent per (election, candidate id), so
a retry after a lost reply returns the same grant, never a second one.

*The safe deadline.* The worker must stop acting as leader before the Raft
leader can expire its lease and hand the election to someone else. The
leader renews a lease, on its own monotonic clock, to "now + TTL" when a
keep-alive reaches it, and that instant is at or *after* the moment this
client sent the keep-alive. The client cannot know when the request arrived,
only when it left, so it counts from the send time: after an acknowledgement
of the request sent at ``sent_at``, the safe deadline is
``sent_at + TTL - margin``. Counting from the receipt of the answer would
add the whole round trip (and any pause in between) to the lease, on the
wrong side. The margin absorbs the drift between the two monotonic clocks
and the scheduling delay of the timer that reports the loss. Before the first
acknowledgement the grant itself is the last renewal, and it was made after
the *first* Campaign attempt was sent, so the initial deadline is
``first_campaign_sent_at + TTL - margin``. A queued candidate may wait longer
than a TTL: then that deadline is already past when the grant arrives, and
``leadership()`` waits for the first keep-alive acknowledgement before it
hands out the lease. An acknowledgement with ``remaining_ttl_ms == 0`` (the
Raft leader has not applied the grant yet and could not renew it) extends
nothing.

*Keep-alive.* One KeepAlive stream per lease sends a request every TTL/4
(at least 50 ms), numbered by an increasing ``sequence``, and keeps the send
time of every unacknowledged request (a bounded map). A timer sets
``lease.lost`` when the clock reaches the safe deadline, also when no answer
comes at all (no Raft leader reachable: the sidecar leaves requests
unanswered). FAILED_PRECONDITION (the token is no longer current), any other
error and the end of the stream set ``lost`` at once.

*A broken stream is never re-opened.* When the stream ends, the sidecar
revokes the grant at once: that is how it learns that a worker died. A new
stream for the same token would at best be refused and at worst race the
revocation, keeping alive a lease that the next holder is about to receive.
So once ``lost`` is set the lease stays lost, the stream is closed, and the
worker must leave the block and campaign again (it gets a new, larger
token). Leaving the block of a lease that is not lost resigns (best effort)
before closing the stream, so the next candidate is granted in one commit.

*Threads.* ``SidecarClient`` and ``Lease`` belong to the event loop that
first uses them. ``BlockingSidecarClient`` runs one on a private loop in a
daemon thread for workers that are not written with asyncio; its
``BlockingLease.lost`` is a ``threading.Event``.

Time is ``time.monotonic()`` throughout. Errors share one root,
``SidecarClientError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc

__all__ = [
    "BlockingLease",
    "BlockingSidecarClient",
    "CampaignTimeout",
    "Holder",
    "InvalidRequest",
    "Lease",
    "LeaseLost",
    "NotFound",
    "NotHolder",
    "Overloaded",
    "PeerInfo",
    "RetryPolicy",
    "SidecarClient",
    "SidecarClientError",
    "SidecarStatus",
    "Unavailable",
]

_log = structlog.get_logger("sidecar.client")

T = TypeVar("T")

MIN_KEEP_ALIVE_INTERVAL_S = 0.05
MIN_MARGIN_S = 0.1
# Unacknowledged keep-alives remembered per lease. The lease is lost one TTL
# after the last acknowledgement, i.e. after about 4 requests, so this bound
# is never reached in practice; it only caps memory.
MAX_UNACKED_KEEP_ALIVES = 256


# ---- errors ------------------------------------------------------------------------


class SidecarClientError(Exception):
    """Root of every error this module raises.

    ``code`` is the gRPC status code name (e.g. ``"UNAVAILABLE"``) when the
    error came from the sidecar, else ``None``; ``details`` is the server's
    message (or ours).
    """

    def __init__(self, details: str, code: str | None = None) -> None:
        super().__init__(details)
        self.details = details
        self.code = code


class InvalidRequest(SidecarClientError):
    """Bad input: INVALID_ARGUMENT from the sidecar, or a misuse caught locally."""


class NotFound(SidecarClientError):
    """NOT_FOUND: an unknown election or token."""


class NotHolder(SidecarClientError):
    """FAILED_PRECONDITION: the token is not (or no longer) the current holder's."""


class Overloaded(SidecarClientError):
    """RESOURCE_EXHAUSTED: the election's queue is full, or too many elections."""


class Unavailable(SidecarClientError):
    """The sidecar stayed unreachable or without a Raft leader through every retry."""


class CampaignTimeout(SidecarClientError):
    """``campaign_timeout`` passed before the grant.

    The candidate may stay queued on the sidecar for a while (until its lease
    would have expired); campaigning again with the same candidate id resumes
    that queue place.
    """


class LeaseLost(SidecarClientError):
    """The lease is gone: stop acting as leader; campaign again for a new token."""


def _status_code_name(code: Any) -> str:
    return str(getattr(code, "name", code))


def _translate(error: Any) -> SidecarClientError:
    """The one place where gRPC errors become this module's errors."""
    code = error.code()
    details = error.details() or _status_code_name(code)
    name = _status_code_name(code)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(details, name)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details, name)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return NotHolder(details, name)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(details, name)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(details, name)
    return SidecarClientError(details, name)


# ---- plain data ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds of the retries of transient failures (UNAVAILABLE, DEADLINE_EXCEEDED).

    Backoff is jittered exponential: a random wait in
    ``[0, min(max_backoff_s, initial_backoff_s * 2**n)]`` before attempt n + 1.
    ``max_elapsed_s`` bounds unary calls other than Campaign, whose single
    attempt may legitimately wait in the queue for a long time; Campaign is
    bounded by ``attempts`` and by its own ``campaign_timeout``.
    """

    attempts: int = 8
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    max_elapsed_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InvalidRequest(f"attempts must be at least 1, not {self.attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise InvalidRequest("backoff bounds must satisfy 0 < initial_backoff_s <= max")
        if self.max_elapsed_s <= 0:
            raise InvalidRequest(f"max_elapsed_s must be positive, not {self.max_elapsed_s}")


@dataclass(frozen=True, slots=True)
class Holder:
    """The holder of an election, as applied on the answering sidecar.

    Not linearizable (use ``validate``); ``remaining`` is informational.
    """

    election: str
    candidate_id: str
    fencing_token: int
    ttl: timedelta
    remaining: timedelta


@dataclass(frozen=True, slots=True)
class PeerInfo:
    id: str
    address: str
    match_index: int
    role: str  # "voter" or "learner"


@dataclass(frozen=True, slots=True)
class SidecarStatus:
    node_id: str
    role: str  # "follower", "pre_candidate", "candidate" or "leader"
    term: int
    commit_index: int
    applied_index: int
    leader_id: str | None
    peers: tuple[PeerInfo, ...]


_RAFT_ROLES = {
    worker_pb2.RAFT_ROLE_FOLLOWER: "follower",
    worker_pb2.RAFT_ROLE_PRE_CANDIDATE: "pre_candidate",
    worker_pb2.RAFT_ROLE_CANDIDATE: "candidate",
    worker_pb2.RAFT_ROLE_LEADER: "leader",
}
_PEER_ROLES = {worker_pb2.PEER_ROLE_VOTER: "voter", worker_pb2.PEER_ROLE_LEARNER: "learner"}


def _seconds(value: timedelta | float, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0:
        raise InvalidRequest(f"{what} must be positive, not {value!r}")
    return seconds


def default_margin_s(ttl_s: float) -> float:
    """The default safety margin: a tenth of the TTL, at least 100 ms."""
    return max(ttl_s / 10, MIN_MARGIN_S)


# ---- the lease -------------------------------------------------------------------------


class Lease:
    """A granted leadership, valid until its safe deadline.

    Created by ``SidecarClient.leadership()``; owned by that block and by the
    event loop it runs on. ``remaining()`` and ``check()`` read the clock, so
    they are exact even when a busy loop delays the timer that sets ``lost``.
    """

    def __init__(
        self,
        token: worker_pb2.LeadershipToken,
        *,
        ttl_s: float,
        margin_s: float,
        initial_deadline: float,
    ) -> None:
        self.election: str = token.election
        self.candidate_id: str = token.candidate_id
        self.fencing_token: int = token.fencing_token
        self.ttl = timedelta(seconds=ttl_s)
        self.margin = timedelta(seconds=margin_s)
        self.lost = asyncio.Event()
        # Why the lease was lost; None while it holds.
        self.lost_reason: str | None = None
        self._ttl_s = ttl_s
        self._margin_s = margin_s
        # Invariant: once lost, _deadline is -inf and never changes again.
        self._deadline = initial_deadline
        self._usable = asyncio.Event()  # set once the deadline is in the future
        self._timer: asyncio.TimerHandle | None = None
        self._sent_at: dict[int, float] = {}
        self._sequence = 0
        self._task: asyncio.Task[None] | None = None
        self._stream: Any = None
        self._lost_callbacks: list[Callable[[str], None]] = []
        self.keep_alive_interval_s = max(ttl_s / 4, MIN_KEEP_ALIVE_INTERVAL_S)
        self.acknowledged = 0  # keep-alive acknowledgements that extended the deadline

    def __repr__(self) -> str:
        state = f"lost: {self.lost_reason}" if self.lost_reason else f"{self.remaining():.3f}s"
        return f"Lease({self.election!r}, token={self.fencing_token}, {state})"

    # -- public, plain functions (they never block) --

    def remaining(self) -> float:
        """Seconds until the safe deadline; 0 when lost."""
        if self.lost_reason is not None:
            return 0.0
        return max(0.0, self._deadline - time.monotonic())

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the lease is still safely held.

        Call it right before every step that must only run on the leader;
        the fencing token still guards the write itself.
        """
        if self.lost_reason is None and time.monotonic() >= self._deadline:
            self._lose("the safe deadline passed")
        if self.lost_reason is not None:
            raise LeaseLost(
                f"lease on {self.election!r} (token {self.fencing_token}) lost: {self.lost_reason}"
            )

    @property
    def deadline(self) -> float:
        """The safe deadline on ``time.monotonic()``; -inf when lost."""
        return self._deadline

    # -- internals --

    def _extend(self, deadline: float) -> None:
        if self.lost_reason is not None or deadline <= self._deadline:
            return
        self._deadline = deadline
        if deadline > time.monotonic():
            self._usable.set()
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, self._deadline - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.lost_reason is not None:
            return
        if time.monotonic() >= self._deadline:
            self._lose("the safe deadline passed without a keep-alive acknowledgement")
        else:  # asyncio may fire a timer a clock tick early
            self._arm()

    def _lose(self, reason: str, *, expected: bool = False) -> None:
        """Mark the lease lost, for good. ``expected``: the worker leaves the
        block; the caller resigns, then closes the stream itself."""
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        self._deadline = float("-inf")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.lost.set()
        log = _log.info if expected else _log.warning
        log(
            "lease_ended" if expected else "lease_lost",
            election=self.election,
            fencing_token=self.fencing_token,
            reason=reason,
        )
        for callback in self._lost_callbacks:
            callback(reason)
        if not expected:
            # A lost lease stays lost: nothing may keep it alive any more, and
            # the end of the stream lets the sidecar revoke at once.
            self._stop_stream()

    def _stop_stream(self) -> None:
        """Close the keep-alive stream (the sidecar then revokes the grant)."""
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        if self._stream is not None:
            self._stream.cancel()

    def _start(self, stub: Any) -> None:
        if time.monotonic() < self._deadline:
            self._usable.set()
            self._arm()
        self._task = asyncio.get_running_loop().create_task(
            self._keep_alive(stub), name=f"keep-alive {self.election}/{self.fencing_token}"
        )

    async def _wait_usable(self) -> None:
        """Wait until the safe deadline lies in the future.

        Only a queued candidate waits here: its grant came later than a TTL
        after its Campaign was sent, so it needs one fresh acknowledgement.
        Bounded: the first keep-alive went out at once, so without an
        acknowledgement within a TTL the lease is lost.
        """
        if self._usable.is_set():
            return
        waiter = asyncio.ensure_future(self._usable.wait())
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait(
                [waiter, lost], timeout=self._ttl_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            lost.cancel()
        if not self._usable.is_set():
            self._lose("no keep-alive acknowledgement within a TTL of the grant")
        self.check()

    async def _keep_alive(self, stub: Any) -> None:
        stream = stub.KeepAlive()
        self._stream = stream
        writer = asyncio.get_running_loop().create_task(self._write(stream))
        try:
            while True:
                response = await stream.read()
                if response is grpc.aio.EOF:
                    self._lose("the sidecar ended the keep-alive stream")
                    return
                self._acknowledge(response.sequence, response.remaining_ttl_ms)
        except grpc.aio.AioRpcError as exc:
            error = _translate(exc)
            if isinstance(error, NotHolder):
                self._lose(f"the token is no longer current: {error.details}")
            else:
                self._lose(f"the keep-alive stream broke ({error.code}): {error.details}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never leave a lease looking alive after a bug
            self._lose(f"the keep-alive task failed: {exc!r}")
        finally:
            writer.cancel()
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    async def _write(self, stream: Any) -> None:
        while self.lost_reason is None:
            self._sequence += 1
            sequence = self._sequence
            if len(self._sent_at) >= MAX_UNACKED_KEEP_ALIVES:
                del self._sent_at[min(self._sent_at)]
            # Recorded *before* the write: the send time can only be earlier
            # than the moment the Raft leader renews, never later.
            self._sent_at[sequence] = time.monotonic()
            request = worker_pb2.KeepAliveRequest(
                election=self.election, fencing_token=self.fencing_token, sequence=sequence
            )
            try:
                await stream.write(request)
            except asyncio.CancelledError:
                raise
            except Exception:
                return  # the reader sees why the stream ended
            await asyncio.sleep(self.keep_alive_interval_s)

    def _acknowledge(self, sequence: int, remaining_ttl_ms: int) -> None:
        sent_at = self._sent_at.get(sequence)
        for acked in [s for s in self._sent_at if s <= sequence]:
            del self._sent_at[acked]
        if sent_at is None or remaining_ttl_ms == 0:
            # Unknown sequence, or the leader could not renew yet: no extension.
            return
        lease_s = min(self._ttl_s, remaining_ttl_ms / 1000)
        self.acknowledged += 1
        self._extend(sent_at + lease_s - self._margin_s)

    async def _close(self) -> None:
        """Stop the keep-alive stream and wait for its task."""
        if self.lost_reason is None:
            self._lose("left the leadership block", expected=True)
        self._stop_stream()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


# ---- the client ------------------------------------------------------------------------


class SidecarClient:
    """An asyncio client of the local sidecar's worker API.

    ``target`` is ``host:port`` or ``unix:/path``. The channel opens on first
    use, on the running event loop; use the client from that loop only.
    """

    def __init__(
        self,
        target: str,
        *,
        retry: RetryPolicy | None = None,
        rpc_timeout_s: float = 5.0,
        resign_timeout_s: float = 5.0,
        channel_options: list[tuple[str, Any]] | None = None,
    ) -> None:
        if not target:
            raise InvalidRequest("target must name the sidecar, e.g. 127.0.0.1:7401")
        self.target = target
        self.retry = retry or RetryPolicy()
        self.rpc_timeout_s = _seconds(rpc_timeout_s, "rpc_timeout_s")
        self.resign_timeout_s = _seconds(resign_timeout_s, "resign_timeout_s")
        self._channel_options = channel_options or []
        self._channel: Any = None
        self._stub: Any = None
        self._closed = False
        self._leases: set[Lease] = set()

    async def __aenter__(self) -> SidecarClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _get_stub(self) -> Any:
        if self._closed:
            raise SidecarClientError("the client is closed")
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=self._channel_options)
            self._stub = worker_pb2_grpc.ElectionServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        """Close the channel. Every lease still held is lost (and revoked)."""
        if self._closed:
            return
        self._closed = True
        for lease in sorted(self._leases, key=lambda le: (le.election, le.fencing_token)):
            await lease._close()
        if self._channel is not None:
            await self._channel.close()

    # -- retries --

    def _retrying(self, *, bounded_in_time: bool) -> AsyncRetrying:
        stop: Any = stop_after_attempt(self.retry.attempts)
        if bounded_in_time:
            stop = stop | stop_after_delay(self.retry.max_elapsed_s)
        return AsyncRetrying(
            stop=stop,
            wait=wait_random_exponential(
                multiplier=self.retry.initial_backoff_s, max=self.retry.max_backoff_s
            ),
            retry=retry_if_exception_type(Unavailable),
            reraise=True,
        )

    async def _call(self, call: Callable[[Any], Awaitable[T]], what: str) -> T:
        """One unary RPC with retries of transient failures; raises translated errors."""
        async for attempt in self._retrying(bounded_in_time=True):
            with attempt:
                try:
                    return await call(self._get_stub())
                except grpc.aio.AioRpcError as exc:
                    error = _translate(exc)
                    _log.debug("rpc_failed", rpc=what, code=error.code, details=error.details)
                    raise error from None
        raise AssertionError("unreachable: tenacity reraises the last error")

    # -- unary calls --

    async def leader(self, election: str) -> Holder | None:
        """The holder of ``election`` as seen by the local sidecar, or None.

        Raises InvalidRequest, Unavailable.
        """
        response = await self._call(
            lambda stub: stub.Leader(
                worker_pb2.LeaderRequest(election=election), timeout=self.rpc_timeout_s
            ),
            "Leader",
        )
        if not response.HasField("holder"):
            return None
        holder = response.holder
        return Holder(
            election=holder.election,
            candidate_id=holder.candidate_id,
            fencing_token=holder.fencing_token,
            ttl=timedelta(milliseconds=holder.ttl_ms),
            remaining=timedelta(milliseconds=response.remaining_ms),
        )

    async def validate(self, election: str, token: int) -> bool:
        """Whether ``token`` is the current holder's token (linearizable).

        Raises InvalidRequest, Unavailable.
        """
        response = await self._call(
            lambda stub: stub.ValidateToken(
                worker_pb2.ValidateTokenRequest(election=election, fencing_token=token),
                timeout=self.rpc_timeout_s,
            ),
            "ValidateToken",
        )
        return bool(response.valid)

    async def status(self) -> SidecarStatus:
        """The local sidecar's Raft state. Raises Unavailable."""
        response = await self._call(
            lambda stub: stub.Status(worker_pb2.StatusRequest(), timeout=self.rpc_timeout_s),
            "Status",
        )
        return SidecarStatus(
            node_id=response.node_id,
            role=_RAFT_ROLES.get(response.role, "unspecified"),
            term=response.term,
            commit_index=response.commit_index,
            applied_index=response.applied_index,
            leader_id=response.leader_id or None,
            peers=tuple(
                PeerInfo(
                    id=p.id,
                    address=p.address,
                    match_index=p.match_index,
                    role=_PEER_ROLES.get(p.role, "unspecified"),
                )
                for p in response.peers
            ),
        )

    async def resign(self, election: str, token: int) -> None:
        """Give up the grant ``token`` of ``election``.

        Raises NotHolder (not the current token), NotFound, InvalidRequest,
        Unavailable.
        """
        await self._call(
            lambda stub: stub.Resign(
                worker_pb2.ResignRequest(election=election, fencing_token=token),
                timeout=self.rpc_timeout_s,
            ),
            "Resign",
        )

    async def _campaign(
        self, election: str, candidate_id: str, ttl_ms: int, campaign_timeout_s: float | None
    ) -> tuple[worker_pb2.LeadershipToken, float]:
        """Campaign until granted. Returns the token and the first attempt's send time."""
        first_sent_at = time.monotonic()
        deadline = None if campaign_timeout_s is None else first_sent_at + campaign_timeout_s
        request = worker_pb2.CampaignRequest(
            election=election, candidate_id=candidate_id, ttl_ms=ttl_ms
        )
        async for attempt in self._retrying(bounded_in_time=False):
            with attempt:
                timeout = None
                if deadline is not None:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        raise CampaignTimeout(
                            f"{candidate_id} was not granted {election!r} within "
                            f"{campaign_timeout_s:g}s"
                        )
                try:
                    response = await self._get_stub().Campaign(request, timeout=timeout)
                except grpc.aio.AioRpcError as exc:
                    error = _translate(exc)
                    expired = deadline is not None and time.monotonic() >= deadline
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and expired:
                        raise CampaignTimeout(error.details, error.code) from None
                    _log.debug("rpc_failed", rpc="Campaign", code=error.code, details=error.details)
                    raise error from None
                return response.token, first_sent_at
        raise AssertionError("unreachable: tenacity reraises the last error")

    # -- leadership --

    @contextlib.asynccontextmanager
    async def leadership(
        self,
        election: str,
        *,
        candidate_id: str,
        ttl: timedelta | float,
        campaign_timeout: timedelta | float | None = None,
        margin: timedelta | float | None = None,
    ) -> AsyncIterator[Lease]:
        """Campaign for ``election``, then hold the lease until the block ends.

        Waits until granted (or ``campaign_timeout``). Inside the block, watch
        ``lease.lost`` / call ``lease.check()`` and send
        ``lease.fencing_token`` with every write. Leaving the block resigns
        (best effort) and closes the keep-alive stream.

        Raises InvalidRequest (bad name, TTL or margin), Overloaded,
        CampaignTimeout, Unavailable; LeaseLost if the grant could not be
        kept alive before the block began.
        """
        ttl_s = _seconds(ttl, "ttl")
        margin_s = default_margin_s(ttl_s) if margin is None else _seconds(margin, "margin")
        if margin_s >= ttl_s:
            raise InvalidRequest(f"margin ({margin_s:g}s) must be shorter than ttl ({ttl_s:g}s)")
        timeout_s = None if campaign_timeout is None else _seconds(campaign_timeout, "timeout")
        token, sent_at = await self._campaign(
            election, candidate_id, round(ttl_s * 1000), timeout_s
        )
        granted_ttl_s = token.ttl_ms / 1000 if token.ttl_ms else ttl_s
        lease = Lease(
            token,
            ttl_s=granted_ttl_s,
            margin_s=margin_s,
            initial_deadline=sent_at + granted_ttl_s - margin_s,
        )
        _log.info("lease_granted", election=election, fencing_token=lease.fencing_token)
        self._leases.add(lease)
        try:
            lease._start(self._get_stub())
            await lease._wait_usable()
            yield lease
        finally:
            self._leases.discard(lease)
            try:
                if lease.lost_reason is None:
                    # Resign while the stream still lives, so the sidecar does
                    # not revoke concurrently; the grant ends by one command.
                    lease._lose("left the leadership block", expected=True)
                    await self._resign_quietly(lease)
            finally:
                await lease._close()

    async def _resign_quietly(self, lease: Lease) -> None:
        try:
            async with asyncio.timeout(self.resign_timeout_s):
                await self.resign(lease.election, lease.fencing_token)
        except (SidecarClientError, TimeoutError) as exc:
            # Closing the stream next makes the sidecar revoke instead, and
            # failing that the lease expires on the Raft leader's clock.
            _log.info(
                "resign_failed",
                election=lease.election,
                fencing_token=lease.fencing_token,
                error=str(exc),
            )


# ---- the blocking wrapper ----------------------------------------------------------------


class BlockingLease:
    """The thread-side view of a ``Lease`` held by ``BlockingSidecarClient``.

    ``lost`` is a ``threading.Event``; ``remaining()`` and ``check()`` read
    the clock and are safe to call from any thread.
    """

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self.election = lease.election
        self.candidate_id = lease.candidate_id
        self.fencing_token = lease.fencing_token
        self.ttl = lease.ttl
        self.lost = threading.Event()
        if lease.lost_reason is not None:
            self.lost.set()

    def _on_lost(self, _reason: str) -> None:  # runs on the client's loop thread
        self.lost.set()

    @property
    def lost_reason(self) -> str | None:
        return self._lease.lost_reason

    def remaining(self) -> float:
        """Seconds until the safe deadline; 0 when lost."""
        if self.lost.is_set():
            return 0.0
        return max(0.0, self._lease.deadline - time.monotonic())

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the lease is still safely held."""
        if self.remaining() <= 0:
            self.lost.set()
            reason = self._lease.lost_reason or "the safe deadline passed"
            raise LeaseLost(
                f"lease on {self.election!r} (token {self.fencing_token}) lost: {reason}"
            )


class BlockingSidecarClient:
    """``SidecarClient`` for threaded workers: same calls, blocking.

    Runs an asyncio ``SidecarClient`` on a private event loop in a daemon
    thread. Do not call it from that thread (e.g. from a lost callback).
    """

    def __init__(self, target: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sidecar-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._client = self._run(self._make_client(target, options))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _make_client(target: str, options: dict[str, Any]) -> SidecarClient:
        return SidecarClient(target, **options)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise SidecarClientError("BlockingSidecarClient called from its own loop thread")
        if self._closed:
            coro.close()
            raise SidecarClientError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def __enter__(self) -> BlockingSidecarClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def leader(self, election: str) -> Holder | None:
        return self._run(self._client.leader(election))

    def validate(self, election: str, token: int) -> bool:
        return self._run(self._client.validate(election, token))

    def status(self) -> SidecarStatus:
        return self._run(self._client.status())

    def resign(self, election: str, token: int) -> None:
        self._run(self._client.resign(election, token))

    @contextlib.contextmanager
    def leadership(
        self,
        election: str,
        *,
        candidate_id: str,
        ttl: timedelta | float,
        campaign_timeout: timedelta | float | None = None,
        margin: timedelta | float | None = None,
    ) -> Iterator[BlockingLease]:
        """Blocking ``SidecarClient.leadership``: same arguments, same errors."""
        entered: concurrent.futures.Future[tuple[BlockingLease, asyncio.Event]] = (
            concurrent.futures.Future()
        )

        async def hold() -> None:
            release = asyncio.Event()
            async with self._client.leadership(
                election,
                candidate_id=candidate_id,
                ttl=ttl,
                campaign_timeout=campaign_timeout,
                margin=margin,
            ) as lease:
                blocking = BlockingLease(lease)
                lease._lost_callbacks.append(blocking._on_lost)
                entered.set_result((blocking, release))
                await release.wait()

        if self._closed:
            raise SidecarClientError("the client is closed")
        held = asyncio.run_coroutine_threadsafe(hold(), self._loop)
        try:
            waited: list[concurrent.futures.Future[Any]] = [entered, held]
            concurrent.futures.wait(waited, return_when=concurrent.futures.FIRST_COMPLETED)
            if not entered.done():
                held.result()  # raises why the campaign failed
                raise SidecarClientError("the leadership block ended before it began")
        except BaseException:
            held.cancel()
            raise
        blocking, release = entered.result()
        try:
            yield blocking
        finally:
            self._loop.call_soon_threadsafe(release.set)
            try:
                held.result()
            except BaseException:
                held.cancel()
                raise

    def close(self) -> None:
        """Close the client and stop its thread. Every lease still held is lost."""
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._closed = True
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()
