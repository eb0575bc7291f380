"""Boot wrapper for the negative controls: plant a known defect, then run the real CLI.

    python -m tests.chaos.planted DEFECT -- [python -m] sidecar.cli|settlement_demo.cli ARGS...

A checker that cannot fail proves nothing: ``make chaos`` runs the suite on
builds with a defect planted and demands a violation. The product's code is
not changed for that: this wrapper monkeypatches one named function in the
process it boots and then calls the real entry point's ``main(ARGS)``, so
the defect lives only in processes the suite starts this way.

Defects (``DEFECTS``) and what each patch does:

* ``amnesia-guard-off`` (sidecar): a new data directory gets the constant
  incarnation ``0000000000000000``, so a node that lost its disk comes back
  under its old server id (docs/membership.md: with the incarnation made
  constant the guard is off) and votes with an empty log;
* ``stale-leader-renewal`` (sidecar): ``LeaseKeeper.renew`` without its read
  barrier: a leader that no longer leads (cut off, and the last to notice) still
  acknowledges keep-alives with a full TTL;
* ``no-margin`` (worker): the client's safety margin is 0, both its own
  floor (``default_margin_s``) and the one the sidecar sends with each
  acknowledgement;
* ``fast-lease-clock`` (sidecar) is no defect but the fault that makes
  ``no-margin`` observable: the lease keeper's clock runs ``DRIFT`` fast
  (a clock-rate drift between the Raft leader and the worker, within the
  tenth of a TTL the default margin is there to absorb).
* ``disk-hold`` (sidecar) is no defect either but the fault that makes
  ``stale-leader-renewal`` observable: while a file named ``HOLD_FILE``
  exists in the node's data directory, a write of log entries waits for it
  to go (a disk that stops answering, as a network volume can). The leader's
  Raft loop stalls in that write; its API and transport, on the event loop,
  still answer.

``fencing off`` needs no wrapper: the worker's ``--fencing false`` exists.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

HOLD_FILE = "chaos-disk-hold"
"""Its presence in a data directory holds that node's writes of log entries (``disk-hold``)."""
HOLD_POLL_S = 0.02
DRIFT = 0.08
"""How much faster than real time ``fast-lease-clock`` runs the leader's lease clock."""
CONSTANT_INCARNATION = "0" * 16
ENTRY_POINTS = ("sidecar.cli", "settlement_demo.cli")


def _amnesia_guard_off() -> None:
    from sidecar.storage import identity  # noqa: PLC0415

    class _ConstantSecrets:
        @staticmethod
        def token_hex(nbytes: int | None = None) -> str:
            return CONSTANT_INCARNATION

    identity.secrets = _ConstantSecrets  # type: ignore[assignment]


def _stale_leader_renewal() -> None:
    from sidecar import leases  # noqa: PLC0415

    async def renew(self: Any, election: str, token: int) -> tuple[bool, int]:
        # The real renew, minus ``await self._node.read_barrier()`` (and the
        # wait for what the leader appended, which the barrier's round commits).
        grant = self._machine.state.holder(election)
        if grant is None or grant.token != token:
            return False, 0
        renewed = self._deadlines.renew(
            election, token, grant.ttl_ms, self._clock(), term=self._node.raft.term
        )
        return True, int(grant.ttl_ms) if renewed else 0

    leases.LeaseKeeper.renew = renew  # type: ignore[method-assign]


def _no_margin() -> None:
    from sidecar import client  # noqa: PLC0415

    client.default_margin_s = lambda ttl_s: 0.0
    acknowledge = client.Lease._acknowledge

    def without_sidecar_margin(self: Any, response: Any) -> None:
        if not response.HasField("error"):
            response.safety_margin_ms = 0
        acknowledge(self, response)

    client.Lease._acknowledge = without_sidecar_margin  # type: ignore[method-assign]


def fast_clock(drift: float, clock: Callable[[], float] = time.monotonic) -> Callable[[], float]:
    """A clock that runs ``1 + drift`` times as fast as ``clock``, from now on."""
    base = clock()

    def fast() -> float:
        return base + (clock() - base) * (1 + drift)

    return fast


def _fast_lease_clock() -> None:
    from sidecar import leases  # noqa: PLC0415

    init = leases.LeaseKeeper.__init__
    clock = fast_clock(DRIFT)

    def with_fast_clock(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["clock"] = clock
        init(self, *args, **kwargs)

    leases.LeaseKeeper.__init__ = with_fast_clock  # type: ignore[method-assign]


def _disk_hold() -> None:
    from pathlib import Path  # noqa: PLC0415

    from sidecar.storage import disk  # noqa: PLC0415

    init, persist = disk.DiskStorage.__init__, disk.DiskStorage.persist

    def remembering_the_directory(self: Any, path: str, *args: Any, **kwargs: Any) -> None:
        init(self, path, *args, **kwargs)
        self.chaos_hold = Path(path) / HOLD_FILE

    def held_while_the_file_exists(self: Any, hard_state: Any, snapshot: Any, entries: Any) -> None:
        while entries and self.chaos_hold.exists():
            time.sleep(HOLD_POLL_S)  # the disk thread's write, not the event loop
        persist(self, hard_state, snapshot, entries)

    disk.DiskStorage.__init__ = remembering_the_directory  # type: ignore[method-assign]
    disk.DiskStorage.persist = held_while_the_file_exists  # type: ignore[method-assign]


DEFECTS: dict[str, Callable[[], None]] = {
    "amnesia-guard-off": _amnesia_guard_off,
    "stale-leader-renewal": _stale_leader_renewal,
    "no-margin": _no_margin,
    "fast-lease-clock": _fast_lease_clock,
    "disk-hold": _disk_hold,
}


def parse(argv: Sequence[str]) -> tuple[list[str], str, list[str]]:
    """(defects, entry module, its arguments) from ``D[,D...] -- [python -m] MODULE ARGS``.

    Raises ValueError with a one-line reason."""
    if "--" not in argv:
        raise ValueError("usage: python -m tests.chaos.planted DEFECT -- MODULE ARGS...")
    split = list(argv).index("--")
    head, command = list(argv[:split]), list(argv[split + 1 :])
    if len(head) != 1:
        raise ValueError("name one defect (or several joined by commas) before --")
    defects = head[0].split(",")
    unknown = [d for d in defects if d not in DEFECTS]
    if unknown:
        raise ValueError(f"unknown defect {unknown[0]!r}: one of {', '.join(sorted(DEFECTS))}")
    if command and command[0] not in ENTRY_POINTS:
        command = command[2:] if len(command) > 2 and command[1] == "-m" else command
    if not command or command[0] not in ENTRY_POINTS:
        raise ValueError(f"the command must run one of {', '.join(ENTRY_POINTS)}")
    return defects, command[0], command[1:]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        defects, module, args = parse(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"tests.chaos.planted: {exc}", file=sys.stderr)
        return 2
    for defect in defects:
        DEFECTS[defect]()
    print(f'{{"event": "defect_planted", "defects": "{",".join(defects)}"}}', file=sys.stderr)
    entry: Callable[[list[str]], int] = importlib.import_module(module).main
    return entry(args)


if __name__ == "__main__":
    sys.exit(main())
