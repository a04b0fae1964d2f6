"""The container's root filesystem: mounts planned as data, then applied through the syscall seam.

``plan_rootfs(cfg)`` turns a ``RootfsConfig`` into a tuple of ``Op`` values (mount, mkdir, touch,
mknod, symlink, pivot_root, umount2, chdir), in the order runc would make them:

1. ``/`` becomes recursively private, so nothing below propagates back to the host;
2. the root: an overlay of the image snapshots and the container's upper dir (or a bind of a
   plain directory onto itself when overlay is unavailable);
3. ``/proc``, a tmpfs ``/dev`` with the usual devices, ``devpts``, ``/dev/shm``, ``/dev/mqueue``,
   the ``/dev`` symlinks, ``/dev/console`` and ``/sys``;
4. the ``/etc`` files the runtime writes (hosts, hostname, resolv.conf), then the user's binds
   and tmpfs mounts, parents before children;
5. unless privileged, docker's masked paths (an empty read-only tmpfs on a directory, ``/dev/null``
   on a file) and read-only ``/proc`` paths;
6. the working directory, ``pivot_root`` (runc style: ``pivot_root(".", ".")`` then a lazy unmount
   of the old root), the read-only remount of ``/`` for ``--read-only``, and ``chdir``.

A mount point that is missing is created just before its mount, inside the root (so an overlay
puts it in the upper dir, never in the image). Planning reads the host (``/proc``, ``/sys``, bind
sources) and the image layers, but changes nothing; ``apply(ops, sys)`` then only makes calls.

Targets are container paths and are resolved safely. They are normalised lexically first and a
``..`` that would climb above ``/`` is a ``UsageError``. Then every component is looked up the way
the container will see it (the overlay's layers merged top first, with whiteouts and opaque
directories; earlier tmpfs and bind mounts) and a symlink is followed *inside* the root: an
absolute target restarts at the container's ``/``, ``..`` never climbs above it, and at most 40
links are followed. The mount then happens on the resolved path, so an image cannot aim a mount
at the host with a symlink.
"""

from __future__ import annotations

import os
import stat

from pytest_minidock._record import dataclass
from pytest_minidock.errors import RuntimeFailure, UsageError
from pytest_minidock.runtime._sys import (
    MNT_DETACH,
    MS_BIND,
    MS_MOVE,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    MS_STRICTATIME,
)

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Final, Literal

    from pytest_minidock.runtime._sys import Syscalls

__all__ = [
    "INIT_LAYER",
    "MASKED_PATHS",
    "READONLY_PATHS",
    "BindMount",
    "Op",
    "OpKind",
    "Premount",
    "RootfsConfig",
    "TmpfsMount",
    "apply",
    "clear_volatile",
    "drop_kit",
    "make_init_layer",
    "overlay_parts",
    "plan_kit",
    "plan_rootfs",
    "premount",
    "resolve_in_root",
    "uses_kit",
    "volatile_supported",
]

MASKED_PATHS: Final = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
"""Docker's masked paths: hidden unless privileged (those missing on the host are skipped)."""
READONLY_PATHS: Final = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
"""Docker's read-only paths: bound onto themselves and remounted read-only unless privileged."""

MAX_SYMLINKS: Final = 40
"""Most symlinks followed while resolving one path (Linux's ``MAXSYMLINKS``)."""

_DEVICES: Final = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
_CHAR_0666: Final = stat.S_IFCHR | 0o666
_DEV_LINKS: Final = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)
_PROC_FLAGS: Final = MS_NOSUID | MS_NODEV | MS_NOEXEC
_TMPFS_DEFAULT_FLAGS: Final = MS_NOSUID | MS_NODEV
_PAGE_SIZE: Final = 4096
"""mount(2) copies at most a page of option data (including the final NUL)."""
_RO_REMOUNT: Final = MS_BIND | MS_REMOUNT | MS_RDONLY
# statvfs f_flag bits -> the per-mount flags a bind inherits (and, in a user namespace, must keep).
_STATVFS_TO_MS: Final = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)
# tmpfs option words that are mount flags rather than filesystem data: word -> (flag, set it?).
_FLAG_WORDS: Final = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "noatime": (MS_NOATIME, True),
    "atime": (MS_NOATIME, False),
    "nodiratime": (MS_NODIRATIME, True),
    "diratime": (MS_NODIRATIME, False),
    "relatime": (MS_RELATIME, True),
    "norelatime": (MS_RELATIME, False),
    "strictatime": (MS_STRICTATIME, True),
}

if TYPE_CHECKING:
    OpKind = Literal[
        "mount", "umount2", "mkdir", "touch", "mknod", "symlink", "pivot_root", "chdir"
    ]
else:
    OpKind = str


