"""proto/ passes `buf lint` (and is `buf format`ted).

buf comes from the PyPI package buf-bin (a dev dependency). Without it these
tests skip, unless RAFT_SIDECAR_REQUIRE_TOOLS=1 (set by .ci/run), where a
missing tool is a failure rather than a silent pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"


def _buf() -> str:
    beside_python = Path(sys.executable).parent / "buf"
    found = str(beside_python) if beside_python.is_file() else shutil.which("buf")
    if found is not None:
        return found
    reason = "buf binary not found (pip install buf-bin, or `make .venv/.installed`)"
    if os.environ.get("RAFT_SIDECAR_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason}; RAFT_SIDECAR_REQUIRE_TOOLS=1 requires it")
    pytest.skip(reason)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_buf(), *args], cwd=PROTO_ROOT, capture_output=True, text=True, check=False
    )


def test_buf_lint() -> None:
    result = _run("lint")
    assert result.returncode == 0, f"buf lint failed:\n{result.stdout}{result.stderr}"


def test_buf_format() -> None:
    result = _run("format", "--diff", "--exit-code")
    assert result.returncode == 0, (
        "proto files are not buf-formatted; run `buf format -w` in proto/:\n"
        f"{result.stdout}{result.stderr}"
    )
