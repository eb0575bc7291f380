"""Our figures beside etcd's, same machine, same run: ``python -m bench.etcd_baseline``.

The throughput targets of issue 4 (Campaign+Resign, ValidateToken) are
retired; what stays is the comparison with the system operators already run
for the same job. This starts, on loopback under one temp dir in /var/tmp:

- a real 3-member etcd cluster (Debian's ``etcd-server``, see
  ``scripts/install_etcd.sh``) at its defaults (100 ms heartbeat, 1000 ms
  election timeout) and another at 50/250 ms;
- our 3-node cluster (``tests.integration.cluster.Cluster``, as
  ``bench.sidecar`` does) at the product default (15 ms tick: heartbeat 2
  ticks = 30 ms, election 10 ticks = 150-300 ms) and at the Helm chart's
  timings (read from ``helm/raft-sidecar/values.yaml``: 100 ms tick, heartbeat
  1 tick, election 10 ticks, which are etcd's defaults),

and prints one table:

1. Idle CPU (utime+stime from /proc/PID/stat, in CPU seconds per minute per
   member, over ``--idle-seconds`` after ``--settle-seconds``) and RSS; all
   four clusters sit idle at once, so each sees the same machine load.
2. Leader failover: SIGKILL the leader, time until another member reports
   itself leader (polled every 5 ms); trials alternate between the systems.
3. Campaign+Resign cycles/s, 1 and 16 clients, distinct elections. Ours: the
   worker API's Campaign (which creates the lease) then Resign. etcd: the v3
   election API's Campaign then Resign, on a lease each client granted before
   the run (as etcd's ``concurrency.Session`` does: one lease per client).
4. Linearizable reads/s, 1 and 16 client threads: our ValidateToken against
   etcd's linearizable ``Range`` of the election's leader key.
5. Keep-alives/s, 1 and 16 clients, each on its own lease: our KeepAlive
   stream against etcd's ``LeaseKeepAlive`` stream, the next renewal sent as
   soon as the last is answered.

Steps 3-5 run against each system's leader at its defaults (ours 15 ms tick,
etcd 100/1000 ms), ours then etcd for each client count, so both see the same
load. Both sides use synchronous Python gRPC stubs over one channel per
client group: ours from ``sidecar/pb``, etcd's from a subset of its protos
compiled at bench time (``bench.etcd_api``); no JSON gateway on either side.

Without an etcd binary the bench says how to install one and prints our
column alone. Every process is stopped by its process id, and the temp dir
removed, at the end, on an error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import grpc  # type: ignore[import-untyped]

from bench import etcd_api
from bench.etcd_cluster import INSTALL_HINT, REPO_ROOT, EtcdCluster, etcd_version, find_etcd
from bench.sidecar import (
    campaign,
    campaign_cycles_parallel,
    cycle_rate,
    keepalive_throughput,
    paced_stream_rate,
    percentile,
    raft_failover,
    rss_kib,
    section,
    stop_cluster,
    unary_rate,
    validate_throughput,
)
from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.integration.cluster import Cluster

PRODUCT_TICK_MS = 15  # sidecar.config defaults: 15 ms tick, heartbeat 2, election 10 ticks
PRODUCT_HEARTBEAT_TICKS = 2
PRODUCT_ELECTION_TICKS = 10
VALUES = REPO_ROOT / "helm" / "raft-sidecar" / "values.yaml"

WHERE_IDLE_TIME_GOES = """
where an idle member's time goes (profiled; docs/kubernetes.md, "Idle cost"):
  The Raft work itself is small. The cost is per gRPC message: grpc.aio's poller
  thread hands each completion to the asyncio loop, the waiting task resumes, and
  each wake-up costs tens of microseconds of Python and a few syscalls. Idle
  follower at the chart's timings, per second: 10 heartbeats in, about 3 answers
  out (a heartbeat carries answer_optional unless the leader needs the answer:
  docs/raft-core.md, "heartbeat answers"; it answered all 10 before), an
  acknowledgement probe each way per stream that carries traffic (every 5 s on an
  idle one), membership's Hello every 5 s and the metrics sampler. The leader
  sends every heartbeat to every follower, so it costs about 1.7 times a
  follower. gRPC runs on its posix poller, not EventEngine
  (sidecar/grpc_engine.py): EventEngine woke a pool of threads for every message,
  half of all wake-ups; the loop is uvloop's, a few % cheaper per callback than
  asyncio's. Health, the Raft ticks between heartbeats, the lease
  keeper and membership's plan check act on events, not timers."""


