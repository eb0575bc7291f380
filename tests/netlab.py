"""A network-namespace lab: real sidecars on real links that tests cut and heal.

Theory of operation
-------------------
Userspace fault proxies (``tests/integration/faultproxy.py``) close or stall
sockets; they cannot make a link drop frames while both ends believe it is up,
which is what a node or a zone that disappears looks like to TCP (no RST, no
ICMP: only retransmissions that go unanswered). This lab gives every node its
own network namespace and a veth link per pair of nodes, so the kernel's own
TCP stack sees the fault:

* node ``i`` (``s{i}``) lives in namespace ``<prefix>-s{i}``, its peer address
  ``10.77.0.{i+1}/32`` on ``lo``; the link to node ``j`` is the device
  ``p{j}`` there, with a /32 route to ``10.77.0.{j+1}`` over it;
* each namespace also has a ``host`` link to the root namespace (a /30 of
  ``10.250.{m}.0/24``, ``m`` chosen free at start) on which the node's worker
  API, metrics and health ports listen: the test process reaches them there,
  and no cut ever touches this link. The root namespace does not forward, so
  peers reach each other only over their pair links;
* ``cut(a, b, "blackhole")`` keeps both ends up and replaces, on each end,
  the neighbour entry of the other's address with a permanent one pointing at
  an unused MAC address: frames leave and are dropped by the receiving end
  (not addressed to it), so the sockets see silence;
* ``cut(a, b, "fastfail")`` sets both ends down: their routes go, and every
  send fails at once with ENETUNREACH;
* ``cut_one_way(a, b, port, mode)`` loses only the TCP connections ``a``
  dials to ``b``'s ``port`` (a policy rule in ``a`` sends them to a table of
  their own, whose route to ``b`` goes through an unused neighbour in
  blackhole mode, or is ``unreachable`` in fastfail mode): the peer
  transport sends every Raft message on a stream its sender dials, so ``a``'s
  messages to ``b`` are lost while ``b``'s reach ``a``. (The kernel here has
  no traffic-control classifiers or netem, so this is done with routing.)
* ``heal()`` undoes every cut: links up, routes back, neighbour entries
  deleted (so ARP resolves the real address again), one-way rules removed.

Cleanup: every namespace is named ``rsnl-<pid>-<lab>-s<i>`` after the test process
that made it; ``close()`` (also run at exit) kills what still runs inside and
deletes the namespaces, which deletes their links (the root ends with them).
A lab that starts first removes namespaces of processes that are gone, so a
crashed or killed test run leaves nothing behind for long.

Everything runs through ``ip`` (iproute2); creating namespaces needs root
(``CAP_SYS_ADMIN``). ``available()`` says whether this machine allows it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import os
import re
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import grpc
from prometheus_client.parser import text_string_to_metric_families

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.integration.cluster import Cluster, Sidecar

CutMode = Literal["blackhole", "fastfail"]
MODES: tuple[CutMode, ...] = ("blackhole", "fastfail")

_PREFIX = "rsnl"
_UNUSED_MAC = "02:00:00:00:00:99"
_UNUSED_GATEWAY = "10.77.255.254"
_ONE_WAY_TABLE = 100
"""Routing table of one-way cuts towards node ``j``: 100 + j (rule preference too)."""
_LOCK = Path("/run/lock/raft-sidecar-netlab.lock")
_NAME = re.compile(rf"^{_PREFIX}-(\d+)-\d+-s\d+$")
_labs = itertools.count(1)
"""Labs made by this process: names stay unique while the kernel still tears
down the namespaces of a closed one (that happens in the background)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def available() -> str | None:
    """None when this process may create network namespaces, else why not."""
    probe = f"{_PREFIX}-{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
    except (OSError, RuntimeError) as e:
        return f"network namespaces are not permitted here ({e})"
    _ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_namespace(name: str) -> None:
    """Kill what runs inside ``name``, then delete it (and its links)."""
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", name, check=False)


def clean_leftovers() -> list[str]:
    """Delete the namespaces of lab processes that no longer run; returns their names."""
    gone = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            _delete_namespace(name)
            gone.append(name)
    return gone


