"""A container leaving its network after it exited: its veth goes with its network namespace
(``LinuxKernel.release_link``), and a new veth of the same name makes way for itself. As root, on
real namespaces without the runtime: each "container" is ``unshare --net`` running ``sleep``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import struct
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.runtime import network as netmod
from pytest_minidock.runtime.network import Networks, _Netlink
from tests.conftest import require_tool

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = [pytest.mark.privileged, pytest.mark.netns]


@pytest.fixture
def spawn() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Processes in network namespaces of their own; each is killed (by pid) and reaped."""
    for tool in ("unshare", "ip"):
        require_tool(tool)
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["unshare", "--net", "--", "sleep", "60"])
        procs.append(proc)
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{proc.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare did not make its namespace"
            time.sleep(0.002)
        return proc

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture
def nets(tmp_path: Path) -> Iterator[Networks]:
    networks = Networks(tmp_path / "root")
    yield networks
    networks.destroy()


def _exists(name: str) -> bool:
    with _Netlink.open() as nl:
        return nl.link_index(name) is not None


def _gone_within(name: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _exists(name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def _dead(name: str, seconds: float = 10) -> bool:
    """Wait until the namespace of ``name``'s peer is dead (or the link gone): a process that
    was killed may still have its namespace held for a grace period by the sockets it was
    configured through."""
    deadline = time.monotonic() + seconds
    with _Netlink.open() as nl:
        while (found := nl.link(name)) is not None and not nl.peer_gone(found[1]):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0005)
    return True


@pytest.fixture
def deletions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The links whose deletion is asked of the kernel (``RTM_DELLINK``) from now on, by name
    (the request names the link by index)."""
    asked: list[str] = []
    names: dict[int, str] = {}
    real_request = _Netlink.request
    real_link = _Netlink.link

    def link(self: _Netlink, name: str) -> tuple[int, int | None] | None:
        found = real_link(self, name)
        if found is not None:
            names[found[0]] = name
        return found

    def request(self: _Netlink, what: str, *requests: tuple[bytes, int, int]) -> None:
        for body, mtype, _ in requests:
            if mtype == netmod._RTM_DELLINK:
                index = struct.unpack_from("=i", body, 4)[0]
                asked.append(names.get(index, str(index)))
        real_request(self, what, *requests)

    monkeypatch.setattr(_Netlink, "link", link)
    monkeypatch.setattr(_Netlink, "request", request)
    return asked


def _cid(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def test_the_peer_namespace_id_says_when_it_is_dead(
    nets: Networks, spawn: Callable[[], subprocess.Popen[bytes]]
) -> None:
    proc = spawn()
    a = nets.attach("bridge", _cid("a"), proc.pid, name="a")
    with _Netlink.open() as nl:
        found = nl.link(a.host_ifname)
        assert found is not None
        assert found[1] is not None
        assert found[1] >= 0
        assert not nl.peer_gone(found[1])
        bridge = nl.link(nets.get("bridge").bridge)
        assert bridge is not None
        assert bridge[1] is None  # no peer elsewhere
        assert not nl.peer_gone(bridge[1])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _dead(a.host_ifname)
    assert _gone_within(a.host_ifname, 10)  # the kernel deletes the pair with the namespace
    nets.detach(_cid("a"))


def test_an_exited_containers_veth_is_left_to_its_namespace(
    nets: Networks, spawn: Callable[[], subprocess.Popen[bytes]], deletions: list[str]
) -> None:
    proc = spawn()
    a = nets.attach("bridge", _cid("a"), proc.pid, name="a")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _dead(a.host_ifname)
    t0 = time.perf_counter()
    nets.detach(_cid("a"))
    elapsed = time.perf_counter() - t0
    assert deletions == []  # nothing asked of the kernel, nothing waited for
    assert nets.attachments(_cid("a")) == []
    assert _gone_within(a.host_ifname, 10)  # the kernel took it with the namespace
    assert elapsed < 0.25, f"detach took {elapsed * 1000:.0f} ms"


def test_a_live_containers_veth_is_deleted_before_detach_returns(
    nets: Networks, spawn: Callable[[], subprocess.Popen[bytes]], deletions: list[str]
) -> None:
    proc = spawn()
    a = nets.attach("bridge", _cid("a"), proc.pid, name="a")
    nets.detach(_cid("a"))
    assert deletions == [a.host_ifname]
    assert not _exists(a.host_ifname)


def test_attaching_again_at_once_after_an_exit_makes_way_for_the_new_veth(
    nets: Networks, spawn: Callable[[], subprocess.Popen[bytes]]
) -> None:
    """A container that exited, left its network and joins it again from a new namespace (as a
    restart does): its veth's name may still be taken by the old one, which the kernel has not
    deleted yet; the new one replaces it."""
    cid = _cid("again")
    for _ in range(5):
        proc = spawn()
        a = nets.attach("bridge", cid, proc.pid, name="again")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _dead(a.host_ifname)
        nets.detach(cid)
    proc = spawn()
    a = nets.attach("bridge", cid, proc.pid, name="again")
    inside = subprocess.run(
        ["nsenter", f"--target={proc.pid}", "--net", "ip", "-o", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"inet {a.ip}/" in inside


def test_a_stale_veth_of_the_same_name_is_replaced(
    nets: Networks, spawn: Callable[[], subprocess.Popen[bytes]]
) -> None:
    """A veth named as this container's on this network, left by a crash: attach deletes it."""
    cid = _cid("stale")
    name = netmod.veth_name(cid, nets.default().id)
    subprocess.run(
        ["ip", "link", "add", name, "type", "veth", "peer", "name", name[:-1] + "x"], check=True
    )
    try:
        proc = spawn()
        a = nets.attach("bridge", cid, proc.pid, name="stale")
        assert a.host_ifname == name
        shown = subprocess.run(
            ["ip", "-o", "link", "show", name], capture_output=True, text=True, check=True
        ).stdout
        assert f"master {nets.default().bridge}" in shown
        assert "link-netnsid" in shown  # its peer is in the container's namespace now
    finally:
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


def test_in_background_a_live_containers_veth_goes_by_the_settle(
    nets: Networks, spawn: Callable[[], subprocess.Popen[bytes]], deletions: list[str]
) -> None:
    proc = spawn()
    a = nets.attach("bridge", _cid("a"), proc.pid, name="a")
    with netmod.releases_in_background():
        nets.detach(_cid("a"))
        assert deletions == []  # asked as the block ends (by a thread)
    assert nets.attachments(_cid("a")) == []
    netmod.settle()
    assert deletions == [a.host_ifname]
    assert not _exists(a.host_ifname)
    assert not netmod._pending
