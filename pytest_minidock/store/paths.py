"""Where the store lives: the default root for root and for ordinary users, and its layout.

Every user has a store of their own: root's is ``/var/lib/minidock``, an ordinary user's is under
their XDG data directory. "Root" is root on the host (``capabilities.host_root``): the root of a
user namespace an ordinary user made (rootless mode's processes) keeps that user's store. Short-
lived, per-boot state of an ordinary user (sockets, pid files of per-user helpers) goes under
``$XDG_RUNTIME_DIR`` (:func:`default_run_dir`), never in a directory another user could share.
"""

from __future__ import annotations

import os
from pathlib import Path

from pytest_minidock._record import dataclass
from pytest_minidock.capabilities import host_root, host_uid

__all__ = ["ENV_ROOT", "StorePaths", "default_root", "default_run_dir"]

ENV_ROOT = "MINIDOCK_ROOT"


def default_root(environ: dict[str, str] | None = None, euid: int | None = None) -> Path:
    """``$MINIDOCK_ROOT``, else ``/var/lib/minidock`` for root, else the user's XDG data dir
    (``$XDG_DATA_HOME/minidock``, ``~/.local/share/minidock``). ``euid``: 0 for root, anything
    else for a user (default: whether this process is root on the host)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_ROOT):
        return Path(env[ENV_ROOT])
    if (euid is None and host_root()) or euid == 0:
        return Path("/var/lib/minidock")
    xdg = env.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):  # (the spec: a relative value is invalid, ignore it)
        return Path(xdg) / "minidock"
    return Path(env.get("HOME") or Path.home()) / ".local" / "share" / "minidock"


def default_run_dir(environ: dict[str, str] | None = None, uid: int | None = None) -> Path:
    """Where this user's runtime state lives (not made here): ``/run/minidock`` for root,
    ``$XDG_RUNTIME_DIR/minidock`` for an ordinary user (systemd makes that directory, private,
    at login), else ``/tmp/minidock-<uid>``, which its maker must create with mode 0700 and
    check it owns (another user could have made it first). ``uid``: the host uid (default:
    this process's, as the host sees it; 0 is root)."""
    env = os.environ if environ is None else environ
    if uid is None:
        uid = 0 if host_root() else host_uid()
    if uid == 0:
        return Path("/run/minidock")
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "minidock"
    return Path(f"/tmp/minidock-{uid}")


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
