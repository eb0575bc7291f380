"""End-to-end figures of a real 3-node sidecar cluster: ``python -m bench.sidecar``.

Starts three ``raft-sidecar serve`` processes on loopback (the integration
harness, ``tests.integration.cluster``) in a temp dir under /var/tmp, with the
product's default tick (15 ms; election timeout 10 ticks = 150-300 ms), and
measures:

1. Raft leader failover: SIGKILL the Raft leader, time until another node
   reports RAFT_ROLE_LEADER via Status (polled every 5 ms); restart the killed
   node and wait until it answers Status (and the cluster has one leader).
2. Worker-crash failover: worker A holds an election through Campaign plus a
   KeepAlive stream (every 100 ms, ttl 2000 ms) on a follower sidecar; worker
   B waits in Campaign on another sidecar; A's stream is cancelled (a broken
   stream: the sidecar revokes at once with the default
   --keepalive-grace-ms 0) and the time from cancel until B's Campaign
   returns is measured.
3. Graceful handover: A holds (ttl 5000, no keep-alive), B waits; time from
   A's Resign call until B's Campaign returns.
4. Uncontended Campaign + Resign cycles on distinct elections, one client
   (campaign-to-grant latency without contention), then (4b) from 16 clients.
5. ValidateToken throughput (1 and 16 synchronous client threads) against the
   Raft leader, and the same client code against a trivial grpc.aio server in
   a subprocess (a generic handler answering ValidateToken at once).
6. RSS (VmRSS) of each sidecar idle and right after steps 5 and 8.
7. Pod crash: A holds through a follower's sidecar (TTL 1 s); that sidecar is
   killed with SIGKILL and A's stream dropped, so only the Raft leader's
   expiry frees the election; time until B's Campaign returns.
8. KeepAlive throughput: 1 and 16 clients, each on its own election, sending
   the next keep-alive as soon as the last one is acknowledged.

This is a benchmark, not a test: figures are machine-dependent; compare runs
on one machine only. All processes are stopped and the temp dir removed at
the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc
from tests.integration import worker_api
from tests.integration.cluster import Cluster, Sidecar, eventually
from tests.integration.worker_api import Granted

TICK_MS = 15  # the product default (sidecar.config)
POLL_S = 0.005
POD_TTL_MS = 1000  # the integration harness allows TTLs from 500 ms
QUEUE_SETTLE_S = 0.2  # time given to B's Campaign to reach the queue before A lets go

# A trivial grpc.aio server: ValidateToken of the same service name, answered
# at once from a generic handler (raw bytes, no proto import needed).
TRIVIAL_SERVER = r"""
import asyncio, sys
import grpc

# ValidateTokenResponse(valid=true, current_token=1), serialized by hand.
ANSWER = bytes([0x08, 0x01, 0x10, 0x01])

async def validate(request, context):
    return ANSWER

async def main():
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "raftsidecar.worker.v1.ElectionService",
        {"ValidateToken": grpc.unary_unary_rpc_method_handler(validate)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


# --- helpers ---------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_of(cluster: Cluster) -> dict[str, int | None]:
    return {
        n.node_id: (rss_kib(n.process.pid) if n.process is not None else None)
        for n in cluster.nodes
    }


def role_of(node: Sidecar) -> Any:
    try:
        return node.stub().Status(worker_pb2.StatusRequest(), timeout=0.5)
    except grpc.RpcError:
        return None


def settled_leader(cluster: Cluster) -> Sidecar:
    """The leader, once every live node names it (a node restarted a moment ago
    may still be waiting for the leader's reconnect backoff to reach it)."""

    def agree() -> Sidecar | None:
        leader = cluster.leader()
        for node in cluster.nodes:
            if node.process is None:
                continue
            st = role_of(node)
            if st is None or st.leader_id != leader.node_id:
                return None
        return leader

    return eventually(agree, "every node to know the leader", seconds=30)


def followers(cluster: Cluster, leader: Sidecar) -> list[Sidecar]:
    return [n for n in cluster.nodes if n is not leader and n.process is not None]


def campaign(stub: Any, election: str, candidate: str, ttl_ms: int, timeout: float) -> Granted:
    """Campaign (a server stream) until granted."""
    return worker_api.campaign(stub, election, candidate, ttl_ms=ttl_ms, timeout=timeout)


_CAMPAIGNS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="campaign")


