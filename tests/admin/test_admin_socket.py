"""The admin socket's file handling and settings (sidecar/admin/server.py,
sidecar/config.py) and the CLI's output."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from sidecar.admin.cli import format_members, socket_path
from sidecar.admin.server import AdminSocketError, remove_stale_socket
from sidecar.config import ConfigError, add_arguments, load
from sidecar.pb.raftsidecar.admin.v1 import admin_pb2

PEERS = "s0=127.0.0.1:7400,s1=127.0.0.1:7410"


def settings(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(
        ["--node-id", "s0", "--peers", PEERS, "--peer-listen", "127.0.0.1:7400", *argv]
    )


def test_the_socket_defaults_to_the_data_directory_and_its_length_is_checked() -> None:
    assert load(settings("--data-dir", "/d"), {}).admin_socket == "/d/admin.sock"
    assert load(settings("--data-dir", "/d", "--admin-socket", "/run/a.sock"), {}).admin_socket == (
        "/run/a.sock"
    )
    with pytest.raises(ConfigError) as err:
        load(settings("--data-dir", "/" + "d" * 120), {})
    assert "a Unix socket path holds at most 107" in str(err.value)
    assert "--admin-socket" in str(err.value)


def test_auto_membership_is_on_unless_turned_off() -> None:
    assert load(settings("--data-dir", "/d"), {}).auto_membership
    env = {"RAFT_SIDECAR_AUTO_MEMBERSHIP": "false"}
    assert not load(settings("--data-dir", "/d"), env).auto_membership


def test_a_stale_socket_is_removed_and_anything_else_refused(tmp_path: Path) -> None:
    stale = tmp_path / "admin.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # a socket file nobody listens on: a dead process's
    remove_stale_socket(str(stale))
    assert not stale.exists()
    remove_stale_socket(str(stale))  # nothing there: nothing to do
    precious = tmp_path / "notes.txt"
    precious.write_text("mine")
    with pytest.raises(AdminSocketError, match="not a socket"):
        remove_stale_socket(str(precious))
    assert precious.read_text() == "mine"


def test_the_cli_finds_the_socket_from_flags_then_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def ns(**kw: str | None) -> argparse.Namespace:
        return argparse.Namespace(admin_socket=kw.get("admin_socket"), data_dir=kw.get("data_dir"))

    monkeypatch.delenv("RAFT_SIDECAR_ADMIN_SOCKET", raising=False)
    monkeypatch.delenv("RAFT_SIDECAR_DATA_DIR", raising=False)
    assert socket_path(ns()) is None
    assert socket_path(ns(data_dir="/d")) == "/d/admin.sock"
    assert socket_path(ns(admin_socket="/s", data_dir="/d")) == "/s"
    monkeypatch.setenv("RAFT_SIDECAR_DATA_DIR", "/env")
    assert socket_path(ns()) == "/env/admin.sock"


def test_the_list_names_the_leader_and_the_removed_visitors() -> None:
    response = admin_pb2.ListMembersResponse(
        leader="s0",
        term=3,
        commit_index=9,
        members=[
            admin_pb2.Member(
                name="s0", incarnation="a" * 16, role=admin_pb2.MEMBER_ROLE_VOTER,
                match_index=9, caught_up=True, leader=True, reachable=True,
            ),
            admin_pb2.Member(
                name="s1", incarnation="b" * 16, role=admin_pb2.MEMBER_ROLE_LEARNER,
                match_index=4, reachable=False,
            ),
        ],
        visitors=[admin_pb2.Visitor(name="s2", incarnation="c" * 16, removed=True)],
    )  # fmt: skip
    text = format_members(response)
    assert text.splitlines()[0] == "leader s0, term 3, commit index 9"
    s0 = next(line for line in text.splitlines() if line.startswith("s0"))
    s1 = next(line for line in text.splitlines() if line.startswith("s1"))
    assert "voter" in s0 and "leader, caught up" in s0
    assert "learner" in s1 and "unreachable" in s1 and "caught up" not in s1
    assert "removed: never rejoins" in text
