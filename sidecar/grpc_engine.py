"""Which of gRPC core's I/O engines a sidecar process runs on.

grpcio 1.85 serves client and server sockets with its EventEngine by
default: every peer message also wakes one of a pool of ``event_engine``
threads, which hands the completion to grpc.aio's poller thread, which wakes
the asyncio loop. The posix poller gRPC used before EventEngine (epoll1,
still shipped and selected with the experiment switches below) reads the
sockets on the polling thread itself. Measured on an idle 3-node cluster at
the chart's timings, both variants idle at once (docs/kubernetes.md, "Idle
cost"): half the wake-ups (185 -> 95 a second per member) and about a fifth
less CPU; failover times unchanged within noise.

gRPC reads ``GRPC_EXPERIMENTS`` once, when ``grpc`` is first imported, so
``prefer_posix_poller`` must run before that: ``raft-sidecar serve`` calls it
before importing the runtime (importing ``sidecar.cli`` imports no gRPC,
which a test checks). Only ``serve`` does, whose gRPC is all grpc.aio. The
synchronous stack did worse on the posix poller: with the test process's
stubs on it, the harness took about 10 s instead of 3 to see a new cluster
answer, and a real-process test timed out. So the other commands, worker
processes and the test process keep EventEngine; the real-process tests
run every sidecar on the posix poller.
An operator's own
``GRPC_EXPERIMENTS`` is left alone, and a gRPC release without these
experiments logs "Unknown experiment" and keeps EventEngine: slower, not
wrong. This module imports nothing of gRPC.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

POSIX_POLLER_EXPERIMENTS = "-event_engine_client,-event_engine_listener"
"""Turns off EventEngine for client channels and server listeners."""


def prefer_posix_poller(environ: MutableMapping[str, str] | None = None) -> None:
    """Select the posix poller unless ``GRPC_EXPERIMENTS`` is already set."""
    target = os.environ if environ is None else environ
    target.setdefault("GRPC_EXPERIMENTS", POSIX_POLLER_EXPERIMENTS)
