"""``raft-sidecar members list|add|promote|remove`` against real sidecars, as an
operator runs it inside a pod: the CLI talks to a node's admin Unix socket,
a follower forwards to the Raft leader (docs/membership.md, "Runtime
membership")."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from sidecar.client import BlockingSidecarClient
from sidecar.pb.raftsidecar.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.cluster import Cluster, Sidecar, eventually, running


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three sidecars with a 250 ms election timeout: these tests name the
    leader and then act on it, which a loaded machine's needless elections
    (at the harness's 100 ms) would turn into a race."""
    yield from running(tmp_path, tick_ms=25)


VOTER = admin_pb2.MEMBER_ROLE_VOTER
LEARNER = admin_pb2.MEMBER_ROLE_LEARNER


def members(node: Sidecar) -> dict[str, admin_pb2.Member] | None:
    """name -> member as the leader sees it, through ``node``; None while it cannot answer."""
    try:
        return {m.name: m for m in node.list_members().members}
    except grpc.RpcError:
        return None


def visitors(node: Sidecar) -> list[admin_pb2.Visitor]:
    try:
        return list(node.list_members().visitors)
    except grpc.RpcError:
        return []


def members_now(node: Sidecar) -> dict[str, admin_pb2.Member]:
    """``members(node)``, waiting while an election keeps it from answering."""
    return eventually(lambda: members(node), "the membership", seconds=60)


def operate(node: Sidecar, *args: str) -> subprocess.CompletedProcess[str]:
    """``raft-sidecar members ARGS`` on ``node``, tried again while it answers
    UNAVAILABLE (a Raft election on a loaded machine), as the docs tell operators."""
    deadline = time.monotonic() + 60
    while True:
        result = node.members(*args)
        if ": UNAVAILABLE: " not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def changes(cluster: Cluster) -> list[tuple[str, str]]:
    """Every membership change any node proposed as leader (a loaded machine may
    elect anew in the middle of a test)."""
    return [change for node in cluster.nodes for change in node.membership_changes()]


def followers(cluster: Cluster) -> list[Sidecar]:
    leader = cluster.leader()
    return [n for n in cluster.nodes if n is not leader and n.process is not None]


def refused(result: object, code: str) -> str:
    """The one stderr line of a CLI call that failed with ``code``."""
    assert result.returncode == 1, (result.stdout, result.stderr)  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1, lines
    assert f": {code}: " in lines[0], lines[0]
    return str(lines[0])


def test_list_shows_every_member_from_any_node(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = followers(cluster)[0]
    result = operate(follower, "list")  # a follower forwards to the leader
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"leader {leader.node_id}, term ")
    for node in cluster.nodes:
        row = next(line for line in result.stdout.splitlines() if line.startswith(node.node_id))
        assert node.incarnation() in row and "voter" in row
        assert ("leader" in row) == (node is leader)
    seen = eventually(
        lambda: ((m := members(follower)) and all(x.caught_up for x in m.values()) and m) or None,
        "every member caught up",
    )
    assert {name: m.incarnation for name, m in seen.items()} == {
        n.node_id: n.incarnation() for n in cluster.nodes
    }
    assert [m.name for m in seen.values() if m.leader] == [leader.node_id]
    assert all(m.role == VOTER and m.reachable for m in seen.values())
    assert seen[follower.node_id].address == f"127.0.0.1:{follower.peer_port}"


