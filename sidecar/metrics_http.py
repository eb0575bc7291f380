"""The ``/metrics`` HTTP server, bounded.

prometheus-client's ``start_http_server`` starts a thread per connection and
waits on each for as long as the client likes: a client that opens
connections and sends nothing holds a thread each, without limit. This is
the same WSGI app on the same ``wsgiref`` server, with two bounds: at most
``max_connections`` connections are served at once (one more is closed at
once, unanswered), and a client that does not send its request (or read the
answer) within ``timeout_s`` is dropped. A scraper needs one connection.
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

MAX_CONNECTIONS: Final = 8
TIMEOUT_S: Final = 10.0


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape (stderr carries the JSON log only)."""

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


class MetricsHttpServer(ThreadingMixIn, WSGIServer):
    """``wsgiref`` with a thread per connection, at most ``max_connections`` of them."""

    daemon_threads = True

    def __init__(
        self,
        host: str,
        port: int,
        app: Any,
        *,
        max_connections: int = MAX_CONNECTIONS,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        """Binds at once; raises OSError when ``host:port`` cannot be bound."""
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self.address_family = family
        bind_to = (str(address[0]), int(address[1]))
        self._slots = threading.BoundedSemaphore(max_connections)
        handler = type("_Handler", (_QuietHandler,), {"timeout": timeout_s})
        super().__init__(bind_to, handler)
        self.set_app(app)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the bound: closed unanswered
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve_metrics(listen: str, registry: CollectorRegistry) -> MetricsHttpServer:
    """Serve ``/metrics`` of ``registry`` on ``listen`` (host:port) from a daemon
    thread. Raises OSError when the address cannot be bound."""
    host, _, port = listen.rpartition(":")
    server = MetricsHttpServer(host.strip("[]") or "0.0.0.0", int(port), make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
