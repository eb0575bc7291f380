"""The network lab itself (``tests/netlab.py``): its cuts do what they say,
heals undo them, and nothing it made outlives it, even after a crash."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests import netlab

_unavailable = netlab.available()
pytestmark = pytest.mark.skipif(_unavailable is not None, reason=_unavailable or "")

_LISTEN = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 9999)); s.listen(64)\n"
    "while True: s.accept()[0].close()\n"
)


def namespaces() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], check=True, capture_output=True, text=True
    ).stdout


def links() -> str:
    return subprocess.run(["ip", "-o", "link"], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def lab() -> Iterator[netlab.NetLab]:
    lab = netlab.NetLab(3)
    listeners = [
        subprocess.Popen([*lab.wrap(name), sys.executable, "-c", _LISTEN]) for name in lab.names
    ]
    try:
        yield lab
    finally:
        for p in listeners:
            p.kill()
            p.wait()
        lab.close()


def connect(lab: netlab.NetLab, a: str, b: str) -> str:
    """From inside ``a``, connect to ``b``'s listener: "ok" or the error's class and errno."""
    probe = (
        "import socket, sys\n"
        f"try: socket.create_connection(('{lab.peer_address(b)}', 9999), timeout=1)\n"
        "except OSError as e: print(type(e).__name__, e.errno); sys.exit(0)\n"
        "print('ok')\n"
    )
    for _ in range(50):  # the listener may still be starting: refused until it binds
        out = subprocess.run(
            [*lab.wrap(a), sys.executable, "-c", probe], check=False, capture_output=True
        )
        result = out.stdout.decode().strip()
        if not result.startswith("ConnectionRefusedError"):
            return result
    return result


def test_a_blackhole_is_silent_a_fast_fail_is_loud_and_heal_undoes_both(
    lab: netlab.NetLab,
) -> None:
    assert connect(lab, "s0", "s1") == "ok"
    lab.cut("s0", "s1", "blackhole")
    assert connect(lab, "s0", "s1") == "TimeoutError None", "frames vanish: no answer at all"
    assert connect(lab, "s1", "s0") == "TimeoutError None", "both directions"
    assert connect(lab, "s0", "s2") == "ok", "other links are untouched"
    lab.heal()
    assert connect(lab, "s0", "s1") == "ok"

    lab.isolate("s2", "fastfail")
    assert connect(lab, "s2", "s0").startswith("OSError 101"), "ENETUNREACH at once"
    assert connect(lab, "s1", "s2").startswith("OSError 101")
    assert connect(lab, "s0", "s1") == "ok"
    assert lab.cuts == {("s0", "s2"): "fastfail", ("s1", "s2"): "fastfail"}
    lab.heal()
    assert lab.cuts == {}
    assert connect(lab, "s2", "s0") == "ok"
    assert connect(lab, "s1", "s2") == "ok"


def test_bad_cuts_are_refused(lab: netlab.NetLab) -> None:
    with pytest.raises(ValueError, match="no link to itself"):
        lab.cut("s0", "s0", "blackhole")
    with pytest.raises(ValueError, match="no node 's9'"):
        lab.cut("s0", "s9", "blackhole")
    with pytest.raises(ValueError, match="mode must be one of"):
        lab.cut("s0", "s1", "drop")  # type: ignore[arg-type]
    assert lab.cuts == {}


def test_close_removes_every_namespace_and_link() -> None:
    lab = netlab.NetLab(2)
    names = [lab.namespace(n) for n in lab.names]
    assert all(name in namespaces() for name in names)
    lab.close()
    assert not any(name in namespaces() for name in names)
    assert lab._root_prefix not in links()


def _pids_in(namespace: str) -> list[str]:
    listed = subprocess.run(
        ["ip", "netns", "pids", namespace], check=True, capture_output=True, text=True
    )
    return listed.stdout.split()


def test_leftovers_of_a_crashed_run_are_removed_with_what_runs_inside() -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    leftover = f"rsnl-{int(gone.stdout)}-1-s0"
    subprocess.run(["ip", "netns", "add", leftover], check=True)
    orphan = subprocess.Popen(["ip", "netns", "exec", leftover, "sleep", "600"])
    try:
        # `ip netns exec` enters the namespace after Popen returns: clean only
        # once the orphan runs inside, or it would escape into a deleted one.
        deadline = time.monotonic() + 10
        while str(orphan.pid) not in _pids_in(leftover):
            assert time.monotonic() < deadline, "the orphan never entered its namespace"
            time.sleep(0.01)
        assert leftover in netlab.clean_leftovers()
        assert orphan.wait(timeout=10) != 0, "what ran inside was killed"
        assert leftover not in namespaces()
    finally:
        orphan.kill()
        subprocess.run(["ip", "netns", "del", leftover], check=False, capture_output=True)


@pytest.mark.parametrize(
    ("mode", "lost"), [("blackhole", "TimeoutError None"), ("fastfail", "OSError 113")]
)
def test_a_one_way_cut_loses_only_what_one_side_dials(
    lab: netlab.NetLab, mode: netlab.CutMode, lost: str
) -> None:
    lab.cut_one_way("s0", "s1", 9999, mode)
    assert connect(lab, "s0", "s1") == lost, "s0's connections to s1's port are lost"
    assert connect(lab, "s1", "s0") == "ok", "s1 still reaches s0"
    assert connect(lab, "s0", "s2") == "ok", "other links are untouched"
    assert lab.one_way_cuts == {("s0", "s1"): (9999, mode)}
    with pytest.raises(ValueError, match="cut one way already"):
        lab.cut_one_way("s0", "s1", 9999, mode)
    lab.heal()
    assert lab.one_way_cuts == {}
    assert connect(lab, "s0", "s1") == "ok"