@dataclass(frozen=True, slots=True)
class Op:
    """One step of a plan; ``apply`` turns it into exactly one ``Syscalls`` call.

    ``target`` is the path acted on (a host path before ``pivot_root``, a container path after).
    The call made is, by kind: ``mount(source, target, fstype, flags, data)``,
    ``umount2(target, flags)``, ``mkdir(target, mode)``, ``touch(target, mode)``,
    ``mknod(target, mode, device)``, ``symlink(source, target)`` (``source`` is the link's
    content), ``pivot_root(target, source)`` and ``chdir(target)``. ``ctr`` is the container
    path concerned, for error messages only.
    """

    kind: OpKind
    target: str
    source: str = ""
    fstype: str = ""
    flags: int = 0
    data: str = ""
    mode: int = 0
    device: int = 0
    ctr: str = ""


@dataclass(frozen=True, slots=True)
class BindMount:
    """``-v HOST:CTR[:ro]`` (or a named volume, already resolved to its host directory)."""

    source: str
    target: str
    """A path inside the container."""
    readonly: bool = False


@dataclass(frozen=True, slots=True)
class TmpfsMount:
    """``--tmpfs CTR[:OPTIONS]``; ``options`` like ``size=64m,mode=1777`` or ``ro,exec``."""

    target: str
    options: str = ""


@dataclass(frozen=True, slots=True)
class RootfsConfig:
    """Everything that decides the container's mounts."""

    rootfs: str
    """Where the root is assembled: a directory on the host, in the container's own dir."""
    lowerdirs: tuple[str, ...]
    """Image snapshots, base first (overlay's ``lowerdir=`` lists them the other way round)."""
    upperdir: str
    workdir: str
    overlay: bool = True
    """False: ``rootfs`` is already a populated plain directory; it is bound onto itself."""
    readonly: bool = False
    """``--read-only``: ``/`` is remounted read-only at the end (other mounts stay as they are)."""
    binds: tuple[BindMount, ...] = ()
    tmpfs: tuple[TmpfsMount, ...] = ()
    etc_files: tuple[tuple[str, str], ...] = ()
    """(host file, container path) pairs bound read-write: /etc/hosts, /etc/hostname, ..."""
    workdir_in_container: str = "/"
    """Created if missing (mode 0755) and made the current directory after ``pivot_root``."""
    privileged: bool = False
    """No masked or read-only paths and a read-write ``/sys`` (``/dev`` stays minimal)."""
    console: str | None = None
    """A pty slave to bind at ``/dev/console``; None: ``/dev/console`` is ``/dev/null``."""
    create_devices: bool = True
    """True (root): mknod the devices; False (rootless): bind each one from the host's /dev."""
    userxattr: bool = False
    """Overlay reads ``user.overlay.*`` xattrs (snapshots extracted rootless; needed in a user
    namespace)."""
    host_sys: bool = False
    """Bind the host's ``/sys`` (read-only unless privileged) instead of mounting a sysfs:
    rootless on the host's network, where a new sysfs needs the network namespace's owner."""
    init_layer: str = ""
    """A read-only directory put between the upper dir and the image (docker's "init layer"):
    it holds the mount points every container needs (see ``INIT_LAYER``), so that they need not
    be created in the upper dir, with a copy-up of ``/etc``, at each start. Overlay only."""
    kit: bool = False
    """Move ``/proc``, ``/dev`` and ``/sys`` in from PID 1's own ``/proc``, ``/dev`` and ``/sys``
    where ``plan_kit`` made them (a zygote makes them while it waits): three moves instead of
    ~35 calls at start. Used only where it makes no difference: not privileged, devices made
    with mknod, no user mount in those trees (``uses_kit`` tells whether a plan does)."""
    volatile: bool = False
    """Mount the overlay ``volatile`` (Linux 5.10+): its unmount, when the container's last
    process exits, does not sync the host filesystem holding the upper dir (~1-2 ms of journal
    commit and flush per exit). The container's changes are as durable as any unsynced write:
    a host crash may lose some. Mounting it again needs ``clear_volatile`` first."""


# -- resolving container paths ---------------------------------------------------------------------
_Layers = tuple[str, ...] | None
"""What a directory holds: host directories merged top first, or None inside a kernel filesystem
(``/proc``, ``/sys``, ``devpts``), which is neither resolved nor written to."""
_Frame = tuple[str, _Layers, bool]
"""A resolved container path, what it holds, and whether it exists."""


