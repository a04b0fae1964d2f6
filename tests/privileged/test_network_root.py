"""Networks and published ports as root, on real namespaces but without the container runtime:
each "container" is a child started with ``unshare --net --mount`` whose /etc/hosts is a bind
mount of the hosts file that ``Networks`` rewrites (issue 4)."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.errors import NetworkError, PortInUse
from pytest_minidock.runtime import ports
from pytest_minidock.runtime.network import Networks
from pytest_minidock.runtime.state import Owner
from tests.conftest import require_tool

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# Not ``rootless``: its "containers" are made with unshare(1) in the host's user namespace and it
# reads the host's links and nftables tables; rootless networks live in the user's holder and are
# tested through the runtime (test_ports_runtime.py, tests/plugin) and in test_rootless_network.py.
pytestmark = [pytest.mark.privileged, pytest.mark.netns]

BASE_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n"
MiB = 1 << 20

UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(b"echo:" + data, peer)
"""

# Echoes everything; after the client's half-close (EOF) it still sends a trailer, then closes.
TCP_ECHO = """
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 7000))
srv.listen()
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        while data := conn.recv(1 << 20):
            conn.sendall(data)
        conn.sendall(b"<eof seen>")
"""

# Tells each client the address it sees the client come from.
WHO_AM_I = """
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 7001))
srv.listen()
print("ready", flush=True)
while True:
    conn, peer = srv.accept()
    with conn:
        conn.sendall(peer[0].encode() + b"\\n")
"""


@dataclass
class Child:
    """A process in its own network and mount namespaces, /etc/hosts bind-mounted from ``hosts``."""

    name: str
    proc: subprocess.Popen[bytes]
    hosts: Path
    cid: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, *argv: str, stdin: bytes = b"", timeout: float = 20) -> str:
        """Run ``argv`` in its network and mount namespaces; its stdout."""
        done = subprocess.run(
            ["nsenter", f"--target={self.pid}", "--net", "--mount", "--", *argv],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        return done.stdout.decode(errors="replace")


def _read_line(proc: subprocess.Popen[bytes], timeout: float = 20) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"process {proc.pid} ({proc.args!r}) did not report ready in {timeout}s")
    return proc.stdout.readline().decode().strip()


@pytest.fixture(scope="module")
def tools() -> None:
    for tool in ("unshare", "nsenter", "busybox", "nft", "ip"):
        require_tool(tool)


@pytest.fixture
def spawn(tmp_path: Path, tools: None) -> Iterator[Callable[..., Child]]:
    """Start "containers"; every one is killed (by its pid) and reaped when the test ends."""
    children: list[Child] = []

    def start(name: str, *argv: str, ready_line: bool = False) -> Child:
        hosts = tmp_path / f"hosts-{name}"
        hosts.write_text(BASE_HOSTS.format(name))
        script = 'mount --bind "$0" /etc/hosts && echo mounted && exec "$@"'
        proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--", "sh", "-c", script, str(hosts), *argv],
            stdout=subprocess.PIPE,
        )
        child = Child(name, proc, hosts, hashlib.sha256(name.encode()).hexdigest())
        children.append(child)
        assert _read_line(proc) == "mounted"
        if ready_line:
            assert _read_line(proc) == "ready"
        return child

    yield start
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.proc.wait(timeout=10)
        if child.proc.stdout is not None:
            child.proc.stdout.close()


@pytest.fixture
def nets(tmp_path: Path, tools: None) -> Iterator[Networks]:
    """A root's networks; everything they made is destroyed afterwards, even on failure."""
    networks = Networks(tmp_path / "root")
    yield networks
    networks.destroy()


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def _tables() -> str:
    done = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    return done.stdout


def _table(nets: Networks) -> str:
    done = subprocess.run(
        ["nft", "list", "table", "ip", nets.table], capture_output=True, text=True, check=False
    )
    return done.stdout


def _http_get(url: str, timeout: float = 10) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body: bytes = response.read()
                return body
        except OSError:  # the server may not be listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _httpd(spawn: Callable[..., Child], name: str, tmp_path: Path) -> Child:
    www = tmp_path / f"www-{name}"
    www.mkdir()
    (www / "index.html").write_text(f"I am {name}\n")
    return spawn(name, "busybox", "httpd", "-f", "-p", "80", "-h", str(www))


def _nc_get(child: Child, host: str, port: int = 80, deadline: float = 10) -> str:
    """An HTTP GET made from inside ``child`` with busybox nc (retried while the peer starts)."""
    request = f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
    deadline += time.monotonic()
    while True:
        out = child.run("busybox", "nc", "-w", "2", host, str(port), stdin=request)
        if out or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


