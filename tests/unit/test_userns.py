"""Rootless mode without root: subordinate id ranges, the id maps planned from them, why a machine
refuses user namespaces (simulated with a fake /proc/sys and a refusing ``unshare``), the checks
and messages of a rootless start, and the pieces of the store, mounts and cgroups that differ
when the caller is not root on the host (simulated by pretending ``uid_map`` is not the host's).
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from pytest_minidock import capabilities
from pytest_minidock.errors import PrivilegeError, UsageError
from pytest_minidock.runtime import userns
from pytest_minidock.runtime._sys import CLONE_NEWNS, CLONE_NEWUSER, RecordingSyscalls
from pytest_minidock.runtime.userns import (
    IdMap,
    IdRange,
    current_idmap,
    map_lines,
    plan_idmap,
    subordinate_ranges,
    unavailable_reason,
    write_maps,
)

SUBUID = """\
# comment
alice:100000:65536
1001:200000:65536
bob:300000
carol:x:10
alice:500000:10
"""


def test_subordinate_ranges_by_name_and_uid_in_file_order() -> None:
    assert subordinate_ranges(SUBUID, "alice", 1000) == [(100000, 65536), (500000, 10)]
    assert subordinate_ranges(SUBUID, "dave", 1001) == [(200000, 65536)]
    assert subordinate_ranges(SUBUID, "bob", 1002) == []  # malformed line skipped
    assert subordinate_ranges(SUBUID, "carol", 1003) == []


def test_full_map_with_helpers_and_ranges() -> None:
    idmap = plan_idmap(
        uid=1000,
        gid=1000,
        user="alice",
        subuid_text=SUBUID,
        subgid_text=SUBUID,
        helpers_available=True,
    )
    assert idmap.helpers
    assert idmap.uids == (IdRange(0, 1000, 1), IdRange(1, 100000, 65536))
    assert map_lines(idmap.uids) == "0 1000 1\n1 100000 65536\n"
    assert idmap.describe().startswith("uid 0=1000, 1-65536=100000-165535;")


@pytest.mark.parametrize(
    ("helpers", "subgid"),
    [(False, SUBUID), (True, ""), (True, "someoneelse:1:2\n")],
)
def test_single_map_otherwise(helpers: bool, subgid: str) -> None:
    idmap = plan_idmap(
        uid=1000,
        gid=100,
        user="alice",
        subuid_text=SUBUID,
        subgid_text=subgid,
        helpers_available=helpers,
    )
    assert idmap == IdMap(uids=(IdRange(0, 1000, 1),), gids=(IdRange(0, 100, 1),), helpers=False)
    assert idmap.single
    assert "single mapping" in idmap.describe()


def test_current_idmap_reads_etc(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text("")
    idmap = current_idmap(etc=tmp_path, which=lambda name: None)
    assert not idmap.helpers


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("user/max_user_namespaces", "0", "user.max_user_namespaces"),
        ("kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone=1"),
        ("kernel/apparmor_restrict_unprivileged_userns", "1", "AppArmor"),
    ],
)
def test_reasons_name_the_setting_to_change(
    tmp_path: Path, name: str, value: str, says: str
) -> None:
    assert unavailable_reason(tmp_path) is None
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(value + "\n")
    reason = unavailable_reason(tmp_path)
    assert reason is not None
    assert says in reason


def test_write_maps_single_writes_proc_files(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    idmap = IdMap(uids=(IdRange(0, 1000, 1),), gids=(IdRange(0, 100, 1),), helpers=False)
    write_maps(42, idmap, proc=tmp_path)
    assert (tmp_path / "42" / "setgroups").read_text() == "deny\n"
    assert (tmp_path / "42" / "uid_map").read_text() == "0 1000 1\n"
    assert (tmp_path / "42" / "gid_map").read_text() == "0 100 1\n"


def test_write_maps_single_names_the_refusing_file(tmp_path: Path) -> None:
    idmap = IdMap(uids=(IdRange(0, 1000, 1),), gids=(IdRange(0, 100, 1),), helpers=False)
    with pytest.raises(PrivilegeError, match=r"99/setgroups"):
        write_maps(99, idmap, proc=tmp_path)  # no such process dir


def test_write_maps_with_helpers_runs_them_and_reports_failure() -> None:
    idmap = IdMap(
        uids=(IdRange(0, 1000, 1), IdRange(1, 100000, 65536)),
        gids=(IdRange(0, 1000, 1), IdRange(1, 100000, 65536)),
        helpers=True,
    )
    calls: list[list[str]] = []

    def ok(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    write_maps(7, idmap, run=ok)
    assert calls == [
        ["newuidmap", "7", "0", "1000", "1", "1", "100000", "65536"],
        ["newgidmap", "7", "0", "1000", "1", "1", "100000", "65536"],
    ]

    def refuse(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(argv, 1, b"", b"newuidmap: uid range not allowed")

    with pytest.raises(PrivilegeError, match=r"newuidmap 7 0 1000 1 .*not allowed"):
        write_maps(7, idmap, run=refuse)


def test_the_default_helper_runner_captures_stderr_and_the_exit_code() -> None:
    done = userns._spawn(["sh", "-c", "echo refused >&2; exit 3"])
    assert (done.returncode, done.stderr) == (3, b"refused\n")
    missing = userns._spawn(["minidock-no-such-tool"])
    assert missing.returncode == 127
    assert missing.stderr


# ---- root on the host, or root of a user namespace ----------------------------------------------
@pytest.mark.parametrize(
    ("text", "initial", "host"),
    [
        ("         0          0 4294967295\n", True, 0),
        ("         0       1001          1\n", False, 1001),
        ("0 1001 1\n1 100000 65536\n", False, 1001),
    ],
)
def test_the_initial_user_namespace_is_told_by_uid_map(
    tmp_path: Path, text: str, initial: bool, host: int
) -> None:
    uid_map = tmp_path / "uid_map"
    uid_map.write_text(text)
    assert capabilities.in_initial_userns(str(uid_map)) is initial
    if os.geteuid() == 0:  # (uid 0 inside maps to the first line's outside id)
        assert capabilities.host_uid(str(uid_map)) == host
    assert capabilities.in_initial_userns(str(tmp_path / "missing")) is True  # no /proc: host


@pytest.fixture
def rootless(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this process is not root on the host (as in rootless mode)."""
    monkeypatch.setitem(capabilities._facts, "/proc/self/uid_map", False)


