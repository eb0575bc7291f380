"""``raft-sidecar recover``: make one survivor of a lost quorum the sole voter
of a new cluster, in place, crash-safely, keeping the old contents.

Theory of operation
-------------------
What is kept. The survivor's snapshot plus **its whole log**, up to its last
index, committed or not, is applied (etcd's ``--force-new-cluster`` commits
the whole log too). An entry beyond the survivor's commit index may have been
committed by the majority that is gone (the survivor had only not yet heard
the new commit index), and a grant in it may have reached a worker and the
ledger; dropping it would forget a holder that exists. Applying an entry that
was never committed costs little: its grant was never answered to its worker
(a token leaves a sidecar only once applied there), so its lease runs out
after one TTL and the election moves on, and its token is below every token
the new cluster issues anyway. Membership and no-op entries change no
elections state; the membership is replaced.

What is written. A new data directory (``sidecar.disaster.fresh``) for the
same node name under a new incarnation, sole voter of ``--new-cluster-id``,
whose log starts at ``max(last index, --min-token) + TOKEN_MARGIN``. The
survivor's log may lack entries the lost majority committed, so tokens above
its last index alone may have been issued: ``--min-token`` from the ledger,
and the margin, cover them.

How, crash-safely (nothing is deleted, ever)::

    DIR/pre-recovery-<old incarnation>/      the old contents end up here
        new-<random>/                         1. the new directory, written whole
        recovery                              2. names the new-<random> chosen
        identity                              3. the old identity moves first
        hardstate, snapshots/, wal/           4. each old item moves out, and its
                                                 new one moves in, one at a time
    DIR/identity                              5. the new identity moves in last

Until step 3, ``DIR`` is the old directory, untouched (a crash there leaves
only an unused ``new-*`` behind; running ``recover`` again starts over). From
step 3 until step 5, ``DIR`` holds Raft state but no identity, which ``serve``
refuses to start; running ``recover`` again resumes from the marker of step 2.
Step 4 moves item by item so ``DIR`` always holds some Raft state until the
identity arrives (a directory with none would be taken for a new node). Every
rename is followed by fsyncs of both directories. The operator removes
``pre-recovery-*`` once the new cluster is healthy.
"""

from __future__ import annotations

import posixpath
import secrets
from dataclasses import dataclass

from sidecar.disaster import DisasterError
from sidecar.disaster.fresh import check_names, start_index, write_fresh_directory
from sidecar.disaster.replay import read_stopped_directory, replay
from sidecar.storage.errors import StorageError
from sidecar.storage.fs import FileSystem, OsFileSystem
from sidecar.storage.hardstate import write_file_atomically
from sidecar.storage.identity import IDENTITY_FILE, Identity, IdentityStore

KEEP_PREFIX = "pre-recovery-"
MARKER = "recovery"
_RAFT_ITEMS = ("hardstate", "snapshots", "wal")
"""Moved one at a time, old out then new in; the identity goes before and after."""
_LEFTOVERS = ("identity.tmp", "hardstate.tmp")
"""Temporary files of interrupted saves: old, moved out with the rest."""


@dataclass(frozen=True, slots=True)
class Recovered:
    identity: Identity
    """The survivor's new identity (new cluster, new incarnation, sole voter)."""
    kept: str
    """Where the old contents now are."""
    start_index: int
    """The new log's snapshot index: every token issued from now on is above it."""
    old_last_index: int
    old_commit_index: int
    resumed: bool
    """An interrupted earlier run was finished rather than a new one made."""


def recover_directory(
    directory: str, *, new_cluster_id: str, min_token: int = 0, fs: FileSystem | None = None
) -> Recovered:
    """Turn the stopped node's ``directory`` into the sole voter of a new cluster.

    Finishes an interrupted earlier run instead when it finds one. Raises
    DisasterError when the directory cannot be read or recovered into (same
    cluster id, nothing to recover), or a file operation fails (run it again).
    """
    fs = fs or OsFileSystem()
    try:
        pending = _pending_run(directory, fs)
        if pending is not None:
            keep, staged = pending
            identity = IdentityStore(posixpath.join(keep, staged), fs).read()
            if identity is None:  # pragma: no cover - _pending_run checked it
                raise DisasterError(f"{keep}/{staged} lost its identity")
            if identity.cluster != new_cluster_id:
                raise DisasterError(
                    f"an interrupted recovery into cluster {identity.cluster!r} is pending in "
                    f"{keep}: run recover again with --new-cluster-id {identity.cluster}"
                )
            _finish(directory, keep, staged, fs)
            return Recovered(identity, keep, _start_of(directory, fs), 0, 0, resumed=True)
        return _recover(directory, new_cluster_id, min_token, fs)
    except StorageError as exc:
        raise DisasterError(f"recovering {directory} failed: {exc} (run recover again)") from exc


