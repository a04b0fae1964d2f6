"""Cgroup selection, limit files and clean-up, checked against a fake cgroup tree in tmp_path."""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from pathlib import Path

import pytest

from pytest_minidock.errors import PrivilegeError, RuntimeFailure, UsageError
from pytest_minidock.runtime import cgroups
from pytest_minidock.runtime.cgroups import (
    MIN_MEMORY,
    CgroupfsManager,
    Limits,
    Mount,
    NullCgroup,
    NullManager,
    cpu_weight,
    detect,
    parse_cpus,
    parse_memory,
    parse_memory_swap,
    parse_mountinfo,
)

MiB = 1 << 20

# The files cgroupfs puts into a new group, per hierarchy kind and controller.
V2_CORE = (
    "cgroup.procs",
    "cgroup.controllers",
    "cgroup.subtree_control",
    "cgroup.kill",
    "cgroup.freeze",
    "cgroup.events",
    "cpu.stat",
)
V2_FILES = {
    "memory": ("memory.max", "memory.swap.max", "memory.current", "memory.events"),
    "cpu": ("cpu.max", "cpu.weight"),
    "pids": ("pids.max", "pids.current"),
}
V1_FILES = {
    "memory": (
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.usage_in_bytes",
        "memory.oom_control",
    ),
    "cpu": ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares"),
    "cpuacct": ("cpuacct.usage",),
    "pids": ("pids.max", "pids.current"),
    "freezer": ("freezer.state",),
}


