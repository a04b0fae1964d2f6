"""The privileged-syscall seam: every mount, namespace and capability call goes through here.

``Syscalls`` is the protocol the runtime programs against; ``LinuxSyscalls`` makes the calls for
real (ctypes on the C library, which only this module may import: its C extension ``_ctypes``
alone, see ``_CTypes``) and ``RecordingSyscalls``
writes them down instead, so that mount plans and error paths can be tested without root.

Every method raises ``OSError`` carrying the errno and, in ``filename``, the path (or interface)
it acted on. Importing this module is cheap: ``_ctypes`` and the C library are loaded when the
first ``LinuxSyscalls`` is made, once per process. Make one *before* forking so that children
inherit it ready to use.
"""

from __future__ import annotations

import contextlib
import os
import sys

from pytest_minidock.capabilities import NUMBERS, normalize

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any, Final, Protocol
else:
    Protocol = object  # (the protocol is a plain class at run time)

__all__ = [
    "CAPS",
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "DOCKER_DEFAULT_CAPS",
    "MNT_DETACH",
    "MS_BIND",
    "MS_NOATIME",
    "MS_NODEV",
    "MS_NODIRATIME",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_RELATIME",
    "MS_REMOUNT",
    "MS_SLAVE",
    "MS_STRICTATIME",
    "LinuxSyscalls",
    "RecordingSyscalls",
    "Syscalls",
    "cap_mask",
    "parse_caps",
]

# -- namespaces (linux/sched.h) -------------------------------------------------------------------
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000

# -- mount(2) flags (linux/mount.h) ---------------------------------------------------------------
MS_RDONLY: Final = 1
MS_NOSUID: Final = 2
MS_NODEV: Final = 4
MS_NOEXEC: Final = 8
MS_SYNCHRONOUS: Final = 16
MS_REMOUNT: Final = 32
MS_MANDLOCK: Final = 64
MS_DIRSYNC: Final = 128
MS_NOATIME: Final = 1024
MS_NODIRATIME: Final = 2048
MS_BIND: Final = 4096
MS_MOVE: Final = 8192
MS_REC: Final = 16384
MS_UNBINDABLE: Final = 1 << 17
MS_PRIVATE: Final = 1 << 18
MS_SLAVE: Final = 1 << 19
MS_SHARED: Final = 1 << 20
MS_RELATIME: Final = 1 << 21
MS_STRICTATIME: Final = 1 << 24
MS_LAZYTIME: Final = 1 << 25

MNT_FORCE: Final = 1
MNT_DETACH: Final = 2

# -- prctl(2) options (linux/prctl.h) -------------------------------------------------------------
PR_SET_PDEATHSIG: Final = 1
PR_SET_KEEPCAPS: Final = 8
PR_CAPBSET_READ: Final = 23
PR_CAPBSET_DROP: Final = 24
PR_SET_CHILD_SUBREAPER: Final = 36
PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39

# -- capabilities (linux/capability.h) ------------------------------------------------------------
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522

CAPS: Final[dict[str, int]] = NUMBERS
"""Capability numbers by their ``CAP_`` name."""

DOCKER_DEFAULT_CAPS: Final = frozenset(
    CAPS[name]
    for name in (
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
    )
)
"""The capabilities docker leaves a non-privileged container."""


def parse_caps(names: Iterable[str]) -> frozenset[int]:
    """Capability numbers for docker's ``--cap-add``/``--cap-drop`` spellings.

    ``NET_ADMIN``, ``CAP_NET_ADMIN`` and ``net_admin`` name the same capability; ``ALL`` means
    every capability this module knows. An unknown name is a ``UsageError``.
    """
    out: set[int] = set()
    for raw in names:
        name = normalize(raw.strip())
        if name == "ALL":
            out.update(CAPS.values())
        else:
            out.add(CAPS[name])
    return frozenset(out)


def cap_mask(caps: Iterable[int]) -> int:
    """The bit mask of a capability set, as ``/proc/PID/status`` shows it (``CapEff`` ...)."""
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    return mask


