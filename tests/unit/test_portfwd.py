"""The user-space port relay of rootless mode, in this process's own namespace: TCP with
half-closes and a large transfer, a refused target, UDP."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.runtime.portfwd import Connector, Relay, connect_via, serve_connector
from tests.support.servers import tcp_server

if TYPE_CHECKING:
    from collections.abc import Iterator


def _echo_until_eof_then_say_bye(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.sendall(b"bye")  # after the client's half-close, the reply still flows


def _hash_then_reply(conn: socket.socket) -> None:
    with conn:
        h = hashlib.sha256()
        while data := conn.recv(1 << 20):
            h.update(data)
        conn.sendall(h.hexdigest().encode())


@pytest.fixture
def relay() -> Iterator[Relay]:
    connector = Connector(lambda: None)
    relay = Relay(connector)
    try:
        yield relay
    finally:
        relay.close()
        connector.close()


def _published(relay: Relay, port: int, proto: str = "tcp") -> tuple[str, int]:
    if proto == "tcp":
        host = socket.create_server(("127.0.0.1", 0))
    else:
        host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        host.bind(("127.0.0.1", 0))
    return relay.publish(proto, host, "127.0.0.1", port)


def _recv_all(sock: socket.socket) -> bytes:
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


def test_tcp_echo_with_half_close(relay: Relay) -> None:
    server, port = tcp_server(_echo_until_eof_then_say_bye)
    with server, socket.create_connection(_published(relay, port), timeout=10) as client:
        client.sendall(b"hello")
        client.shutdown(socket.SHUT_WR)
        assert _recv_all(client) == b"hellobye"


def test_large_transfer_arrives_intact(relay: Relay) -> None:
    server, port = tcp_server(_hash_then_reply)
    payload = os.urandom(1 << 20) * 24  # 24 MiB
    with server, socket.create_connection(_published(relay, port), timeout=30) as client:
        sender = threading.Thread(
            target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR))
        )
        sender.start()
        answer = _recv_all(client)
        sender.join()
    assert answer.decode() == hashlib.sha256(payload).hexdigest()


def test_many_connections_at_once(relay: Relay) -> None:
    server, port = tcp_server(_echo_until_eof_then_say_bye)
    address = _published(relay, port)
    with server:
        clients = [socket.create_connection(address, timeout=10) for _ in range(20)]
        for i, c in enumerate(clients):
            c.sendall(f"n{i}".encode())
            c.shutdown(socket.SHUT_WR)
        assert [_recv_all(c) for c in clients] == [f"n{i}bye".encode() for i in range(20)]
        for c in clients:
            c.close()


def test_a_refused_target_closes_the_client(relay: Relay) -> None:
    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()  # nothing listens there now
    with (
        socket.create_connection(_published(relay, port), timeout=10) as client,
        contextlib.suppress(ConnectionResetError),
    ):
        assert client.recv(10) == b""


def test_connector_reports_the_errno() -> None:
    outside, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker = threading.Thread(target=serve_connector, args=(inside,), daemon=True)
    worker.start()
    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    with pytest.raises(ConnectionRefusedError, match=f"tcp 127.0.0.1:{port}"):
        connect_via(outside, "tcp", "127.0.0.1", port)
    outside.close()
    worker.join(timeout=5)
    inside.close()
    assert not worker.is_alive()


def test_udp_echo(relay: Relay) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))

    def echo() -> None:
        with contextlib.suppress(OSError):
            while True:
                data, addr = server.recvfrom(65535)
                server.sendto(data.upper(), addr)

    threading.Thread(target=echo, daemon=True).start()
    address = _published(relay, server.getsockname()[1], "udp")
    with server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        for word in (b"one", b"two"):
            client.sendto(word, address)
            assert client.recvfrom(100)[0] == word.upper()
