"""The runtime loop: one asyncio task owns the Raft core.

Theory of operation
-------------------
Everything that touches the core happens in ``RaftNode._run``, one task, so
the core needs no locks. Inputs wait in bounded queues: peer messages
(``deliver``, called by the transport) and proposals (``propose``, called by
the API). Each turn of the loop

1. waits for an input or for the next tick that can do more than count
   (``Raft.idle_ticks``: an idle follower wakes for its leader's heartbeats,
   not for every tick in between), then makes up every tick that came due
   on the monotonic clock;
2. steps every queued input into the core (at most ``max_inputs_per_turn``):
   peers the transport lost (``Raft.leader_unreachable``), reads, messages,
   then the proposals of the turn as one ``propose_batch``;
3. handles the ready batches in the order the core requires: persist, then
   send, then apply to the state machine and answer the waiting proposals
   and reads, then ``advance``. A write that syncs goes to the node's disk
   thread, so a slow fsync stalls only this loop, not the API and the
   transport; but while the disk is fast, a batch with nothing to send
   meanwhile is written on the loop, since the thread handoffs cost more
   than the fsync (``_persist_synced``). A leader's appends leave before its
   own write (``split_messages``). A batch that only raises the commit index
   is recorded inline (storage does not sync it) and applied before its
   messages are handed over, so the callers it answers go first.

Proposals wait on futures keyed by log index; the entry applied at that index
is theirs only if it carries the term they were proposed in (otherwise a new
leader overwrote it, and the caller hears ``ProposalLost``). A storage error
stops the loop: the node must exit rather than run on a disk it cannot trust.

Every queue has a bound; a full one refuses at once (``Overloaded``) rather
than grow memory behind a slow disk or a dead peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import structlog

from sidecar.raft import (
    ConfChange,
    Entry,
    EntryKind,
    InvariantViolation,
    Message,
    NotLeader,
    Raft,
    RaftConfig,
    RaftError,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    needs_sync,
    split_messages,
)
from sidecar.storage.interface import RaftStorage

_log = structlog.get_logger("sidecar.node")


class NodeError(Exception):
    """Root of the runtime's refusals."""


class Overloaded(NodeError):
    """A bounded queue is full; retry later."""


class ProposalLost(NodeError):
    """The entry was overwritten by a new leader before it committed."""


class OutcomeUnknown(NodeError):
    """The entry reached this node inside a snapshot: it is committed or was
    overwritten, but its result is not known here. Commands are idempotent
    (a Campaign or Resign again with the same lease key answers as the first
    did), so the caller asks again."""


class NodeStopped(NodeError):
    """The node stopped (shutdown or a fatal storage error)."""


class InvalidProposal(NodeError):
    """The state machine refused a command before it entered the log."""


def _consume(fut: asyncio.Future[tuple[int, object]]) -> None:
    """Retrieve a result nobody awaits, so asyncio does not warn about it."""
    if not fut.cancelled():
        fut.exception()


class StateMachine(Protocol):
    """What the node applies committed commands to."""

    def apply(self, index: int, data: bytes) -> object: ...
    def refusal(self, data: bytes, *, forwarded: bool) -> str | None:
        """Why ``data`` may not be proposed (``forwarded``: a peer asks), or None."""
        ...

    def snapshot(self) -> bytes: ...
    def restore(self, index: int, data: bytes) -> None: ...


class Outbox(Protocol):
    def send(self, messages: Sequence[Message]) -> None: ...


@dataclass(frozen=True, slots=True)
class NodeSettings:
    tick_seconds: float = 0.015
    """One Raft tick; election timeout = election_timeout_ticks x this."""
    max_inbox: int = 10_000
    max_pending_proposals: int = 10_000
    max_inputs_per_turn: int = 1_000
    snapshot_every_entries: int = 10_000
    """Compact the log once this many entries were applied since the last snapshot."""
    inline_sync_limit_s: float = 0.002
    """A node with nothing to send during a synced write makes it on the loop
    while its last one took less than this (see ``_persist_synced``); 0 keeps
    every synced write in the disk thread."""


