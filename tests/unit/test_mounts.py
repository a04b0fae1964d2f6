"""Mount plans as data, safe target resolution, ``apply`` against a recorder, the ``_sys`` helpers.

Nothing here needs root: plans are pure data and ``apply`` runs against ``RecordingSyscalls``.
(``tests/privileged/test_mounts_root.py`` applies plans for real.)
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from pytest_minidock.errors import RuntimeFailure, UsageError
from pytest_minidock.runtime import _sys
from pytest_minidock.runtime._sys import (
    CAPS,
    DOCKER_DEFAULT_CAPS,
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    LinuxSyscalls,
    RecordingSyscalls,
    cap_mask,
    parse_caps,
)
from pytest_minidock.runtime.mounts import (
    MASKED_PATHS,
    READONLY_PATHS,
    BindMount,
    Op,
    RootfsConfig,
    TmpfsMount,
    apply,
    plan_rootfs,
    resolve_in_root,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

_FLAG_NAMES = sorted(
    ((name[3:].lower(), value) for name, value in vars(_sys).items() if name.startswith("MS_")),
    key=lambda item: item[1],
)


def _flags(flags: int) -> str:
    names = [name for name, bit in _FLAG_NAMES if flags & bit]
    assert sum(bit for name, bit in _FLAG_NAMES if name in names) == flags, hex(flags)
    return "|".join(names) or "0"


def show(plan: tuple[Op, ...], root: str) -> list[str]:
    """A plan as readable lines; the rootfs path is shown as ``$R``."""
    out = []
    for op in plan:
        target = "$R" + op.target[len(root) :] if op.target.startswith(root) else op.target
        source = "$R" + op.source[len(root) :] if op.source.startswith(root) else op.source
        if op.kind == "mount":
            line = f"mount {source or '-'} {target} {op.fstype or '-'} {_flags(op.flags)} {op.data}"
        elif op.kind == "mknod":
            line = f"mknod {target} {op.mode:o} {os.major(op.device)}:{os.minor(op.device)}"
        elif op.kind in ("mkdir", "touch"):
            line = f"{op.kind} {target} {op.mode:o}"
        elif op.kind == "symlink":
            line = f"symlink {target} -> {op.source}"
        elif op.kind == "umount2":
            line = f"umount2 {target} {op.flags}"
        else:
            line = f"{op.kind} {target} {op.source}"
        out.append(line.rstrip())
    return out


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def masking(root: str = "$R") -> list[str]:
    """The masked and read-only path lines, for whatever this host's /proc and /sys have."""
    out = []
    for path in MASKED_PATHS:
        if not _exists(path):
            continue
        if os.path.isdir(path):
            out.append(f"mount tmpfs {root}{path} tmpfs rdonly")
        else:
            out.append(f"mount /dev/null {root}{path} - bind|rec")
    for path in READONLY_PATHS:
        if _exists(path):
            out.append(f"mount {root}{path} {root}{path} - bind|rec")
            out.append(f"mount - {root}{path} - rdonly|nosuid|nodev|noexec|remount|bind")
    return out


def config(tmp_path: Path, **kw: object) -> RootfsConfig:
    """A container dir under ``tmp_path`` whose image layers do not exist (so nothing is there)."""
    c = tmp_path / "c"
    return RootfsConfig(
        rootfs=str(c / "rootfs"),
        lowerdirs=(str(tmp_path / "s" / "base"), str(tmp_path / "s" / "top")),
        upperdir=str(c / "upper"),
        workdir=str(c / "work"),
        **kw,  # type: ignore[arg-type]
    )


def dev_lines(*, devices: str = "mknod", kcore: bool = _exists("/proc/kcore")) -> list[str]:
    lines = ["mkdir $R/dev 755", "mount tmpfs $R/dev tmpfs nosuid|strictatime mode=755,size=65536k"]
    for name, major, minor in (
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ):
        if devices == "mknod":
            lines.append(f"mknod $R/dev/{name} 20666 {major}:{minor}")
        else:
            lines += [f"touch $R/dev/{name} 644", f"mount /dev/{name} $R/dev/{name} - bind|rec"]
    gid = ",gid=5" if devices == "mknod" else ""
    lines += [
        "mkdir $R/dev/pts 755",
        f"mount devpts $R/dev/pts devpts nosuid|noexec newinstance,ptmxmode=0666,mode=0620{gid}",
        "symlink $R/dev/ptmx -> pts/ptmx",
        "mkdir $R/dev/shm 755",
        "mount shm $R/dev/shm tmpfs nosuid|nodev|noexec mode=1777,size=65536k",
        "mkdir $R/dev/mqueue 755",
        "mount mqueue $R/dev/mqueue mqueue nosuid|nodev|noexec",
        "symlink $R/dev/fd -> /proc/self/fd",
        "symlink $R/dev/stdin -> /proc/self/fd/0",
        "symlink $R/dev/stdout -> /proc/self/fd/1",
        "symlink $R/dev/stderr -> /proc/self/fd/2",
    ]
    if kcore:
        lines.append("symlink $R/dev/core -> /proc/kcore")
    lines += ["touch $R/dev/console 644", "mount /dev/null $R/dev/console - bind|rec"]
    return lines