class FakeCgroupfs:
    """A directory tree that behaves enough like mounted cgroup filesystems for the module."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path / "sys" / "fs" / "cgroup"
        self.base.mkdir(parents=True)
        self.mountinfo = tmp_path / "mountinfo"
        self.mounts: list[tuple[Path, int, tuple[str, ...]]] = []
        self.broken: set[str] = set()  # control files made as directories: writing them fails
        self.missing: set[str] = set()  # control files a new group does not get

    def v2(self, rel: str = "", offered: str = "", enabled: str = "") -> Path:
        point = self.base / rel if rel else self.base
        point.mkdir(exist_ok=True)
        (point / "cgroup.controllers").write_text(offered + "\n")
        (point / "cgroup.subtree_control").write_text(enabled + "\n")
        (point / "cgroup.procs").write_text("1\n")
        self.mounts.append((point, 2, tuple(offered.split())))
        self._write_mountinfo()
        return point

    def v1(self, rel: str, *controllers: str) -> Path:
        point = self.base / rel
        point.mkdir()
        (point / "cgroup.procs").write_text("1\n")
        self.mounts.append((point, 1, controllers))
        self._write_mountinfo()
        return point

    def _write_mountinfo(self) -> None:
        lines = ["22 1 0:21 / / rw,relatime - ext4 /dev/vda rw"]
        for n, (point, version, controllers) in enumerate(self.mounts):
            if version == 2:
                lines.append(f"{30 + n} 22 0:{30 + n} / {point} rw - cgroup2 cgroup2 rw")
            else:
                opts = ",".join(("rw", *controllers))
                lines.append(f"{30 + n} 22 0:{30 + n} / {point} rw - cgroup cgroup {opts}")
        self.mountinfo.write_text("\n".join(lines) + "\n")

    def _mount_of(self, path: Path) -> tuple[Path, int, tuple[str, ...]]:
        best = max(
            (m for m in self.mounts if path.is_relative_to(m[0])), key=lambda m: len(str(m[0]))
        )
        return best

    def mkdir(self, path: str | os.PathLike[str], mode: int = 0o777) -> None:
        os.mkdir(path, mode)
        directory = Path(path)
        _, version, controllers = self._mount_of(directory)
        names: list[str] = ["cgroup.procs"]
        if version == 2:
            names += V2_CORE
            for name in controllers:
                names += V2_FILES.get(name, ())
        else:
            for name in controllers:
                names += V1_FILES.get(name, ())
        for name in dict.fromkeys(names):
            if name in self.missing:
                continue
            if name in self.broken:
                (directory / name).mkdir()
            else:
                (directory / name).touch()

    def rmdir(self, path: str | os.PathLike[str]) -> None:
        directory = Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        procs = directory / "cgroup.procs"
        children = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(V1_CTRL)]
        if children or (procs.is_file() and procs.read_text().strip()):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        for entry in directory.iterdir():
            entry.rmdir() if entry.is_dir() else entry.unlink()
        os.rmdir(directory)

    def manager(self, root_name: str = "minidock") -> cgroups.CgroupManager:
        return detect(root_name, mountinfo=self.mountinfo, refresh=True)


# Broken control files are directories named like control files; they are not sub-groups.
V1_CTRL = ("cgroup.", "memory.", "cpu.", "pids.", "freezer.", "cpuacct.")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCgroupfs:
    tree = FakeCgroupfs(tmp_path)
    monkeypatch.setattr(cgroups, "_mkdir", tree.mkdir)
    monkeypatch.setattr(cgroups, "_rmdir", tree.rmdir)
    return tree


def hybrid(fake: FakeCgroupfs, *, with_pids: bool = True) -> None:
    """The layout of a hybrid host: v1 controllers plus a cgroup2 mount with none of them."""
    fake.v1("cpu", "cpu")
    fake.v1("cpuacct", "cpuacct")
    fake.v1("memory", "memory")
    fake.v1("freezer", "freezer")
    if with_pids:
        fake.v1("pids", "pids")
    fake.v1("systemd", "name=systemd")
    fake.v2("unified", offered="hugetlb")


def read(path: Path) -> str:
    return path.read_text().strip()


def groups(fake: FakeCgroupfs, name: str, root_name: str = "minidock") -> list[Path]:
    return [m[0] / root_name / name for m in fake.mounts if (m[0] / root_name / name).exists()]


# ----------------------------------------------------------------------------- parse helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512m", 512 * MiB),
        ("512M", 512 * MiB),
        ("1g", 1 << 30),
        ("1.5G", 3 << 29),
        ("6291456", 6 * MiB),
        ("6291456b", 6 * MiB),
        ("6144k", 6 * MiB),
        ("64MiB", 64 * MiB),
        ("64mb", 64 * MiB),
        (" 7m ", 7 * MiB),
    ],
)
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["5m", "6291455", "1k", "0"])
def test_parse_memory_below_docker_minimum(text: str) -> None:
    with pytest.raises(UsageError, match=r"^minimum memory limit allowed is 6MB$"):
        parse_memory(text)


@pytest.mark.parametrize("text", ["", "abc", "-1", "12x", "1.2.3m", "m"])
def test_parse_memory_rejects_garbage(text: str) -> None:
    with pytest.raises(UsageError, match="invalid size"):
        parse_memory(text)


def test_parse_memory_swap() -> None:
    assert parse_memory_swap("-1") == -1
    assert parse_memory_swap("1g") == 1 << 30
    with pytest.raises(UsageError):
        parse_memory_swap("lots")


def test_parse_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert parse_cpus("1.5") == 1.5
    assert parse_cpus("0.01") == 0.01
    assert parse_cpus("4") == 4.0
    message = r"^range of CPUs is from 0\.01 to 4\.00, as there are only 4 CPUs available$"
    for text in ("0", "-1", "0.001", "4.5", "inf", "nan"):
        with pytest.raises(UsageError, match=message):
            parse_cpus(text)
    with pytest.raises(UsageError, match="invalid argument 'two' for --cpus"):
        parse_cpus("two")


def test_cpu_weight_matches_runc() -> None:
    assert cpu_weight(2) == 1
    assert cpu_weight(1024) == 39
    assert cpu_weight(262144) == 10000
    assert cpu_weight(1) == 1  # clamped like the kernel clamps cpu.shares
    assert cpu_weight(10**9) == 10000


def test_limits_validate_like_docker() -> None:
    assert not Limits().requested
    assert not Limits(pids=0, cpu_shares=0).requested  # docker: 0 means unset
    assert Limits(pids=16).requested
    with pytest.raises(UsageError, match="minimum memory limit allowed is 6MB"):
        Limits(memory=MIN_MEMORY - 1)
    with pytest.raises(UsageError, match="always set the memory limit when using memoryswap"):
        Limits(memory_swap=64 * MiB)
    with pytest.raises(UsageError, match="memoryswap limit should be larger than memory limit"):
        Limits(memory=64 * MiB, memory_swap=32 * MiB)
    with pytest.raises(UsageError, match="range of CPUs"):
        Limits(cpus=0)
    with pytest.raises(UsageError, match="cpu-shares"):
        Limits(cpu_shares=-1)
    assert Limits(memory=64 * MiB, memory_swap=-1).needs() == [
        ("--memory", "memory"),
        ("--memory-swap", "memory"),
    ]


def test_invalid_container_id(fake: FakeCgroupfs) -> None:
    fake.v2(offered="memory pids cpu")
    manager = fake.manager()
    for bad in ("", "../x", "a/b", ".", "-x"):
        with pytest.raises(UsageError, match="invalid container id"):
            manager.create(bad)


# ----------------------------------------------------------------------------- mountinfo


MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
42 23 0:39 / /mnt/my\\040cgroup rw - cgroup2 none rw
"""