# -- names ----------------------------------------------------------------------------------------
def test_two_members_reach_each_other_by_name_and_alias(
    nets: Networks, spawn: Callable[..., Child], tmp_path: Path
) -> None:
    nets.create("app-net")
    web = _httpd(spawn, "web", tmp_path)
    nets.attach("app-net", web.cid, web.pid, name="web", hosts_file=web.hosts, hostname="web")
    db = _httpd(spawn, "db", tmp_path)
    a = nets.attach(
        "app-net",
        db.cid,
        db.pid,
        name="db",
        aliases=["database"],
        hosts_file=db.hosts,
        hostname="db",
    )
    # the container started first learns the later one's name: its /etc/hosts (a bind mount of
    # the file) was rewritten in place
    assert f"{a.ip}\tdb database {db.cid[:12]}" in web.run("cat", "/etc/hosts")
    assert "I am db" in _nc_get(web, "db")
    assert "I am db" in _nc_get(web, "database")
    assert "I am web" in _nc_get(db, "web")
    # its own hostname resolves to its address, localhost still to loopback
    assert f"{a.ip}\tdb" in db.run("cat", "/etc/hosts")
    assert db.run("busybox", "ping", "-c1", "-W2", "db").startswith(f"PING db ({a.ip})")
    assert db.run("busybox", "ping", "-4", "-c1", "-W2", "localhost").startswith(
        "PING localhost (127.0.0.1)"
    )
    nets.detach(db.cid)
    assert "db" not in web.run("cat", "/etc/hosts").split()


def test_attach_is_fast_and_refuses_the_hosts_own_namespace(
    nets: Networks, spawn: Callable[..., Child]
) -> None:
    net = nets.create("fast")
    holder = spawn("holder", "sleep", "60")
    with pytest.raises(NetworkError, match=r"shares this host's network namespace"):
        nets.attach("fast", "f" * 64, os.getpid(), name="me")
    assert nets.inspect("fast")["Containers"] == {}
    assert "master " + net.bridge not in _links()
    t0 = time.perf_counter()
    a = nets.attach("fast", holder.cid, holder.pid, name="holder")
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.25, f"attach took {elapsed * 1000:.0f} ms"
    addr = holder.run("ip", "-o", "addr", "show", "dev", "eth0")
    assert f"inet {a.ip}/24 brd " in addr
    assert "inet6" not in addr  # IPv4 only, as docker's networks without IPv6
    routes = holder.run("ip", "route")
    assert f"default via {net.gateway} dev eth0 proto static mtu {net.mtu}" in routes
    assert f"link/ether {a.mac} " in holder.run("ip", "-o", "link", "show", "eth0")
    assert " mtu 65535 " in holder.run("ip", "-o", "link", "show", "eth0")
    assert "<LOOPBACK,UP," in holder.run("ip", "-o", "link", "show", "lo")


