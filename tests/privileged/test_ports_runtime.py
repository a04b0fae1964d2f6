"""Containers on networks, end to end through the runtime and the CLI: published ports, names,
outbound NAT, the taken-port error, and nothing left after ``rm`` (issue 4's "done means")."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.api import Engine
from pytest_minidock.errors import MinidockError, PortInUse
from pytest_minidock.spec import Overrides
from tests.conftest import ROOTLESS, make_busybox_root, root_only

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.privileged, pytest.mark.netns, pytest.mark.rootless]

HTTPD = ("httpd", "-f", "-p", "80", "-h", "/etc")


@pytest.fixture(scope="module")
def net_root(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Path:
    return make_busybox_root(tmp_path_factory.mktemp("net-root"), busybox_rootfs)


@pytest.fixture
def engine(net_root: Path) -> Iterator[Engine]:
    eng = Engine(net_root)
    before = {r.id for r in eng.runtime.state.all()}
    yield eng
    for record in eng.runtime.state.all():
        if record.id not in before:
            eng.remove(record.id, force=True)


def in_networks(*argv: str) -> list[str]:
    """``argv`` run where the networks live: here as root, in the user's network holder's
    namespaces rootless."""
    if not ROOTLESS:
        return list(argv)
    from pytest_minidock.runtime import holder

    found = holder.current()
    assert found is not None, "no rootless network holder"
    ns = f"/proc/{found.pid}/ns"
    return ["nsenter", f"--user={ns}/user", f"--net={ns}/net", "--", *argv]


def links(engine: Engine) -> set[str]:
    """The links on the bridges of ``engine``'s networks (the machine may be shared: other
    roots' containers come and go meanwhile)."""
    from pytest_minidock.runtime.network import Networks

    out: set[str] = set()
    for net in Networks(engine.root).list():
        if net.bridge:
            cmd = in_networks("ip", "-o", "link", "show", "master", net.bridge)
            done = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
            out |= {line.split(":")[1].strip().split("@")[0] for line in done.splitlines()}
    return out


def host_port(engine: Engine, cid: str, key: str = "80/tcp") -> int:
    ports = engine.container(cid).config["NetworkSettings"]["Ports"]
    return int(ports[key][0]["HostPort"])


def http_get(port: int, path: str = "/hostname", timeout: float = 10.0) -> bytes:
    """The body of ``GET path`` on 127.0.0.1:port, retried until the server answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                c.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                data = b""
                while chunk := c.recv(65536):
                    data += chunk
            if data.startswith(b"HTTP/1.1 200"):
                return data.split(b"\r\n\r\n", 1)[1]
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no HTTP answer on 127.0.0.1:{port}")
        time.sleep(0.01)


def test_httpd_answers_on_its_published_loopback_port(engine: Engine) -> None:
    s = engine.run("busybox", Overrides(command=HTTPD, publish=("80",)))
    ports = engine.container(s.id).config["NetworkSettings"]["Ports"]
    (binding,) = ports["80/tcp"]
    assert binding["HostIp"] == "127.0.0.1"  # docker's default would be 0.0.0.0: ours is safer
    body = http_get(int(binding["HostPort"]))
    assert body.strip() == engine.container(s.id).config["Spec"]["hostname"].encode()
    mappings = engine.port(s.id)
    assert [(m.container_port, m.proto, m.host_port) for m in mappings] == [
        (80, "tcp", int(binding["HostPort"]))
    ]


def test_two_containers_talk_by_name_and_alias_on_a_user_network(engine: Engine) -> None:
    engine.network_create("talk-net")
    try:
        server = engine.run(
            "busybox",
            Overrides(command=HTTPD, network="talk-net", aliases=("web",)),
            name="server",
        )
        for target in ("server", "web"):
            client = engine.run(
                "busybox",
                Overrides(
                    command=("sh", "-c", f"echo 'GET /hostname HTTP/1.0' | nc {target} 80"),
                    network="talk-net",
                ),
            )
            assert engine.wait(client.id, timeout=30) == 0
            logs = _log(engine, client.id)
            assert engine.container(server.id).config["Spec"]["hostname"] in logs
            engine.remove(client.id)
        engine.remove(server.id, force=True)
    finally:
        engine.network_remove("talk-net", force=True)


def _log(engine: Engine, cid: str) -> str:
    from pytest_minidock.runtime.logs import read_logs

    return b"".join(r.data for r in read_logs(engine.container(cid).dir / "log")).decode()


UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
"""
HOST_PYTHON = ("/usr:/usr:ro", "/usr/lib:/lib:ro", "/usr/lib64:/lib64:ro")
"""Binds that let a busybox container run the host's /usr/bin/python3 (Debian's busybox has no
UDP server)."""