class NetLab:
    """``size`` namespaces linked pairwise; cut and heal links between them.

    Nodes are named ``s0``, ``s1``, ... as in ``tests.integration.cluster``.
    """

    def __init__(self, size: int) -> None:
        if size < 2:
            raise ValueError("a lab needs at least two nodes")
        self.size = size
        self.names = [f"s{i}" for i in range(size)]
        number = next(_labs)
        self._tag = f"{_PREFIX}-{os.getpid()}-{number}"
        self._root_prefix = f"rl{os.getpid() % 100000}x{number % 100}h"
        """Root ends of the host links (interface names have at most 15 bytes)."""
        self._cuts: dict[tuple[str, str], CutMode] = {}
        self._one_way: dict[tuple[str, str], tuple[int, CutMode]] = {}
        self._made: list[str] = []
        _LOCK.parent.mkdir(parents=True, exist_ok=True)
        with _LOCK.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one lab at a time picks its subnet
            clean_leftovers()
            for name in self.names:
                if self.namespace(name) in _ip("netns", "list").stdout:
                    raise RuntimeError(f"namespace {self.namespace(name)} exists already")
            self._subnet = self._free_subnet()
            atexit.register(self.close)
            try:
                self._build()
            except BaseException:
                self.close()
                raise

    # -- addresses --

    def namespace(self, name: str) -> str:
        return f"{self._tag}-{name}"

    def peer_address(self, name: str) -> str:
        """The node's address on its pair links (where its peer port listens)."""
        return f"10.77.0.{self._index(name) + 1}"

    def host_address(self, name: str) -> str:
        """The node's end of its host link (API, metrics, health)."""
        return f"10.250.{self._subnet}.{4 * self._index(name) + 2}"

    def host_gateway(self, name: str) -> str:
        """The root namespace's end of the node's host link: what a process in
        the node's namespace dials to reach a service the root namespace
        offers there (e.g. the chaos suite's relay to PostgreSQL)."""
        return f"10.250.{self._subnet}.{4 * self._index(name) + 1}"

    def wrap(self, name: str) -> list[str]:
        """The prefix that runs a command inside the node's namespace."""
        return ["ip", "netns", "exec", self.namespace(name)]

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"no node {name!r} in this lab ({', '.join(self.names)})")
        return self.names.index(name)

    @staticmethod
    def _free_subnet() -> int:
        used = _ip("-o", "-4", "addr", "show").stdout
        for m in range(256):
            if f" 10.250.{m}." not in used:
                return m
        raise RuntimeError("no free 10.250.x.0/24 for the lab's host links")

    # -- building --

    def _in(self, name: str, *args: str, check: bool = True) -> None:
        _ip("-n", self.namespace(name), *args, check=check)

    def _build(self) -> None:
        for name in self.names:
            ns = self.namespace(name)
            _ip("netns", "add", ns)
            self._made.append(ns)
            self._in(name, "link", "set", "lo", "up")
            self._in(name, "addr", "add", f"{self.peer_address(name)}/32", "dev", "lo")
            i = self._index(name)
            root_end = f"{self._root_prefix}{i}"
            _ip("link", "add", root_end, "type", "veth", "peer", "name", "host", "netns", ns)
            _ip("addr", "add", f"10.250.{self._subnet}.{4 * i + 1}/30", "dev", root_end)
            _ip("link", "set", root_end, "up")
            self._in(name, "addr", "add", f"{self.host_address(name)}/30", "dev", "host")
            self._in(name, "link", "set", "host", "up")
        for a, b in self._pairs():
            _ip(
                "link", "add", f"p{self._index(b)}", "netns", self.namespace(a), "type", "veth",
                "peer", "name", f"p{self._index(a)}", "netns", self.namespace(b),
            )  # fmt: skip
            self._link_up(a, b)

    def _pairs(self) -> Iterator[tuple[str, str]]:
        for i, a in enumerate(self.names):
            for b in self.names[i + 1 :]:
                yield a, b

    def _link_up(self, a: str, b: str) -> None:
        """Both ends of the a-b link up, with their routes (a link set down lost them)."""
        for x, y in ((a, b), (b, a)):
            dev = f"p{self._index(y)}"
            self._in(x, "link", "set", dev, "up")
            self._in(
                x, "route", "replace", f"{self.peer_address(y)}/32", "dev", dev,
                "src", self.peer_address(x),
            )  # fmt: skip

    # -- faults --

    def cut(self, a: str, b: str, mode: CutMode) -> None:
        """Cut the link between ``a`` and ``b`` in both directions."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if a == b:
            raise ValueError("a node has no link to itself")
        for x, y in ((a, b), (b, a)):
            dev = f"p{self._index(y)}"
            if mode == "blackhole":
                self._in(
                    x, "neigh", "replace", self.peer_address(y), "lladdr", _UNUSED_MAC,
                    "nud", "permanent", "dev", dev,
                )  # fmt: skip
            else:
                self._in(x, "link", "set", dev, "down")
        self._cuts[tuple(sorted((a, b)))] = mode  # type: ignore[index]

    def cut_one_way(self, a: str, b: str, port: int, mode: CutMode) -> None:
        """Lose the TCP connections ``a`` dials to ``b``'s ``port``, in both
        directions of those connections; ``b``'s own connections to ``a`` stay."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if a == b:
            raise ValueError("a node has no link to itself")
        if (a, b) in self._one_way:
            raise ValueError(f"{a} -> {b} is cut one way already")
        table = str(_ONE_WAY_TABLE + self._index(b))
        address = self.peer_address(b)
        self._in(
            a, "rule", "add", "to", address, "ipproto", "tcp", "dport", str(port),
            "table", table, "pref", table,
        )  # fmt: skip
        if mode == "blackhole":
            dev = f"p{self._index(b)}"
            self._in(
                a, "neigh", "replace", _UNUSED_GATEWAY, "lladdr", _UNUSED_MAC,
                "nud", "permanent", "dev", dev,
            )  # fmt: skip
            self._in(
                a, "route", "replace", f"{address}/32", "via", _UNUSED_GATEWAY, "dev", dev,
                "onlink", "table", table,
            )  # fmt: skip
        else:
            self._in(a, "route", "replace", "unreachable", f"{address}/32", "table", table)
        self._one_way[(a, b)] = (port, mode)

    def isolate(self, name: str, mode: CutMode) -> None:
        """Cut every link of ``name``."""
        for other in self.names:
            if other != name:
                self.cut(name, other, mode)

    def heal(self) -> None:
        """Undo every cut: links up with their routes, real neighbours again."""
        cuts, self._cuts = dict(self._cuts), {}
        one_way, self._one_way = dict(self._one_way), {}
        for (a, b), (port, _mode) in sorted(one_way.items()):
            table = str(_ONE_WAY_TABLE + self._index(b))
            self._in(
                a, "rule", "del", "to", self.peer_address(b), "ipproto", "tcp",
                "dport", str(port), "table", table, "pref", table, check=False,
            )  # fmt: skip
            self._in(a, "route", "flush", "table", table, check=False)
        for (a, b), mode in sorted(cuts.items()):
            if mode == "blackhole":
                for x, y in ((a, b), (b, a)):
                    self._in(
                        x, "neigh", "del", self.peer_address(y), "dev", f"p{self._index(y)}",
                        check=False,
                    )  # fmt: skip
            else:
                self._link_up(a, b)

    @property
    def cuts(self) -> dict[tuple[str, str], CutMode]:
        return dict(self._cuts)

    @property
    def one_way_cuts(self) -> dict[tuple[str, str], tuple[int, CutMode]]:
        """(from, to) -> (port, mode) of every one-way cut in force."""
        return dict(self._one_way)

    def close(self) -> None:
        """Delete every namespace this lab made (and with them every link)."""
        made, self._made = self._made, []
        for i, ns in enumerate(made):
            _delete_namespace(ns)
            _ip("link", "del", f"{self._root_prefix}{i}", check=False)  # at once, not later
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)


