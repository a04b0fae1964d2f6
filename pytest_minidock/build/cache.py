"""The build cache under the store root: step results by key, shared by every process.

Layout (``ROOT/buildcache/``):

* ``entries/<key hex>.json``: what a step produced -- its layer (blob digest, diff_id, size,
  media type) or none, and its history entry. Written to a temp file and renamed, and only
  after the layer is in the store, so a builder killed at any moment leaves either a complete
  entry or none: never one that points at nothing. Not fsynced (one fsync per step was a good
  part of a cold build): after a power loss an entry may be missing or torn, and a torn entry
  reads as a miss, like an entry whose layer is gone -- the step runs again.
* ``locks/<key hex>.lock``: single flight. A builder that misses takes the key's ``filelock``,
  looks again (another process may have just finished the step), and only then runs it; a
  second process building the same step at the same time waits on the lock and reuses the
  result. Locks are ``flock``s, released by the kernel when their holder dies.
* ``mounts/<id hash>/``: ``RUN --mount=type=cache`` directories, kept between builds.
* ``statcache/<context hash>.json``: file digests of build contexts (``context.StatCache``).

An entry whose layer blob is gone (``rmi`` collected it) is a miss, not an error.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from pytest_minidock._record import dataclass
from pytest_minidock.capabilities import host_root
from pytest_minidock.digest import Digest, sha256
from pytest_minidock.errors import BuildError, ImageError, InvalidDigest
from pytest_minidock.image.model import Descriptor, History

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from pytest_minidock.build.context import StatCache

__all__ = ["CACHE_DIR", "BuildCache", "CacheEntry", "CachePruneReport", "LayerRef"]

CACHE_DIR = "buildcache"
_VERSION = 1


@dataclass(frozen=True)
class LayerRef:
    """A layer in the store: its descriptor and its diff_id."""

    descriptor: Descriptor
    diff_id: Digest


@dataclass(frozen=True)
class CacheEntry:
    """The result of one step: its layer (``None`` for a config-only step) and history."""

    key: Digest
    layer: LayerRef | None
    history: History
    description: str = ""

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {
            "version": _VERSION,
            "key": str(self.key),
            "history": self.history.to_dict(),
            "description": self.description,
        }
        if self.layer is not None:
            obj["layer"] = {
                "descriptor": self.layer.descriptor.to_dict(),
                "diff_id": str(self.layer.diff_id),
            }
        return json.dumps(obj, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CacheEntry | None:
        """The entry, or ``None`` for anything unreadable (treated as a miss)."""
        try:
            obj = json.loads(data)
            if obj.get("version") != _VERSION:
                return None
            layer = None
            raw = obj.get("layer")
            if raw is not None:
                layer = LayerRef(
                    Descriptor.from_dict(raw["descriptor"], "build cache entry"),
                    Digest.parse(raw["diff_id"]),
                )
            return cls(
                Digest.parse(obj["key"]),
                layer,
                History.from_dict(obj["history"], "build cache entry"),
                str(obj.get("description", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError, InvalidDigest, ImageError):
            return None


@dataclass(frozen=True)
class CachePruneReport:
    """What ``builder prune`` removed."""

    entries: int = 0
    mounts: int = 0
    reclaimed: int = 0


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class BuildCache:
    """Step results, locks and cache mounts under ``root`` (the store root)."""

    def __init__(self, root: Path | str) -> None:
        self.dir = Path(root) / CACHE_DIR
        self.entries_dir = self.dir / "entries"
        self.locks_dir = self.dir / "locks"
        self.mounts_dir = self.dir / "mounts"
        self.stat_dir = self.dir / "statcache"
        try:
            for d in (self.entries_dir, self.locks_dir, self.mounts_dir, self.stat_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BuildError(f"cannot use {self.dir} for the build cache: {exc.strerror}") from exc

    def entry_path(self, key: Digest) -> Path:
        """Where the entry of ``key`` is (whether or not it exists)."""
        return self.entries_dir / f"{key.hex}.json"

    # -- entries ------------------------------------------------------------------------------
    def get(self, key: Digest) -> CacheEntry | None:
        """The entry for ``key``, or ``None``."""
        try:
            data = self.entry_path(key).read_bytes()
        except OSError:
            return None
        entry = CacheEntry.from_json(data)
        return entry if entry is not None and entry.key == key else None

    def put(self, entry: CacheEntry) -> None:
        """Record ``entry`` atomically for other processes (temp file, rename; see above)."""
        final = self.entry_path(entry.key)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{id(entry):x}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(entry.to_json())
            # Not renamed over the old entry (a --no-cache build rewrites its steps' entries):
            # ext4 writes a file renamed over another one out at once (auto_da_alloc), ~0.4 ms
            # an entry here. The caller holds the key's lock; a reader without it that finds
            # no entry for a moment takes the lock and looks again.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(final)
            os.rename(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise BuildError(f"cannot write build cache entry {final}: {exc.strerror}") from exc

    def drop(self, key: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.entry_path(key).unlink()

    def __iter__(self) -> Iterator[CacheEntry]:
        for path in sorted(self.entries_dir.glob("*.json")):
            with contextlib.suppress(OSError):
                entry = CacheEntry.from_json(path.read_bytes())
                if entry is not None:
                    yield entry

    @contextlib.contextmanager
    def lock(self, key: Digest, *, timeout: float = -1) -> Iterator[None]:
        """Hold the single-flight lock of ``key`` (waits for ever by default)."""
        from pytest_minidock.store.locking import exclusive

        with exclusive(
            self.locks_dir / f"{key.hex}.lock",
            timeout=timeout,
            what=f"build step {key.short}",
        ):
            yield

    # -- cache mounts -------------------------------------------------------------------------
    def mount_dir(self, cache_id: str, *, mode: int, uid: int, gid: int) -> tuple[Path, bool]:
        """The directory of cache mount ``cache_id`` and whether it was just created."""
        import shutil

        name = sha256(cache_id.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        path = self.mounts_dir / name / "data"
        if path.is_dir():
            return path, False
        tmp = self.mounts_dir / f".{name}.{os.getpid()}.tmp"
        try:
            (tmp / "data").mkdir(parents=True, exist_ok=True)
            (tmp / "id").write_text(cache_id)
            os.chmod(tmp / "data", mode)
            if host_root():
                os.chown(tmp / "data", uid, gid)
            try:
                os.rename(tmp, self.mounts_dir / name)
            except OSError:  # another process made it first
                shutil.rmtree(tmp, ignore_errors=True)
                return path, False
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BuildError(f"cannot create cache mount {cache_id!r}: {exc.strerror}") from exc
        return path, True

    def mount_lock_path(self, cache_id: str) -> Path:
        name = sha256(cache_id.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.locks_dir / f"mount-{name}.lock"

    # -- stat caches --------------------------------------------------------------------------
    def stat_cache(self, context: Path) -> StatCache:
        """The saved file digests of the context directory ``context``."""
        from pytest_minidock.build.context import StatCache

        name = sha256(os.fsencode(context)).hexdigest()[:32]
        return StatCache.load(self.stat_dir / f"{name}.json")

    # -- prune --------------------------------------------------------------------------------
    def prune(
        self, *, everything: bool = False, keep: set[Digest] | None = None
    ) -> CachePruneReport:
        """Remove cache entries (all, or those whose layer is not in ``keep``); with
        ``everything`` also cache mounts and stat caches. Stale temp files always go."""
        entries = mounts = reclaimed = 0
        for path in sorted(self.entries_dir.iterdir()):
            if path.name.startswith("."):
                pid = path.name.split(".")[3] if path.name.count(".") >= 4 else ""
                if pid.isdigit() and not _alive(int(pid)):
                    reclaimed += path.stat().st_size
                    path.unlink()
                continue
            entry = None
            with contextlib.suppress(OSError):
                entry = CacheEntry.from_json(path.read_bytes())
            if (
                not everything
                and keep is not None
                and entry is not None
                and (entry.layer is None or entry.layer.diff_id in keep)
            ):
                continue
            with contextlib.suppress(FileNotFoundError):
                reclaimed += path.stat().st_size
                path.unlink()
                entries += 1
        if everything:
            import shutil

            for mount in sorted(self.mounts_dir.iterdir()):
                reclaimed += _tree_size(mount)
                shutil.rmtree(mount, ignore_errors=True)
                mounts += 1
            for stat_file in sorted(self.stat_dir.iterdir()):
                with contextlib.suppress(FileNotFoundError):
                    reclaimed += stat_file.stat().st_size
                    stat_file.unlink()
        return CachePruneReport(entries, mounts, reclaimed)


def _alive(pid: int) -> bool:
    from pytest_minidock.store.blobs import pid_alive

    return pid_alive(pid)