def test_udp_echo_through_a_published_port(engine: Engine) -> None:
    s = engine.run(
        "busybox",
        Overrides(
            command=("/usr/bin/python3", "-S", "-c", UDP_ECHO),
            binds=HOST_PYTHON,
            publish=("0:5353/udp",),
        ),
    )
    port = host_port(engine, s.id, "5353/udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(0.2)
        deadline = time.monotonic() + 10
        while True:
            u.sendto(b"ping over udp", ("127.0.0.1", port))
            try:
                data, _ = u.recvfrom(100)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "no UDP echo"
    assert data == b"ping over udp"


def test_100_mb_through_a_published_port_arrive_intact(engine: Engine) -> None:
    s = engine.run(
        "busybox",
        Overrides(command=("sh", "-c", "nc -l -p 9000 | sha256sum"), publish=("9000",)),
    )
    port = host_port(engine, s.id, "9000/tcp")
    payload = os.urandom(1 << 20)
    digest = hashlib.sha256()
    deadline = time.monotonic() + 10
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    with sock:
        for _ in range(100):
            sock.sendall(payload)
            digest.update(payload)
        sock.shutdown(socket.SHUT_WR)  # a half-close: the container's nc sees the end
        sock.recv(1)
    assert engine.wait(s.id, timeout=60) == 0
    assert _log(engine, s.id).split()[0] == digest.hexdigest()


def test_a_taken_port_is_a_clear_error_and_leaves_nothing(engine: Engine) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        before = links(engine)
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port}/tcp is already in use"):
            engine.run("busybox", Overrides(command=HTTPD, publish=(f"{port}:80",)))
        assert links(engine) == before
    res = subprocess.run(
        [sys.executable, "-m", "pytest_minidock", "--root", str(engine.root), "run", "--rm",
         "-p", f"127.0.0.1:{port}:80", "busybox", "true"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr  # free again: the failed run held nothing


@root_only("rootless outbound goes through slirp4netns or pasta: test_rootless_network.py")
def test_outbound_traffic_is_masqueraded_to_a_host_address(engine: Engine) -> None:
    """A container reaches a server on the host's bridge gateway side (as it would the
    internet through NAT), with no published port involved."""
    srv = socket.socket()
    srv.bind(("0.0.0.0", 0))
    srv.listen()
    port = srv.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            got.append(conn.recv(100))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        s = engine.run("busybox", Overrides(command=("sh", "-c", "true")))
        gateway = engine.container(s.id).config["NetworkSettings"]["Gateway"]
        c = engine.run(
            "busybox",
            Overrides(command=("sh", "-c", f"echo hi-from-container | nc {gateway} {port}")),
        )
        assert engine.wait(c.id, timeout=30) == 0
        t.join(10)
        assert got
        assert got[0].strip() == b"hi-from-container"
    finally:
        srv.close()


def test_nothing_is_left_after_rm(engine: Engine) -> None:
    before = links(engine)
    s = engine.run("busybox", Overrides(command=HTTPD, publish=("80",)))
    port = host_port(engine, s.id)
    http_get(port)
    assert links(engine) - before  # its veth
    engine.remove(s.id, force=True)
    assert links(engine) - before == set()
    nft = in_networks("nft", "list", "ruleset")
    ruleset = subprocess.run(nft, capture_output=True, text=True, check=True).stdout
    assert f" {port} " not in ruleset
    assert f":{port}" not in ruleset
    with socket.socket() as again:  # the host port is free
        if ROOTLESS:  # (the relay closed the connection on the host first: it is in TIME_WAIT)
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
    with pytest.raises(MinidockError):
        engine.container(s.id)


def test_cli_run_p_and_port(net_root: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest_minidock", "--root", str(net_root), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    res = cli("run", "-d", "--name", "webp", "-p", "127.0.0.1:0:80", "busybox", *HTTPD)
    assert res.returncode == 0, res.stderr
    try:
        out = cli("port", "webp").stdout
        assert out.startswith("80/tcp -> 127.0.0.1:")
        port = int(out.strip().rsplit(":", 1)[1])
        assert cli("port", "webp", "80").stdout.strip() == f"127.0.0.1:{port}"
        assert http_get(port).strip()
        info = json.loads(cli("inspect", "webp").stdout)[0]
        assert info["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] == str(port)
        assert info["HostConfig"]["NetworkMode"] == "default"
    finally:
        assert cli("rm", "-f", "webp").returncode == 0
