"""The worker's history file: an append-only JSON-lines record of what it saw.

Why a file of its own, beside the logs: a post-mortem (and the chaos suite,
docs/chaos.md) needs *when* the worker believed it held the lease, on the
machine's monotonic clock, next to every ledger write it attempted and how
that ended. Log lines carry wall-clock times and are filtered by level; this
file carries ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every
process on the machine) and every event, always.

One line per event, written with a single ``write(2)`` on a file opened with
``O_APPEND`` and nothing buffered in the process: a worker killed with
SIGKILL loses at most the line it was writing (a reader skips a torn last
line). The kinds and fields are those of the chaos suite's history contract
(``tests/chaos/history.py``): ``campaign``, ``granted``, ``renewed``,
``lost``, ``resigned``, ``write``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class History:
    """Append events to ``path`` (nothing at all when ``path`` is None)."""

    def __init__(self, path: Path | None, source: str) -> None:
        self._source = source
        self._fd: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def record(self, kind: str, *, t: float | None = None, **fields: Any) -> None:
        """Append one event; ``t`` defaults to now on ``time.monotonic()``."""
        if self._fd is None:
            return
        event = {"t": time.monotonic() if t is None else t, "kind": kind, "source": self._source}
        event.update(fields)
        os.write(self._fd, (json.dumps(event, sort_keys=True) + "\n").encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