@dataclass(frozen=True)
class Timing:
    """Raft timing of one cluster, in etcd's terms (heartbeat and election ms)."""

    label: str
    heartbeat_ms: int
    election_ms: int


# --- setup -----------------------------------------------------------------------


def chart_raft_timing() -> tuple[int, int, int]:
    """(tickMs, electionTimeoutTicks, heartbeatTicks) of the chart's values.yaml
    (read as text: PyYAML is not a dependency). Raises RuntimeError if absent."""
    text = VALUES.read_text()
    found = []
    for key in ("tickMs", "electionTimeoutTicks", "heartbeatTicks"):
        match = re.search(rf"^\s+{key}:\s*(\d+)\s*$", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"{key} not found in {VALUES}")
        found.append(int(match.group(1)))
    return found[0], found[1], found[2]


def ours_cluster(root: Path, tick_ms: int, election_ticks: int, heartbeat_ticks: int) -> Cluster:
    """Our 3-node cluster with the given timing; the smallest TTL follows the
    rule the config enforces (at least two election timeouts)."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(root, size=3, tick_ms=tick_ms)
    ttl_min_ms = max(500, 2 * tick_ms * election_ticks)
    flags = [
        "--election-timeout-ticks", str(election_ticks),
        "--heartbeat-ticks", str(heartbeat_ticks),
        "--ttl-min-ms", str(ttl_min_ms),
    ]  # fmt: skip
    cluster.extra_args = lambda _node: flags
    return cluster


def ours_pids(cluster: Cluster) -> list[int]:
    return [n.process.pid for n in cluster.nodes if n.process is not None]


def etcd_pids(cluster: EtcdCluster) -> list[int]:
    return [m.process.pid for m in cluster.members if m.process is not None]


# --- 1. idle CPU and RSS -----------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime+stime of every thread of ``pid`` so far, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat


def context_switches(pid: int) -> int | None:
    """Voluntary and involuntary context switches of every thread of ``pid``
    so far (each wake-up of a sleeping thread is one), None once it is gone."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # a thread that just ended
        for line in status.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


@dataclass(frozen=True)
class Idle:
    """Per member of each group: CPU seconds per minute and wake-ups per second."""

    cpu: dict[str, list[float]]
    wakeups: dict[str, list[float]]


def idle_cpu(groups: dict[str, list[int]], seconds: float) -> Idle:
    """CPU seconds per minute and context switches per second of each process
    of each group over the same ``seconds`` of wall time."""
    before = {
        g: [(cpu_seconds(p), context_switches(p)) for p in pids] for g, pids in groups.items()
    }
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    cpu: dict[str, list[float]] = {}
    wakeups: dict[str, list[float]] = {}
    for group, pids in groups.items():
        cpu[group], wakeups[group] = [], []
        for pid, (start, switches) in zip(pids, before[group], strict=True):
            end, switches_end = cpu_seconds(pid), context_switches(pid)
            if start is None or end is None or switches is None or switches_end is None:
                raise RuntimeError(f"process {pid} of {group} exited while idle")
            cpu[group].append((end - start) / elapsed * 60)
            wakeups[group].append((switches_end - switches) / elapsed)
    return Idle(cpu, wakeups)


# --- 3.-5. etcd's side, the same client shapes as bench.sidecar's -----------------


def grant_leases(api: etcd_api.EtcdModules, channel: grpc.Channel, n: int, ttl_s: int) -> list[int]:
    stub = api.rpc_grpc.LeaseStub(channel)
    return [
        int(stub.LeaseGrant(api.rpc.LeaseGrantRequest(TTL=ttl_s), timeout=10).ID) for _ in range(n)
    ]


def etcd_campaign_cycles(
    api: etcd_api.EtcdModules, target: str, threads: int, seconds: float
) -> tuple[int, float]:
    """Campaign+Resign cycles from ``threads`` synchronous clients, distinct
    elections, each client on its own lease (granted before the run)."""
    channel = grpc.insecure_channel(target)
    stub = api.election_grpc.ElectionStub(channel)
    leases = grant_leases(api, channel, threads, ttl_s=int(seconds) + 60)

    def cycle(k: int, i: int) -> None:
        request = api.election.CampaignRequest(
            name=f"bench-p{k}-{i}".encode(), lease=leases[k], value=b"solo"
        )
        won = stub.Campaign(request, timeout=20)
        stub.Resign(api.election.ResignRequest(leader=won.leader), timeout=10)

    try:
        return cycle_rate(threads, seconds, cycle, f"Campaign+Resign against etcd {target}")
    finally:
        channel.close()