@dataclass(slots=True)
class _Proposal:
    data: bytes
    done: asyncio.Future[tuple[int, object]]
    appended: asyncio.Future[tuple[int, int]] | None = None
    """Resolved with (index, term) as soon as the entry is in the leader's log."""


class Forwarder(Protocol):
    """How a follower reaches the leader (sidecar.transport.forward)."""

    async def propose(self, leader: str, command: bytes) -> tuple[int, int]: ...
    async def read_index(self, leader: str) -> int: ...
    async def renew_lease(self, leader: str, election: str, token: int) -> tuple[bool, int]: ...


RECENT_RESULTS = 4096
"""Apply results kept for followers whose forwarded entry applied before they asked."""


class RaftNode:
    def __init__(
        self,
        raft_config: RaftConfig,
        storage: RaftStorage,
        outbox: Outbox,
        state_machine: StateMachine,
        *,
        settings: NodeSettings | None = None,
        rng: random.Random | None = None,
        on_soft_state: Callable[[SoftState], None] | None = None,
    ) -> None:
        self.settings = settings or NodeSettings()
        self._storage = storage
        self._outbox = outbox
        self._sm = state_machine
        recovered = storage.recover()
        self._raft = Raft(raft_config, rng or random.Random(), recovered)
        if recovered.snapshot is not None:
            meta = recovered.snapshot.metadata
            self._sm.restore(meta.index, recovered.snapshot.data)
        self._snapshot_index = recovered.snapshot.metadata.index if recovered.snapshot else 0
        self._on_soft_state = on_soft_state
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(self.settings.max_inbox)
        self._proposals: asyncio.Queue[_Proposal] = asyncio.Queue(
            self.settings.max_pending_proposals
        )
        self._waiting: dict[int, list[tuple[int, asyncio.Future[tuple[int, object]]]]] = {}
        self._recent: dict[int, tuple[int, object]] = {}  # index -> (term, result), bounded
        self.forwarder: Forwarder | None = None
        self.on_proposal_latency: Callable[[float], None] | None = None
        """Seconds from a local proposal to its apply here (for metrics)."""
        self.turn_listeners: list[Callable[[], None]] = []
        """Plain functions called on the loop after every turn and once when
        it ends: observers (health) follow the core's state there instead of
        polling it on timers of their own, which woke an idle node for nothing."""
        self._failed_listeners: list[Callable[[], None]] = []
        self._reads: dict[int, asyncio.Future[int]] = {}
        self._read_ids = 0
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        # Only the loop task touches the core, so requests from other tasks
        # wait here until its next turn (a ready batch may be in flight).
        self._read_requests: list[int] = []
        self._transfer_to: str | None = None
        self._conf_changes: list[tuple[ConfChange, asyncio.Future[int]]] = []
        self._unreachable_peers: set[str] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One thread of our own for fsyncs: writes stay in order, and stop()
        # can shut it down instead of leaving it to the loop's default pool.
        self._disk_thread = ThreadPoolExecutor(1, thread_name_prefix=f"disk-{raft_config.node_id}")
        self._stopped: BaseException | None = None
        self._closed = False
        """stop() was called: every later request fails at once."""
        self._last_sync_s = 0.0
        """Seconds the last synced write that could go on the loop took, wherever
        it went (0 before the first): decides where the next one goes."""
        self.soft_state = SoftState(Role.FOLLOWER, None, recovered.hard_state.term)
        self._durable_hard_state = recovered.hard_state

    # ---- public API (called from other tasks) ---------------------------------------

    @property
    def id(self) -> str:
        return self._raft.id

    @property
    def raft(self) -> Raft:
        """Read-only view for status and metrics; never mutate it from outside."""
        return self._raft

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"raft-node-{self.id}")

    @property
    def failure(self) -> BaseException | None:
        """Why the loop stopped by itself (a storage error), or None."""
        return self._stopped

    async def wait(self) -> None:
        """Return when the loop ends; raises what ended it (e.g. StorageIOError)."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        """End the loop and close storage; a failure that ended it was already logged.

        Every call after this (propose, reads, membership changes) raises
        NodeStopped at once instead of waiting for a loop that is gone.
        """
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._fail_waiters(NodeStopped("the node stopped"))
        self._disk_thread.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self._storage.close()

    def deliver(self, messages: Sequence[Message]) -> None:
        """Queue peer messages; drops what does not fit (Raft tolerates loss)."""
        for m in messages:
            try:
                self._inbox.put_nowait(m)
            except asyncio.QueueFull:
                _log.warning("inbox_full_dropping", node_id=self.id, dropped=type(m).__name__)
                break
        self._wakeup.set()

    async def propose(self, data: bytes) -> tuple[int, object]:
        """Replicate ``data``; returns (index, state machine result) once applied here.

        Raises InvalidProposal, NotLeader (with a leader hint), Overloaded,
        ProposalLost, NodeStopped.
        """
        self._check_running()
        self._check_proposal(data, forwarded=False)
        if self._raft.role is not Role.LEADER:
            raise NotLeader(self._raft.leader_id)
        done: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()
        try:
            self._proposals.put_nowait(_Proposal(data, done))
        except asyncio.QueueFull:
            raise Overloaded("too many proposals waiting") from None
        self._wakeup.set()
        started = time.monotonic()
        result = await done
        if self.on_proposal_latency is not None:
            self.on_proposal_latency(time.monotonic() - started)
        return result

    async def append_for_peer(self, data: bytes) -> tuple[int, int]:
        """Leader only: append ``data`` for a follower; returns (index, term) once in the log.

        Raises InvalidProposal, NotLeader, Overloaded, NodeStopped.
        """
        self._check_running()
        self._check_proposal(data, forwarded=True)
        if self._raft.role is not Role.LEADER:
            raise NotLeader(self._raft.leader_id)
        loop = asyncio.get_running_loop()
        proposal = _Proposal(data, loop.create_future(), loop.create_future())
        proposal.done.add_done_callback(_consume)
        try:
            self._proposals.put_nowait(proposal)
        except asyncio.QueueFull:
            raise Overloaded("too many proposals waiting") from None
        self._wakeup.set()
        assert proposal.appended is not None
        return await proposal.appended

    async def submit(self, data: bytes) -> tuple[int, object]:
        """Replicate ``data`` from any node: locally on the leader, forwarded otherwise.

        Returns (index, state machine result) once this node applied it.
        Raises InvalidProposal, NotLeader (no leader known, or the leader
        moved), Overloaded, ProposalLost, NodeStopped, or the forwarder's errors.
        """
        if self._raft.role is Role.LEADER or self.forwarder is None:
            return await self.propose(data)
        self._check_proposal(data, forwarded=False)
        leader = self._raft.leader_id
        if leader is None:
            raise NotLeader(None)
        index, term = await self.forwarder.propose(leader, data)
        return await self._await_entry(index, term)

    async def read_anywhere(self) -> int:
        """A linearizable read point, applied here on return, from any node."""
        if self._raft.role is Role.LEADER or self.forwarder is None:
            return await self.read_barrier()
        leader = self._raft.leader_id
        if leader is None:
            raise NotLeader(None)
        index = await self.forwarder.read_index(leader)
        await self.wait_applied(index)
        return index

    def _check_proposal(self, data: bytes, *, forwarded: bool) -> None:
        """Nothing the state machine could not apply enters the log (docs/sidecar.md)."""
        reason = self._sm.refusal(data, forwarded=forwarded)
        if reason is not None:
            raise InvalidProposal(reason)

    async def _await_entry(self, index: int, term: int) -> tuple[int, object]:
        self._check_running()
        if index <= self._raft.applied_index:
            seen = self._recent.get(index)
            if seen is None:
                raise ProposalLost(f"entry {index} applied too long ago to know its outcome")
            if seen[0] != term:
                raise ProposalLost(f"entry {index} was overwritten by a new leader")
            return index, seen[1]
        done: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(index, []).append((term, done))
        return await done

    async def read_barrier(self) -> int:
        """Wait until this leader may serve a linearizable read (Raft §6.4).

        Returns the read index; the local state machine has applied it on return.
        Raises NotLeader, Overloaded, NodeStopped.
        """
        self._check_running()
        if self._raft.role is not Role.LEADER:
            raise NotLeader(self._raft.leader_id)
        if len(self._read_requests) >= self.settings.max_pending_proposals:
            raise Overloaded("too many reads waiting")
        self._read_ids += 1
        request_id = self._read_ids
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[request_id] = done
        self._read_requests.append(request_id)
        self._wakeup.set()
        index = await done
        await self.wait_applied(index)
        return index

    async def wait_applied(self, index: int) -> None:
        if self._raft.applied_index >= index:
            return
        self._check_running()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, done))
        await done

    async def change_membership(self, change: ConfChange) -> int:
        """Leader only: append a single-server membership change; returns its index.

        The change takes effect as soon as it is in the log (dissertation
        §4.1); the caller watches ``raft.membership`` and the commit index.
        Raises NotLeader, ConfChangeRejected (another change pending, a
        learner not caught up, ...), NodeStopped.
        """
        self._check_running()
        if self._raft.role is not Role.LEADER:
            raise NotLeader(self._raft.leader_id)
        if len(self._conf_changes) >= 8:
            raise Overloaded("too many membership changes waiting")
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._conf_changes.append((change, done))
        self._wakeup.set()
        return await done

    def transfer_leadership(self, target: str) -> None:
        """Ask the core to hand leadership to ``target`` at the next turn of the loop."""
        self._transfer_to = target
        self._wakeup.set()

    def peer_unreachable(self, peer: str) -> None:
        """The transport lost its connection to ``peer``; the core hears it at
        the next turn (``Raft.leader_unreachable``: a follower that lost its
        leader campaigns sooner)."""
        self._unreachable_peers.add(peer)
        self._wakeup.set()

    # ---- the loop ------------------------------------------------------------------

    async def _run(self) -> None:
        tick = self.settings.tick_seconds
        next_tick = time.monotonic() + tick
        try:
            while True:
                # Sleep through the ticks that would only count (an idle
                # follower's, between heartbeats): they are made up, late,
                # below, before the next input is stepped (Raft.idle_ticks).
                due = next_tick + (self._raft.idle_ticks() - 1) * tick
                timeout = max(0.0, due - time.monotonic())
                idle = self._inbox.empty() and self._proposals.empty()
                idle = idle and not self._read_requests and self._transfer_to is None
                idle = idle and not self._unreachable_peers and not self._conf_changes
                if idle and not self._raft.has_ready():
                    # Not asyncio.wait_for: on Python 3.11 it can swallow a
                    # cancellation that races with the event, and stop() hangs.
                    alarm = asyncio.get_running_loop().call_later(timeout, self._wakeup.set)
                    try:
                        await self._wakeup.wait()
                    finally:
                        alarm.cancel()
                self._wakeup.clear()
                now = time.monotonic()
                while now >= next_tick:
                    self._raft.tick()
                    next_tick += tick
                self._step_inputs()
                while self._raft.has_ready():
                    await self._handle_ready(self._raft.ready())
                await self._maybe_snapshot()
                self._notify_turn()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._stopped = exc
            _log.critical("node_stopped", node_id=self.id, error=str(exc), exc_info=exc)
            self._fail_waiters(NodeStopped(f"the node stopped: {exc}"))
            self._notify_turn()
            raise

    def _notify_turn(self) -> None:
        """Call the turn listeners; one that raises is logged (the first time
        only: it would fail again on every turn), never allowed to stop the
        loop (an observer's bug must not take the node down)."""
        for listener in list(self.turn_listeners):
            try:
                listener()
            except Exception as exc:
                if listener not in self._failed_listeners:
                    self._failed_listeners.append(listener)
                    _log.error(
                        "turn_listener_failed", node_id=self.id, error=repr(exc), exc_info=exc
                    )

    def _step_inputs(self) -> None:
        if self._transfer_to is not None:
            target, self._transfer_to = self._transfer_to, None
            try:
                self._raft.transfer_leadership(target)
            except RaftError as exc:
                _log.warning("transfer_refused", node_id=self.id, target=target, error=str(exc))
        changes, self._conf_changes = self._conf_changes, []
        for change, done in changes:
            try:
                index = self._raft.propose_conf_change(change)
            except RaftError as exc:
                if not done.done():
                    done.set_exception(exc)
                continue
            if not done.done():
                done.set_result(index)
        lost, self._unreachable_peers = self._unreachable_peers, set()
        for peer in sorted(lost):
            self._raft.leader_unreachable(peer)
        requests, self._read_requests = self._read_requests, []
        for request_id in requests:
            try:
                self._raft.read_index(request_id)
            except RaftError as exc:
                read = self._reads.pop(request_id, None)
                if read is not None and not read.done():
                    read.set_exception(exc)
        budget = self.settings.max_inputs_per_turn
        while budget and not self._inbox.empty():
            budget -= 1
            m = self._inbox.get_nowait()
            try:
                self._raft.step(m)
            except InvariantViolation:
                raise  # the node stops (the loop logs it): its log cannot be trusted
            except RaftError as exc:
                _log.warning("message_refused", node_id=self.id, error=str(exc))
        batch: list[_Proposal] = []
        while budget and not self._proposals.empty():
            budget -= 1
            batch.append(self._proposals.get_nowait())
        if not batch:
            return
        try:
            indices = self._raft.propose_batch([p.data for p in batch])
        except RaftError as exc:
            for p in batch:
                if not p.done.done():
                    p.done.set_exception(exc)
            return
        term = self._raft.term
        for p, index in zip(batch, indices, strict=True):
            self._waiting.setdefault(index, []).append((term, p.done))
            if p.appended is not None and not p.appended.done():
                p.appended.set_result((index, term))

    async def _handle_ready(self, rd: Ready) -> None:
        hs = rd.hard_state
        if needs_sync(hs, rd.snapshot, rd.entries, last=self._durable_hard_state):
            before, after = split_messages(
                rd, role=self._raft.role, durable=self._durable_hard_state
            )
            if before:  # a leader's appends travel while it writes them itself
                self._outbox.send(before)
            await self._persist_synced(rd, sending=bool(before))
            if after:
                self._outbox.send(after)
            self._apply_ready(rd)
        else:
            if hs is not None:
                # Only the commit index rose: storage records it without a
                # sync (see RaftStorage.persist), so it costs no trip to the
                # disk thread, which is idle: every disk job is awaited
                # before the loop goes on.
                self._storage.persist(hs, None, ())
                self._durable_hard_state = hs
            # Nothing waits for the disk, so apply first: the callers this
            # answers are queued on the event loop ahead of the transport's
            # writers, and their replies leave before this batch's commit
            # broadcast and heartbeats instead of behind them.
            self._apply_ready(rd)
            if rd.messages:
                self._outbox.send(rd.messages)
        self._raft.advance(rd)
        self._release_applied_waiters()

    async def _persist_synced(self, rd: Ready, *, sending: bool) -> None:
        """Persist a batch that needs an fsync; returns once it is durable.

        Normally in the disk thread, so that a slow disk stalls only the Raft
        loop, not the API and the transport. But a trip to that thread and
        back costs several hundred microseconds of thread handoffs, more than
        a fast fsync itself. So a batch without a snapshot, written while
        nothing of it is on its way (``sending``: a leader's early appends
        must get the loop to leave), is written on the loop as long as the
        last such write took under ``inline_sync_limit_s``. That is a
        follower's common case, and its answers wait for the write anyway.
        """
        hs = rd.hard_state
        may_inline = not sending and rd.snapshot is None
        inline = may_inline and self._last_sync_s < self.settings.inline_sync_limit_s
        started = time.monotonic()
        if inline:
            self._storage.persist(hs, None, rd.entries)
        else:
            await asyncio.get_running_loop().run_in_executor(
                self._disk_thread, self._storage.persist, hs, rd.snapshot, rd.entries
            )
        if may_inline:
            self._last_sync_s = time.monotonic() - started
        if hs is not None:
            self._durable_hard_state = hs

    def _apply_ready(self, rd: Ready) -> None:
        """Restore, apply, answer reads and note the soft state of a persisted batch."""
        if rd.snapshot is not None:
            meta = rd.snapshot.metadata
            self._sm.restore(meta.index, rd.snapshot.data)
            self._snapshot_index = meta.index
            self._answer_waiters_inside(meta.index)
        for entry in rd.committed_entries:
            self._apply(entry)
        for rs in rd.read_states:
            fut = self._reads.pop(rs.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(rs.index)
        for request_id in rd.failed_reads:
            fut = self._reads.pop(request_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(NotLeader(self._raft.leader_id))
        if rd.soft_state is not None:
            self.soft_state = rd.soft_state
            if rd.soft_state.role is not Role.LEADER:
                self._fail_proposals_on_lost_leadership()
            if self._on_soft_state is not None:
                self._on_soft_state(rd.soft_state)

    def _apply(self, entry: Entry) -> None:
        result: object = None
        if entry.kind is EntryKind.NORMAL:
            result = self._sm.apply(entry.index, entry.data)
        self._recent[entry.index] = (entry.term, result)
        if len(self._recent) > RECENT_RESULTS:
            del self._recent[next(iter(self._recent))]
        for term, fut in self._waiting.pop(entry.index, []):
            if fut.done():
                continue
            if term == entry.term:
                fut.set_result((entry.index, result))
            else:
                fut.set_exception(
                    ProposalLost(f"entry {entry.index} was overwritten by a new leader")
                )

    def _answer_waiters_inside(self, snapshot_index: int) -> None:
        """Entries up to ``snapshot_index`` arrived inside the snapshot, never
        one by one: a forwarded proposal or a queued Campaign waiting for one
        of them would otherwise wait for good."""
        for index in [i for i in self._waiting if i <= snapshot_index]:
            for _, fut in self._waiting.pop(index):
                if not fut.done():
                    fut.set_exception(
                        OutcomeUnknown(
                            f"entry {index} reached this node inside a snapshot; "
                            "ask again to learn its outcome"
                        )
                    )

    def _fail_proposals_on_lost_leadership(self) -> None:
        # Entries proposed in a term we no longer lead may still commit (the
        # new leader may keep them); keep waiting for them, but answer
        # proposals that never made it into the log.
        while not self._proposals.empty():
            p = self._proposals.get_nowait()
            if not p.done.done():
                p.done.set_exception(NotLeader(self._raft.leader_id))

    def _release_applied_waiters(self) -> None:
        applied = self._raft.applied_index
        still: list[tuple[int, asyncio.Future[None]]] = []
        for index, fut in self._applied_waiters:
            if fut.done():  # its waiter gave up (a renewal's deadline): forget it
                continue
            if index <= applied:
                fut.set_result(None)
            else:
                still.append((index, fut))
        self._applied_waiters = still

    async def _maybe_snapshot(self) -> None:
        applied = self._raft.applied_index
        if applied - self._snapshot_index < self.settings.snapshot_every_entries:
            return
        term = self._raft.log.term(applied)
        if term is None:
            return
        meta = SnapshotMetadata(applied, term, self._raft.log.membership_at(applied))
        snapshot = Snapshot(meta, self._sm.snapshot())
        # Durable first (on the disk thread, so the loop is not stalled by
        # fsync), then the core forgets; only this task touches the core.
        await asyncio.get_running_loop().run_in_executor(
            self._disk_thread, self._storage.save_snapshot, snapshot
        )
        self._raft.compact(snapshot)
        self._snapshot_index = applied
        _log.info("snapshot_taken", node_id=self.id, index=applied, term=term)

    def _check_running(self) -> None:
        if self._stopped is not None:
            raise NodeStopped(f"the node stopped: {self._stopped}")
        if self._closed:
            raise NodeStopped("the node was stopped")

    def _fail_waiters(self, exc: NodeError) -> None:
        for waiters in self._waiting.values():
            for _, fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
        self._waiting.clear()
        for read in self._reads.values():
            if not read.done():
                read.set_exception(exc)
        self._reads.clear()
        for _, waiter in self._applied_waiters:
            if not waiter.done():
                waiter.set_exception(exc)
        self._applied_waiters.clear()
        for _, change in self._conf_changes:
            if not change.done():
                change.set_exception(exc)
        self._conf_changes.clear()
