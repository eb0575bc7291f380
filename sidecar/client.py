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
streams the candidate's queue position until the grant is committed and
applied. The client makes the secret lease key itself (``secrets``), once per
(election, candidate id) and client, and sends it with every attempt:
UNAVAILABLE, and DEADLINE_EXCEEDED while the caller's own
``campaign_timeout`` has not passed, are retried with a capped, jittered
exponential backoff, and Campaign is idempotent per (election, candidate id,
key), so a retry after a lost reply returns the same grant or queue place,
never a second one. The key proves the holder to KeepAlive and Resign; it is
never logged, shown in a repr or put in an error message.

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
hands out the lease. So does every later campaign with the same key (a
worker that lost its lease and campaigns again): the sidecar may answer with
the grant it still holds for that key, made before this campaign was sent and
perhaps being revoked or expired right now. The sidecar sends what the
rule needs: each acknowledgement carries ``ttl_ms`` (0: not renewed, extends
nothing) and ``safety_margin_ms``, and the deadline is
``send_time(sequence) + ttl_ms - max(safety_margin_ms, margin)``. The rule
itself is pure and clock-injected (``sidecar.safe_deadline``, with the drift
bound the margin covers); ``Lease`` feeds it ``time.monotonic()``.

*Keep-alive.* One KeepAlive stream per lease sends a request every TTL/4
(at least 50 ms), numbered by an increasing ``sequence``, and keeps the send
time of every unacknowledged request (a bounded map). A timer sets
``lease.lost`` when the clock reaches the safe deadline, also when no answer
comes at all (no Raft leader reachable: the sidecar leaves requests
unanswered, or answered UNAVAILABLE). A per-election error that says the
lease is gone (LEASE_ENDED, LEASE_NOT_FOUND, LEASE_KEY_MISMATCH) sets
``lost`` at once.

*A broken stream is re-attached.* When a stream ends, the client opens a new
one at once, presenting the same key. The sidecar keeps the leases of a
stream that ended on purpose (its deadline) for a quarter TTL, and those of a
broken stream for ``min(TTL/4, --keepalive-grace-ms)`` (0 by default: a
broken stream usually means the worker died, docs/worker-api.md); a re-attach
within that window cancels the revoke; the deadline keeps running down from the last
acknowledgement meanwhile, so nothing unsafe is assumed. Re-attaching stops
when the lease is lost. Once ``lost`` is set the lease stays lost, the stream
is closed, and the worker must leave the block and campaign again (it gets
a new, larger token, or the same one if the grant still stands). Leaving the
block of a lease that is not lost resigns with its key (best effort) before
closing the stream, so the next candidate is granted in one commit.

*Logging.* Through the standard library's ``logging``, logger
``raftsidecar.client`` (never to stdout): the application decides where it
goes.

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
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc
from sidecar.safe_deadline import SafeDeadline, default_margin_s

