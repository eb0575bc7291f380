"""``raft-sidecar storage inspect``: what a data directory holds, without touching it.

Layout of a data directory: ``DIR/hardstate``, ``DIR/snapshots/``, ``DIR/wal/``.

Theory of operation. Inspection must not modify anything: an operator looks
at a broken node *before* deciding what to do, and the evidence must survive
the look. The hard state and the snapshots are read through read-only calls
(``HardStateFile.read``, ``SnapshotStore.list``). Write-ahead-log recovery,
however, may cut a torn tail, delete a stillborn segment or create the first
one; rather than ask the WAL for a separate read-only mode, inspect runs it
against a ``ScratchOverlay``: a file-system view that reads through to the
real one and keeps every write, truncate, rename and unlink in memory. The report lists
those mutations as "what recovery would do", and the disk stays as it was.
The overlay copies a file into memory when recovery first opens it for
writing (the WAL opens its last segment), so inspecting costs at most one
segment of memory.
"""

from __future__ import annotations

import errno
import posixpath
from dataclasses import dataclass

from sidecar.raft import HardState
from sidecar.storage.errors import StorageError, StorageIOError
from sidecar.storage.fs import FileSystem
from sidecar.storage.hardstate import HardStateFile
from sidecar.storage.identity import Identity, IdentityStore
from sidecar.storage.snapshots import SnapshotInfo, SnapshotStore
from sidecar.storage.wal import TornTail, WalContents, WriteAheadLog

HARDSTATE_NAME = "hardstate"
SNAPSHOT_DIR = "snapshots"
WAL_DIR = "wal"


# ---- a file system that keeps writes to itself ----------------------------------------


class _ScratchFile:
    def __init__(self, overlay: ScratchOverlay, path: str, buf: bytearray) -> None:
        self._overlay, self._path, self._buf = overlay, path, buf

    def write(self, data: bytes) -> None:
        self._overlay.actions.append(f"write {len(data)} bytes to {self._path}")
        self._buf += data

    def sync(self) -> None:
        pass

    def truncate(self, size: int) -> None:
        if size < len(self._buf):
            self._overlay.actions.append(
                f"truncate {self._path} from {len(self._buf)} to {size} bytes"
            )
        del self._buf[size:]

    def tell(self) -> int:
        return len(self._buf)

    def close(self) -> None:
        pass


class ScratchOverlay:
    """A ``FileSystem`` that reads through to ``base`` and keeps every change in memory.

    ``actions`` lists the changes in the order they were asked for, for the
    report. Nothing is ever written, renamed or removed on ``base``.
    """

    def __init__(self, base: FileSystem) -> None:
        self._base = base
        self._files: dict[str, bytearray] = {}  # changed or created files
        self._gone: set[str] = set()  # base files unlinked or renamed away
        self._dirs: set[str] = set()
        self.actions: list[str] = []

    def _in_base(self, path: str) -> bool:
        return path not in self._gone and self._base.exists(path)

    def _contents(self, path: str, operation: str) -> bytearray:
        """The overlay's copy of ``path``, copied up from ``base`` on first touch."""
        if path not in self._files:
            if not self._in_base(path):
                raise StorageIOError(operation, path, OSError(errno.ENOENT, "No such file"))
            self._files[path] = bytearray(self._base.read_bytes(path))
        return self._files[path]

    def makedirs(self, path: str) -> None:
        path = posixpath.normpath(path)
        if not self.exists(path):
            self.actions.append(f"create directory {path}")
        self._dirs.add(path)

    def listdir(self, path: str) -> list[str]:
        path = posixpath.normpath(path)
        names: set[str] = set()
        if self._base.exists(path):
            names.update(
                n for n in self._base.listdir(path) if posixpath.join(path, n) not in self._gone
            )
        elif path not in self._dirs:
            raise StorageIOError("list", path, OSError(errno.ENOENT, "No such directory"))
        names.update(posixpath.basename(p) for p in self._files if posixpath.dirname(p) == path)
        return sorted(names)

    def exists(self, path: str) -> bool:
        path = posixpath.normpath(path)
        return path in self._files or path in self._dirs or self._in_base(path)

    def read_bytes(self, path: str) -> bytes:
        path = posixpath.normpath(path)
        if path in self._files:
            return bytes(self._files[path])
        if path in self._gone:
            raise StorageIOError("read", path, OSError(errno.ENOENT, "No such file"))
        return self._base.read_bytes(path)

    def open_append(self, path: str) -> _ScratchFile:
        path = posixpath.normpath(path)
        if not self.exists(path):
            self.actions.append(f"create {path}")
            self._files[path] = bytearray()
        return _ScratchFile(self, path, self._contents(path, "open"))

    def open_truncate(self, path: str) -> _ScratchFile:
        path = posixpath.normpath(path)
        if self.exists(path):
            self.actions.append(f"truncate {path} to 0 bytes")
        else:
            self.actions.append(f"create {path}")
        self._files[path] = bytearray()
        return _ScratchFile(self, path, self._files[path])

    def rename(self, src: str, dst: str) -> None:
        src, dst = posixpath.normpath(src), posixpath.normpath(dst)
        buf = self._contents(src, "rename")
        self.actions.append(f"rename {src} to {dst}")
        del self._files[src]
        self._gone.add(src)
        self._files[dst] = buf

    def unlink(self, path: str) -> None:
        path = posixpath.normpath(path)
        if not self.exists(path):
            raise StorageIOError("unlink", path, OSError(errno.ENOENT, "No such file"))
        self.actions.append(f"remove {path}")
        self._files.pop(path, None)
        self._gone.add(path)

    def sync_dir(self, path: str) -> None:
        pass


