"""Fixtures of the chart tests: the tools, and the chart rendered once per case."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helm.chart import CASES, Manifests, render
from tests.helm.tools import require_tool, unavailable


@pytest.fixture(scope="session")
def helm() -> str:
    """helm 4 (error messages and schema handling differ in helm 3)."""
    path = require_tool("helm")
    version = subprocess.run(
        [path, "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    ).stdout.strip()
    if not version.startswith("v4."):
        unavailable(f"{path} is helm {version or '?'}; these tests need helm 4: run `make tools`")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture(scope="session")
def rendered(helm: str, helm_home: Path) -> Callable[[str], Manifests]:
    """``rendered(case)``: the manifests of a case of CASES, rendered once."""
    cache: dict[str, Manifests] = {}

    def get(case: str) -> Manifests:
        if case not in cache:
            cache[case] = Manifests(render(helm, helm_home, CASES[case]))
        return cache[case]

    return get
