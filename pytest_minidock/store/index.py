"""The store's ``index.json``: which manifests are images, and which names point at them.

The file is an OCI image index. Each entry is a manifest descriptor; a named entry carries the full
reference in ``io.containerd.image.name`` and its tag in ``org.opencontainers.image.ref.name``
(as containerd and ``docker save`` write them). An image whose last name moved elsewhere stays as an
unnamed ("dangling", ``<none>``) entry, as in docker, until it is removed or pruned.

All edits are read-modify-write under an exclusive lock, and the new file replaces the old by an
atomic rename, so concurrent taggers never lose each other's tags and readers never see a torn file.
"""

from __future__ import annotations

import contextlib
import os

from pytest_minidock.errors import ImageError, InvalidReference, StoreError
from pytest_minidock.image import mediatypes as mt
from pytest_minidock.image.model import CONTAINERD_NAME, REF_NAME, Descriptor, Index
from pytest_minidock.reference import Reference
from pytest_minidock.store.blobs import fsync_dir
from pytest_minidock.store.locking import exclusive

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable

    from pytest_minidock.digest import Digest
    from pytest_minidock.store.paths import StorePaths

__all__ = ["ImageIndex", "entry_name", "named_entry"]


def entry_name(desc: Descriptor) -> Reference | None:
    """The reference an index entry is named by, or None for a dangling image."""
    name = desc.annotations.get(CONTAINERD_NAME)
    if not name:
        return None
    try:
        return Reference.parse(name)
    except InvalidReference:
        return None


def named_entry(desc: Descriptor, ref: Reference | None) -> Descriptor:
    """``desc`` with its name annotations set to ``ref`` (or removed when ``ref`` is None)."""
    annotations = {
        k: v for k, v in desc.annotations.items() if k not in (CONTAINERD_NAME, REF_NAME)
    }
    if ref is not None:
        annotations[CONTAINERD_NAME] = str(ref)
        if ref.tag:
            annotations[REF_NAME] = ref.tag
    return Descriptor(
        media_type=desc.media_type,
        digest=desc.digest,
        size=desc.size,
        annotations=annotations,
        platform=desc.platform,
    )


class ImageIndex:
    """Reads and edits ``ROOT/index.json`` under ``ROOT/locks/index.lock``."""

    def __init__(self, paths: StorePaths) -> None:
        self.paths = paths

    def read(self) -> list[Descriptor]:
        """The current entries (an empty list for a fresh store)."""
        try:
            data = self.paths.index.read_bytes()
        except FileNotFoundError:
            return []
        try:
            return list(Index.from_json(data, what=str(self.paths.index)).manifests)
        except ImageError as exc:
            raise StoreError(f"the store index is corrupt: {exc}") from exc

    def update(self, edit: Callable[[list[Descriptor]], list[Descriptor]]) -> list[Descriptor]:
        """Apply ``edit`` to the entries atomically; return the new entries."""
        with exclusive(self.paths.index_lock, what="image index"):
            entries = edit(self.read())
            self._write(entries)
            return entries

    def _write(self, entries: list[Descriptor]) -> None:
        data = Index(manifests=tuple(entries), media_type=mt.OCI_INDEX).to_json()
        tmp = self.paths.root / f".index.json.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.paths.index)
            fsync_dir(self.paths.root)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise StoreError(f"cannot write {self.paths.index}: {exc.strerror}") from exc


def set_name(entries: list[Descriptor], ref: Reference, manifest: Descriptor) -> list[Descriptor]:
    """Point ``ref`` at ``manifest``; an image left without names stays as a dangling entry."""
    out = untag(entries, ref)
    out = [e for e in out if not (e.digest == manifest.digest and entry_name(e) is None)]
    out.append(named_entry(manifest, ref))
    return out


def add_unnamed(entries: list[Descriptor], manifest: Descriptor) -> list[Descriptor]:
    """Record ``manifest`` as an image with no name, unless it is already in the index."""
    if any(e.digest == manifest.digest for e in entries):
        return entries
    return [*entries, named_entry(manifest, None)]


def untag(entries: list[Descriptor], ref: Reference) -> list[Descriptor]:
    """Remove the name ``ref``; its image becomes dangling if that was its last name."""
    out: list[Descriptor] = []
    orphaned: list[Descriptor] = []
    for e in entries:
        if entry_name(e) == ref:
            orphaned.append(e)
        else:
            out.append(e)
    for e in orphaned:
        if not any(o.digest == e.digest for o in out):
            out.append(named_entry(e, None))
    return out


def drop_image(entries: list[Descriptor], digest: Digest) -> list[Descriptor]:
    """Remove every entry (named or not) of the manifest ``digest``."""
    return [e for e in entries if e.digest != digest]
