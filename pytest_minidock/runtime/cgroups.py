"""Container cgroups: resource limits and process tracking through cgroup v2 or v1.

One container gets one group, ``<mount>/<root_name>/<container_id>``, in each hierarchy it uses.
Which hierarchy handles what is decided once per process by :func:`detect`, per *role*:

``memory`` / ``cpu`` / ``pids``
    the controller behind ``--memory``/``--memory-swap``, ``--cpus``/``--cpu-shares`` and
    ``--pids-limit``. A controller is taken from cgroup v2 when the v2 mount offers it in
    ``cgroup.controllers`` and it can be enabled in that mount's ``cgroup.subtree_control``
    (a controller bound to a v1 hierarchy is never offered in v2); otherwise from the v1
    hierarchy it is mounted as; otherwise it is unavailable and asking for that limit raises
    :class:`~pytest_minidock.errors.PrivilegeError`. Each limit therefore has exactly one home.
``procs``
    process tracking: :meth:`Cgroup.pids`, :meth:`Cgroup.kill_all`, :meth:`Cgroup.freeze`. A
    writable cgroup2 mount is preferred even when it offers no controller at all (a hybrid host's
    ``/sys/fs/cgroup/unified``): v2 groups track processes, have ``cgroup.kill`` (atomic, also
    catches processes forked while killing), ``cgroup.freeze`` and ``cpu.stat``. Without v2 the
    v1 ``freezer`` hierarchy is used (freeze, kill, thaw), else ``pids``, ``memory`` or ``cpu``.

With no usable hierarchy at all :func:`detect` returns a :class:`NullManager`: containers without
limits still run (their :class:`NullCgroup` only remembers the pids it was given), and asking for
a limit raises ``PrivilegeError`` naming the limit and what is missing.

Rootless (an ordinary user, or the root of their user namespace): the machine's hierarchies are
root's. What a user may write is a cgroup v2 subtree delegated to them (systemd's
``user@UID.service``, which a process started with ``systemd-run --user --scope`` lives in):
:func:`delegated_mount` finds the highest group above the process's own that the user owns, and
:func:`detect` uses it as if it were a cgroup2 mount. Limits no hierarchy can apply are dropped
for rootless containers instead of refused (:func:`drop_unavailable`), each said once.

Swap: ``Limits.memory_swap`` is docker's ``--memory-swap``, the total of memory plus swap, and
``-1`` means unlimited swap. When it is ``None`` minidock allows **no** swap (total = memory),
unlike docker's default of total = 2 x memory: a test container that outgrows its limit is then
OOM-killed at once instead of slowing down in swap. When the kernel has no swap accounting
(``memory.swap.max`` / ``memory.memsw.limit_in_bytes`` missing) the swap part is skipped, as
docker does (it only warns).

CPU: ``--cpus`` becomes a CFS quota over a period of 100000 µs (v2 ``cpu.max``, v1
``cpu.cfs_quota_us``; a new v1 group already has the 100000 µs default period). ``--cpu-shares``
is written as v1 ``cpu.shares`` or converted to v2 ``cpu.weight`` like runc does.

Cost: creating, joining and removing a group are a handful of ``mkdir``/``write``/``rmdir`` calls
with no subprocess and no directory scan (the ``<root_name>`` parents are prepared once per
manager). A group always occupies the tracking hierarchy but a controller's v1 hierarchy only
when one of its limits needs it, so a container without limits costs one ``mkdir``, one write
and one ``rmdir``. Every failed write is a ``RuntimeFailure`` naming the file and value.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import signal
import time
from pathlib import Path

from pytest_minidock._record import dataclass
from pytest_minidock.errors import PrivilegeError, RuntimeFailure, UsageError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Protocol
else:
    Protocol = object  # (the protocol is a plain class at run time)

__all__ = [
    "CPU_PERIOD_US",
    "MIN_MEMORY",
    "ROLES",
    "Cgroup",
    "CgroupManager",
    "CgroupStats",
    "CgroupfsGroup",
    "CgroupfsManager",
    "Hierarchy",
    "Limits",
    "Mount",
    "NullCgroup",
    "NullManager",
    "cpu_weight",
    "delegated_mount",
    "detect",
    "drop_unavailable",
    "parse_cpus",
    "parse_memory",
    "parse_memory_swap",
    "parse_mountinfo",
    "select_hierarchies",
]

MIN_MEMORY = 6 * 1024 * 1024
"""Docker's smallest ``--memory``: 6 MiB."""

CPU_PERIOD_US = 100_000
"""The CFS period ``--cpus`` is expressed in (docker's and the kernel's default)."""

ROLES: tuple[str, ...] = ("memory", "cpu", "pids", "procs")
"""What a hierarchy can be used for; ``procs`` is process tracking (pids, kill, freeze)."""

