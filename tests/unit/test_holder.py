"""The rootless network holder's pure parts, without namespaces: where its files live, its
record and when it counts as dead, and its protocol — ``Networks`` driven through
``HolderKernel`` against a stand-in holder (a thread serving a fake kernel on the socket)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import TYPE_CHECKING, Any

import pytest

from pytest_minidock.errors import NetworkError, PrivilegeError, RuntimeFailure
from pytest_minidock.runtime import holder
from pytest_minidock.runtime.holder import Holder, HolderKernel
from pytest_minidock.runtime.holderd import serve
from pytest_minidock.runtime.network import (
    BridgeMissing,
    Networks,
    PortMapping,
    batch_from_wire,
    render_ruleset,
)
from pytest_minidock.runtime.state import process_start_time
from tests.support import servers
from tests.unit.test_network_manager import FakeKernel

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


# -- where ----------------------------------------------------------------------------------------
def test_the_runtime_dir_is_the_override_then_xdg_then_run_user_then_tmp(tmp_path: Path) -> None:
    override = tmp_path / "override"
    assert holder.user_dir({"MINIDOCK_RUNTIME_DIR": str(override)}) == str(override)
    assert (override.stat().st_mode & 0o777) == 0o700
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    assert holder.user_dir({"XDG_RUNTIME_DIR": str(xdg)}) == f"{xdg}/minidock"
    from pytest_minidock.capabilities import host_uid

    uid = host_uid()
    expected = (
        f"/run/user/{uid}/minidock"
        if os.path.isdir(f"/run/user/{uid}") and os.stat(f"/run/user/{uid}").st_uid == uid
        else f"/tmp/minidock-{uid}"
    )
    missing = str(tmp_path / "not-there")
    assert holder.user_dir({"XDG_RUNTIME_DIR": missing}, make=False) == expected


def test_a_runtime_dir_others_may_enter_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PrivilegeError, match=r"shared is not a private directory of this user"):
        holder.user_dir({"MINIDOCK_RUNTIME_DIR": str(shared)})
    link = tmp_path / "link"
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link.symlink_to(private)
    with pytest.raises(PrivilegeError, match=r"link is not a private directory"):
        holder.user_dir({"MINIDOCK_RUNTIME_DIR": str(link)})


# -- the record -----------------------------------------------------------------------------------
def _me(directory: str, **kw: Any) -> Holder:
    start = process_start_time(os.getpid())
    assert start is not None
    return Holder(dir=directory, pid=os.getpid(), start=start, **kw)


def test_a_record_round_trips_and_names_its_socket(tmp_path: Path) -> None:
    found = _me(str(tmp_path), outbound="slirp4netns", helper=7, helper_start=9)
    assert Holder.from_json(str(tmp_path), found.to_json()) == found
    assert found.socket == f"{tmp_path}/holder.sock"


def test_current_is_a_live_holder_of_this_protocol_only(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert holder.current(d) is None  # none recorded
    holder._write(_me(d))
    assert holder.current(d) == _me(d)
    holder._write(_me(d, version=holder.PROTOCOL + 1))
    assert holder.current(d) is None  # another version's: replaced by ensure
    live = _me(d)
    holder._write(Holder(dir=d, pid=live.pid, start=live.start + 1))
    assert holder.current(d) is None  # the pid was reused
    (tmp_path / "holder.json").write_text("{not json")
    assert holder.current(d) is None


def test_no_outbound_message_says_what_to_install() -> None:
    text = holder.no_outbound_message(Holder(dir="/x", pid=1, start=1))
    assert "no outbound access (neither slirp4netns nor pasta is installed)" in text
    assert "install slirp4netns or passt (pasta)" in text
    assert "/dev/net/tun" in text
    failed = holder.no_outbound_message(Holder(dir="/x", pid=1, start=1, problem="pasta failed"))
    assert "(pasta failed)" in failed


# -- the protocol ---------------------------------------------------------------------------------
class FailingKernel(FakeKernel):
    """Fails the way ``LinuxKernel`` does, on request."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: BaseException | None = None

    def link_exists(self, name: str) -> bool:
        if self.fail is not None:
            raise self.fail
        return super().link_exists(name)


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FailingKernel]:
    """A holder recorded as this very process, serving a fake kernel on its socket, with a
    ``make_socket`` that hands out one end of a socket pair."""
    monkeypatch.setenv(holder.ENV_DIR, str(tmp_path / "run"))
    directory = holder.holder_dir()
    kernel = FailingKernel()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{directory}/holder.sock")
    listener.listen()
    holder._write(_me(directory, outbound="slirp4netns"))
    made: list[socket.socket] = []

    def make_socket(pid: int, family: int, kind: int, proto: int) -> socket.socket:
        if pid == 1:
            raise OSError(errno.EPERM, "Operation not permitted")
        a, b = socket.socketpair()
        made.append(b)
        return a

    servers.serve(listener, lambda conn: serve(conn, kernel, make_socket=make_socket))
    kernel.made = made  # type: ignore[attr-defined]
    try:
        yield kernel
    finally:
        holder._Client.forget()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for s in made:
            s.close()


