"""Where the store lives: the default root for root and for ordinary users, and its layout."""

from __future__ import annotations

import os
from pathlib import Path

from pytest_minidock._record import dataclass

__all__ = ["ENV_ROOT", "StorePaths", "default_root"]

ENV_ROOT = "MINIDOCK_ROOT"


def default_root(environ: dict[str, str] | None = None, euid: int | None = None) -> Path:
    """``$MINIDOCK_ROOT``, else ``/var/lib/minidock`` for root, else the user's XDG data dir."""
    env = os.environ if environ is None else environ
    if env.get(ENV_ROOT):
        return Path(env[ENV_ROOT])
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/minidock")
    xdg = env.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".local" / "share"
    return base / "minidock"


@dataclass(frozen=True, slots=True)
class StorePaths:
    """The on-disk layout under a store root (an OCI image layout plus minidock's own dirs)."""

    root: Path

    @property
    def oci_layout(self) -> Path:
        return self.root / "oci-layout"

    @property
    def index(self) -> Path:
        return self.root / "index.json"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def index_lock(self) -> Path:
        return self.locks / "index.lock"

    @property
    def gc_lock(self) -> Path:
        return self.locks / "gc.lock"

    def snapshot_lock(self, hex_digest: str) -> Path:
        return self.locks / f"snapshot-{hex_digest}.lock"
