"""``python -m tests.sim --seeds N --steps M``: a longer simulation campaign.

``--seed S`` replays one seed and prints its trace on failure. ``--leases``
runs the lease mode (workers, lease code and lease clocks on the swarm,
``leases.py``); ``--lease-mutant NAME`` runs it with a planted lease bug
(``mutants.LEASE_MUTANTS``). ``--jobs J``
spreads the seeds over J worker processes (the default uses every core);
each seed's run is the same whichever worker runs it. A campaign ends with
the failing seeds and the command that replays each one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tests.sim.leases import LeaseCode
from tests.sim.mutants import LEASE_MUTANTS
from tests.sim.runner import SeedFailure, replay_command, run_campaign


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=500, help="how many seeds to run")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed of the campaign")
    parser.add_argument("--seed", type=int, help="replay this one seed")
    parser.add_argument("--steps", type=int, default=2000, help="safety-phase steps per seed")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: one per core; 1 runs in this process)",
    )
    parser.add_argument(
        "--progress",
        type=int,
        default=0,
        metavar="K",
        help="print a progress line to stderr every K seeds (0: never)",
    )
    parser.add_argument("--leases", action="store_true", help="run the lease mode")
    parser.add_argument(
        "--lease-mutant",
        choices=sorted(LEASE_MUTANTS),
        help="lease mode with this planted bug (a negative control)",
    )
    args = parser.parse_args()
    leases = (
        LEASE_MUTANTS[args.lease_mutant]
        if args.lease_mutant
        else LeaseCode()
        if args.leases
        else None
    )
    seeds = (
        range(args.seed, args.seed + 1)
        if args.seed is not None
        else range(args.first_seed, args.first_seed + args.seeds)
    )
    started = time.perf_counter()

    def progress(done: int, failures: list[SeedFailure]) -> None:
        if args.progress and (done % args.progress == 0 or done == len(seeds)):
            elapsed = time.perf_counter() - started
            print(
                f"{done}/{len(seeds)} seeds, {len(failures)} failed, {elapsed:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    failures, seconds = run_campaign(
        seeds, args.steps, leases=leases, jobs=min(args.jobs, len(seeds)), progress=progress
    )
    for f in failures:
        print(f.report, end="\n\n")
    print(
        f"{len(seeds)} seeds x {args.steps} steps in {seconds:.1f}s "
        f"({min(args.jobs, len(seeds))} jobs): "
        f"{len(seeds) - len(failures)} passed, {len(failures)} failed"
    )
    for f in failures:
        print(f"FAILED seed {f.seed}: {f.error}")
        print(f"  replay: {replay_command(f.seed, f.steps, leases)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
