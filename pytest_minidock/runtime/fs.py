"""A container's files from outside: ``cp`` in and out, and what ``commit`` must leave out.

Copies run in a forked helper that sees the container's root exactly as the container does: it
joins the mount namespace of a running container, or mounts the container's overlay in a private
mount namespace of its own for a stopped one, then ``chroot``s into it, so that symlinks inside the
container can never lead outside it. Files cross between the helper and this process as a tar
stream over a pipe; on the host side they are unpacked by the store's safe extractor into a temp
directory next to the destination and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from pathlib import Path

from pytest_minidock.errors import RuntimeFailure, UsageError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pytest_minidock.runtime._sys import Syscalls
    from pytest_minidock.runtime.state import ContainerRecord

# Python 3.11.4+ warns unless an extraction filter is named; Debian 12's 3.11.2 has no filters
# (its behaviour is "fully_trusted"). Safety here comes from the chroot, not from the filter.

__all__ = ["commit_exclusions", "copy_from_container", "copy_to_container"]

# What the runtime itself may create in a container's upper dir as mount points.
RUNTIME_STUBS = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/proc", "/dev", "/sys")


def commit_exclusions(record: ContainerRecord) -> Callable[[str], bool]:
    """A predicate for ``commit``: True for mount-point stubs the runtime made (empty files or
    directories, absent from the image), everything under the container's mount targets, and
    an image directory (``/etc``) that was only copied up to hold such stubs."""
    spec = record.config.get("Spec", {})
    targets = {m.get("target", "") for m in spec.get("mounts", [])} - {""}
    stubs = set(RUNTIME_STUBS) | targets
    ancestors = {os.path.dirname(s) for s in stubs} - {"/", ""}
    for a in list(ancestors):
        while (a := os.path.dirname(a)) not in ("/", ""):
            ancestors.add(a)
    # LowerDirs lists the image's layers bottom first: the last one that has a path wins.
    lowers = [Path(p) for p in reversed(record.config.get("LowerDirs", []))]
    upper = record.dir / "upper"

    def in_image(path: str) -> bool:
        return any(os.path.lexists(str(low) + path) for low in lowers)

    def image_stat(path: str) -> os.stat_result | None:
        for low in lowers:
            with contextlib.suppress(OSError):
                return os.lstat(str(low) + path)
        return None

    def only_holds_stubs(path: str) -> bool:
        """A directory of the image, copied up unchanged, whose upper entries are all stubs."""
        try:
            st = os.lstat(str(upper) + path)
            children = os.listdir(str(upper) + path)
        except OSError:
            return False
        low = image_stat(path)
        if (
            not children
            or low is None
            or not stat.S_ISDIR(st.st_mode)
            or not stat.S_ISDIR(low.st_mode)
            or (st.st_mode, st.st_uid, st.st_gid) != (low.st_mode, low.st_uid, low.st_gid)
        ):
            return False
        with contextlib.suppress(OSError):
            if os.getxattr(str(upper) + path, "trusted.overlay.opaque") == b"y":
                return False
        return all(exclude(f"{path}/{child}") for child in children)

    def exclude(path: str) -> bool:
        if path in stubs and not in_image(path):
            try:
                st = os.lstat(str(upper) + path)
            except OSError:
                return False
            if stat.S_ISDIR(st.st_mode):
                return not os.listdir(str(upper) + path)
            return stat.S_ISREG(st.st_mode) and st.st_size == 0
        if path in ancestors:
            return only_holds_stubs(path)
        return any(path.startswith(t.rstrip("/") + "/") for t in targets)

    return exclude


def _enter(record: ContainerRecord, sys_: Syscalls) -> None:  # pragma: no cover - child
    """In a forked helper: see the container's root as ``/``. Rootless, first the user
    namespace of the running container, or one of the helper's own for a stopped one."""
    from pytest_minidock.runtime import _sys, userns

    rootless = not userns.host_root()
    if record.state.running():
        pid1 = record.state.pid
        root_fd = os.open(f"/proc/{pid1}/root", os.O_RDONLY | os.O_DIRECTORY)
        ns_fd = os.open(f"/proc/{pid1}/ns/mnt", os.O_RDONLY)
        try:
            if rootless:
                userns.join_owner(ns_fd, sys_)
            sys_.setns(ns_fd, _sys.CLONE_NEWNS)
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot enter container {record.name}: {exc.strerror or exc}"
            ) from exc
        os.fchdir(root_fd)
        os.chroot(".")
        return
    if rootless and os.geteuid() != 0:
        userns.become_root(sys_)
    rootfs = record.dir / "rootfs"
    if (record.dir / "rootfs.copied").exists():  # no overlayfs: the rootfs is a plain copy
        os.chdir(rootfs)
        os.chroot(".")
        return
    from pytest_minidock.runtime.mounts import clear_volatile

    clear_volatile(str(record.dir / "work"))
    sys_.unshare(_sys.CLONE_NEWNS)
    sys_.mount("none", "/", "", _sys.MS_REC | _sys.MS_PRIVATE, "")
    lower = ":".join(reversed(record.config["LowerDirs"]))
    data = f"lowerdir={lower},upperdir={record.dir / 'upper'},workdir={record.dir / 'work'}"
    if rootless:  # (the snapshots' whiteouts are user.overlay.* ones)
        data += ",userxattr"
    sys_.mount("overlay", str(rootfs), "overlay", 0, data)
    os.chdir(rootfs)
    os.chroot(".")


