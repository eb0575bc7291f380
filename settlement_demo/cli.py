"""The ``settlement-demo`` command line: ``run`` (the local demo) and ``worker``.

Everything the worker writes to stderr (its own messages, argparse's, a
crash's traceback, every JSON log line) goes through
:func:`settlement_demo.redact.redact` first: the ledger URL may carry a
password.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import structlog

from settlement_demo import config as worker_config
from settlement_demo.redact import redact


class _Parser(argparse.ArgumentParser):
    """argparse quotes bad arguments back (a URL among them): redact them."""

    def error(self, message: str) -> NoReturn:
        super().error(redact(message))


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return redact(repr(value))


def _redact_log_values(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: every value of every line, just before rendering."""
    return {key: _redacted(value) for key, value in event_dict.items()}


def _install_log_redaction() -> None:
    """Insert :func:`_redact_log_values` before the renderer (the last processor)."""
    processors = list(structlog.get_config()["processors"])
    structlog.configure(processors=[*processors[:-1], _redact_log_values, processors[-1]])


def _one_line(text: str) -> str:
    return " ".join(redact(text).split())


def _cmd_worker(args: argparse.Namespace) -> int:
    """Exit 2 for invalid settings, 1 when the worker cannot start, 0 after SIGTERM."""
    from settlement_demo.worker import SettlementWorker, StartupError  # noqa: PLC0415
    from sidecar import logging as sidecar_logging  # noqa: PLC0415

    try:
        cfg = worker_config.load(args)
    except worker_config.ConfigError as exc:
        print(f"settlement-demo worker: invalid settings:\n{redact(str(exc))}", file=sys.stderr)
        return 2
    sidecar_logging.configure(cfg.worker_id, cfg.log_level, key="worker_id")
    _install_log_redaction()
    try:
        return asyncio.run(SettlementWorker(cfg).run())
    except StartupError as exc:
        print(f"settlement-demo worker: cannot start: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception:
        # A bug: show where, but not a password a driver error may carry.
        print(f"settlement-demo worker: crashed\n{redact(traceback.format_exc())}", file=sys.stderr)
        return 1


def _cmd_run(args: argparse.Namespace) -> int:
    from settlement_demo.demo import run_demo  # noqa: PLC0415

    return run_demo(fencing=not args.no_fencing, json_path=args.json, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