class _Tree:
    """The container's file tree as the plan so far will have made it, looked up without mounts."""

    def __init__(self, layers: tuple[str, ...], userxattr: bool, mutable: str = "") -> None:
        self.mounts: dict[str, _Layers] = {"/": layers}
        self.made: dict[str, str] = {}  # path -> "d" | "f" | "l" + link target
        self._seen: dict[tuple[str, _Layers], tuple[str, _Layers, str]] = {}
        self._opaque = "user.overlay.opaque" if userxattr else "trusted.overlay.opaque"
        self._xwhiteouts = ("user.overlay.whiteout", "trusted.overlay.whiteout")
        mutable = mutable.rstrip("/")
        self._mutable = (mutable, mutable + "/") if mutable else ()
        """The one layer that may change (the container's upper dir): every other one is an
        image snapshot or the init layer, read-only, whose look-ups are kept (``_STABLE``)."""

    def mount(self, path: str, content: _Layers) -> None:
        self.mounts[path] = content

    def _entry(self, path: str, name: str, layers: _Layers) -> tuple[str, _Layers, str]:
        """``(kind, content, link)`` of ``path`` in a directory holding ``layers``; kind is
        ``d`` (a directory, or anything inside a kernel filesystem), ``f``, ``l`` or ``-``."""
        if path in self.mounts:
            return "d", self.mounts[path], ""
        made = self.made.get(path)
        if made is not None:
            return ("l", (), made[1:]) if made[0] == "l" else (made, (), "")
        if layers is None:
            return "d", None, ""
        if not layers:
            return "-", (), ""
        key = (path, layers)
        found = self._seen.get(key)
        if found is None:
            found = self._seen[key] = self._lookup(name, layers)
        return found

    def _lookup(self, name: str, layers: tuple[str, ...]) -> tuple[str, _Layers, str]:
        if not self._mutable:
            return self._lookup_in(name, layers)
        mutable = self._mutable
        n = 0
        while n < len(layers) and (
            layers[n].rstrip("/") == mutable[0] or layers[n].startswith(mutable[1])
        ):
            n += 1
        for top in layers[:n]:
            if os.path.lexists(f"{top}/{name}"):
                return self._lookup_in(name, layers)
        if n == len(layers):
            return "-", (), ""
        key = (name, layers[n:], self._opaque)
        found = _STABLE.get(key)
        if found is None:
            found = self._lookup_in(name, layers[n:])
            if len(_STABLE) >= _MAX_STABLE:
                _STABLE.clear()
            _STABLE[key] = found
        return found

    def _lookup_in(self, name: str, layers: tuple[str, ...]) -> tuple[str, _Layers, str]:
        for i, top in enumerate(layers):
            p = f"{top}/{name}"
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                merged = [p]
                if i + 1 < len(layers) and not self._is_opaque(p):
                    for lower in layers[i + 1 :]:
                        q = f"{lower}/{name}"
                        try:
                            st = os.lstat(q)
                        except OSError:
                            continue
                        if not stat.S_ISDIR(st.st_mode):
                            break  # a file or a whiteout hides what is below
                        merged.append(q)
                        if self._is_opaque(q):
                            break
                return "d", tuple(merged), ""
            if stat.S_ISLNK(st.st_mode):
                return "l", (), os.readlink(p)
            if self._is_whiteout(p, st):
                return "-", (), ""
            return "f", (), ""
        return "-", (), ""

    def _is_opaque(self, path: str) -> bool:
        try:
            return os.getxattr(path, self._opaque, follow_symlinks=False) == b"y"
        except OSError:
            return False

    def _is_whiteout(self, path: str, st: os.stat_result) -> bool:
        if stat.S_ISCHR(st.st_mode):
            return st.st_rdev == 0
        if not stat.S_ISREG(st.st_mode) or st.st_size != 0:
            return False
        for attr in self._xwhiteouts:
            try:
                os.getxattr(path, attr, follow_symlinks=False)
            except OSError:
                continue
            return True
        return False

    def resolve(self, path: str) -> tuple[str, list[_Frame]]:
        """``path`` (clean, absolute) with its symlinks followed inside the root, and the frames
        of the components that do not exist yet, outermost first."""
        stack: list[_Frame] = [("/", self.mounts["/"], True)]
        todo = [c for c in reversed(path.split("/")) if c]
        links = 0
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            parent, layers, exists = stack[-1]
            child = f"/{name}" if parent == "/" else f"{parent}/{name}"
            if not exists:
                stack.append((child, (), False))
                continue
            kind, content, link = self._entry(child, name, layers)
            if kind == "l":
                links += 1
                if links > MAX_SYMLINKS:
                    raise UsageError(f"too many levels of symbolic links resolving {path}")
                if link.startswith("/"):
                    del stack[1:]
                todo.extend(c for c in reversed(link.split("/")) if c)
            elif kind == "f" and todo:
                raise UsageError(f"cannot resolve {path}: {child} is not a directory")
            else:
                stack.append((child, content, kind != "-"))
        return stack[-1][0], [frame for frame in stack if not frame[2]]


_STABLE: dict[tuple[str, tuple[str, ...], str], tuple[str, _Layers, str]] = {}
"""``_Tree`` look-ups in read-only layers (snapshots, the init layer): they never change."""
_MAX_STABLE: Final = 4096


def resolve_in_root(layers: tuple[str, ...], path: str, *, userxattr: bool = False) -> str:
    """``path`` inside a root made of ``layers`` (host dirs, top first) with symlinks resolved in
    that root; components that do not exist are kept as they are. ``UsageError`` for ``..`` that
    climbs above ``/`` in ``path`` itself, or for more than 40 links."""
    return _Tree(layers, userxattr).resolve(_clean(path, "path"))[0]


INIT_LAYER: Final = (
    "dev/",
    "proc/",
    "sys/",
    "etc/",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
)
"""What ``make_init_layer`` puts in the init layer: directories (ending in ``/``), empty files."""