def campaign_future(
    stub: Any, election: str, candidate: str, ttl_ms: int, timeout: float
) -> concurrent.futures.Future[Granted]:
    """A Campaign waiting in the queue, on a thread (the stream has no .future)."""
    return _CAMPAIGNS.submit(campaign, stub, election, candidate, ttl_ms, timeout)


def resign(stub: Any, token: Granted) -> None:
    worker_api.resign(stub, token.election, token.lease_key, token.fencing_token, timeout=10)


# --- 1. Raft leader failover ----------------------------------------------


def raft_failover(cluster: Cluster, trials: int) -> tuple[list[float], list[float]]:
    detect: list[float] = []
    rejoin: list[float] = []
    for _ in range(trials):
        leader = cluster.leader()
        old = leader.status()
        survivors = followers(cluster, leader)
        t0 = time.monotonic()
        cluster.kill(leader, signal.SIGKILL)
        deadline = t0 + 20
        elected = None
        while elected is None and time.monotonic() < deadline:
            for node in survivors:
                st = role_of(node)
                if st is not None and st.role == worker_pb2.RAFT_ROLE_LEADER:
                    if st.term <= old.term:
                        print(f"  warning: leader {st.node_id} in term {st.term} <= {old.term}")
                    elected = st
                    break
            else:
                time.sleep(POLL_S)
        if elected is None:
            raise RuntimeError("no new Raft leader within 20 s")
        detect.append(time.monotonic() - t0)
        t1 = time.monotonic()
        cluster.start(leader)
        eventually(
            lambda node=leader: role_of(node), f"{leader.node_id} to answer Status after restart"
        )
        rejoin.append(time.monotonic() - t1)
        cluster.leader()  # one leader among all nodes before the next kill
    return detect, rejoin


# --- 2./3. worker failover --------------------------------------------------


def keep_alive_requests(token: Any, stop: threading.Event, every_s: float) -> Iterator[Any]:
    sequence = 0
    while not stop.is_set():
        sequence += 1
        yield worker_pb2.KeepAliveRequest(
            election=token.election,
            fencing_token=token.fencing_token,
            lease_key=token.lease_key,
            sequence=sequence,
        )
        stop.wait(every_s)


def worker_crash_failover(cluster: Cluster, trials: int) -> list[float]:
    election = "bench-e"
    leader = settled_leader(cluster)
    home_a, home_b = followers(cluster, leader)[:2]
    stub_a, stub_b = home_a.stub(), home_b.stub()
    samples: list[float] = []
    for i in range(trials):
        token_a = campaign(stub_a, election, f"a-{i}", 2000, timeout=20)
        stop = threading.Event()
        stream = stub_a.KeepAlive(keep_alive_requests(token_a, stop, 0.1), timeout=120)
        acked = threading.Event()

        def read(stream: Any = stream, acked: threading.Event = acked) -> None:
            with contextlib.suppress(grpc.RpcError):  # cancelled below
                for _ in stream:
                    acked.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if not acked.wait(10):
            raise RuntimeError("no keep-alive answer in 10 s")
        waiting_b = campaign_future(stub_b, election, f"b-{i}", 2000, timeout=20)
        time.sleep(QUEUE_SETTLE_S)
        if waiting_b.done():
            raise RuntimeError(f"B granted while A held: {waiting_b.result()}")
        t0 = time.monotonic()
        stream.cancel()  # the worker process died
        token_b = waiting_b.result()
        samples.append(time.monotonic() - t0)
        stop.set()
        reader.join(5)
        if token_b.fencing_token <= token_a.fencing_token:
            raise RuntimeError("B's token is not larger than A's")
        resign(stub_b, token_b)
    return samples


