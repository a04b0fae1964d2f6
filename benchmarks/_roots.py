"""Removing a benchmark's temporary store roots without leaking kernel objects.

A root whose containers joined a bridge owns a bridge and an nftables table in the kernel, which
deleting its directory would orphan: ``remove_work`` destroys the networks of every root under the
work directory first.
"""

from __future__ import annotations

import contextlib
import shutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def remove_work(work: Path) -> None:
    """Destroy the networks of every store root under ``work``, then delete ``work``."""
    from pytest_minidock.runtime.network import Networks

    for networks in sorted(work.rglob("networks")):
        if networks.is_dir():
            with contextlib.suppress(Exception):
                Networks(networks.parent).destroy()
    shutil.rmtree(work, ignore_errors=True)