@pytest.fixture
def disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rootless: None) -> Path:
    """A machine whose user namespaces are disabled: a fake /proc/sys saying so."""
    proc_sys = tmp_path / "proc-sys"
    (proc_sys / "user").mkdir(parents=True)
    (proc_sys / "user" / "max_user_namespaces").write_text("0\n")
    monkeypatch.setattr(userns, "_PROC_SYS", proc_sys)
    monkeypatch.setattr(userns, "_checked", [])
    return proc_sys


def test_check_available_names_the_setting_to_enable(disabled: Path) -> None:
    with pytest.raises(PrivilegeError) as info:
        userns.check_available()
    message = str(info.value)
    assert message.startswith("cannot run containers as an ordinary user: user namespaces")
    assert "sysctl -w user.max_user_namespaces=" in message
    assert "\n" not in message


def test_check_available_is_quiet_for_root_and_where_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(userns, "_PROC_SYS", tmp_path)  # (nothing forbids them there)
    monkeypatch.setattr(userns, "_checked", [])
    userns.check_available()
    monkeypatch.setitem(capabilities._facts, "/proc/self/uid_map", False)
    monkeypatch.setattr(userns, "_checked", [])
    userns.check_available()


@pytest.mark.parametrize(
    ("err", "says"),
    [
        (errno.EPERM, "user.max_user_namespaces = 0"),  # the fake /proc/sys explains it
        (errno.ENOSPC, "user.max_user_namespaces = 0"),
    ],
)
def test_a_refused_unshare_is_a_privilege_error_with_the_reason(
    disabled: Path, err: int, says: str
) -> None:
    sys_ = RecordingSyscalls(fail={"unshare": OSError(err, os.strerror(err), "unshare")})
    single = IdMap(uids=(IdRange(0, 1000, 1),), gids=(IdRange(0, 1000, 1),), helpers=False)
    with pytest.raises(PrivilegeError, match="cannot create a user namespace") as info:
        userns.enter(single, sys_)
    assert says in str(info.value)
    assert sys_.calls == [("unshare", CLONE_NEWUSER | CLONE_NEWNS)]