def graceful_handover(cluster: Cluster, trials: int) -> list[float]:
    election = "bench-h"
    leader = settled_leader(cluster)
    home_a, home_b = followers(cluster, leader)[:2]
    stub_a, stub_b = home_a.stub(), home_b.stub()
    samples: list[float] = []
    for i in range(trials):
        token_a = campaign(stub_a, election, f"a-{i}", 5000, timeout=20)
        waiting_b = campaign_future(stub_b, election, f"b-{i}", 5000, timeout=20)
        time.sleep(QUEUE_SETTLE_S)
        if waiting_b.done():
            raise RuntimeError(f"B granted while A held: {waiting_b.result()}")
        t0 = time.monotonic()
        resign(stub_a, token_a)
        token_b = waiting_b.result()
        samples.append(time.monotonic() - t0)
        if token_b.fencing_token <= token_a.fencing_token:
            raise RuntimeError("B's token is not larger than A's")
        resign(stub_b, token_b)
    return samples


# --- 4. uncontended Campaign + Resign ------------------------------------------


def campaign_cycles(node: Sidecar, seconds: float) -> tuple[list[float], list[float], int, float]:
    stub = node.stub()
    campaign_s: list[float] = []
    resign_s: list[float] = []
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        t0 = time.monotonic()
        token = campaign(stub, f"bench-c-{i}", "solo", 5000, timeout=10)
        t1 = time.monotonic()
        resign(stub, token)
        t2 = time.monotonic()
        campaign_s.append(t1 - t0)
        resign_s.append(t2 - t1)
        i += 1
    return campaign_s, resign_s, i, time.monotonic() - start


def run_clients(
    threads: int, seconds: float, client: Callable[[int, threading.Event], None], join_s: float
) -> float:
    """Start ``threads`` client threads together (``client(k, stop)`` loops until
    ``stop`` is set), let them run ``seconds``, stop and join them; returns the
    elapsed seconds."""
    stop = threading.Event()
    barrier = threading.Barrier(threads + 1)

    def run(k: int) -> None:
        barrier.wait()
        client(k, stop)

    workers = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.monotonic()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join(join_s)
    return time.monotonic() - t0


def cycle_rate(
    threads: int, seconds: float, cycle: Callable[[int, int], None], what: str
) -> tuple[int, float]:
    """(cycles, seconds) of ``cycle(k, i)`` run back to back by ``threads``
    synchronous clients (``k`` the client, ``i`` its cycle number). A cycle
    that fails (a Raft election under load) is counted and reported and the
    client goes on. etcd's baseline calls this too."""
    counts = [0] * threads
    errors = [0] * threads

    def client(k: int, stop: threading.Event) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                cycle(k, i)
            except grpc.RpcError:
                errors[k] += 1
                continue
            counts[k] += 1

    elapsed = run_clients(threads, seconds, client, join_s=30)
    if sum(errors):
        print(f"  warning: {sum(errors)} failed cycles of {what}")
    return sum(counts), elapsed


def campaign_cycles_parallel(node: Sidecar, threads: int, seconds: float) -> tuple[int, float]:
    """Campaign+Resign cycles/s from ``threads`` synchronous clients, distinct elections."""
    channel = grpc.insecure_channel(node.api)
    stub = worker_pb2_grpc.ElectionServiceStub(channel)

    def cycle(k: int, i: int) -> None:
        resign(stub, campaign(stub, f"bench-p{k}-{i}", "solo", 5000, timeout=20))

    try:
        return cycle_rate(threads, seconds, cycle, f"Campaign+Resign against {node.api}")
    finally:
        channel.close()


# --- 7. pod crash (sidecar and worker killed together) ---------------------------


