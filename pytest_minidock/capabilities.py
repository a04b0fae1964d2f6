"""Linux capabilities: their names and numbers, docker's spellings of them, and whether this
process has root's on the host.

One table for everyone who names capabilities: ``spec`` checks ``--cap-add``/``--cap-drop`` with
it, the runtime's syscall seam turns names into the numbers ``capset`` takes.

"Root" means two things once user namespaces are in play: uid 0 of the *initial* user namespace
(the host's root, with every capability over the machine) and uid 0 of a user namespace an
ordinary user made (root over that namespace's ids, mounts and namespaces only: rootless mode).
``os.geteuid() == 0`` cannot tell them apart; :func:`host_root` can. It lives in this leaf module
so that every layer (the store's default root, the runtime) asks the same question.
"""

from __future__ import annotations

import os

from pytest_minidock.errors import UsageError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "NAMES",
    "NUMBERS",
    "forget_userns",
    "host_root",
    "host_uid",
    "in_initial_userns",
    "normalize",
]

NAMES: Final = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
"""Linux capability names, index = capability number (``CAP_CHOWN`` is 0)."""

NUMBERS: Final[dict[str, int]] = {name: number for number, name in enumerate(NAMES)}
"""Capability numbers by their ``CAP_`` name."""


def normalize(name: str) -> str:
    """``net_admin`` → ``CAP_NET_ADMIN`` (``ALL`` stays); ``UsageError`` if unknown (docker's)."""
    cap = name.upper()
    if cap == "ALL":
        return cap
    if not cap.startswith("CAP_"):
        cap = "CAP_" + cap
    if cap not in NUMBERS:
        raise UsageError(f"unknown capability: {name!r}")
    return cap


_FULL_MAP: Final = ["0", "0", "4294967295"]
"""The first (only) line of ``/proc/self/uid_map`` in the initial user namespace."""
_facts: dict[str, bool] = {}
"""``in_initial_userns``'s answer, read once per process (``forget_userns`` clears it)."""


def in_initial_userns(uid_map: str = "/proc/self/uid_map") -> bool:
    """Whether this process is in the initial user namespace (its ``uid_map`` maps every id to
    itself). Read once per process; without ``/proc`` the answer is yes."""
    found = _facts.get(uid_map)
    if found is None:
        try:
            with open(uid_map, "rb") as f:
                first = f.readline().split()
        except OSError:
            found = True
        else:
            found = [part.decode() for part in first] == _FULL_MAP
        _facts[uid_map] = found
    return found


def forget_userns() -> None:
    """Forget ``in_initial_userns``'s answer (this process has just entered a user namespace)."""
    _facts.clear()


def host_root() -> bool:
    """Whether this process is root on the host: euid 0 in the initial user namespace (not the
    root of a user namespace an ordinary user made, which may not mknod, chown to ids outside
    its map or touch root's cgroups)."""
    return os.geteuid() == 0 and in_initial_userns()


def host_uid(uid_map: str = "/proc/self/uid_map") -> int:
    """This process's effective uid as the host sees it: outside a user namespace ``geteuid()``;
    inside one (made from the initial namespace) the id its ``uid_map`` maps it to."""
    euid = os.geteuid()
    if in_initial_userns(uid_map):
        return euid
    try:
        with open(uid_map) as f:
            lines = f.read().splitlines()
    except OSError:
        return euid
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        inside, outside, count = (int(x) for x in parts)
        if inside <= euid < inside + count:
            return outside + euid - inside
    return euid
