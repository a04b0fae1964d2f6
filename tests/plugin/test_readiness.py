"""The default wait's look at a container's socket table: ``sock_diag`` netlink, asked for LISTEN
sockets only from a socket made in the container's network namespace (``WaitTarget.listening``),
agreeing with the ``/proc/<pid>/net/tcp*`` tables it replaces; PID 1 watched through a pidfd."""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING

import pytest

from pytest_minidock import wait
from pytest_minidock.fixtures.handle import SessionEngine, WaitTarget
from pytest_minidock.spec import Overrides

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_minidock.api import Engine


def _diag() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, wait.NETLINK_SOCK_DIAG)


def test_sock_diag_sees_the_listening_ports_of_its_namespace() -> None:
    v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # bound, not listening
    try:
        v4.bind(("127.0.0.1", 0))
        v4.listen()
        v6.bind(("::1", 0))
        v6.listen()
        bound.bind(("127.0.0.1", 0))
        ports = {v4.getsockname()[1], v6.getsockname()[1]}
        with _diag() as sock:
            found = wait.diag_listening_ports(sock)
            assert ports <= found
            assert bound.getsockname()[1] not in found
            assert ports <= wait.listening_ports(os.getpid())  # the same table, read from /proc
            gone = v4.getsockname()[1]
            v4.close()
            assert gone not in wait.diag_listening_ports(sock)
    finally:
        for s in (v4, v6, bound):
            s.close()


@pytest.mark.privileged
@pytest.mark.rootless
@pytest.mark.netns
def test_a_wait_target_reads_the_container_namespace_through_sock_diag(
    plugin_root: Path, engine: Engine
) -> None:
    eng = SessionEngine(plugin_root)
    command = ("sh", "-c", "sleep 0.3; exec httpd -f -p 8080 -h /etc")
    with eng.run("busybox", Overrides(command=command)) as box:
        with WaitTarget(box) as target:
            assert target.exit_code() is None
            assert 8080 not in target.listening((8080,))
            assert target._diag is not None  # not the /proc fallback
            t0 = time.monotonic()
            while 8080 not in target.listening((8080,)):
                assert time.monotonic() - t0 < 10, "httpd never listened"
                time.sleep(0.01)
            assert target.listening((8080,)) == wait.listening_ports(box.pid)
        box.stop(timeout=0)
        with WaitTarget(box) as target:
            assert target.exit_code() is not None  # its pidfd says PID 1 is gone