def pod_crash_failover(cluster: Cluster, trials: int, ttl_ms: int) -> list[float]:
    """A holds through a follower's sidecar; kill -9 that sidecar and drop A's
    stream (the pod died): only the Raft leader's expiry can free the election."""
    election = "bench-pod"
    samples: list[float] = []
    for i in range(trials):
        leader = settled_leader(cluster)
        home_a, home_b = followers(cluster, leader)[:2]
        stub_a, stub_b = home_a.stub(), home_b.stub()
        token_a = campaign(stub_a, election, f"a-{i}", ttl_ms, timeout=20)
        stop = threading.Event()
        stream = stub_a.KeepAlive(keep_alive_requests(token_a, stop, ttl_ms / 10_000), timeout=120)
        acked = threading.Event()

        def read(stream: Any = stream, acked: threading.Event = acked) -> None:
            with contextlib.suppress(grpc.RpcError):
                for _ in stream:
                    acked.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if not acked.wait(10):
            raise RuntimeError("no keep-alive answer in 10 s")
        waiting_b = campaign_future(stub_b, election, f"b-{i}", ttl_ms, timeout=30)
        time.sleep(QUEUE_SETTLE_S)
        t0 = time.monotonic()
        cluster.kill(home_a, signal.SIGKILL)
        stop.set()
        stream.cancel()
        token_b = waiting_b.result()
        samples.append(time.monotonic() - t0)
        reader.join(5)
        if token_b.fencing_token <= token_a.fencing_token:
            raise RuntimeError("B's token is not larger than A's")
        resign(stub_b, token_b)
        cluster.start(home_a)
        eventually(home_a.answers, f"{home_a.node_id} to answer after restart")
    return samples


# --- 8. keep-alive throughput ------------------------------------------------------


def paced_stream_rate(
    clients: int,
    seconds: float,
    prepare: Callable[[int], Callable[[int], Any]],
    open_stream: Callable[[Iterator[Any]], Any],
) -> float:
    """Answers/s over ``clients`` bidirectional streams, each sending its next
    request as soon as the previous one is answered.

    ``prepare(k)`` runs on client ``k``'s thread before the clock starts (to
    campaign or grant a lease) and returns ``request(sequence)``;
    ``open_stream(requests)`` opens the stream. etcd's baseline calls this too,
    so both systems are driven by the same loop."""
    counts = [0] * clients
    stop = threading.Event()
    barrier = threading.Barrier(clients + 1)
    done = threading.Barrier(clients + 1)

    def run(k: int) -> None:
        request = prepare(k)
        answered = threading.Semaphore(0)

        def requests() -> Iterator[Any]:
            sequence = 0
            while not stop.is_set():
                sequence += 1
                yield request(sequence)
                answered.acquire(timeout=5)

        stream = open_stream(requests())
        barrier.wait()
        with contextlib.suppress(grpc.RpcError):
            for _ in stream:
                counts[k] += 1
                answered.release()
                if stop.is_set():
                    break
        stream.cancel()
        done.wait(30)

    workers = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(clients)]
    for w in workers:
        w.start()
    barrier.wait()
    start_counts = sum(counts)
    t0 = time.monotonic()
    time.sleep(seconds)
    total = sum(counts) - start_counts
    elapsed = time.monotonic() - t0
    stop.set()
    done.wait(30)
    return total / elapsed


def keepalive_throughput(node: Sidecar, clients: int, seconds: float) -> float:
    """Acknowledged keep-alives/s: each client holds its own election and sends
    the next keep-alive as soon as the previous one is answered."""
    channel = grpc.insecure_channel(node.api)
    stub = worker_pb2_grpc.ElectionServiceStub(channel)

    def prepare(k: int) -> Callable[[int], Any]:
        token = campaign(stub, f"bench-k{clients}-{k}", "solo", 10_000, timeout=20)
        return lambda sequence: worker_pb2.KeepAliveRequest(
            election=token.election,
            fencing_token=token.fencing_token,
            lease_key=token.lease_key,
            sequence=sequence,
        )

    try:
        return paced_stream_rate(
            clients, seconds, prepare, lambda requests: stub.KeepAlive(requests, timeout=120)
        )
    finally:
        channel.close()


# --- 5. ValidateToken throughput ------------------------------------------------


