"""Waiting for an event or a timeout, whichever comes first.

Background tasks (``sidecar.leases``, ``sidecar.membership``) sleep until an
event wakes them or their next deadline passes, instead of polling: an idle
sidecar pays for every wake-up of its event loop (docs/kubernetes.md, "Idle
cost").
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Return once ``event`` is set, or ``timeout_s`` passed (then the event is
    set too: the caller clears it, and re-reads its state either way).

    A timeout of infinity waits for the event alone. Not asyncio.wait_for: on
    Python 3.11 it can swallow a cancellation that races with the event, and
    the task's stop() hangs.
    """
    if event.is_set():
        return
    if timeout_s == float("inf"):
        await event.wait()
        return
    alarm = asyncio.get_running_loop().call_later(max(0.0, timeout_s), event.set)
    try:
        await event.wait()
    finally:
        alarm.cancel()
