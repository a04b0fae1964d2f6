"""Linux capabilities: their names and numbers, and docker's spellings of them.

One table for everyone who names capabilities: ``spec`` checks ``--cap-add``/``--cap-drop`` with
it, the runtime's syscall seam turns names into the numbers ``capset`` takes.
"""

from __future__ import annotations

from typing import Final

from pytest_minidock.errors import UsageError

__all__ = ["NAMES", "NUMBERS", "normalize"]

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