_CONTROLLERS: tuple[str, ...] = ("memory", "cpu", "pids")
_V1_CONTROLLERS = frozenset(
    (
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "misc",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
    )
)
_V1_TRACKERS: tuple[str, ...] = ("freezer", "pids", "memory", "cpu")
_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}"
_SIZE_PATTERN = r"(\d+(?:\.\d+)?) ?([kmgtp])?i?b?"
# (the patterns are compiled on first use, by ``re``'s own cache: not at import)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_V1_UNLIMITED = 1 << 62  # v1 reports "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE (~2**63)
_MOUNTINFO = "/proc/self/mountinfo"
_DEFAULT_V2_MOUNTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")

# Indirections so the unit tests can emulate cgroupfs (which fills new directories with control
# files and lets rmdir remove them) in an ordinary temporary directory.
_mkdir = os.mkdir
_rmdir = os.rmdir


# --------------------------------------------------------------------------- parsing helpers


def parse_memory(text: str) -> int:
    """Bytes from a docker size (``512m``, ``1.5g``, ``6291456``, ``64MiB``): at least 6 MiB.

    Units are binary and case-insensitive: ``b``, ``k``, ``m``, ``g`` (also ``t``, ``p``), with an
    optional ``i``/``b`` suffix as docker's parser allows; a bare number is bytes.
    """
    value = _parse_size(text)
    if value < MIN_MEMORY:
        raise UsageError("minimum memory limit allowed is 6MB")
    return value


def parse_memory_swap(text: str) -> int:
    """Bytes of memory plus swap (``--memory-swap``): a docker size, or ``-1`` for unlimited."""
    if text.strip() == "-1":
        return -1
    return _parse_size(text)


def parse_cpus(text: str) -> float:
    """The number of CPUs for ``--cpus`` (``"1.5"``): from 0.01 up to the CPUs this host has."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid argument {text!r} for --cpus: not a number") from None
    _check_cpus(value)
    return value


def cpu_weight(shares: int) -> int:
    """The v2 ``cpu.weight`` for v1 ``cpu.shares``, converted like runc (2..262144 → 1..10000)."""
    shares = min(max(shares, 2), 262_144)
    return 1 + ((shares - 2) * 9999) // 262_142


def _parse_size(text: str) -> int:
    match = re.fullmatch(_SIZE_PATTERN, text.strip(), re.IGNORECASE)
    if match is None:
        raise UsageError(f"invalid size: {text!r} (use a number with an optional b, k, m or g)")
    from decimal import Decimal

    return int(Decimal(match[1]) * _UNITS[(match[2] or "").lower()])


def _check_cpus(value: float) -> None:
    count = os.cpu_count() or 1
    if not math.isfinite(value) or value < 0.01 or value > count:
        raise UsageError(
            f"range of CPUs is from 0.01 to {count}.00, as there are only {count} CPUs available"
        )


def _check_name(name: str, what: str) -> None:
    if re.fullmatch(_NAME_PATTERN, name) is None:
        raise UsageError(f"invalid {what} {name!r}: use letters, digits, '_', '.' or '-'")


# --------------------------------------------------------------------------- value types


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one container; ``None`` (and ``pids``/``cpu_shares`` <= 0) means unset.

    ``memory_swap`` is memory plus swap like docker's ``--memory-swap`` (``-1``: unlimited swap);
    ``None`` means no swap at all (see the module docstring for why this differs from docker).
    """

    memory: int | None = None
    memory_swap: int | None = None
    cpus: float | None = None
    pids: int | None = None
    cpu_shares: int | None = None

    def __post_init__(self) -> None:
        if self.memory is not None and self.memory < MIN_MEMORY:
            raise UsageError("minimum memory limit allowed is 6MB")
        if self.memory_swap is not None and self.memory_swap != -1:
            if self.memory is None:
                raise UsageError(
                    "you should always set the memory limit when using memoryswap limit, see usage"
                )
            if self.memory_swap < self.memory:
                raise UsageError(
                    "minimum memoryswap limit should be larger than memory limit, see usage"
                )
        if self.cpus is not None:
            _check_cpus(self.cpus)
        if self.cpu_shares is not None and self.cpu_shares < 0:
            raise UsageError(f"invalid --cpu-shares {self.cpu_shares}: must not be negative")

    @property
    def requested(self) -> bool:
        """Whether any limit is set (and so needs a cgroup controller)."""
        return bool(self.needs())

    def needs(self) -> list[tuple[str, str]]:
        """``(flag, controller)`` for every limit that is set, e.g. ``("--memory", "memory")``."""
        out: list[tuple[str, str]] = []
        if self.memory is not None:
            out.append(("--memory", "memory"))
        if self.memory_swap is not None and self.memory is not None:
            out.append(("--memory-swap", "memory"))  # alone it can only be -1: a no-op
        if self.cpus is not None:
            out.append(("--cpus", "cpu"))
        if self.cpu_shares is not None and self.cpu_shares > 0:
            out.append(("--cpu-shares", "cpu"))
        if self.pids is not None and self.pids > 0:
            out.append(("--pids-limit", "pids"))
        return out


_NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """A snapshot of a group's usage; ``None`` where no hierarchy in use reports it."""

    memory_current: int | None
    memory_max: int | None  # None: unlimited (or unknown)
    pids_current: int | None
    cpu_usage_usec: int | None
    oom_kills: int | None = None  # processes the kernel's OOM killer killed in the group


