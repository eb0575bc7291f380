"""The relay to PostgreSQL: bytes both ways, a refused target refused, and a
process in a lab namespace reaches a root-namespace service through it."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests import netlab
from tests.chaos.relay import Relay


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A real TCP echo server on loopback (answers each connection until it closes)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()
    stop.set()
    server.close()


def test_bytes_go_through_both_ways(echo: tuple[str, int]) -> None:
    with Relay([("127.0.0.1", 0)], echo) as relay:
        with socket.create_connection(relay.addresses[0], timeout=5) as conn:
            conn.sendall(b"settle")
            assert conn.recv(100) == b"SETTLE"
            conn.sendall(b"x" * 200_000)
            got = b""
            while len(got) < 200_000:
                got += conn.recv(65536)
            assert got == b"X" * 200_000
        assert relay.connections == 1


def test_a_refused_target_closes_the_client(echo: tuple[str, int]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = s.getsockname()  # bound, not listening: connections are refused
        with Relay([("127.0.0.1", 0)], nowhere) as relay:
            with socket.create_connection(relay.addresses[0], timeout=5) as conn:
                assert conn.recv(10) == b"", "closed at once, nothing relayed"
            assert relay.connections == 0


def test_close_ends_open_connections_and_the_listener(echo: tuple[str, int]) -> None:
    relay = Relay([("127.0.0.1", 0)], echo)
    conn = socket.create_connection(relay.addresses[0], timeout=5)
    conn.sendall(b"a")
    assert conn.recv(10) == b"A"
    relay.close()
    assert conn.recv(10) == b"", "the relayed connection is ended"
    conn.close()
    with pytest.raises(OSError):
        socket.create_connection(relay.addresses[0], timeout=2)


@pytest.mark.skipif(netlab.available() is not None, reason=netlab.available() or "")
def test_a_lab_namespace_reaches_a_root_service_through_its_host_link(
    echo: tuple[str, int],
) -> None:
    lab = netlab.NetLab(3)
    try:
        listen = [(lab.host_gateway(name), 0) for name in lab.names]
        with Relay(listen, echo) as relay:
            lab.isolate("s1", "fastfail")  # peer-link cuts never touch the host link
            for name, (host, port) in zip(lab.names, relay.addresses, strict=True):
                probe = (
                    "import socket\n"
                    f"c = socket.create_connection(('{host}', {port}), timeout=5)\n"
                    "c.sendall(b'ok'); print(c.recv(10).decode())\n"
                )
                out = subprocess.run(
                    [*lab.wrap(name), sys.executable, "-c", probe],
                    capture_output=True, text=True, timeout=30, check=False,
                )  # fmt: skip
                assert out.stdout.strip() == "OK", (name, out.stderr)
            direct = subprocess.run(
                [*lab.wrap("s0"), sys.executable, "-c",
                 f"import socket; socket.create_connection(('127.0.0.1', {echo[1]}), timeout=2)"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert direct.returncode != 0, "without the relay the root namespace is out of reach"
    finally:
        lab.close()