class Syscalls(Protocol):
    """The privileged calls the runtime makes; each raises ``OSError`` (errno, path) on failure."""

    def unshare(self, flags: int) -> None: ...
    def setns(self, fd: int, nstype: int) -> None: ...
    def mount(self, source: str, target: str, fstype: str, flags: int, data: str) -> None: ...
    def umount2(self, target: str, flags: int) -> None: ...
    def pivot_root(self, new_root: str, put_old: str) -> None: ...
    def sethostname(self, name: str) -> None: ...
    def mknod(self, path: str, mode: int, device: int) -> None:
        """Make a device node with exactly ``mode`` (the umask does not apply)."""
        ...

    def mkdir(self, path: str, mode: int) -> None:
        """Make a directory; one that already exists is fine."""
        ...

    def touch(self, path: str, mode: int) -> None:
        """Create an empty file if there is nothing at ``path`` (never follows a symlink)."""
        ...

    def symlink(self, target: str, path: str) -> None:
        """Make ``path`` a symlink to ``target``; something already at ``path`` is fine."""
        ...

    def chdir(self, path: str) -> None: ...
    def prctl(
        self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0
    ) -> int: ...
    def drop_capabilities(self, keep: frozenset[int]) -> None:
        """Bounding, effective and permitted sets become exactly ``keep``; inheritable becomes
        empty (as docker since 20.10.14, CVE-2022-24769)."""
        ...

    def set_no_new_privs(self) -> None: ...
    def set_pdeathsig(self, sig: int) -> None: ...
    def set_child_subreaper(self) -> None: ...
    def loopback_up(self) -> None:
        """Bring ``lo`` up in the current network namespace."""
        ...

    def pidfd_open(self, pid: int) -> int: ...


# -- the real thing -------------------------------------------------------------------------------
_PIVOT_ROOT_NR: Final = {
    "x86_64": 155,
    "aarch64": 41,
    "arm64": 41,
    "riscv64": 41,
    "loongarch64": 41,
    "armv7l": 218,
    "armv6l": 218,
    "i686": 217,
    "i386": 217,
    "ppc64le": 203,
    "ppc64": 203,
    "s390x": 217,
}
_PIDFD_OPEN_NR: Final = 434  # the same number on every architecture
_SIOCGIFFLAGS: Final = 0x8913
_SIOCSIFFLAGS: Final = 0x8914
_IFF_UP: Final = 0x1
_AF_INET: Final = 2
_SOCK_DGRAM: Final = 1 if os.uname().machine.startswith("mips") else 2


class _CTypes:
    """The few pieces of ``ctypes`` this module uses, made from ``_ctypes`` (its C extension)
    alone: the ``ctypes`` package costs every command ~3-4 ms more to import (its many types,
    its struct and endian helpers). The same names, the same behaviour."""

    def __init__(self) -> None:
        import _ctypes

        simple: Any = _ctypes._SimpleCData

        class c_int(simple):  # type: ignore[misc]
            _type_ = "i"

        class c_uint(simple):  # type: ignore[misc]
            _type_ = "I"

        class c_long(simple):  # type: ignore[misc]
            _type_ = "l"

        class c_ulong(simple):  # type: ignore[misc]
            _type_ = "L"

        class c_char_p(simple):  # type: ignore[misc]
            _type_ = "z"

        functions: Any = _ctypes.CFuncPtr

        class FuncPtr(functions):  # type: ignore[misc]
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = c_int

        self.c_int, self.c_uint, self.c_long, self.c_ulong = c_int, c_uint, c_long, c_ulong
        self.c_uint32, self.c_size_t = c_uint, c_ulong  # (Linux: 32-bit int, LP64 or ILP32)
        self.c_char_p = c_char_p
        self.Structure: Any = _ctypes.Structure
        self.POINTER = _ctypes.POINTER
        self.byref = _ctypes.byref
        self.get_errno = _ctypes.get_errno
        self._FuncPtr = FuncPtr
        self._handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        """A function of the C library (``dlsym``), errno saved after each call."""
        if name.startswith("_"):
            raise AttributeError(name)
        return self._FuncPtr((name, self))