PIVOT = ["chdir $R", "pivot_root . .", "umount2 . 2", "chdir /"]


# ---- whole plans -------------------------------------------------------------------------------


def test_default_plan(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    s = tmp_path / "s"
    c = tmp_path / "c"
    overlay = f"lowerdir={s}/top:{s}/base,upperdir={c}/upper,workdir={c}/work"
    assert show(plan_rootfs(cfg), cfg.rootfs) == [
        "mount none / - rec|private",
        f"mount overlay $R overlay 0 {overlay}",
        "mkdir $R/proc 755",
        "mount proc $R/proc proc nosuid|nodev|noexec",
        *dev_lines(),
        "mkdir $R/sys 755",
        "mount sysfs $R/sys sysfs rdonly|nosuid|nodev|noexec",
        *masking(),
        *PIVOT,
    ]


def test_privileged_plan_has_no_masks_and_a_writable_sys(tmp_path: Path) -> None:
    cfg = config(tmp_path, privileged=True)
    lines = show(plan_rootfs(cfg), cfg.rootfs)
    assert "mount sysfs $R/sys sysfs nosuid|nodev|noexec" in lines
    assert lines[lines.index("mount sysfs $R/sys sysfs nosuid|nodev|noexec") + 1 :] == PIVOT
    assert not [line for line in lines if "$R/proc/" in line or "$R/sys/" in line]
    start = lines.index("mkdir $R/dev 755")
    assert lines[start : start + len(dev_lines())] == dev_lines()


def test_readonly_root_is_remounted_after_pivot_root_then_chdir(tmp_path: Path) -> None:
    cfg = config(tmp_path, readonly=True, workdir_in_container="/srv/app/")
    lines = show(plan_rootfs(cfg), cfg.rootfs)
    assert lines[-6:] == [*PIVOT, "mount - / - rdonly|remount|bind", "chdir /srv/app"]
    # the working directory is made before pivot_root, inside the root
    assert (
        lines.index("mkdir $R/srv 755")
        < lines.index("mkdir $R/srv/app 755")
        < lines.index(PIVOT[0])
    )


def test_readonly_plain_directory_root_keeps_its_mount_flags(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    cfg = RootfsConfig(str(root), (), "", "", overlay=False, readonly=True)
    plan = plan_rootfs(cfg)
    assert show(plan, str(root))[1] == "mount $R $R - bind|rec"
    remount = plan[-1]
    assert (remount.kind, remount.target) == ("mount", "/")
    assert remount.flags == MS_BIND | MS_REMOUNT | MS_RDONLY | _statvfs_flags(str(root))


def _statvfs_flags(path: str) -> int:
    f = os.statvfs(path).f_flag
    pairs = [(os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC)]
    pairs += [(os.ST_NOATIME, _sys.MS_NOATIME), (os.ST_NODIRATIME, _sys.MS_NODIRATIME)]
    pairs += [(os.ST_RELATIME, _sys.MS_RELATIME)]
    return sum(ms for st, ms in pairs if f & st)


def test_binds_tmpfs_and_etc_files(tmp_path: Path) -> None:
    data, conf, hosts, resolv = (tmp_path / n for n in ("data", "app.conf", "hosts", "resolv"))
    data.mkdir()
    for f in (conf, hosts, resolv):
        f.write_text("x\n")
    cfg = config(
        tmp_path,
        binds=(
            BindMount(str(data), "/var/lib/data/"),
            BindMount(str(conf), "/etc/app.conf", readonly=True),
            BindMount(str(resolv), "/etc/resolv.conf"),  # the user's file wins over the runtime's
        ),
        tmpfs=(TmpfsMount("/var", "size=64m,mode=1777,noexec"), TmpfsMount("/scratch", "exec,ro")),
        etc_files=((str(hosts), "/etc/hosts"), ("/ignored", "/etc/resolv.conf")),
    )
    lines = show(plan_rootfs(cfg), cfg.rootfs)
    first = lines.index("mount sysfs $R/sys sysfs rdonly|nosuid|nodev|noexec") + 1
    ro = _flags(MS_BIND | MS_REMOUNT | MS_RDONLY | _statvfs_flags(str(conf)))
    assert lines[first : lines.index(PIVOT[0])] == [
        # depth 1, in the order given: runtime files, binds, tmpfs
        "mkdir $R/var 755",
        "mount tmpfs $R/var tmpfs nosuid|nodev|noexec size=64m,mode=1777",
        "mkdir $R/scratch 755",
        "mount tmpfs $R/scratch tmpfs rdonly|nosuid|nodev",
        # depth 2
        "mkdir $R/etc 755",
        "touch $R/etc/hosts 644",
        f"mount {hosts} $R/etc/hosts - bind|rec",
        "touch $R/etc/app.conf 644",
        f"mount {conf} $R/etc/app.conf - bind|rec",
        f"mount - $R/etc/app.conf - {ro}",
        "touch $R/etc/resolv.conf 644",
        f"mount {resolv} $R/etc/resolv.conf - bind|rec",
        # depth 3: made inside the /var tmpfs, after it was mounted
        "mkdir $R/var/lib 755",
        "mkdir $R/var/lib/data 755",
        f"mount {data} $R/var/lib/data - bind|rec",
        *masking(),
    ]


def test_tmpfs_options_split_into_flags_and_data(tmp_path: Path) -> None:
    cfg = config(tmp_path, tmpfs=(TmpfsMount("/run", " size=1m , exec,suid,dev,noatime, "),))
    op = next(op for op in plan_rootfs(cfg) if op.ctr == "/run" and op.kind == "mount")
    assert (op.source, op.fstype, op.flags, op.data) == (
        "tmpfs",
        "tmpfs",
        _sys.MS_NOATIME,
        "size=1m",
    )


def test_rootless_devices_are_bound_from_the_host(tmp_path: Path) -> None:
    cfg = config(tmp_path, create_devices=False)
    lines = show(plan_rootfs(cfg), cfg.rootfs)
    start = lines.index("mkdir $R/dev 755")
    expected = dev_lines(devices="bind")
    assert lines[start : start + len(expected)] == expected
    assert not [line for line in lines if line.startswith("mknod")]


def test_console_is_the_given_pty(tmp_path: Path) -> None:
    cfg = config(tmp_path, console="/dev/pts/7")
    assert "mount /dev/pts/7 $R/dev/console - bind|rec" in show(plan_rootfs(cfg), cfg.rootfs)


def test_order_properties(tmp_path: Path) -> None:
    cfg = config(tmp_path, readonly=True, workdir_in_container="/w")
    plan = plan_rootfs(cfg)
    kinds = [op.kind for op in plan]
    targets = [op.target for op in plan]
    proc = targets.index(f"{cfg.rootfs}/proc")
    for i, op in enumerate(plan):
        if op.target.startswith(f"{cfg.rootfs}/proc/"):
            assert i > proc
    pivot = kinds.index("pivot_root")
    assert kinds.count("pivot_root") == 1
    # after pivot_root: detach the old root, cd /, the read-only remount, cd to the workdir
    assert kinds[pivot + 1 :] == ["umount2", "chdir", "mount", "chdir"]
    assert plan[pivot + 1].flags == MNT_DETACH
    assert plan[pivot + 3].flags & MS_RDONLY
    assert plan[0].flags == _sys.MS_REC | _sys.MS_PRIVATE
    assert plan[1].fstype == "overlay"
    # every host path before pivot_root is inside the rootfs, except what is bound from the host
    for op in plan[2 : pivot - 1]:
        assert op.target.startswith(cfg.rootfs + "/"), op


def test_lowerdirs_are_listed_top_first(tmp_path: Path) -> None:
    cfg = RootfsConfig("/c/rootfs", ("/s/1", "/s/2", "/s/3"), "/c/upper", "/c/work")
    assert plan_rootfs(cfg)[1] == Op(
        "mount",
        "/c/rootfs",
        source="overlay",
        fstype="overlay",
        data="lowerdir=/s/3:/s/2:/s/1,upperdir=/c/upper,workdir=/c/work",
    )


def test_overlay_options_are_escaped_and_userxattr_added() -> None:
    cfg = RootfsConfig("/c/rootfs", ("/s/a:b", "/s/c,d"), "/c/up\\per", "/c/work", userxattr=True)
    assert plan_rootfs(cfg)[1].data == (
        r"lowerdir=/s/c\,d:/s/a\:b,upperdir=/c/up\\per,workdir=/c/work,userxattr"
    )


def test_long_overlay_options_use_paths_relative_to_the_store() -> None:
    base = "/var/lib/minidock/snapshots/"
    lowers = tuple(f"{base}{i:064x}/fs" for i in range(45))
    cfg = RootfsConfig("/c/rootfs", lowers, "/var/lib/minidock/c/upper", "/var/lib/minidock/c/work")
    plan = plan_rootfs(cfg)
    assert plan[1] == Op("chdir", "/var/lib/minidock")
    assert plan[2].data.startswith(f"lowerdir=snapshots/{44:064x}/fs:snapshots/{43:064x}/fs:")
    assert plan[2].data.endswith(",upperdir=c/upper,workdir=c/work")
    assert len(plan[2].data) < 4096
    with pytest.raises(UsageError, match="too many image layers"):
        plan_rootfs(RootfsConfig("/c/rootfs", (*lowers, *lowers), "/c/upper", "/c/work"))


def test_an_image_without_layers_is_its_upper_dir(tmp_path: Path) -> None:
    cfg = RootfsConfig("/c/rootfs", (), "/c/upper", "/c/work")
    assert plan_rootfs(cfg)[1] == Op(
        "mount", "/c/rootfs", source="/c/upper", flags=MS_BIND | MS_REC
    )


# ---- targets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/etc/../../x", "climbs out"),
        ("/..", "climbs out"),
        ("relative/path", "not an absolute path"),
        ("/", "over the container's root"),
        ("/a/..", "over the container's root"),
    ],
)
def test_bad_bind_targets_are_refused(tmp_path: Path, target: str, message: str) -> None:
    cfg = config(tmp_path, binds=(BindMount(str(tmp_path), target),))
    with pytest.raises(UsageError, match=message):
        plan_rootfs(cfg)