# ---- the report -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class WalReport:
    first_index: int | None
    last_index: int | None
    first_term: int | None
    last_term: int | None
    commit: int
    reset_index: int
    reset_term: int
    torn_tail: TornTail | None
    """What recovery would cut off past the last good record; None when the log ends cleanly."""
    segments: tuple[SegmentInfo, ...]
    recovery_actions: tuple[str, ...]
    """What opening the log for real would change on disk (inspect did not)."""


@dataclass(frozen=True, slots=True)
class InspectReport:
    directory: str
    exists: bool
    hard_state: HardState | None = None
    hard_state_error: str | None = None
    hard_state_leftover: bool = False
    snapshots: tuple[SnapshotInfo, ...] = ()
    snapshot_leftovers: tuple[str, ...] = ()
    snapshots_error: str | None = None
    wal: WalReport | None = None
    wal_error: str | None = None
    wal_segments: tuple[SegmentInfo, ...] = ()
    """The WAL directory's files, listed even when the log could not be read."""
    identity: Identity | None = None
    identity_error: str | None = None

    @property
    def verified(self) -> bool:
        """Every checksum held and the parts fit together.

        A torn tail is not a failure: recovery cuts it, as it cuts any write
        that a crash interrupted before it was acknowledged.
        """
        return (
            self.exists
            and self.hard_state_error is None
            and self.snapshots_error is None
            and self.wal_error is None
            and self.identity_error is None
            and all(s.ok for s in self.snapshots)
        )


def _open_wal(fs: FileSystem, wal_dir: str) -> tuple[WriteAheadLog, WalContents]:
    """Recover the WAL in ``wal_dir`` through ``fs`` (a seam for the tests)."""
    return WriteAheadLog.open(fs, wal_dir)


def _segments(fs: FileSystem, wal_dir: str) -> tuple[SegmentInfo, ...]:
    return tuple(
        SegmentInfo(name, len(fs.read_bytes(posixpath.join(wal_dir, name))))
        for name in fs.listdir(wal_dir)
    )


def _inspect_wal(fs: FileSystem, wal_dir: str) -> WalReport:
    """Recover the WAL against a scratch overlay and summarize it.

    Raises StorageError (CorruptionError, StorageIOError) when the log cannot be read.
    """
    overlay = ScratchOverlay(fs)
    wal, contents = _open_wal(overlay, wal_dir)
    wal.close()
    entries = contents.entries
    return WalReport(
        first_index=entries[0].index if entries else None,
        last_index=entries[-1].index if entries else None,
        first_term=min(e.term for e in entries) if entries else None,
        last_term=max(e.term for e in entries) if entries else None,
        commit=contents.commit,
        reset_index=contents.reset_index,
        reset_term=contents.reset_term,
        torn_tail=contents.torn_tail,
        segments=_segments(fs, wal_dir),
        recovery_actions=tuple(overlay.actions),
    )