class _Libc:
    """The C library's functions with their prototypes, and facts read once per process."""

    def __init__(self) -> None:
        ctypes = _CTypes()
        self.ctypes = ctypes
        libc = ctypes
        c_char_p, c_int, c_ulong = ctypes.c_char_p, ctypes.c_int, ctypes.c_ulong
        self.mount = libc.mount
        self.mount.argtypes = (c_char_p, c_char_p, c_char_p, c_ulong, c_char_p)
        self.mount.restype = c_int
        self.umount2 = libc.umount2
        self.umount2.argtypes = (c_char_p, c_int)
        self.umount2.restype = c_int
        self.unshare = libc.unshare
        self.unshare.argtypes = (c_int,)
        self.unshare.restype = c_int
        self.setns = libc.setns
        self.setns.argtypes = (c_int, c_int)
        self.setns.restype = c_int
        self.sethostname = libc.sethostname
        self.sethostname.argtypes = (c_char_p, ctypes.c_size_t)
        self.sethostname.restype = c_int
        self.socket = libc.socket
        self.socket.argtypes = (c_int, c_int, c_int)
        self.socket.restype = c_int
        self.syscall = libc.syscall  # variadic: arguments are passed as explicit ctypes values
        self.syscall.restype = ctypes.c_long
        self.prctl = libc.prctl  # variadic too
        self.prctl.restype = c_int

        structure: Any = ctypes.Structure

        class CapHeader(structure):  # type: ignore[misc]
            _fields_ = (("version", ctypes.c_uint32), ("pid", c_int))

        class CapData(structure):  # type: ignore[misc]
            _fields_ = (
                ("effective", ctypes.c_uint32),
                ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32),
            )

        self.CapHeader = CapHeader
        data_type: Any = CapData
        self.CapData2 = data_type * 2
        self.capset = libc.capset
        self.capset.argtypes = (ctypes.POINTER(CapHeader), ctypes.POINTER(CapData))
        self.capset.restype = c_int
        self.pivot_root_nr = _PIVOT_ROOT_NR.get(os.uname().machine, 41)
        self.cap_last_cap = self._cap_last_cap()

    def _cap_last_cap(self) -> int:
        try:
            with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
                return int(f.read())
        except (OSError, ValueError):
            pass
        # No /proc: probe the bounding set, which answers EINVAL past the last capability.
        last = -1
        while self.prctl(PR_CAPBSET_READ, self.ctypes.c_ulong(last + 1)) >= 0:
            last += 1
        return last if last >= 0 else max(CAPS.values())


_libc: _Libc | None = None


def _load() -> _Libc:
    global _libc  # noqa: PLW0603 - one C library per process, loaded on first use
    if _libc is None:
        _libc = _Libc()
    return _libc


def _fail(filename: str | None) -> OSError:
    err = _load().ctypes.get_errno()
    return OSError(err, os.strerror(err), filename)


def _opt(value: str) -> bytes | None:
    return os.fsencode(value) if value else None


class LinuxSyscalls:
    """``Syscalls`` for real, through ``ctypes``; making one loads the C library (once)."""

    def __init__(self) -> None:
        self._c = _load()

    def unshare(self, flags: int) -> None:
        if self._c.unshare(flags) < 0:
            raise _fail(f"unshare(0x{flags:x})")

    def setns(self, fd: int, nstype: int) -> None:
        if self._c.setns(fd, nstype) < 0:
            raise _fail(f"setns(fd {fd})")

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        if self._c.mount(_opt(source), os.fsencode(target), _opt(fstype), flags, _opt(data)) < 0:
            raise _fail(target)

    def umount2(self, target: str, flags: int) -> None:
        if self._c.umount2(os.fsencode(target), flags) < 0:
            raise _fail(target)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        c = self._c
        p = c.ctypes.c_char_p
        if c.syscall(c.pivot_root_nr, p(os.fsencode(new_root)), p(os.fsencode(put_old))) < 0:
            raise _fail(new_root)

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        if self._c.sethostname(raw, len(raw)) < 0:
            raise _fail(name)

    def mknod(self, path: str, mode: int, device: int) -> None:
        os.mknod(path, mode, device)
        os.chmod(path, mode & 0o7777)  # mknod honours the umask

    def mkdir(self, path: str, mode: int) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, mode)

    def touch(self, path: str, mode: int) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(path, flags, mode)
        except IsADirectoryError:
            return  # something is there already: the mount will say whether it fits
        except OSError:
            # O_NOFOLLOW on a symlink, or O_WRONLY on a device or a read-only file: it exists.
            if os.path.lexists(path):
                return
            raise
        os.close(fd)

    def symlink(self, target: str, path: str) -> None:
        with contextlib.suppress(FileExistsError):
            os.symlink(target, path)

    def chdir(self, path: str) -> None:
        os.chdir(path)

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        c = self._c
        u = c.ctypes.c_ulong
        ret: int = c.prctl(option, u(arg2), u(arg3), u(arg4), u(arg5))
        if ret < 0:
            raise _fail(f"prctl({option})")
        return ret

    def drop_capabilities(self, keep: frozenset[int]) -> None:
        c = self._c
        u = c.ctypes.c_ulong
        zero = u(0)
        prctl = c.prctl
        for cap in range(c.cap_last_cap + 1):  # (~40 calls: no wrapper per call)
            if cap not in keep and prctl(PR_CAPBSET_DROP, u(cap), zero, zero, zero) < 0:
                raise _fail(f"prctl({PR_CAPBSET_DROP})")
        mask = cap_mask(cap for cap in keep if cap <= c.cap_last_cap)
        header = c.CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = c.CapData2()
        for i in (0, 1):
            word = (mask >> (32 * i)) & 0xFFFFFFFF
            data[i].effective = data[i].permitted = word
            data[i].inheritable = 0
        if c.capset(c.ctypes.byref(header), data) < 0:
            raise _fail("capset")

    def set_no_new_privs(self) -> None:
        self.prctl(PR_SET_NO_NEW_PRIVS, 1)

    def set_pdeathsig(self, sig: int) -> None:
        self.prctl(PR_SET_PDEATHSIG, sig)

    def set_child_subreaper(self) -> None:
        self.prctl(PR_SET_CHILD_SUBREAPER, 1)

    def loopback_up(self) -> None:
        # A socket from the C library, not from the socket module: PID 1 calls this after the
        # fork, where importing _socket (a shared object to load) costs ~1 ms.
        import fcntl

        c = self._c
        fd = c.socket(_AF_INET, _SOCK_DGRAM | os.O_CLOEXEC, 0)
        if fd < 0:
            raise _fail("lo")
        try:
            name = b"lo".ljust(16, b"\0")
            ifreq = fcntl.ioctl(fd, _SIOCGIFFLAGS, name + bytes(24))
            flags = int.from_bytes(ifreq[16:18], sys.byteorder)
            if not flags & _IFF_UP:
                packed = name + (flags | _IFF_UP).to_bytes(2, sys.byteorder) + bytes(22)
                fcntl.ioctl(fd, _SIOCSIFFLAGS, packed)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, "lo") from exc
        finally:
            os.close(fd)

    def pidfd_open(self, pid: int) -> int:
        c = self._c
        fd: int = c.syscall(_PIDFD_OPEN_NR, c.ctypes.c_int(pid), c.ctypes.c_uint(0))
        if fd < 0:
            raise _fail(f"pid {pid}")
        return fd


