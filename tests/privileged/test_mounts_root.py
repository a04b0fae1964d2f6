"""Mount plans applied for real, in forked children with their own namespaces, and the syscall seam.

Every test forks: the child unshares what it needs, so nothing it mounts, drops or renames can
reach the test process or the host. Children always leave with ``os._exit`` and are always reaped.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import traceback
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.runtime._sys import (
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUTS,
    DOCKER_DEFAULT_CAPS,
    LinuxSyscalls,
    cap_mask,
)
from pytest_minidock.runtime.mounts import BindMount, RootfsConfig, TmpfsMount, apply, plan_rootfs

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.privileged

BUSYBOX = "/bin/busybox"
EXIT_CRASHED = 70


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    # Fail, never skip: a privileged test that cannot run has not passed.
    assert os.geteuid() == 0, "this test needs root (marker 'privileged')"


@pytest.fixture(scope="module")
def syscalls() -> LinuxSyscalls:
    """Made before any fork, as the runtime does, so children inherit the loaded C library."""
    return LinuxSyscalls()


def in_child(body: Callable[[], int]) -> int:
    """Run ``body`` in a forked child and return its exit code (70 if it raised)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = EXIT_CRASHED
        try:
            code = body()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def host_mounts(tmp_path: Path) -> set[str]:
    """The host's mount table, minus other tests' mounts under the temp dir (they may run now)."""
    tmp = tempfile.gettempdir().rstrip("/") + "/"
    mine = str(tmp_path)
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if point.startswith(tmp) and not point.startswith(mine):
                continue
            out.add(line)
    return out


