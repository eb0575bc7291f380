"""``DiskStorage``: the Raft state of one node in a data directory.

Layout::

    DIR/hardstate        term, vote (and the commit index at the last vote change)
    DIR/snapshots/       snap-<index>-<term>.snap, newest two kept
    DIR/wal/             wal-<seq>-<first index>.log segments

Theory of operation. The write-ahead log carries entries and the commit index
(one fsync covers both, group-committed across callers; a change of the commit
index alone is not fsynced by itself but rides with the next append, since
Raft never needs it for safety). The hard-state file
changes only when the term or the vote changes, which is rare, so the common
path costs one fsync. A received snapshot is stored first, then a RESET record
makes the log restart after it; a snapshot of our own state machine is stored,
then the segments it covers are deleted.

Recovery cross-checks the three parts: a RESET the snapshot store cannot back,
a log that does not start right after the snapshot, or a commit index beyond
the log, all stop the node with a CorruptionError instead of serving a log
that lost something.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Sequence

import structlog

from sidecar.raft import Entry, HardState, PersistentState, Snapshot
from sidecar.storage.errors import CorruptionError
from sidecar.storage.fs import FileSystem, OsFileSystem
from sidecar.storage.hardstate import HardStateFile
from sidecar.storage.snapshots import SnapshotStore
from sidecar.storage.wal import WalContents, WriteAheadLog

_log = structlog.get_logger("sidecar.storage")


class DiskStorage:
    def __init__(
        self,
        directory: str,
        fs: FileSystem | None = None,
        *,
        segment_bytes: int = 64 << 20,
    ) -> None:
        self.directory = directory
        self.fs = fs or OsFileSystem()
        self.fs.makedirs(directory)
        self.fs.makedirs(self.snapshot_dir)
        self.fs.makedirs(self.wal_dir)
        self.fs.sync_dir(directory)
        self._hard_state_file = HardStateFile(self.fs, directory)
        self._snapshots = SnapshotStore(self.fs, self.snapshot_dir)
        self._segment_bytes = segment_bytes
        self._wal: WriteAheadLog | None = None
        self._saved_hard_state = HardState()
        self.recovered_contents: WalContents | None = None

    @property
    def snapshot_dir(self) -> str:
        return posixpath.join(self.directory, "snapshots")

    @property
    def wal_dir(self) -> str:
        return posixpath.join(self.directory, "wal")

    def recover(self) -> PersistentState:
        """Open the directory and return what is durable.

        Raises CorruptionError when the parts disagree or a checksum fails,
        StorageIOError when the disk cannot be read or a torn tail cannot be cut.
        """
        hard_state = self._hard_state_file.load() or HardState()
        snapshot = self._snapshots.load_latest()
        wal, contents = WriteAheadLog.open(self.fs, self.wal_dir, segment_bytes=self._segment_bytes)
        self._wal = wal
        self.recovered_contents = contents
        if contents.torn_tail is not None:
            torn = contents.torn_tail
            _log.warning(
                "wal_torn_tail_cut",
                path=torn.path,
                offset=torn.offset,
                dropped_bytes=torn.dropped_bytes,
            )
        snap_index = snapshot.metadata.index if snapshot else 0
        if snapshot is not None and not self._log_continues(snapshot, contents):
            # A received snapshot reached the disk, the RESET that voids the
            # old log did not (a crash in between). The old log either ends
            # before the snapshot or belongs to another history after it:
            # finish the reset now, so the log continues right after it.
            _log.warning(
                "wal_reset_completed_at_recovery",
                snapshot_index=snap_index,
                snapshot_term=snapshot.metadata.term,
                dropped_entries=sum(1 for e in contents.entries if e.index > snap_index),
            )
            wal.reset(snap_index, snapshot.metadata.term)
            contents = dataclasses.replace(
                contents, entries=[], reset_index=snap_index, reset_term=snapshot.metadata.term
            )
        if contents.reset_index > snap_index:
            raise CorruptionError(
                self.wal_dir,
                0,
                f"the log restarts after a snapshot at index {contents.reset_index}, "
                f"but the newest snapshot is at {snap_index}",
            )
        entries = [e for e in contents.entries if e.index > snap_index]
        if entries and entries[0].index != snap_index + 1:
            raise CorruptionError(
                self.wal_dir,
                0,
                f"the log starts at index {entries[0].index}, "
                f"but the snapshot ends at {snap_index}: entries are missing",
            )
        last_index = entries[-1].index if entries else snap_index
        commit = max(hard_state.commit, contents.commit, snap_index)
        if commit > last_index:
            raise CorruptionError(
                self.wal_dir, 0, f"commit index {commit} is beyond the last entry {last_index}"
            )
        recovered = HardState(hard_state.term, hard_state.voted_for, commit)
        self._saved_hard_state = hard_state
        return PersistentState(recovered, snapshot, tuple(entries))

    @staticmethod
    def _log_continues(snapshot: Snapshot, contents: WalContents) -> bool:
        """Whether the log may follow the snapshot as it is.

        True when the log was reset at or after the snapshot, when it starts
        right after it (compacted by our own snapshot), or when it holds the
        snapshot's last entry with the same term (then it agrees from there
        on, by Log Matching).
        """
        meta = snapshot.metadata
        if contents.reset_index >= meta.index:
            return True
        if not contents.entries:
            return False
        first, last = contents.entries[0].index, contents.entries[-1].index
        if first == meta.index + 1:
            return True
        return (
            first <= meta.index <= last and contents.entries[meta.index - first].term == meta.term
        )

    def persist(
        self,
        hard_state: HardState | None,
        snapshot: Snapshot | None,
        entries: Sequence[Entry],
    ) -> None:
        wal = self._require_open()
        if snapshot is not None:
            self._snapshots.save(snapshot)
            wal.reset(snapshot.metadata.index, snapshot.metadata.term)
        commit = hard_state.commit if hard_state is not None else None
        if entries:
            wal.append(entries, commit=commit)
        elif commit is not None and commit != self._saved_hard_state.commit:
            wal.note_commit(commit)  # durable with the next append: no fsync of its own
        if hard_state is not None and not hard_state.same_term_and_vote(self._saved_hard_state):
            self._hard_state_file.save(hard_state)
        if hard_state is not None:
            self._saved_hard_state = hard_state

    def save_snapshot(self, snapshot: Snapshot) -> None:
        wal = self._require_open()
        self._snapshots.save(snapshot)
        wal.compact(snapshot.metadata.index)

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None

    def _require_open(self) -> WriteAheadLog:
        if self._wal is None:
            raise RuntimeError("DiskStorage.recover() must run before writes")
        return self._wal
