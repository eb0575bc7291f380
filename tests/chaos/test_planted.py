"""The negative controls' boot wrapper patches exactly what it says, then runs
the real CLI. Each patch is checked in a fresh interpreter (patches are
process-wide), against the real class it patches, with and without it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.chaos.planted import DEFECTS, fast_clock, parse

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, *, plant: str | None) -> str:
    """Run ``code`` in a new interpreter, after planting ``plant``; its stdout."""
    prelude = f"from tests.chaos.planted import DEFECTS; DEFECTS[{plant!r}]()\n" if plant else ""
    out = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    return out.stdout.strip()


INCARNATIONS = """
    import tempfile
    from sidecar.storage.identity import IdentityStore
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        one, _ = IdentityStore(a).load_or_create(cluster="c", node="s1")
        two, _ = IdentityStore(b).load_or_create(cluster="c", node="s1")
    print(one.incarnation, two.incarnation)
"""


def test_amnesia_guard_off_makes_every_new_incarnation_the_same() -> None:
    first, second = run_python(INCARNATIONS, plant="amnesia-guard-off").split()
    assert first == second == "0" * 16
    first, second = run_python(INCARNATIONS, plant=None).split()
    assert first != second, "the product makes a new incarnation for a new directory"


RENEW_NAMES = """
    from sidecar.leases import LeaseKeeper
    print("read_barrier" in LeaseKeeper.renew.__code__.co_names)
"""


def test_stale_leader_renewal_drops_the_read_barrier_from_renew() -> None:
    assert run_python(RENEW_NAMES, plant="stale-leader-renewal") == "False"
    assert run_python(RENEW_NAMES, plant=None) == "True"


HELD_WRITE = """
    import tempfile, threading, time
    from pathlib import Path
    from sidecar.raft.types import Entry, HardState
    from sidecar.storage.disk import DiskStorage
    with tempfile.TemporaryDirectory() as d:
        disk = DiskStorage(d)
        disk.recover()
        (Path(d) / "chaos-disk-hold").touch()
        entry = Entry(term=1, index=1, data=b"x")
        writer = threading.Thread(target=disk.persist, args=(HardState(1, None, 0), None, [entry]))
        writer.start()
        writer.join(0.5)
        held = writer.is_alive()
        disk.persist(HardState(2, None, 0), None, [])  # no entries: never held
        (Path(d) / "chaos-disk-hold").unlink(missing_ok=True)
        writer.join(10)
        disk.close()
        print(held, writer.is_alive(), len(DiskStorage(d).recover().entries))
"""


def test_disk_hold_holds_writes_of_entries_while_the_file_exists() -> None:
    assert run_python(HELD_WRITE, plant="disk-hold") == "True False 1"
    assert run_python(HELD_WRITE, plant=None) == "False False 1"


DEADLINE = """
    import asyncio
    from sidecar import client
    from sidecar.pb.raftsidecar.worker.v1 import worker_pb2

    async def main():
        token = worker_pb2.LeadershipToken(election="e", candidate_id="w", fencing_token=7)
        margin = client.default_margin_s(2.0)
        lease = client.Lease(token, lease_key="k", ttl_s=2.0, margin_s=margin,
                             first_sent_at=None)
        lease._sent_at[1] = 100.0
        lease._acknowledge(worker_pb2.KeepAliveResponse(
            election="e", sequence=1, ttl_ms=2000, safety_margin_ms=300))
        print(margin, round(lease.deadline - 100.0, 3))

    asyncio.run(main())
"""


def test_no_margin_removes_both_margins_from_the_client_deadline() -> None:
    assert run_python(DEADLINE, plant="no-margin") == "0.0 2.0"
    assert run_python(DEADLINE, plant=None) == "0.2 1.7", "the sidecar's 300 ms beat the 200 ms"


KEEPER_CLOCK = """
    import time
    from sidecar.leases import LeaseKeeper
    from sidecar.machine import ElectionsMachine
    keeper = LeaseKeeper(None, ElectionsMachine())
    a, t0 = keeper._clock(), time.monotonic()
    time.sleep(0.5)
    b, t1 = keeper._clock(), time.monotonic()
    print(round((b - a) / (t1 - t0), 2))
"""


def test_fast_lease_clock_runs_the_lease_keepers_clock_fast() -> None:
    assert float(run_python(KEEPER_CLOCK, plant="fast-lease-clock")) == pytest.approx(1.08, 0.01)
    assert float(run_python(KEEPER_CLOCK, plant=None)) == pytest.approx(1.0, 0.01)


def test_fast_clock_scales_elapsed_time_from_its_start() -> None:
    now = [10.0]
    clock = fast_clock(0.5, lambda: now[0])
    assert clock() == 10.0
    now[0] = 12.0
    assert clock() == 13.0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["no-margin", "--", "settlement_demo.cli", "worker"],
         (["no-margin"], "settlement_demo.cli", ["worker"])),
        (["amnesia-guard-off,fast-lease-clock", "--", "/usr/bin/python3", "-m", "sidecar.cli",
          "serve", "--node-id", "s0"],
         (["amnesia-guard-off", "fast-lease-clock"], "sidecar.cli", ["serve", "--node-id", "s0"])),
    ],
)  # fmt: skip
def test_parse_takes_the_module_with_or_without_the_interpreter(
    argv: list[str], expected: tuple[list[str], str, list[str]]
) -> None:
    assert parse(argv) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["no-margin", "sidecar.cli"], "usage"),
        (["nope", "--", "sidecar.cli"], "unknown defect 'nope'"),
        (["no-margin", "--", "python", "-m", "os"], "must run one of"),
        (["--", "sidecar.cli"], "name one defect"),
    ],
)
def test_bad_usage_is_one_clear_line(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(argv)


def test_the_wrapper_runs_the_real_cli_with_the_defect_planted() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.chaos.planted", "no-margin", "--",
         sys.executable, "-m", "settlement_demo.cli", "worker", "--election", "bad name!"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert '"defect_planted", "defects": "no-margin"' in out.stderr
    assert "--election='bad name!': use 1-128 of" in out.stderr, "the real worker's validation"


def test_every_defect_has_a_patch() -> None:
    assert set(DEFECTS) == {"amnesia-guard-off", "stale-leader-renewal", "no-margin",
                            "fast-lease-clock", "disk-hold"}  # fmt: skip