def image(root: Path) -> Path:
    """A tiny image snapshot: busybox with a few applet links and a file in /etc."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "ls", "cat"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "image-file").write_text("original\n")
    return root


def run_container(syscalls: LinuxSyscalls, cfg: RootfsConfig, script: str) -> int:
    """PID 1 of a new PID namespace unshares a mount namespace, applies the plan, runs ``sh``."""
    plan = plan_rootfs(cfg)

    def pid1() -> int:
        syscalls.unshare(CLONE_NEWNS)
        apply(plan, syscalls)
        os.execve(BUSYBOX, ["sh", "-c", "set -e\n" + CHECKS + script], {"PATH": "/bin"})

    def monitor() -> int:
        syscalls.unshare(CLONE_NEWPID)
        return in_child(pid1)

    return in_child(monitor)


CHECKS = r"""
fail() { echo "FAIL: $*" >&2; exit 1; }
bb() { /bin/busybox "$@"; }
fstype() {
    bb awk -v p="$1" '$5 == p { for (i = 7; i <= NF; i++) if ($i == "-") t = $(i + 1) }
                      END { print t }' /proc/self/mountinfo
}
options() { bb awk -v p="$1" '$5 == p { o = $6 } END { print o }' /proc/self/mountinfo; }
writable() { ( echo "${2:-x}" > "$1" ) 2>/dev/null; }
[ "$$" = 1 ] || fail "sh is not PID 1 but $$"
[ -d /proc/1 ] || fail "/proc/1 is missing"
echo x > /dev/null || fail "/dev/null is not writable"
for d in null zero full random urandom tty console; do [ -c /dev/$d ] || fail "/dev/$d"; done
[ "$(bb head -c 4 /dev/zero | bb od -An -tx1 | bb tr -d ' ')" = 00000000 ] || fail /dev/zero
[ -d /dev/pts ] && [ -c /dev/pts/ptmx ] && [ -L /dev/ptmx ] || fail "/dev/pts"
[ "$(bb readlink /dev/fd)" = /proc/self/fd ] || fail "/dev/fd"
[ "$(fstype /dev/pts)" = devpts ] && [ "$(fstype /dev/shm)" = tmpfs ] || fail "/dev mounts"
[ "$(fstype /dev/mqueue)" = mqueue ] && [ "$(fstype /dev)" = tmpfs ] || fail "/dev mounts"
[ "$(fstype /sys)" = sysfs ] && [ "$(fstype /proc)" = proc ] || fail "/proc or /sys"
echo shm > /dev/shm/x || fail "/dev/shm is not writable"
"""

DEFAULT_CHECKS = r"""
[ "$(fstype /)" = overlay ] || fail "the root is $(fstype /), not overlay"
case "$(options /sys)" in ro,*) ;; *) fail "/sys is not read-only";; esac
if writable /proc/sys/kernel/ns_last_pid 1; then fail "/proc/sys is writable"; fi
case "$(options /proc/sys)" in ro,*) ;; *) fail "/proc/sys is not read-only";; esac
if [ -e /proc/keys ]; then [ -c /proc/keys ] && [ ! -s /proc/keys ] || fail "/proc/keys shows"; fi
if [ -e /proc/kcore ]; then [ -c /proc/kcore ] || fail "/proc/kcore is not masked"; fi
if [ -d /proc/acpi ]; then [ -z "$(ls -A /proc/acpi)" ] || fail "/proc/acpi is not masked"; fi
[ -z "$(ls -A /sys/firmware)" ] || fail "/sys/firmware is not masked"
[ "$(cat /mnt/ro/data)" = ro-data ] || fail "read-only bind content"
if writable /mnt/ro/new; then fail "read-only bind is writable"; fi
echo rw-out > /mnt/rw/out || fail "read-write bind is not writable"
[ "$(fstype /run)" = tmpfs ] && echo run > /run/x || fail "/run tmpfs"
[ "$(cat /etc/hosts)" = "127.0.0.1 localhost" ] || fail "/etc/hosts"
[ "$(pwd)" = /work/dir ] || fail "working directory is $(pwd)"
[ -f /evil/x/marker ] && [ -f /abs/y/marker ] || fail "symlinked mount targets"
echo new > /newfile
echo changed > /etc/image-file
exit 0
"""


def test_default_plan_builds_a_docker_like_root(tmp_path: Path, syscalls: LinuxSyscalls) -> None:
    lower = image(tmp_path / "lower")
    # Symlinks in the image that try to aim a mount at the host: they resolve inside the root.
    (lower / "evil").symlink_to("../" * 12 + str(tmp_path / "victim").lstrip("/"))
    (lower / "abs").symlink_to(str(tmp_path / "victim2"))
    upper, work, rootfs = (tmp_path / n for n in ("upper", "work", "rootfs"))
    for d in (upper, work, rootfs):
        d.mkdir()
    ro_src, rw_src, marked = (tmp_path / n for n in ("ro-src", "rw-src", "marked"))
    for d in (ro_src, rw_src, marked):
        d.mkdir()
    (ro_src / "data").write_text("ro-data\n")
    (marked / "marker").touch()
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    cfg = RootfsConfig(
        rootfs=str(rootfs),
        lowerdirs=(str(lower),),
        upperdir=str(upper),
        workdir=str(work),
        binds=(
            BindMount(str(ro_src), "/mnt/ro", readonly=True),
            BindMount(str(rw_src), "/mnt/rw"),
            BindMount(str(marked), "/evil/x"),
            BindMount(str(marked), "/abs/y", readonly=True),
        ),
        tmpfs=(TmpfsMount("/run", "size=1m"),),
        etc_files=((str(hosts), "/etc/hosts"),),
        workdir_in_container="/work/dir",
    )
    before = host_mounts(tmp_path)

    assert run_container(syscalls, cfg, DEFAULT_CHECKS) == 0

    assert host_mounts(tmp_path) == before, "a mount leaked to the host"
    assert not any(rootfs.iterdir()), "the rootfs mount point was written to"
    assert (upper / "newfile").read_text() == "new\n"
    assert (upper / "etc" / "image-file").read_text() == "changed\n"
    assert (lower / "etc" / "image-file").read_text() == "original\n"
    assert sorted(p.name for p in lower.iterdir()) == ["abs", "bin", "etc", "evil"]
    assert (rw_src / "out").read_text() == "rw-out\n"
    assert sorted(p.name for p in ro_src.iterdir()) == ["data"]
    # The escaping symlinks' mount points were made inside the root, not on the host.
    assert not (tmp_path / "victim").exists()
    assert not (tmp_path / "victim2").exists()
    assert (upper / str(tmp_path / "victim" / "x").lstrip("/")).is_dir()
    assert (upper / str(tmp_path / "victim2" / "y").lstrip("/")).is_dir()


READONLY_PRIVILEGED_CHECKS = r"""
if writable /new; then fail "the read-only root is writable"; fi
case "$(options /)" in ro,*) ;; *) fail "/ is not read-only";; esac
case "$(options /sys)" in rw,*) ;; *) fail "/sys is not read-write when privileged";; esac
writable /proc/sys/kernel/ns_last_pid 1 || fail "/proc/sys is read-only when privileged"
[ -z "$(bb awk '$5 ~ "^/proc/." || $5 ~ "^/sys/."' /proc/self/mountinfo)" ] || fail "masked paths"
echo tmp > /tmp/x || fail "tmpfs on a read-only root"
exit 0
"""


def test_readonly_privileged_plain_directory_root(tmp_path: Path, syscalls: LinuxSyscalls) -> None:
    rootfs = image(tmp_path / "rootfs")
    cfg = RootfsConfig(
        rootfs=str(rootfs),
        lowerdirs=(),
        upperdir="",
        workdir="",
        overlay=False,
        readonly=True,
        privileged=True,
        tmpfs=(TmpfsMount("/tmp"),),
    )
    before = host_mounts(tmp_path)

    assert run_container(syscalls, cfg, READONLY_PRIVILEGED_CHECKS) == 0

    assert host_mounts(tmp_path) == before
    assert sorted(p.name for p in rootfs.iterdir()) == ["bin", "dev", "etc", "proc", "sys", "tmp"]
    assert not any((rootfs / "tmp").iterdir())


def test_loopback_up_in_a_new_network_namespace(syscalls: LinuxSyscalls) -> None:
    def child() -> int:
        syscalls.unshare(CLONE_NEWNET)
        with socket.socket() as probe, pytest.raises(OSError):
            probe.connect(("127.0.0.1", 9))  # lo is down in a fresh namespace
        syscalls.loopback_up()
        syscalls.loopback_up()  # already up: nothing to do
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
                conn, _ = server.accept()
                with conn:
                    client.sendall(b"ping")
                    return 0 if conn.recv(4) == b"ping" else 1

    assert in_child(child) == 0


def _status(field: str) -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    raise AssertionError(field)


def test_drop_capabilities_to_dockers_default_set(syscalls: LinuxSyscalls) -> None:
    want = f"{cap_mask(DOCKER_DEFAULT_CAPS):016x}"

    def child() -> int:
        syscalls.drop_capabilities(DOCKER_DEFAULT_CAPS)
        syscalls.set_no_new_privs()
        got = {f: _status(f) for f in ("CapEff", "CapPrm", "CapBnd", "CapInh", "NoNewPrivs")}
        expected = {"CapEff": want, "CapPrm": want, "CapBnd": want, "CapInh": "0000000000000000"}
        expected["NoNewPrivs"] = "1"
        if got != expected:
            print(f"capabilities: got {got}, want {expected}", file=sys.stderr)
            return 1
        try:  # CAP_SYS_ADMIN is gone
            syscalls.sethostname("nope")
        except PermissionError:
            return 0
        return 2

    assert _status("NoNewPrivs") == "0"
    assert in_child(child) == 0


def test_unshare_sethostname_and_setns_back(syscalls: LinuxSyscalls) -> None:
    host = socket.gethostname()

    def child() -> int:
        original = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        syscalls.unshare(CLONE_NEWUTS)
        syscalls.sethostname("minidock-test")
        if socket.gethostname() != "minidock-test":
            return 1
        syscalls.setns(original, CLONE_NEWUTS)
        return 0 if socket.gethostname() == host else 2

    assert in_child(child) == 0
    assert socket.gethostname() == host


def test_failures_are_oserrors_naming_the_path(syscalls: LinuxSyscalls, tmp_path: Path) -> None:
    def child() -> int:
        syscalls.unshare(CLONE_NEWNS)
        missing = str(tmp_path / "missing")
        try:
            syscalls.mount("tmpfs", missing, "tmpfs", 0, "")
        except FileNotFoundError as exc:
            return 0 if exc.filename == missing else 1
        return 2

    assert in_child(child) == 0