def lab_cluster(
    root: Path, size: int = 3, tick_ms: int = 15, extra: Sequence[str] = ()
) -> Iterator[tuple[Cluster, NetLab]]:
    """A started cluster of real ``raft-sidecar serve`` processes, one per
    namespace (``extra``: more flags for each), for a fixture: logs printed on
    failure, processes stopped and the lab removed afterwards."""
    lab = NetLab(size)
    try:
        cluster = Cluster(
            root,
            size,
            tick_ms=tick_ms,
            hosts=lambda i: (lab.host_address(f"s{i}"), lab.peer_address(f"s{i}")),
        )
        cluster.wrap = lambda node: lab.wrap(node.node_id)
        flags = ["--insecure-plaintext-peers", "--insecure-api-listen", *extra]
        cluster.extra_args = lambda node: flags
        cluster.start_all()
        try:
            yield cluster, lab
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            cluster.stop_all()
    finally:
        lab.close()


# -- is the cluster whole? (for tests and benches that heal what they cut) --


def peer_reachable(node: Sidecar) -> dict[str, float]:
    """``raft_sidecar_peer_reachable`` of ``node``, by peer (sampled once a second)."""
    out = {}
    for family in text_string_to_metric_families(node.metrics()):
        for sample in family.samples:
            if sample.name == "raft_sidecar_peer_reachable":
                out[sample.labels["peer"]] = sample.value
    return out


def agreed_leader(cluster: Cluster) -> Sidecar | None:
    """The leader every running node names, if they all name the same one and it leads."""
    try:
        statuses = [(n, n.status()) for n in cluster.nodes if n.process is not None]
    except grpc.RpcError:
        return None
    leaders = [n for n, st in statuses if st.role == worker_pb2.RAFT_ROLE_LEADER]
    if len(leaders) != 1 or any(st.leader_id != leaders[0].node_id for _, st in statuses):
        return None
    return leaders[0]


def whole(cluster: Cluster) -> Sidecar | None:
    """The leader, once every node names it and it reaches every peer (its
    ``raft_sidecar_peer_reachable`` is 1 for each); None before."""
    leader = agreed_leader(cluster)
    if leader is None:
        return None
    seen = peer_reachable(leader)
    if any(seen.get(n.node_id) != 1 for n in cluster.nodes if n is not leader):
        return None
    return leader
