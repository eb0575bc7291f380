"""The settlement worker: campaigns through its sidecar, settles runs while it leads.

Theory of operation
-------------------
One loop: campaign (``SidecarClient.leadership``), and while the lease holds,
settle runs step by step, each step one fenced ledger transaction carrying the
lease's fencing token:

1. ``raise_fence`` once, right after the grant, before reading any work: from
   then on every older holder's write is refused;
2. ``claim_run``: resume the election's unfinished run (keeping whatever
   earlier holders committed) or claim the oldest open batch;
3. ``write_chunk`` for every chunk no holder has written yet;
4. ``settle_run``.

Before each step the worker checks the lease, and each step (a blocking
database call on a thread) is raced against ``lease.lost``: the moment the
lease is lost the worker stops waiting and campaigns again. A step that was
already on its way may still reach the ledger; that is exactly the stale
write the fence refuses. A refusal (``StaleTokenError``) means a newer holder
exists: the worker steps down at once. ``FenceHolderConflict`` (another
worker presented this very token) means the election service lost safety:
the worker logs it at error level, counts it, and steps down too.

SIGTERM: a follower stops campaigning and exits; the leader finishes nothing
more, leaves its leadership block (which resigns, so the next candidate is
granted in one command) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from settlement_demo.config import WorkerConfig
from settlement_demo.faults import PAUSE_BEFORE_WRITE, FaultPoint
from settlement_demo.generator import generate_batch
from settlement_demo.history import History
from settlement_demo.http import Health, HttpEndpoints
from settlement_demo.ledger import (
    FenceHolderConflict,
    Ledger,
    LedgerError,
    LedgerUnavailableError,
    Run,
    SchemaChange,
    StaleTokenError,
    open_ledger,
)
from settlement_demo.metrics import WorkerMetrics
from settlement_demo.redact import redact
from sidecar.client import (
    Lease,
    LeaseLost,
    SidecarClient,
    SidecarClientError,
    Unavailable,
)

T = TypeVar("T")
_log = structlog.get_logger("settlement_demo.worker")

IDLE_POLL_S = 0.2
RETRY_PAUSE_S = 0.2
LEDGER_BUSY_WAIT_S = 30.0
"""How long a starting worker retries a ledger that is only busy: workers
started together open a new SQLite ledger at once, and one may find it
locked while another switches it to WAL or creates the schema."""


class StartupError(Exception):
    """The worker cannot start (ledger or sidecar unusable); the message says why."""


class _Stopping(Exception):
    """SIGTERM arrived while leading: leave the leadership block (which resigns)."""


class SettlementWorker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.metrics = WorkerMetrics(config.election)
        self.health = Health()
        self.faults = FaultPoint(config.fault_file)
        self.history = History(config.history, f"worker:{config.worker_id}")
        self._stopping = asyncio.Event()
        self._leading = False
        self._campaign: asyncio.Task[None] | None = None
        self._last_generated = 0.0
        self._watches: set[asyncio.Task[None]] = set()

    # ---- life cycle ------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; 0 after a clean stop. Raises StartupError."""
        cfg = self.config
        ledger = await self._open_ledger_when_free()
        http: HttpEndpoints | None = None
        try:
            if cfg.http_listen:
                try:
                    http = HttpEndpoints(cfg.http_listen, self.health, self.metrics.registry)
                except OSError as exc:
                    raise StartupError(f"cannot serve HTTP on {cfg.http_listen}: {exc}") from None
                http.start()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            async with SidecarClient(cfg.sidecar) as client:
                await self._wait_for_sidecar(client)
                self.health.ready = True
                _log.info(
                    "worker_started",
                    election=cfg.election,
                    fencing=cfg.fencing,
                    ledger=ledger.description,
                )
                heart = asyncio.create_task(self._heartbeat())
                try:
                    while not self._stopping.is_set():
                        self._campaign = asyncio.create_task(
                            self._campaign_and_lead(client, ledger)
                        )
                        with contextlib.suppress(asyncio.CancelledError):
                            await self._campaign
                finally:
                    heart.cancel()
            _log.info("worker_stopped")
            return 0
        finally:
            if http is not None:
                http.stop()
            ledger.close()
            self.history.close()

    def stop(self) -> None:
        """Graceful stop: a follower stops campaigning now; a leader after its current step."""
        _log.info("stop_requested", leading=self._leading)
        self._stopping.set()
        if not self._leading and self._campaign is not None:
            self._campaign.cancel()

    async def _open_ledger_when_free(self) -> Ledger:
        """Open the ledger, retrying for ``LEDGER_BUSY_WAIT_S`` while it is
        only busy (``LedgerUnavailableError``: nothing was written); any other
        ledger error ends the start at once."""
        deadline = time.monotonic() + LEDGER_BUSY_WAIT_S
        while True:
            try:
                return await asyncio.to_thread(self._open_ledger)
            except LedgerUnavailableError as exc:
                if time.monotonic() >= deadline:
                    raise StartupError(f"ledger {redact(self.config.ledger_url)}: {exc}") from None
                _log.info("ledger_busy_at_start", error=str(exc))
            await asyncio.sleep(RETRY_PAUSE_S)

    def _open_ledger(self) -> Ledger:
        """Raises ``LedgerUnavailableError`` (busy: worth retrying) or StartupError."""
        cfg = self.config
        try:
            ledger = open_ledger(cfg.ledger_url, fencing=cfg.fencing, worker_id=cfg.worker_id)
        except LedgerUnavailableError:
            raise
        except LedgerError as exc:
            raise StartupError(f"ledger {redact(cfg.ledger_url)}: {exc}") from None
        try:
            change = ledger.create_schema()
        except LedgerUnavailableError:
            ledger.close()
            raise
        except LedgerError as exc:
            ledger.close()
            raise StartupError(f"ledger {ledger.description}: {exc}") from None
        if change is not SchemaChange.NONE:
            _log.info("ledger_schema_changed", change=change.value, ledger=ledger.description)
        return ledger

    async def _wait_for_sidecar(self, client: SidecarClient) -> None:
        deadline = time.monotonic() + self.config.sidecar_wait_ms / 1000
        while True:
            try:
                await client.status()
                return
            except SidecarClientError as exc:
                if time.monotonic() >= deadline:
                    raise StartupError(
                        f"sidecar at {self.config.sidecar} did not answer within "
                        f"{self.config.sidecar_wait_ms} ms: {exc.details}"
                    ) from None
            await asyncio.sleep(RETRY_PAUSE_S)

    async def _heartbeat(self) -> None:
        while True:
            self.health.beat()
            await asyncio.sleep(1.0)

    # ---- leading ---------------------------------------------------------------

    async def _campaign_and_lead(self, client: SidecarClient, ledger: Ledger) -> None:
        cfg = self.config
        self.history.record("campaign", election=cfg.election, worker=cfg.worker_id)
        try:
            async with client.leadership(
                cfg.election, candidate_id=cfg.worker_id, ttl=cfg.ttl_ms / 1000
            ) as lease:
                resigning = self._record_lease(lease)
                try:
                    await self._lead(lease, ledger)
                finally:
                    if lease.lost_reason is None:
                        resigning.set()  # leaving the block resigns
        except _Stopping:
            return
        except (
            LeaseLost,
            Unavailable,
            StaleTokenError,
            FenceHolderConflict,
            LedgerUnavailableError,
        ) as exc:
            _log.info("campaigning_again", reason=type(exc).__name__, error=str(exc))
            await asyncio.sleep(RETRY_PAUSE_S)
        except SidecarClientError as exc:
            _log.warning("sidecar_error", error=str(exc), code=exc.code)
            await asyncio.sleep(RETRY_PAUSE_S)

    def _record_lease(self, lease: Lease) -> asyncio.Event:
        """History: the grant now, every renewal, and how the lease ended:
        ``resigned`` when the worker set the returned event (it left the
        block while the lease held, which resigns), else ``lost``."""
        resigning = asyncio.Event()
        ids: dict[str, Any] = {"election": lease.election, "worker": self.config.worker_id}
        token = lease.fencing_token
        self.history.record("granted", token=token, deadline=lease.deadline, **ids)
        lease.add_renewal_listener(
            lambda sent_at, deadline: self.history.record(
                "renewed", token=token, sent_at=sent_at, deadline=deadline, **ids
            )
        )

        async def ended() -> None:
            await lease.lost.wait()
            if resigning.is_set():
                self.history.record("resigned", token=token, **ids)
            else:
                self.history.record("lost", token=token, reason=lease.lost_reason, **ids)

        if self.history.enabled:
            task = asyncio.ensure_future(ended())
            self._watches.add(task)
            task.add_done_callback(self._watches.discard)
        return resigning

    async def _lead(self, lease: Lease, ledger: Ledger) -> None:
        token = lease.fencing_token
        structlog.contextvars.bind_contextvars(fencing_token=token)
        self._leading = True
        self.metrics.is_leader.set(1)
        started = time.monotonic()
        _log.info("leading", election=lease.election)
        try:
            await self._step(lease, "raise_fence", ledger.raise_fence, lease.election, token)
            while not self._stopping.is_set():
                run = await self._step(
                    lease,
                    "claim",
                    lambda: ledger.claim_run(
                        lease.election, token, chunk_size=self.config.chunk_size
                    ),
                )
                if run is None:
                    await self._maybe_generate(ledger)
                    await self._idle(lease)
                    continue
                await self._settle(lease, ledger, run)
        except StaleTokenError as exc:
            self.metrics.stale_token_rejections.inc()
            _log.warning("stale_token_rejected", presented=exc.presented, current=exc.current)
            raise
        except FenceHolderConflict as exc:
            self.metrics.fence_holder_conflicts.inc()
            _log.error(
                "fence_holder_conflict",
                election=exc.election,
                token=exc.token,
                holder=exc.holder,
                current_holder=exc.current_holder,
                error=str(exc),
            )
            raise
        finally:
            self._leading = False
            self.metrics.is_leader.set(0)
            self.metrics.leadership_seconds.inc(time.monotonic() - started)
            structlog.contextvars.unbind_contextvars("fencing_token")
            _log.info("stopped_leading", lost=lease.lost_reason)

    async def _settle(self, lease: Lease, ledger: Ledger, run: Run) -> None:
        token, election = lease.fencing_token, lease.election
        self.metrics.runs_started.inc()
        written = await self._step(lease, None, ledger.written_chunks, election, token, run.id)
        instructions = await asyncio.to_thread(ledger.run_instructions, run.id)
        _log.info("run_claimed", run=run.id, chunks=run.n_chunks, already_written=len(written))
        for chunk in range(run.n_chunks):
            if chunk in written:
                continue
            payouts = instructions[run.chunk_slice(chunk)]

            def write(chunk: int = chunk, payouts: Any = payouts) -> bool:
                # The fault point sits after the last lease check and before
                # the write, on this thread: nothing can notice the pause.
                self.faults.reached(PAUSE_BEFORE_WRITE)
                return ledger.write_chunk(election, token, run.id, chunk, payouts)

            await self._step(lease, "write_chunk", write, run_id=run.id, chunk=chunk)
        if await self._step(
            lease, "settle", ledger.settle_run, election, token, run.id, run_id=run.id
        ):
            self.metrics.runs_settled.inc()
            _log.info("run_settled", run=run.id)

    async def _step(
        self,
        lease: Lease,
        name: str | None,
        fn: Callable[..., T],
        *args: Any,
        run_id: str | None = None,
        chunk: int | None = None,
    ) -> T:
        """One ledger call on a thread, raced against the loss of the lease.

        The history gets the call's outcome when the call ends, also when
        the worker stopped waiting for it (the lease was lost): a write that
        lands late is exactly what the fence must refuse."""
        if self.config.step_delay_ms:
            await self._pause_unless_interrupted(lease, self.config.step_delay_ms / 1000)
        if self._stopping.is_set():
            raise _Stopping
        lease.check()
        call = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        if name is not None and self.history.enabled:
            call.add_done_callback(self._write_recorder(lease, name, run_id, chunk))
        lost = asyncio.ensure_future(lease.lost.wait())
        try:
            await asyncio.wait({call, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not call.done():
            # The write may still land; the fence makes it harmless.
            call.add_done_callback(_consume)
            lease.check()
        result = call.result()
        if name is not None:
            self.metrics.steps[name].inc()
        return result

    def _write_recorder(
        self, lease: Lease, name: str, run_id: str | None, chunk: int | None
    ) -> Callable[[asyncio.Future[Any]], None]:
        t_start = time.monotonic()

        def record(call: asyncio.Future[Any]) -> None:
            result: Any = None
            if call.cancelled():
                outcome, detail = "unknown", "cancelled"
            elif (exc := call.exception()) is not None:
                outcome, detail = _outcome_of(exc), f"{type(exc).__name__}: {exc}"
            else:
                result = call.result()
                outcome, detail = "accepted", repr(result)
            run = run_id if run_id is not None else getattr(result, "id", None)
            self.history.record(
                "write",
                election=lease.election,
                worker=self.config.worker_id,
                token=lease.fencing_token,
                op=_OPS[name],
                run_id=None if run is None else str(run),
                chunk=chunk,
                t_start=t_start,
                outcome=outcome,
                detail=redact(detail)[:200],
            )

        return record

    async def _pause_unless_interrupted(self, lease: Lease, seconds: float) -> None:
        """Sleep ``seconds``, or less if the lease is lost or SIGTERM arrives."""
        stopping = asyncio.ensure_future(self._stopping.wait())
        lost = asyncio.ensure_future(lease.lost.wait())
        try:
            await asyncio.wait({stopping, lost}, timeout=seconds)
        finally:
            stopping.cancel()
            lost.cancel()

    async def _idle(self, lease: Lease) -> None:
        await self._pause_unless_interrupted(lease, IDLE_POLL_S)

    async def _maybe_generate(self, ledger: Ledger) -> None:
        interval = self.config.generate_interval_ms / 1000
        if not interval or time.monotonic() - self._last_generated < interval:
            return
        self._last_generated = time.monotonic()
        batch_id = f"auto-{int(time.time())}-{secrets.token_hex(3)}"
        await asyncio.to_thread(generate_batch, ledger, self.config.election, batch_id)
        _log.info("batch_generated", batch=batch_id)


_OPS = {
    "raise_fence": "raise_fence",
    "claim": "claim_run",
    "write_chunk": "write_chunk",
    "settle": "settle_run",
}
"""Step names (metrics) to the history's write operations."""


def _outcome_of(exc: BaseException) -> str:
    if isinstance(exc, StaleTokenError):
        return "stale"
    if isinstance(exc, FenceHolderConflict):
        return "conflict"
    return "error"


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
