"""``python -m tests.chaos``: one chaos run, or a suite of them (docs/chaos.md).

    python -m tests.chaos --minutes N --seed S --nodes 3|5 --ledger sqlite|postgres
                          [--plant DEFECT] [--out DIR]
    python -m tests.chaos --suite ci|long [--seed S] [--out DIR]

A run exits 0 when its report passes; a suite when every real run passed and
every negative control was caught. Needs root (network namespaces, tmpfs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tests import netlab
from tests.chaos import controls
from tests.chaos.runner import Run, RunConfig

REPO = Path(__file__).resolve().parents[2]


def suite(name: str, seed: int) -> list[RunConfig]:
    """The runs of a suite, without their output directories (``out`` is relative)."""
    if name == "ci":
        real = [RunConfig(seed, 1.25, 3, "sqlite", None, Path("run"))]
        plants = [
            RunConfig(seed, 0.5, 3, "sqlite", defect, Path(defect)) for defect in controls.CONTROLS
        ]
        return real + plants
    if name == "long":
        shapes = [(3, "sqlite"), (5, "sqlite"), (3, "postgres"), (5, "postgres")]
        shapes += [(3, "sqlite"), (5, "postgres")]
        real = [
            RunConfig(seed + i, 5.0, n, backend, None, Path(f"seed{seed + i}-{n}-{backend}"))
            for i, (n, backend) in enumerate(shapes)
        ]
        plants = [
            RunConfig(seed, 1.0, 3, backend, defect, Path(f"{defect}-{backend}"))
            for defect in controls.CONTROLS
            for backend in ("sqlite", "postgres")
        ]
        return real + plants
    raise ValueError(f"no suite {name!r}: ci or long")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=2.0, help="run length (default 2)")
    p.add_argument("--seed", type=int, default=1, help="the nemesis's seed (default 1)")
    p.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    p.add_argument("--ledger", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--plant", choices=sorted(controls.CONTROLS), help="a negative control")
    p.add_argument("--out", type=Path, help="run directory (default: a new one under /tmp)")
    p.add_argument("--suite", choices=("ci", "long"), help="several runs and the controls")
    return p


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every cleanup


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = netlab.available()
    if problem is not None:
        print(f"chaos: cannot run: {problem} (run as root)", file=sys.stderr)
        return 2
    if args.minutes <= 0:
        print("chaos: --minutes must be positive", file=sys.stderr)
        return 2
    # Children (sidecars, workers, the planted wrapper) import this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    signal.signal(signal.SIGTERM, _terminate)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = args.out or Path(tempfile.gettempdir()) / "raft-sidecar-chaos" / f"{stamp}-{os.getpid()}"
    if args.suite is None:
        config = RunConfig(args.seed, args.minutes, args.nodes, args.ledger, args.plant, base)
        return Run(config).run()
    results = []
    began = time.monotonic()
    for planned in suite(args.suite, args.seed):
        config = dataclasses.replace(planned, out=base / planned.out)
        try:
            status = Run(config).run()
        except Exception as exc:  # a run that could not finish: the suite goes on, red
            print(f"chaos: {config.replay()} did not finish: {exc!r}", file=sys.stderr)
            status = 2
        label = f"control {config.plant}" if config.plant else "run"
        verdict = {0: "ok", 1: "FAILED"}.get(status, "NOT JUDGED")
        results.append((status, f"{label}: {verdict} ({config.replay()})"))
    print(f"\nchaos suite {args.suite}: {time.monotonic() - began:.0f}s, runs in {base}")
    for _, line in results:
        print(f"  {line}")
    return 0 if all(status == 0 for status, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