def _recover(directory: str, new_cluster_id: str, min_token: int, fs: FileSystem) -> Recovered:
    stopped = read_stopped_directory(directory, fs)
    old = stopped.identity
    check_names(new_cluster_id, old.node)
    if new_cluster_id == old.cluster:
        raise DisasterError(
            f"--new-cluster-id must differ from the old cluster id {old.cluster!r}: old members "
            "must not be able to talk to the rebuilt cluster"
        )
    if not fs.exists(posixpath.join(directory, "wal")):
        raise DisasterError(f"{directory} holds no log: nothing to recover")
    last = stopped.last_index
    replayed = replay(stopped, last)
    start = start_index(last, min_token)
    term = max(stopped.hard_state.term, replayed.term, 1)
    keep = posixpath.join(directory, KEEP_PREFIX + old.incarnation)
    staged = f"new-{secrets.token_hex(4)}"
    fs.makedirs(keep)
    fs.sync_dir(directory)
    identity = write_fresh_directory(
        posixpath.join(keep, staged),
        cluster_id=new_cluster_id,
        node=old.node,
        state=replayed.state,
        index=start,
        term=term,
        fs=fs,
    )
    write_file_atomically(fs, posixpath.join(keep, MARKER), [staged.encode()])
    _finish(directory, keep, staged, fs)
    return Recovered(identity, keep, start, last, stopped.commit_index, resumed=False)


def _pending_run(directory: str, fs: FileSystem) -> tuple[str, str] | None:
    """(keep directory, staged name) of a run interrupted after its old identity
    moved out, or None. Only then is ``DIR/identity`` missing while a
    ``pre-recovery-*`` marker names a staged directory that still has its identity."""
    if not fs.exists(directory) or fs.exists(posixpath.join(directory, IDENTITY_FILE)):
        return None
    found = []
    for name in fs.listdir(directory):
        keep = posixpath.join(directory, name)
        marker = posixpath.join(keep, MARKER)
        if not name.startswith(KEEP_PREFIX) or not fs.exists(marker):
            continue
        staged = fs.read_bytes(marker).decode("ascii", "replace")
        if fs.exists(posixpath.join(keep, staged, IDENTITY_FILE)):
            found.append((keep, staged))
    if len(found) > 1:
        raise DisasterError(f"{directory}: several interrupted recoveries pending, resolve by hand")
    return found[0] if found else None


def _move(fs: FileSystem, src: str, dst: str) -> None:
    fs.rename(src, dst)
    fs.sync_dir(posixpath.dirname(dst))
    fs.sync_dir(posixpath.dirname(src))


def _finish(directory: str, keep: str, staged: str, fs: FileSystem) -> None:
    """Steps 3 to 5 of the module docstring; each is skipped when already done."""
    new = posixpath.join(keep, staged)
    for name in (IDENTITY_FILE, *_LEFTOVERS):
        here, kept = posixpath.join(directory, name), posixpath.join(keep, name)
        if fs.exists(here):
            if fs.exists(kept):
                raise DisasterError(f"both {here} and {kept} exist: resolve by hand")
            _move(fs, here, kept)
    for name in _RAFT_ITEMS:
        incoming = posixpath.join(new, name)
        if not fs.exists(incoming):
            continue  # moved in by an earlier run
        here = posixpath.join(directory, name)
        if fs.exists(here):
            _move(fs, here, posixpath.join(keep, name))
        _move(fs, incoming, here)
    _move(fs, posixpath.join(new, IDENTITY_FILE), posixpath.join(directory, IDENTITY_FILE))


def _start_of(directory: str, fs: FileSystem) -> int:
    stopped = read_stopped_directory(directory, fs)
    return stopped.snapshot.metadata.index if stopped.snapshot is not None else 0