def make_init_layer(path: str) -> str:
    """The init layer at ``path`` (see ``RootfsConfig.init_layer``), made if missing (made
    aside, then renamed into place: a process never sees it half made); returns ``path``."""
    if os.path.isdir(path):
        return path
    tmp = f"{path}.{os.getpid()}.tmp"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp, 0o700)
    try:
        for entry in INIT_LAYER:
            if entry.endswith("/"):
                os.mkdir(f"{tmp}/{entry}", 0o755)
                os.chmod(f"{tmp}/{entry}", 0o755)  # whatever the umask: the container sees it
            else:
                os.close(os.open(f"{tmp}/{entry}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                os.chmod(f"{tmp}/{entry}", 0o644)
        os.chmod(tmp, 0o755)
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(path):  # (not another process making it first)
            raise
    return path


def clear_volatile(workdir: str) -> None:
    """Let an overlay with this work dir be mounted again after a ``volatile`` mount: the kernel
    refuses while ``work/incompat/volatile`` is there (it marks a mount whose changes were never
    synced). One ``lstat`` when there is nothing to clear."""
    incompat = f"{workdir}/work/incompat"
    try:
        os.lstat(incompat)
    except FileNotFoundError:
        return
    except PermissionError:
        # rootless, outside the user namespace: overlay made work/work and what is in it with
        # mode 0, as root there (the user, who owns them and may open them up)
        try:
            os.chmod(f"{workdir}/work", 0o700)
            _open_up(incompat)
        except FileNotFoundError:
            return
    import shutil

    shutil.rmtree(incompat)


def _open_up(path: str) -> None:
    """Make the directory ``path`` and those below it (our own) readable and searchable."""
    os.chmod(path, 0o700)
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _open_up(entry.path)


def volatile_supported() -> bool:
    """Whether this kernel knows overlay's ``volatile`` option (Linux 5.10 and later)."""
    release = os.uname().release
    try:
        major, minor = (int(part) for part in release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 10)


def _clean(path: str, what: str) -> str:
    """A container path normalised lexically; ``..`` above the root is refused."""
    if not path.startswith("/") or "\0" in path:
        raise UsageError(f"{what} {path!r} is not an absolute path in the container")
    parts: list[str] = []
    for c in path.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if not parts:
                raise UsageError(f"{what} {path!r} climbs out of the container's root")
            parts.pop()
        else:
            parts.append(c)
    return "/" + "/".join(parts)


# -- facts about the host --------------------------------------------------------------------------
_host_kinds: dict[str, str] = {}


def _host_kind(path: str) -> str:
    """'d', 'f' or '' (missing) for a path on the host; the host's /proc and /sys do not change."""
    kind = _host_kinds.get(path)
    if kind is None:
        try:
            st = os.lstat(path)
        except OSError:
            kind = ""
        else:
            kind = "d" if stat.S_ISDIR(st.st_mode) else "f"
        _host_kinds[path] = kind
    return kind


def _mount_flags(path: str) -> int:
    """The per-mount flags of the mount holding ``path`` (a bind keeps them; a remount must)."""
    try:
        f_flag = os.statvfs(path).f_flag
    except OSError as exc:
        raise UsageError(f"bind mount source {path}: {exc.strerror}") from exc
    flags = 0
    for st_bit, ms_bit in _STATVFS_TO_MS:
        if f_flag & st_bit:
            flags |= ms_bit
    return flags


def _submounts(top: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """The mount points below ``top`` (not ``top`` itself), parents first, each once."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found: dict[str, None] = {}
    prefix = top.rstrip("/") + "/"
    for line in lines:
        fields = line.split(" ", 5)
        if len(fields) < 5:
            continue
        point = fields[4]
        if "\\" in point:  # mountinfo escapes space, tab, newline and backslash as \ooo
            import re

            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
        if point.startswith(prefix):
            found[point] = None
    return sorted(found, key=_depth)


def _escape(path: str) -> str:
    """A path as overlay's option parser wants it (``\\``, ``,`` and ``:`` escaped)."""
    if "\\" in path or "," in path or ":" in path:
        return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")
    return path


def _depth(path: str) -> int:
    return path.count("/") if path != "/" else 0


def _tmpfs_options(options: str) -> tuple[int, str]:
    flags = _TMPFS_DEFAULT_FLAGS
    data: list[str] = []
    for raw in options.split(","):
        word = raw.strip()
        if not word:
            continue
        flag = _FLAG_WORDS.get(word)
        if flag is None:
            data.append(word)
        elif flag[1]:
            flags |= flag[0]
        else:
            flags &= ~flag[0]
    return flags, ",".join(data)


# -- planning --------------------------------------------------------------------------------------
class _Planner:
    def __init__(self, cfg: RootfsConfig) -> None:
        root = os.path.normpath(cfg.rootfs)
        if not os.path.isabs(root) or root == "/":
            raise UsageError(f"rootfs {cfg.rootfs!r} must be an absolute directory other than /")
        self.cfg = cfg
        self.root = root
        self.ops: list[Op] = []
        self.proc = self.sys = ""
        init = (cfg.init_layer,) if cfg.init_layer and cfg.lowerdirs else ()
        layers = (cfg.upperdir, *init, *reversed(cfg.lowerdirs)) if cfg.overlay else (root,)
        mutable = cfg.upperdir if cfg.overlay else root
        self.tree = _Tree(layers, cfg.userxattr, mutable)

    def host(self, ctr: str) -> str:
        return self.root if ctr == "/" else self.root + ctr

    def op(
        self,
        kind: OpKind,
        target: str,
        *,
        source: str = "",
        fstype: str = "",
        flags: int = 0,
        data: str = "",
        mode: int = 0,
        device: int = 0,
        ctr: str = "",
    ) -> None:
        self.ops.append(Op(kind, target, source, fstype, flags, data, mode, device, ctr))

    def mountpoint(self, target: str, *, file: bool = False, mount: bool = True) -> str:
        """Resolve ``target``, creating whatever is missing; returns the resolved container path."""
        resolved, missing = self.tree.resolve(target)
        if mount and resolved == "/":
            raise UsageError(f"mount target {target} resolves to the container's root (/)")
        last = len(missing) - 1
        for i, (path, _, _) in enumerate(missing):
            if file and i == last:
                self.op("touch", self.host(path), mode=0o644, ctr=path)
                self.tree.made[path] = "f"
            else:
                self.op("mkdir", self.host(path), mode=0o755, ctr=path)
                self.tree.made[path] = "d"
        return resolved

    def mount(
        self,
        ctr: str,
        fstype: str,
        flags: int,
        data: str = "",
        *,
        source: str = "",
        content: _Layers,
    ) -> None:
        """Mount a filesystem (named ``source``, else after its type) that holds ``content``."""
        target = self.host(ctr)
        self.op(
            "mount", target, source=source or fstype, fstype=fstype, flags=flags, data=data, ctr=ctr
        )
        self.tree.mount(ctr, content)

    def bind(self, source: str, ctr: str, *, file: bool, readonly: bool = False) -> None:
        target = self.host(ctr)
        self.op("mount", target, source=source, flags=MS_BIND | MS_REC, ctr=ctr)
        if file:
            self.tree.made[ctr] = "f"
        else:
            self.tree.mount(ctr, (source,))
        if readonly:
            flags = _RO_REMOUNT | _mount_flags(source)
            self.op("mount", target, flags=flags, ctr=ctr)

    def plan(self) -> tuple[Op, ...]:
        cfg = self.cfg
        self.op("mount", "/", source="none", flags=MS_REC | MS_PRIVATE)
        self.root_mount()
        kit = self.kit_fits()
        if kit:
            self.kit_mounts()
        else:
            self.system_mounts()
        self.user_mounts()
        if not cfg.privileged and not kit:
            self.masked_and_readonly()
        workdir = self.mountpoint(
            _clean(cfg.workdir_in_container, "working directory"), mount=False
        )
        self.op("chdir", self.root)
        self.op("pivot_root", ".", source=".", ctr="/")
        self.op("umount2", ".", flags=MNT_DETACH, ctr="/")
        self.op("chdir", "/", ctr="/")
        if cfg.readonly:
            flags = _RO_REMOUNT | (0 if cfg.overlay else _mount_flags(self.root))
            self.op("mount", "/", flags=flags, ctr="/")
        if workdir != "/":
            self.op("chdir", workdir, ctr=workdir)
        return tuple(self.ops)

    def root_mount(self) -> None:
        cfg, root = self.cfg, self.root
        if not cfg.overlay:
            self.op("mount", root, source=root, flags=MS_BIND | MS_REC)
            return
        if not cfg.lowerdirs:  # an image without layers: the upper dir is the whole root
            self.op("mount", root, source=cfg.upperdir, flags=MS_BIND | MS_REC)
            return
        init = (cfg.init_layer,) if cfg.init_layer else ()
        dirs = (*init, *reversed(cfg.lowerdirs), cfg.upperdir, cfg.workdir)
        data = self.overlay_data(dirs)
        if len(data) >= _PAGE_SIZE:
            # Overlay resolves relative layer paths from the current directory: shorten them.
            base = os.path.commonpath(dirs)
            data = self.overlay_data(tuple(os.path.relpath(d, base) for d in dirs))
            if len(data) >= _PAGE_SIZE:
                raise UsageError(f"too many image layers for one overlay mount ({len(dirs) - 2})")
            self.op("chdir", base)
        self.op("mount", root, source="overlay", fstype="overlay", data=data)

    def overlay_data(self, dirs: tuple[str, ...]) -> str:
        *lower, upper, work = (_escape(d) for d in dirs)
        data = f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}"
        if self.cfg.userxattr:
            data += ",userxattr"
        return data + ",volatile" if self.cfg.volatile else data

    def system_mounts(self) -> None:
        """/proc, a minimal /dev and /sys."""
        cfg = self.cfg
        kernel = None  # what a kernel filesystem holds, for the resolver: not looked into
        self.proc = self.mountpoint("/proc")
        self.mount(self.proc, "proc", _PROC_FLAGS, content=kernel)
        dev = self.mountpoint("/dev")
        self.mount(dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k", content=())
        # /dev is a fresh tmpfs: what goes in it needs no resolving, only recording.
        for name, major, minor in _DEVICES:
            path = self.fresh(dev, name, "f")
            if cfg.create_devices:
                device = os.makedev(major, minor)
                self.op("mknod", self.host(path), mode=_CHAR_0666, device=device, ctr=path)
            else:
                self.op("touch", self.host(path), mode=0o644, ctr=path)
                self.bind(f"/dev/{name}", path, file=True)
        pts_data = "newinstance,ptmxmode=0666,mode=0620"
        if cfg.create_devices:  # rootless: gid 5 may not be mapped in the user namespace
            pts_data += ",gid=5"
        for name, fstype, flags, data in (
            ("pts", "devpts", MS_NOSUID | MS_NOEXEC, pts_data),
            ("shm", "tmpfs", _PROC_FLAGS, "mode=1777,size=65536k"),
            ("mqueue", "mqueue", _PROC_FLAGS, ""),
        ):
            path = self.fresh(dev, name, "d")
            self.op("mkdir", self.host(path), mode=0o755, ctr=path)
            content = () if fstype == "tmpfs" else kernel
            self.mount(
                path, fstype, flags, data, source=name if name == "shm" else "", content=content
            )
            if name == "pts":
                self.link(dev, "ptmx", "pts/ptmx")
        for name, link in _DEV_LINKS:
            self.link(dev, name, link)
        if _host_kind("/proc/kcore"):
            self.link(dev, "core", "/proc/kcore")
        console = self.fresh(dev, "console", "f")
        self.op("touch", self.host(console), mode=0o644, ctr=console)
        self.bind(cfg.console or "/dev/null", console, file=True)
        self.sys = self.mountpoint("/sys")
        if cfg.host_sys:  # bound, then made what a sysfs of ours would be (nosuid, ..., ro)
            target = self.host(self.sys)
            self.op("mount", target, source="/sys", flags=MS_BIND | MS_REC, ctr=self.sys)
            flags = MS_BIND | MS_REMOUNT | _PROC_FLAGS | _mount_flags("/sys")
            flags = flags if cfg.privileged else flags | MS_RDONLY
            self.op("mount", target, flags=flags, ctr=self.sys)
            if not cfg.privileged:  # the bind brought the host's submounts (cgroup, tracing...)
                for sub in _submounts("/sys"):  # in, writable: each made read-only too
                    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | _PROC_FLAGS | _mount_flags(sub)
                    ctr = self.sys + sub[len("/sys") :]
                    self.op("mount", self.host(ctr), flags=flags, ctr=ctr)
            self.tree.mount(self.sys, kernel)
            return
        sys_flags = _PROC_FLAGS if cfg.privileged else _PROC_FLAGS | MS_RDONLY
        self.mount(self.sys, "sysfs", sys_flags, content=kernel)

    def kit_fits(self) -> bool:
        """Whether the kit's system mounts are exactly what ``system_mounts`` and
        ``masked_and_readonly`` would make here (see ``RootfsConfig.kit``)."""
        cfg = self.cfg
        if not cfg.kit or cfg.privileged or not cfg.create_devices:
            return False
        given: tuple[BindMount | TmpfsMount, ...] = (*cfg.binds, *cfg.tmpfs)
        for one in given:
            target = _clean(one.target, "mount target")
            if any(target == top or target.startswith(top + "/") for top in _KIT_TOPS):
                return False
        for top in _KIT_TOPS:
            resolved, missing = self.tree.resolve(top)
            if resolved != top or missing:
                return False
        return True

    def kit_mounts(self) -> None:
        """``/proc``, ``/dev`` and ``/sys`` moved in from the kit (``plan_kit``)."""
        for top in _KIT_TOPS:
            self.op("mount", self.host(top), source=top, flags=MS_MOVE, ctr=top)
            self.tree.mount(top, () if top == "/dev" else None)
        self.proc, self.sys = "/proc", "/sys"
        console = self.cfg.console
        if console:  # over the kit's /dev/console (/dev/null)
            self.bind(console, "/dev/console", file=True)

    def fresh(self, parent: str, name: str, kind: str) -> str:
        """Record that the plan puts ``name`` in the fresh directory ``parent``; its path."""
        path = f"{parent}/{name}" if parent != "/" else f"/{name}"
        self.tree.made[path] = kind
        return path

    def link(self, parent: str, name: str, content: str) -> None:
        path = self.fresh(parent, name, "l" + content)
        self.op("symlink", self.host(path), source=content, ctr=path)

    def user_mounts(self) -> None:
        """The runtime's /etc files and the user's mounts, parents before children."""
        cfg = self.cfg
        user: dict[str, BindMount | TmpfsMount] = {}
        given: tuple[BindMount | TmpfsMount, ...] = (*cfg.binds, *cfg.tmpfs)
        for given_mount in given:
            target = _clean(given_mount.target, "mount target")
            if target == "/":
                raise UsageError("cannot mount over the container's root (/)")
            if target in user:
                raise UsageError(f"duplicate mount point: {target}")
            user[target] = given_mount
        mounts: list[tuple[str, BindMount | TmpfsMount | str]] = [
            (target, host_file)
            for host_file, target in ((h, _clean(c, "file")) for h, c in cfg.etc_files)
            if target not in user  # a user's own mount wins
        ]
        mounts += user.items()
        mounts.sort(key=lambda item: _depth(item[0]))
        for target, m in mounts:
            if isinstance(m, str):
                self.bind(m, self.mountpoint(target, file=True), file=True)
            elif isinstance(m, TmpfsMount):
                flags, data = _tmpfs_options(m.options)
                self.mount(self.mountpoint(target), "tmpfs", flags, data, content=())
            else:
                try:
                    is_dir = stat.S_ISDIR(os.stat(m.source).st_mode)
                except OSError as exc:
                    raise UsageError(f"bind mount source {m.source}: {exc.strerror}") from exc
                resolved = self.mountpoint(target, file=not is_dir)
                self.bind(m.source, resolved, file=not is_dir, readonly=m.readonly)

    def masked_and_readonly(self) -> None:
        """Docker's masked and read-only paths (all inside /proc or /sys: nothing to resolve)."""
        for path in MASKED_PATHS:
            kind = _host_kind(path)
            if not kind:
                continue
            ctr = self.in_kernel_fs(path)
            if kind == "d":
                self.mount(ctr, "tmpfs", MS_RDONLY, content=())
            else:
                self.bind("/dev/null", ctr, file=True)
        for path in READONLY_PATHS:
            if not _host_kind(path):
                continue
            ctr = self.in_kernel_fs(path)
            target = self.host(ctr)
            self.op("mount", target, source=target, flags=MS_BIND | MS_REC, ctr=ctr)
            self.op("mount", target, flags=_RO_REMOUNT | _PROC_FLAGS, ctr=ctr)

    def in_kernel_fs(self, path: str) -> str:
        """Where ``/proc/...`` or ``/sys/...`` is, given where /proc and /sys were mounted."""
        top, _, rest = path[1:].partition("/")
        return f"{self.proc if top == 'proc' else self.sys}/{rest}"


_KIT_TOPS: Final = ("/proc", "/dev", "/sys")
_KIT_SYS_FLAGS: Final = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC


class _KitPlanner(_Planner):
    """Plans the kit: the system mounts of ``_Planner``, made over PID 1's own ``/proc``,
    ``/dev`` and ``/sys`` (in its private mount namespace) instead of inside a root."""

    def __init__(self) -> None:  # (no root, no layers: nothing is resolved)
        self.cfg = RootfsConfig(rootfs="/", lowerdirs=(), upperdir="", workdir="")
        self.root = ""
        self.ops = []
        self.proc = self.sys = ""
        self.tree = _Tree((), userxattr=False)

    def mountpoint(self, target: str, *, file: bool = False, mount: bool = True) -> str:
        return target

    def plan(self) -> tuple[Op, ...]:
        self.op("mount", "/", source="none", flags=MS_REC | MS_PRIVATE)  # nothing propagates
        # On the host's network the new sysfs is the host's own superblock, which the kernel
        # will not mount on its own root again (EBUSY): an empty tmpfs goes in between (it
        # stays behind, in PID 1's old root, when the sysfs is moved into the container).
        self.op("mount", "/sys", source="tmpfs", fstype="tmpfs", flags=_KIT_SYS_FLAGS)
        self.system_mounts()
        self.masked_and_readonly()
        return tuple(self.ops)


def plan_kit() -> tuple[Op, ...]:
    """The kit (see ``RootfsConfig.kit``): a fresh ``/proc`` with docker's masked and read-only
    paths, the minimal ``/dev`` and a read-only ``/sys``, mounted over PID 1's own ``/proc``,
    ``/dev`` and ``/sys`` (after it made ``/`` private) by a process that already has the
    container's PID and network namespaces (its own, or the host's). Root only (devices are
    made with mknod)."""
    return _KitPlanner().plan()


def uses_kit(ops: Iterable[Op]) -> bool:
    """Whether a plan moves the kit in (then PID 1 must have made it: ``plan_kit``)."""
    return any(op.kind == "mount" and op.flags & MS_MOVE for op in ops)


def drop_kit(sys: Syscalls) -> None:
    """Take a kit away again (PID 1 made one ahead, but its plan does not use it)."""
    for top in reversed(_KIT_TOPS):
        sys.umount2(top, MNT_DETACH)


# -- an overlay mounted ahead --------------------------------------------------------------------
# Mounting a container's overlay makes ~6 inodes in its work dir (work/work, the whiteout and
# tmpfile probes, incompat/volatile), ~0.7 ms each on a busy ext4. A zygote mounts the overlay
# of the image its launcher last started ahead (``premount``), over a staged directory of its
# own; a start for the same image takes it over (``container``: the staged upper and work dirs
# are renamed onto the container's empty ones, the mount moved onto its rootfs).
@dataclass(frozen=True, slots=True)
class Premount:
    """An overlay mounted ahead over ``staged``/rootfs (upper and work dirs in ``staged``)."""

    staged: str
    lower: str
    """The ``lowerdir=`` value, as the plan writes it."""
    options: str
    """What the plan writes after ``workdir=``: ``,userxattr``, ``,volatile``."""
    layers: tuple[tuple[int, int, int], ...]
    """(device, inode, ctime) of each lower dir when mounted: a layer removed and made again
    (an image deleted and pulled again) is another directory, and the premount unusable."""

    def fits(self, lower: str, options: str) -> bool:
        """Whether a plan's overlay (``overlay_parts``) is this one, its layers unchanged."""
        if (lower, options) != (self.lower, self.options):
            return False
        try:
            return _identities(lower) == self.layers
        except OSError:
            return False


def overlay_parts(data: str) -> tuple[str, str, str, str] | None:
    """``(lowerdir, upperdir, workdir, options)`` of an overlay's mount data as ``plan_rootfs``
    writes it, or None if it has escapes or relative paths (then it is never premounted)."""
    if "\\" in data or not data.startswith("lowerdir=/"):
        return None
    lower, sep, rest = data[len("lowerdir=") :].partition(",upperdir=")
    upper, sep2, rest = rest.partition(",workdir=")
    work, comma, options = rest.partition(",")
    if not (sep and sep2 and upper.startswith("/") and work.startswith("/")):
        return None
    return lower, upper, work, comma + options


def premount(staged: str, lower: str, options: str, sys: Syscalls) -> Premount:
    """Mount the overlay of ``lower`` (with ``options``) over a new ``staged`` directory."""
    layers = _identities(lower)
    for path in (staged, f"{staged}/upper", f"{staged}/work", f"{staged}/rootfs"):
        sys.mkdir(path, 0o755)
    data = f"lowerdir={lower},upperdir={staged}/upper,workdir={staged}/work{options}"
    sys.mount("overlay", f"{staged}/rootfs", "overlay", 0, data)
    return Premount(staged, lower, options, layers)


def _identities(lower: str) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in lower.split(":"):
        st = os.stat(path)
        out.append((st.st_dev, st.st_ino, st.st_ctime_ns))
    return tuple(out)


def plan_rootfs(cfg: RootfsConfig) -> tuple[Op, ...]:
    """The operations that assemble the container's root, in order (see the module docstring).

    Reads the host and the image layers to plan, changes nothing. ``UsageError`` for a mount
    target that climbs out of the root or is given twice, or a bind source that is missing.
    """
    return _Planner(cfg).plan()


# -- applying --------------------------------------------------------------------------------------
def apply(ops: Iterable[Op], sys: Syscalls) -> None:
    """Make the calls of a plan, in order; the first that fails raises ``RuntimeFailure``."""
    cwd = ""
    for op in ops:
        kind = op.kind
        try:
            if kind == "mount":
                sys.mount(op.source, op.target, op.fstype, op.flags, op.data)
            elif kind == "mkdir":
                sys.mkdir(op.target, op.mode)
            elif kind == "symlink":
                sys.symlink(op.source, op.target)
            elif kind == "mknod":
                sys.mknod(op.target, op.mode, op.device)
            elif kind == "touch":
                sys.touch(op.target, op.mode)
            elif kind == "chdir":
                sys.chdir(op.target)
                cwd = op.target
            elif kind == "pivot_root":
                sys.pivot_root(op.target, op.source)
            elif kind == "umount2":
                sys.umount2(op.target, op.flags)
            else:
                raise RuntimeFailure(f"unknown mount plan operation {kind!r}")
        except OSError as exc:
            raise RuntimeFailure(_failure(op, exc, cwd)) from exc


def _failure(op: Op, exc: OSError, cwd: str) -> str:
    reason = exc.strerror or str(exc)
    where = op.target
    if op.ctr and op.ctr != op.target:
        where = f"{op.ctr} ({op.target})"
    kind = op.kind
    if kind == "mount":
        if op.flags & MS_REMOUNT:
            what = f"remount {where} read-only" if op.flags & MS_RDONLY else f"remount {where}"
        elif op.flags & MS_BIND:
            what = f"bind-mount {op.source} on {where}"
        elif not op.fstype:
            what = f"change the propagation of {where}"
        else:
            what = f"mount {op.fstype} on {where}"
        return f"cannot {what}: {reason}" + (f" ({op.data})" if op.data else "")
    what = {
        "mkdir": f"create directory {where}",
        "touch": f"create mount point {where}",
        "mknod": f"create device {where}",
        "symlink": f"create symlink {where} -> {op.source}",
        "chdir": f"change directory to {where}",
        "pivot_root": f"pivot_root into {cwd or op.target}",
        "umount2": f"detach the old root from {cwd or op.target}",
    }.get(kind, f"{kind} {where}")
    return f"cannot {what}: {reason}"
