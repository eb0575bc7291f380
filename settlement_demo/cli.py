"""The ``settlement-demo`` command line: ``run`` (the local demo) and ``worker``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from settlement_demo import config as worker_config


def _cmd_worker(args: argparse.Namespace) -> int:
    """Exit 2 for invalid settings, 1 when the worker cannot start, 0 after SIGTERM."""
    from settlement_demo.worker import SettlementWorker, StartupError  # noqa: PLC0415
    from sidecar import logging as sidecar_logging  # noqa: PLC0415

    try:
        cfg = worker_config.load(args)
    except worker_config.ConfigError as exc:
        print(f"settlement-demo worker: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    sidecar_logging.configure(cfg.worker_id, cfg.log_level, key="worker_id")
    try:
        return asyncio.run(SettlementWorker(cfg).run())
    except StartupError as exc:
        print(f"settlement-demo worker: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from settlement_demo.demo import run_demo  # noqa: PLC0415

    return run_demo(fencing=not args.no_fencing, json_path=args.json, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="settlement-demo",
        description="Payment settlement runs that are never done twice, whatever fails.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="start 3 sidecars and 3 workers locally, play a failover scenario, audit the ledger",
        description="Exits 0 when the audit finds every batch and payout settled exactly once.",
    )
    run.add_argument(
        "--no-fencing",
        action="store_true",
        help="turn the ledger's fence check off, to see the duplicates it prevents",
    )
    run.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    run.add_argument(
        "--keep", type=Path, metavar="DIR", help="run in DIR and keep logs and ledger there"
    )
    run.set_defaults(handler=_cmd_run)
    worker = commands.add_parser(
        "worker", help="run one settlement worker next to its sidecar (what a pod runs)"
    )
    worker_config.add_arguments(worker)
    worker.set_defaults(handler=_cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
