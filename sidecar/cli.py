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


Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=DISTRIBUTION,
        description="A Raft sidecar that grants fenced leadership tokens to settlement workers.",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    version = subcommands.add_parser("version", help="print the version and exit")
    version.set_defaults(handler=_cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (argparse exits with 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
