"""A worker process that holds one election through ``sidecar.client`` and
says what it believes, for tests that stop it with real signals.

    python -m tests.integration.holder TARGET ELECTION CANDIDATE TTL_MS

Prints one JSON line per belief change, flushed at once: ``granted`` and
every ``renewed`` with the safe ``deadline`` (``time.monotonic()``, the
machine's CLOCK_MONOTONIC, comparable across processes), then ``lost``.
A test that SIGSTOPs it reads the last deadline it printed: the worker
believes it holds the election until then, and not a moment longer.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from sidecar.client import SidecarClient


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


async def hold(target: str, election: str, candidate: str, ttl_ms: int) -> None:
    async with (
        SidecarClient(target) as client,
        client.leadership(election, candidate_id=candidate, ttl=ttl_ms / 1000) as lease,
    ):
        say("granted", token=lease.fencing_token, deadline=lease.deadline)
        lease.add_renewal_listener(lambda _sent_at, deadline: say("renewed", deadline=deadline))
        await lease.lost.wait()
        say("lost", reason=lease.lost_reason)


if __name__ == "__main__":
    target, election, candidate, ttl_ms = sys.argv[1:5]
    asyncio.run(hold(target, election, candidate, int(ttl_ms)))
