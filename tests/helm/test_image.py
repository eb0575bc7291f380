"""The Dockerfile and the chart agree (the image cannot be built here): the
chart's default commands are console scripts the image installs, the image
runs as the chart's runAsUser, and the final stage carries no compiler."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.helm.chart import Manifests
from tests.helm.programs import console_scripts
from tests.helm.tools import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        found.append((keyword.upper(), rest.strip()))
    return found


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        assert result, "an instruction before the first FROM"
        result[-1].append((keyword, rest))
    return result


def test_multi_stage_build_onto_python_slim() -> None:
    builder, final = stages()
    assert builder[0] == ("FROM", "python:3.11-slim AS builder")
    assert final[0] == ("FROM", "python:3.11-slim")
    build = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "pip wheel" in build and "--prefix=/install" in build
    copied = [rest for keyword, rest in final if keyword == "COPY"]
    assert copied == ["--from=builder /install /usr/local"]


def test_final_stage_has_no_compiler_or_package_install() -> None:
    final = stages()[-1]
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    for word in ("apt-get", "gcc", "build-essential", "pip install", "cc "):
        assert word not in runs


def test_image_user_is_the_charts_run_as_user(rendered: Callable[[str], Manifests]) -> None:
    final = stages()[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users == ["10001:10001"], "a numeric USER, so runAsNonRoot can verify it"
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    assert "--uid 10001" in runs and "--gid 10001" in runs
    spec = rendered("default").pod_spec
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["securityContext"]["runAsGroup"] == 10001
    for container in spec["containers"]:
        assert container["securityContext"]["runAsUser"] == 10001


def test_chart_commands_are_console_scripts_of_the_image(
    rendered: Callable[[str], Manifests],
) -> None:
    m = rendered("default")
    scripts = console_scripts()
    for name in ("sidecar", "worker"):
        command = m.container(name)["command"][0]
        assert command in scripts, f"{command} is not in [project.scripts]"
    assert scripts["raft-sidecar"] == "sidecar.cli:main"
    # The image builds those packages and smoke-tests both entry points.
    copied = " ".join(rest for keyword, rest in stages()[0] if keyword == "COPY")
    for package in {target.split(".")[0] for target in scripts.values()}:
        assert f"{package}/" in copied
    smoke = " ".join(rest for keyword, rest in stages()[-1] if keyword == "RUN")
    assert "raft-sidecar version" in smoke and "settlement-demo --help" in smoke


def test_build_context_excludes_local_state() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "everything is excluded unless listed"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "sidecar", "settlement_demo"}
    copied = " ".join(rest for keyword, rest in stages()[0] if keyword == "COPY")
    for path in allowed:
        assert path in copied
