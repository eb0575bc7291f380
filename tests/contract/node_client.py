"""The Node client of tests/contract/node/ and how a test runs it.

``installed()`` finds ``node`` and ``npm`` and runs ``npm ci`` (exactly the
versions of package-lock.json) when node_modules/ is missing or was
installed from another lock file; a stamp in node_modules/ records the lock
file's digest, and a file lock keeps parallel test processes from installing
at once. Without node or npm, or when the registry cannot be reached, the
test skips, or fails under RAFT_SIDECAR_REQUIRE_TOOLS=1 (.ci/run).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.helm.tools import REPO_ROOT, find_tool, unavailable

NODE_DIR = Path(__file__).resolve().parent / "node"
LOCK_FILE = NODE_DIR / "package-lock.json"
MODULES = NODE_DIR / "node_modules"
STAMP = MODULES / ".raft-sidecar-lock.sha256"
INSTALL_LOCK = REPO_ROOT / ".tools" / "contract-node-install.lock"
NPM_CI_TIMEOUT_S = 600


def _lock_digest() -> str:
    return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()


def _current() -> bool:
    return STAMP.is_file() and STAMP.read_text().strip() == _lock_digest()


def installed() -> str:
    """The path of ``node``, with the client's packages installed from the lock file."""
    node = find_tool("node")
    npm = find_tool("npm")
    if node is None or npm is None:
        unavailable(
            "node and npm are needed for the Node contract test "
            "(Debian: apt-get install nodejs npm)"
        )
        raise AssertionError("unreachable")
    if _current():
        return node
    INSTALL_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _current():
            env = {
                **os.environ,
                "npm_config_audit": "false",
                "npm_config_fund": "false",
                "npm_config_update_notifier": "false",
            }
            result = subprocess.run(
                # --ignore-scripts: nothing in the lock needs an install script
                # (protobufjs's postinstall only prints version advice).
                [npm, "ci", "--ignore-scripts", "--prefer-offline"],
                cwd=NODE_DIR,
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=NPM_CI_TIMEOUT_S,
            )
            if result.returncode != 0:
                unavailable(
                    f"`npm ci` in {NODE_DIR} failed (exit {result.returncode}; is the npm "
                    f"registry reachable?):\n{result.stdout}{result.stderr}"
                )
            STAMP.write_text(_lock_digest() + "\n")
    return node


def run(node: str, address: str, election: str, ttl_ms: int, timeout_s: float = 120) -> Any:
    """Run contract.js against one sidecar; its JSON report (AssertionError if it failed)."""
    result = subprocess.run(
        [node, "contract.js", "--address", address, "--election", election,
         "--ttl-ms", str(ttl_ms)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else None
    if result.returncode != 0 or report is None or "failed" in report:
        raise AssertionError(
            f"contract.js exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return report