def etcd_read_throughput(
    api: etcd_api.EtcdModules, target: str, key: bytes, threads: int, seconds: float
) -> float:
    """Linearizable Range calls/s of ``key`` from ``threads`` threads sharing one channel."""
    channel = grpc.insecure_channel(target)
    try:
        stub = api.rpc_grpc.KVStub(channel)
        request = api.rpc.RangeRequest(key=key)  # serializable=false: linearizable
        if stub.Range(request, timeout=5).count != 1:
            raise RuntimeError(f"{key!r} is not held")
        return unary_rate(
            threads, seconds, lambda: stub.Range(request, timeout=5), f"Range against {target}"
        )
    finally:
        channel.close()


def etcd_keepalive_throughput(
    api: etcd_api.EtcdModules, target: str, clients: int, seconds: float
) -> float:
    """Acknowledged LeaseKeepAlives/s: each client renews its own lease on its
    own stream, the next request sent as soon as the previous one is answered."""
    channel = grpc.insecure_channel(target)
    stub = api.rpc_grpc.LeaseStub(channel)
    leases = grant_leases(api, channel, clients, ttl_s=int(seconds) + 60)

    def prepare(k: int) -> Callable[[int], Any]:
        return lambda _sequence: api.rpc.LeaseKeepAliveRequest(ID=leases[k])

    try:
        return paced_stream_rate(
            clients, seconds, prepare, lambda requests: stub.LeaseKeepAlive(requests, timeout=120)
        )
    finally:
        channel.close()


# --- table -------------------------------------------------------------------------

Row = tuple[str, str, str]


def spread(values: list[float], unit: str = "") -> str:
    """Mean and range across members, e.g. ``1.62 (1.40-2.01)``."""
    mean = sum(values) / len(values)
    return f"{mean:.2f} ({min(values):.2f}-{max(values):.2f}){unit}"


def failover_cell(samples: list[float]) -> str:
    if not samples:
        return "n/a"
    return f"p50 {percentile(samples, 50) * 1000:.0f} / p99 {percentile(samples, 99) * 1000:.0f}"


def pair(ours: tuple[float, float], theirs: tuple[float, float] | None, fmt: str) -> Row:
    mine = f"{ours[0]:{fmt}} / {ours[1]:{fmt}}"
    return ("", mine, "n/a" if theirs is None else f"{theirs[0]:{fmt}} / {theirs[1]:{fmt}}")