def test_admin_socket_is_0600_and_the_service_is_on_no_port(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    mode = os.stat(node.admin_socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    for port in (node.api_port, node.peer_port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListMembers(admin_pb2.ListMembersRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, port
    # Bad bytes get the request guard's INVALID_ARGUMENT, and change nothing.
    with grpc.insecure_channel(f"unix:{node.admin_socket}") as channel:
        raw = channel.unary_unary("/raftsidecar.admin.v1.AdminService/RemoveMember")
        with pytest.raises(grpc.RpcError) as bad:
            raw(b"\xff\xff\xff", timeout=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "RemoveMemberRequest" in (bad.value.details() or "")
    assert len(members_now(node)) == 3
    # The socket goes with the process; a stale one left by a SIGKILL is replaced.
    cluster.kill(node, signal.SIGTERM)
    assert not node.admin_socket.exists()
    cluster.start(node)
    eventually(lambda: members(node), "the restarted node to answer on its socket", seconds=60)
    cluster.kill(node, signal.SIGKILL)
    assert node.admin_socket.exists()
    cluster.start(node)
    eventually(lambda: members(node), "a new socket in place of the stale one", seconds=60)


def test_a_removed_follower_stays_out_until_its_directory_is_wiped(cluster: Cluster) -> None:
    remove_a_follower_then_wipe_it(cluster)


def test_membership_acts_on_events_without_its_safety_net(tmp_path: Path) -> None:
    """The same story with the plan's periodic recheck an hour apart: the
    removed member learns it from its hellos (fast again once it lost its
    leader), and the wiped node's admission goes step by step on events (its
    hello's news, then each committed change, then the learner's progress),
    never on a timer."""
    hour = ["--membership-recheck-ms", str(3_600_000)]
    for cluster in running(tmp_path, tick_ms=25, extra_args=lambda _node: hour):
        remove_a_follower_then_wipe_it(cluster)


def remove_a_follower_then_wipe_it(cluster: Cluster) -> None:
    leader = cluster.leader()
    gone, other = followers(cluster)
    old = gone.server_id()
    result = operate(other, "remove", gone.node_id)
    assert result.returncode == 0, result.stderr
    assert f"removed {old}" in result.stdout and "at log index" in result.stdout
    # It learns it was removed (it kept saying hello), records it and stops.
    assert gone.process is not None
    assert gone.process.wait(timeout=60) == 1
    gone.process = None
    assert "server_removed" in gone.log_path.read_text()
    assert set(members_now(leader)) == {leader.node_id, other.node_id}
    # It refuses to start on that directory again.
    cluster.start(gone)
    assert gone.process is not None
    assert gone.process.wait(timeout=60) == 2
    gone.process = None
    assert f"server {old} was removed from the cluster" in gone.log_path.read_text()
    # The leader never admitted it again, though auto membership is on.
    assert ("add_learner", old) not in changes(cluster)
    # A wiped directory is a new incarnation, which the leader admits on its own.
    shutil.rmtree(gone.data_dir)
    cluster.start(gone)
    eventually(
        lambda: (
            (
                (m := members(leader))
                and gone.node_id in m
                and m[gone.node_id].role == VOTER
                and m[gone.node_id].incarnation != old.split("~")[1]
            )
            or None
        ),
        "the new incarnation to be a voter",
        seconds=90,
    )


def test_removing_the_leader_hands_over_first_and_grants_go_on(cluster: Cluster) -> None:
    leader = cluster.leader()
    home = followers(cluster)[0]
    with BlockingSidecarClient(home.api) as client:
        with client.leadership("payroll", candidate_id="w1", ttl=timedelta(seconds=2)) as lease:
            first = lease.fencing_token
        result = operate(home, "remove", leader.node_id)
        assert result.returncode == 0, result.stderr
        assert "after handing leadership over" in result.stdout
        assert leader.process is not None
        assert leader.process.wait(timeout=60) == 1  # it learned it was removed
        leader.process = None
        remaining = [n for n in cluster.nodes if n is not leader]
        new_leader = cluster.leader(remaining)
        assert new_leader is not leader
        assert set(members_now(new_leader)) == {n.node_id for n in remaining}
        with client.leadership("payroll", candidate_id="w2", ttl=timedelta(seconds=2)) as lease:
            assert lease.fencing_token > first


def test_refusals_change_nothing(cluster: Cluster) -> None:
    leader = cluster.leader()
    a, b = followers(cluster)
    before = members_now(leader)
    refused(operate(a, "remove", "nosuch"), "NOT_FOUND")
    refused(operate(a, "promote", "nosuch"), "NOT_FOUND")
    refused(operate(a, "add", "nosuch"), "NOT_FOUND")
    refused(operate(a, "remove", "bad name!"), "INVALID_ARGUMENT")
    refused(operate(a, "add", b.node_id), "ALREADY_EXISTS")
    refused(operate(a, "promote", b.node_id), "FAILED_PRECONDITION")  # already a voter
    # With b down, removing a would leave the leader and the dead b: no quorum.
    cluster.kill(b)
    eventually(
        lambda: ((m := members(leader)) and not m[b.node_id].reachable) or None,
        "the leader to see b unreachable",
    )
    line = refused(operate(a, "remove", a.node_id), "FAILED_PRECONDITION")
    assert "quorum" in line and "--force" in line
    assert set(members_now(leader)) == set(before)
    assert changes(cluster) == []
    # With no leader at all, a node answers UNAVAILABLE.
    cluster.kill(leader)
    eventually(lambda: a.status().leader_id == "" or None, "a to lose its leader", seconds=30)
    refused(a.members("list"), "UNAVAILABLE")


def test_add_and_promote_a_node_that_says_hello(tmp_path: Path) -> None:
    """With --auto-membership=false only the operator admits: a fourth node says
    hello, is added as a learner, refused promotion while behind, then promoted."""
    cluster = Cluster(tmp_path, size=4, tick_ms=25)
    old, new = cluster.nodes[:3], cluster.nodes[3]
    three = ",".join(f"{n.node_id}=127.0.0.1:{n.peer_port}" for n in old)
    cluster.peers_of = lambda node: three if node in old else cluster.peers
    cluster.extra_args = lambda node: ["--auto-membership", "false"]
    try:
        for node in old:
            cluster.start(node)
        for node in old:
            eventually(node.answers, f"{node.node_id} to serve", seconds=60)
        leader = cluster.leader(old)
        cluster.start(new)
        incarnation = eventually(
            lambda: next(
                (v.incarnation for v in visitors(leader) if v.name == new.node_id),
                None,
            ),
            "the new node to say hello",
            seconds=60,
        )
        assert set(members_now(leader)) == {n.node_id for n in old}  # nobody admitted it
        assert new.process is not None
        new.process.send_signal(signal.SIGSTOP)  # it cannot catch up while stopped
        try:
            result = operate(old[0], "add", new.node_id)
            assert result.returncode == 0, result.stderr
            assert f"added {new.node_id}~{incarnation} as a learner" in result.stdout
            with (
                BlockingSidecarClient(leader.api) as client,
                client.leadership("x", candidate_id="w", ttl=timedelta(seconds=2)),
            ):
                pass  # the commit index moves past the stopped learner
            line = refused(operate(old[1], "promote", new.node_id), "FAILED_PRECONDITION")
            assert "not caught up" in line
            assert members_now(leader)[new.node_id].role == LEARNER
        finally:
            new.process.send_signal(signal.SIGCONT)
        eventually(
            lambda: ((m := members(leader)) and m[new.node_id].caught_up) or None,
            "the learner to catch up",
            seconds=60,
        )
        result = operate(old[1], "promote", new.node_id)
        assert result.returncode == 0, result.stderr
        seen = members_now(leader)
        assert {name for name, m in seen.items() if m.role == VOTER} == {
            n.node_id for n in cluster.nodes
        }
        assert sorted(changes(cluster)) == [
            ("add_learner", new.server_id()),
            ("promote_learner", new.server_id()),
        ]
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()