def test_a_bridge_lost_since_its_network_was_made_is_made_again(
    nets: Networks, spawn: Callable[..., Child]
) -> None:
    net = nets.create("lost")
    subprocess.run(["ip", "link", "del", net.bridge], check=True)  # as after a reboot
    holder = spawn("holder", "sleep", "60")
    a = nets.attach("lost", holder.cid, holder.pid, name="holder")
    assert (
        f"inet {net.gateway}/24 "
        in subprocess.run(
            ["ip", "-o", "addr", "show", "dev", net.bridge],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert Path(f"/proc/sys/net/ipv4/conf/{net.bridge}/route_localnet").read_text() == "1\n"
    assert f"inet {a.ip}/24 " in holder.run("ip", "-o", "addr", "show", "dev", "eth0")


# -- published ports ------------------------------------------------------------------------------
def test_httpd_answers_on_its_published_loopback_port(
    nets: Networks, spawn: Callable[..., Child], tmp_path: Path
) -> None:
    web = _httpd(spawn, "web", tmp_path)
    nets.attach("bridge", web.cid, web.pid, name="web", hosts_file=web.hosts)
    with ports.reserve(ports.parse_publish("0:80")) as reserved:
        ports.publish(nets, web.cid, "bridge", reserved)
        [m] = nets.ports(web.cid)
        assert m.host_ip == "127.0.0.1"
        assert m.host_port == reserved.mappings[0].host_port > 0
        assert ports.format_port(nets.ports(web.cid), "80") == f"127.0.0.1:{m.host_port}\n"
        # the reservation holds the port while DNAT carries the traffic past it
        with socket.socket() as other, pytest.raises(OSError, match="Address already in use"):
            other.bind(("127.0.0.1", m.host_port))
        for _ in range(3):
            assert _http_get(f"http://127.0.0.1:{m.host_port}/") == b"I am web\n"
        ports.unpublish(nets, web.cid)
        assert nets.ports(web.cid) == []
        with pytest.raises(OSError):  # no DNAT now: the bound, non-listening socket refuses
            urllib.request.urlopen(f"http://127.0.0.1:{m.host_port}/", timeout=2)


def test_lease_then_connect_forwards_a_port_before_the_links_exist(
    nets: Networks, spawn: Callable[..., Child], tmp_path: Path
) -> None:
    """The runtime's two halves of ``attach``: the lease (address, forwarded ports) while the
    container's process is being made, the links once its network namespace exists."""
    web = _httpd(spawn, "web", tmp_path)
    with ports.reserve(ports.parse_publish("0:80")) as reserved:
        lease = nets.lease(
            "bridge", web.cid, name="web", hosts_file=web.hosts, mappings=reserved.mappings
        )
        [m] = nets.ports(web.cid)
        assert f" {m.host_port} : {lease.endpoint.ip} . 80" in _table(nets)
        assert lease.endpoint.host_ifname not in _links()
        t0 = time.perf_counter()
        a = nets.connect(lease, web.pid)
        elapsed = time.perf_counter() - t0
        assert a == lease.attachment()
        assert f"inet {a.ip}/24 brd " in web.run("ip", "-o", "addr", "show", "dev", "eth0")
        assert _http_get(f"http://127.0.0.1:{m.host_port}/") == b"I am web\n"
        nets.detach(web.cid)
    assert elapsed < 0.25, f"connect took {elapsed * 1000:.0f} ms"
    assert a.host_ifname not in _links()
    assert "elements" not in _table(nets)


def test_the_first_connection_after_connect_is_answered_at_once(
    nets: Networks, spawn: Callable[..., Child], tmp_path: Path
) -> None:
    """No packet is lost to a link the kernel has not activated yet (the noop queue of a veth
    or bridge that came up without a carrier), which would cost an ARP retry: 1 s."""
    nets.create("quick")
    slowest = 0.0
    for i in range(8):  # each one alone on the bridge: its carrier comes and goes every time
        web = _httpd(spawn, f"web{i}", tmp_path)
        with ports.reserve(ports.parse_publish("0:80")) as reserved:
            lease = nets.lease("quick", web.cid, name=f"web{i}", mappings=reserved.mappings)
            nets.connect(lease, web.pid)
            t0 = time.perf_counter()
            with contextlib.suppress(ConnectionRefusedError):  # (httpd not listening yet)
                socket.create_connection(("127.0.0.1", reserved.mappings[0].host_port), 5).close()
            slowest = max(slowest, time.perf_counter() - t0)
            nets.detach(web.cid)
        os.kill(web.pid, signal.SIGKILL)
    assert slowest < 0.5, f"a first connection took {slowest * 1000:.0f} ms"


def test_the_netlink_batch_makes_the_table_nft_would(nets: Networks, tmp_path: Path) -> None:
    """The rules go to the kernel as one nf_tables batch; ``nft -f`` given its script makes the
    same table (so the script, which people and the unit tests read, is the truth)."""
    from pytest_minidock.runtime import nftables

    bridges = [
        nftables.Bridge("md-h4a000000000", "10.123.0.0/24"),
        nftables.Bridge("md-h4b000000000", "10.123.16.0/20", internal=True),
    ]
    dnats = [
        nftables.Dnat("tcp", "127.0.0.1", 8080, "10.123.0.2", 80),
        nftables.Dnat("udp", "0.0.0.0", 5353, "10.123.0.3", 53),
    ]
    key = hashlib.sha256(str(tmp_path).encode()).hexdigest()[:8]
    ours, theirs = f"minidock_t{key}a", f"minidock_t{key}b"
    batch = nftables.ruleset(ours, bridges, dnats)
    try:
        nftables.commit(batch)
        script = batch.script.replace(ours, theirs)
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
        listed = {}
        for table in (ours, theirs):
            done = subprocess.run(
                ["nft", "list", "table", "ip", table], capture_output=True, text=True, check=True
            )
            listed[table] = done.stdout.replace(table, "T")
        assert listed[ours] == listed[theirs]
        assert "ip saddr 10.123.16.0/20 ct status dnat masquerade" in listed[ours]
        # elements go exactly: one deleted, the other kept
        nftables.commit(nftables.elements("delete", ours, dnats[:1]))
        done = subprocess.run(
            ["nft", "list", "table", "ip", ours], capture_output=True, text=True, check=True
        )
        assert "8080" not in done.stdout
        assert "5353 : 10.123.0.3 . 53" in done.stdout
        with pytest.raises(OSError, match="No such file or directory: delete element"):
            nftables.commit(nftables.elements("delete", ours, dnats[:1]))
    finally:
        nftables.commit(nftables.delete_table(ours))
        nftables.commit(nftables.delete_table(theirs))
    assert ours not in _tables()


def _host_address() -> str:
    """An IPv4 address of this host that is not loopback (its default route's source)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("203.0.113.1", 9))  # no packet is sent: this only picks a source address
        address: str = s.getsockname()[0]
    if address.startswith("127."):
        pytest.fail("this host has no non-loopback IPv4 address to publish on")
    return address


def test_a_port_published_on_every_address_reaches_the_container_from_anywhere(
    nets: Networks, spawn: Callable[..., Child], tmp_path: Path
) -> None:
    net = nets.create("any")
    web = _httpd(spawn, "web", tmp_path)
    nets.attach("any", web.cid, web.pid, name="web")
    peer = spawn("peer", "sleep", "60")
    nets.attach("any", peer.cid, peer.pid, name="peer")
    web_ip = nets.attachments(web.cid)[0].ip
    other = nets.create("another")  # sorts before "any": its isolation rules come first
    stranger = spawn("stranger", "sleep", "60")
    nets.attach("another", stranger.cid, stranger.pid, name="stranger")
    with ports.reserve(ports.parse_publish("0.0.0.0::80")) as reserved:
        ports.publish(nets, web.cid, "any", reserved)
        port = reserved.mappings[0].host_port
        assert reserved.mappings[0].host_ip == "0.0.0.0"
        assert _http_get(f"http://127.0.0.1:{port}/") == b"I am web\n"
        assert _http_get(f"http://{_host_address()}:{port}/") == b"I am web\n"
        # from a container, through the host's address on the bridge (hairpin NAT)
        assert "I am web" in _nc_get(peer, net.gateway, port)
        assert "I am web" in _nc_get(web, net.gateway, port)  # and back into itself
        # from a container of another network (isolated from this one but for published ports)
        assert "I am web" in _nc_get(stranger, other.gateway, port)
        assert _nc_get(stranger, web_ip, 80, deadline=1) == ""


def test_udp_echo_through_a_published_port(nets: Networks, spawn: Callable[..., Child]) -> None:
    echo = spawn("echo", sys.executable, "-c", UDP_ECHO, ready_line=True)
    nets.create("udp-net")
    nets.attach("udp-net", echo.cid, echo.pid, name="echo")
    with ports.reserve(ports.parse_publish("127.0.0.1::9999/udp")) as reserved:
        ports.publish(nets, echo.cid, "udp-net", reserved)
        port = reserved.mappings[0].host_port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            for i in range(20):
                client.sendto(f"ping {i}".encode(), ("127.0.0.1", port))
                data, peer = client.recvfrom(65535)
                assert data == f"echo:ping {i}".encode()
                assert peer == ("127.0.0.1", port)  # the reply comes from where it was sent
            big = os.urandom(60000)
            client.sendto(big, ("127.0.0.1", port))
            assert client.recvfrom(65535)[0] == b"echo:" + big


def test_100_mb_through_a_published_port_intact_with_half_close(
    nets: Networks, spawn: Callable[..., Child]
) -> None:
    server = spawn("echo", sys.executable, "-c", TCP_ECHO, ready_line=True)
    nets.create("bulk")
    nets.attach("bulk", server.cid, server.pid, name="echo")
    with ports.reserve(ports.parse_publish("0:7000")) as reserved:
        ports.publish(nets, server.cid, "bulk", reserved)
        port = reserved.mappings[0].host_port
        block = os.urandom(MiB)
        sent = hashlib.sha256()
        received = hashlib.sha256()
        count = 0
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:

            def send() -> None:
                for i in range(100):
                    chunk = i.to_bytes(4, "big") + block[4:]
                    sent.update(chunk)
                    conn.sendall(chunk)
                conn.shutdown(socket.SHUT_WR)  # half-close: the reply still comes back

            writer = threading.Thread(target=send)
            writer.start()
            while data := conn.recv(1 << 20):
                received.update(data)
                count += len(data)
            writer.join()
        sent.update(b"<eof seen>")
        assert count == 100 * MiB + len(b"<eof seen>")
        assert received.hexdigest() == sent.hexdigest()


def _fds_but_netlink() -> int:
    """How many descriptors this process has open, less its netlink sockets: the daemon threads
    that finish deleting links (earlier tests', in-process pytest sessions') close theirs at any
    moment."""
    lines = Path("/proc/self/net/netlink").read_text().splitlines()[1:]
    netlink = {f"socket:[{line.split()[-1]}]" for line in lines if line.split()}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor, closed by now)
            count += os.readlink(f"/proc/self/fd/{fd}") not in netlink
    return count


def test_a_taken_port_is_a_clear_error_and_leaves_nothing_behind(
    nets: Networks, spawn: Callable[..., Child], tmp_path: Path
) -> None:
    web = _httpd(spawn, "web", tmp_path)
    nets.create("ports")
    nets.attach("ports", web.cid, web.pid, name="web")
    fds_before = _fds_but_netlink()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(PortInUse) as info:
            ports.reserve(ports.parse_publish("0:81") + ports.parse_publish(f"{taken}:80"))
        assert str(info.value).startswith(f"port 127.0.0.1:{taken}/tcp is already in use")
    assert _fds_but_netlink() == fds_before  # the first port's socket is closed
    assert nets.ports(web.cid) == []
    assert "elements" not in _table(nets)
    # and a container cannot take a host port another container publishes
    other = _httpd(spawn, "other", tmp_path)
    nets.attach("ports", other.cid, other.pid, name="other")
    with ports.reserve(ports.parse_publish("0:80")) as held:
        ports.publish(nets, web.cid, "ports", held)
        with pytest.raises(PortInUse, match="is already in use"):
            nets.publish(other.cid, "ports", held.mappings)
        assert _http_get(f"http://127.0.0.1:{held.mappings[0].host_port}/") == b"I am web\n"


# -- outbound access ------------------------------------------------------------------------------
@dataclass
class Outside:
    """A host "outside" (its own netns behind a veth) that tells clients their address."""

    host_side: str  # the address of this host on the link to it
    address: str  # its address


@pytest.fixture
def outside(spawn: Callable[..., Child]) -> Iterator[Outside]:
    """A host "outside", with no route back to any container subnet, so that only masquerading
    lets a container talk to it. Link name and /29 of 198.51.100.0/24 (TEST-NET-2) follow this
    process's pid, so that two test sessions at once do not collide."""
    server = spawn("outside", sys.executable, "-c", WHO_AM_I, ready_line=True)
    link = f"mdtx{os.getpid() % 10**8}"
    base = 8 * (os.getpid() % 32)
    here, there = f"198.51.100.{base + 1}", f"198.51.100.{base + 2}"
    peer = ["peer", "name", "ext0", "netns", str(server.pid)]
    subprocess.run(["ip", "link", "add", link, "type", "veth", *peer], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{here}/29", "dev", link], check=True)
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
        for cmd in (["addr", "add", f"{there}/29", "dev", "ext0"], ["link", "set", "ext0", "up"]):
            subprocess.run(["nsenter", f"--target={server.pid}", "--net", "ip", *cmd], check=True)
        yield Outside(here, there)
    finally:
        subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)


def test_outbound_traffic_is_masqueraded_and_internal_networks_stay_inside(
    nets: Networks, spawn: Callable[..., Child], outside: Outside
) -> None:
    nets.create("out")
    nets.create("inside", internal=True)
    client = spawn("client", "sleep", "60")
    nets.attach("out", client.cid, client.pid, name="client")
    seen_as = client.run("busybox", "nc", "-w", "5", outside.address, "7001").strip()
    assert seen_as == outside.host_side  # masqueraded to this host's address on that link
    shut_in = spawn("shut-in", "sleep", "60")
    nets.attach("inside", shut_in.cid, shut_in.pid, name="shut-in")
    assert shut_in.run("busybox", "nc", "-w", "2", outside.address, "7001") == ""


# -- parallel sessions ----------------------------------------------------------------------------
def _worker(args: tuple[str, str, int]) -> tuple[list[str], str]:
    shared_root, own_root, n = args
    holders = [
        subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "echo up; exec sleep 60"], stdout=subprocess.PIPE
        )
        for _ in range(n)
    ]
    try:
        for h in holders:
            assert _read_line(h) == "up"
        shared = Networks(shared_root)
        ips = [
            shared.attach(
                "shared", f"{os.getpid():08x}{i:056x}", h.pid, name=f"c{os.getpid()}-{i}"
            ).ip
            for i, h in enumerate(holders)
        ]
        own = Networks(own_root)
        subnet = own.create(f"own{os.getpid()}").subnet
        return ips, subnet
    finally:
        for h in holders:
            os.kill(h.pid, signal.SIGKILL)
            h.wait()
            if h.stdout is not None:
                h.stdout.close()


