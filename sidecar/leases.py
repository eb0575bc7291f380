"""Lease deadlines on the Raft leader's monotonic clock: the asyncio driving.

Theory of operation. The replicated state records who holds each election
and with what TTL; *when* a lease runs out is decided by the Raft leader
alone, on its own monotonic clock, and acted on through the log (an Expire
command), so every replica agrees on the outcome. The rules (a new leader
extends every lease by a full TTL, a confirmed renewal sets now + TTL, which
leases are due, losing leadership forgets everything) are pure and live in
``sidecar.lease_deadlines``, where the simulator drives them too. This
module only feeds them time and events:

* ``renew`` (a worker's keep-alive, wherever it entered the cluster) waits
  for a ReadIndex round that confirms this node still leads, then renews.
* ``check`` runs when something may be due: it hands the current grants and
  the clock to the pure review and proposes Expire(election, token) for each
  lease it returns; the state machine ignores it if the grant already ended,
  and otherwise hands the election to the next candidate in the same command.

The worker stops earlier than this: its client computes a safe deadline from
when it *sent* its last acknowledged keep-alive, plus TTL, minus a margin
(``sidecar.safe_deadline``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from sidecar.alarm import wait_event
from sidecar.elections import Expire, encode_command
from sidecar.lease_deadlines import LeaderDeadlines
from sidecar.machine import ElectionsMachine
from sidecar.node import NodeError, RaftNode
from sidecar.raft import RaftError, Role

_log = structlog.get_logger("sidecar.leases")

RENEW_TIMEOUT_S = 5.0
"""How long a renewal may wait for its ReadIndex round and the apply after it."""


class RenewalTimedOut(NodeError):
    """The leader could not confirm its leadership for a renewal in time."""


class LeaseKeeper:
    def __init__(
        self,
        node: RaftNode,
        machine: ElectionsMachine,
        *,
        check_interval_s: float = 0.02,
        retry_interval_s: float = 0.1,
        renew_timeout_s: float = RENEW_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node = node
        self._renew_timeout_s = renew_timeout_s
        self._machine = machine
        self._interval = check_interval_s
        self._retry_interval = retry_interval_s
        self._clock = clock
        self._wake = asyncio.Event()
        """Set by every applied entry (a new grant needs its deadline), by a
        turn of the Raft loop that changed the role or term, and after a
        failed Expire: the keeper checks again."""
        machine.listeners.append(lambda _result: self._wake.set())
        self._leading: tuple[Role, int] | None = None
        """The role and term of the last turn seen (``_on_turn``)."""
        self._deadlines = LeaderDeadlines()
        self._task: asyncio.Task[None] | None = None
        self._expiries: set[asyncio.Task[None]] = set()

    async def renew(self, election: str, token: int) -> tuple[bool, int]:
        """Leader only: renew (election, token) by its full TTL.

        Returns (still current, renewed ms: 0 when the lease's Expire is
        already proposed). Raises NotLeader on a node
        that is not, or is no longer, the leader, and NodeError when the
        node cannot confirm it in time: RenewalTimedOut after
        ``renew_timeout_s`` (5 s, the deadline of a renewal a follower
        forwards). Without that bound a leader that lost its term between
        the round and the apply waited until the new leader's log grew past
        the index, which on an idle cluster may be never, and the worker's
        keep-alive stream, answered in order, waited with it.

        The renewal waits for a ReadIndex round first: a quorum must answer
        a heartbeat of this term sent after the keep-alive arrived. A
        leader whose loop stalled (a slow disk) while the others elected a
        new leader still believes it leads; without the round it would
        acknowledge a full TTL that the new leader, which extended the lease
        only from its own election, may expire first. With it: no leader
        newer than this heartbeat's send time can exist (a quorum was still
        in this term after it), and a later one extends the lease by a full
        TTL from its election, after this renewal's start (etcd's
        ``ensureLeadership`` closes the same hole).

        It also waits until every entry this leader had appended when the
        keep-alive arrived is applied, not only the committed ones: a Revoke
        (the worker's stream broke), Resign or Expire of this lease may be
        in the log uncommitted, and renewing now would acknowledge a full
        TTL to a worker whose grant ends when that entry commits, handing
        the election to the next candidate (the simulator found this race,
        docs/simulation.md).
        """
        appended = self._node.raft.log.last_index
        try:
            async with asyncio.timeout(self._renew_timeout_s):
                await self._node.read_barrier()
                await self._node.wait_applied(appended)
        except TimeoutError:
            raise RenewalTimedOut(
                f"leadership not confirmed within {self._renew_timeout_s:g} s"
            ) from None
        grant = self._machine.state.holder(election)
        if grant is None or grant.token != token:
            # Everything appended before the keep-alive arrived is applied,
            # and a token leaves a sidecar only once committed: a token this
            # state does not hold is not current.
            return False, 0
        renewed = self._deadlines.renew(
            election, token, grant.ttl_ms, self._clock(), term=self._node.raft.term
        )
        # Current, but its Expire is already proposed: acknowledge no time at
        # all (ttl 0), and the worker's deadline runs on from its last renewal.
        return True, grant.ttl_ms if renewed else 0

    def remaining_ms(self, election: str, token: int) -> int | None:
        """Lease time left on this leader's clock; None when this node times no such lease
        (it is not the Raft leader, or has not set the deadline yet)."""
        if self._node.raft.role is not Role.LEADER:
            return None
        remaining_s = self._deadlines.remaining_s(election, token, self._clock())
        return None if remaining_s is None else int(remaining_s * 1000)

    def start(self) -> None:
        self._node.turn_listeners.append(self._on_turn)
        self._task = asyncio.create_task(self._run(), name="lease-keeper")

    def _on_turn(self) -> None:
        """A turn listener (``RaftNode.turn_listeners``): a node that became leader
        must time every lease at once, one that stepped down forget them."""
        raft = self._node.raft
        leading = (raft.role, raft.term)
        if leading != self._leading:
            self._leading = leading
            self._wake.set()

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self._node.turn_listeners.remove(self._on_turn)
        for task in [self._task, *self._expiries]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run(self) -> None:
        """Check when there is something to do, at most every ``check_interval_s``:
        at the leader's earliest deadline, after an applied entry (a new grant),
        after a turn that changed the role or term, and ``retry_interval_s``
        after an Expire that failed. Nothing else wakes it: a follower, or a
        leader without leases, has nothing to time (polling every 100 ms woke
        an idle sidecar ten times a second for nothing, every 20 ms fifty)."""
        while True:
            due_in = self.check()
            self._wake.clear()
            await asyncio.sleep(self._interval)
            await wait_event(self._wake, due_in - self._interval)

    def check(self) -> float:
        """One pass: extend unknown leases, expire overdue ones (leader only).

        Returns the seconds until the earliest deadline still to act on
        (infinity when there is none, or on a follower)."""
        raft = self._node.raft
        if raft.role is not Role.LEADER:
            self._deadlines.step_down()
            return float("inf")
        review = self._deadlines.review(self._machine.state.leases(), self._clock(), term=raft.term)
        for lease in review.due:
            task = asyncio.create_task(self._expire(lease.election, lease.token))
            self._expiries.add(task)
            task.add_done_callback(self._expiries.discard)
        return review.next_due_s

    async def _expire(self, election: str, token: int) -> None:
        committed = False
        command = Expire(
            election=election, token=token, proposed_at_unix_ms=int(time.time() * 1000)
        )
        try:
            _log.info("lease_expired", election=election, fencing_token=token)
            await self._node.submit(encode_command(command))
            committed = True
        except (NodeError, RaftError) as exc:
            # The deadline stays: the next pass tries again (or, if this node
            # lost leadership, the new leader starts a full TTL).
            _log.warning("expire_failed", election=election, fencing_token=token, error=str(exc))
            asyncio.get_running_loop().call_later(self._retry_interval, self._wake.set)
        finally:
            self._deadlines.expire_finished(election, token, committed=committed)
