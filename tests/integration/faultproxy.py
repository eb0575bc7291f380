"""A userspace TCP proxy per directed peer link, to cut links in tests.

No netem or iptables here: each node reaches each peer through its own
proxy (node A's address for B is A->B's proxy), so cutting A->B and B->A
isolates exactly that pair, whatever direction gRPC opens its connections.
A cut link closes its open connections and drops new ones at once.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.integration.cluster import Cluster


class LinkProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self.cut = False
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()

    def accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self.cut:
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=1)
        except OSError:
            client.close()
            return
        client.setblocking(False)
        upstream.setblocking(False)
        with self._lock:
            self._pairs[client] = upstream
            self._pairs[upstream] = client

    def sockets(self) -> list[socket.socket]:
        with self._lock:
            return list(self._pairs)

    def pump(self, sock: socket.socket) -> None:
        with self._lock:
            other = self._pairs.get(sock)
        if other is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data or self.cut:
            self.drop(sock)
            return
        try:
            other.sendall(data)
        except OSError:
            self.drop(sock)

    def drop(self, sock: socket.socket) -> None:
        with self._lock:
            other = self._pairs.pop(sock, None)
            if other is not None:
                self._pairs.pop(other, None)
        for s in (sock, other):
            if s is not None:
                s.close()

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            for s in self.sockets():
                self.drop(s)

    def close(self) -> None:
        self.set_cut(True)
        self._listener.close()


class FaultNetwork:
    """Proxies for every ordered pair of nodes, pumped by one thread."""

    def __init__(self, peer_ports: dict[str, int]) -> None:
        self.links = {
            (a, b): LinkProxy(peer_ports[b])
            for a in sorted(peer_ports)
            for b in sorted(peer_ports)
            if a != b
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def peers_for(self, node: str, own_port: int) -> str:
        """The --peers value node ``node`` must use: every peer through its proxy."""
        parts = [f"{node}=127.0.0.1:{own_port}"]
        parts += [f"{b}=127.0.0.1:{p.port}" for (a, b), p in self.links.items() if a == node]
        return ",".join(sorted(parts))

    def cut_one_way(self, sender: str, receiver: str, cut: bool = True) -> None:
        """Cut only what ``sender`` sends to ``receiver`` (its dialled link):
        ``receiver`` still reaches ``sender``, whose answers are lost."""
        self.links[(sender, receiver)].set_cut(cut)

    def isolate(self, node: str, cut: bool = True) -> None:
        for (a, b), proxy in self.links.items():
            if node in (a, b):
                proxy.set_cut(cut)

    def _run(self) -> None:
        while not self._stop.is_set():
            sel = selectors.DefaultSelector()
            for proxy in self.links.values():
                sel.register(proxy._listener, selectors.EVENT_READ, (proxy, None))
                for s in proxy.sockets():
                    try:
                        sel.register(s, selectors.EVENT_READ, (proxy, s))
                    except (ValueError, KeyError, OSError):
                        continue
            for key, _ in sel.select(timeout=0.02):
                proxy, sock = key.data
                if sock is None:
                    proxy.accept()
                else:
                    proxy.pump(sock)
            sel.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for proxy in self.links.values():
            proxy.close()


@contextlib.contextmanager
def partitionable(root: Path, **cluster_options: Any) -> Iterator[tuple[Cluster, FaultNetwork]]:
    """A started ``Cluster`` whose every peer link goes through a ``LinkProxy``;
    the nodes' logs are printed when the body fails, and everything is closed."""
    c = Cluster(root, **cluster_options)
    net = FaultNetwork({n.node_id: n.peer_port for n in c.nodes})
    c.peers_of = lambda node: net.peers_for(node.node_id, node.peer_port)
    try:
        c.start_all()
        yield c, net
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()
        net.close()
