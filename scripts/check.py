#!/usr/bin/env python3
"""The one check command (`make check`): every static gate, in order.

1. ruff format --check   formatting
2. ruff check            lint
3. mypy                  strict typing of sidecar/ and settlement_demo/ (config in pyproject.toml;
                         generated sidecar/pb is excluded)
4. lint-imports          import-boundary contracts (pyproject.toml)
5. buf lint/format       the protobuf contracts in proto/
6. buf breaking          the worker API stays compatible with its released image
                         (proto/released/raftsidecar-worker-v1.binpb; docs/worker-api.md)
7. generated code        sidecar/pb matches a fresh `make proto`

Stops at the first failing step, prints that tool's output and exits 1.
Tools are taken from the interpreter's own environment (the venv), so the
script works without activating it. `--verbose` also prints passing output.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = Path(sys.executable).parent
RELEASED_WORKER_IMAGE = "released/raftsidecar-worker-v1.binpb"
"""The frozen worker API v1 (`buf build` of its release; never regenerated), relative to
proto/: every change to raftsidecar.worker.v1 must stay wire- and source-compatible."""


class ToolMissingError(Exception):
    """A required executable is neither in the venv nor on PATH."""


def _tool(name: str) -> str:
    beside_python = BIN_DIR / name
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise ToolMissingError(f"{name} not found; run `make .venv/.installed` first")
    return found


@dataclass(frozen=True, slots=True)
class Step:
    title: str
    command: tuple[str, ...]
    cwd: Path = REPO_ROOT


def steps() -> list[Step]:
    """The check steps in order. Raises ToolMissingError if a tool is missing."""
    python = sys.executable
    buf = _tool("buf")
    return [
        Step("ruff format --check", (python, "-m", "ruff", "format", "--check", ".")),
        Step("ruff check", (python, "-m", "ruff", "check", ".")),
        Step("mypy (strict, sidecar/ and settlement_demo/)", (python, "-m", "mypy")),
        Step("lint-imports", (_tool("lint-imports"), "--no-cache", "--no-logo")),
        Step("buf lint", (buf, "lint"), cwd=REPO_ROOT / "proto"),
        Step("buf format", (buf, "format", "--diff", "--exit-code"), cwd=REPO_ROOT / "proto"),
        Step(
            "buf breaking (worker API v1 against its released image)",
            (
                buf,
                "breaking",
                "--against",
                RELEASED_WORKER_IMAGE,
                "--path",
                "raftsidecar/worker/v1/worker.proto",
            ),
            cwd=REPO_ROOT / "proto",
        ),
        Step(
            "generated code is fresh",
            (python, str(REPO_ROOT / "scripts" / "gen_proto.py"), "--check"),
        ),
    ]


def run(step: Step, *, verbose: bool) -> bool:
    print(f"==> {step.title}", flush=True)
    started = time.monotonic()
    result = subprocess.run(
        step.command,
        cwd=step.cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed_s = time.monotonic() - started
    output = (result.stdout + result.stderr).rstrip()
    if result.returncode != 0:
        print(output, flush=True)
        print(
            f"FAILED: {step.title} (exit {result.returncode}): {' '.join(step.command)}",
            flush=True,
        )
        return False
    if verbose and output:
        print(output)
    print(f"    ok ({elapsed_s:.1f}s)", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run every static check, stop at the first failure."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print output of passing steps"
    )
    args = parser.parse_args(argv)
    try:
        plan = steps()
    except ToolMissingError as exc:
        print(f"check: {exc}", file=sys.stderr)
        return 1
    for step in plan:
        if not run(step, verbose=args.verbose):
            return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
