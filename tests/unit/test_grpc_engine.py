"""The sidecar picks gRPC's posix poller before gRPC is imported (sidecar/grpc_engine.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from sidecar.grpc_engine import POSIX_POLLER_EXPERIMENTS, prefer_posix_poller


def test_the_posix_poller_is_the_default() -> None:
    environ: dict[str, str] = {}
    prefer_posix_poller(environ)
    assert environ == {"GRPC_EXPERIMENTS": "-event_engine_client,-event_engine_listener"}


def test_an_operators_own_choice_is_kept() -> None:
    environ = {"GRPC_EXPERIMENTS": "event_engine_client"}
    prefer_posix_poller(environ)
    assert environ == {"GRPC_EXPERIMENTS": "event_engine_client"}


def _python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_serve_chooses_before_grpc_is_first_imported() -> None:
    """gRPC reads GRPC_EXPERIMENTS at its first import: record the variable
    at that moment, through an import hook, while ``serve`` starts up."""
    out = _python(
        """
        import argparse, importlib.abc, os, sys

        seen = []

        class Watch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "grpc" and not seen:
                    seen.append(os.environ.get("GRPC_EXPERIMENTS", "<unset>"))
                return None

        from sidecar import cli
        assert "grpc" not in sys.modules, "importing sidecar.cli imported grpc"
        sys.meta_path.insert(0, Watch())
        try:
            cli._cmd_serve(argparse.Namespace())  # no settings: fails after the imports
        except Exception:
            pass
        print(seen)
        """
    )
    assert out == repr([POSIX_POLLER_EXPERIMENTS])
