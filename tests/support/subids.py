"""Subordinate id ranges of ``/etc/subuid`` and ``/etc/subgid`` for the throw-away users that the
rootless tests and benchmarks make."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

SUBIDS = 65536
"""How many subordinate ids a throw-away user gets: container ids 0-65535."""

FILES = ("/etc/subuid", "/etc/subgid")


def _rows() -> list[tuple[str, int, int]]:
    rows = []
    for file in FILES:
        with contextlib.suppress(OSError):
            for line in Path(file).read_text().splitlines():
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    rows.append((file + ":" + parts[0], int(parts[1]), int(parts[2])))
    return rows


def free_start(count: int = SUBIDS) -> int:
    """A start of ``count`` subordinate ids no user has yet (uid and gid alike), at or above
    1,000,000 and aligned to ``count``."""
    end = max([1_000_000, *(start + n for _, start, n in _rows())])
    return -(-end // count) * count


def own_start(name: str, count: int = SUBIDS) -> int | None:
    """The start of ``name``'s first range of at least ``count`` ids if its uid and gid ranges
    start at the same id (``useradd`` may have given it one), else None."""
    starts = []
    for file in FILES:
        found = None
        for key, start, n in _rows():
            if key == f"{file}:{name}" and n >= count:
                found = start
                break
        starts.append(found)
    return starts[0] if starts[0] is not None and starts[0] == starts[1] else None


def pids_of(uid: int, subuid: int, count: int = SUBIDS) -> list[int]:
    """The processes running as ``uid`` or, inside its user namespaces, as one of its
    ``count`` subordinate ids from ``subuid`` (none of those when ``subuid`` is negative)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                owner = os.stat(f"/proc/{entry}").st_uid
                if owner == uid or (subuid >= 0 and subuid <= owner < subuid + count):
                    found.append(int(entry))
    return found
