"""The Raft log as the core sees it: a compacted prefix plus entries in memory.

Theory of operation. Entries before ``snapshot_index`` are gone, summarised by
the snapshot's (index, term, membership). The entries after it are held in a
list; ``entries[i].index == snapshot_index + 1 + i``. The log also remembers
which suffix the runtime has not yet persisted (``unstable_from``): appending
over a conflicting suffix moves that mark back, so the next ready batch tells
the runtime to truncate and rewrite from there.

The configuration in force is read off the log itself: the newest
conf-change entry, or else the snapshot's membership (dissertation §4.1).
Truncating a conf-change entry therefore reverts the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.raft.errors import InvariantViolation
from sidecar.raft.membership import decode_conf_entry
from sidecar.raft.types import Entry, EntryKind, Membership, Snapshot, SnapshotMetadata


@dataclass(slots=True)
class _ConfPoint:
    index: int
    membership: Membership


class RaftLog:
    def __init__(self, base: SnapshotMetadata, entries: tuple[Entry, ...] = ()) -> None:
        self.base = base
        self._entries: list[Entry] = []
        self._confs: list[_ConfPoint] = []
        self.commit = base.index
        self.applied = base.index
        """The last index handed to the runtime for applying."""
        self.unstable_from = base.index + 1
        """First index not yet known persisted."""
        self.snapshot: Snapshot | None = None
        """The newest full snapshot, sent to followers that fell behind it."""
        if entries:
            self._append_at(entries)
            self.unstable_from = self.last_index + 1

    # ---- queries -----------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.base.index + 1

    @property
    def last_index(self) -> int:
        return self.base.index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.base.term

    def term(self, index: int) -> int | None:
        """The term at ``index``; None when compacted away or beyond the end."""
        if index == self.base.index:
            return self.base.term
        offset = index - self.base.index - 1
        if 0 <= offset < len(self._entries):
            return self._entries[offset].term
        return None

    def entry(self, index: int) -> Entry:
        offset = index - self.base.index - 1
        if not 0 <= offset < len(self._entries):
            raise InvariantViolation(
                f"no entry {index} in log [{self.first_index}, {self.last_index}]"
            )
        return self._entries[offset]

    def matches(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def slice(self, lo: int, hi: int, max_entries: int, max_bytes: int) -> tuple[Entry, ...]:
        """Entries in [lo, hi), at most ``max_entries`` and about ``max_bytes``.

        At least one entry is returned when the range is not empty, so an
        oversized entry still moves.
        """
        if lo < self.first_index:
            raise InvariantViolation(f"slice from {lo} below first index {self.first_index}")
        start = lo - self.base.index - 1
        stop = min(hi - self.base.index - 1, len(self._entries), start + max_entries)
        out: list[Entry] = []
        size = 0
        for i in range(start, stop):
            e = self._entries[i]
            size += len(e.data)
            if out and size > max_bytes:
                break
            out.append(e)
        return tuple(out)

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a candidate's log is at least as up to date as ours (Raft §5.4.1)."""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term``.

        Used by both sides of fast backtracking. Stops at the compaction point,
        where the terms are no longer known.
        """
        index = min(index, self.last_index)
        while index > self.base.index:
            t = self.term(index)
            if t is not None and t <= term:
                break
            index -= 1
        return index

    def membership(self) -> Membership:
        return self._confs[-1].membership if self._confs else self.base.membership

    def membership_at(self, index: int) -> Membership:
        result = self.base.membership
        for point in self._confs:
            if point.index > index:
                break
            result = point.membership
        return result

    def last_conf_index(self) -> int:
        return self._confs[-1].index if self._confs else 0

    def unstable_entries(self) -> tuple[Entry, ...]:
        start = self.unstable_from - self.base.index - 1
        return tuple(self._entries[max(start, 0) :])

    def next_committed(self, max_entries: int) -> tuple[Entry, ...]:
        """Committed entries not yet handed out for applying, oldest first."""
        lo = self.applied + 1
        hi = min(self.commit, self.applied + max_entries)
        if hi < lo:
            return ()
        start = lo - self.base.index - 1
        return tuple(self._entries[start : start + hi - lo + 1])

    # ---- changes -----------------------------------------------------------

    def append(self, entries: tuple[Entry, ...]) -> None:
        """Append entries, replacing any suffix they conflict with.

        Raises InvariantViolation when that would remove a committed entry:
        the node must stop rather than lose agreed history.
        """
        if not entries:
            return
        first = entries[0].index
        if first <= self.commit:
            raise InvariantViolation(
                f"append at {first} would overwrite committed entries up to {self.commit}"
            )
        if first > self.last_index + 1:
            raise InvariantViolation(f"append at {first} leaves a gap after {self.last_index}")
        self._append_at(entries)
        self.unstable_from = min(self.unstable_from, first)

    def _append_at(self, entries: tuple[Entry, ...]) -> None:
        first = entries[0].index
        del self._entries[first - self.base.index - 1 :]
        while self._confs and self._confs[-1].index >= first:
            self._confs.pop()
        expected = first
        for e in entries:
            if e.index != expected:
                raise InvariantViolation(f"entries not contiguous at {e.index}, want {expected}")
            expected += 1
            if e.kind is EntryKind.CONF_CHANGE:
                _, result = decode_conf_entry(e.data)
                self._confs.append(_ConfPoint(e.index, result))
        self._entries.extend(entries)

    def commit_to(self, index: int) -> None:
        if index > self.last_index:
            raise InvariantViolation(f"commit {index} beyond last index {self.last_index}")
        self.commit = max(self.commit, index)

    def stable_to(self, index: int) -> None:
        self.unstable_from = max(self.unstable_from, index + 1)

    def applied_to(self, index: int) -> None:
        if index > self.commit:
            raise InvariantViolation(f"applied {index} beyond commit {self.commit}")
        self.applied = max(self.applied, index)

    def compact(self, snapshot: Snapshot) -> None:
        """Drop the entries a snapshot of our own state machine covers."""
        meta = snapshot.metadata
        if meta.index > self.applied:
            raise InvariantViolation(f"snapshot at {meta.index} beyond applied {self.applied}")
        if meta.index <= self.base.index:
            return
        if self.term(meta.index) != meta.term:
            raise InvariantViolation(
                f"snapshot term {meta.term} disagrees with log at {meta.index}"
            )
        if self.membership_at(meta.index) != meta.membership:
            raise InvariantViolation(f"snapshot membership disagrees with log at {meta.index}")
        del self._entries[: meta.index - self.base.index]
        self._confs = [p for p in self._confs if p.index > meta.index]
        self.base = meta
        self.snapshot = snapshot
        self.unstable_from = max(self.unstable_from, meta.index + 1)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a snapshot received from the leader."""
        meta = snapshot.metadata
        if meta.index <= self.commit:
            raise InvariantViolation(f"restore to {meta.index} at or below commit {self.commit}")
        self._entries.clear()
        self._confs.clear()
        self.base = meta
        self.snapshot = snapshot
        self.commit = meta.index
        self.applied = meta.index
        self.unstable_from = meta.index + 1
