"""The demo's fault-injection point: a worker that stops itself mid-step.

A long garbage-collection pause is the classic way a leader loses its lease
without noticing: it checked the lease, then froze, then woke up and wrote.
The demo reproduces it exactly: when the orchestrator writes
``pause-before-write`` into the worker's ``--fault-file``, the worker, at its
next chunk write, *after* its last lease check and right before the ledger
call (no await in between, so the event loop cannot notice the lost lease
first), removes the file and sends itself SIGSTOP. The orchestrator lets the
TTL pass, lets another worker take over, then sends SIGCONT: the stale write
really goes out, and only the fence stops it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

PAUSE_BEFORE_WRITE = "pause-before-write"


class FaultPoint:
    def __init__(self, fault_file: Path | None) -> None:
        self._file = fault_file

    def reached(self, name: str) -> bool:
        """Stop this process if the fault file asks for ``name``; True if it did."""
        if self._file is None:
            return False
        try:
            wanted = self._file.read_text().strip()
        except FileNotFoundError:
            return False
        if wanted != name:
            return False
        self._file.unlink(missing_ok=True)
        print(f'{{"event": "fault_pause", "point": "{name}", "pid": {os.getpid()}}}',
              file=sys.stderr, flush=True)  # fmt: skip
        # Aimed at this thread, not the process: a process-directed SIGSTOP may
        # be taken by another thread while this one runs on into the write and
        # freezes holding the database's write lock, which is not the pause
        # the demo means to show.
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
        return True