def print_table(rows: list[Row], etcd_name: str) -> None:
    width = max(len(r[0]) for r in rows)
    cols = [max(len(r[i]) for r in [*rows, ("", "raft-sidecar", etcd_name)]) for i in (1, 2)]
    print(f"  {'measure':<{width}}  {'raft-sidecar':>{cols[0]}}  {etcd_name:>{cols[1]}}")
    for label, ours, theirs in rows:
        print(f"  {label:<{width}}  {ours:>{cols[0]}}  {theirs:>{cols[1]}}")


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# --- main --------------------------------------------------------------------------


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="failover trials per cluster")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each run of 3-5")
    parser.add_argument("--threads", type=int, default=16, help="the larger client count of 3-5")
    parser.add_argument("--settle-seconds", type=float, default=20.0, help="before idle CPU")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="idle CPU window")
    parser.add_argument(
        "--idle-only", action="store_true", help="stop after step 1 (idle CPU, wake-ups, RSS)"
    )
    args = parser.parse_args()
    # Clean up on SIGTERM as on Ctrl-C; SIGINT too, explicitly, since a shell
    # starts a background job with SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupt)

    binary = find_etcd()
    root = Path(tempfile.mkdtemp(prefix="etcd-baseline-", dir="/var/tmp"))
    chart_tick, chart_election, chart_heartbeat = chart_raft_timing()
    fast = Timing(
        f"ours product default (tick {PRODUCT_TICK_MS} ms) / etcd 50/250 ms",
        PRODUCT_TICK_MS * PRODUCT_HEARTBEAT_TICKS,
        PRODUCT_TICK_MS * PRODUCT_ELECTION_TICKS,
    )
    slow = Timing(
        f"ours chart (tick {chart_tick} ms) / etcd defaults 100/1000 ms",
        chart_tick * chart_heartbeat,
        chart_tick * chart_election,
    )
    ours_fast = ours_cluster(
        root / "ours-fast", PRODUCT_TICK_MS, PRODUCT_ELECTION_TICKS, PRODUCT_HEARTBEAT_TICKS
    )
    ours_slow = ours_cluster(root / "ours-chart", chart_tick, chart_election, chart_heartbeat)
    etcd_fast: EtcdCluster | None = None
    etcd_slow: EtcdCluster | None = None
    began = time.monotonic()
    ok = False
    try:
        print(f"raft-sidecar vs etcd, 3 members each on loopback, dir {root}")
        print(f"load average at start: {loadavg()}")
        etcd_name = "etcd (not installed)"
        if binary is None:
            print(f"\n{INSTALL_HINT}; printing our figures alone.")
        else:
            api = etcd_api.load(root)
            etcd_name = f"etcd {etcd_version(binary)}"
            etcd_fast = EtcdCluster(binary, root / "etcd-fast", api, 50, 250)
            etcd_slow = EtcdCluster(binary, root / "etcd-default", api, 100, 1000)
        for timing in (fast, slow):
            print(
                f"  {timing.label}: heartbeat {timing.heartbeat_ms} ms, "
                f"election {timing.election_ms} ms"
            )
        print(
            "  transport: both sides synchronous Python gRPC stubs (ours: sidecar/pb; "
            "etcd: its v3 API subset compiled at bench time, bench/etcd_api.py)"
        )

        def start_all() -> None:
            for cluster in (ours_fast, ours_slow):
                cluster.start_all()
                cluster.leader()
            for etcd in (etcd_fast, etcd_slow):
                if etcd is not None:
                    etcd.start_all()
            time.sleep(args.settle_seconds)

        section(f"starting 4 clusters, then {args.settle_seconds:.0f} s to settle", start_all)
        groups = {"ours-fast": ours_pids(ours_fast), "ours-slow": ours_pids(ours_slow)}
        if etcd_fast is not None and etcd_slow is not None:
            groups["etcd-fast"] = etcd_pids(etcd_fast)
            groups["etcd-slow"] = etcd_pids(etcd_slow)
        idle = section(
            f"1. idle CPU of every member of all clusters at once, {args.idle_seconds:.0f} s",
            lambda: idle_cpu(groups, args.idle_seconds),
        )
        cpu = idle.cpu
        rss = {
            g: [(rss_kib(p) or 0) / 1024 for p in pids] for g, pids in groups.items()
        }  # fmt: skip

        def cell(group: str, table: dict[str, list[float]], unit: str = "") -> str:
            return spread(table[group], unit) if group in table else "n/a"

        idle_rows: list[Row] = [
            ("idle CPU s/min per member, mean (range)", "", ""),
            (f"  {fast.label}", cell("ours-fast", cpu), cell("etcd-fast", cpu)),
            (f"  {slow.label}", cell("ours-slow", cpu), cell("etcd-slow", cpu)),
            ("idle wake-ups/s per member (context switches, all threads)", "", ""),
            (f"  {fast.label}", cell("ours-fast", idle.wakeups), cell("etcd-fast", idle.wakeups)),
            (f"  {slow.label}", cell("ours-slow", idle.wakeups), cell("etcd-slow", idle.wakeups)),
            ("idle RSS MiB per member, mean (range)", "", ""),
            (f"  {fast.label}", cell("ours-fast", rss), cell("etcd-fast", rss)),
            (f"  {slow.label}", cell("ours-slow", rss), cell("etcd-slow", rss)),
        ]
        if args.idle_only:
            print(f"\n[table] load average at end: {loadavg()}")
            print_table(idle_rows, etcd_name)
            print(WHERE_IDLE_TIME_GOES)
            print(f"\ntotal {time.monotonic() - began:.1f} s")
            ok = True
            return

        def failovers() -> dict[str, list[float]]:
            out: dict[str, list[float]] = {g: [] for g in groups}
            for _ in range(args.trials):  # alternate the systems trial by trial
                out["ours-fast"] += raft_failover(ours_fast, 1)[0]
                if etcd_fast is not None:
                    out["etcd-fast"].append(etcd_fast.failover())
                out["ours-slow"] += raft_failover(ours_slow, 1)[0]
                if etcd_slow is not None:
                    out["etcd-slow"].append(etcd_slow.failover())
            return out

        failover = section(
            f"2. leader failover (SIGKILL the leader), {args.trials} trials per cluster",
            failovers,
        )
        # Only each system's defaults stay for the throughput runs.
        stop_cluster(ours_slow)
        if etcd_fast is not None:
            etcd_fast.stop_all()

        counts = (1, args.threads)
        leader = ours_fast.leader()
        etcd_leader = etcd_slow.leader() if etcd_slow is not None else None

        def cycles() -> dict[str, list[float]]:
            out: dict[str, list[float]] = {"ours": [], "etcd": []}
            for n in counts:
                done, elapsed = campaign_cycles_parallel(leader, n, args.seconds)
                out["ours"].append(done / elapsed)
                if etcd_slow is not None and etcd_leader is not None:
                    done, elapsed = etcd_campaign_cycles(
                        etcd_slow.api, etcd_leader.target, n, args.seconds
                    )
                    out["etcd"].append(done / elapsed)
            return out

        campaign_rates = section(
            f"3. Campaign+Resign cycles/s, {counts[0]} and {counts[1]} clients, "
            "distinct elections, on each leader",
            cycles,
        )

        token = campaign(leader.stub(), "bench-v", "validator", 5000, timeout=10)
        validate = worker_pb2.ValidateTokenRequest(
            election="bench-v", fencing_token=token.fencing_token
        )
        if not leader.stub().ValidateToken(validate, timeout=5).valid:
            raise RuntimeError("fresh token is not valid")
        etcd_key = b""
        if etcd_slow is not None and etcd_leader is not None:
            api = etcd_slow.api
            channel = etcd_leader.open_channel()
            (lease,) = grant_leases(api, channel, 1, ttl_s=600)
            won = api.election_grpc.ElectionStub(channel).Campaign(
                api.election.CampaignRequest(name=b"bench-v", lease=lease, value=b"validator"),
                timeout=10,
            )
            etcd_key = bytes(won.leader.key)

        def reads() -> dict[str, list[float]]:
            out: dict[str, list[float]] = {"ours": [], "etcd": []}
            for n in counts:
                out["ours"].append(validate_throughput(leader.api, validate, n, args.seconds))
                if etcd_slow is not None and etcd_leader is not None:
                    out["etcd"].append(
                        etcd_read_throughput(
                            etcd_slow.api, etcd_leader.target, etcd_key, n, args.seconds
                        )
                    )
            return out

        read_rates = section(
            "4. linearizable reads/s: ValidateToken vs Range of the leader key", reads
        )

        def keepalives() -> dict[str, list[float]]:
            out: dict[str, list[float]] = {"ours": [], "etcd": []}
            for n in counts:
                out["ours"].append(keepalive_throughput(leader, n, args.seconds))
                if etcd_slow is not None and etcd_leader is not None:
                    out["etcd"].append(
                        etcd_keepalive_throughput(
                            etcd_slow.api, etcd_leader.target, n, args.seconds
                        )
                    )
            return out

        keepalive_rates = section(
            "5. keep-alives/s: KeepAlive stream vs LeaseKeepAlive stream", keepalives
        )

        def both(rates: dict[str, list[float]]) -> tuple[tuple[float, float], Any]:
            theirs = (rates["etcd"][0], rates["etcd"][1]) if rates["etcd"] else None
            return (rates["ours"][0], rates["ours"][1]), theirs

        rows: list[Row] = [
            *idle_rows,
            (f"leader failover ms, {args.trials} SIGKILLs", "", ""),
            (
                f"  {fast.label}",
                failover_cell(failover["ours-fast"]),
                failover_cell(failover.get("etcd-fast", [])),
            ),
            (
                f"  {slow.label}",
                failover_cell(failover["ours-slow"]),
                failover_cell(failover.get("etcd-slow", [])),
            ),
            (f"each system's defaults, {counts[0]} / {counts[1]} clients:", "", ""),
        ]
        for title, rates in (
            ("  Campaign+Resign cycles/s", campaign_rates),
            ("  linearizable reads/s (ValidateToken / Range)", read_rates),
            ("  keep-alives/s (KeepAlive / LeaseKeepAlive)", keepalive_rates),
        ):
            ours, theirs = both(rates)
            rows.append((title, *pair(ours, theirs, ".0f")[1:]))
        print(f"\n[table] load average at end: {loadavg()}")
        print_table(rows, etcd_name)
        print(WHERE_IDLE_TIME_GOES)
        print(f"\ntotal {time.monotonic() - began:.1f} s")
        ok = True
    except KeyboardInterrupt:
        ok = True  # asked to stop: no logs, just clean up
        print("\ninterrupted: stopping every member", flush=True)
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # let the clean-up finish
        for cluster in (ours_fast, ours_slow):
            stop_cluster(cluster)
        for etcd in (etcd_fast, etcd_slow):
            if etcd is not None:
                etcd.stop_all()
        if not ok:
            with contextlib.suppress(Exception):
                print("\n".join(c.logs() for c in (ours_fast, ours_slow)))
            for etcd in (etcd_fast, etcd_slow):
                if etcd is not None:
                    with contextlib.suppress(Exception):
                        print(etcd.logs())
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
