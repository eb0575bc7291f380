"""The bounded /metrics HTTP server, on 127.0.0.1 with real sockets."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, make_wsgi_app

from sidecar.metrics_http import MetricsHttpServer


@pytest.fixture
def server() -> Iterator[MetricsHttpServer]:
    registry = CollectorRegistry()
    Counter("probe_events", "a series to find", registry=registry).inc()
    srv = MetricsHttpServer(
        "127.0.0.1", 0, make_wsgi_app(registry), max_connections=2, timeout_s=0.5
    )
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def scrape(srv: MetricsHttpServer) -> str:
    port = srv.server_address[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def silent_client(srv: MetricsHttpServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=5)


def test_connections_beyond_the_bound_are_closed_and_silent_ones_dropped(
    server: MetricsHttpServer,
) -> None:
    assert "probe_events_total 1.0" in scrape(server)
    held = [silent_client(server) for _ in range(2)]
    try:
        # Both places are taken by clients that send nothing: the next
        # connection is closed unanswered, at once.
        extra = silent_client(server)
        assert extra.recv(1024) == b""
        extra.close()
        # The silent ones are dropped after the timeout (0.5 s here)...
        for client in held:
            started = time.monotonic()
            assert client.recv(1024) == b""
            assert time.monotonic() - started < 5
    finally:
        for client in held:
            client.close()
    # ...and their places serve scrapes again.
    deadline = time.monotonic() + 5
    while True:
        try:
            assert "probe_events_total" in scrape(server)
            break
        except OSError:
            assert time.monotonic() < deadline, "the places were never given back"
            time.sleep(0.02)
