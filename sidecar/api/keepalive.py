"""KeepAlive: renewing leases for the workers of this sidecar, and revoking them when
those workers are gone.

Theory of operation
-------------------
*Who may renew.* A request names (election, fencing_token) and presents the
grant's lease key. This sidecar checks the key against its own applied
state (the digest kept with the grant and its audit record), before anything
reaches the Raft leader: a wrong key is refused (LEASE_KEY_MISMATCH), a grant
that ended says so (LEASE_ENDED), a token never granted is LEASE_NOT_FOUND.
The applied state is a prefix of the log, so a grant found ended here has
ended for good; a grant current here may have ended further on, which the
leader's renewal then reports. A token beyond this node's applied index (the
worker asked another sidecar, which granted it a moment ago) is judged after
a ReadIndex barrier: a token leaves a sidecar only once its grant entry is
committed, so a token still beyond the applied index after the barrier was
never granted (LEASE_NOT_FOUND, e.g. 2^64-1).

*Renewal.* A checked request is carried to the Raft leader (``renew``),
whose monotonic clock alone times the lease; the answer gives ``ttl_ms``
and the ``safety_margin_ms`` of the documented client rule
``deadline = send_time(sequence) + ttl_ms - safety_margin_ms``. Without a
reachable leader the request is answered UNAVAILABLE (NO_LEADER) with
ttl_ms 0: the client's deadline keeps running down from its last
acknowledgement, and a new leader extends every lease by a full TTL.

*Per-election errors.* Every refusal is carried in that request's response
(``KeepAliveResponse.error``); the stream goes on, and so do the other
elections it keeps. Sequence numbers must increase per stream; a request
that breaks this is refused (INVALID_FIELD, field "sequence") and ignored.

*When a stream ends.* DESIGN.md: a stream that breaks means the worker
died, and the sidecar revokes at once, so the next candidate is granted
without waiting out a TTL. A stream the client ends on purpose is not a
death: a half-close without ``release``, or the stream's own deadline (a
Go ``context.WithTimeout`` habit), keeps its leases for a re-attach window
of a quarter TTL, and a new stream presenting the same key within it
cancels the revoke. A broken stream waits ``min(ttl / 4,
--keepalive-grace-ms)``, 0 by default (at once): set it when a proxy with an
idle timeout sits between worker and sidecar, at the cost of that much more
handover time after a real crash. A lease that several streams keep at once
(a client re-attached before the old stream's end was noticed) is orphaned
only when the last of them ends. A request with ``release`` resigns its
lease at once (Resign through the log, with the key's digest).

*When this sidecar stops* (SIGTERM, a removed member's stop, the Raft
leader's stop that transfers leadership): its workers' grants are handed
over, but only once each worker has stopped believing it holds one
(``release_all``). Every stream that keeps a lease first gets a notice, an
unsolicited response (``sequence`` 0) with error LEASE_ENDED: "the sidecar
is stopping". From then on no lease is renewed here, and every request is
answered LEASE_ENDED. A lease is revoked (the next candidate granted in the
same command) once the worker showed the notice reached it: every stream
that kept it ended after the notice (the Python client marks the lease lost,
then cancels its stream), or broke (the worker died), or the worker sent
``release``. A lease whose worker does not show it within the bound (paused,
hung, a client that ignores the notice, or one that half-closed its stream
before the notice and never came back) is not revoked: the Raft leader
expires it a full TTL after its last renewal, later than the worker's own
safe deadline, which is always safe.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from sidecar.api.errors import (
    LEASE_ENDED,
    LEASE_KEY_MISMATCH,
    LEASE_NOT_FOUND,
    NO_LEADER,
    ApiError,
    invalid_field,
)
from sidecar.elections import (
    ApplyResult,
    Grant,
    InvalidArgument,
    Outcome,
    Resign,
    Revoke,
    lease_key_digest,
    validate_name,
    validate_token,
)
from sidecar.machine import ElectionsMachine
from sidecar.node import NodeError
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from sidecar.raft import RaftError
from sidecar.transport.errors import TransportError

_log = structlog.get_logger("sidecar.api.keepalive")

MIN_SAFETY_MARGIN_MS: Final = 100
STOPPING_MESSAGE: Final = (
    "this sidecar is stopping: stop acting as leader now, then end the keep-alive stream"
)
_BROKEN: Final = "the keep-alive stream ended; the sidecar is stopping"
_STOPPED: Final = "the worker stopped after its sidecar's stop notice"


def safety_margin_ms(ttl_ms: int) -> int:
    """The margin the client subtracts: a tenth of the TTL, at least 100 ms, at most half."""
    return min(max(ttl_ms // 10, MIN_SAFETY_MARGIN_MS), ttl_ms // 2)


def reattach_grace_s(ttl_ms: int, cap_ms: int, *, deliberate: bool = False) -> float:
    """How long a lease outlives the end of its last keep-alive stream.

    A stream the client ended on purpose (half-close, or its own deadline)
    waits a quarter TTL for the re-attach; a stream that broke (the worker
    died, its connection dropped) waits ``cap_ms`` at most (default 0: at once).
    """
    if deliberate:
        return ttl_ms / 4 / 1000
    return min(ttl_ms / 4, cap_ms) / 1000


def now_ms() -> int:
    """Wall clock for the audit trail of a command (never decides anything)."""
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class _Kept:
    token: int
    digest: str
    ttl_ms: int


@dataclass(slots=True)
class _Stream:
    """One KeepAlive stream: the leases it keeps (by election), and whether
    it was told that this sidecar stops (then every lease it keeps or adopts
    has been answered LEASE_ENDED on it)."""

    kept: dict[str, _Kept] = field(default_factory=dict)
    noticed: bool = False


@dataclass(frozen=True, slots=True)
class _Orphan:
    """A lease whose last stream ended: the timer that revokes it, and whether
    that stream ended on purpose (its worker may still believe it holds)."""

    handle: asyncio.TimerHandle
    deliberate: bool


Renew = Callable[[str, int], Awaitable[tuple[bool, int]]]
Propose = Callable[[Any], Awaitable[ApplyResult]]
"""Propose a command and wait until it is applied here; raises ApiError only."""
ReadBarrier = Callable[[], Awaitable[int]]


class KeepAlives:
    """Every KeepAlive stream of this sidecar, and the leases they keep."""

    def __init__(
        self,
        machine: ElectionsMachine,
        renew: Renew,
        propose: Propose,
        read_barrier: ReadBarrier,
        *,
        grace_cap_ms: int,
    ) -> None:
        self._machine = machine
        self._read_barrier = read_barrier
        self._renew = renew
        self._propose = propose
        self._grace_cap_ms = grace_cap_ms
        self._keepers: dict[tuple[str, int], int] = {}
        """Streams keeping each (election, token) alive right now."""
        self._orphans: dict[tuple[str, int], _Orphan] = {}
        """Leases whose last stream ended, waiting out the re-attach grace."""
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        """Set by ``release_all``: notices go out, nothing is renewed any more."""
        self._confirmed: dict[tuple[str, int], asyncio.Event] = {}
        """On stop: the leases waited for, set once their worker stopped believing."""

    # ---- one stream -----------------------------------------------------------------

    async def stream(
        self,
        requests: AsyncIterator[Any],
        *,
        deadline_passed: Callable[[], bool] = lambda: False,
    ) -> AsyncGenerator[Any, None]:
        """Answer every request of one KeepAlive stream; see the module docstring.

        ``deadline_passed`` tells, once the stream has ended, whether its own
        deadline ended it (a deliberate end, like a half-close).
        """
        me = _Stream()
        kept = me.kept
        last_sequence = 0
        deliberate = False
        incoming = aiter(requests)
        next_request: asyncio.Future[Any] | None = None
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                if next_request is None:
                    next_request = asyncio.ensure_future(anext(incoming))
                if not me.noticed:
                    await asyncio.wait(
                        {next_request, stopping}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if self._stopping.is_set():
                        for election in sorted(kept):
                            yield self._notice(election, kept[election].token)
                        me.noticed = True
                        continue
                try:
                    request = await next_request
                except StopAsyncIteration:
                    break
                finally:
                    next_request = None
                if request.sequence <= last_sequence:
                    error = invalid_field(
                        "sequence",
                        f"sequence {request.sequence} does not increase "
                        f"(last was {last_sequence} on this stream)",
                    )
                    yield self._response(request, error=error)
                    continue
                last_sequence = request.sequence
                try:
                    yield await self._answer(request, kept)
                except ApiError as error:
                    yield self._response(request, error=error)
            deliberate = True  # the client half-closed the stream
        finally:
            stopping.cancel()
            if next_request is not None:
                next_request.cancel()
            deliberate = deliberate or deadline_passed()
            for election in sorted(kept):
                self._let_go(election, kept[election], deliberate=deliberate, noticed=me.noticed)

    async def _answer(self, request: Any, kept: dict[str, _Kept]) -> Any:
        try:
            election = validate_name("election", request.election)
            token = validate_token(request.fencing_token)
            digest = lease_key_digest(request.lease_key)
        except InvalidArgument as exc:
            raise invalid_field(exc.field, str(exc)) from None
        previous = kept.get(election)
        try:
            grant = self._check(election, token, digest)
            if grant is None:  # beyond what this node applied: catch up with the leader
                try:
                    await self._read_barrier()
                except (NodeError, RaftError, TransportError) as exc:
                    raise ApiError(
                        NO_LEADER, f"not renewed, no Raft leader reachable: {exc}"
                    ) from None
                grant = self._check(election, token, digest)
            if grant is None:
                raise ApiError(LEASE_NOT_FOUND, f"no grant {token} in {election!r}")
        except ApiError as error:
            if error.reason != LEASE_KEY_MISMATCH and previous and previous.token == token:
                self._let_go(election, kept.pop(election), revoke=False)
            raise
        entry = _Kept(token, digest, grant.ttl_ms)
        if previous is None or previous.token != token:
            if previous is not None:
                self._let_go(election, kept.pop(election))
            kept[election] = entry
            self._adopt(election, token)
        if request.release:
            released = kept.pop(election)
            try:  # resigned before the stop's handover may see it let go
                await self._release(election, token, digest)
            finally:
                self._let_go(election, released, revoke=False)
            return self._response(request)
        if self._stopping.is_set():  # the lease stays kept: only the stream's end confirms
            raise ApiError(LEASE_ENDED, f"grant {token} of {election!r}: {STOPPING_MESSAGE}")
        try:
            current, ttl_ms = await self._renew(election, token)
        except (NodeError, RaftError, TransportError) as exc:
            raise ApiError(NO_LEADER, f"not renewed, no Raft leader reachable: {exc}") from None
        if not current:
            self._let_go(election, kept.pop(election), revoke=False)
            raise ApiError(
                LEASE_ENDED, f"grant {token} of {election!r} has ended: stop acting as its leader"
            )
        return self._response(request, ttl_ms=ttl_ms)

    def _check(self, election: str, token: int, digest: str) -> Grant | None:
        """The current grant ``token`` if ``digest`` is its key's; None if not applied here yet.

        Raises ApiError: LEASE_KEY_MISMATCH, LEASE_ENDED, LEASE_NOT_FOUND.
        """
        state = self._machine.state
        grant = state.holder(election)
        if grant is not None and grant.token == token:
            if not hmac.compare_digest(grant.key_digest, digest):
                raise ApiError(
                    LEASE_KEY_MISMATCH,
                    f"the lease key is not the key of grant {token} of {election!r}",
                )
            return grant
        record = state.grant_record(election, token)
        if record is not None:
            if not hmac.compare_digest(record.key_digest, digest):
                raise ApiError(
                    LEASE_KEY_MISMATCH,
                    f"the lease key is not the key of grant {token} of {election!r}",
                )
            why = record.end_reason.name.lower() if record.end_reason else "ended"
            raise ApiError(
                LEASE_ENDED,
                f"grant {token} of {election!r} ended ({why} at index {record.ended_index}): "
                "stop acting as its leader",
            )
        if token > state.last_applied:
            return None
        raise ApiError(LEASE_NOT_FOUND, f"no grant {token} in {election!r}")

    @staticmethod
    def _notice(election: str, token: int) -> Any:
        """The stop notice: an unsolicited response (sequence 0, no request of it)."""
        error = ApiError(LEASE_ENDED, f"grant {token} of {election!r}: {STOPPING_MESSAGE}")
        return worker_pb2.KeepAliveResponse(
            election=election, fencing_token=token, sequence=0, error=error.lease_error()
        )

    @staticmethod
    def _response(request: Any, *, ttl_ms: int = 0, error: ApiError | None = None) -> Any:
        return worker_pb2.KeepAliveResponse(
            election=request.election,
            fencing_token=request.fencing_token,
            sequence=request.sequence,
            ttl_ms=ttl_ms,
            safety_margin_ms=safety_margin_ms(ttl_ms) if ttl_ms else 0,
            error=error.lease_error() if error is not None else None,
        )

    # ---- leases across streams -------------------------------------------------------

    def _adopt(self, election: str, token: int) -> None:
        key = (election, token)
        self._keepers[key] = self._keepers.get(key, 0) + 1
        orphan = self._orphans.pop(key, None)
        if orphan is not None:
            orphan.handle.cancel()
            _log.info("keep_alive_reattached", election=election, fencing_token=token)

    def _let_go(
        self,
        election: str,
        kept: _Kept,
        *,
        revoke: bool = True,
        deliberate: bool = False,
        noticed: bool = False,
    ) -> None:
        """This stream stops keeping ``kept``; the last one to go orphans it.

        While stopping, the last one to go confirms the handover instead,
        unless its stream ended on purpose before the notice reached it.
        """
        key = (election, kept.token)
        left = self._keepers.get(key, 0) - 1
        if left > 0:
            self._keepers[key] = left
            return
        self._keepers.pop(key, None)
        if self._stopping.is_set():
            confirmed = self._confirmed.get(key)
            if confirmed is not None and (noticed or not deliberate or not revoke):
                confirmed.set()
            return
        if not revoke or key in self._orphans:
            return
        grace_s = reattach_grace_s(kept.ttl_ms, self._grace_cap_ms, deliberate=deliberate)
        handle = asyncio.get_running_loop().call_later(grace_s, self._revoke_orphan, key)
        self._orphans[key] = _Orphan(handle, deliberate)

    def _revoke_orphan(self, key: tuple[str, int]) -> None:
        if self._orphans.pop(key, None) is None:
            return
        self._spawn(self._revoke(*key, reason="the keep-alive stream ended; no re-attach"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release(self, election: str, token: int, digest: str) -> None:
        command = Resign(
            election=election, key_digest=digest, token=token, proposed_at_unix_ms=now_ms()
        )
        result = await self._propose(command)  # raises ApiError (e.g. NO_LEADER)
        if result.outcome not in (Outcome.RESIGNED, Outcome.ALREADY_RESIGNED):
            raise ApiError(LEASE_ENDED, f"grant {token} of {election!r} had already ended")
        _log.info("lease_released", election=election, fencing_token=token)

    async def _revoke(self, election: str, token: int, reason: str) -> None:
        command = Revoke(
            election=election, token=token, proposed_at_unix_ms=now_ms(), reason=reason
        )
        try:
            result = await self._propose(command)
            _log.info(
                "lease_revoked",
                election=election,
                fencing_token=token,
                outcome=result.outcome.value,
            )
        except ApiError as error:
            # The lease then runs out on the leader's clock instead.
            _log.warning(
                "revoke_failed", election=election, fencing_token=token, error=error.message
            )

    async def release_all(self, timeout_s: float) -> None:
        """On shutdown: hand over every local lease whose worker stopped believing in it.

        Sends the stop notice on every stream, then revokes each lease once
        its worker confirmed (module docstring), within ``timeout_s`` in
        all. A lease orphaned by a broken stream is revoked at once, as its
        grace would have; one not confirmed in time is left to expire.
        """
        self._stopping.set()  # wakes every stream: the notices go out
        broken = sorted(key for key, orphan in self._orphans.items() if not orphan.deliberate)
        waiting = sorted(
            {*self._keepers, *(key for key, o in self._orphans.items() if o.deliberate)}
        )
        for orphan in self._orphans.values():
            orphan.handle.cancel()
        self._orphans.clear()
        self._confirmed = {key: asyncio.Event() for key in waiting}
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._revoke(*key, reason=_BROKEN)) for key in broken]
        tasks += [loop.create_task(self._hand_over(key)) for key in waiting]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        for election, token in waiting:
            if not self._confirmed[(election, token)].is_set():
                _log.warning(
                    "lease_left_to_expire",
                    election=election,
                    fencing_token=token,
                    why="its worker did not confirm the stop notice in time",
                    waited_s=timeout_s,
                )

    async def _hand_over(self, key: tuple[str, int]) -> None:
        await self._confirmed[key].wait()
        await self._revoke(*key, reason=_STOPPED)
