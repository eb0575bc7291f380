"""A small TCP relay in the root namespace: how the lab's nodes reach PostgreSQL.

Each node of the lab (``tests/netlab.py``) lives in its own network namespace;
PostgreSQL listens on 127.0.0.1 of the root namespace, which no namespace
can reach. The lab's host links are the one path out that no cut touches, so
the relay listens on the root end of each node's host link and copies bytes
to and from the target, one pair of threads per connection: the ledger stays
reachable whatever the nemesis does to the peer links, as a managed database
is reachable from every zone of a Kubernetes cluster.

Every socket and thread it makes is closed by ``close()``; the relay never
outlives the run (threads are daemons, too).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Sequence

_CHUNK = 65536


class Relay:
    """Listen on every ``(host, port)`` of ``listen``; forward each connection to ``target``.

    ``port`` 0 picks a free port (``addresses`` says which). Raises OSError
    when a listener cannot bind.
    """

    def __init__(self, listen: Sequence[tuple[str, int]], target: tuple[str, int]) -> None:
        self.target = target
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.connections = 0
        """Connections accepted so far (for tests and the run's figures)."""
        self.addresses: list[tuple[str, int]] = []
        try:
            for host, port in listen:
                server = socket.create_server((host, port), reuse_port=False)
                self._track(server)
                self.addresses.append((host, server.getsockname()[1]))
                self._spawn(self._accept, server)
        except BaseException:
            self.close()
            raise

    def _track(self, sock: socket.socket) -> bool:
        """Remember ``sock`` to close it later; False (and closed now) after close()."""
        with self._lock:
            if self._closed.is_set():
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self, server: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the client sees the refusal as the target's
                continue
            if not (self._track(client) and self._track(upstream)):
                return
            with self._lock:
                self.connections += 1
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy ``source`` to ``sink`` until either ends; then end both."""
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close every listener and connection; wait briefly for the threads."""
        with self._lock:
            self._closed.set()
            sockets, self._sockets = self._sockets, []
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
