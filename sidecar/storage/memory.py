"""``MemoryStorage``: ``RaftStorage`` in memory, with crash points.

Theory of operation. The storage holds the *durable* state (hard state,
snapshot, log) plus a list of *staged* batches: writes that were issued but not
yet fsynced. ``stage`` validates a batch against the log as it would be with
every staged batch applied, and queues it; ``sync`` applies the queue to the
durable state in order; ``persist`` is both, and when nothing is queued it
writes straight into the durable state (the simulator's hot path: no copies
beyond the tuple of entries handed out by ``recover``).

``crash`` returns the storage a restart would find after a power cut: the
durable state, plus, for ``keep_prefix=k``, a torn write that reached the disk
up to (not including) the k+1-th staged entry. The model is the disk version's
write order within a batch, snapshot then entries then hard state: a staged
snapshot written before that cut survives (``DiskStorage`` fsyncs a snapshot
file before it touches the log), staged hard states never do (they are written
after the entries of their batch, and a torn batch never finished).

Semantics shared with ``DiskStorage``:

* a received snapshot replaces the whole log;
* entries truncate the log from ``entries[0].index``, which must lie after the
  snapshot and at most one past the last index, and must be contiguous;
* ``save_snapshot`` stores our own snapshot and drops the entries it covers;
* ``recover`` reports ``commit`` at least at the snapshot index (a snapshot
  only ever covers committed entries).

Every violation raises StorageError: in production it means a runtime bug.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidecar.raft import Entry, HardState, PersistentState, Snapshot, needs_sync
from sidecar.storage.errors import StorageError

if TYPE_CHECKING:
    from sidecar.storage.interface import RaftStorage


@dataclass(frozen=True, slots=True)
class _Batch:
    hard_state: HardState | None
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]


class MemoryStorage:
    """The same contract as ``DiskStorage``, in memory, losing unsynced writes on ``crash``."""

    def __init__(self, initial: PersistentState | None = None) -> None:
        # Durable state. Invariant: self._entries[i].index == self._base + 1 + i.
        self._hard_state = HardState()
        self._snapshot: Snapshot | None = None
        self._entries: list[Entry] = []
        self._staged: list[_Batch] = []
        # The log bounds with every staged batch applied, for validating the next one.
        self._staged_base = 0
        self._staged_last = 0
        self._closed = False
        if initial is not None:
            self.persist(initial.hard_state, initial.snapshot, initial.entries)

    # ---- reading the durable state ---------------------------------------------

    @property
    def hard_state(self) -> HardState:
        """The durable hard state (not what is merely staged)."""
        return self._hard_state

    @property
    def snapshot(self) -> Snapshot | None:
        """The durable snapshot, if any."""
        return self._snapshot

    def base_index(self) -> int:
        """The index the durable log starts after: the snapshot's, or 0."""
        return self._snapshot.metadata.index if self._snapshot is not None else 0

    def last_index(self) -> int:
        """The last durable index (the snapshot's when the log is empty)."""
        return self.base_index() + len(self._entries)

    def term(self, index: int) -> int | None:
        """The term of the durable entry at ``index`` (the snapshot's at its index), or None."""
        base = self.base_index()
        if index == base:
            return self._snapshot.metadata.term if self._snapshot is not None else 0
        offset = index - base - 1
        if 0 <= offset < len(self._entries):
            return self._entries[offset].term
        return None

    def entries(self) -> tuple[Entry, ...]:
        """The durable log after the snapshot."""
        return tuple(self._entries)

    @property
    def has_staged(self) -> bool:
        """Whether a write is waiting for ``sync``."""
        return bool(self._staged)

    # ---- RaftStorage ------------------------------------------------------------

    def recover(self) -> PersistentState:
        """What a restart would read: the durable state only."""
        hs = self._hard_state
        base = self.base_index()
        if hs.commit < base:
            hs = HardState(hs.term, hs.voted_for, base)
        return PersistentState(hs, self._snapshot, tuple(self._entries))

    def persist(
        self,
        hard_state: HardState | None,
        snapshot: Snapshot | None,
        entries: Sequence[Entry],
    ) -> None:
        """Stage and sync one ready batch. Raises StorageError for a batch that does not fit.

        A batch that only raises the commit index is staged, not synced, as
        ``DiskStorage`` does: it becomes durable with the next batch, and a
        crash before that loses it (Raft never needs it for safety).
        """
        if self._commit_only(hard_state, snapshot, entries):
            self.stage(hard_state, snapshot, entries)
            return
        if self._staged:
            self.stage(hard_state, snapshot, entries)
            self.sync()
            return
        batch = self._validated(hard_state, snapshot, entries)
        self._apply(batch)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Durably store a snapshot of our own state machine and drop the log it covers.

        Raises StorageError when writes are staged (sync first), when the
        snapshot is not newer than the stored one, when it reaches beyond the
        durable log, or when its term disagrees with the log's entry at its index.
        """
        self._check_open()
        if self._staged and all(
            self._commit_only(b.hard_state, b.snapshot, b.entries) for b in self._staged
        ):
            self.sync()  # the snapshot's own write would carry them
        if self._staged:
            raise StorageError("save_snapshot with unsynced writes staged; sync first")
        meta = snapshot.metadata
        base = self.base_index()
        if meta.index <= base:
            raise StorageError(f"snapshot at {meta.index} is not newer than the one at {base}")
        if meta.index > self.last_index():
            raise StorageError(
                f"snapshot at {meta.index} is beyond the durable log, which ends at "
                f"{self.last_index()}"
            )
        if self.term(meta.index) != meta.term:
            raise StorageError(
                f"snapshot at {meta.index} has term {meta.term}, the log has "
                f"{self.term(meta.index)} there"
            )
        del self._entries[: meta.index - base]
        self._snapshot = snapshot
        self._staged_base = meta.index

    def close(self) -> None:
        self._closed = True

    def _commit_only(
        self, hard_state: HardState | None, snapshot: Snapshot | None, entries: Sequence[Entry]
    ) -> bool:
        """Whether a batch changes nothing but the commit index (term and vote as staged)."""
        return hard_state is not None and not needs_sync(
            hard_state, snapshot, entries, last=self._staged_hard_state()
        )

    def _staged_hard_state(self) -> HardState:
        for batch in reversed(self._staged):
            if batch.hard_state is not None:
                return batch.hard_state
        return self._hard_state

    # ---- crash points -------------------------------------------------------------

    def stage(
        self,
        hard_state: HardState | None,
        snapshot: Snapshot | None,
        entries: Sequence[Entry],
    ) -> None:
        """Record a write that stays volatile until ``sync``.

        Raises StorageError when the batch does not fit the log as staged so far.
        """
        self._staged.append(self._validated(hard_state, snapshot, entries))

    def sync(self) -> None:
        """Make every staged write durable, in the order it was staged."""
        self._check_open()
        staged, self._staged = self._staged, []
        for batch in staged:
            self._apply(batch)

    def crash(self, keep_prefix: int | None = None) -> MemoryStorage:
        """The storage after a power cut: durable state only, plus a torn write.

        ``keep_prefix=k`` keeps the staged writes that precede the k+1-th staged
        entry: the first ``k`` staged entries and the staged snapshots written
        before the cut, never a staged hard state (see the module docstring).
        ``self`` is left as it was. Raises ValueError for a negative ``k``.
        """
        if keep_prefix is not None and keep_prefix < 0:
            raise ValueError(f"keep_prefix must be >= 0, got {keep_prefix}")
        after = MemoryStorage()
        after._hard_state = self._hard_state
        after._snapshot = self._snapshot
        after._entries = list(self._entries)
        after._staged_base, after._staged_last = self.base_index(), self.last_index()
        if keep_prefix is not None:
            budget = keep_prefix
            for batch in self._staged:
                torn = batch.entries[:budget]
                budget -= len(torn)
                after._apply(_Batch(None, batch.snapshot, torn))
                if len(torn) < len(batch.entries):
                    break  # the cut falls inside this batch
            after._staged_base, after._staged_last = after.base_index(), after.last_index()
        return after

    # ---- internals -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("storage is closed")

    def _validated(
        self,
        hard_state: HardState | None,
        snapshot: Snapshot | None,
        entries: Sequence[Entry],
    ) -> _Batch:
        """Check a batch against the log with every staged batch applied; advance that view."""
        self._check_open()
        base, last = self._staged_base, self._staged_last
        if snapshot is not None:
            index = snapshot.metadata.index
            if index <= base:
                raise StorageError(f"received snapshot at {index} is not newer than {base}")
            base = last = index
        batch = tuple(entries)
        if batch:
            first = batch[0].index
            if first <= base or first > last + 1:
                raise StorageError(f"entries from {first} do not fit the log ({base}, {last}]")
            for i, e in enumerate(batch):
                if e.index != first + i:
                    raise StorageError(
                        f"entries are not contiguous: {e.index} after {first + i - 1}"
                    )
            last = batch[-1].index
        self._staged_base, self._staged_last = base, last
        return _Batch(hard_state, snapshot, batch)

    def _apply(self, batch: _Batch) -> None:
        """Write a validated batch into the durable state."""
        if batch.snapshot is not None:
            self._snapshot = batch.snapshot
            self._entries = []
        if batch.entries:
            del self._entries[batch.entries[0].index - self.base_index() - 1 :]
            self._entries.extend(batch.entries)
        if batch.hard_state is not None:
            self._hard_state = batch.hard_state


if TYPE_CHECKING:
    _conforms: RaftStorage = MemoryStorage()
