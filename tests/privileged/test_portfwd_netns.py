"""The rootless port relay across namespaces: a server in a network namespace of its own (only
its loopback), reached from the host's 127.0.0.1 through the connector living in that namespace."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import uuid
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.runtime._sys import CLONE_NEWNET, LinuxSyscalls
from pytest_minidock.runtime.portfwd import Connector, Relay

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.privileged, pytest.mark.netns]


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mdt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        LinuxSyscalls().setns(fd, CLONE_NEWNET)  # this thread only
    finally:
        os.close(fd)


def test_host_port_reaches_a_server_in_another_namespace(netns: str) -> None:
    bound = threading.Event()
    port: list[int] = []

    def serve() -> None:
        _enter(netns)
        with socket.create_server(("127.0.0.1", 0)) as server:
            port.append(server.getsockname()[1])
            bound.set()
            conn, _ = server.accept()
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(b"inside got " + data)

    threading.Thread(target=serve, daemon=True).start()
    assert bound.wait(10)
    # The server is not reachable from the host's own loopback ...
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port[0]), timeout=2).close()
    # ... but is through the relay.
    connector = Connector(lambda: _enter(netns))
    relay = Relay(connector)
    try:
        host = socket.create_server(("127.0.0.1", 0))
        address = relay.publish("tcp", host, "127.0.0.1", port[0])
        with socket.create_connection(address, timeout=10) as client:
            client.sendall(b"ping")
            client.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := client.recv(100):
                answer += chunk
        assert answer == b"inside got ping"
    finally:
        relay.close()
        connector.close()


def test_a_connector_that_cannot_enter_says_so() -> None:
    with pytest.raises(Exception, match="the port connector could not start"):
        Connector(lambda: _enter("/run/netns/minidock-no-such-namespace"))
