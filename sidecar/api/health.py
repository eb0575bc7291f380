"""Standard gRPC health checking and server reflection on the worker API port.

``register_health_and_reflection(server, node, servicer)`` adds ``grpc.health.v1.Health``
and server reflection (v1 and v1alpha, ``reflection.py``) to a ``grpc.aio`` server and
returns the ``HealthUpdater`` that keeps the health status current::

    servicer = health_servicer()              # the probe port serves it from the start
    updater = register_health_and_reflection(api, node, servicer)   # before api.start()
    updater.start()                                        # in the event loop
    ...
    await updater.stop()                                   # on shutdown

What SERVING means. The overall status (service ``""``) and
``raftsidecar.worker.v1.ElectionService`` are SERVING exactly when, as of
the last turn of the node's Raft loop (the status is evaluated after every
turn, and at the end of a ``behind_grace_s`` period, not on a timer):

* this node's Raft loop has not stopped (no storage error, ``stop()`` not
  called), and
* it knows a Raft leader for its current term (itself, or another node it
  has heard from in this term; a node that is campaigning knows none), and
* it is a voter in the membership it knows: a learner, or a node that came
  back with an empty data directory and waits to be admitted under its new
  incarnation (docs/membership.md), is not ready, so a rolling update does
  not take the next pod down before this one counts again, and
* its applied index is at most ``max_apply_lag`` entries (default 64)
  behind its commit index, so its local reads (Leader, ListGrants, Observe)
  reflect what it knows to be committed, and
* its applied index has not stayed more than ``max_apply_lag`` entries
  behind the *cluster's* commit index (``RaftCore.cluster_commit``, which
  leaders announce in every append and heartbeat) for ``behind_grace_s``
  (default 2 s). A replica whose acknowledgements never reach the leader (a
  one-way link) keeps hearing heartbeats, so it keeps its leader and never
  campaigns, but commits nothing more: its own commit and applied indices
  agree and only the leader's announcement shows it serves stale state. The
  grace keeps a replica that trails by a burst from flapping.

Otherwise both are NOT_SERVING, e.g. during a Raft election, on a node whose
apply loop is lagging, or from ``stop()`` on (graceful shutdown: the status
then stays NOT_SERVING). Before the first check both are NOT_SERVING.
A follower that hears nothing from the leader keeps SERVING until its election
timeout makes it campaign (it then knows no leader).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]

from sidecar.api.reflection import enable_reflection
from sidecar.node import RaftNode
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2

_log = structlog.get_logger("sidecar.api.health")

ELECTION_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["ElectionService"].full_name
LIVENESS_SERVICE = "raftsidecar.liveness"
"""SERVING while the Raft loop runs, leader or not: what a liveness probe asks,
so that a partitioned or quorum-less sidecar (which a restart cannot heal) is
not restarted, while one whose loop died on a storage error is."""
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_SERVICE = reflection.SERVICE_NAME

DEFAULT_MAX_APPLY_LAG = 64
DEFAULT_BEHIND_GRACE_S = 2.0

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _SidecarHealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    """The stock asyncio servicer, but NOT_SERVING (not SERVING) until the
    first check: a probe must not see a node as ready before it is."""

    def __init__(self) -> None:
        super().__init__()
        # No watcher can exist yet, so setting the map directly is what
        # ``set`` would do; ``set`` itself is a coroutine.
        self._server_status = {
            "": _NOT_SERVING,
            ELECTION_SERVICE: _NOT_SERVING,
            LIVENESS_SERVICE: _NOT_SERVING,
        }

    async def List(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Every service's status. The stock asyncio servicer lacks List: its
        base class answered with a Python exception's class name."""
        statuses = sorted(self._server_status.items())
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=s) for name, s in statuses}
        )


class BehindWatch:
    """Whether a lag has stayed above ``max_lag`` for ``grace_s`` or longer.

    Pure: the caller passes the time. A lag at or below ``max_lag`` resets it,
    so only a replica that stays behind is reported, not one that trails by a
    burst for a moment.
    """

    def __init__(self, max_lag: int, grace_s: float) -> None:
        self._max_lag = max_lag
        self._grace_s = grace_s
        self._behind_since: float | None = None

    def behind(self, lag: int, now: float) -> bool:
        if lag <= self._max_lag:
            self._behind_since = None
            return False
        if self._behind_since is None:
            self._behind_since = now
        return now - self._behind_since >= self._grace_s

    def turns_at(self, now: float) -> float | None:
        """When the answer turns to behind if the lag stays as it is: the end
        of a grace period under way, None when none is (not behind, or
        already reported)."""
        if self._behind_since is None:
            return None
        due = self._behind_since + self._grace_s
        return due if now < due else None


