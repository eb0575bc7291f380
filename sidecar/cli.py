"""The ``raft-sidecar`` command line.

Only ``version`` exists so far; ``serve`` and friends arrive with the node
runtime. Every subcommand is a function taking the parsed namespace and
returning the process exit status, so ``main`` stays a thin dispatcher.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from typing import Any

from sidecar.admin.cli import add_members_parser
from sidecar.config import add_arguments
from sidecar.grpc_engine import prefer_posix_poller

DISTRIBUTION = "raft-sidecar"


def package_version() -> str:
    """The installed distribution's version, or ``0+unknown`` when run from an uninstalled tree."""
    try:
        return distribution_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


def _cmd_version(_args: argparse.Namespace) -> int:
    print(f"{DISTRIBUTION} {package_version()}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Exit status 2 for invalid settings, 1 when the node stopped on an error."""
    prefer_posix_poller()  # before the runtime imports grpc (sidecar/grpc_engine.py)
    from sidecar.app import run  # noqa: PLC0415 - keep `version` light
    from sidecar.config import ConfigError, load  # noqa: PLC0415

    try:
        config = load(args)
    except ConfigError as exc:
        print(f"raft-sidecar serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    return run(config)


def _cmd_status(args: argparse.Namespace) -> int:
    """Print the cluster as one sidecar sees it; exit 1 when it cannot be reached."""
    import grpc  # type: ignore[import-untyped]  # noqa: PLC0415

    from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc  # noqa: PLC0415

    try:
        with grpc.insecure_channel(args.api) as channel:
            stub = worker_pb2_grpc.ElectionServiceStub(channel)
            status = stub.Status(worker_pb2.StatusRequest(), timeout=args.timeout)
    except grpc.RpcError as exc:
        print(
            f"raft-sidecar status: {args.api}: {exc.code().name}: {exc.details()}", file=sys.stderr
        )
        return 1

    def member(role: worker_pb2.PeerRole.ValueType) -> str:
        name = worker_pb2.PeerRole.Name(role).removeprefix("PEER_ROLE_").lower()
        return "not a member" if name == "unspecified" else name

    role = worker_pb2.RaftRole.Name(status.role).removeprefix("RAFT_ROLE_").lower()
    print(
        f"node {status.node_id} (incarnation {status.incarnation or '-'}, "
        f"{member(status.member_role)}): {role}, term {status.term}, "
        f"leader {status.leader_id or '-'}"
    )
    print(f"commit index {status.commit_index}, applied index {status.applied_index}")
    for peer in status.peers:
        caught_up = " caught up" if peer.caught_up else ""
        print(
            f"  {peer.id:<20} {peer.incarnation or '-':<16} {member(peer.role):<8} "
            f"{peer.address:<24} match {peer.match_index}{caught_up}"
        )
    return 0


def _cmd_storage_inspect(args: argparse.Namespace) -> int:
    """Exit status 0 when every checksum verifies, 1 otherwise (2 for bad usage)."""
    from sidecar.storage.fs import OsFileSystem  # noqa: PLC0415 - keep `version` light
    from sidecar.storage.inspect import format_report, inspect_directory  # noqa: PLC0415

    report = inspect_directory(OsFileSystem(), args.directory)
    print(format_report(report))
    return 0 if report.verified else 1


def _missing(args: argparse.Namespace, command: str, options: Sequence[str]) -> bool:
    """Print one line naming the first missing option; True when one is missing.

    The disaster-recovery commands check their own options, so that a refusal
    is always exactly one line on stderr and exit status 2.
    """
    for option in options:
        if getattr(args, option.lstrip("-").replace("-", "_").lower()) in (None, ""):
            print(f"raft-sidecar {command}: {option} is required", file=sys.stderr)
            return True
    return False


def _min_token(args: argparse.Namespace, command: str) -> int | None:
    """--min-token as an integer >= 0 (0 when absent), or None after printing why not."""
    raw = args.min_token or "0"
    if not (raw.isascii() and raw.isdigit()):
        print(
            f"raft-sidecar {command}: --min-token={raw!r}: expected an integer >= 0",
            file=sys.stderr,
        )
        return None
    return int(raw)


def _utc(unix_ms: int) -> str:
    import datetime  # noqa: PLC0415 - keep `version` light

    moment = datetime.datetime.fromtimestamp(unix_ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds")


def _cmd_snapshot_save(args: argparse.Namespace) -> int:
    """Back up a running sidecar (its admin socket) or a stopped node's
    directory; exit 2 with one line when refused, 1 when a running sidecar
    cannot make the backup."""
    import os  # noqa: PLC0415 - keep `version` light
    import time  # noqa: PLC0415

    from sidecar.backup import Backup, highest_token  # noqa: PLC0415
    from sidecar.config import ADMIN_SOCKET_NAME  # noqa: PLC0415
    from sidecar.disaster import DisasterError  # noqa: PLC0415
    from sidecar.disaster.save import backup_directory, write_backup  # noqa: PLC0415

    command = "snapshot save"
    if not args.admin_socket and _missing(args, command, ["--data-dir"]):
        return 2
    if _missing(args, command, ["FILE"]):
        return 2
    path = os.path.abspath(args.file)
    socket = args.admin_socket or os.path.join(args.data_dir, ADMIN_SOCKET_NAME)
    backup: Backup | None = None
    source = f"the running sidecar at {socket}"
    if not args.offline:
        fetched = _fetch_live_backup(socket, command, args.timeout)
        if isinstance(fetched, int):
            return fetched
        backup = fetched
    try:
        if backup is None:
            if not args.data_dir:
                print(f"raft-sidecar {command}: no sidecar answers on {socket}", file=sys.stderr)
                return 1
            source = f"the stopped directory {args.data_dir}"
            backup = backup_directory(args.data_dir, now_unix_ms=int(time.time() * 1000))
        write_backup(path, backup)
    except DisasterError as exc:
        print(f"raft-sidecar {command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(
        f"saved {path}: cluster {backup.cluster_id}, index {backup.index}, term {backup.term}, "
        f"highest token {highest_token(backup.state)}, made {_utc(backup.created_at_unix_ms)}"
    )
    print(f"from {source}")
    return 0


def _fetch_live_backup(socket_path: str, command: str, timeout_s: float) -> Any:
    """The backup from the sidecar answering on ``socket_path``: a ``Backup``,
    None when no sidecar listens there (read the stopped directory instead),
    or an exit status after printing why it failed."""
    import socket  # noqa: PLC0415 - keep `version` light

    import grpc  # noqa: PLC0415

    from sidecar.backup import BackupError, decode_backup  # noqa: PLC0415
    from sidecar.pb.raftsidecar.admin.v1 import admin_pb2, admin_pb2_grpc  # noqa: PLC0415

    # No socket file, or one left by a sidecar that is gone: nobody listens.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(socket_path)
        except OSError:
            return None
    pieces: list[bytes] = []
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            for piece in stub.SaveSnapshot(admin_pb2.SaveSnapshotRequest(), timeout=timeout_s):
                pieces.append(piece.data)
    except grpc.RpcError as exc:
        print(f"raft-sidecar {command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    try:
        return decode_backup(b"".join(pieces))
    except BackupError as exc:
        print(f"raft-sidecar {command}: the sidecar's backup: {exc}", file=sys.stderr)
        return 1


def _cmd_snapshot_restore(args: argparse.Namespace) -> int:
    """Write a new cluster's first data directory from a backup; exit 2 when refused."""
    import os  # noqa: PLC0415 - keep `version` light

    from sidecar.backup import highest_token  # noqa: PLC0415 - keep `version` light
    from sidecar.disaster import DisasterError  # noqa: PLC0415
    from sidecar.disaster.restore import restore_backup  # noqa: PLC0415

    command = "snapshot restore"
    if _missing(args, command, ["FILE", "--data-dir", "--cluster-id", "--node-id"]):
        return 2
    min_token = _min_token(args, command)
    if min_token is None:
        return 2
    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as exc:
        print(f"raft-sidecar {command}: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        restored = restore_backup(
            data,
            os.path.abspath(args.data_dir),
            cluster_id=args.cluster_id,
            node=args.node_id,
            min_token=min_token,
        )
    except DisasterError as exc:
        print(f"raft-sidecar {command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    backup, identity = restored.backup, restored.identity
    print(
        f"restored the backup of cluster {backup.cluster_id} at index {backup.index} "
        f"(highest token {highest_token(backup.state)}, made {_utc(backup.created_at_unix_ms)})"
    )
    print(
        f"into {args.data_dir}: server {identity.server_id}, sole voter of cluster "
        f"{identity.cluster}; its log starts after index {restored.start_index}, "
        "so every new token is above it"
    )
    print(
        f"next: start {identity.node} with --cluster-id {identity.cluster} on this directory, "
        "then the other nodes with empty directories and the same --cluster-id"
    )
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    """Make a stopped survivor the sole voter of a new cluster; exit 2 when refused."""
    import os  # noqa: PLC0415 - keep `version` light

    from sidecar.disaster import DisasterError  # noqa: PLC0415 - keep `version` light
    from sidecar.disaster.recover import recover_directory  # noqa: PLC0415

    command = "recover"
    if _missing(args, command, ["--data-dir", "--new-cluster-id"]):
        return 2
    min_token = _min_token(args, command)
    if min_token is None:
        return 2
    try:
        recovered = recover_directory(
            os.path.abspath(args.data_dir), new_cluster_id=args.new_cluster_id, min_token=min_token
        )
    except DisasterError as exc:
        print(f"raft-sidecar {command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    identity = recovered.identity
    if recovered.resumed:
        print(f"finished an interrupted recovery of {args.data_dir}")
    else:
        print(
            f"kept the survivor's log up to index {recovered.old_last_index} "
            f"(commit index {recovered.old_commit_index}) and applied all of it"
        )
    print(
        f"{args.data_dir}: server {identity.server_id}, sole voter of cluster "
        f"{identity.cluster}; its log starts after index {recovered.start_index}, "
        "so every new token is above it"
    )
    print(f"the old contents are in {recovered.kept} (remove it once the new cluster is healthy)")
    return 0


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=DISTRIBUTION,
        description="A Raft sidecar that grants fenced leadership tokens to settlement workers.",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    version = subcommands.add_parser("version", help="print the version and exit")
    version.set_defaults(handler=_cmd_version)
    serve = subcommands.add_parser("serve", help="run the sidecar")
    add_arguments(serve)
    serve.set_defaults(handler=_cmd_serve)
    status = subcommands.add_parser("status", help="print the cluster as one sidecar sees it")
    status.add_argument("--api", default="127.0.0.1:7401", help="the sidecar's worker API address")
    status.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    status.set_defaults(handler=_cmd_status)
    storage = subcommands.add_parser("storage", help="look at a data directory")
    storage_commands = storage.add_subparsers(
        dest="storage_command", metavar="SUBCOMMAND", required=True
    )
    inspect = storage_commands.add_parser(
        "inspect",
        help="print indices, terms, segments, snapshots and hard state; verify every checksum",
        description="Reads DIRECTORY without changing it. Exits 1 when a checksum or "
        "consistency check fails.",
    )
    inspect.add_argument("directory", help="the sidecar's data directory")
    inspect.set_defaults(handler=_cmd_storage_inspect)
    _add_disaster_commands(subcommands)
    add_members_parser(subcommands)
    return parser


def _add_min_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-token",
        help="new tokens start above this: the highest token in the ledger's fence table "
        "(docs/runbooks.md)",
    )


def _add_disaster_commands(subcommands: Any) -> None:
    """``snapshot save|restore`` and ``recover`` (docs/membership.md, "Backup,
    restore and recovery"). Options they need are checked by the handlers
    (one line, exit 2), not by argparse."""
    snapshot = subcommands.add_parser("snapshot", help="back up and restore the elections state")
    snapshot_commands = snapshot.add_subparsers(
        dest="snapshot_command", metavar="SUBCOMMAND", required=True
    )
    save = snapshot_commands.add_parser(
        "save",
        help="write a backup FILE from a running sidecar, or a stopped node's data directory",
        description="A running sidecar (its admin socket, DIR/admin.sock or --admin-socket) "
        "makes the backup after a linearizable read: every grant acknowledged before the "
        "call is in it. When no sidecar answers there (or with --offline), DIR is read "
        "without being changed: its newest snapshot plus its committed log.",
    )
    save.add_argument("--data-dir", help="the sidecar's data directory")
    save.add_argument("--admin-socket", help="a running sidecar's admin socket")
    save.add_argument(
        "--offline", action="store_true", help="read the stopped directory, never the socket"
    )
    save.add_argument(
        "--timeout", type=float, default=60.0, help="seconds a running sidecar may take"
    )
    save.add_argument("file", nargs="?", metavar="FILE", help="the backup file to write")
    save.set_defaults(handler=_cmd_snapshot_save)
    restore = snapshot_commands.add_parser(
        "restore",
        help="write the first data directory of a new cluster from a backup FILE",
        description="The new log starts above the backup's index and above --min-token "
        "(plus a margin), so every new fencing token is above every old one.",
    )
    restore.add_argument("file", nargs="?", metavar="FILE", help="the backup file")
    restore.add_argument("--data-dir", help="a new, empty data directory")
    restore.add_argument("--cluster-id", help="the new cluster's id (not the backup's)")
    restore.add_argument("--node-id", help="the node that will serve this directory")
    _add_min_token(restore)
    restore.set_defaults(handler=_cmd_snapshot_restore)
    recover = subcommands.add_parser(
        "recover",
        help="make a stopped survivor of a lost quorum the sole voter of a new cluster",
        description="Applies the survivor's whole log, keeps the old contents in "
        "DIR/pre-recovery-*, and is safe to run again after a crash.",
    )
    recover.add_argument("--data-dir", help="the stopped survivor's data directory")
    recover.add_argument("--new-cluster-id", help="the rebuilt cluster's id (not the old one)")
    _add_min_token(recover)
    recover.set_defaults(handler=_cmd_recover)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (argparse exits with 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
