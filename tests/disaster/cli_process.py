"""``raft-sidecar`` run as an operator runs it: a separate process."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sidecar.cli ARGS``; the caller checks the exit status."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
