"""Read a stopped node's data directory and replay it into an elections state.

Theory of operation
-------------------
The directory is read through ``ScratchOverlay`` (``sidecar.storage.inspect``):
storage recovery runs exactly as ``serve`` would run it (torn tail cut, an
interrupted reset finished, every checksum verified), but whatever it would
change stays in memory, so reading never alters the evidence, and reading a
directory twice gives the same answer.

The elections state is rebuilt the way the node rebuilds it at start: the
newest snapshot restored into an ``ElectionsMachine``, then the log's NORMAL
entries applied in order (membership and no-op entries change no elections
state; an undecodable entry is skipped alike, as on every replica). How far
to apply is the caller's choice: ``snapshot save`` stops at the commit index
the directory knows; ``recover`` applies the whole log (see
``sidecar.disaster.recover`` for why).
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.disaster import DisasterError
from sidecar.elections import ElectionsUsageError, SnapshotError
from sidecar.machine import ElectionsMachine
from sidecar.raft import Entry, EntryKind, HardState, Snapshot
from sidecar.storage.disk import DiskStorage
from sidecar.storage.errors import StorageError
from sidecar.storage.fs import FileSystem, OsFileSystem
from sidecar.storage.identity import Identity, IdentityStore
from sidecar.storage.inspect import ScratchOverlay


@dataclass(frozen=True, slots=True)
class StoppedDirectory:
    """What a stopped node's directory holds, as recovery at start would see it."""

    identity: Identity
    hard_state: HardState
    """Term, vote and the commit index recovery computed."""
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]
    """The live log after the snapshot, in index order."""

    @property
    def commit_index(self) -> int:
        return self.hard_state.commit

    @property
    def last_index(self) -> int:
        if self.entries:
            return self.entries[-1].index
        return self.snapshot.metadata.index if self.snapshot is not None else 0

    def term_at(self, index: int) -> int:
        """The term of the entry at ``index`` (0 for index 0).

        Raises DisasterError for an index the directory no longer holds.
        """
        if index == 0:
            return 0
        if self.snapshot is not None and index == self.snapshot.metadata.index:
            return self.snapshot.metadata.term
        for entry in self.entries:
            if entry.index == index:
                return entry.term
        raise DisasterError(f"the directory holds no entry at index {index}")


@dataclass(frozen=True, slots=True)
class Replayed:
    state: bytes
    """The elections state as ``ElectionsMachine.snapshot()`` serialises it."""
    index: int
    term: int


def read_stopped_directory(directory: str, fs: FileSystem | None = None) -> StoppedDirectory:
    """Everything ``directory`` holds, verified; modifies nothing.

    Raises DisasterError when it is missing, has no identity, or its storage
    does not verify (the message says which file and why).
    """
    base = fs or OsFileSystem()
    if not base.exists(directory):
        raise DisasterError(f"{directory} does not exist")
    overlay = ScratchOverlay(base)
    try:
        identity = IdentityStore(directory, overlay).read()
        if identity is None:
            raise DisasterError(
                f"{directory} has no identity file: not a raft-sidecar data directory "
                "(or written by a build that predates identities)"
            )
        storage = DiskStorage(directory, overlay)
        try:
            recovered = storage.recover()
        finally:
            storage.close()
    except StorageError as exc:
        raise DisasterError(f"{directory} cannot be read: {exc}") from exc
    return StoppedDirectory(
        identity=identity,
        hard_state=recovered.hard_state,
        snapshot=recovered.snapshot,
        entries=recovered.entries,
    )


def replay(stopped: StoppedDirectory, up_to: int) -> Replayed:
    """The elections state after applying the snapshot and the log up to ``up_to``.

    Raises DisasterError when ``up_to`` lies before the snapshot or beyond
    the log, or when the snapshot's state does not load.
    """
    snap_index = stopped.snapshot.metadata.index if stopped.snapshot is not None else 0
    if not snap_index <= up_to <= stopped.last_index:
        raise DisasterError(
            f"cannot replay up to {up_to}: the directory holds {snap_index}..{stopped.last_index}"
        )
    machine = ElectionsMachine()
    try:
        if stopped.snapshot is not None:
            machine.restore(snap_index, stopped.snapshot.data)
    except SnapshotError as exc:
        raise DisasterError(f"the snapshot at index {snap_index} does not load: {exc}") from exc
    try:
        for entry in stopped.entries:
            if entry.index > up_to:
                break
            if entry.kind is EntryKind.NORMAL:
                machine.apply(entry.index, entry.data)
    except ElectionsUsageError as exc:  # the snapshot claims to be ahead of its own log
        raise DisasterError(f"the log does not apply after the snapshot: {exc}") from exc
    return Replayed(state=machine.snapshot(), index=up_to, term=stopped.term_at(up_to))