class HealthUpdater:
    """Sets the health status of ``""`` and the ElectionService from the node's
    Raft state; see the module docstring for what SERVING means.

    Event-driven: the node calls ``_on_turn`` after every turn of its loop
    (the only place the core's state changes) and once when the loop ends; it
    evaluates the status there, a plain call, and wakes this updater's task
    only when the status changed or a ``behind_grace_s`` period began (the
    task then sleeps until that period ends). An idle node therefore wakes
    nothing here; polling every 50 ms cost an idle sidecar 20 wake-ups a second.
    """

    def __init__(
        self,
        servicer: Any,
        node: RaftNode,
        *,
        max_apply_lag: int = DEFAULT_MAX_APPLY_LAG,
        behind_grace_s: float = DEFAULT_BEHIND_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._servicer = servicer
        self._node = node
        self._max_apply_lag = max_apply_lag
        self._behind_cluster = BehindWatch(max_apply_lag, behind_grace_s)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopped = False
        self._serving: bool | None = None
        self._alive: bool | None = None
        self._alarm_at: float | None = None
        """The end of the grace period the task sleeps until (None: no alarm)."""

    def alive(self) -> bool:
        """Whether the Raft loop runs (``LIVENESS_SERVICE``), with or without a leader."""
        return self._node.failure is None

    def serving(self) -> bool:
        """Whether this node is SERVING right now (see the module docstring)."""
        if self._stopped or self._node.failure is not None:
            return False
        raft = self._node.raft
        behind_cluster = self._behind_cluster.behind(
            raft.cluster_commit - raft.applied_index, self._clock()
        )
        if raft.leader_id is None:
            return False
        if raft.id not in raft.membership.voters:
            return False  # a learner, or a new incarnation not yet admitted
        if behind_cluster:
            return False  # hears a leader, yet stays behind what it announces
        return raft.commit_index - raft.applied_index <= self._max_apply_lag

    async def check(self) -> None:
        """One evaluation; updates the servicer only when the status changes."""
        alive = self.alive()
        if alive != self._alive:
            self._alive = alive
            await self._servicer.set(LIVENESS_SERVICE, _SERVING if alive else _NOT_SERVING)
        serving = self.serving()
        if serving == self._serving:
            return
        self._serving = serving
        status = _SERVING if serving else _NOT_SERVING
        for service in ("", ELECTION_SERVICE):
            await self._servicer.set(service, status)
        _log.info("health_changed", status="SERVING" if serving else "NOT_SERVING")

    def start(self) -> None:
        """Start following the node (call from the event loop, e.g. before
        ``api.start()``, after ``node.start()``)."""
        if self._task is None:
            self._node.turn_listeners.append(self._on_turn)
            self._task = asyncio.create_task(self._run(), name="health-updater")

    async def stop(self) -> None:
        """Report NOT_SERVING for good (graceful shutdown) and stop checking."""
        self._stopped = True
        with contextlib.suppress(ValueError):
            self._node.turn_listeners.remove(self._on_turn)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._servicer.enter_graceful_shutdown()

    def _on_turn(self) -> None:
        """After a turn of the node's loop: wake the task if it has work."""
        if self._wake.is_set():
            return
        changed = self.alive() != self._alive or self.serving() != self._serving
        if changed or self._behind_cluster.turns_at(self._clock()) != self._alarm_at:
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            await self.check()
            now = self._clock()
            self._alarm_at = self._behind_cluster.turns_at(now)
            alarm = None
            if self._alarm_at is not None:
                alarm = loop.call_later(self._alarm_at - now, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                if alarm is not None:
                    alarm.cancel()


def health_servicer() -> Any:
    """A health servicer that says NOT_SERVING for everything until a
    ``HealthUpdater`` (or ``entering``) sets it: one per process, shared by
    the worker API port and the probe port."""
    return _SidecarHealthServicer()


async def entering(servicer: Any) -> None:
    """The process runs but has no Raft node yet: it is asking its peers how
    to enter the cluster (``decide_entry``), which may take as long as they
    take to start. Alive (a liveness or startup probe must not restart it:
    a restart asks again), not ready."""
    await servicer.set(LIVENESS_SERVICE, _SERVING)


def register_health_and_reflection(server: Any, node: RaftNode, servicer: Any) -> HealthUpdater:
    """Add grpc.health.v1 (``servicer``, from ``health_servicer()``) and server
    reflection to the ``grpc.aio`` ``server`` (before it starts) and return the
    updater that keeps health current.

    Reflection lists the ElectionService, the Health service and the
    reflection service itself. The caller then runs ``updater.start()`` and,
    on shutdown, ``await updater.stop()``.
    """
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    enable_reflection((ELECTION_SERVICE, HEALTH_SERVICE), server)  # v1 and v1alpha
    return HealthUpdater(servicer, node)


def serve_health_only(server: Any, servicer: Any) -> None:
    """Add the same health status to a second ``grpc.aio`` server (before it
    starts): the probe port, reachable from the kubelet, while the worker API
    stays on loopback inside the pod. No reflection there: it would list the
    worker API on a port that does not serve it."""
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