def test_parse_mountinfo() -> None:
    assert parse_mountinfo(MOUNTINFO) == [
        Mount("/sys/fs/cgroup/cpu", 1, frozenset({"cpu"})),
        Mount("/sys/fs/cgroup/cpu,cpuacct", 1, frozenset({"cpu", "cpuacct"})),
        Mount("/sys/fs/cgroup/memory", 1, frozenset({"memory"})),
        Mount("/sys/fs/cgroup/systemd", 1, frozenset()),
        Mount("/sys/fs/cgroup/unified", 2, frozenset()),
        Mount("/mnt/my cgroup", 2, frozenset()),
    ]


# ----------------------------------------------------------------------------- detection


def test_detect_unified_v2_enables_controllers(fake: FakeCgroupfs) -> None:
    root = fake.v2(offered="cpuset cpu io memory hugetlb pids")
    manager = fake.manager()
    assert isinstance(manager, CgroupfsManager)
    assert {role: (h.version, h.mount) for role, h in manager.hierarchies.items()} == {
        role: (2, root) for role in ("memory", "cpu", "pids", "procs")
    }
    # the mount root lets children use them; only the controllers minidock needs
    assert read(root / "cgroup.subtree_control") == "+memory +cpu +pids"
    assert manager.describe().startswith(f"cgroup v2: memory -> v2 {root}; cpu -> v2 {root}")


def test_detect_already_enabled_writes_nothing(fake: FakeCgroupfs) -> None:
    root = fake.v2(offered="cpu memory pids", enabled="cpu memory pids io")
    fake.manager()
    assert read(root / "cgroup.subtree_control") == "cpu memory pids io"


def test_detect_hybrid_takes_controllers_from_v1_and_tracks_in_v2(fake: FakeCgroupfs) -> None:
    hybrid(fake)
    manager = fake.manager()
    roles = {role: (h.version, h.mount.name) for role, h in manager.hierarchies.items()}
    assert roles == {
        "memory": (1, "memory"),
        "cpu": (1, "cpu"),
        "pids": (1, "pids"),
        "procs": (2, "unified"),
    }
    text = manager.describe()
    assert text.startswith("cgroup v1 + v2 (hybrid): memory -> v1 ")
    assert f"processes (tracking, kill, freeze) -> v2 {fake.base / 'unified'}" in text


