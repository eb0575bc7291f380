"""scripts/install_tools.sh parses, and the tools in .tools/bin are the ones it pins."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.helm.tools import REPO_ROOT, TOOLS_BIN

SCRIPT = REPO_ROOT / "scripts" / "install_tools.sh"


def pinned(name: str) -> str:
    match = re.search(rf'^{name}="([^"]+)"$', SCRIPT.read_text(), re.M)
    assert match is not None, f"{name} is not pinned in {SCRIPT.name}"
    return match.group(1)


def test_script_parses() -> None:
    result = subprocess.run(
        ["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_installed_helm_is_the_pinned_one() -> None:
    helm = TOOLS_BIN / "helm"
    if not helm.exists():
        pytest.skip("no .tools/bin/helm: run `make tools`")
    version = subprocess.run(
        [str(helm), "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    assert version == pinned("HELM_VERSION")


def test_installed_promtool_is_recent_enough() -> None:
    promtool = TOOLS_BIN / "promtool"
    if not promtool.exists():
        pytest.skip("no .tools/bin/promtool: run `make tools`")
    output = subprocess.run(
        [str(promtool), "--version"], capture_output=True, text=True, check=False
    ).stdout
    match = re.match(r"promtool, version (\d+)\.(\d+)\.(\d+)", output)
    assert match is not None, output
    have = tuple(int(x) for x in match.groups())
    want = tuple(int(x) for x in pinned("PROMTOOL_MIN_VERSION").split("."))
    assert have >= want


def test_gitignore_keeps_tools_out_of_the_repository() -> None:
    # ".tools", not ".tools/": the pattern must also match a symlink to a
    # shared .tools (a git worktree), which git sees as a file; ".tools/" let
    # one be committed, and the merge then replaced the real directory.
    assert ".tools" in (REPO_ROOT / ".gitignore").read_text().splitlines()
