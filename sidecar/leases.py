"""Lease deadlines on the Raft leader's monotonic clock.

Theory of operation. The replicated state records who holds each election
and with what TTL; *when* a lease runs out is decided by the Raft leader
alone, on its own monotonic clock, and acted on through the log (an Expire
command), so every replica agrees on the outcome.

* A renewal (a worker's keep-alive, wherever it entered the cluster) sets
  the deadline to now + TTL on the leader, once a ReadIndex round confirmed
  that it still leads (``renew``).
* A lease the leader has no deadline for yet (a fresh grant, or every lease
  right after this node became leader) gets now + TTL: a new leader extends
  every lease by a full TTL, so no lease ever expires early because the Raft
  leader changed.
* Losing leadership forgets every deadline.
* Past a deadline, the leader proposes Expire(election, token) once; the
  state machine ignores it if the grant already ended, and otherwise hands
  the election to the next candidate in the same command.

The worker stops earlier than this: its client computes a safe deadline from
when it *sent* its last acknowledged keep-alive, plus TTL, minus a margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from sidecar.elections import Expire, encode_command
from sidecar.machine import ElectionsMachine
from sidecar.node import NodeError, RaftNode
from sidecar.raft import RaftError, Role

_log = structlog.get_logger("sidecar.leases")


class LeaseKeeper:
    def __init__(
        self,
        node: RaftNode,
        machine: ElectionsMachine,
        *,
        check_interval_s: float = 0.02,
        idle_interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node = node
        self._machine = machine
        self._interval = check_interval_s
        self._idle_interval = idle_interval_s
        self._clock = clock
        self._applied = asyncio.Event()
        """Set by every applied entry: a new grant needs its deadline."""
        machine.listeners.append(lambda _result: self._applied.set())
        self._deadlines: dict[tuple[str, int], float] = {}
        self._expiring: set[tuple[str, int]] = set()
        self._task: asyncio.Task[None] | None = None
        self._expiries: set[asyncio.Task[None]] = set()

    async def renew(self, election: str, token: int) -> tuple[bool, int]:
        """Leader only: renew (election, token) by its full TTL.

        Returns (still current, remaining ms). Raises NotLeader on a node
        that is not, or is no longer, the leader, and NodeError when the
        node cannot confirm it in time.

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
        """
        await self._node.read_barrier()
        grant = self._machine.state.holder(election)
        if grant is None or grant.token != token:
            # The read barrier applied everything committed when it started,
            # and a token leaves a sidecar only once committed: a token this
            # state does not hold is not current.
            return False, 0
        self._deadlines[(election, token)] = self._clock() + grant.ttl_ms / 1000
        return True, grant.ttl_ms

    def remaining_ms(self, election: str, token: int) -> int | None:
        """Lease time left on this leader's clock; None when this node times no such lease
        (it is not the Raft leader, or has not set the deadline yet)."""
        if self._node.raft.role is not Role.LEADER:
            return None
        deadline = self._deadlines.get((election, token))
        if deadline is None:
            return None
        return max(0, int((deadline - self._clock()) * 1000))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lease-keeper")

    async def stop(self) -> None:
        for task in [self._task, *self._expiries]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run(self) -> None:
        """Check when there is something to do, at most every ``check_interval_s``:
        at the earliest deadline, after an applied entry (a new grant), and
        every ``idle_interval_s`` otherwise (a follower, which has no deadlines,
        notices it became leader). Polling every 20 ms woke an idle sidecar 50
        times a second for nothing."""
        while True:
            due_in = self.check()
            self._applied.clear()
            await asyncio.sleep(self._interval)
            wait_s = min(due_in, self._idle_interval) - self._interval
            if wait_s > 0 and not self._applied.is_set():
                # Not asyncio.wait_for: on Python 3.11 it can swallow a
                # cancellation racing with the event, and stop() would hang.
                alarm = asyncio.get_running_loop().call_later(wait_s, self._applied.set)
                try:
                    await self._applied.wait()
                finally:
                    alarm.cancel()

    def check(self) -> float:
        """One pass: extend unknown leases, expire overdue ones (leader only).

        Returns the seconds until the earliest deadline still to act on
        (infinity when there is none, or on a follower)."""
        if self._node.raft.role is not Role.LEADER:
            self._deadlines.clear()
            return float("inf")
        now = self._clock()
        live: set[tuple[str, int]] = set()
        due_in = float("inf")
        for lease in self._machine.state.leases():
            key = (lease.election, lease.token)
            live.add(key)
            deadline = self._deadlines.setdefault(key, now + lease.ttl_ms / 1000)
            if key in self._expiring:
                continue
            if now >= deadline:
                self._expiring.add(key)
                task = asyncio.create_task(self._expire(lease.election, lease.token))
                self._expiries.add(task)
                task.add_done_callback(self._expiries.discard)
            else:
                due_in = min(due_in, deadline - now)
        for key in set(self._deadlines) - live:
            del self._deadlines[key]
        return due_in

    async def _expire(self, election: str, token: int) -> None:
        key = (election, token)
        command = Expire(
            election=election, token=token, proposed_at_unix_ms=int(time.time() * 1000)
        )
        try:
            _log.info("lease_expired", election=election, fencing_token=token)
            await self._node.submit(encode_command(command))
            self._deadlines.pop(key, None)
        except (NodeError, RaftError) as exc:
            # The deadline stays: the next pass tries again (or, if this node
            # lost leadership, the new leader starts a full TTL).
            _log.warning("expire_failed", election=election, fencing_token=token, error=str(exc))
        finally:
            self._expiring.discard(key)
