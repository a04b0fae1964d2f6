"""Cgroups on this machine: limits hold, fork bombs and memory hogs are stopped, nothing is left."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.errors import RuntimeFailure
from pytest_minidock.runtime import cgroups
from pytest_minidock.runtime.cgroups import CgroupManager, Limits

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from pytest_minidock.runtime.cgroups import Cgroup

pytestmark = pytest.mark.privileged

MiB = 1 << 20
ROOT_NAME = f"minidock-test-{os.getpid()}"


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    # Fail, never skip: a privileged test that cannot run has not passed.
    assert os.geteuid() == 0, "this test needs root (marker 'privileged')"


def mounted_hierarchies() -> list[Path]:
    text = Path("/proc/self/mountinfo").read_text()
    return [Path(m.mount_point) for m in cgroups.parse_mountinfo(text)]


def make_manager(layout: str) -> CgroupManager:
    """``detected``: what :func:`cgroups.detect` picks; ``v1``: the v1 hierarchies alone."""
    if layout == "detected":
        return cgroups.detect(ROOT_NAME, refresh=True)
    text = Path("/proc/self/mountinfo").read_text()
    mounts = [m for m in cgroups.parse_mountinfo(text) if m.version == 1]
    roles, reasons = cgroups.select_hierarchies(mounts)
    if "procs" not in roles:
        pytest.skip("no v1 hierarchies here")
    return cgroups.CgroupfsManager(roles, ROOT_NAME, reasons)


@pytest.fixture(params=["detected", "v1"])
def layout(request: pytest.FixtureRequest) -> str:
    """Run against the detected layout and, where v1 hierarchies are mounted, v1 alone."""
    value: str = request.param
    return value


@pytest.fixture
def manager(layout: str) -> Iterator[CgroupManager]:
    """The real manager, with groups under a per-run root that is removed afterwards."""
    manager = make_manager(layout)
    if not manager.hierarchies:
        pytest.fail(f"no usable cgroups on this machine: {manager.describe()}", pytrace=False)
    try:
        yield manager
    finally:
        try:
            for container_id in manager.orphans():  # groups a failed test left behind
                group = manager.open(container_id)
                with contextlib.suppress(Exception):
                    group.kill_all()
                group.remove()
        finally:
            for mount in mounted_hierarchies():
                with contextlib.suppress(FileNotFoundError):
                    (mount / ROOT_NAME).rmdir()


class Children:
    """Forked children that wait for ``go`` before they exec; every one is reaped at the end."""

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}  # pid -> write end of its "go" pipe
        self.live: set[int] = set()

    def fork(self, argv: Sequence[str] | None = None) -> int:
        """A child that, once released by :meth:`go`, execs ``argv`` (or sleeps until killed)."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns into pytest
            try:
                os.close(write_end)
                os.read(read_end, 1)
                if argv is not None:
                    os.execv(argv[0], list(argv))
                while True:
                    signal.pause()
            finally:
                os._exit(127)
        os.close(read_end)
        self.pending[pid] = write_end
        self.live.add(pid)
        return pid

    def go(self, pid: int) -> None:
        write_end = self.pending.pop(pid)
        os.write(write_end, b"x")
        os.close(write_end)

    def wait(self, pid: int, timeout: float = 3.0) -> int:
        """The wait status of ``pid``; fails the test if it does not end within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.live.discard(pid)
                return status
            if time.monotonic() > deadline:
                pytest.fail(f"child {pid} still running after {timeout}s")
            time.sleep(0.005)

    def reap_all(self) -> None:
        for write_end in self.pending.values():
            os.close(write_end)
        self.pending.clear()
        for pid in list(self.live):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.live.discard(pid)


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.reap_all()


def cgroup_lines(pid: int) -> list[tuple[str, str]]:
    """``(controllers, path)`` per line of ``/proc/<pid>/cgroup`` (controllers "" for v2)."""
    out = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        out.append((controllers, path))
    return out


def assert_gone(manager: CgroupManager, group: Cgroup) -> None:
    for path in group.paths:
        assert not path.exists(), path
    for mount in mounted_hierarchies():
        assert not (mount / ROOT_NAME / group.container_id).exists(), mount
    assert group.container_id not in manager.orphans()


def test_limits_are_written_and_the_child_joins(manager: CgroupManager, children: Children) -> None:
    pid = children.fork()
    group = manager.create("limits", Limits(memory=64 * MiB, pids=16, cpus=0.5))
    group.add(pid)
    relative = f"/{ROOT_NAME}/limits"
    memory, cpu, pids = (group.path(role) for role in ("memory", "cpu", "pids"))
    assert memory is not None
    assert cpu is not None
    assert pids is not None
    if manager.hierarchies["memory"].version == 2:
        assert (memory / "memory.max").read_text() == f"{64 * MiB}\n"
    else:
        assert (memory / "memory.limit_in_bytes").read_text() == f"{64 * MiB}\n"
    if manager.hierarchies["cpu"].version == 2:
        assert (cpu / "cpu.max").read_text() == "50000 100000\n"
    else:
        assert (cpu / "cpu.cfs_quota_us").read_text() == "50000\n"
        assert (cpu / "cpu.cfs_period_us").read_text() == "100000\n"
    assert (pids / "pids.max").read_text() == "16\n"

    lines = cgroup_lines(pid)
    for role in ("memory", "cpu", "pids", "procs"):
        hierarchy = manager.hierarchies[role]
        if hierarchy.version == 2:
            assert ("", relative) in lines, lines
        else:
            assert any(
                set(names.split(",")) == hierarchy.controllers and path == relative
                for names, path in lines
            ), (role, lines)
    assert group.pids() == [pid]
    stats = group.stats()
    assert stats.memory_max == 64 * MiB
    assert stats.pids_current == 1
    assert stats.memory_current is not None

    group.kill_all()
    status = children.wait(pid)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL
    assert group.pids() == []
    group.remove()
    assert_gone(manager, group)
    group.remove()  # already gone: no error


def test_fork_bomb_is_held_to_the_pids_limit(manager: CgroupManager, children: Children) -> None:
    script = "for i in $(seq 50); do sleep 5 & done"
    pid = children.fork(["/bin/sh", "-c", script])
    group = manager.create("forkbomb", Limits(pids=16))
    group.add(pid)
    children.go(pid)
    status = children.wait(pid)
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) != 0  # dash gives up: "Cannot fork"
    pids_dir = group.path("pids")
    assert pids_dir is not None
    running = group.pids()
    assert 0 < len(running) <= 16
    stats = group.stats()
    assert stats.pids_current is not None
    assert stats.pids_current <= 16
    events = dict(line.split() for line in (pids_dir / "pids.events").read_text().splitlines())
    assert int(events["max"]) > 0  # forks were refused

    group.kill_all()
    assert group.pids() == []
    group.remove()
    assert_gone(manager, group)


def test_memory_hog_is_oom_killed(manager: CgroupManager, children: Children) -> None:
    hog = "x = b'x' * (200 << 20)\nprint('survived', len(x))"
    pid = children.fork([sys.executable, "-I", "-S", "-c", hog])
    group = manager.create("hog", Limits(memory=64 * MiB))
    group.add(pid)
    children.go(pid)
    status = children.wait(pid, timeout=4.0)
    assert os.WIFSIGNALED(status), f"the hog was not killed (status {status:#x})"
    assert os.WTERMSIG(status) == signal.SIGKILL
    stats = group.stats()
    assert stats.memory_max == 64 * MiB
    assert stats.oom_kills == 1
    group.remove()
    assert_gone(manager, group)


def test_kill_all_kills_every_process(manager: CgroupManager, children: Children) -> None:
    script = "sleep 30 & sleep 30 & (sleep 30 & wait) & wait"
    pid = children.fork(["/bin/sh", "-c", script])
    group = manager.create("killall")
    group.add(pid)
    children.go(pid)
    deadline = time.monotonic() + 2
    while len(group.pids()) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(group.pids()) == 5
    started = time.monotonic()
    group.kill_all()
    elapsed = time.monotonic() - started
    assert group.pids() == []
    assert elapsed < 1
    status = children.wait(pid)
    assert os.WIFSIGNALED(status)
    group.remove()
    assert_gone(manager, group)


def test_kill_all_with_another_signal(manager: CgroupManager, children: Children) -> None:
    pid = children.fork()
    group = manager.create("term")
    group.add(pid)
    group.kill_all(signal.SIGTERM)
    status = children.wait(pid)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGTERM
    group.remove()


def test_freeze_and_thaw(manager: CgroupManager, children: Children) -> None:
    if "procs" not in manager.hierarchies:
        pytest.fail(manager.describe())
    pid = children.fork()
    group = manager.create("frozen")
    group.add(pid)
    procs = group.path("procs")
    assert procs is not None
    group.freeze()
    if manager.hierarchies["procs"].version == 2:
        assert "frozen 1" in (procs / "cgroup.events").read_text()
    else:
        assert (procs / "freezer.state").read_text() == "FROZEN\n"
    group.thaw()
    if manager.hierarchies["procs"].version == 2:
        assert "frozen 0" in (procs / "cgroup.events").read_text()
    group.kill_all()
    children.wait(pid)
    group.remove()


def test_orphans_finds_the_groups_of_a_crashed_run(
    manager: CgroupManager, children: Children, layout: str
) -> None:
    pid = children.fork()
    group = manager.create("crashed", Limits(memory=64 * MiB, pids=16, cpus=1))
    group.add(pid)
    paths = group.paths
    del group  # the "crash": nobody removes it

    restarted = make_manager(layout)
    assert "crashed" in restarted.orphans()
    assert restarted.open("crashed").pids() == [pid]
    restarted.remove_stale("crashed")
    status = children.wait(pid)
    assert os.WTERMSIG(status) == signal.SIGKILL
    assert "crashed" not in restarted.orphans()
    restarted.remove_stale("crashed")  # nothing left: fine
    for path in paths:
        assert not path.exists()


def test_create_refuses_an_existing_group_and_leaves_nothing(manager: CgroupManager) -> None:
    first = manager.create("twice", Limits(memory=64 * MiB))
    try:
        with pytest.raises(RuntimeFailure, match="already exists"):
            manager.create("twice", Limits(memory=64 * MiB))
        assert all(path.is_dir() for path in first.paths)
    finally:
        first.remove()
    assert_gone(manager, first)


def test_create_add_remove_are_cheap(manager: CgroupManager, children: Children) -> None:
    limits = Limits(memory=64 * MiB, pids=16, cpus=0.5)
    timings: dict[str, list[float]] = {"create": [], "add": [], "remove": []}
    pid = children.fork()
    parking = manager.create("parking")  # where the child goes between rounds
    for n in range(20):
        started = time.perf_counter()
        group = manager.create(f"cheap{n}", limits)
        created = time.perf_counter()
        group.add(pid)
        added = time.perf_counter()
        parking.add(pid)
        for path in group.paths:
            if path != group.path("procs"):
                (path.parent.parent / "cgroup.procs").write_text(str(pid))
        removing = time.perf_counter()
        group.remove()
        removed = time.perf_counter()
        timings["create"].append(created - started)
        timings["add"].append(added - created)
        timings["remove"].append(removed - removing)
    medians = {name: statistics.median(values) * 1e6 for name, values in timings.items()}
    print("cgroup timings (median µs):", {k: round(v) for k, v in medians.items()})
    assert sum(medians.values()) < 5000, medians  # generous: a few hundred µs expected
    parking.kill_all()
    children.wait(pid)
    parking.remove()