def test_a_refusal_nothing_explains_still_says_what_to_suspect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(userns, "_PROC_SYS", tmp_path)
    for err, says in ((errno.EPERM, "seccomp"), (errno.ENOSPC, "limit of user namespaces")):
        sys_ = RecordingSyscalls(fail={"unshare": OSError(err, os.strerror(err), "unshare")})
        idmap = IdMap(uids=(IdRange(0, 1, 1),), gids=(IdRange(0, 1, 1),), helpers=False)
        with pytest.raises(PrivilegeError, match=says):
            userns.enter(idmap, sys_)


@pytest.mark.parametrize(
    ("command", "code"),
    [(["run", "busybox", "true"], 125), (["exec", "web", "true"], 126), (["start", "web"], 1)],
)
def test_the_cli_says_so_in_one_line_on_a_machine_without_user_namespaces(
    disabled: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    code: int,
) -> None:
    """Before anything else (no image, no container needed), with docker's exit codes."""
    from pytest_minidock.cli import main

    status = main(["--root", str(tmp_path / "store"), *command])
    out, err = capsys.readouterr()
    assert status == code
    assert out == ""
    assert err.startswith("Error: cannot run containers as an ordinary user: user namespaces")
    assert "user.max_user_namespaces" in err
    assert err.count("\n") == 1


# ---- which ids a rootless container may use ------------------------------------------------------
def _facts(
    monkeypatch: pytest.MonkeyPatch,
    idmap: IdMap,
    *,
    helpers: bool = True,
    subuids: bool = True,
    forced: bool = False,
) -> None:
    facts = userns._Facts(user="alice", helpers=helpers, subuids=subuids, forced_single=forced)
    monkeypatch.setattr(userns, "_planned", {"single" if forced else "": (idmap, facts)})
    if forced:
        monkeypatch.setenv(userns.ENV_USERNS, "single")
    else:
        monkeypatch.delenv(userns.ENV_USERNS, raising=False)


FULL = IdMap(
    uids=(IdRange(0, 1000, 1), IdRange(1, 100000, 65536)),
    gids=(IdRange(0, 1000, 1), IdRange(1, 100000, 65536)),
    helpers=True,
)
SINGLE = IdMap(uids=(IdRange(0, 1000, 1),), gids=(IdRange(0, 1000, 1),), helpers=False)


@pytest.mark.parametrize(
    ("idmap", "kw", "uid", "says"),
    [
        (FULL, {}, 70000, "use a uid in that range (the subordinate ids of alice)"),
        (SINGLE, {"forced": True}, 1000, "unset MINIDOCK_USERNS=single"),
        (SINGLE, {"subuids": False}, 1000, "usermod --add-subuids 100000-165535"),
        (SINGLE, {"helpers": False}, 1000, "install newuidmap/newgidmap (Debian: `apt install"),
        (SINGLE, {"subuids": False, "helpers": False}, 5, "and install newuidmap/newgidmap"),
    ],
)
def test_an_unmapped_user_is_refused_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch, idmap: IdMap, kw: dict[str, bool], uid: int, says: str
) -> None:
    _facts(monkeypatch, idmap, **kw)
    userns.check_mapped("0:0", 0, 0)  # root always is
    with pytest.raises(UsageError) as info:
        userns.check_mapped("app", uid, 0)
    message = str(info.value)
    assert message.startswith(f"user 'app': uid {uid} is not mapped in the rootless user namespace")
    assert says in message
    with pytest.raises(UsageError, match="gid 70000 is not mapped"):
        userns.check_mapped("0:70000", 0, 70000)


