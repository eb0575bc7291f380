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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (argparse exits with 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
