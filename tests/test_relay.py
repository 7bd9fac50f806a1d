"""The relay's two pumps over real loopback connections: what one end does (its data,
its end, its reset) is what the other end sees."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from stackvisor.runtime.proxy import relay

Ends = tuple[socket.socket, socket.socket]  # the client's, the server's


@pytest.fixture
def relayed() -> Iterator[Ends]:
    """A client connected to the relay's front, and the server the relay connected to."""
    front, back = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(front.getsockname(), timeout=10)
    upstream = socket.create_connection(back.getsockname(), timeout=10)
    accepted, _ = front.accept()
    server, _ = back.accept()
    server.settimeout(10)
    done = threading.Event()
    relay(accepted, upstream, done.set)
    try:
        yield client, server
    finally:
        client.close()
        server.close()
        front.close()
        back.close()
        assert done.wait(10)  # both pumps ended, both relayed sockets closed


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_bytes_and_an_end_pass_both_ways(relayed: Ends) -> None:
    client, server = relayed
    client.sendall(b"question")
    client.shutdown(socket.SHUT_WR)
    assert server.recv(64) == b"question" and server.recv(64) == b""
    server.sendall(b"answer")
    server.shutdown(socket.SHUT_WR)
    assert client.recv(64) == b"answer" and client.recv(64) == b""


def test_a_servers_reset_reaches_the_client_as_a_reset(relayed: Ends) -> None:
    """Not as an end: an empty reply a client could take for an answer."""
    client, server = relayed
    client.sendall(b"question")
    assert server.recv(64) == b"question"
    reset(server)
    with pytest.raises(ConnectionResetError):
        client.recv(64)


def test_a_clients_reset_reaches_the_server_as_a_reset(relayed: Ends) -> None:
    client, server = relayed
    server.sendall(b"hello")
    assert client.recv(64) == b"hello"
    reset(client)
    with pytest.raises(ConnectionResetError):
        server.recv(64)
