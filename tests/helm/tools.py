"""External tools of the chart tests (helm, promtool) and how a test gets one.

``scripts/install_tools.sh`` (``make tools``) puts pinned builds into
``.tools/bin``; a tool there wins over one on PATH. Without the tool a test
skips, naming the tool and ``make tools``, unless RAFT_SIDECAR_REQUIRE_TOOLS=1
(set by .ci/run), where a missing tool fails the test instead of letting it
pass silently.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"


def tools_required() -> bool:
    return os.environ.get("RAFT_SIDECAR_REQUIRE_TOOLS") == "1"


def find_tool(name: str) -> str | None:
    local = TOOLS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def require_tool(name: str) -> str:
    """The tool's path; skips (or fails under RAFT_SIDECAR_REQUIRE_TOOLS=1) without it."""
    found = find_tool(name)
    if found is not None:
        return found
    unavailable(f"{name} not found in .tools/bin or on PATH: run `make tools`")
    raise AssertionError("unreachable")


def unavailable(reason: str) -> None:
    """Skip for a missing prerequisite; fail instead when CI requires tools."""
    if tools_required():
        pytest.fail(f"{reason} (RAFT_SIDECAR_REQUIRE_TOOLS=1 requires it)")
    pytest.skip(reason)