@dataclass(frozen=True, slots=True)
class Mount:
    """One cgroup filesystem mount from ``/proc/self/mountinfo``."""

    mount_point: str
    version: int  # 1 (fstype cgroup) or 2 (cgroup2)
    controllers: frozenset[str]  # v1: the controllers bound to it (from its super options)


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """A hierarchy minidock uses: its version, mount point and the controllers it provides.

    For v1 ``controllers`` are the ones bound to the mount (e.g. ``cpu`` and ``cpuacct``); for v2
    the ones minidock can use there (offered in ``cgroup.controllers`` and enabled).
    """

    version: int
    mount: Path
    controllers: frozenset[str]

    def __str__(self) -> str:
        return f"v{self.version} {self.mount}"


# --------------------------------------------------------------------------- protocols


class Cgroup(Protocol):
    """One container's group, in every hierarchy its manager uses."""

    @property
    def container_id(self) -> str: ...

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every directory of the group (one per hierarchy), tracking hierarchy first."""
        ...

    def path(self, role: str) -> Path | None:
        """The directory handling ``role`` (one of :data:`ROLES`), or ``None``."""
        ...

    def add(self, pid: int) -> None:
        """Move process ``pid`` (with its future children) into the group."""
        ...

    def pids(self) -> list[int]:
        """Every process in the group and its sub-groups, sorted."""
        ...

    def stats(self) -> CgroupStats: ...

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 2.0) -> None:
        """Send ``sig`` to every process; for SIGKILL return only once the group is empty."""
        ...

    def freeze(self, timeout: float = 1.0) -> None: ...

    def thaw(self) -> None: ...

    def remove(self, timeout: float = 1.0) -> None:
        """Remove every directory of the group, leaf first; a group already gone is fine."""
        ...


class CgroupManager(Protocol):
    """Makes and finds container groups under ``<root_name>`` in the hierarchies it uses."""

    @property
    def root_name(self) -> str: ...

    @property
    def hierarchies(self) -> Mapping[str, Hierarchy]:
        """The hierarchy handling each available role (see :data:`ROLES`)."""
        ...

    def create(self, container_id: str, limits: Limits | None = None) -> Cgroup:
        """A new group with ``limits`` applied; nothing is left behind if that fails."""
        ...

    def open(self, container_id: str) -> Cgroup:
        """The group of ``container_id`` as it may exist on disk (nothing is created)."""
        ...

    def orphans(self) -> list[str]:
        """Container ids that have a group directory in any hierarchy, sorted."""
        ...

    def remove_stale(self, container_id: str) -> None:
        """Kill what is left in the group of ``container_id`` and remove it (if there is one)."""
        ...

    def describe(self) -> str:
        """One line saying which hierarchy handles what, and what is unavailable and why."""
        ...


# --------------------------------------------------------------------------- low-level I/O


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # cgroupfs needs no O_TRUNC (it costs)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path, encoding="ascii") as file:
        return file.read()


def _read_or_fail(path: str) -> str:
    try:
        return _read(path)
    except OSError as exc:
        raise RuntimeFailure(f"cannot read {path}: {exc.strerror}") from exc


def _read_optional(path: str) -> str | None:
    """The file's text, or ``None`` when it (or its group) does not exist."""
    try:
        return _read(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RuntimeFailure(f"cannot read {path}: {exc.strerror}") from exc


def _read_int(path: str) -> int | None:
    """An integer control file; ``None`` for ``max`` or a missing file."""
    text = _read_optional(path)
    if text is None or text.strip() == "max":
        return None
    return int(text)


def _set(directory: str, name: str, value: str) -> None:
    try:
        _write(f"{directory}/{name}", value)
    except OSError as exc:
        raise RuntimeFailure(f"cannot set {name}={value} in {directory}: {exc.strerror}") from exc


def _keyed(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return None


# --------------------------------------------------------------------------- detection


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts listed in ``/proc/<pid>/mountinfo`` text, in order."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        point = _unescape(fields[4])
        if tail[0] == "cgroup2":
            mounts.append(Mount(point, 2, frozenset()))
        else:
            options = frozenset(tail[2].split(","))
            mounts.append(Mount(point, 1, options & _V1_CONTROLLERS))
    return mounts


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _enable_v2(
    mount: str, offered: list[str], enabled: list[str]
) -> tuple[set[str], dict[str, str]]:
    usable = {c for c in offered if c in enabled}
    todo = [c for c in offered if c not in enabled]
    if not todo:
        return usable, {}
    control = f"{mount}/cgroup.subtree_control"
    with contextlib.suppress(OSError):
        _write(control, " ".join(f"+{c}" for c in todo))
        return usable | set(todo), {}
    reasons: dict[str, str] = {}
    for name in todo:  # find out which one the kernel refuses, and why
        try:
            _write(control, f"+{name}")
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EBUSY:
                hint = (
                    " (processes live in that group, and v2 enables controllers only above leaves)"
                )
            reasons[name] = (
                f"cgroup2 at {mount} offers {name}, but writing +{name} to {control} failed:"
                f" {exc.strerror}{hint}"
            )
        else:
            usable.add(name)
    return usable, reasons


def select_hierarchies(
    mounts: Iterable[Mount],
) -> tuple[dict[str, Hierarchy], dict[str, str]]:
    """Pick the hierarchy for each role from ``mounts``; also why each missing role is missing.

    May write ``+controller`` into a cgroup2 mount's ``cgroup.subtree_control`` to find out
    whether a controller it offers can be used (this is what creating groups needs anyway).
    """
    mounts = list(mounts)
    roles: dict[str, Hierarchy] = {}
    reasons: dict[str, str] = {}
    v2_notes: dict[str, str] = {}
    v2: Hierarchy | None = None
    order = {point: rank for rank, point in enumerate(_DEFAULT_V2_MOUNTS)}
    candidates = sorted(
        (m for m in mounts if m.version == 2),
        key=lambda m: order.get(m.mount_point, len(order)),
    )
    for mount in candidates:
        point = mount.mount_point
        if not os.access(point, os.W_OK):
            reasons["procs"] = f"cgroup2 at {point} is not writable (needs root)"
            continue
        try:
            offered = _read(f"{point}/cgroup.controllers").split()
            enabled = _read(f"{point}/cgroup.subtree_control").split()
        except OSError as exc:
            reasons["procs"] = f"cannot read the controllers of cgroup2 at {point}: {exc.strerror}"
            continue
        usable, v2_notes = _enable_v2(point, [c for c in _CONTROLLERS if c in offered], enabled)
        for name in _CONTROLLERS:
            if name not in offered:
                v2_notes[name] = (
                    f"cgroup2 at {point} does not offer {name} (it is bound to a v1 hierarchy,"
                    " not enabled above this group, or not built into the kernel)"
                )
        v2 = Hierarchy(2, Path(point), frozenset(usable))
        break
    v1: dict[str, Mount] = {}
    for mount in mounts:
        if mount.version == 1:
            for name in mount.controllers:
                v1.setdefault(name, mount)

    def v1_hierarchy(name: str) -> Hierarchy | None:
        found = v1.get(name)
        if found is None:
            return None
        if not os.access(found.mount_point, os.W_OK):
            reasons[name] = f"the v1 {name} hierarchy at {found.mount_point} is not writable"
            return None
        return Hierarchy(1, Path(found.mount_point), found.controllers)

    for name in _CONTROLLERS:
        if v2 is not None and name in v2.controllers:
            roles[name] = v2
            continue
        chosen = v1_hierarchy(name)
        if chosen is not None:
            roles[name] = chosen
            reasons.pop(name, None)
            continue
        notes = [note for note in (v2_notes.get(name), reasons.get(name)) if note]
        if v2 is None and "procs" in reasons:
            notes.insert(0, reasons["procs"])
        if v2 is None and not candidates:
            notes.append("no cgroup2 filesystem is mounted")
        if name not in v1:
            notes.append(f"no v1 {name} hierarchy is mounted")
        reasons[name] = "; ".join(notes)
    if v2 is not None:
        roles["procs"] = v2
    else:
        for name in _V1_TRACKERS:
            chosen = roles.get(name) if name in _CONTROLLERS else v1_hierarchy(name)
            if chosen is not None and chosen.version == 1:
                roles["procs"] = chosen
                break
        else:
            reasons.setdefault("procs", "no writable cgroup hierarchy is mounted")
    if "procs" in roles:
        reasons.pop("procs", None)
    return roles, reasons


def delegated_mount(
    mounts: Iterable[Mount],
    own_cgroup: str,
    uid: int,
    *,
    owner: Callable[[str], int] | None = None,
) -> Mount | None:
    """Rootless: the cgroup v2 subtree delegated to ``uid`` that holds this process, as a
    ``Mount`` (its top group as mount point); None if there is none.

    ``own_cgroup`` is the text of ``/proc/self/cgroup`` (its ``0::PATH`` line names our group).
    The subtree's top is the highest group on the way up from ours that ``uid`` owns (``owner``
    gives a path's owner, default ``os.stat``) and may write, below the mount itself (root's)."""
    path = next((line[3:] for line in own_cgroup.splitlines() if line.startswith("0::")), None)
    if not path or not path.startswith("/"):
        return None
    owner = owner or (lambda p: os.stat(p).st_uid)

    def ours(directory: str) -> bool:
        try:
            return (
                owner(directory) == uid
                and os.access(directory, os.W_OK)
                and os.access(f"{directory}/cgroup.procs", os.W_OK)
            )
        except OSError:
            return False

    for mount in mounts:
        if mount.version != 2:
            continue
        top = mount.mount_point.rstrip("/")
        here = top + path.rstrip("/")
        if here == top or not os.path.isdir(here):
            continue
        best = None
        while here != top and ours(here):
            best = here
            here = os.path.dirname(here)
        if best is not None:
            return Mount(best, 2, frozenset())
    return None


_warned: set[str] = set()
"""The limits :func:`drop_unavailable` said it dropped (each said once per process)."""


def drop_unavailable(limits: Limits, manager: CgroupManager, *, uid: int | None = None) -> Limits:
    """``limits`` without those ``manager`` has no controller for (rootless: a container runs
    without a limit it cannot have rather than not at all). Each dropped limit is said once per
    process, on stderr, with what would give it (``uid``: the user's host uid, for the hint)."""
    roles = manager.hierarchies
    gone = {name for _, name in limits.needs() if name not in roles}
    if not gone:
        return limits
    flags = [flag for flag, name in limits.needs() if name in gone and flag not in _warned]
    if flags:
        import sys

        _warned.update(flags)
        who = f"user@{uid}.service" if uid is not None else "user@UID.service"
        names = sorted(gone)
        what = " and ".join(names) + (" controllers" if len(names) > 1 else " controller")
        print(
            f"minidock: rootless containers run without {', '.join(flags)} here: no cgroup this "
            f"user may write has the {what} (a cgroup v2 subtree delegated by systemd's {who}, "
            "e.g. under `systemd-run --user --scope`, gives them)",
            file=sys.stderr,
        )
    return Limits(
        memory=None if "memory" in gone else limits.memory,
        memory_swap=None if "memory" in gone else limits.memory_swap,
        cpus=None if "cpu" in gone else limits.cpus,
        pids=None if "pids" in gone else limits.pids,
        cpu_shares=None if "cpu" in gone else limits.cpu_shares,
    )


_CACHE: dict[tuple[str, str], CgroupManager] = {}


def detect(
    root_name: str = "minidock",
    *,
    mountinfo: str | os.PathLike[str] = _MOUNTINFO,
    refresh: bool = False,
) -> CgroupManager:
    """The cgroup manager for this machine, detected once per process (``refresh`` re-detects).

    ``mountinfo`` is the file listing the mounts (tests point it at a fake tree).
    """
    _check_name(root_name, "cgroup root name")
    key = (root_name, os.fspath(mountinfo))
    if not refresh and key in _CACHE:
        return _CACHE[key]
    try:
        text = _read(key[1])
    except OSError as exc:
        raise RuntimeFailure(f"cannot read {key[1]}: {exc.strerror}") from exc
    mounts = parse_mountinfo(text)
    from pytest_minidock.capabilities import host_root

    if not host_root() and os.fspath(mountinfo) == _MOUNTINFO:  # rootless: our own subtree
        with contextlib.suppress(OSError):  # (owners as this process sees them: its euid)
            found = delegated_mount(mounts, _read("/proc/self/cgroup"), os.geteuid())
            if found is not None:
                mounts = [found, *mounts]
    roles, reasons = select_hierarchies(mounts)
    manager: CgroupManager
    if "procs" in roles:
        manager = CgroupfsManager(roles, root_name, reasons)
    else:
        manager = NullManager(root_name, reasons)
    _CACHE[key] = manager
    return manager


def _unavailable(limits: Limits, roles: Mapping[str, Hierarchy], reasons: Mapping[str, str]) -> str:
    problems: list[str] = []
    for flag, name in limits.needs():
        if name in roles:
            continue
        message = (
            f"{flag} needs the {name} controller: cgroup v2 with {name} in"
            f" cgroup.subtree_control, or the v1 {name} hierarchy; none is usable here"
        )
        if reasons.get(name):
            message += f" ({reasons[name]})"
        problems.append(message)
    return "; ".join(problems)


# --------------------------------------------------------------------------- real hierarchies


class CgroupfsManager:
    """Groups as directories of mounted cgroup filesystems (v2, v1 or both), one per role."""

    __slots__ = ("_bases", "_hier", "_ready", "_reasons", "_role_index", "_roles", "_root_name")

    def __init__(
        self,
        roles: Mapping[str, Hierarchy],
        root_name: str = "minidock",
        reasons: Mapping[str, str] | None = None,
    ) -> None:
        if "procs" not in roles:
            raise RuntimeFailure("a cgroup manager needs a hierarchy that tracks processes")
        _check_name(root_name, "cgroup root name")
        self._root_name = root_name
        self._roles = dict(roles)
        self._reasons = dict(reasons or {})
        self._hier: list[Hierarchy] = []
        self._role_index: dict[str, int] = {}
        for role in ("procs", *_CONTROLLERS):
            hierarchy = roles.get(role)
            if hierarchy is None:
                continue
            if hierarchy not in self._hier:
                self._hier.append(hierarchy)
            self._role_index[role] = self._hier.index(hierarchy)
        self._bases = [f"{h.mount}/{root_name}" for h in self._hier]
        self._ready = False

    @property
    def root_name(self) -> str:
        return self._root_name

    @property
    def hierarchies(self) -> Mapping[str, Hierarchy]:
        return dict(self._roles)

    def describe(self) -> str:
        versions = {h.version for h in self._hier}
        kind = {frozenset({2}): "cgroup v2", frozenset({1}): "cgroup v1"}.get(
            frozenset(versions), "cgroup v1 + v2 (hybrid)"
        )
        labels = {"procs": "processes (tracking, kill, freeze)"}
        parts: list[str] = []
        for role in ROLES:
            label = labels.get(role, role)
            if role in self._roles:
                parts.append(f"{label} -> {self._roles[role]}")
            else:
                parts.append(f"{label} -> unavailable ({self._reasons.get(role) or 'unknown'})")
        return f"{kind}: {'; '.join(parts)}; groups are <mount>/{self._root_name}/<id>"

    def create(self, container_id: str, limits: Limits | None = None) -> CgroupfsGroup:
        _check_name(container_id, "container id")
        writes = self._writes(limits or _NO_LIMITS)
        if not self._ready:
            self._prepare()
        dirs = [f"{base}/{container_id}" for base in self._bases]
        # The tracking hierarchy always; a controller's hierarchy only when a limit needs it.
        active = tuple(sorted({0, *(write[0] for write in writes)}))
        made: list[str] = []
        try:
            for index in active:
                directory = dirs[index]
                try:
                    try:
                        _mkdir(directory)
                    except FileNotFoundError:  # someone removed <root_name>: make it again
                        self._prepare()
                        _mkdir(directory)
                except FileExistsError:
                    raise RuntimeFailure(
                        f"cannot create cgroup {directory}: it already exists (left by a crashed"
                        " run? remove it with open(container_id).remove())"
                    ) from None
                except OSError as exc:
                    raise RuntimeFailure(
                        f"cannot create cgroup {directory}: {exc.strerror}"
                    ) from exc
                made.append(directory)
            for index, name, value, optional in writes:
                try:
                    _write(f"{dirs[index]}/{name}", value)
                except OSError as exc:
                    if optional and exc.errno == errno.ENOENT:
                        continue  # no swap accounting in this kernel: docker skips it too
                    raise RuntimeFailure(
                        f"cannot set {name}={value} in {dirs[index]}: {exc.strerror}"
                    ) from exc
        except BaseException:
            for directory in reversed(made):
                with contextlib.suppress(OSError):
                    _rmdir(directory)
            raise
        return CgroupfsGroup(self, container_id, dirs, active)

    def open(self, container_id: str) -> CgroupfsGroup:
        _check_name(container_id, "container id")
        dirs = [f"{base}/{container_id}" for base in self._bases]
        return CgroupfsGroup(self, container_id, dirs, tuple(range(len(dirs))))

    def remove_stale(self, container_id: str) -> None:
        group = self.open(container_id)
        group.kill_all()
        group.remove()

    def orphans(self) -> list[str]:
        found: set[str] = set()
        for base in self._bases:
            try:
                with os.scandir(base) as entries:
                    found.update(e.name for e in entries if e.is_dir(follow_symlinks=False))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise RuntimeFailure(f"cannot list {base}: {exc.strerror}") from exc
        return sorted(found)

    # -- internals shared with CgroupfsGroup

    def _hierarchy(self, role: str) -> tuple[int, Hierarchy] | None:
        index = self._role_index.get(role)
        return None if index is None else (index, self._hier[index])

    def _prepare(self) -> None:
        for hierarchy, base in zip(self._hier, self._bases, strict=True):
            try:
                _mkdir(base)
            except FileExistsError:
                pass
            except OSError as exc:
                raise RuntimeFailure(f"cannot create cgroup {base}: {exc.strerror}") from exc
            if hierarchy.version == 2 and hierarchy.controllers:
                wanted = " ".join(f"+{c}" for c in sorted(hierarchy.controllers))
                _set(base, "cgroup.subtree_control", wanted)
        self._ready = True

    def _writes(self, limits: Limits) -> list[tuple[int, str, str, bool]]:
        if not limits.requested:
            return []
        problem = _unavailable(limits, self._roles, self._reasons)
        if problem:
            raise PrivilegeError(problem)
        out: list[tuple[int, str, str, bool]] = []
        if limits.memory is not None:
            index = self._role_index["memory"]
            total = limits.memory if limits.memory_swap is None else limits.memory_swap
            if self._hier[index].version == 2:
                out.append((index, "memory.max", str(limits.memory), False))
                if total != -1:
                    out.append((index, "memory.swap.max", str(total - limits.memory), True))
            else:
                out.append((index, "memory.limit_in_bytes", str(limits.memory), False))
                if total != -1:
                    out.append((index, "memory.memsw.limit_in_bytes", str(total), True))
        if limits.cpus is not None:
            index = self._role_index["cpu"]
            quota = max(1000, round(limits.cpus * CPU_PERIOD_US))
            if self._hier[index].version == 2:
                out.append((index, "cpu.max", f"{quota} {CPU_PERIOD_US}", False))
            else:
                out.append((index, "cpu.cfs_quota_us", str(quota), False))
        if limits.cpu_shares is not None and limits.cpu_shares > 0:
            index = self._role_index["cpu"]
            if self._hier[index].version == 2:
                out.append((index, "cpu.weight", str(cpu_weight(limits.cpu_shares)), False))
            else:
                shares = min(max(limits.cpu_shares, 2), 262_144)
                out.append((index, "cpu.shares", str(shares), False))
        if limits.pids is not None and limits.pids > 0:
            out.append((self._role_index["pids"], "pids.max", str(limits.pids), False))
        return out


class CgroupfsGroup:
    """A container's group in the hierarchies of a :class:`CgroupfsManager`.

    ``dirs`` has the group's directory for every hierarchy of the manager (index 0 tracks the
    processes); ``active`` says which of them the group occupies: a group made by ``create`` joins
    a controller's hierarchy only when one of its limits needs it, one from ``open`` may be in all.
    """

    __slots__ = ("_active", "_dirs", "_id", "_manager")

    def __init__(
        self,
        manager: CgroupfsManager,
        container_id: str,
        dirs: list[str],
        active: tuple[int, ...],
    ) -> None:
        self._manager = manager
        self._id = container_id
        self._dirs = dirs
        self._active = active

    def __repr__(self) -> str:
        return f"CgroupfsGroup({self._id!r}, {[self._dirs[i] for i in self._active]!r})"

    @property
    def container_id(self) -> str:
        return self._id

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(Path(self._dirs[i]) for i in self._active)

    def path(self, role: str) -> Path | None:
        found = self._role_dir(role)
        return None if found is None else Path(found[0])

    def add(self, pid: int) -> None:
        value = str(pid)
        for index in self._active:
            _set(self._dirs[index], "cgroup.procs", value)

    def pids(self) -> list[int]:
        found: set[int] = set()
        stack = [self._dirs[0]]  # the tracking hierarchy comes first
        while stack:
            directory = stack.pop()
            try:
                found.update(int(p) for p in _read(f"{directory}/cgroup.procs").split())
                with os.scandir(directory) as entries:
                    stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
            except FileNotFoundError:
                continue  # removed meanwhile
            except OSError as exc:
                raise RuntimeFailure(f"cannot list the processes of {directory}: {exc}") from exc
        return sorted(found)

    def stats(self) -> CgroupStats:
        memory_current = memory_max = pids_current = cpu_usage = oom_kills = None
        found = self._role_dir("memory")
        if found is not None:
            directory, version = found
            if version == 2:
                memory_current = _read_int(f"{directory}/memory.current")
                memory_max = _read_int(f"{directory}/memory.max")
                events = _read_optional(f"{directory}/memory.events")
            else:
                memory_current = _read_int(f"{directory}/memory.usage_in_bytes")
                memory_max = _read_int(f"{directory}/memory.limit_in_bytes")
                if memory_max is not None and memory_max >= _V1_UNLIMITED:
                    memory_max = None
                events = _read_optional(f"{directory}/memory.oom_control")
            oom_kills = None if events is None else _keyed(events, "oom_kill")
        found = self._role_dir("pids")
        if found is not None:
            pids_current = _read_int(f"{found[0]}/pids.current")
        else:
            pids_current = len(self.pids())
        procs = self._dirs[0]
        cpu = self._role_dir("cpu")
        if self._manager._hier[0].version == 2:
            text = _read_optional(f"{procs}/cpu.stat")
            cpu_usage = None if text is None else _keyed(text, "usage_usec")
        elif cpu is not None and "cpuacct" in self._manager._roles["cpu"].controllers:
            usage_ns = _read_int(f"{cpu[0]}/cpuacct.usage")
            cpu_usage = None if usage_ns is None else usage_ns // 1000
        return CgroupStats(memory_current, memory_max, pids_current, cpu_usage, oom_kills)

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 2.0) -> None:
        procs = self._dirs[0]
        version = self._manager._hier[0].version
        if sig == signal.SIGKILL and version == 2:
            try:
                _write(f"{procs}/cgroup.kill", "1")
            except FileNotFoundError:
                if not os.path.isdir(procs):
                    return  # already removed
                # a kernel before 5.14: no cgroup.kill, fall through to signalling each process
            except OSError as exc:
                raise RuntimeFailure(
                    f"cannot set cgroup.kill=1 in {procs}: {exc.strerror}"
                ) from exc
            else:
                self._wait_empty(timeout)
                return
        # v1 freezer: freeze first so nothing forks between reading the pids and signalling them
        frozen = sig == signal.SIGKILL and self._freezer() == 1
        if frozen:
            with contextlib.suppress(RuntimeFailure):  # best effort: the loop below still works
                self.freeze(timeout=min(timeout, 0.5))
        try:
            deadline = time.monotonic() + timeout
            delay = 0.0005
            while True:
                pids = self.pids()
                if not pids:
                    return
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                if frozen:
                    frozen = False
                    self._thaw_quietly()  # the frozen processes die of their SIGKILL once thawed
                if sig != signal.SIGKILL:
                    return
                if time.monotonic() >= deadline:
                    raise RuntimeFailure(
                        f"cannot kill every process in {procs}: {pids} still there after"
                        f" {timeout:g}s"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        finally:
            if frozen:
                self._thaw_quietly()

    def freeze(self, timeout: float = 1.0) -> None:
        version = self._freezer()
        procs = self._dirs[0]
        if version == 2:
            _set(procs, "cgroup.freeze", "1")
            self._wait(
                lambda: _keyed(_read_or_fail(f"{procs}/cgroup.events"), "frozen") == 1,
                timeout,
                f"{procs} did not freeze",
            )
        elif version == 1:
            _set(procs, "freezer.state", "FROZEN")
            self._wait(
                lambda: _read_or_fail(f"{procs}/freezer.state").strip() == "FROZEN",
                timeout,
                f"{procs} did not freeze",
            )
        else:
            raise PrivilegeError(
                "pausing needs a freezer: cgroup v2 or the v1 freezer hierarchy; none is used here"
            )

    def thaw(self) -> None:
        version = self._freezer()
        if version == 2:
            _set(self._dirs[0], "cgroup.freeze", "0")
        elif version == 1:
            _set(self._dirs[0], "freezer.state", "THAWED")

    def remove(self, timeout: float = 1.0) -> None:
        errors: list[str] = []
        deadline: float | None = None
        for index in reversed(self._active):
            directory = self._dirs[index]
            delay = 0.0005
            while True:
                try:
                    _rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                        errors.append(f"cannot remove cgroup {directory}: {exc.strerror}")
                        break
                if _remove_children(directory):
                    continue
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout
                if now >= deadline:
                    errors.append(
                        f"cannot remove cgroup {directory}: processes are still in it; kill them"
                        " first (kill_all)"
                    )
                    break
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        if errors:
            raise RuntimeFailure("; ".join(errors))

    def _role_dir(self, role: str) -> tuple[str, int] | None:
        found = self._manager._hierarchy(role)
        if found is None or found[0] not in self._active:
            return None
        return self._dirs[found[0]], found[1].version

    def _freezer(self) -> int | None:
        hierarchy = self._manager._hier[0]
        if hierarchy.version == 2:
            return 2
        return 1 if "freezer" in hierarchy.controllers else None

    def _thaw_quietly(self) -> None:
        with contextlib.suppress(RuntimeFailure):
            self.thaw()

    def _wait_empty(self, timeout: float) -> None:
        self._wait(lambda: not self.pids(), timeout, f"processes are still in {self._dirs[0]}")

    @staticmethod
    def _wait(done: Callable[[], bool], timeout: float, failure: str) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while not done():
            if time.monotonic() >= deadline:
                raise RuntimeFailure(f"{failure} after {timeout:g}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)


def _remove_children(directory: str) -> bool:
    """Remove the sub-groups a container made inside its group, leaf first; whether any went."""
    removed = False
    try:
        with os.scandir(directory) as entries:
            children = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return False
    for child in children:
        _remove_children(child)
        with contextlib.suppress(OSError):
            _rmdir(child)
            removed = True
    return removed


# --------------------------------------------------------------------------- no hierarchy


class NullManager:
    """No usable cgroup hierarchy: nothing is limited; asking for a limit is a PrivilegeError."""

    __slots__ = ("_reasons", "_root_name")

    def __init__(
        self, root_name: str = "minidock", reasons: Mapping[str, str] | None = None
    ) -> None:
        self._root_name = root_name
        self._reasons = dict(reasons or {})

    @property
    def root_name(self) -> str:
        return self._root_name

    @property
    def hierarchies(self) -> Mapping[str, Hierarchy]:
        return {}

    def describe(self) -> str:
        why = self._reasons.get("procs") or "no writable cgroup hierarchy is mounted"
        return f"no cgroups ({why}): limits cannot be applied and processes are not tracked"

    def create(self, container_id: str, limits: Limits | None = None) -> NullCgroup:
        _check_name(container_id, "container id")
        if limits is not None and limits.requested:
            raise PrivilegeError(_unavailable(limits, {}, self._reasons))
        return NullCgroup(container_id)

    def open(self, container_id: str) -> NullCgroup:
        _check_name(container_id, "container id")
        return NullCgroup(container_id)

    def orphans(self) -> list[str]:
        return []

    def remove_stale(self, container_id: str) -> None:
        _check_name(container_id, "container id")


class NullCgroup:
    """A group that applies nothing and only remembers the pids given to :meth:`add`."""

    __slots__ = ("_id", "_pids")

    def __init__(self, container_id: str) -> None:
        self._id = container_id
        self._pids: list[int] = []

    @property
    def container_id(self) -> str:
        return self._id

    @property
    def paths(self) -> tuple[Path, ...]:
        return ()

    def path(self, role: str) -> Path | None:
        return None

    def add(self, pid: int) -> None:
        if pid not in self._pids:
            self._pids.append(pid)

    def pids(self) -> list[int]:
        """The pids given to :meth:`add` (their descendants are not tracked)."""
        return sorted(self._pids)

    def stats(self) -> CgroupStats:
        return CgroupStats(None, None, None, None)

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 2.0) -> None:
        for pid in self._pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def freeze(self, timeout: float = 1.0) -> None:
        raise PrivilegeError(
            "pausing needs a freezer: cgroup v2 or the v1 freezer hierarchy; none is usable here"
        )

    def thaw(self) -> None:
        return None

    def remove(self, timeout: float = 1.0) -> None:
        self._pids.clear()