__all__ = [
    "BlockingLease",
    "BlockingSidecarClient",
    "CampaignTimeout",
    "Holder",
    "InvalidRequest",
    "KeyMismatch",
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

_log = logging.getLogger("raftsidecar.client")


def _emit(level: int, event: str, **fields: object) -> None:
    """One log line: the event name, then sorted key=value pairs (never a lease key)."""
    if _log.isEnabledFor(level):
        text = " ".join(f"{k}={v!r}" for k, v in sorted(fields.items()))
        _log.log(level, "%s %s", event, text, extra={"event": event, "fields": fields})


T = TypeVar("T")

MIN_KEEP_ALIVE_INTERVAL_S = 0.05
# Unacknowledged keep-alives remembered per lease. The lease is lost one TTL
# after the last acknowledgement, i.e. after about 4 requests, so this bound
# is never reached in practice; it only caps memory.
MAX_UNACKED_KEEP_ALIVES = 256
# A lease's keep-alive stream is re-opened at most this often (bounded by the
# lease's own deadline too).
REATTACH_BACKOFF_S = 0.02
LEASE_GONE_REASONS = frozenset({"LEASE_ENDED", "LEASE_NOT_FOUND", "LEASE_KEY_MISMATCH"})
"""Per-election KeepAlive errors after which the lease is lost for good."""


# ---- errors ------------------------------------------------------------------------


class SidecarClientError(Exception):
    """Root of every error this module raises.

    ``code`` is the gRPC status code name (e.g. ``"UNAVAILABLE"``) when the
    error came from the sidecar, else ``None``; ``details`` is the server's
    message (or ours).
    """

    def __init__(self, details: str, code: str | None = None, reason: str | None = None) -> None:
        super().__init__(details)
        self.details = details
        self.code = code
        self.reason = reason
        """The sidecar's ErrorInfo reason (e.g. ``"LEASE_ENDED"``), if it sent one."""


class InvalidRequest(SidecarClientError):
    """Bad input: INVALID_ARGUMENT from the sidecar, or a misuse caught locally."""


class NotFound(SidecarClientError):
    """NOT_FOUND (LEASE_NOT_FOUND): nothing this lease key holds, or a token never granted."""


class NotHolder(SidecarClientError):
    """FAILED_PRECONDITION (LEASE_ENDED): the grant is no longer current."""


class KeyMismatch(SidecarClientError):
    """PERMISSION_DENIED: LEASE_KEY_MISMATCH (another key's grant) or CANDIDATE_ID_IN_USE
    (the candidate id holds or waits under another key, e.g. of another process)."""


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


def _reason(error: Any) -> str | None:
    """The ErrorInfo reason in a failed call's ``grpc-status-details-bin`` trailer."""
    try:
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    info = error_details_pb2.ErrorInfo()
                    if detail.Unpack(info):
                        return str(info.reason)
    except Exception:  # a malformed trailer is no reason to hide the status itself
        return None
    return None


_ERRORS: dict[Any, type[SidecarClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.ALREADY_EXISTS: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: NotHolder,
    grpc.StatusCode.PERMISSION_DENIED: KeyMismatch,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def _translate(error: Any) -> SidecarClientError:
    """The one place where gRPC errors become this module's errors."""
    code = error.code()
    name = _status_code_name(code)
    kind = _ERRORS.get(code, SidecarClientError)
    return kind(error.details() or name, name, _reason(error))


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

    Not linearizable (use ``validate``). ``remaining`` is the lease time left
    on the Raft leader's clock, known only when the local sidecar is the Raft
    leader (None otherwise); informational.
    """

    election: str
    candidate_id: str
    fencing_token: int
    ttl: timedelta
    remaining: timedelta | None


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
        lease_key: str,
        ttl_s: float,
        margin_s: float,
        first_sent_at: float | None,
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
        self._rule = SafeDeadline(ttl_s, margin_s)  # pure: sidecar.safe_deadline
        self._lease_key = lease_key  # secret: never logged, never in repr or errors
        self.reattached = 0  # keep-alive streams re-opened after one ended
        # Invariant: once lost, _deadline is -inf and never changes again.
        self._deadline = self._rule.initial(first_sent_at)
        self._usable = asyncio.Event()  # set once the deadline is in the future
        self._timer: asyncio.TimerHandle | None = None
        self._sent_at: dict[int, float] = {}
        self._sequence = 0
        self._task: asyncio.Task[None] | None = None
        self._stream: Any = None
        self._lost_callbacks: list[Callable[[str], None]] = []
        self._renewal_listeners: list[Callable[[float, float], None]] = []
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

    def add_renewal_listener(self, callback: Callable[[float, float], None]) -> None:
        """Call ``callback(sent_at, new_deadline)`` on the event loop whenever a
        keep-alive acknowledgement extends the safe deadline (for a history of
        what the worker believed: post-mortems, the chaos suite)."""
        self._renewal_listeners.append(callback)

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
        _emit(
            logging.INFO if expected else logging.WARNING,
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
        """Keep-alive streams for as long as the lease holds, re-attaching when one ends."""
        try:
            while self.lost_reason is None:
                ended = await self._one_stream(stub)
                if self.lost_reason is not None:
                    break
                # The sidecar keeps the lease for a re-attach grace: open a new
                # stream now, with the same key; the deadline keeps running down.
                self.reattached += 1
                _emit(
                    logging.INFO,
                    "keep_alive_reattaching",
                    election=self.election,
                    fencing_token=self.fencing_token,
                    why=ended,
                )
                await asyncio.sleep(REATTACH_BACKOFF_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never leave a lease looking alive after a bug
            self._lose(f"the keep-alive task failed: {exc!r}")

    async def _one_stream(self, stub: Any) -> str:
        """Run one KeepAlive stream until it ends; returns why it ended."""
        stream = stub.KeepAlive()
        self._stream = stream
        writer = asyncio.get_running_loop().create_task(self._write(stream))
        try:
            while True:
                response = await stream.read()
                if response is grpc.aio.EOF:
                    return "the sidecar ended the keep-alive stream"
                self._acknowledge(response)
                if self.lost_reason is not None:
                    return "lost"
        except grpc.aio.AioRpcError as exc:
            error = _translate(exc)
            return f"the keep-alive stream broke ({error.code}): {error.details}"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task is being stopped
            # Only the call was cancelled (grpc.aio reports that as a
            # CancelledError of read()): a broken stream like any other.
            return "the keep-alive call was cancelled"
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
                election=self.election,
                fencing_token=self.fencing_token,
                lease_key=self._lease_key,
                sequence=sequence,
            )
            try:
                await stream.write(request)
            except asyncio.CancelledError:
                raise
            except Exception:
                return  # the reader sees why the stream ended
            await asyncio.sleep(self.keep_alive_interval_s)

    def _acknowledge(self, response: Any) -> None:
        """Apply one answer: ``send_time(sequence) + ttl_ms - safety_margin_ms``."""
        sequence = response.sequence
        sent_at = self._sent_at.get(sequence)
        for acked in [s for s in self._sent_at if s <= sequence]:
            del self._sent_at[acked]
        if response.HasField("error"):
            error = response.error
            if error.reason in LEASE_GONE_REASONS:
                self._lose(f"{error.reason}: {error.message}")
            else:  # e.g. NO_LEADER: not renewed this time, the deadline runs on
                _emit(
                    logging.DEBUG,
                    "keep_alive_not_renewed",
                    election=self.election,
                    reason=error.reason,
                )
            return
        if sent_at is None or response.ttl_ms == 0:
            # Unknown sequence, or the leader could not renew yet: no extension.
            return
        self.acknowledged += 1
        before = self._deadline
        self._extend(
            self._rule.acknowledged(
                self._deadline, sent_at, response.ttl_ms, response.safety_margin_ms
            )
        )
        if self._deadline != before:
            for listener in self._renewal_listeners:
                listener(sent_at, self._deadline)

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
        # One secret key per (election, candidate id) for this client's life:
        # a campaign after a lost lease resumes the grant or queue place the
        # sidecar may still hold for it, instead of being refused as
        # CANDIDATE_ID_IN_USE. Never logged.
        self._keys: dict[tuple[str, str], str] = {}
        # The keys that have campaigned: a grant to one of them may predate
        # the next campaign (sidecar.safe_deadline).
        self._campaigned: set[tuple[str, str]] = set()

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
                    _emit(logging.DEBUG, "rpc_failed", rpc=what, code=error.code)
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
            remaining=timedelta(milliseconds=response.lease_remaining_ms)
            if response.lease_known
            else None,
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

    async def resign(self, election: str, lease_key: str, token: int = 0) -> bool:
        """Give up the grant (``token``, or whatever the key holds when 0) or queue place
        that ``lease_key`` holds in ``election``. Safe to retry: returns True when this
        call ended it, False when an earlier Resign with the key already had.

        Raises KeyMismatch (the token's grant has another key), NotFound (nothing
        this key holds), NotHolder (the grant ended otherwise), InvalidRequest,
        Unavailable.
        """
        response = await self._call(
            lambda stub: stub.Resign(
                worker_pb2.ResignRequest(
                    election=election, lease_key=lease_key, fencing_token=token
                ),
                timeout=self.rpc_timeout_s,
            ),
            "Resign",
        )
        return bool(response.outcome != worker_pb2.RESIGN_OUTCOME_ALREADY_RESIGNED)

    def lease_key(self, election: str, candidate_id: str) -> str:
        """The secret key this client campaigns with for (election, candidate_id)."""
        key = self._keys.get((election, candidate_id))
        if key is None:
            key = self._keys[(election, candidate_id)] = secrets.token_urlsafe(32)
        return key

    async def _campaign(
        self,
        election: str,
        candidate_id: str,
        ttl_ms: int,
        campaign_timeout_s: float | None,
        on_queued: Callable[[int], None] | None = None,
    ) -> tuple[worker_pb2.LeadershipToken, str, float | None]:
        """Campaign until granted. Returns the token, its key and the first attempt's
        send time: None when this key campaigned before, so the grant may be older."""
        started = time.monotonic()
        deadline = None if campaign_timeout_s is None else started + campaign_timeout_s
        key = self.lease_key(election, candidate_id)
        place = (election, candidate_id)
        first_sent_at = None if place in self._campaigned else started
        self._campaigned.add(place)
        request = worker_pb2.CampaignRequest(
            election=election, candidate_id=candidate_id, ttl_ms=ttl_ms, lease_key=key
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
                    async for event in self._get_stub().Campaign(request, timeout=timeout):
                        if event.HasField("granted"):
                            return event.granted.token, key, first_sent_at
                        _emit(
                            logging.DEBUG,
                            "campaign_queued",
                            election=election,
                            position=event.queued.position,
                        )
                        if on_queued is not None:
                            on_queued(event.queued.position)
                except grpc.aio.AioRpcError as exc:
                    error = _translate(exc)
                    expired = deadline is not None and time.monotonic() >= deadline
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and expired:
                        raise CampaignTimeout(error.details, error.code) from None
                    _emit(logging.DEBUG, "rpc_failed", rpc="Campaign", code=error.code)
                    raise error from None
                raise Unavailable("the Campaign stream ended without a grant", "UNAVAILABLE")
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
        on_queued: Callable[[int], None] | None = None,
    ) -> AsyncIterator[Lease]:
        """Campaign for ``election``, then hold the lease until the block ends.

        Waits until granted (or ``campaign_timeout``); ``on_queued(position)``
        is called whenever the sidecar reports a (new) queue position. ``margin``
        is a floor under the sidecar's ``safety_margin_ms``. Inside the block, watch
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
        token, key, sent_at = await self._campaign(
            election, candidate_id, round(ttl_s * 1000), timeout_s, on_queued
        )
        granted_ttl_s = token.ttl_ms / 1000 if token.ttl_ms else ttl_s
        lease = Lease(
            token,
            lease_key=key,
            ttl_s=granted_ttl_s,
            margin_s=margin_s,
            first_sent_at=sent_at,
        )
        _emit(logging.INFO, "lease_granted", election=election, fencing_token=lease.fencing_token)
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
                await self.resign(lease.election, lease._lease_key, lease.fencing_token)
        except (SidecarClientError, TimeoutError) as exc:
            # Closing the stream next makes the sidecar revoke instead (after
            # its re-attach grace), and failing that the lease expires on the
            # Raft leader's clock.
            _emit(
                logging.INFO,
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

    def resign(self, election: str, lease_key: str, token: int = 0) -> bool:
        return self._run(self._client.resign(election, lease_key, token))

    @contextlib.contextmanager
    def leadership(
        self,
        election: str,
        *,
        candidate_id: str,
        ttl: timedelta | float,
        campaign_timeout: timedelta | float | None = None,
        margin: timedelta | float | None = None,
        on_queued: Callable[[int], None] | None = None,
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
                on_queued=on_queued,
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