def inspect_directory(fs: FileSystem, directory: str) -> InspectReport:
    """Describe the data directory ``directory``; modifies nothing.

    Problems with a part (a checksum mismatch, an unreadable file) are reported
    in that part's ``*_error`` field rather than raised.
    """
    if not fs.exists(directory):
        return InspectReport(directory, exists=False)
    identity, identity_error = None, None
    try:
        identity = IdentityStore(directory, fs).read()
    except StorageError as exc:
        identity_error = str(exc)
    hs_file = HardStateFile(fs, directory)
    hard_state, hard_state_error = None, None
    try:
        hard_state = hs_file.read()
    except StorageError as exc:
        hard_state_error = str(exc)

    store = SnapshotStore(fs, posixpath.join(directory, SNAPSHOT_DIR))
    snapshots: tuple[SnapshotInfo, ...] = ()
    leftovers: tuple[str, ...] = ()
    snapshots_error = None
    try:
        snapshots = tuple(store.list())
        leftovers = tuple(store.leftovers())
    except StorageError as exc:
        snapshots_error = str(exc)

    wal_dir = posixpath.join(directory, WAL_DIR)
    wal: WalReport | None = None
    wal_error: str | None = None
    segments: tuple[SegmentInfo, ...] = ()
    if fs.exists(wal_dir):
        try:
            segments = _segments(fs, wal_dir)
            wal = _inspect_wal(fs, wal_dir)
        except StorageError as exc:
            wal_error = str(exc)
    return InspectReport(
        directory=directory,
        exists=True,
        hard_state=hard_state,
        hard_state_error=hard_state_error,
        hard_state_leftover=hs_file.has_leftover(),
        snapshots=snapshots,
        snapshot_leftovers=leftovers,
        snapshots_error=snapshots_error,
        wal=wal,
        wal_error=wal_error,
        wal_segments=segments,
        identity=identity,
        identity_error=identity_error,
    )


def _range(lo: int | None, hi: int | None) -> str:
    return "none" if lo is None else f"{lo}..{hi}"


def format_report(report: InspectReport) -> str:
    """The report as text for a terminal, one fact per line."""
    lines = [f"data directory: {report.directory}"]
    if not report.exists:
        lines.append("  does not exist")
        return "\n".join(lines) + "\n"

    if report.identity_error is not None:
        lines.append(f"identity: CORRUPT: {report.identity_error}")
    elif report.identity is None:
        lines.append("identity: none (a new directory, or written by an older build)")
    else:
        ident = report.identity
        voters = ident.initial_voters
        entered = (
            "undecided (asking its peers)"
            if voters is None
            else "joined an existing cluster"
            if not voters
            else "bootstrapped with " + ", ".join(voters)
        )
        lines.append(
            f"identity: cluster {ident.cluster}, node {ident.node}, "
            f"incarnation {ident.incarnation} (server {ident.server_id}); {entered}"
        )

    if report.hard_state_error is not None:
        lines.append(f"hard state: CORRUPT: {report.hard_state_error}")
    elif report.hard_state is None:
        lines.append("hard state: none (a fresh node)")
    else:
        hs = report.hard_state
        lines.append(
            f"hard state: term {hs.term}, voted for {hs.voted_for or '-'}, commit {hs.commit}"
        )
    if report.hard_state_leftover:
        lines.append(
            f"  leftover {HARDSTATE_NAME}.tmp from an interrupted save "
            "(never acknowledged; removed at the next start)"
        )

    lines.append(f"snapshots ({SNAPSHOT_DIR}/):")
    if report.snapshots_error is not None:
        lines.append(f"  UNREADABLE: {report.snapshots_error}")
    elif not report.snapshots:
        lines.append("  none")
    for s in report.snapshots:
        status = "ok" if s.ok else f"CORRUPT: {s.error}"
        lines.append(
            f"  {posixpath.basename(s.path)}  index {s.index}  term {s.term}  "
            f"{s.size} bytes  {status}"
        )
    if report.snapshots and not report.snapshots[-1].ok:
        lines.append("  the newest snapshot is corrupt: the node will refuse to start")
    lines.extend(
        f"  leftover {posixpath.basename(p)} from an interrupted save (removed at the next start)"
        for p in report.snapshot_leftovers
    )

    lines.append(f"write-ahead log ({WAL_DIR}/):")
    if report.wal_error is not None:
        lines.append(f"  UNREADABLE: {report.wal_error}")
    wal = report.wal
    if wal is not None:
        lines.append(
            f"  entries {_range(wal.first_index, wal.last_index)}, "
            f"terms {_range(wal.first_term, wal.last_term)}, commit {wal.commit}"
        )
        if wal.reset_index:
            lines.append(
                f"  restarts after a snapshot at index {wal.reset_index} term {wal.reset_term}"
            )
        torn = wal.torn_tail
        if torn is None:
            lines.append("  torn tail: none")
        else:
            lines.append(
                f"  torn tail: {torn.dropped_bytes} bytes at byte {torn.offset} of "
                f"{posixpath.basename(torn.path)}"
            )
        if wal.recovery_actions:
            lines.append("  recovery at the next start would (not done by inspect):")
            lines.extend(f"    {a}" for a in wal.recovery_actions)
    segments = wal.segments if wal is not None else report.wal_segments
    if segments:
        lines.append("  segments:")
        lines.extend(f"    {s.name}  {s.size} bytes" for s in segments)
    elif report.wal_error is None:
        lines.append("  no segments")
    return "\n".join(lines) + "\n"