def _helper(record: ContainerRecord, sys_: Syscalls, work: Callable[[], None]) -> tuple[int, int]:
    """Fork a helper in the container's view running ``work``; return (pid, error pipe fd)."""
    from pytest_minidock.runtime.userns import fork_child

    def helper() -> None:  # pragma: no cover - child
        sys_.set_pdeathsig(signal.SIGKILL)
        _enter(record, sys_)
        work()

    return fork_child(helper, lambda exc: str(exc).encode())


def _finish(pid: int, err_r: int, what: str) -> None:
    from pytest_minidock.runtime.userns import reap

    status, data = reap(pid, err_r)
    if status != 0:
        message = data.decode(errors="replace") or f"status {status}"
        raise RuntimeFailure(f"{what}: {message}")


def copy_from_container(
    record: ContainerRecord, sys_: Syscalls, src: str, dest: Path, *, archive: bool = False
) -> None:
    """``docker cp CONTAINER:SRC DEST``: into DEST/basename(SRC) when DEST is a directory, else
    as DEST (its parent must exist). The copies belong to the calling user, as docker's do,
    unless ``archive`` (``cp -a``) keeps the container's uid/gid (root on the host only)."""
    import shutil
    import tarfile  # (here: the helper cannot import in the container's root)

    from pytest_minidock.capabilities import host_root
    from pytest_minidock.store.snapshots import ExtractPolicy, extract_layer

    if not src.startswith("/"):
        src = "/" + src
    name = os.path.basename(src.rstrip("/")) or "root"
    if dest.is_dir():
        final = dest / name
    else:
        if not dest.parent.is_dir():
            raise UsageError(f"cannot copy to {dest}: no such directory {dest.parent}")
        final = dest
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)

    def work() -> None:  # pragma: no cover - child
        os.close(read_fd)
        if not os.path.lexists(src):
            raise FileNotFoundError(f"could not find the file {src} in container {record.name}")
        with os.fdopen(write_fd, "wb") as out, tarfile.open(fileobj=out, mode="w|") as tar:
            tar.add(src.rstrip("/") or "/", arcname=name)

    pid, err_r = _helper(record, sys_, work)
    os.close(write_fd)
    tmp = final.parent / f".minidock-cp-{os.getpid()}"
    tmp.mkdir()
    try:
        what = f"cannot copy {record.name}:{src}"
        policy = ExtractPolicy(devices=False, chown=archive and host_root(), whiteout="xattr")
        try:
            with os.fdopen(read_fd, "rb") as stream:
                extract_layer(stream, tmp, policy=policy, source=what)
        except Exception:
            _finish(pid, err_r, what)  # the helper's own error explains it best
            raise
        _finish(pid, err_r, what)
        got = tmp / name
        if final.is_dir() and not got.is_dir():
            raise UsageError(f"cannot overwrite directory {final} with a file")
        if final.exists() and final.is_dir() and got.is_dir():
            shutil.copytree(got, final, symlinks=True, dirs_exist_ok=True)
        else:
            os.replace(got, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy_to_container(
    record: ContainerRecord, sys_: Syscalls, src: Path, dest: str, *, archive: bool = False
) -> None:
    """``docker cp SRC CONTAINER:DEST``: into DEST/basename(SRC) when DEST is a directory in the
    container, else as DEST. The copies belong to root in the container, as docker's do, unless
    ``archive`` (``cp -a``) keeps the host's uid/gid; modes are kept either way."""
    import tarfile  # (here: the helper cannot import in the container's root)

    # (extraction filters, where tarfile has them: ours is our own tar of a host path)
    trusted: dict[str, Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}
    if not src.exists() and not src.is_symlink():
        raise UsageError(f"could not find the file {src}")
    if not dest.startswith("/"):
        dest = "/" + dest
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)

    def work() -> None:  # pragma: no cover - child
        os.close(write_fd)
        target = dest
        if os.path.isdir(dest):
            target = os.path.join(dest, src.name)
        parent = os.path.dirname(target.rstrip("/")) or "/"
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"no such directory {parent} in container {record.name}")
        top = os.path.basename(target.rstrip("/"))

        def renamed(name: str) -> str:
            rel = name.split("/", 1)
            return top + ("/" + rel[1] if len(rel) > 1 else "")

        with os.fdopen(read_fd, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                # Our own tar of the host path, unpacked inside the container's root: its names
                # are relative and cannot leave it, so keep modes (the "tar" filter would drop
                # setuid and group/other write bits).
                member.name = renamed(member.name)
                if member.islnk():
                    member.linkname = renamed(member.linkname)
                if not archive:
                    member.uid = member.gid = 0
                member.uname = member.gname = ""
                tar.extract(member, parent, numeric_owner=True, **trusted)

    pid, err_r = _helper(record, sys_, work)
    os.close(read_fd)
    try:
        with os.fdopen(write_fd, "wb") as out, tarfile.open(fileobj=out, mode="w|") as tar:
            tar.add(str(src), arcname=src.name or "root")
    except BrokenPipeError:
        pass
    _finish(pid, err_r, f"cannot copy {src} to {record.name}:{dest}")
