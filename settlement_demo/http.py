"""``/healthz``, ``/readyz`` and ``/metrics`` of the worker, on a thread.

A thread, not the event loop, serves them: a probe must still be answered
while a ledger step blocks, and the kubelet must not see a busy worker as
dead. ``/healthz`` is 200 while the worker's loop has beaten in the last few
seconds; ``/readyz`` is 200 once the ledger is open and the sidecar answered
(a follower is ready: readiness must not depend on holding the lease, or a
rolling update would wait for ever on every non-leader).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

LIVENESS_WINDOW_S = 10.0


@dataclass
class Health:
    ready: bool = False
    last_beat: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.last_beat < LIVENESS_WINDOW_S


class HttpEndpoints:
    def __init__(self, address: str, health: Health, registry: CollectorRegistry) -> None:
        host, _, port = address.rpartition(":")
        health_ref, registry_ref = health, registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._answer(200, generate_latest(registry_ref), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    ok = health_ref.alive()
                    self._answer(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
                elif self.path == "/readyz":
                    ok = health_ref.ready and health_ref.alive()
                    self._answer(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._answer(404, b"not found\n")

            def _answer(self, code: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would drown the JSON log

        self._server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="worker-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
