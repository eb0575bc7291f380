"""The Dockerfile and the chart agree (the image cannot be built here): the
chart's default commands are console scripts the image installs, the image
runs as the chart's runAsUser, and the final stage carries no compiler. The
build is reproducible: the base image pinned by digest, every Python package
from a hash-locked file that covers every runtime dependency, dependencies in
a layer before the sources, OCI labels, and license metadata that builds."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.helm.chart import Manifests
from tests.helm.programs import console_scripts
from tests.helm.tools import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
PYPROJECT = REPO_ROOT / "pyproject.toml"
RUNTIME_LOCK = REPO_ROOT / "scripts" / "image" / "runtime.lock"
BUILD_LOCK = REPO_ROOT / "scripts" / "image" / "build.lock"
DIGEST = re.compile(r"^python:3\.11-slim@sha256:[0-9a-f]{64}$")


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


def global_args() -> dict[str, str]:
    """ARGs before the first FROM, with their defaults."""
    found = {}
    for keyword, rest in instructions():
        if keyword == "FROM":
            break
        assert keyword == "ARG", f"{keyword} before the first FROM"
        name, _, default = rest.partition("=")
        found[name] = default
    return found


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def base_image(from_args: str) -> str:
    image = from_args.partition(" AS ")[0].strip()
    match = re.fullmatch(r"\$\{(\w+)\}", image)
    return global_args()[match.group(1)] if match else image


def test_multi_stage_build_onto_python_slim_pinned_by_digest() -> None:
    builder, final = stages()
    assert builder[0][1].endswith(" AS builder")
    for stage in (builder, final):
        image = base_image(stage[0][1])
        assert DIGEST.match(image), f"base image not pinned by digest: {image}"
    assert base_image(builder[0][1]) == base_image(final[0][1])
    copied = [rest for keyword, rest in final if keyword == "COPY"]
    assert copied == ["--from=builder /install /usr/local"]


def test_dependencies_are_installed_from_the_locks_before_the_sources_are_copied() -> None:
    """The layer cache: only a changed lock re-downloads wheels."""
    builder = stages()[0]
    steps = [(k, r) for k, r in builder if k in {"COPY", "RUN"}]
    kinds = [k for k, _ in steps]
    first_source = next(
        i for i, (k, r) in enumerate(steps) if k == "COPY" and "sidecar/" in r.split()
    )
    lock_copy = next(i for i, (k, r) in enumerate(steps) if k == "COPY" and "runtime.lock" in r)
    lock_runs = [r for k, r in steps[lock_copy:first_source] if k == "RUN"]
    assert lock_copy < first_source and lock_runs, kinds
    install = " ".join(lock_runs)
    for lock in ("scripts/image/runtime.lock", "scripts/image/build.lock"):
        assert f"-r {lock}" in install
    assert install.count("--require-hashes") == 2
    assert "--only-binary=:all:" in install and "--prefix=/install" in install
    # The project itself: nothing resolved or fetched any more.
    (project,) = [r for k, r in steps[first_source:] if k == "RUN"]
    assert "--no-deps" in project and "--no-build-isolation" in project
    assert "--prefix=/install" in project


def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """Name -> (version, hashes) of a pip requirements file with hashes."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found: dict[str, tuple[str, list[str]]] = {}
    for raw in text.splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        requirement = Requirement(re.sub(r"\s--hash=\S+", "", line).strip())
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{path.name}: {line} is not pinned"
        assert hashes, f"{path.name}: {requirement.name} has no hash"
        found[canonicalize_name(requirement.name)] = (spec.version, hashes)
    return found


def runtime_closure() -> set[str]:
    """The project's runtime dependencies and theirs, for CPython 3.11 on
    Linux, read from the installed distributions' metadata."""
    environment = {**default_environment(), "sys_platform": "linux", "python_version": "3.11"}
    with PYPROJECT.open("rb") as f:
        todo = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if name in seen and not extras:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            child = Requirement(text)
            marker_env = [{**environment, "extra": e} for e in extras or {""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in marker_env):
                child.marker = None
                todo.append(child)
    return seen


def test_runtime_lock_pins_every_runtime_dependency_with_hashes() -> None:
    lock = locked(RUNTIME_LOCK)
    missing = runtime_closure() - set(lock)
    assert not missing, f"not in scripts/image/runtime.lock: {sorted(missing)}"
    with PYPROJECT.open("rb") as f:
        for text in tomllib.load(f)["project"]["dependencies"]:
            requirement = Requirement(text)
            version, _ = lock[canonicalize_name(requirement.name)]
            assert requirement.specifier.contains(version), (text, version)
    # Dev tools stay out of the image.
    assert not {"pytest", "mypy", "ruff", "grpcio-tools"} & set(lock)


def test_build_lock_satisfies_the_build_system() -> None:
    lock = locked(BUILD_LOCK)
    with PYPROJECT.open("rb") as f:
        requires = [Requirement(r) for r in tomllib.load(f)["build-system"]["requires"]]
    for requirement in requires:
        version, _ = lock[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), (str(requirement), version)


def test_image_has_oci_labels() -> None:
    final = stages()[-1]
    labels = " ".join(rest for keyword, rest in final if keyword == "LABEL")
    keys = set(re.findall(r"(org\.opencontainers\.image\.[a-z.]+)=", labels))
    assert keys >= {
        f"org.opencontainers.image.{k}"
        for k in ("title", "description", "version", "revision", "created", "licenses")
    } | {"org.opencontainers.image.base.name"}
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels


def test_license_metadata_is_spdx_and_builds(tmp_path: Path) -> None:
    """PEP 639: an SPDX expression and license files, which setuptools 77+
    writes as License-Expression and License-File (the table form stops
    building after 2027-02-18). Built offline with the installed setuptools."""
    with PYPROJECT.open("rb") as f:
        pyproject = tomllib.load(f)
    project = pyproject["project"]
    assert project["license"] == "Apache-2.0"
    for name in project["license-files"]:
        assert (REPO_ROOT / name).is_file(), name
    (setuptools,) = [Requirement(r) for r in pyproject["build-system"]["requires"]]
    assert setuptools.name == "setuptools"
    assert not setuptools.specifier.contains("76.9"), "PEP 639 needs setuptools 77"
    assert SpecifierSet(">=77").contains(metadata.version("setuptools"))
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, source / name)
    for package in ("sidecar", "settlement_demo"):
        shutil.copytree(REPO_ROOT / package, source / package)
    code = (
        "from setuptools import build_meta; import sys; "
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))"
    )
    out = tmp_path / "meta"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    dist_info = result.stdout.strip().splitlines()[-1]
    lines = (out / dist_info / "METADATA").read_text().splitlines()
    assert "License-Expression: Apache-2.0" in lines
    assert "License-File: LICENSE" in lines


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
    assert allowed == {
        "pyproject.toml", "README.md", "LICENSE", "scripts/image", "sidecar", "settlement_demo"
    }  # fmt: skip
    copied = " ".join(rest for keyword, rest in stages()[0] if keyword == "COPY")
    for path in allowed:
        assert path in copied
