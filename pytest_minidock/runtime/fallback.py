"""Root filesystems without overlayfs: copy the image's layers into a plain directory.

Used only where the kernel has no overlayfs, where it refuses overlay mounts in a user namespace
(rootless before Linux 5.11), or where ``MINIDOCK_OVERLAY=off`` asks for it: each container then
gets its own merged copy of the image, made once when it first starts. It costs disk and start
time, so the runtime says so once per process.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path

from pytest_minidock.capabilities import host_root
from pytest_minidock.errors import RuntimeFailure

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["materialize", "overlay_available", "warn_once"]

_WHITEOUT_XATTRS = ("trusted.overlay.whiteout", "user.overlay.whiteout")
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


class _Once:
    """What this process already found out or said."""

    warned = False
    available: bool | None = None


USERNS_OVERLAY: tuple[int, int] = (5, 11)
"""The first Linux release that mounts overlayfs in a user namespace."""


def overlay_available(*, rootless: bool = False, release: str | None = None) -> bool:
    """Whether overlay mounts can be used (``MINIDOCK_OVERLAY=off`` forces the fallback);
    ``rootless``: in a user namespace, which needs Linux 5.11 (``release``: ``uname -r``)."""
    if os.environ.get("MINIDOCK_OVERLAY", "").lower() in ("off", "0", "no", "false"):
        return False
    if _Once.available is None:
        try:
            fs = Path("/proc/filesystems").read_text()
        except OSError:
            fs = ""
        found = any(line.split()[-1:] == ["overlay"] for line in fs.splitlines())
        _Once.available = found or Path("/sys/module/overlay").exists()
    if rootless and _Once.available:
        return _release(release or os.uname().release) >= USERNS_OVERLAY
    return _Once.available


def _release(text: str) -> tuple[int, int]:
    parts = text.split("-", maxsplit=1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def warn_once(*, rootless: bool = False) -> None:
    """Tell the user, once per process, that containers are copies instead of overlays."""
    if not _Once.warned:
        _Once.warned = True
        if rootless and overlay_available():
            why = (
                "this kernel does not mount overlayfs in a user namespace (Linux 5.11 and later "
                "do), so each rootless container gets a full copy of its image (slower start, "
                "more disk); run as root or on a newer kernel to avoid this"
            )
        else:
            why = (
                "overlayfs is not available here, so each container gets a full copy of its "
                "image (slower start, more disk); load the overlay module (modprobe overlay) "
                "to avoid this"
            )
        print(f"minidock: {why}", file=sys.stderr)


def _xattr(path: str, names: Sequence[str]) -> bytes | None:
    for name in names:
        with contextlib.suppress(OSError):
            return os.getxattr(path, name, follow_symlinks=False)
    return None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        import shutil

        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _copy_meta(src_st: os.stat_result, dst: str) -> None:
    if host_root():  # (rootless: the copies belong to the user, root in the container)
        os.lchown(dst, src_st.st_uid, src_st.st_gid)
    if not stat.S_ISLNK(src_st.st_mode):
        os.chmod(dst, stat.S_IMODE(src_st.st_mode))
    os.utime(dst, ns=(src_st.st_atime_ns, src_st.st_mtime_ns), follow_symlinks=False)


def _apply_layer(layer: str, dest: str) -> None:
    import shutil

    dirs: list[tuple[os.stat_result, str]] = []
    for dirpath, dirnames, filenames in os.walk(layer):
        rel = os.path.relpath(dirpath, layer)
        target_dir = dest if rel == "." else os.path.join(dest, rel)
        for name in [*dirnames, *filenames]:
            src = os.path.join(dirpath, name)
            dst = os.path.join(target_dir, name)
            st = os.lstat(src)
            whiteout = (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0) or (
                stat.S_ISREG(st.st_mode) and _xattr(src, _WHITEOUT_XATTRS) is not None
            )
            if whiteout:
                _remove(dst)
                continue
            if stat.S_ISDIR(st.st_mode):
                if os.path.lexists(dst) and not (os.path.isdir(dst) and not os.path.islink(dst)):
                    _remove(dst)
                if _xattr(src, _OPAQUE_XATTRS) == b"y" and os.path.isdir(dst):
                    shutil.rmtree(dst)
                os.makedirs(dst, exist_ok=True)
                dirs.append((st, dst))
                continue
            _remove(dst)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(src, dst, follow_symlinks=False)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(dst)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                os.mknod(dst, st.st_mode, st.st_rdev)
            else:
                continue
            _copy_meta(st, dst)
    for st, d in reversed(dirs):  # directories last, so their times stick
        _copy_meta(st, d)


def materialize(lowerdirs: Sequence[str], dest: Path) -> None:
    """Merge image snapshots (base first, overlay whiteout form) into the empty dir ``dest``."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for layer in lowerdirs:
            _apply_layer(layer, str(dest))
    except OSError as exc:
        raise RuntimeFailure(f"cannot copy the image into {dest}: {exc}") from exc
