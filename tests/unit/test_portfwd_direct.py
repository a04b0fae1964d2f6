"""The in-place relay of rootless published ports (``DirectConnector``), in this process's own
namespace: a target found only when connections come, connections made without blocking the
relay, a paused start, withdrawing one container's ports, UDP."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.runtime import portfwd
from pytest_minidock.runtime.portfwd import DirectConnector, Relay
from tests.support.servers import tcp_server

if TYPE_CHECKING:
    from collections.abc import Iterator


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _echo_server() -> tuple[socket.socket, int]:
    return tcp_server(_echo)


def _exchange(port: int, payload: bytes = b"hello") -> bytes:
    """What comes back for ``payload``; a connection the relay closed unread (a reset) gives
    what came until then."""
    data = b""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as c,
        contextlib.suppress(ConnectionResetError, BrokenPipeError, OSError),
    ):
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        while chunk := c.recv(65536):
            data += chunk
    return data


@pytest.fixture
def relay() -> Iterator[Relay]:
    r = Relay(DirectConnector())
    try:
        yield r
    finally:
        r.close()


def _host_socket(kind: int = socket.SOCK_STREAM) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


def test_the_target_is_found_when_connections_come(relay: Relay) -> None:
    server, port = _echo_server()
    target: list[tuple[str, int]] = []
    asked: list[int] = []

    def resolve() -> tuple[str, int] | None:
        asked.append(1)
        return target[0] if target else None

    host = _host_socket()
    _, host_port = relay.publish("tcp", host, "127.0.0.1", 0, resolve=resolve, group="c1")
    assert _exchange(host_port) == b""  # nowhere to go yet: the client is closed
    target.append(("127.0.0.1", port))
    assert _exchange(host_port) == b"hello"
    assert _exchange(host_port, b"x" * 3_000_000) == b"x" * 3_000_000
    assert len(asked) == 3  # (once per connection: remembering is the resolver's business)
    server.close()


def test_a_refused_target_closes_the_client_and_the_relay_goes_on(relay: Relay) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    server, port = _echo_server()
    a, b = _host_socket(), _host_socket()
    _, to_dead = relay.publish("tcp", a, "127.0.0.1", dead_port, group="dead")
    _, to_live = relay.publish("tcp", b, "127.0.0.1", port, group="live")
    assert _exchange(to_dead) == b""
    assert _exchange(to_live) == b"hello"
    server.close()


def test_a_paused_relay_waits_for_resume() -> None:
    server, port = _echo_server()
    r = Relay(DirectConnector(), paused=True)
    try:
        host = _host_socket()
        _, host_port = r.publish("tcp", host, "127.0.0.1", port, group="c")
        assert {host.fileno()} <= r.fds()
        with socket.create_connection(("127.0.0.1", host_port), timeout=10) as c:
            c.settimeout(0.3)  # (queued by the kernel; nobody accepts it yet)
            c.sendall(b"early")
            with pytest.raises(TimeoutError):
                c.recv(10)
            r.resume()
            c.settimeout(10)
            assert c.recv(10) == b"early"
    finally:
        r.close()
        server.close()


def test_withdraw_closes_a_groups_sockets_and_connections(relay: Relay) -> None:
    server, port = _echo_server()
    mine, theirs = _host_socket(), _host_socket()
    _, my_port = relay.publish("tcp", mine, "127.0.0.1", port, group="mine")
    _, their_port = relay.publish("tcp", theirs, "127.0.0.1", port, group="theirs")
    held = socket.create_connection(("127.0.0.1", my_port), timeout=10)
    held.sendall(b"ping")
    assert held.recv(10) == b"ping"
    relay.withdraw("mine")
    assert mine.fileno() == -1  # closed: the port is the owner's alone again
    held.settimeout(10)
    with contextlib.suppress(ConnectionResetError):
        assert held.recv(10) == b""  # its open connection went with it
    held.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", my_port), timeout=10).close()
    assert _exchange(their_port) == b"hello"  # the other container's ports are untouched
    server.close()


def test_udp_datagrams_go_to_the_target_and_answers_come_back(relay: Relay) -> None:
    inside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inside.bind(("127.0.0.1", 0))
    inside.settimeout(10)
    host = _host_socket(socket.SOCK_DGRAM)
    target = inside.getsockname()
    relay.publish("udp", host, "127.0.0.1", 0, resolve=lambda: target, group="u")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"question", host.getsockname())
        data, addr = inside.recvfrom(100)
        assert data == b"question"
        inside.sendto(b"answer", addr)
        assert client.recvfrom(100)[0] == b"answer"
    inside.close()


def test_the_resolver_asks_the_state_until_it_answers() -> None:
    answers: list[tuple[str, int] | None] = [None, ("10.0.0.2", 80)]
    calls: list[tuple[str, str, str, int]] = []

    class State:
        def target_of(self, cid: str, proto: str, ip: str, port: int) -> tuple[str, int] | None:
            calls.append((cid, proto, ip, port))
            return answers.pop(0)

    resolve = portfwd._resolver(State(), "c1", "tcp", "127.0.0.1", 8080)
    assert resolve() is None
    assert resolve() == ("10.0.0.2", 80)
    assert resolve() == ("10.0.0.2", 80)  # remembered
    assert calls == [("c1", "tcp", "127.0.0.1", 8080)] * 2


def test_nothing_is_relayed_without_ports_or_a_holder() -> None:
    assert portfwd.relay_published("/nowhere", "c1", ()) is None
    with _host_socket() as host:  # root's ports (no holder joined): nftables forwards them
        assert portfwd.relay_published("/nowhere", "c1", (host.fileno(),)) is None


def test_a_relayed_reservation_listens_and_is_taken_again_at_once() -> None:
    from pytest_minidock.errors import PortInUse
    from pytest_minidock.runtime.ports import PortSpec, reserve

    held = reserve([PortSpec(80)], relayed=True)
    (sock,) = held.sockets
    port = held.mappings[0].host_port
    with pytest.raises(PortInUse):  # listening: no other bind of the port, reusing or not
        reserve([PortSpec(80, host_port=port)], relayed=True)
    client = socket.create_connection(("127.0.0.1", port), timeout=10)  # (it listens)
    with socket.socket(fileno=os.dup(sock.fileno())) as listener:
        conn, _ = listener.accept()
    conn.close()  # the host side closes first, as the relay does: TIME_WAIT on the port
    client.close()
    held.close()
    with pytest.raises(PortInUse):  # a plain bind waits out the TIME_WAIT ...
        reserve([PortSpec(80, host_port=port)], relayed=False)
    reserve([PortSpec(80, host_port=port)], relayed=True).close()  # ... a relayed one does not