def test_a_running_containers_own_maps_decide_for_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    _facts(monkeypatch, SINGLE)
    ranges = userns.parse_map(
        "         0       1000          1\n         1     100000      65536\n"
    )
    assert ranges == FULL.uids
    userns.check_mapped("1000", 1000, 1000, uids=ranges, gids=ranges)  # (the planned map: single)
    assert userns.mapped_groups([0, 10, 70000, 65536], ranges) == [0, 10, 65536]


def test_the_planned_map_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userns, "_planned", {})
    monkeypatch.setenv(userns.ENV_USERNS, "single")
    forced = userns.runtime_idmap()
    assert forced.single
    assert forced.uids == (IdRange(0, os.getuid(), 1),)
    monkeypatch.delenv(userns.ENV_USERNS)
    assert userns.runtime_idmap() == current_idmap()


def test_setgroups_denied_reads_the_namespaces_setting(tmp_path: Path) -> None:
    path = tmp_path / "setgroups"
    path.write_text("deny\n")
    assert userns.setgroups_denied(str(path))
    path.write_text("allow\n")
    assert not userns.setgroups_denied(str(path))
    assert not userns.setgroups_denied(str(tmp_path / "missing"))


# ---- what differs for the store, the mounts and the cgroups --------------------------------------
def test_extraction_in_a_user_namespace_writes_user_whiteouts_and_chowns_only_with_a_full_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rootless: None
) -> None:
    from pytest_minidock.store import snapshots

    single, full = tmp_path / "single", tmp_path / "full"
    single.write_text("0 1000 1\n")
    full.write_text("0 1000 1\n1 100000 65536\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # root of the user namespace
    for uid_map, chown in ((single, False), (full, True)):
        policy = snapshots.ExtractPolicy.for_current_user(str(uid_map))
        assert policy == snapshots.ExtractPolicy(devices=False, chown=chown, whiteout="xattr")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # an ordinary user, no namespace
    policy = snapshots.ExtractPolicy.for_current_user(str(full))
    assert policy == snapshots.ExtractPolicy(devices=False, chown=False, whiteout="xattr")


def test_an_owner_the_namespace_lacks_is_left_as_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rootless: None
) -> None:
    """In a user namespace, chown to an id its map lacks is EINVAL: the file stays ours."""
    import io
    import tarfile

    from pytest_minidock.store import snapshots

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("dir/file")
        info.uid = info.gid = 200000
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    real = os.fchown
    calls: list[int] = []

    def fchown(fd: int, uid: int, gid: int) -> None:
        calls.append(uid)
        if uid == 200000:
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, uid, gid)

    monkeypatch.setattr(os, "fchown", fchown)
    dest = tmp_path / "dest"
    dest.mkdir()
    policy = snapshots.ExtractPolicy(devices=False, chown=True, whiteout="xattr")
    data.seek(0)
    assert snapshots.extract_layer(data, dest, policy=policy, source="layer") == 2
    assert (dest / "dir" / "file").read_bytes() == b"hi"
    assert (dest / "dir" / "file").stat().st_uid == os.getuid()
    assert 200000 in calls