def test_dotdot_inside_the_root_is_normalised(tmp_path: Path) -> None:
    cfg = config(tmp_path, tmpfs=(TmpfsMount("/a/./b/../c//"),))
    assert f"{cfg.rootfs}/a/c" in [op.target for op in plan_rootfs(cfg)]


def test_duplicate_and_sourceless_mounts_are_refused(tmp_path: Path) -> None:
    twice = config(tmp_path, binds=(BindMount(str(tmp_path), "/x"),), tmpfs=(TmpfsMount("/x/"),))
    with pytest.raises(UsageError, match="duplicate mount point: /x"):
        plan_rootfs(twice)
    missing = config(tmp_path, binds=(BindMount(str(tmp_path / "nope"), "/x"),))
    with pytest.raises(UsageError, match="nope"):
        plan_rootfs(missing)
    with pytest.raises(UsageError, match="working directory"):
        plan_rootfs(config(tmp_path, workdir_in_container="app"))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A plain-directory root with symlinks that try to lead out of it."""
    root = tmp_path / "rootfs"
    (root / "private" / "etc").mkdir(parents=True)
    (root / "real").mkdir()
    (root / "d").mkdir()
    (root / "etc").symlink_to("private/etc")  # relative, inside
    (root / "abs").symlink_to("/target")  # absolute: re-rooted
    (root / "escape").symlink_to("../../../../../../../../evil")  # climbs: clamped at /
    (root / "hostabs").symlink_to(str(tmp_path / "host"))  # an absolute host path
    (root / "d" / "up").symlink_to("../real")
    (root / "chain1").symlink_to("chain2")
    (root / "chain2").symlink_to("/d/up/")
    (root / "loop").symlink_to("loop")
    (root / "file").write_text("")
    return root


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        ("/etc/hosts", "/private/etc/hosts"),
        ("/abs", "/target"),
        ("/abs/x/y", "/target/x/y"),
        ("/escape/x", "/evil/x"),
        ("/d/up/sub", "/real/sub"),
        ("/chain1/z", "/real/z"),
        ("/missing/../etc", "/private/etc"),
        ("/", "/"),
        ("/file", "/file"),
    ],
)
def test_symlinks_resolve_inside_the_root(image: Path, path: str, resolved: str) -> None:
    assert resolve_in_root((str(image),), path) == resolved


def test_symlink_loops_and_files_as_directories_are_refused(image: Path) -> None:
    with pytest.raises(UsageError, match="too many levels of symbolic links"):
        resolve_in_root((str(image),), "/loop/x")
    with pytest.raises(UsageError, match="not a directory"):
        resolve_in_root((str(image),), "/file/x")
    with pytest.raises(UsageError, match="climbs out"):
        resolve_in_root((str(image),), "/../etc")


def test_mounts_on_symlinked_targets_land_inside_the_root(image: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    cfg = RootfsConfig(
        str(image),
        (),
        "",
        "",
        overlay=False,
        privileged=True,
        binds=(
            BindMount(str(src), "/abs"),
            BindMount(str(src), "/escape/x"),
            BindMount(str(src), "/hostabs/y"),
        ),
        etc_files=((str(hosts), "/etc/hosts"),),
        workdir_in_container="/d/up",
    )
    plan = plan_rootfs(cfg)
    lines = show(plan, str(image))
    host_rel = str(tmp_path / "host").lstrip("/")
    parts = host_rel.split("/")
    start = lines.index("mount sysfs $R/sys sysfs nosuid|nodev|noexec") + 1
    assert lines[start:] == [
        "mkdir $R/target 755",
        f"mount {src} $R/target - bind|rec",
        "touch $R/private/etc/hosts 644",
        f"mount {hosts} $R/private/etc/hosts - bind|rec",
        "mkdir $R/evil 755",
        "mkdir $R/evil/x 755",
        f"mount {src} $R/evil/x - bind|rec",
        *[f"mkdir $R/{'/'.join(parts[: i + 1])} 755" for i in range(len(parts))],
        f"mkdir $R/{host_rel}/y 755",
        f"mount {src} $R/{host_rel}/y - bind|rec",
        *PIVOT,
        "chdir /real",
    ]
    assert not (tmp_path / "host").exists()
    assert all(op.target.startswith(str(image)) for op in plan[1:-4])


def test_resolution_follows_overlay_layers(tmp_path: Path) -> None:
    base, top, upper = (tmp_path / n for n in ("base", "top", "upper"))
    for layer in (base, top, upper):
        layer.mkdir()
    (base / "etc").mkdir()
    (base / "etc" / "hosts").symlink_to("/run/hosts")
    (top / "etc").mkdir()
    (top / "etc" / "hostname").symlink_to("../srv/hostname")
    (upper / "data").symlink_to("/var/data")  # the container's own changes count too
    (base / "data").mkdir()
    (base / "opq").mkdir()
    (base / "opq" / "link").symlink_to("/elsewhere")
    (top / "opq").mkdir()
    (top / "gone").write_bytes(b"")
    (base / "gone").symlink_to("/elsewhere")
    try:
        os.setxattr(top / "opq", "user.overlay.opaque", b"y")
        os.setxattr(top / "gone", "user.overlay.whiteout", b"y")
    except OSError as exc:  # pragma: no cover - depends on the file system
        pytest.skip(f"user xattrs unsupported here: {exc}")
    layers = (str(upper), str(top), str(base))
    assert resolve_in_root(layers, "/etc/hosts", userxattr=True) == "/run/hosts"
    assert resolve_in_root(layers, "/etc/hostname", userxattr=True) == "/srv/hostname"
    assert resolve_in_root(layers, "/data/x", userxattr=True) == "/var/data/x"
    assert resolve_in_root(layers, "/opq/link", userxattr=True) == "/opq/link"  # hidden below
    assert resolve_in_root(layers, "/opq/link", userxattr=False) == "/elsewhere"
    assert resolve_in_root(layers, "/gone/x", userxattr=True) == "/gone/x"  # whited out


# ---- apply -------------------------------------------------------------------------------------


def _call(op: Op) -> tuple[object, ...]:
    args: dict[str, tuple[object, ...]] = {
        "mount": (op.source, op.target, op.fstype, op.flags, op.data),
        "umount2": (op.target, op.flags),
        "mkdir": (op.target, op.mode),
        "touch": (op.target, op.mode),
        "mknod": (op.target, op.mode, op.device),
        "symlink": (op.source, op.target),
        "pivot_root": (op.target, op.source),
        "chdir": (op.target,),
    }
    return (op.kind, *args[op.kind])


def test_apply_makes_exactly_the_planned_calls(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    cfg = config(
        tmp_path,
        readonly=True,
        binds=(BindMount(str(src), "/data", readonly=True),),
        tmpfs=(TmpfsMount("/run"),),
        etc_files=((str(src), "/etc/hosts"),),
        workdir_in_container="/app",
    )
    plan = plan_rootfs(cfg)
    rec = RecordingSyscalls()
    apply(plan, rec)
    assert rec.calls == [_call(op) for op in plan]
    assert rec.calls[0] == ("mount", "none", "/", "", _sys.MS_REC | _sys.MS_PRIVATE, "")
    assert rec.calls[-5:] == [
        ("pivot_root", ".", "."),
        ("umount2", ".", MNT_DETACH),
        ("chdir", "/"),
        ("mount", "", "/", "", MS_BIND | MS_REMOUNT | MS_RDONLY, ""),
        ("chdir", "/app"),
    ]


def _einval(call: tuple[object, ...]) -> OSError | None:
    if call[0] == "mount" and call[3] == "overlay":
        return OSError(errno.EINVAL, os.strerror(errno.EINVAL), call[2])
    return None


def test_a_failing_call_is_a_runtime_failure_naming_op_and_path(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    rec = RecordingSyscalls(fail=_einval)
    with pytest.raises(RuntimeFailure) as info:
        apply(plan_rootfs(cfg), rec)
    message = str(info.value)
    assert message.startswith(f"cannot mount overlay on {cfg.rootfs}: Invalid argument (lowerdir=")
    assert isinstance(info.value.__cause__, OSError)
    assert len(rec.calls) == 2  # nothing after the failure


@pytest.mark.parametrize(
    ("fail", "message"),
    [
        ("mkdir", "cannot create directory /proc ({R}/proc): Permission denied"),
        ("mknod", "cannot create device /dev/null ({R}/dev/null): Permission denied"),
        (
            "symlink",
            "cannot create symlink /dev/ptmx ({R}/dev/ptmx) -> pts/ptmx: Permission denied",
        ),
        ("touch", "cannot create mount point /dev/console ({R}/dev/console): Permission denied"),
        ("pivot_root", "cannot pivot_root into {R}: Permission denied"),
        ("umount2", "cannot detach the old root from {R}: Permission denied"),
        ("chdir", "cannot change directory to {R}: Permission denied"),
        ("sethostname", ""),
    ],
)
def test_failure_messages(tmp_path: Path, fail: str, message: str) -> None:
    cfg = config(tmp_path)
    rec = RecordingSyscalls(fail={fail: PermissionError(errno.EACCES, "Permission denied")})
    if not message:  # a call the plan does not make
        apply(plan_rootfs(cfg), rec)
        return
    with pytest.raises(RuntimeFailure) as info:
        apply(plan_rootfs(cfg), rec)
    assert str(info.value) == message.format(R=cfg.rootfs)


def test_failure_messages_for_mounts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    cfg = config(tmp_path, binds=(BindMount(str(src), "/data", readonly=True),))
    plan = plan_rootfs(cfg)

    def message(pred: Callable[[tuple[Any, ...]], bool]) -> str:
        def fail(call: tuple[Any, ...]) -> OSError | None:
            return OSError(errno.EPERM, "Operation not permitted") if pred(call) else None

        with pytest.raises(RuntimeFailure) as info:
            apply(plan, RecordingSyscalls(fail=fail))
        return str(info.value)

    r = cfg.rootfs
    assert message(lambda c: c[0] == "mount") == (
        "cannot change the propagation of /: Operation not permitted"
    )
    assert message(lambda c: c[0] == "mount" and c[1] == str(src)) == (
        f"cannot bind-mount {src} on /data ({r}/data): Operation not permitted"
    )
    assert message(lambda c: c[0] == "mount" and bool(c[4] & MS_REMOUNT)) == (
        f"cannot remount /data ({r}/data) read-only: Operation not permitted"
    )
    assert message(lambda c: c[0] == "mount" and c[3] == "devpts") == (
        f"cannot mount devpts on /dev/pts ({r}/dev/pts): Operation not permitted"
        " (newinstance,ptmxmode=0666,mode=0620,gid=5)"
    )


# ---- the syscall seam --------------------------------------------------------------------------


def test_recording_syscalls_record_and_fail() -> None:
    rec = RecordingSyscalls(pidfd=7)
    rec.unshare(_sys.CLONE_NEWNS | _sys.CLONE_NEWUTS)
    rec.sethostname("box")
    rec.drop_capabilities(DOCKER_DEFAULT_CAPS)
    assert rec.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1) == 0
    assert rec.pidfd_open(42) == 7
    rec.set_no_new_privs()
    rec.set_pdeathsig(9)
    rec.set_child_subreaper()
    rec.loopback_up()
    rec.setns(3, _sys.CLONE_NEWNET)
    assert rec.calls == [
        ("unshare", 0x04020000),
        ("sethostname", "box"),
        ("drop_capabilities", DOCKER_DEFAULT_CAPS),
        ("prctl", 38, 1, 0, 0, 0),
        ("pidfd_open", 42),
        ("set_no_new_privs",),
        ("set_pdeathsig", 9),
        ("set_child_subreaper",),
        ("loopback_up",),
        ("setns", 3, _sys.CLONE_NEWNET),
    ]
    failing = RecordingSyscalls(fail={"sethostname": PermissionError(errno.EPERM, "no")})
    failing.unshare(0)
    with pytest.raises(PermissionError):
        failing.sethostname("x")
    assert failing.calls == [("unshare", 0), ("sethostname", "x")]


def test_parse_caps() -> None:
    assert parse_caps(["NET_ADMIN"]) == parse_caps(["CAP_NET_ADMIN"]) == {12}
    assert parse_caps(["net_admin", " sys_ptrace "]) == {12, 19}
    assert parse_caps(["ALL"]) == set(range(41)) == parse_caps(["all"])
    assert parse_caps([]) == frozenset()
    assert CAPS["CAP_CHECKPOINT_RESTORE"] == 40
    assert sorted(CAPS.values()) == list(range(41))
    with pytest.raises(UsageError, match="NET_WIZARD"):
        parse_caps(["NET_WIZARD"])


def test_docker_default_caps() -> None:
    names = {name for name, cap in CAPS.items() if cap in DOCKER_DEFAULT_CAPS}
    assert names == {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    }
    assert cap_mask(DOCKER_DEFAULT_CAPS) == 0xA80425FB  # docker's CapEff in /proc/self/status


def test_importing_the_seam_loads_no_ctypes() -> None:
    code = "import sys, pytest_minidock.runtime._sys; print('ctypes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_real_seam_needs_only_ctypes_c_extension() -> None:
    code = (
        "import sys; from pytest_minidock.runtime._sys import LinuxSyscalls as L; s = L(); "
        "print('ctypes' in sys.modules, s._c.cap_last_cap > 30, s._c.ctypes.get_errno() >= 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]


def test_linux_syscalls_without_root(tmp_path: Path) -> None:
    s = LinuxSyscalls()
    d = str(tmp_path / "d")
    s.mkdir(d, 0o755)
    s.mkdir(d, 0o700)  # exists: fine
    f = str(tmp_path / "f")
    s.touch(f, 0o600)
    s.touch(f, 0o600)
    s.touch(d, 0o600)  # a directory is already there: fine too
    link = str(tmp_path / "link")
    s.symlink("f", link)
    s.symlink("other", link)
    s.touch(link, 0o600)  # never follows: the link stays a link
    assert os.readlink(link) == "f"
    assert os.path.isdir(d)
    assert os.path.getsize(f) == 0
    assert s.prctl(_sys.PR_GET_NO_NEW_PRIVS) in (0, 1)
    (tmp_path / "not-a-mount").mkdir()
    with pytest.raises(OSError) as info:
        s.umount2(str(tmp_path / "not-a-mount"), 0)
    assert info.value.filename == str(tmp_path / "not-a-mount")
    assert info.value.errno in (errno.EINVAL, errno.EPERM)
    with pytest.raises(FileNotFoundError):
        s.chdir(str(tmp_path / "nowhere"))


def test_pidfd_open(tmp_path: Path) -> None:
    import select

    s = LinuxSyscalls()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        fd = s.pidfd_open(child.pid)
        try:
            poll = select.poll()
            poll.register(fd, select.POLLIN)
            assert poll.poll(0) == []  # still running
            assert child.stdin is not None
            child.stdin.close()
            assert poll.poll(5000) != []  # readable once it exits
        finally:
            os.close(fd)
    finally:
        child.wait()
    with pytest.raises(ProcessLookupError):
        s.pidfd_open(child.pid)


# ---- the init layer and volatile overlays ------------------------------------------------------


def test_the_init_layer_holds_the_mount_points_so_nothing_is_made_in_the_upper_dir(
    tmp_path: Path,
) -> None:
    from pytest_minidock.runtime.mounts import INIT_LAYER, make_init_layer

    init = make_init_layer(str(tmp_path / "init"))
    assert make_init_layer(init) == init  # made once; then only looked at
    for entry in INIT_LAYER:
        path = tmp_path / "init" / entry
        assert path.is_dir() if entry.endswith("/") else path.is_file()
        assert (path.stat().st_mode & 0o777) == (0o755 if entry.endswith("/") else 0o644)
    assert not list(tmp_path.glob("init.*.tmp"))
    etc = (
        (str(tmp_path / "h"), "/etc/hosts"),
        (str(tmp_path / "n"), "/etc/hostname"),
        (str(tmp_path / "r"), "/etc/resolv.conf"),
    )
    cfg = config(tmp_path, init_layer=init, etc_files=etc)
    lines = show(plan_rootfs(cfg), cfg.rootfs)
    s, c = tmp_path / "s", tmp_path / "c"
    overlay = f"lowerdir={init}:{s}/top:{s}/base,upperdir={c}/upper,workdir={c}/work"
    assert lines[1] == f"mount overlay $R overlay 0 {overlay}"
    made = [line for line in lines if line.startswith(("touch", "mkdir"))]
    # only what goes in the fresh /dev (a tmpfs) is made: nothing in the overlay
    assert made == [
        "mkdir $R/dev/pts 755",
        "mkdir $R/dev/shm 755",
        "mkdir $R/dev/mqueue 755",
        "touch $R/dev/console 644",
    ]
    assert f"mount {tmp_path}/h $R/etc/hosts - bind|rec" in lines


def test_a_volatile_overlay_says_so_and_its_marker_is_cleared_before_a_new_mount(
    tmp_path: Path,
) -> None:
    from pytest_minidock.runtime.mounts import clear_volatile, volatile_supported

    cfg = config(tmp_path, volatile=True)
    assert show(plan_rootfs(cfg), cfg.rootfs)[1].endswith(",volatile")
    marker = tmp_path / "work" / "work" / "incompat" / "volatile" / "dirty"
    marker.mkdir(parents=True)
    clear_volatile(str(tmp_path / "work"))
    assert sorted(p.name for p in (tmp_path / "work").rglob("*")) == ["work"]
    clear_volatile(str(tmp_path / "nothing-here"))  # nothing to clear: fine
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    assert volatile_supported() == ((major, minor) >= (5, 10))


# ---- the kit: system mounts made ahead, moved in -----------------------------------------------


def test_the_kit_is_the_system_mounts_of_a_plan_made_over_pid1s_own_directories() -> None:
    from pytest_minidock.runtime.mounts import plan_kit

    system = [
        "mount proc $R/proc proc nosuid|nodev|noexec",
        *dev_lines()[1:],  # (no mkdir: PID 1's own /dev is there)
        "mount sysfs $R/sys sysfs rdonly|nosuid|nodev|noexec",
        *masking(),
    ]
    assert show(plan_kit(), "/nowhere") == [
        "mount none / - rec|private",
        # (an empty read-only tmpfs under the new sysfs: on the host's network, the host's
        # sysfs superblock would not go over /sys itself)
        "mount tmpfs /sys tmpfs rdonly|nosuid|nodev|noexec",
        *(line.replace("$R", "") for line in system),
    ]


def test_a_plan_with_the_kit_moves_proc_dev_and_sys_in(tmp_path: Path) -> None:
    from pytest_minidock.runtime.mounts import drop_kit, make_init_layer, uses_kit

    init = make_init_layer(str(tmp_path / "init"))
    cfg = config(tmp_path, init_layer=init, kit=True, console="/dev/pts/7")
    plan = plan_rootfs(cfg)
    s, c = tmp_path / "s", tmp_path / "c"
    overlay = f"lowerdir={init}:{s}/top:{s}/base,upperdir={c}/upper,workdir={c}/work"
    assert show(plan, cfg.rootfs) == [
        "mount none / - rec|private",
        f"mount overlay $R overlay 0 {overlay}",
        "mount /proc $R/proc - move",
        "mount /dev $R/dev - move",
        "mount /sys $R/sys - move",
        "mount /dev/pts/7 $R/dev/console - bind|rec",  # a terminal: over the kit's console
        *PIVOT,
    ]
    assert uses_kit(plan)
    recorder = RecordingSyscalls()
    drop_kit(recorder)
    assert recorder.calls == [("umount2", p, MNT_DETACH) for p in ("/sys", "/dev", "/proc")]


@pytest.mark.parametrize(
    "change",
    [
        {"privileged": True},
        {"create_devices": False},
        {"binds": (BindMount("/tmp", "/dev/shm"),)},
        {"tmpfs": (TmpfsMount("/proc/acpi"),)},
        {"binds": (BindMount("/tmp", "/sys"),)},
        {"init_layer": ""},  # these layers have no /proc, /dev, /sys: they are made
    ],
)
def test_the_kit_is_not_used_where_it_would_make_a_difference(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    from pytest_minidock.runtime.mounts import make_init_layer, uses_kit

    settings: dict[str, Any] = {"init_layer": make_init_layer(str(tmp_path / "init")), "kit": True}
    assert uses_kit(plan_rootfs(config(tmp_path, **settings)))
    assert not uses_kit(plan_rootfs(config(tmp_path, **{**settings, **change})))


# ---- look-ups in read-only layers are kept ---------------------------------------------------


def test_lookups_in_the_image_layers_are_kept_while_the_upper_dir_is_read_each_time(
    tmp_path: Path,
) -> None:
    from pytest_minidock.runtime.mounts import _Tree

    upper, lower = tmp_path / "upper", tmp_path / "lower"
    upper.mkdir()
    (lower / "data").mkdir(parents=True)
    layers = (str(upper), str(lower))
    assert _Tree(layers, False, str(upper))._lookup("data", layers) == (
        "d",
        (str(lower / "data"),),
        "",
    )
    (lower / "data").rmdir()  # (a snapshot never changes: what was found there stays found)
    assert _Tree(layers, False, str(upper))._lookup("data", layers)[0] == "d"
    assert _Tree(layers, False)._lookup("data", layers)[0] == "-"  # (nothing kept without it)
    os.symlink("/elsewhere", upper / "data")  # the container's own upper dir: read every time
    assert _Tree(layers, False, str(upper))._lookup("data", layers) == ("l", (), "/elsewhere")


# ---- an overlay mounted ahead (a zygote's premount) ------------------------------------------


def test_overlay_parts_reads_the_plans_own_overlay_data(tmp_path: Path) -> None:
    from pytest_minidock.runtime.mounts import make_init_layer, overlay_parts

    init = make_init_layer(str(tmp_path / "init"))
    plan = plan_rootfs(config(tmp_path, init_layer=init, volatile=True))
    (data,) = [op.data for op in plan if op.fstype == "overlay"]
    lower, upper, work, options = overlay_parts(data) or ("", "", "", "")
    assert lower.split(":")[0] == init
    c = tmp_path / "c"
    assert (upper, work, options) == (str(c / "upper"), str(c / "work"), ",volatile")
    assert overlay_parts("lowerdir=/a\\,b,upperdir=/u,workdir=/w") is None  # escapes: never
    assert overlay_parts("lowerdir=a:b,upperdir=u,workdir=w") is None  # relative: never


def test_a_premount_fits_the_same_layers_only_while_they_are_the_same_directories(
    tmp_path: Path,
) -> None:
    from pytest_minidock.runtime.mounts import premount

    lower = tmp_path / "layer"
    lower.mkdir()
    rec = RecordingSyscalls()
    staged = str(tmp_path / "staged")
    pre = premount(staged, str(lower), ",volatile", rec)
    assert rec.calls == [
        ("mkdir", staged, 0o755),
        ("mkdir", f"{staged}/upper", 0o755),
        ("mkdir", f"{staged}/work", 0o755),
        ("mkdir", f"{staged}/rootfs", 0o755),
        (
            "mount",
            "overlay",
            f"{staged}/rootfs",
            "overlay",
            0,
            f"lowerdir={lower},upperdir={staged}/upper,workdir={staged}/work,volatile",
        ),
    ]
    assert pre.fits(str(lower), ",volatile")
    assert not pre.fits(str(lower), "")  # other options
    assert not pre.fits(f"{lower}:{lower}", ",volatile")  # other layers
    lower.rmdir()
    lower.mkdir()  # removed and made again (an image deleted and pulled again): not the same
    assert not pre.fits(str(lower), ",volatile")
    lower.rmdir()
    assert not pre.fits(str(lower), ",volatile")