def test_detect_pure_v1_tracks_with_the_freezer(fake: FakeCgroupfs) -> None:
    for name in ("memory", "pids", "freezer"):
        fake.v1(name, name)
    fake.v1("cpu,cpuacct", "cpu", "cpuacct")
    manager = fake.manager()
    roles = {role: (h.version, h.mount.name) for role, h in manager.hierarchies.items()}
    assert roles["procs"] == (1, "freezer")
    assert roles["cpu"] == (1, "cpu,cpuacct")
    assert manager.describe().startswith("cgroup v1: ")


def test_detect_prefers_sys_fs_cgroup_then_first_v2(fake: FakeCgroupfs) -> None:
    fake.v2("first", offered="memory")
    fake.v2("second", offered="memory cpu pids")
    manager = fake.manager()
    assert manager.hierarchies["procs"].mount.name == "first"
    assert "cpu" not in manager.hierarchies  # no v1 cpu either
    assert "cpu -> unavailable (cgroup2 at " in manager.describe()


def test_v2_controller_that_cannot_be_enabled_falls_back_to_v1(
    fake: FakeCgroupfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = fake.v2(offered="memory pids")
    fake.v1("memory", "memory")
    real_write = cgroups._write

    def refuse_memory(path: str, value: str) -> None:
        if path == f"{root}/cgroup.subtree_control" and "memory" in value:
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_write(path, value)

    monkeypatch.setattr(cgroups, "_write", refuse_memory)
    manager = fake.manager()
    assert manager.hierarchies["memory"].version == 1
    assert manager.hierarchies["pids"].version == 2
    assert read(root / "cgroup.subtree_control") == "+pids"


def test_unusable_controller_is_a_privilege_error_naming_the_limit(
    fake: FakeCgroupfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = fake.v2(offered="memory")
    real_write = cgroups._write

    def refuse(path: str, value: str) -> None:
        if path.endswith("subtree_control"):
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_write(path, value)

    monkeypatch.setattr(cgroups, "_write", refuse)
    manager = fake.manager()
    with pytest.raises(PrivilegeError) as info:
        manager.create("abc", Limits(memory=64 * MiB, pids=8))
    message = str(info.value)
    assert message.startswith(
        "--memory needs the memory controller: cgroup v2 with memory in cgroup.subtree_control,"
        " or the v1 memory hierarchy; none is usable here (cgroup2 at"
    )
    assert f"writing +memory to {root}/cgroup.subtree_control failed: Device or resource busy" in (
        message
    )
    assert "--pids-limit needs the pids controller" in message
    assert "does not offer pids" in message
    assert groups(fake, "abc") == []
    assert not (root / "minidock").exists()  # refused before anything was made


def test_missing_v1_pids_hierarchy(fake: FakeCgroupfs) -> None:
    hybrid(fake, with_pids=False)
    manager = fake.manager()
    with pytest.raises(
        PrivilegeError,
        match=r"^--pids-limit needs the pids controller: .*"
        r"none is usable here \(.*no v1 pids hierarchy is mounted\)$",
    ):
        manager.create("abc", Limits(pids=16, memory=64 * MiB))
    assert groups(fake, "abc") == []
    manager.create("abc", Limits(memory=64 * MiB)).remove()  # what exists still works


def test_no_cgroups_at_all_gives_the_null_manager(fake: FakeCgroupfs) -> None:
    fake.v1("systemd", "name=systemd")  # a named hierarchy has no controller and is not used
    manager = fake.manager()
    assert isinstance(manager, NullManager)
    assert manager.hierarchies == {}
    assert manager.orphans() == []
    manager.remove_stale("abc")
    assert manager.describe().startswith("no cgroups (")
    group = manager.create("abc")
    assert isinstance(group, NullCgroup)
    group.add(42)
    group.add(7)
    assert group.pids() == [7, 42]
    assert group.paths == ()
    assert group.stats() == cgroups.CgroupStats(None, None, None, None)
    with pytest.raises(PrivilegeError, match="pausing needs a freezer"):
        group.freeze()
    group.remove()
    with pytest.raises(PrivilegeError) as info:
        manager.create("abc", Limits(memory=64 * MiB))
    assert str(info.value).startswith(
        "--memory needs the memory controller: cgroup v2 with memory in cgroup.subtree_control,"
        " or the v1 memory hierarchy; none is usable here"
    )


def test_detection_is_cached_per_process(fake: FakeCgroupfs) -> None:
    fake.v2(offered="memory cpu pids")
    first = detect("minidock", mountinfo=fake.mountinfo)
    assert detect("minidock", mountinfo=fake.mountinfo) is first
    assert detect("minidock", mountinfo=fake.mountinfo, refresh=True) is not first
    with pytest.raises(UsageError):
        detect("a/b", mountinfo=fake.mountinfo)


# ----------------------------------------------------------------------------- create and limits


def test_v2_create_writes_limits_and_add_joins(fake: FakeCgroupfs) -> None:
    root = fake.v2(offered="cpu memory pids")
    manager = fake.manager()
    limits = Limits(memory=64 * MiB, cpus=0.5, pids=16, cpu_shares=1024)
    group = manager.create("abc", limits)
    directory = root / "minidock" / "abc"
    assert read(root / "minidock" / "cgroup.subtree_control") == "+cpu +memory +pids"
    assert group.paths == (directory,)
    assert group.path("memory") == group.path("procs") == directory
    assert read(directory / "memory.max") == str(64 * MiB)
    assert read(directory / "memory.swap.max") == "0"  # memory_swap None: no swap
    assert read(directory / "cpu.max") == "50000 100000"
    assert read(directory / "cpu.weight") == "39"
    assert read(directory / "pids.max") == "16"
    group.add(1234)
    assert read(directory / "cgroup.procs") == "1234"


def test_v2_swap_is_the_part_above_memory(fake: FakeCgroupfs) -> None:
    root = fake.v2(offered="memory")
    manager = fake.manager()
    manager.create("a", Limits(memory=64 * MiB, memory_swap=96 * MiB))
    assert read(root / "minidock" / "a" / "memory.swap.max") == str(32 * MiB)
    manager.create("b", Limits(memory=64 * MiB, memory_swap=-1))
    assert read(root / "minidock" / "b" / "memory.swap.max") == ""  # untouched: unlimited


def test_missing_swap_accounting_is_skipped(fake: FakeCgroupfs) -> None:
    root = fake.v2(offered="memory")
    fake.missing.add("memory.swap.max")
    fake.manager().create("abc", Limits(memory=64 * MiB))
    assert read(root / "minidock" / "abc" / "memory.max") == str(64 * MiB)


def test_hybrid_create_writes_v1_files_and_joins_every_hierarchy(fake: FakeCgroupfs) -> None:
    hybrid(fake)
    manager = fake.manager()
    group = manager.create(
        "abc", Limits(memory=64 * MiB, memory_swap=128 * MiB, cpus=1.5, pids=16, cpu_shares=512)
    )
    base = fake.base
    assert [p.relative_to(base).parts[0] for p in group.paths] == [
        "unified",
        "memory",
        "cpu",
        "pids",
    ]
    assert read(base / "memory/minidock/abc/memory.limit_in_bytes") == str(64 * MiB)
    assert read(base / "memory/minidock/abc/memory.memsw.limit_in_bytes") == str(128 * MiB)
    assert read(base / "cpu/minidock/abc/cpu.cfs_quota_us") == "150000"
    assert read(base / "cpu/minidock/abc/cpu.shares") == "512"
    assert read(base / "pids/minidock/abc/pids.max") == "16"
    # a v2 mount offering no controller gets none enabled
    assert read(base / "unified/minidock/cgroup.subtree_control") == ""
    group.add(99)
    for directory in group.paths:
        assert read(directory / "cgroup.procs") == "99"
    assert not (base / "freezer" / "minidock").exists()  # v2 tracks: the freezer is not used


def test_without_limits_only_the_tracking_group_is_made(fake: FakeCgroupfs) -> None:
    hybrid(fake)
    group = fake.manager().create("abc")
    assert group.paths == (fake.base / "unified" / "minidock" / "abc",)
    assert group.path("memory") is None
    assert groups(fake, "abc") == [fake.base / "unified" / "minidock" / "abc"]


def test_v1_memory_without_swap_sets_memsw_to_memory(fake: FakeCgroupfs) -> None:
    hybrid(fake)
    fake.manager().create("abc", Limits(memory=64 * MiB))
    assert read(fake.base / "memory/minidock/abc/memory.memsw.limit_in_bytes") == str(64 * MiB)


@pytest.mark.parametrize("layout", ["v2", "hybrid"])
def test_failing_write_rolls_back_every_directory(fake: FakeCgroupfs, layout: str) -> None:
    if layout == "v2":
        fake.v2(offered="memory cpu pids")
    else:
        hybrid(fake)
    fake.broken.add("pids.max")
    manager = fake.manager()
    with pytest.raises(RuntimeFailure) as info:
        manager.create("abc", Limits(memory=64 * MiB, cpus=1, pids=16))
    pids_dir = fake.base / ("minidock" if layout == "v2" else "pids/minidock") / "abc"
    assert str(info.value) == f"cannot set pids.max=16 in {pids_dir}: Is a directory"
    assert groups(fake, "abc") == []
    fake.broken.clear()
    manager.create("abc", Limits(pids=16)).remove()  # the id is free again


def test_a_removed_root_is_made_again(fake: FakeCgroupfs) -> None:
    root = fake.v2(offered="memory")
    manager = fake.manager()
    manager.create("a").remove()
    fake.rmdir(root / "minidock")  # an admin cleaned up while the manager was cached
    group = manager.create("b", Limits(memory=64 * MiB))
    assert group.paths == (root / "minidock" / "b",)
    assert read(root / "minidock" / "cgroup.subtree_control") == "+memory"


def test_existing_group_is_refused_and_kept(fake: FakeCgroupfs) -> None:
    hybrid(fake)
    manager = fake.manager()
    stale = fake.base / "memory" / "minidock" / "abc"
    manager.create("other")  # prepares the <root_name> directories
    stale.mkdir()
    with pytest.raises(
        RuntimeFailure, match=re.escape(f"cannot create cgroup {stale}: it already exists")
    ):
        manager.create("abc", Limits(memory=64 * MiB))
    assert groups(fake, "abc") == [stale]  # the tracking group made first was rolled back


# ----------------------------------------------------------------------------- tracking and removal


def test_pids_are_recursive_and_stats_read_the_controllers(fake: FakeCgroupfs) -> None:
    hybrid(fake)
    group = fake.manager().create("abc", Limits(memory=64 * MiB, pids=16, cpus=1))
    procs = fake.base / "unified" / "minidock" / "abc"
    (procs / "cgroup.procs").write_text("10\n12\n")
    fake.mkdir(procs / "inner")
    (procs / "inner" / "cgroup.procs").write_text("11\n")
    (procs / "cpu.stat").write_text("usage_usec 777\nuser_usec 700\nsystem_usec 77\n")
    (fake.base / "memory/minidock/abc/memory.usage_in_bytes").write_text("4096\n")
    (fake.base / "pids/minidock/abc/pids.current").write_text("3\n")
    oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
    (fake.base / "memory/minidock/abc/memory.oom_control").write_text(oom_control)
    assert group.pids() == [10, 11, 12]
    assert group.stats() == cgroups.CgroupStats(
        memory_current=4096, memory_max=64 * MiB, pids_current=3, cpu_usage_usec=777, oom_kills=2
    )


def test_v2_stats(fake: FakeCgroupfs) -> None:
    fake.v2(offered="memory pids")
    group = fake.manager().create("abc", Limits(memory=64 * MiB))
    directory = group.paths[0]
    (directory / "memory.current").write_text("8192\n")
    (directory / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n")
    (directory / "pids.current").write_text("2\n")
    (directory / "cpu.stat").write_text("usage_usec 10\n")
    assert group.stats() == cgroups.CgroupStats(8192, 64 * MiB, 2, 10, 1)
    group.remove()
    assert group.stats() == cgroups.CgroupStats(None, None, None, None, None)  # gone: no error


def test_stats_without_controllers(fake: FakeCgroupfs) -> None:
    for name in ("freezer", "memory"):
        fake.v1(name, name)
    fake.v1("cpu,cpuacct", "cpu", "cpuacct")
    group = fake.manager().create("abc", Limits(cpus=1))
    (fake.base / "freezer/minidock/abc/cgroup.procs").write_text("5\n6\n")
    (fake.base / "cpu,cpuacct/minidock/abc/cpuacct.usage").write_text("5000000\n")
    assert group.stats() == cgroups.CgroupStats(None, None, 2, 5000)


def test_remove_is_idempotent_and_leaf_first(fake: FakeCgroupfs) -> None:
    hybrid(fake)
    group = fake.manager().create("abc", Limits(memory=64 * MiB, pids=16))
    fake.mkdir(group.paths[0] / "nested")  # a group the container made itself
    fake.mkdir(group.paths[0] / "nested" / "deeper")
    group.remove()
    assert groups(fake, "abc") == []
    group.remove()  # already gone: fine


def test_remove_of_a_busy_group_fails_after_retrying(fake: FakeCgroupfs) -> None:
    fake.v2(offered="memory")
    group = fake.manager().create("abc")
    (group.paths[0] / "cgroup.procs").write_text("4242\n")
    started = time.monotonic()
    with pytest.raises(RuntimeFailure, match="processes are still in it"):
        group.remove(timeout=0.05)
    assert 0.05 <= time.monotonic() - started < 1
    (group.paths[0] / "cgroup.procs").write_text("")
    group.remove()
    assert groups(fake, "abc") == []


def test_orphans_and_open_after_a_crash(fake: FakeCgroupfs) -> None:
    hybrid(fake)
    manager = fake.manager()
    manager.create("crashed", Limits(memory=64 * MiB, pids=16))
    manager.create("also")
    assert manager.orphans() == ["also", "crashed"]
    restarted = fake.manager()  # a new process after the crash
    assert restarted.orphans() == ["also", "crashed"]
    restarted.remove_stale("crashed")
    assert groups(fake, "crashed") == []
    restarted.remove_stale("crashed")  # nothing left: fine
    assert restarted.orphans() == ["also"]


def test_kill_all_writes_cgroup_kill_on_v2(fake: FakeCgroupfs) -> None:
    fake.v2(offered="pids")
    group = fake.manager().create("abc")
    group.kill_all()
    assert read(group.paths[0] / "cgroup.kill") == "1"
    group.remove()
    group.kill_all()  # gone: nothing to do


def test_freeze_and_thaw_on_v2(fake: FakeCgroupfs) -> None:
    fake.v2(offered="")
    group = fake.manager().create("abc")
    (group.paths[0] / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    group.freeze()
    assert read(group.paths[0] / "cgroup.freeze") == "1"
    group.thaw()
    assert read(group.paths[0] / "cgroup.freeze") == "0"


def test_freeze_that_does_not_happen_times_out(fake: FakeCgroupfs) -> None:
    fake.v2(offered="")
    group = fake.manager().create("abc")
    (group.paths[0] / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with pytest.raises(RuntimeFailure, match=r"did not freeze after 0\.02s"):
        group.freeze(timeout=0.02)


def test_null_cgroup_kill_all_signals_the_added_pids() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            while True:
                signal.pause()
        finally:
            os._exit(0)
    reaped = False
    try:
        group = NullManager().create("abc")
        group.add(pid)
        group.kill_all(signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        reaped = True
        assert os.WIFSIGNALED(status)
        assert os.WTERMSIG(status) == signal.SIGTERM
    finally:
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
