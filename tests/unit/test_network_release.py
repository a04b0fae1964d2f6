"""Veths of containers leaving their networks, without root: ``detach`` asks the kernel seam to
*release* them, a re-lease deletes the
old one by name, and ``releases_in_background`` defers the requests to the end of its block and
``settle`` waits for them (only this process's)."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from pytest_minidock.runtime import network
from pytest_minidock.runtime.network import Networks
from tests.unit.test_network_manager import FakeKernel, cid

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


class ReleasingKernel(FakeKernel):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def delete_link(self, name: str) -> None:
        self.calls.append(("delete", name))
        super().delete_link(name)

    def release_link(self, name: str) -> None:
        self.calls.append(("release", name))
        super().delete_link(name)


def _nets(tmp_path: Path, kernel: FakeKernel) -> Networks:
    return Networks(tmp_path / "root", kernel=kernel, global_lock=tmp_path / "subnets.lock")


def test_detach_releases_the_veth(tmp_path: Path) -> None:
    kernel = ReleasingKernel()
    nets = _nets(tmp_path, kernel)
    a = nets.attach("bridge", cid(1), 100, name="a")
    kernel.calls.clear()
    nets.detach(cid(1))
    assert kernel.calls == [("release", a.host_ifname)]
    assert a.host_ifname not in kernel.links


def test_a_released_veth_is_gone_with_its_attachment(tmp_path: Path) -> None:
    kernel = FakeKernel()
    nets = _nets(tmp_path, kernel)
    a = nets.attach("bridge", cid(1), 100, name="a")
    nets.detach(cid(1))
    assert a.host_ifname not in kernel.links
    assert nets.attachments(cid(1)) == []


def test_a_new_lease_deletes_the_old_veth_by_name(tmp_path: Path) -> None:
    """Its name is taken again at once: that deletion must be done when it returns."""
    kernel = ReleasingKernel()
    nets = _nets(tmp_path, kernel)
    a = nets.attach("bridge", cid(1), 100, name="a")
    kernel.calls.clear()
    b = nets.attach("bridge", cid(1), 101, name="a")  # (a restart: the same container again)
    assert ("delete", a.host_ifname) in kernel.calls
    assert ("release", a.host_ifname) not in kernel.calls
    assert b.host_ifname == a.host_ifname
    assert b.ip == a.ip


def test_requests_wait_for_the_end_of_the_outermost_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[tuple[int, str]] = []
    monkeypatch.setattr(network, "_delete_unwaited", lambda i, n: started.append((i, n)))
    assert network._unwaited_depth() == 0
    with network.releases_in_background():
        network._unwaited.later.append((1, "mdv1"))
        with network.releases_in_background():
            assert network._unwaited_depth() == 2
            network._unwaited.later.append((2, "mdv2"))
        assert started == []  # (the inner block ended: still waiting)
    assert started == [(1, "mdv1"), (2, "mdv2")]
    assert network._unwaited_depth() == 0


def test_settle_joins_this_processes_deletions_only(monkeypatch: pytest.MonkeyPatch) -> None:
    joined: list[str] = []
    pending: list[tuple[int, Any]] = [
        (os.getpid(), lambda: joined.append("mine")),
        (os.getpid() + 1, lambda: joined.append("a parent's")),  # as after a fork
    ]
    monkeypatch.setattr(network, "_pending", pending)
    network.settle()
    assert joined == ["mine"]
    assert pending == [(os.getpid() + 1, pending[0][1])]


def test_the_block_is_per_thread_and_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    with network.releases_in_background():
        thread = threading.Thread(target=lambda: seen.append(network._unwaited_depth()))
        thread.start()
        thread.join()
        monkeypatch.setattr(network._unwaited, "pid", os.getpid() + 1)  # as in a forked child
        seen.append(network._unwaited_depth())
        monkeypatch.undo()
        seen.append(network._unwaited_depth())
    assert seen == [0, 0, 1]


def test_release_of_a_missing_link_asks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Reading links needs no privilege: a name no link has.)"""
    started: list[tuple[int, str]] = []
    monkeypatch.setattr(network, "_delete_unwaited", lambda i, n: started.append((i, n)))
    with network.releases_in_background():
        network.LinuxKernel().release_link("mdvnosuchlink0")
    network.LinuxKernel().release_link("mdvnosuchlink0")
    assert started == []
