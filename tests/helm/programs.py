"""Running the programs the chart runs, as local processes.

``program(name)`` finds a console script of pyproject.toml the way a
container's PATH would (the venv first); ``ledger_url()`` gives a
fresh PostgreSQL schema on the local server; ``Processes`` starts processes
and always stops them (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families

from tests.helm.tools import REPO_ROOT

VENV_BIN = Path(sys.executable).parent
PG_BASE_URL = os.environ.get(
    "RAFT_SIDECAR_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@functools.cache
def console_scripts() -> dict[str, str]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        scripts: dict[str, str] = tomllib.load(f)["project"]["scripts"]
    return scripts


def program(name: str) -> list[str]:
    """argv prefix that runs ``name``: the venv's script, one on PATH, or the
    pyproject entry point through this interpreter (a venv installed before
    the script was declared has no wrapper for it yet)."""
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is not None:
        return [found]
    target = console_scripts().get(name)
    if target is None:
        raise AssertionError(f"{name} is neither on PATH nor a console script of pyproject.toml")
    module, _, func = target.partition(":")
    code = f"import sys; from {module} import {func} as main; sys.exit(main())"
    return [sys.executable, "-c", code]


@contextlib.contextmanager
def ledger_url() -> Iterator[str]:
    """A URL of the local PostgreSQL whose search_path is a fresh schema,
    dropped afterwards. Raises OSError-like psycopg errors when there is no server."""
    import psycopg  # noqa: PLC0415

    schema = f"helm_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_BASE_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        option = quote(f"-csearch_path={schema}", safe="")
        sep = "&" if "?" in PG_BASE_URL else "?"
        yield f"{PG_BASE_URL}{sep}options={option}"
    finally:
        with psycopg.connect(PG_BASE_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres_missing() -> str | None:
    try:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(PG_BASE_URL, connect_timeout=3):
            return None
    except Exception as exc:  # any connection problem means "not here"
        return f"no PostgreSQL at {PG_BASE_URL} ({type(exc).__name__}: {exc})"


def scrape(address: str, path: str = "/metrics") -> str | None:
    """The body of http://address/path, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


def metric(address: str, name: str) -> float | None:
    """The largest value of the samples called ``name`` on http://address/metrics
    (whatever their labels); None while it does not answer or has none."""
    text = scrape(address)
    if text is None:
        return None
    values = [
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
    return max(values) if values else None


class Processes:
    """Started processes with their logs; ``stop_all`` never leaves one behind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        process = subprocess.Popen(
            list(argv), stdout=log, stderr=log, env=dict(env), cwd=cwd or self.root
        )
        log.close()
        self.running[name] = process
        return process

    def exited(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.running.items() if p.poll() is not None}

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        process = self.running.pop(name)
        if process.poll() is None:
            process.send_signal(sig)
            try:
                return process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                return process.wait(timeout=10)
        return int(process.returncode)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)

    def logs(self) -> str:
        parts = []
        for path in sorted(self.root.glob("*.log")):
            parts.append(f"--- {path.stem} ---\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)
