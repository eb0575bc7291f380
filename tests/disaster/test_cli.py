"""The offline commands as an operator runs them (a real ``raft-sidecar``
process): refusals exit 2 with exactly one line on stderr and write nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sidecar.backup import decode_backup
from tests.disaster.cli_process import run_cli as run
from tests.disaster.nodedir import make_node_dir


def refused(done: subprocess.CompletedProcess[str], words: str) -> None:
    assert done.returncode == 2, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in done.stderr


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    make_node_dir(tmp_path / "s0", last=7, commit=7)
    path = tmp_path / "b.rsbk"
    done = run("snapshot", "save", "--data-dir", str(tmp_path / "s0"), str(path))
    assert done.returncode == 0, done.stderr
    assert "cluster old, index 7" in done.stdout and "highest token 7" in done.stdout
    assert decode_backup(path.read_bytes()).index == 7
    return path


def test_save_refusals(tmp_path: Path) -> None:
    refused(run("snapshot", "save", str(tmp_path / "x")), "--data-dir is required")
    refused(run("snapshot", "save", "--data-dir", str(tmp_path)), "FILE is required")
    refused(
        run("snapshot", "save", "--data-dir", str(tmp_path), str(tmp_path / "x")),
        "no identity file",
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "FILE is required"),
        (["B", "--cluster-id", "n", "--node-id", "s0"], "--data-dir is required"),
        (["B", "--data-dir", "D", "--node-id", "s0"], "--cluster-id is required"),
        (["B", "--data-dir", "D", "--cluster-id", "n"], "--node-id is required"),
        (["B", "--data-dir", "D", "--cluster-id", "n", "--node-id", "s0", "--min-token", "-5"],
         "--min-token='-5': expected an integer >= 0"),
        (["B", "--data-dir", "D", "--cluster-id", "n", "--node-id", "s0", "--min-token", "²"],
         "expected an integer >= 0"),
        (["B", "--data-dir", "D", "--cluster-id", "old", "--node-id", "s0"],
         "must differ from the backup's cluster id 'old'"),
        (["B", "--data-dir", "D", "--cluster-id", "n", "--node-id", "bad~id"], "node id"),
    ],
)  # fmt: skip
def test_restore_refusals_write_nothing(
    tmp_path: Path, backup: Path, args: list[str], words: str
) -> None:
    target = tmp_path / "new"
    argv = [str(backup) if a == "B" else str(target) if a == "D" else a for a in args]
    refused(run("snapshot", "restore", *argv), words)
    assert not target.exists()


def test_restore_refuses_a_non_empty_directory_and_a_corrupt_backup(
    tmp_path: Path, backup: Path
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep-me").write_text("x")
    args = ["--cluster-id", "n", "--node-id", "s0"]
    refused(run("snapshot", "restore", str(backup), "--data-dir", str(busy), *args), "not empty")
    assert [p.name for p in busy.iterdir()] == ["keep-me"]

    damaged = bytearray(backup.read_bytes())
    damaged[len(damaged) // 2] ^= 0x10
    corrupt = tmp_path / "corrupt.rsbk"
    corrupt.write_bytes(bytes(damaged))
    target = tmp_path / "new"
    refused(
        run("snapshot", "restore", str(corrupt), "--data-dir", str(target), *args),
        "the backup is refused: checksum mismatch",
    )
    refused(
        run("snapshot", "restore", str(tmp_path / "none"), "--data-dir", str(target), *args),
        "cannot read",
    )
    assert not target.exists()


def test_restore_prints_where_the_new_tokens_start(tmp_path: Path, backup: Path) -> None:
    target = tmp_path / "new"
    done = run(
        "snapshot", "restore", str(backup), "--data-dir", str(target),
        "--cluster-id", "n", "--node-id", "s0", "--min-token", "20",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "its log starts after index 1000000020" in done.stdout


def test_recover_refusals(tmp_path: Path) -> None:
    make_node_dir(tmp_path / "s0")
    before = sorted(p.name for p in (tmp_path / "s0").iterdir())
    refused(run("recover", "--new-cluster-id", "n"), "--data-dir is required")
    refused(run("recover", "--data-dir", str(tmp_path / "s0")), "--new-cluster-id is required")
    refused(
        run("recover", "--data-dir", str(tmp_path / "s0"), "--new-cluster-id", "old"),
        "must differ from the old cluster id",
    )
    refused(
        run("recover", "--data-dir", str(tmp_path / "s0"), "--new-cluster-id", "n",
            "--min-token", "x"),
        "--min-token='x'",
    )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "s0").iterdir()) == before
    done = run("recover", "--data-dir", str(tmp_path / "s0"), "--new-cluster-id", "n")
    assert done.returncode == 0, done.stderr
    assert "its log starts after index 1000000007" in done.stdout