# -- the recorder ---------------------------------------------------------------------------------
if TYPE_CHECKING:
    Call = tuple[Any, ...]
    """One recorded call: ``(method_name, *args)``."""


class RecordingSyscalls:
    """``Syscalls`` that only write each call down in ``calls``, as ``(method_name, *args)``.

    ``fail`` makes calls fail: a mapping from method name to the exception every call of that
    method raises, or a function given each call tuple that returns an exception to raise (or
    None). A failing call is recorded before it raises. ``pidfd_open`` returns ``pidfd``.
    """

    def __init__(
        self,
        fail: Mapping[str, BaseException] | Callable[[Call], BaseException | None] | None = None,
        *,
        pidfd: int = -1,
    ) -> None:
        self.calls: list[Call] = []
        self._fail = fail
        self._pidfd = pidfd

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        fail = self._fail
        if fail is None:
            return
        exc = fail.get(call[0]) if not callable(fail) else fail(call)
        if exc is not None:
            raise exc

    def unshare(self, flags: int) -> None:
        self._record("unshare", flags)

    def setns(self, fd: int, nstype: int) -> None:
        self._record("setns", fd, nstype)

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        self._record("mount", source, target, fstype, flags, data)

    def umount2(self, target: str, flags: int) -> None:
        self._record("umount2", target, flags)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        self._record("pivot_root", new_root, put_old)

    def sethostname(self, name: str) -> None:
        self._record("sethostname", name)

    def mknod(self, path: str, mode: int, device: int) -> None:
        self._record("mknod", path, mode, device)

    def mkdir(self, path: str, mode: int) -> None:
        self._record("mkdir", path, mode)

    def touch(self, path: str, mode: int) -> None:
        self._record("touch", path, mode)

    def symlink(self, target: str, path: str) -> None:
        self._record("symlink", target, path)

    def chdir(self, path: str) -> None:
        self._record("chdir", path)

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        self._record("prctl", option, arg2, arg3, arg4, arg5)
        return 0

    def drop_capabilities(self, keep: frozenset[int]) -> None:
        self._record("drop_capabilities", keep)

    def set_no_new_privs(self) -> None:
        self._record("set_no_new_privs")

    def set_pdeathsig(self, sig: int) -> None:
        self._record("set_pdeathsig", sig)

    def set_child_subreaper(self) -> None:
        self._record("set_child_subreaper")

    def loopback_up(self) -> None:
        self._record("loopback_up")

    def pidfd_open(self, pid: int) -> int:
        self._record("pidfd_open", pid)
        return self._pidfd


if TYPE_CHECKING:

    def _implementations(real: LinuxSyscalls, fake: RecordingSyscalls) -> tuple[Syscalls, ...]:
        return real, fake  # mypy checks that both satisfy the protocol