def test_networks_work_through_the_holder(stand_in: FailingKernel, tmp_path: Path) -> None:
    nets = Networks(tmp_path / "root", kernel=HolderKernel(), global_lock=tmp_path / "lock")
    net = nets.create("appnet")
    assert stand_in.bridges[net.bridge][0] == net.gateway  # made by the holder's kernel
    assert stand_in.forwarding
    assert net.mtu == 1400  # the holder's uplink
    lease = nets.lease(
        "appnet", "c" * 64, name="web", mappings=[PortMapping("tcp", "127.0.0.1", 8080, 80)]
    )
    nets.connect(lease, 4242)
    endpoint = stand_in.endpoints[lease.endpoint.host_ifname]
    assert endpoint["pid"] == 4242
    assert endpoint["ip"] == lease.endpoint.ip
    assert any("dnat_tcp" in script for script in stand_in.scripts)  # nft batches arrive whole
    assert nets.target_of("c" * 64, "tcp", "127.0.0.1", 8080) == (lease.endpoint.ip, 80)
    assert nets.target_of("c" * 64, "tcp", "0.0.0.0", 8080) == (lease.endpoint.ip, 80)
    assert nets.target_of("c" * 64, "udp", "127.0.0.1", 8080) is None
    assert nets.target_of("d" * 64, "tcp", "127.0.0.1", 8080) is None
    nets.cleanup(lambda cid: False)
    assert lease.endpoint.host_ifname not in stand_in.links
    nets.remove("appnet")
    assert net.bridge not in stand_in.links


def test_occupied_is_the_holders_and_the_hosts(stand_in: FailingKernel) -> None:
    found = HolderKernel().occupied()
    assert (stand_in.host[0][0], stand_in.host[0][1]) in found  # the holder's own
    assert any(what.endswith("(host)") for _, what in found)  # (this machine's, as it is)


def test_errors_come_back_as_they_were_raised(stand_in: FailingKernel) -> None:
    kernel = HolderKernel()
    cases: list[tuple[BaseException, type[BaseException], str]] = [
        (BridgeMissing("bridge md-x does not exist"), BridgeMissing, "md-x does not exist"),
        (NetworkError("nftables refused"), NetworkError, "nftables refused"),
        (PrivilegeError("no CAP_NET_ADMIN"), PrivilegeError, "no CAP_NET_ADMIN"),
        (ValueError("bad"), RuntimeFailure, "ValueError: bad"),
    ]
    for raised, expected, text in cases:
        stand_in.fail = raised
        with pytest.raises(expected, match=text):
            kernel.link_exists("md-x")
    stand_in.fail = OSError(errno.ENODEV, "No such device (looking up md-x)")
    with pytest.raises(OSError, match=r"No such device \(looking up md-x\)") as info:
        kernel.link_exists("md-x")
    assert info.value.errno == errno.ENODEV
    stand_in.fail = None
    assert kernel.link_exists("md-x") is False  # the connection survived all that


def test_a_socket_made_by_the_holder_comes_back_working(stand_in: FailingKernel) -> None:
    with holder.socket_in(4242, socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        (peer,) = stand_in.made  # type: ignore[attr-defined]
        sock.sendall(b"through the holder")
        assert peer.recv(100) == b"through the holder"
    with pytest.raises(OSError, match="Operation not permitted"):
        holder.socket_in(1, socket.AF_INET, socket.SOCK_STREAM)


def test_the_nft_batch_crosses_the_wire_unchanged() -> None:
    from pytest_minidock.runtime.network import Network, _ruleset

    net = Network(id="a" * 64, name="n", bridge="md-aaaaaaaaaaaa", subnet="10.9.0.0/24")
    batch = _ruleset("minidock_x", [net], [(PortMapping("tcp", "0.0.0.0", 81, 80), "10.9.0.2")])
    wire = [[kind, flags, body.hex()] for kind, flags, body in batch.messages]
    again = batch_from_wire(list(batch.lines), wire)
    assert again == batch
    assert again.script == render_ruleset(
        "minidock_x", [net], [(PortMapping("tcp", "0.0.0.0", 81, 80), "10.9.0.2")]
    )


def test_looking_and_removing_start_no_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(holder.ENV_DIR, str(tmp_path / "run"))
    kernel = HolderKernel()
    assert kernel.ports_of(["md-x"]) == {}
    assert kernel.link_exists("md-x") is False
    kernel.delete_link("mdv-x")
    nets = Networks(tmp_path / "root", kernel=kernel, global_lock=tmp_path / "lock")
    assert nets.cleanup(lambda cid: False) == nets.cleanup(lambda cid: True)
    assert holder.current() is None
    assert not os.path.exists(f"{holder.holder_dir()}/holder.json")