def unary_rate(threads: int, seconds: float, call: Callable[[], Any], what: str) -> float:
    """Calls/s of ``call`` from ``threads`` synchronous threads (sharing the
    caller's channel), after 20 warm-up calls; failed calls are counted and
    reported, not retried. etcd's baseline calls this too."""
    for _ in range(20):  # warm up the connection
        call()
    counts = [0] * threads
    errors = [0] * threads

    def client(k: int, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                call()
                counts[k] += 1
            except grpc.RpcError:
                errors[k] += 1

    elapsed = run_clients(threads, seconds, client, join_s=10)
    if sum(errors):
        print(f"  warning: {sum(errors)} errors of {what}")
    return sum(counts) / elapsed


def validate_throughput(target: str, request: Any, threads: int, seconds: float) -> float:
    """Calls/s of ValidateToken from ``threads`` synchronous threads sharing one channel."""
    channel = grpc.insecure_channel(target)
    try:
        stub = worker_pb2_grpc.ElectionServiceStub(channel)
        return unary_rate(
            threads,
            seconds,
            lambda: stub.ValidateToken(request, timeout=5),
            f"ValidateToken against {target}",
        )
    finally:
        channel.close()


def start_trivial_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", TRIVIAL_SERVER], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        proc.kill()
        raise RuntimeError(f"trivial server did not start: {line!r}")
    return proc, f"127.0.0.1:{line}"


# --- main ------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def stop_cluster(cluster: Cluster) -> None:
    """Close every node's channel and stop its process (SIGTERM, then SIGKILL)."""
    for node in cluster.nodes:
        if node.channel is not None:
            node.channel.close()
            node.channel = None
        stop_process(node.process)
        node.process = None


def print_latencies(title: str, samples: list[float], with_max: bool = False) -> None:
    cols = f"{'p50':>8} {'p90':>8} {'p99':>8}" + (f" {'max':>8}" if with_max else "")
    vals = (
        f"{ms(percentile(samples, 50))} {ms(percentile(samples, 90))} {ms(percentile(samples, 99))}"
    )
    if with_max:
        vals += f" {ms(max(samples))}"
    print(f"  {title:<44} n={len(samples):<4} ms: {cols}")
    print(f"  {'':<44} {'':<6}     {vals}")


def fmt_rss(values: dict[str, int | None]) -> str:
    return "  ".join(
        f"{k}={v / 1024:6.1f} MiB" if v is not None else f"{k}=   n/a" for k, v in values.items()
    )


def section(title: str, run: Callable[[], Any]) -> Any:
    print(f"\n[{title}]", flush=True)
    t0 = time.monotonic()
    result = run()
    print(f"  ({time.monotonic() - t0:.1f} s)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30, help="trials of steps 1-3")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of steps 4-5 runs")
    parser.add_argument("--threads", type=int, default=16, help="client threads of step 5")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sidecar-bench-", dir="/var/tmp"))
    cluster = Cluster(root, size=3, tick_ms=TICK_MS)
    trivial: subprocess.Popen[str] | None = None
    began = time.monotonic()
    ok = False
    try:
        print(f"raft-sidecar bench: 3 nodes on loopback, tick {TICK_MS} ms, dir {root}")
        cluster.start_all()
        cluster.leader()
        time.sleep(1.0)
        rss_idle_start = rss_of(cluster)
        print(f"RSS idle at start: {fmt_rss(rss_idle_start)}")

        detect, rejoin = section(
            f"1. Raft leader failover (SIGKILL leader), {args.trials} trials",
            lambda: raft_failover(cluster, args.trials),
        )
        print_latencies("kill -> another node reports LEADER", detect, with_max=True)
        print_latencies("restart -> killed node answers Status", rejoin, with_max=True)

        crash = section(
            f"2. Worker-crash failover (KeepAlive cancelled), {args.trials} trials",
            lambda: worker_crash_failover(cluster, args.trials),
        )
        print_latencies("cancel stream -> B's Campaign returns", crash, with_max=True)

        handover = section(
            f"3. Graceful handover (Resign), {args.trials} trials",
            lambda: graceful_handover(cluster, args.trials),
        )
        print_latencies("Resign call -> B's Campaign returns", handover, with_max=True)

        leader = cluster.leader()
        camp, res, cycles, elapsed = section(
            f"4. Uncontended Campaign+Resign on the Raft leader ({leader.node_id}), one client",
            lambda: campaign_cycles(leader, args.seconds),
        )
        print(f"  Campaign  ms: p50 {ms(percentile(camp, 50))}  p99 {ms(percentile(camp, 99))}")
        print(f"  Resign    ms: p50 {ms(percentile(res, 50))}  p99 {ms(percentile(res, 99))}")
        print(f"  cycles/s: {cycles / elapsed:.1f} ({cycles} cycles in {elapsed:.1f} s)")

        parallel, p_elapsed = section(
            f"4b. Campaign+Resign on the Raft leader ({leader.node_id}), "
            f"{args.threads} clients, distinct elections",
            lambda: campaign_cycles_parallel(leader, args.threads, args.seconds),
        )
        print(f"  cycles/s: {parallel / p_elapsed:.1f} ({parallel} cycles in {p_elapsed:.1f} s)")

        # 5. ValidateToken
        leader = cluster.leader()
        token = campaign(leader.stub(), "bench-v", "validator", 5000, timeout=10)
        request = worker_pb2.ValidateTokenRequest(
            election="bench-v", fencing_token=token.fencing_token
        )
        if not leader.stub().ValidateToken(request, timeout=5).valid:
            raise RuntimeError("fresh token is not valid")
        rss_before_5 = rss_of(cluster)
        trivial, trivial_target = start_trivial_server()

        def run5() -> dict[tuple[str, int], float]:
            out = {}
            for threads in (1, args.threads):
                out[("sidecar", threads)] = validate_throughput(
                    leader.api, request, threads, args.seconds
                )
                out[("trivial", threads)] = validate_throughput(
                    trivial_target, request, threads, args.seconds
                )
            return out

        rates = section(
            f"5. ValidateToken throughput against the Raft leader ({leader.node_id}) "
            "vs a trivial grpc.aio server",
            run5,
        )
        rss_after_5 = rss_of(cluster)
        trivial_rss = rss_kib(trivial.pid)
        print(f"  {'client threads':<16}{'sidecar/s':>12}{'trivial/s':>12}{'ratio':>9}")
        for threads in (1, args.threads):
            s, t = rates[("sidecar", threads)], rates[("trivial", threads)]
            print(f"  {threads:<16}{s:12.0f}{t:12.0f}{s / t:9.3f}")

        leader = cluster.leader()
        ka = section(
            f"8. KeepAlive throughput on the Raft leader ({leader.node_id}), acknowledged/s",
            lambda: {c: keepalive_throughput(leader, c, args.seconds) for c in (1, args.threads)},
        )
        for clients, rate in ka.items():
            print(f"  {clients:>3} clients: {rate:8.0f} keep-alives/s")
        rss_after_8 = rss_of(cluster)

        pod = section(
            f"7. Pod crash (kill -9 of the holder's sidecar, its stream gone), "
            f"{args.trials} trials, TTL {POD_TTL_MS} ms",
            lambda: pod_crash_failover(cluster, args.trials, POD_TTL_MS),
        )
        print_latencies("kill -> B's Campaign returns", pod, with_max=True)
        print(f"  target: p99 under TTL + 0.5 s = {(POD_TTL_MS + 500) / 1000:.1f} s")

        print("\n[6. RSS (VmRSS)]")
        print(f"  idle at start:        {fmt_rss(rss_idle_start)}")
        print(f"  idle before step 5:   {fmt_rss(rss_before_5)}")
        print(f"  right after step 5:   {fmt_rss(rss_after_5)}")
        print(f"  right after step 8:   {fmt_rss(rss_after_8)}")
        if trivial_rss is not None:
            print(f"  trivial server after step 5: {trivial_rss / 1024:.1f} MiB")
        print(
            "  (nodes killed in step 1 were restarted, so their 'before' figures are new processes)"
        )
        print(f"\ntotal {time.monotonic() - began:.1f} s")
        ok = True
    finally:
        stop_process(trivial)
        stop_cluster(cluster)
        if not ok:
            with contextlib.suppress(Exception):
                print(cluster.logs(), file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