def test_parallel_sessions_never_overlap(tmp_path: Path, tools: None) -> None:
    shared = Networks(tmp_path / "shared")
    roots = [tmp_path / f"own{i}" for i in range(4)]
    try:
        shared.create("shared")
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(4) as pool:
            results = pool.map(_worker, [(str(tmp_path / "shared"), str(r), 6) for r in roots])
        ips = [ip for chunk, _ in results for ip in chunk]
        subnets = [s for _, s in results]
        assert len(ips) == 24
        assert len(set(ips)) == 24
        own_subnets = [*subnets, shared.get("shared").subnet]
        for i, a in enumerate(own_subnets):
            for b in own_subnets[i + 1 :]:
                assert not _overlap(a, b), (a, b)
    finally:
        for r in roots:
            Networks(r).destroy()
        shared.destroy()


def _overlap(a: str, b: str) -> bool:
    import ipaddress

    return ipaddress.IPv4Network(a).overlaps(ipaddress.IPv4Network(b))


# -- nothing leaks --------------------------------------------------------------------------------
def test_no_leftovers_after_detach_remove_and_cleanup(
    tmp_path: Path, spawn: Callable[..., Child]
) -> None:
    nets = Networks(tmp_path / "root")
    names: list[str] = []
    try:
        mine = nets.create("mine", owner=Owner.current("me"))
        dead = nets.create("dead-session", owner=Owner(pid=2**22 + 11, start_time=1))
        kept = nets.create("kept")
        a, b, c = (spawn(n, "sleep", "60") for n in ("a", "b", "c"))
        ea = nets.attach("mine", a.cid, a.pid, name="a", hosts_file=a.hosts)
        eb = nets.attach("mine", b.cid, b.pid, name="b", hosts_file=b.hosts)
        ec = nets.attach("kept", c.cid, c.pid, name="c")
        names += [mine.bridge, dead.bridge, kept.bridge, ea.host_ifname, eb.host_ifname]
        names.append(ec.host_ifname)
        with ports.reserve(ports.parse_publish("0:80") + ports.parse_publish("0:53/udp")) as res:
            ports.publish(nets, b.cid, "mine", res)
        # a veth on one of our bridges that no endpoint claims (a crash between two steps)
        orphan, orphan_peer = f"mdv{os.getpid():012x}"[-15:], f"mdtp{os.getpid() % 10**8}"
        subprocess.run(
            ["ip", "link", "add", orphan, "type", "veth", "peer", "name", orphan_peer], check=True
        )
        subprocess.run(["ip", "link", "set", orphan, "master", kept.bridge], check=True)
        names += [orphan, orphan_peer]
        # detach: lease, veth and the peer's name go
        nets.detach(a.cid)
        assert ea.host_ifname not in _links()
        assert "\ta " not in b.hosts.read_text()
        # b's process dies (a crashed container): cleanup takes its endpoint and ports, the
        # network of the dead session, and the orphan veth
        os.kill(b.pid, signal.SIGKILL)
        b.proc.wait()
        cleaned = nets.cleanup(lambda cid: cid == c.cid)
        assert cleaned.endpoints == (b.cid,)
        assert cleaned.ports == (b.cid,)
        assert cleaned.networks == ("dead-session",)
        links = _links()
        for gone in (eb.host_ifname, dead.bridge, orphan, orphan_peer):
            assert gone not in links
        assert "elements" not in _table(nets)
        # network rm while c is attached is refused; after detaching it goes
        with pytest.raises(NetworkError, match="network kept has active endpoints"):
            nets.remove("kept")
        nets.detach(c.cid)
        nets.remove("kept")
        nets.remove("mine")
        assert nets.list()[0].name == "host"
        assert nets.table not in _tables()
        assert nets.state_json() == {"networks": [], "ports": [], "version": 1}
    finally:
        nets.destroy()
        for name in names:
            subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)
    links = _links()
    for name in names:
        assert f" {name}:" not in links
        assert f" {name}@" not in links