def test_on_the_hosts_network_rootless_binds_the_hosts_sys(tmp_path: Path) -> None:
    from pytest_minidock.runtime import _sys
    from pytest_minidock.runtime.mounts import RootfsConfig, _mount_flags, plan_rootfs

    c = tmp_path / "c"
    cfg = RootfsConfig(
        rootfs=str(c / "rootfs"),
        lowerdirs=(str(tmp_path / "base"),),
        upperdir=str(c / "upper"),
        workdir=str(c / "work"),
        create_devices=False,
        userxattr=True,
        host_sys=True,
    )
    plan = plan_rootfs(cfg)
    sys_ops = [op for op in plan if op.ctr == "/sys"]
    assert [op.fstype for op in plan if op.kind == "mount"].count("sysfs") == 0
    bind, remount = sys_ops[-2:]
    assert (bind.source, bind.flags) == ("/sys", _sys.MS_BIND | _sys.MS_REC)
    assert remount.flags & _sys.MS_RDONLY
    assert remount.flags & _sys.MS_REMOUNT
    assert remount.flags & _sys.MS_NOSUID
    assert remount.flags & _mount_flags("/sys") == _mount_flags("/sys")  # (its locked flags)
    assert "userxattr" in next(op.data for op in plan if op.fstype == "overlay")
    # the masked paths of /sys still go over it
    assert any(op.ctr == "/sys/firmware" for op in plan) == os.path.exists("/sys/firmware")


@pytest.mark.parametrize(("release", "ok"), [("5.10.0-28-amd64", False), ("5.11.0", True)])
def test_overlay_in_a_user_namespace_needs_linux_5_11(
    release: str, ok: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_minidock.runtime import fallback

    monkeypatch.delenv("MINIDOCK_OVERLAY", raising=False)
    monkeypatch.setattr(fallback._Once, "available", True)
    monkeypatch.setattr(fallback._Once, "warned", False)
    assert fallback.overlay_available(rootless=True, release=release) is ok
    assert fallback.overlay_available(release=release) is True  # root: any release
    fallback.warn_once(rootless=True)
    fallback.warn_once(rootless=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "user namespace (Linux 5.11 and later do)" in err


def test_limits_no_cgroup_can_apply_are_dropped_and_said_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_minidock.runtime import cgroups

    monkeypatch.setattr(cgroups, "_warned", set())
    manager = cgroups.NullManager()
    wanted = cgroups.Limits(memory=64 << 20, pids=10)
    kept = cgroups.drop_unavailable(wanted, manager, uid=1001)
    assert not kept.requested
    assert cgroups.drop_unavailable(wanted, manager, uid=1001) == kept
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "without --memory, --pids-limit" in err
    assert "user@1001.service" in err
    cgroups.drop_unavailable(cgroups.Limits(memory=64 << 20, cpus=0.5), manager)
    err = capsys.readouterr().err  # only the limit not said yet
    assert "without --cpus here" in err
    v2 = cgroups.Hierarchy(2, Path("/sys/fs/cgroup/user"), frozenset({"memory", "pids"}))
    partial = cgroups.CgroupfsManager({"procs": v2, "memory": v2, "pids": v2})
    assert cgroups.drop_unavailable(wanted, partial) == wanted


def test_the_delegated_subtree_is_the_highest_group_the_user_owns(tmp_path: Path) -> None:
    from pytest_minidock.runtime.cgroups import Mount, delegated_mount

    mount = tmp_path / "cgroup"
    service = mount / "user.slice" / "user-1001.slice" / "user@1001.service"
    leaf = service / "app.slice" / "run-1.scope"
    leaf.mkdir(parents=True)
    for d in (service, service / "app.slice", leaf, mount / "user.slice"):
        (d / "cgroup.procs").write_text("")
    owners = {str(service): 1001, str(service / "app.slice"): 1001, str(leaf): 1001}

    def owner(path: str) -> int:
        return owners.get(path, 0)

    own = "0::/user.slice/user-1001.slice/user@1001.service/app.slice/run-1.scope\n"
    mounts = [Mount("/sys/fs/cgroup/cpu", 1, frozenset({"cpu"})), Mount(str(mount), 2, frozenset())]
    found = delegated_mount(mounts, own, 1001, owner=owner)
    assert found == Mount(str(service), 2, frozenset())
    session = "0::/user.slice/user-1001.slice/session-3.scope\n"  # (root's: not delegated)
    assert delegated_mount(mounts, session, 1001, owner=owner) is None
    assert delegated_mount(mounts, "1:name=systemd:/x\n", 1001, owner=owner) is None
