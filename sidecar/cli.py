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

from sidecar.admin.cli import add_members_parser
from sidecar.config import add_arguments

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
    add_members_parser(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (argparse exits with 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
