"""Prometheus metrics of one sidecar, derived in one place.

Nothing in the core or the state machine knows about Prometheus: this module
samples what they expose (role, term, indices, holders, peer statistics),
listens to applied results (grants, revocations, expirations), times fsyncs
by wrapping the storage, and times every worker RPC with a server
interceptor. Names follow the Prometheus conventions: a ``raft_sidecar_``
prefix, base units in the name (``_seconds``), ``_total`` on counters
(added by the client library), labels for bounded dimensions only
(election names are bounded by the state machine, and the series of an
election it evicts are dropped at the next sample).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar.elections import ApplyResult, ElectionsState, Outcome
from sidecar.machine import ElectionsMachine, SkippedEntry
from sidecar.metrics_http import serve_metrics
from sidecar.node import RaftNode
from sidecar.raft import Entry, HardState, PersistentState, Role, Snapshot, SoftState, needs_sync
from sidecar.storage.interface import RaftStorage
from sidecar.transport.tls import TlsEvent, TlsLoaded

STATE_DIGEST_EVERY_ENTRIES = 64
"""A replica publishes its state digest after the first command it applies in
each new block of this many log indices (see ``SidecarMetrics.on_applied``)."""

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class SidecarMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, peer_tls: bool = False
    ) -> None:
        """``peer_tls``: export the peer certificate's series (only a sidecar
        with TLS files has them, so no alert reads a 0 expiry as "expired")."""
        r = self.registry = registry or CollectorRegistry()
        self.raft_role = Gauge(
            "raft_sidecar_raft_role", "1 for this node's current Raft role", ["role"], registry=r
        )
        self.raft_term = Gauge("raft_sidecar_raft_term", "Current Raft term", registry=r)
        self.raft_commit_index = Gauge(
            "raft_sidecar_raft_commit_index", "Highest log index known committed", registry=r
        )
        self.raft_applied_index = Gauge(
            "raft_sidecar_raft_applied_index", "Highest log index applied", registry=r
        )
        self.raft_has_leader = Gauge(
            "raft_sidecar_raft_has_leader", "1 when this node knows a Raft leader", registry=r
        )
        self.raft_leader_changes = Counter(
            "raft_sidecar_raft_leader_changes", "Times the known Raft leader changed", registry=r
        )
        self.raft_elections_started = Counter(
            "raft_sidecar_raft_elections_started",
            "Campaigns this node started (pre-vote and real)",
            registry=r,
        )
        self.fsync_seconds = Histogram(
            "raft_sidecar_fsync_duration_seconds",
            "Time to make one ready batch durable",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.proposal_seconds = Histogram(
            "raft_sidecar_proposal_duration_seconds",
            "Time from proposing a command to applying it here",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.peer_rtt_seconds = Gauge(
            "raft_sidecar_peer_rtt_seconds",
            "Round trip of the last acknowledged peer stream probe (about one a second)",
            ["peer"],
            registry=r,
        )
        self.peer_reachable = Gauge(
            "raft_sidecar_peer_reachable",
            "1 while the peer acknowledges its stream (0 from a failure until the next ack)",
            ["peer"],
            registry=r,
        )
        self.peer_dropped_messages = Gauge(
            "raft_sidecar_peer_dropped_messages",
            "Messages dropped for a peer (queue full)",
            ["peer"],
            registry=r,
        )
        self.grants = Counter(
            "raft_sidecar_grants", "Leadership grants applied", ["election"], registry=r
        )
        self.revocations = Counter(
            "raft_sidecar_revocations",
            "Grants revoked (keep-alive stream ended)",
            ["election"],
            registry=r,
        )
        self.expirations = Counter(
            "raft_sidecar_expirations",
            "Grants expired on the Raft leader's clock",
            ["election"],
            registry=r,
        )
        self.resignations = Counter(
            "raft_sidecar_resignations", "Grants given up by their holder", ["election"], registry=r
        )
        self.fencing_token = Gauge(
            "raft_sidecar_fencing_token",
            "Current holder's fencing token (0: none)",
            ["election"],
            registry=r,
        )
        self.holder_info = Gauge(
            "raft_sidecar_election_holder_info",
            "1 for the current holder of an election",
            ["election", "holder"],
            registry=r,
        )
        self.seconds_without_holder = Gauge(
            "raft_sidecar_election_seconds_without_holder",
            "Seconds since the election last had a holder (0 while held)",
            ["election"],
            registry=r,
        )
        self.undecodable_entries = Counter(
            "raft_sidecar_undecodable_entries",
            "Committed log entries skipped because they are not a valid command",
            registry=r,
        )
        self.state_digest = Gauge(
            "raft_sidecar_state_digest",
            "52-bit digest of who holds and who waits for each election, "
            "after applying index raft_sidecar_state_digest_index",
            registry=r,
        )
        self.state_digest_index = Gauge(
            "raft_sidecar_state_digest_index",
            "Log index the published state digest was taken at (0: none yet)",
            registry=r,
        )
        self.rpc_requests = Counter(
            "raft_sidecar_rpc_requests", "Worker API calls", ["method", "code"], registry=r
        )
        self.rpc_seconds = Histogram(
            "raft_sidecar_rpc_duration_seconds",
            "Worker API unary call latency",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.peer_certificate_expiry: Gauge | None = None
        self.peer_tls_files_refused: Gauge | None = None
        self.peer_tls_reload_failures: Counter | None = None
        if peer_tls:
            self.peer_certificate_expiry = Gauge(
                "raft_sidecar_peer_certificate_expiry_timestamp_seconds",
                "Expiry (notAfter, unix seconds) of the peer TLS certificate in use",
                registry=r,
            )
            self.peer_tls_files_refused = Gauge(
                "raft_sidecar_peer_tls_files_refused",
                "1 while the peer TLS files on disk were refused (the previous ones stay in use)",
                registry=r,
            )
            self.peer_tls_reload_failures = Counter(
                "raft_sidecar_peer_tls_reload_failures",
                "Changed peer TLS file sets refused (unparsable, key not matching, expired, ...)",
                registry=r,
            )
        self._leader: str | None = None
        self._last_applied_index = 0
        self._holders: dict[str, str] = {}
        self._counted: set[str] = set()
        """Elections whose per-election counters exist (created at 0 on first sight)."""
        self._unheld_since: dict[str, float] = {}
        self._published: set[str] = set()
        """Elections kept by the state at the last sample (they have series)."""

    # ---- event hooks -------------------------------------------------------------

    def on_soft_state(self, soft: SoftState) -> None:
        # The term first, with the role: a scrape must never pair a new
        # leader's role with its previous term (the sampler would fix the
        # term up to a second later), or two leaders would seem to share a
        # term (the RaftSidecarTwoLeadersInOneTerm alert).
        self.raft_term.set(soft.term)
        for role in Role:
            self.raft_role.labels(role.value).set(1 if role is soft.role else 0)
        if soft.role in (Role.PRE_CANDIDATE, Role.CANDIDATE):
            self.raft_elections_started.inc()
        if soft.leader_id != self._leader:
            if soft.leader_id is not None:
                self.raft_leader_changes.inc()
            self._leader = soft.leader_id
        self.raft_has_leader.set(1 if soft.leader_id is not None else 0)

    def on_peer_tls(self, event: TlsEvent) -> None:
        if (
            self.peer_certificate_expiry is None
            or self.peer_tls_files_refused is None
            or self.peer_tls_reload_failures is None
        ):
            return
        if isinstance(event, TlsLoaded):
            self.peer_certificate_expiry.set(event.not_after_s)
            self.peer_tls_files_refused.set(0)
        else:
            self.peer_tls_files_refused.set(1)
            self.peer_tls_reload_failures.inc()

    def on_apply(self, result: ApplyResult) -> None:
        election = result.election
        if election not in self._counted:
            # Every per-election counter exists (at 0) from the election's
            # first command on, so increase() sees its first event too.
            self._counted.add(election)
            for family in (self.grants, self.revocations, self.expirations, self.resignations):
                family.labels(election)
        counters = {
            Outcome.REVOKED: self.revocations,
            Outcome.EXPIRED: self.expirations,
            Outcome.RESIGNED: self.resignations,
        }
        counter = counters.get(result.outcome)
        if counter is not None:
            counter.labels(election).inc()
        if result.granted is not None:
            self.grants.labels(election).inc()

    def on_applied(self, index: int, state: ElectionsState) -> None:
        """Publish ``state_digest(state)`` at ``index`` when ``index`` is the
        first applied command of a new block of ``STATE_DIGEST_EVERY_ENTRIES``
        indices (or the first after a restart or a snapshot).

        Replicas that applied the same log are identical at every index, so
        any two digests published for one index must be equal; which indices
        get one does not matter, only that replicas often publish for the
        same one (an idle cluster settles on the same one everywhere). The
        RaftSidecarReplicasDisagree alert compares them. Both gauges are set
        together in the apply path, never in between two commands.
        """
        block = index // STATE_DIGEST_EVERY_ENTRIES
        if block != self._last_applied_index // STATE_DIGEST_EVERY_ENTRIES:
            self.state_digest.set(state_digest(state))
            self.state_digest_index.set(index)
        self._last_applied_index = index

    def on_skip(self, skipped: SkippedEntry) -> None:
        self.undecodable_entries.inc()

    # ---- sampling ----------------------------------------------------------------

    def sample(self, node: RaftNode, machine: ElectionsMachine, peers: dict[str, Any]) -> None:
        raft = node.raft
        self.raft_term.set(raft.term)
        self.raft_commit_index.set(raft.commit_index)
        self.raft_applied_index.set(raft.applied_index)
        for peer, stats in peers.items():
            if stats.last_rtt_s is not None:
                self.peer_rtt_seconds.labels(peer).set(stats.last_rtt_s)
            self.peer_reachable.labels(peer).set(1 if stats.reachable else 0)
            self.peer_dropped_messages.labels(peer).set(stats.dropped)
        self.sample_elections(machine.state)

    def sample_elections(self, state: ElectionsState) -> None:
        """Publish each kept election's token, holder and time without holder,
        and drop every series of an election the state no longer keeps.

        The state keeps at most ``max_elections`` (idle ones are evicted to
        make room), so dropping the evicted ones' series is what bounds the
        label cardinality; without it, a stream of short-lived election
        names would grow the registry and every scrape without limit.
        """
        now = time.monotonic()
        kept = state.elections()
        for election in kept:
            grant = state.holder(election)
            old = self._holders.get(election)
            if grant is None:
                self.fencing_token.labels(election).set(0)
                since = self._unheld_since.setdefault(election, now)
                self.seconds_without_holder.labels(election).set(now - since)
                if old is not None:
                    self.holder_info.remove(election, old)
                    del self._holders[election]
                continue
            self._unheld_since.pop(election, None)
            self.seconds_without_holder.labels(election).set(0)
            self.fencing_token.labels(election).set(grant.token)
            if old != grant.holder:
                if old is not None:
                    self.holder_info.remove(election, old)
                self.holder_info.labels(election, grant.holder).set(1)
                self._holders[election] = grant.holder
        kept_set = set(kept)
        for election in (self._published | self._counted) - kept_set:
            for family in (
                self.grants,
                self.revocations,
                self.expirations,
                self.resignations,
                self.fencing_token,
                self.seconds_without_holder,
            ):
                with contextlib.suppress(KeyError):
                    family.remove(election)
            holder = self._holders.pop(election, None)
            if holder is not None:
                self.holder_info.remove(election, holder)
            self._unheld_since.pop(election, None)
            self._counted.discard(election)
        self._published = kept_set

    async def run_sampler(
        self,
        node: RaftNode,
        machine: ElectionsMachine,
        peer_stats: Callable[[], dict[str, Any]],
        interval_s: float = 1.0,
    ) -> None:
        while True:
            self.sample(node, machine, peer_stats())
            await asyncio.sleep(interval_s)

    def serve(self, listen: str) -> None:
        """Expose /metrics over HTTP from a daemon thread, with bounded connections
        (``sidecar.metrics_http``). Raises OSError when ``listen`` cannot be bound."""
        serve_metrics(listen, self.registry)


def state_digest(state: ElectionsState) -> int:
    """A 52-bit digest of each kept election's holder (candidate, token) and
    queue (candidates in order): what replicas must agree on for one worker
    to hold each token. 52 bits, so that Prometheus' float64 carries it
    exactly. No secret goes in (lease keys are already digests, and left out).
    """
    h = hashlib.sha256()
    for election in state.elections():
        grant = state.holder(election)
        holder = "" if grant is None else f"{grant.holder}\x1f{grant.token}"
        queue = "\x1f".join(q.candidate for q in state.queue(election))
        h.update(f"{election}\x1e{holder}\x1e{queue}\x1d".encode())
    return int.from_bytes(h.digest()[:8], "big") >> 12


class TimedStorage:
    """A RaftStorage that reports how long each persist that syncs took; a
    commit-only record (no fsync of its own) would only pull the histogram down."""

    def __init__(self, inner: RaftStorage, metrics: SidecarMetrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self._last = HardState()

    def recover(self) -> PersistentState:
        state = self._inner.recover()
        self._last = state.hard_state
        return state

    def persist(
        self, hard_state: HardState | None, snapshot: Snapshot | None, entries: Sequence[Entry]
    ) -> None:
        if needs_sync(hard_state, snapshot, entries, last=self._last):
            with self._metrics.fsync_seconds.time():
                self._inner.persist(hard_state, snapshot, entries)
        else:
            self._inner.persist(hard_state, snapshot, entries)
        if hard_state is not None:
            self._last = hard_state

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._inner.save_snapshot(snapshot)

    def close(self) -> None:
        self._inner.close()


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts every worker RPC by method and status code; times unary calls.

    The timed wrapper of each unary method is built once and reused, with
    its label children bound, instead of a new closure and handler per call:
    this runs on every API call of the hot path. Streams keep their own
    handler (a wrapping generator would delay their cleanup, such as the
    revocation when a KeepAlive stream breaks) and are counted when they open.
    """

    def __init__(self, metrics: SidecarMetrics) -> None:
        self._metrics = metrics
        self._unary: dict[str, Any] = {}
        """Wrapped unary handlers by full method name (only methods that exist)."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        wrapped = self._unary.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None:
            return None  # unknown method: nothing cached, so names cannot pile up
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is None:
            self._metrics.rpc_requests.labels(method, "STREAM").inc()
            return handler
        wrapped = self._unary[details.method] = _timed_unary(handler, method, self._metrics)
        return wrapped


def _timed_unary(handler: Any, method: str, metrics: SidecarMetrics) -> Any:
    inner = handler.unary_unary
    ok = metrics.rpc_requests.labels(method, "OK")
    seconds = metrics.rpc_seconds.labels(method)

    async def timed(request: Any, context: Any) -> Any:
        start = time.perf_counter()
        try:
            response = await inner(request, context)
        except BaseException:
            code = context.code()
            metrics.rpc_requests.labels(method, code.name if code is not None else "UNKNOWN").inc()
            seconds.observe(time.perf_counter() - start)
            raise
        ok.inc()
        seconds.observe(time.perf_counter() - start)
        return response

    return grpc.unary_unary_rpc_method_handler(
        timed,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def cancel_quietly(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
