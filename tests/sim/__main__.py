"""``python -m tests.sim --seeds N --steps M``: a longer simulation campaign.

``--seed S`` replays one seed and prints its trace on failure.
"""

from __future__ import annotations

import argparse
import sys

from tests.sim.runner import run_campaign


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=500, help="how many seeds to run")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed of the campaign")
    parser.add_argument("--seed", type=int, help="replay this one seed")
    parser.add_argument("--steps", type=int, default=2000, help="safety-phase steps per seed")
    args = parser.parse_args()
    seeds = (
        range(args.seed, args.seed + 1)
        if args.seed is not None
        else range(args.first_seed, args.first_seed + args.seeds)
    )
    failures, seconds = run_campaign(seeds, args.steps)
    for f in failures:
        print(f.report, end="\n\n")
    print(
        f"{len(seeds)} seeds x {args.steps} steps in {seconds:.1f}s: "
        f"{len(seeds) - len(failures)} passed, {len(failures)} failed"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
