"""``Store``: the local image store every other part shares (images, names, layers, snapshots).

It sits on an OCI image layout under one root directory (``blobs/``, ``index.json``,
``oci-layout``) plus minidock's own ``snapshots/`` (each layer unpacked once per diff_id, ready to
be an overlay lowerdir), ``tmp/`` and ``locks/``. Any number of processes may use one root at once:
writers and readers of blobs and snapshots hold the shared side of the GC lock, the index is edited
under its own lock, and garbage collection takes the GC lock exclusively.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from pathlib import Path

from pytest_minidock._record import dataclass, field
from pytest_minidock.digest import Digest
from pytest_minidock.errors import (
    ImageError,
    ImageInUse,
    ImageNotFound,
    InvalidReference,
    MinidockError,
    StoreError,
)
from pytest_minidock.image import mediatypes as mt
from pytest_minidock.image.model import (
    ContainerConfig,
    Descriptor,
    History,
    ImageConfig,
    Index,
    Manifest,
    parse_json_object,
)
from pytest_minidock.reference import Reference, is_image_id_prefix
from pytest_minidock.store import index as idx
from pytest_minidock.store.blobs import BlobStore, pid_alive, remove_tree
from pytest_minidock.store.locking import exclusive, gc_exclusive, gc_shared
from pytest_minidock.store.paths import StorePaths, default_root

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import IO, Any, BinaryIO, TypeVar, cast

    from pytest_minidock.image.protocols import Image
    from pytest_minidock.store.layers import LayerBlob
    from pytest_minidock.store.snapshots import ExtractPolicy

    T = TypeVar("T")
    AsOwner = Callable[[Callable[[], None], str], None]
    """Runs work (and waits for it) where the snapshots' owners are mapped; see ``Store``."""
else:

    def cast(_type: object, value: object) -> object:  # typing's, without its import
        return value


__all__ = ["DiskUsage", "ImageRecord", "PruneReport", "Store", "StoreImage", "StoreLayer"]

_CHUNK = 1 << 20
_SMALL_LAYER = 1 << 20
"""A layer tar up to this size is ingested from memory, without a compressing thread."""
OWNED_SUFFIX = ".subids"
"""Ends the names of snapshots unpacked by a store's ``as_owner`` (rootless with the full map:
owners kept as subordinate ids), beside those of the same layers with the owners flattened."""
_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_boot: list[str | None] = []


def _boot_id() -> str | None:
    """This boot's id (``_BOOT_ID_FILE``), read once per process; None where it cannot be read
    (no ``/proc``): boots cannot be told apart there, and snapshots are trusted as they are."""
    if not _boot:
        try:
            with open(_BOOT_ID_FILE, "rb") as f:
                text = f.read(100).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        _boot.append(text if text and text.isprintable() and " " not in text else None)
    return _boot[0]


class _SnapshotDamaged(StoreError):
    """A snapshot differs from its layer (a file lost its content in a crash): unpack again."""


def _read_up_to(stream: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes of ``stream`` (fewer only at its end)."""
    parts: list[bytes] = []
    while n > 0:
        data = stream.read(n)
        if not data:
            break
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def now_rfc3339() -> str:
    """The creation time docker writes: ``SOURCE_DATE_EPOCH`` if set, else now (UTC)."""
    import time  # not datetime: its import is ~4 ms of every build

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))
    seconds, micro = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{micro:06d}Z"


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image in the store: its manifest, its ID (config digest) and the names pointing at it."""

    manifest: Descriptor
    id: Digest
    names: tuple[Reference, ...]
    created: str
    size: int
    diff_ids: tuple[Digest, ...]

    @property
    def short_id(self) -> str:
        return self.id.short


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a prune removed."""

    deleted_images: tuple[Digest, ...] = ()
    untagged: tuple[Reference, ...] = ()
    reclaimed: int = 0


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """``system df`` numbers for images."""

    images: int
    active: int
    size: int
    reclaimable: int
    blobs: int
    blob_bytes: int
    snapshots: int
    snapshot_bytes: int


@dataclass(frozen=True, slots=True)
class StoreLayer:
    """A layer of an image in the store (``Layer`` protocol)."""

    descriptor: Descriptor
    diff_id: Digest
    blobs: BlobStore = field(repr=False)

    def open(self) -> IO[bytes]:
        return self.blobs.open(self.descriptor.digest)


class StoreImage:
    """An image read from the store (``Image`` protocol)."""

    def __init__(self, store: Store, manifest: Descriptor) -> None:
        self._store = store
        self.descriptor = manifest
        self._raw_manifest: bytes | None = None
        self._raw_config: bytes | None = None

    def raw_manifest(self) -> bytes:
        if self._raw_manifest is None:
            self._raw_manifest = self._store.read_json_blob(self.descriptor.digest)
        return self._raw_manifest

    def manifest(self) -> Manifest:
        return self._store.parsed(self.descriptor.digest, Manifest.from_json, "manifest")

    def raw_config(self) -> bytes:
        if self._raw_config is None:
            self._raw_config = self._store.read_json_blob(self.manifest().config.digest)
        return self._raw_config

    def config(self) -> ImageConfig:
        return self._store.parsed(self.manifest().config.digest, ImageConfig.from_json, "config")

    def layers(self) -> list[StoreLayer]:
        manifest = self.manifest()
        diff_ids = self.config().diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise ImageError(
                f"image {self.descriptor.digest}: {len(manifest.layers)} layers but "
                f"{len(diff_ids)} diff_ids"
            )
        return [
            StoreLayer(d, i, self._store.blobs)
            for d, i in zip(manifest.layers, diff_ids, strict=False)
        ]

    @property
    def id(self) -> Digest:
        return self.manifest().config.digest


class Store:
    """The local content-addressed image store rooted at ``root``.

    ``as_owner`` (rootless with a full subordinate id map; ``api`` supplies it, the store knows
    nothing of user namespaces): a callable running work in a forked child that is root of the
    user namespace the containers use, raising the work's store errors as they are. Snapshots
    are then unpacked there with their owners (files of container uid N belong to subordinate
    uid N), kept apart from the same layers unpacked without it (names ending in
    ``OWNED_SUFFIX``), and removed there when the user may not remove them.

    Snapshots are not synced to disk when they are made (a ``syncfs`` per layer can take
    seconds). Their ``size`` marker names the boot that made them instead: one of an earlier
    boot (or of an older version, without a boot) is checked once against its layer blob
    (synced before publication) when it is first used in this boot, and unpacked again if a
    file came back from a crash empty or missing (``checked_snapshots``, ``repaired_snapshots``
    count them)."""

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        policy: ExtractPolicy | None = None,
        compression: str = "gzip",
        as_owner: AsOwner | None = None,
    ):
        if compression not in ("gzip", "none"):
            raise StoreError(f"unknown layer compression {compression!r}: use gzip or none")
        self.compression = compression
        self.paths = StorePaths(Path(root) if root is not None else default_root())
        self.root = self.paths.root
        self.blobs = BlobStore(self.paths.blobs, self.paths.tmp)
        self.index = idx.ImageIndex(self.paths)
        self._policy = policy
        self._as_owner = as_owner
        self._snap_suffix = OWNED_SUFFIX if as_owner is not None else ""
        self._images_cache: tuple[tuple[int, ...], tuple[ImageRecord, ...]] | None = None
        self._index_cache: (
            tuple[tuple[int, ...], list[Descriptor], list[Reference | None]] | None
        ) = None
        self._json_blobs: dict[Digest, bytes] = {}
        self._parsed: dict[tuple[Digest, str], Any] = {}
        self._fresh: set[str] = set()
        """Layers (diff_id hex) whose snapshot this object saw made or checked in this boot."""
        self.checked_snapshots = 0
        """Snapshots of an earlier boot this object checked against their layers."""
        self.repaired_snapshots = 0
        """Of those, the ones that differed (or could not be checked) and were unpacked again."""
        self._ensure_layout()

    @property
    def policy(self) -> ExtractPolicy:
        """How snapshots are extracted (devices, ownership, whiteout form) for this user."""
        if self._policy is None:
            from pytest_minidock.store.snapshots import ExtractPolicy

            if self._as_owner is not None:  # (what the child of ``as_owner`` may do)
                self._policy = ExtractPolicy(devices=False, chown=True, whiteout="xattr")
            else:
                self._policy = ExtractPolicy.for_current_user()
        return self._policy

    def _snap_dir(self, diff_id: Digest) -> Path:
        """Where this store's snapshot of the layer ``diff_id`` lives (complete or not)."""
        return self.paths.snapshots / (diff_id.hex + self._snap_suffix)

    def _snap_lock(self, diff_id: Digest) -> Path:
        return self.paths.snapshot_lock(diff_id.hex + self._snap_suffix)

    def _unpack(
        self,
        tmp_snap: Path,
        tar_of: Callable[[], contextlib.AbstractContextManager[IO[bytes]]],
        source: str,
    ) -> int:
        """Unpack the layer tar ``tar_of()`` opens into ``tmp_snap/fs`` (made empty) and write
        ``tmp_snap/size``: here, or through ``as_owner`` in the containers' user namespace.
        The bytes of file content written."""
        from pytest_minidock.store.snapshots import extract_layer

        (tmp_snap / "fs").mkdir(parents=True)
        policy = self.policy

        def work() -> None:
            with tar_of() as tar:
                written = extract_layer(
                    cast("BinaryIO", tar), tmp_snap / "fs", policy=policy, source=source
                )
            (tmp_snap / "size").write_text(_marker(written))
            done.append(written)

        done: list[int] = []
        if self._as_owner is None:
            work()
            return done[0]
        self._as_owner(work, f"cannot unpack layer {source}")
        return _marker_size((tmp_snap / "size").read_text())

    def _remove(self, paths: Sequence[Path]) -> None:
        """Remove these files or trees (``StoreError`` if one stays); with ``as_owner``, those
        the user may not remove (of subordinate owners) in one child in the user namespace."""
        left: list[Path] = []
        for path in paths:
            try:
                remove_tree(path)
            except StoreError:
                if self._as_owner is None:
                    raise
                left.append(path)
        if left:
            assert self._as_owner is not None

            def work() -> None:
                for path in left:
                    remove_tree(path)

            self._as_owner(work, f"cannot remove {left[0]}")

    # -- layout --------------------------------------------------------------------------------
    def _ensure_layout(self) -> None:
        try:
            for d in (
                self.paths.blobs / "sha256",
                self.paths.snapshots,
                self.paths.tmp,
                self.paths.locks,
            ):
                d.mkdir(parents=True, exist_ok=True)
            if not self.paths.oci_layout.exists():
                tmp = self.paths.root / f".oci-layout.{os.getpid()}.tmp"
                tmp.write_text('{"imageLayoutVersion":"1.0.0"}')
                os.replace(tmp, self.paths.oci_layout)
        except OSError as exc:
            raise StoreError(
                f"cannot use {self.root} as the minidock store: {exc.strerror}; pass --root or set "
                "MINIDOCK_ROOT to a writable directory"
            ) from exc

    # -- reading -------------------------------------------------------------------------------
    def images(self) -> list[ImageRecord]:
        """Every image, newest first, each with all the names that point at it.

        Reading holds the shared side of the GC lock, so a concurrent ``rmi`` or prune in another
        process cannot delete blobs between reading the index and reading the images' JSON.
        An entry whose blobs are missing is left out here and reported by ``check``.
        """
        try:
            st = self.paths.index.stat()
            key: tuple[int, ...] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        if key is not None and self._images_cache is not None and self._images_cache[0] == key:
            return list(self._images_cache[1])
        with gc_shared(self.paths.gc_lock):
            entries = self.index.read()
            by_digest: dict[Digest, list[Descriptor]] = {}
            for e in entries:
                by_digest.setdefault(e.digest, []).append(e)
            records = []
            for descs in by_digest.values():
                with contextlib.suppress(MinidockError):
                    records.append(self._record(descs))
        records.sort(key=lambda r: r.created, reverse=True)
        if key is not None:  # index.json is replaced by rename on every edit: a new inode
            self._images_cache = (key, tuple(records))
        return records

    def _index_entries(self) -> tuple[list[Descriptor], list[Reference | None]]:
        """The index's entries and their names, parsed once per state of ``index.json``."""
        try:
            st = self.paths.index.stat()
            key: tuple[int, ...] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        cached = self._index_cache
        if key is not None and cached is not None and cached[0] == key:
            return cached[1], cached[2]
        entries = self.index.read()
        names = [idx.entry_name(e) for e in entries]
        if key is not None:
            self._index_cache = (key, entries, names)
        return entries, names

    def _images_cached(self) -> bool:
        """Whether ``images()`` would answer from memory (``index.json`` is unchanged)."""
        if self._images_cache is None:
            return False
        try:
            st = self.paths.index.stat()
        except FileNotFoundError:
            return False
        return self._images_cache[0] == (st.st_ino, st.st_size, st.st_mtime_ns)

    def find(
        self, *, name: Reference | None = None, manifest: Digest | None = None
    ) -> ImageRecord | None:
        """The image named ``name`` (with its tag) and/or with the manifest digest ``manifest``,
        or None: read from the index and that image's own blobs only, where ``images()`` reads
        every image's (what a short-lived process looking up one image wants)."""
        if self._images_cached():
            for r in self.images():
                if (manifest is None or r.manifest.digest == manifest) and (
                    name is None or name in r.names
                ):
                    return r
            return None
        with gc_shared(self.paths.gc_lock):
            entries, names = self._index_entries()
            hit = next(
                (
                    e
                    for e, n in zip(entries, names, strict=True)
                    if (manifest is None or e.digest == manifest) and (name is None or n == name)
                ),
                None,
            )
            if hit is None:
                return None
            with contextlib.suppress(MinidockError):
                return self._record([e for e in entries if e.digest == hit.digest])
        return None

    def read_json_blob(self, digest: Digest) -> bytes:
        """A small JSON blob (manifest, config), cached: blobs never change once written."""
        data = self._json_blobs.get(digest)
        if data is None:
            data = self.blobs.read(digest)
            self._remember_json(digest, data)
        return data

    def _remember_json(self, digest: Digest, data: bytes) -> None:
        """Cache the bytes of the JSON blob ``digest`` (read, or just written and verified)."""
        if len(self._json_blobs) > 512:
            self._json_blobs.clear()
        self._json_blobs[digest] = data

    def parsed(self, digest: Digest, parse: Callable[[bytes, str], T], what: str) -> T:
        """A manifest or config parsed once per digest (blobs never change once written)."""
        key = (digest, what)
        value = self._parsed.get(key)
        if value is None:
            value = parse(self.read_json_blob(digest), f"{what} {digest}")
            if len(self._parsed) > 512:
                self._parsed.clear()
            self._parsed[key] = value
        return value

    def _record(self, descs: list[Descriptor]) -> ImageRecord:
        first = descs[0]
        names = tuple(
            sorted({n for n in (idx.entry_name(d) for d in descs) if n is not None}, key=str)
        )
        image = StoreImage(self, first)
        manifest = image.manifest()
        config = image.config()
        size = sum(
            self._layer_size(d, diff)
            for d, diff in zip(manifest.layers, config.diff_ids, strict=False)
        )
        return ImageRecord(
            manifest=idx.named_entry(first, None),
            id=manifest.config.digest,
            names=names,
            created=config.created,
            size=size,
            diff_ids=config.diff_ids,
        )

    def _layer_size(self, desc: Descriptor, diff_id: Digest) -> int:
        """Unpacked size if the snapshot exists, else the blob's size."""
        try:
            return _marker_size((self._snap_dir(diff_id) / "size").read_text())
        except (OSError, ValueError):
            return desc.size

    def resolve(self, text: str) -> ImageRecord:
        """Find an image by name (default tag ``latest``), ``name@digest``, or ID (prefix)."""
        full_id = text.removeprefix("sha256:")
        if len(full_id) == 64 and is_image_id_prefix(full_id):
            for r in self.images():
                if full_id in (r.id.hex, r.manifest.digest.hex):
                    return r
            raise ImageNotFound(f"no such image: {text}")
        ref: Reference | None
        try:
            ref = Reference.parse(text).with_default_tag()
        except InvalidReference:
            ref = None
        if ref is not None and ref.digest is None:  # by name: no need to read every image
            found = self.find(name=ref)
            if found is not None:
                return found
        records = self.images()
        if ref is not None:
            for r in records:
                if ref.digest is not None:
                    if r.manifest.digest == ref.digest and any(n.name == ref.name for n in r.names):
                        return r
                    if ref in r.names:  # name@<index digest>: pulled by its manifest list's digest
                        return r
                elif ref in r.names:
                    return r
            if ref.digest is not None:
                for r in records:
                    if r.manifest.digest == ref.digest:
                        return r
        if is_image_id_prefix(text):
            matches = [r for r in records if r.id.hex.startswith(full_id)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise ImageNotFound(
                    f"image ID prefix {text!r} is ambiguous: it matches "
                    + ", ".join(m.short_id for m in matches)
                )
        if ref is None:
            Reference.parse(text)  # raise the parse error: the text was neither a name nor an ID
        raise ImageNotFound(f"no such image: {text}")

    def image_of(self, record: ImageRecord) -> StoreImage:
        """The ``Image`` of a record ``resolve`` returned."""
        return StoreImage(self, record.manifest)

    def image(self, text: str) -> StoreImage:
        """The ``Image`` for a name or ID."""
        return StoreImage(self, self.resolve(text).manifest)

    def inspect(self, text: str) -> dict[str, Any]:
        """Docker's ``image inspect`` object for one image."""
        record = self.resolve(text)
        image = StoreImage(self, record.manifest)
        config = parse_json_object(image.raw_config(), f"config {record.id}")
        return {
            "Id": str(record.id),
            "RepoTags": [n.familiar() for n in record.names if n.tag],
            "RepoDigests": [],
            "Created": config.get("created", ""),
            "Author": config.get("author", ""),
            "Config": config.get("config") or {},
            "Architecture": config.get("architecture", ""),
            "Os": config.get("os", ""),
            "Size": record.size,
            "RootFS": {"Type": "layers", "Layers": [str(d) for d in record.diff_ids]},
            "Descriptor": record.manifest.to_dict(),
            "Metadata": {"LastTagTime": ""},
        }

    # -- writing -------------------------------------------------------------------------------
    def import_tarball(
        self,
        src: IO[bytes],
        refs: Sequence[Reference] = (),
        *,
        source: str = "-",
        changes: ContainerConfig | None = None,
        message: str = "",
        platform: tuple[str, str] | None = None,
    ) -> ImageRecord:
        """``docker import``: make a one-layer image of a rootfs tar (plain, gzip, bzip2 or xz)."""
        from pytest_minidock.store.blobio import decompressing

        with gc_shared(self.paths.gc_lock):
            layer = self._ingest_layer(decompressing(src, source), source=source, unpack=True)
            created = now_rfc3339()
            os_name, arch = platform or ("linux", _host_arch())
            config = ImageConfig(
                diff_ids=(layer.diff_id,),
                config=changes or ContainerConfig(),
                architecture=arch,
                os=os_name,
                created=created,
                history=(
                    History(
                        created=created,
                        created_by="minidock import",
                        comment=message or f"Imported from {source}",
                    ),
                ),
            )
            return self._commit_image(
                config,
                [Descriptor(self.layer_media_type, layer.digest, layer.size)],
                refs,
            )

    def write_image(
        self, image: Image, refs: Sequence[Reference] = (), *, unpack: bool = True
    ) -> ImageRecord:
        """Copy any ``Image`` into the store (layers stored gzip-compressed) and name it."""
        with gc_shared(self.paths.gc_lock):
            manifest = image.manifest()
            config = image.config()
            descs: list[Descriptor] = []
            same_manifest = True
            for layer, diff_id in zip(image.layers(), config.diff_ids, strict=True):
                desc = layer.descriptor
                if self.blobs.exists(desc.digest) and (
                    mt.is_gzip_layer(desc.media_type) or desc.media_type == self.layer_media_type
                ):
                    descs.append(desc)
                    continue
                if desc.media_type in (mt.OCI_LAYER_GZIP, mt.DOCKER_LAYER_GZIP):
                    with layer.open() as f:
                        self.blobs.ingest(f, desc.digest, desc.size, what=f"layer {desc.digest}")
                    descs.append(desc)
                elif desc.media_type in (mt.OCI_LAYER, mt.DOCKER_LAYER):
                    with layer.open() as f:
                        blob = self._ingest_layer(f, source=str(desc.digest), unpack=unpack)
                    if blob.diff_id != diff_id:
                        raise ImageError(
                            f"layer {desc.digest}: uncompressed tar hashes to {blob.diff_id}, "
                            f"but the config says {diff_id}"
                        )
                    new_desc = Descriptor(self.layer_media_type, blob.digest, blob.size)
                    descs.append(new_desc)
                    if (new_desc.digest, new_desc.media_type) != (desc.digest, desc.media_type):
                        same_manifest = False
                else:
                    raise ImageError(
                        f"layer {desc.digest}: unsupported media type {desc.media_type!r}"
                    )
            raw_config = image.raw_config()
            self.blobs.write_bytes(raw_config, manifest.config.digest)
            if same_manifest:
                raw = image.raw_manifest()
                mdigest = self.blobs.write_bytes(raw)
                mdesc = Descriptor(manifest.media_type, mdigest, len(raw))
            else:
                new = Manifest(
                    config=Descriptor(mt.OCI_CONFIG, manifest.config.digest, len(raw_config)),
                    layers=tuple(descs),
                )
                raw = new.to_json()
                mdesc = Descriptor(mt.OCI_MANIFEST, self.blobs.write_bytes(raw), len(raw))
            if unpack:
                for desc, diff_id in zip(descs, config.diff_ids, strict=True):
                    self.snapshot(diff_id, desc)
            return self._name(mdesc, refs)

    def commit_layers(
        self, config: ImageConfig, layers: Sequence[Descriptor], refs: Sequence[Reference] = ()
    ) -> ImageRecord:
        """Store a config over layers already in the store, as a new image named ``refs``."""
        with gc_shared(self.paths.gc_lock):
            return self._commit_image(config, layers, refs)

    def _commit_image(
        self, config: ImageConfig, layers: Sequence[Descriptor], refs: Sequence[Reference]
    ) -> ImageRecord:
        raw_config = config.to_json()
        cdigest = self.blobs.write_bytes(raw_config, durable=False)
        manifest = Manifest(
            config=Descriptor(mt.OCI_CONFIG, cdigest, len(raw_config)), layers=tuple(layers)
        )
        raw = manifest.to_json()
        mdesc = Descriptor(mt.OCI_MANIFEST, self.blobs.write_bytes(raw, durable=False), len(raw))
        self._remember_json(cdigest, raw_config)  # read back at once, for the record
        self._remember_json(mdesc.digest, raw)
        return self._name(mdesc, refs)

    def _name(self, mdesc: Descriptor, refs: Sequence[Reference]) -> ImageRecord:
        self.blobs.sync()  # the image's blobs are durable before the index names them

        def edit(entries: list[Descriptor]) -> list[Descriptor]:
            if not refs:
                return idx.add_unnamed(entries, mdesc)
            for ref in refs:
                entries = idx.set_name(entries, ref.with_default_tag(), mdesc)
            return entries

        entries = self.index.update(edit)
        return self._record([e for e in entries if e.digest == mdesc.digest])

    def add_layer_blob(self, blob: LayerBlob) -> Descriptor:
        """Adopt a gzip layer file written by ``layers.layer_from_*`` (moved into the store)."""
        with gc_shared(self.paths.gc_lock):
            if not self.blobs.exists(blob.digest):
                self.blobs.publish(blob.path, blob.digest, durable=False)  # see _name
        return Descriptor(mt.OCI_LAYER_GZIP, blob.digest, blob.size)

    def add_layer(self, tar_stream: IO[bytes], *, source: str, unpack: bool = True) -> LayerBlob:
        """Store an uncompressed layer tar as a gzip blob (and its snapshot); for builders."""
        with gc_shared(self.paths.gc_lock):
            return self._ingest_layer(tar_stream, source=source, unpack=unpack)

    @property
    def layer_media_type(self) -> str:
        """The media type of the layers this store writes (gzip or plain tar)."""
        return mt.OCI_LAYER_GZIP if self.compression == "gzip" else mt.OCI_LAYER

    def _write_tar(self, src: BinaryIO | bytes, out: Path) -> LayerBlob:
        from pytest_minidock.store.layers import compress_tar, compress_tar_bytes, copy_tar

        if isinstance(src, bytes):
            if self.compression == "gzip":
                return compress_tar_bytes(src, out)
            src = io.BytesIO(src)
        return compress_tar(src, out) if self.compression == "gzip" else copy_tar(src, out)

    def _ingest_layer(self, tar_stream: IO[bytes], *, source: str, unpack: bool) -> LayerBlob:
        """Compress, hash and (optionally) unpack a tar stream; publish both.

        A small tar (at most ``_SMALL_LAYER`` bytes: a ``WORKDIR`` or a ``COPY`` of a few
        files, most of a build's layers) is read whole and compressed from memory, then
        unpacked unless its snapshot is already there (the same bytes, unpacked before); a
        larger one is unpacked in one pass while a thread compresses it (with ``as_owner``:
        compressed, then unpacked from its blob in the user namespace). A blob already in the
        store is not written again."""
        tmp_blob = self.blobs.temp_path("layer")
        tmp_snap: Path | None = None
        try:
            if not unpack:
                blob = self._write_tar(cast("BinaryIO", tar_stream), tmp_blob)
                self._publish_layer(tmp_blob, blob)
                return blob
            head = _read_up_to(tar_stream, _SMALL_LAYER + 1)
            if len(head) <= _SMALL_LAYER:
                blob = self._write_tar(head, tmp_blob)
                # (one there of an earlier boot is checked, or replaced, by _publish_snapshot)
                if not self._fresh_snapshot(blob.diff_id, self._snap_dir(blob.diff_id)):
                    tmp_snap = self.blobs.temp_path("snapshot")
                    self._unpack(tmp_snap, lambda: io.BytesIO(head), source)
            elif self._as_owner is not None:  # (a forked child cannot share the compressor)
                blob = self._write_tar(cast("BinaryIO", _Prefixed(head, tar_stream)), tmp_blob)
                self._publish_layer(tmp_blob, blob)
                self.snapshot(
                    blob.diff_id, Descriptor(self.layer_media_type, blob.digest, blob.size)
                )
                return blob
            else:
                tmp_snap = self.blobs.temp_path("snapshot")
                (tmp_snap / "fs").mkdir(parents=True)
                written, blob = self._ingest_large(head, tar_stream, tmp_snap, tmp_blob, source)
                (tmp_snap / "size").write_text(_marker(written))
            self._publish_layer(tmp_blob, blob)
            if tmp_snap is not None:
                self._publish_snapshot(tmp_snap, blob.diff_id, blob.digest)
            return blob
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp_blob.unlink()
            if tmp_snap is not None and tmp_snap.exists():
                self._remove([tmp_snap])

    def _publish_layer(self, tmp_blob: Path, blob: LayerBlob) -> None:
        """Move a layer blob written at ``tmp_blob`` into the store, unless it is there."""
        if not self.blobs.exists(blob.digest):
            self.blobs.publish(tmp_blob, blob.digest, durable=False)  # synced by _name

    def _ingest_large(
        self, head: bytes, rest: IO[bytes], tmp_snap: Path, tmp_blob: Path, source: str
    ) -> tuple[int, LayerBlob]:
        """Unpack ``head`` + ``rest`` into ``tmp_snap`` while a thread compresses the same bytes
        into ``tmp_blob``; the bytes written and the blob."""
        import queue  # with threading: only large layers need them
        import threading

        from pytest_minidock.store.blobio import QueueReader, TeeReader
        from pytest_minidock.store.snapshots import extract_layer

        q: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        reader = QueueReader(q)
        result: list[LayerBlob] = []
        errors: list[BaseException] = []

        def compress() -> None:
            try:
                result.append(self._write_tar(cast("BinaryIO", reader), tmp_blob))
            except BaseException as exc:  # re-raised in the calling thread
                errors.append(exc)
            finally:
                reader.drain()

        worker = threading.Thread(target=compress, name="minidock-compress", daemon=True)
        worker.start()
        tee = TeeReader(rest, q, head=head)
        try:
            written = extract_layer(
                cast("BinaryIO", tee), tmp_snap / "fs", policy=self.policy, source=source
            )
            tee.drain()
        finally:
            q.put(None)
            worker.join()
        if errors:
            raise errors[0]
        return written, result[0]

    def _publish_snapshot(self, tmp_snap: Path, diff_id: Digest, blob: Digest) -> None:
        """Move the snapshot unpacked at ``tmp_snap`` into place, unless one is there that
        can be used (of this boot, or of an earlier one that passes its check: it is kept,
        as a container may use it)."""
        final = self._snap_dir(diff_id)
        with exclusive(self._snap_lock(diff_id), what=f"snapshot {diff_id}"):
            if self._usable(final, self.blobs.path(blob), str(blob)):
                self._fresh.add(diff_id.hex)
                return
            self._discard(final)
            os.replace(tmp_snap, final)
            self._fresh.add(diff_id.hex)

    def _discard(self, snap: Path) -> None:
        """Take a snapshot directory out of ``snapshots/`` at once (a rename into the temp
        directory), then delete it: a deletion that fails half-way leaves a temp that the next
        clean-up retries, never a partial snapshot under its real name."""
        trash = self._trash(snap)
        if trash is not None:
            self._remove([trash])

    def _trash(self, snap: Path) -> Path | None:
        """Move ``snap`` into the temp directory; where it went (None: it was gone)."""
        trash = self.blobs.temp_path("trash")
        try:
            os.replace(snap, trash)
        except FileNotFoundError:
            return None
        return trash

    def snapshot(self, diff_id: Digest, layer: Descriptor | None = None) -> Path:
        """The unpacked directory of a layer (an overlay lowerdir), unpacking it once if needed.
        A snapshot is complete once its ``size`` file is there (written last, before the rename
        that publishes it); an incomplete one (an older version's interrupted deletion) is
        discarded and unpacked again. One made in an earlier boot is checked against the layer
        first (once: see ``_usable``)."""
        final = self._snap_dir(diff_id)
        if self._fresh_snapshot(diff_id, final):
            return final / "fs"
        from pytest_minidock.store.layers import open_layer

        if layer is None:
            layer = self._find_layer(diff_id)
        blob = self.blobs.path(layer.digest)
        with (
            gc_shared(self.paths.gc_lock),
            exclusive(self._snap_lock(diff_id), what=f"snapshot {diff_id}"),
        ):
            if self._usable(final, blob, str(layer.digest)):
                self._fresh.add(diff_id.hex)
                return final / "fs"
            self._discard(final)
            tmp_snap = self.blobs.temp_path("snapshot")
            try:
                self._unpack(tmp_snap, lambda: open_layer(blob), str(layer.digest))
                os.replace(tmp_snap, final)
            finally:
                if tmp_snap.exists():
                    self._remove([tmp_snap])
            self._fresh.add(diff_id.hex)
        return final / "fs"

    def _fresh_snapshot(self, diff_id: Digest, final: Path) -> bool:
        """Whether the layer's snapshot ``final`` is complete and made (or checked) in this
        boot, without a lock: two ``stat`` calls once this object knows it, else one read of
        its marker and a ``stat``."""
        if diff_id.hex in self._fresh:  # (a snapshot replacing it later in this boot is of it too)
            return _complete(final)
        text = _read_marker(final)
        if text is None or not _this_boot(text) or not (final / "fs").is_dir():
            return False
        self._fresh.add(diff_id.hex)
        return True

    def _usable(self, final: Path, blob: Path, source: str) -> bool:
        """Whether the snapshot ``final`` is complete and can be used; called holding its lock.

        One made in an earlier boot (its marker names another boot, or none: an older
        version's) may have come back from a crash with files empty or missing: its data was
        never synced. It is checked once: every regular file the layer ``blob`` leaves must be
        there with its size (headers only: see ``snapshots.regular_files``); then its marker
        is rewritten with this boot (temp, fsync, rename: the files have survived a reboot, so
        they are on disk) and it is used. If anything differs or cannot be checked, False: the
        caller discards it and unpacks the layer again. A missing blob is an error (the snapshot
        is kept: it cannot be made again)."""
        text = _read_marker(final)
        if text is None or not (final / "fs").is_dir():
            return False
        if _this_boot(text):
            return True
        if not blob.exists():
            raise StoreError(
                f"cannot check snapshot {final} (made before the last reboot) against its layer "
                f"{source}: the layer blob {blob} is missing; pull or load the image again"
            )
        self.checked_snapshots += 1
        try:
            self._check_snapshot(final, blob, source)
        except (MinidockError, OSError):  # (_SnapshotDamaged, or it could not be checked)
            self.repaired_snapshots += 1
            return False
        return True

    def _check_snapshot(self, final: Path, blob: Path, source: str) -> None:
        """Compare the snapshot ``final`` with its layer ``blob`` and, if it matches, mark it
        made in this boot; ``_SnapshotDamaged`` if it does not. Here, or through ``as_owner``
        (its files may belong to ids the user cannot search)."""
        from pytest_minidock.store.layers import open_layer
        from pytest_minidock.store.snapshots import first_mismatch, regular_files

        def work() -> None:
            with open_layer(blob) as tar:
                files, written = regular_files(tar, source=source)
            bad = first_mismatch(final / "fs", files)
            if bad is not None:
                raise _SnapshotDamaged(
                    f"snapshot {final}: {os.fsdecode(bad)!r} differs from layer {source}"
                )
            tmp = self.blobs.temp_path("marker")
            try:  # (if this fails, e.g. the disk is full, the next process checks it again)
                with open(tmp, "w") as f:
                    f.write(_marker(written))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final / "size")
            except OSError:
                pass
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

        if self._as_owner is None:
            work()
        else:
            self._as_owner(work, f"cannot check snapshot {final} against layer {source}")

    def recheck_lowerdirs(self, lowerdirs: Iterable[str | Path]) -> None:
        """Check, as ``snapshot`` does, this store's snapshots among ``lowerdirs``: a container's
        recorded ``LowerDirs``, which starting it again (after a reboot, say) uses without asking
        the store. One of an earlier boot is checked once and, if a crash damaged it, unpacked
        again in place (its layer found through the images that use it). Other paths, and
        snapshots that are not there, are left to the caller."""
        for item in lowerdirs:
            fs = Path(item)
            snap = fs.parent
            if fs.name != "fs" or snap.parent != self.paths.snapshots:
                continue
            name = snap.name
            if name.endswith(OWNED_SUFFIX) != bool(self._snap_suffix):
                continue  # (the other form's: only its own store can check it)
            try:
                diff_id = Digest("sha256", name.removesuffix(OWNED_SUFFIX))
            except ValueError:
                continue
            if not self._fresh_snapshot(diff_id, snap) and _read_marker(snap) is not None:
                self.snapshot(diff_id)

    def lowerdirs(self, text: str) -> list[Path]:
        """The snapshots of an image's layers, base first (unpacked on demand)."""
        image = self.image(text)
        return [self.snapshot(layer.diff_id, layer.descriptor) for layer in image.layers()]

    def _find_layer(self, diff_id: Digest) -> Descriptor:
        for r in self.images():
            if diff_id in r.diff_ids:
                manifest = StoreImage(self, r.manifest).manifest()
                return manifest.layers[r.diff_ids.index(diff_id)]
        raise ImageNotFound(f"no image in the store has a layer with diff_id {diff_id}")

    # -- names and removal ---------------------------------------------------------------------
    def tag(self, source: str, target: Reference) -> ImageRecord:
        """``docker tag``: point ``target`` (default tag ``latest``) at the image ``source``."""
        if target.digest is not None:
            raise InvalidReference(f"refusing to create a tag with a digest reference: {target}")
        with gc_shared(self.paths.gc_lock):
            record = self.resolve(source)
            return self._name(record.manifest, [target.with_default_tag()])

    def remove(
        self, text: str, *, force: bool = False, in_use: Callable[[Digest], bool] | None = None
    ) -> list[str]:
        """``docker rmi``: untag a name, deleting the image when no name is left; return lines."""
        record = self.resolve(text)
        by_name: Reference | None = None
        with contextlib.suppress(InvalidReference):
            candidate = Reference.parse(text).with_default_tag()
            if candidate in record.names:
                by_name = candidate
        used = bool(in_use and in_use(record.id))
        lines: list[str] = []
        if by_name is not None and (len(record.names) > 1 or (used and force)):
            self.index.update(lambda es: idx.untag(es, by_name))
            return [f"Untagged: {by_name.familiar()}"]
        if used and not force:
            raise ImageInUse(
                f"unable to remove image {text} ({record.short_id}): a container is using it; "
                "remove the container first or use -f"
            )
        if by_name is None and len(record.names) > 1 and not force:
            raise ImageInUse(
                f"unable to delete {record.short_id} (must be forced): image is referenced in "
                f"multiple repositories ({', '.join(n.familiar() for n in record.names)})"
            )
        if used:  # forced removal of an image a container uses: drop its names only
            for name in record.names:
                self.index.update(functools.partial(_untag, ref=name))
            return [f"Untagged: {n.familiar()}" for n in record.names]
        self.index.update(lambda es: idx.drop_image(es, record.manifest.digest))
        lines.extend(f"Untagged: {n.familiar()}" for n in record.names)
        lines.append(f"Deleted: {record.id}")
        self.gc()
        return lines

    def prune(
        self, *, all_images: bool = False, in_use: Callable[[Digest], bool] | None = None
    ) -> PruneReport:
        """``docker image prune [-a]``: drop dangling (or all unused) images, then collect."""
        deleted: list[Digest] = []
        untagged: list[Reference] = []
        for record in self.images():
            if in_use is not None and in_use(record.id):
                continue
            if record.names and not all_images:
                continue
            self.index.update(functools.partial(_drop, digest=record.manifest.digest))
            deleted.append(record.id)
            untagged.extend(record.names)
        reclaimed = self.gc()
        return PruneReport(tuple(deleted), tuple(untagged), reclaimed)

    # -- garbage collection and checks ---------------------------------------------------------
    def _referenced(self, entries: Iterable[Descriptor]) -> tuple[set[Digest], set[Digest]]:
        """Blobs reachable from ``entries`` and the diff_ids of their layers."""
        blobs: set[Digest] = set()
        diff_ids: set[Digest] = set()
        pending = list(entries)
        while pending:
            desc = pending.pop()
            if desc.digest in blobs:
                continue
            blobs.add(desc.digest)
            try:
                raw = self.blobs.read(desc.digest, verify=False)
            except MinidockError:
                continue
            if desc.media_type in mt.INDEX_TYPES:
                with contextlib.suppress(ImageError):
                    pending.extend(Index.from_json(raw).manifests)
                continue
            try:
                manifest = Manifest.from_json(raw)
            except ImageError:
                continue
            blobs.add(manifest.config.digest)
            blobs.update(layer.digest for layer in manifest.layers)
            with contextlib.suppress(MinidockError):
                config = ImageConfig.from_json(
                    self.blobs.read(manifest.config.digest, verify=False)
                )
                diff_ids.update(config.diff_ids)
        return blobs, diff_ids

    def gc(self) -> int:
        """Remove blobs and snapshots that no image references; return the bytes freed."""
        freed = 0
        with gc_exclusive(self.paths.gc_lock):
            blobs, diff_ids = self._referenced(self.index.read())
            for digest in list(self.blobs):
                if digest not in blobs:
                    freed += self.blobs.delete(digest)
            trash: list[Path] = []
            for snap in list(self.paths.snapshots.iterdir()):
                try:  # (``HEX`` or ``HEX`` + ``OWNED_SUFFIX``)
                    keep = Digest("sha256", snap.name.removesuffix(OWNED_SUFFIX)) in diff_ids
                except ValueError:
                    keep = False
                if not keep:
                    freed += _dir_size(snap)
                    moved = self._trash(snap)
                    if moved is not None:
                        trash.append(moved)
            self._remove(trash)
            self.blobs.remove_stale_temps(remove=self._remove if self._as_owner else None)
            self._remove_stale_index_temps()
        return freed

    def _remove_stale_index_temps(self) -> None:
        for tmp in self.root.glob(".index.json.*.tmp"):
            pid = tmp.name.split(".")[3]
            if pid.isdigit() and not pid_alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def disk_usage(self, in_use: Callable[[Digest], bool] | None = None) -> DiskUsage:
        """``docker system df`` numbers for images, blobs and snapshots."""
        records = self.images()
        active = [r for r in records if in_use is not None and in_use(r.id)]
        blob_list = list(self.blobs)
        blob_bytes = sum(self.blobs.size(d) for d in blob_list)
        snaps = [s for s in self.paths.snapshots.iterdir() if s.is_dir()]
        snap_bytes = sum(_dir_size(s) for s in snaps)
        size = sum(r.size for r in records)
        return DiskUsage(
            images=len(records),
            active=len(active),
            size=size,
            reclaimable=size - sum(r.size for r in active),
            blobs=len(blob_list),
            blob_bytes=blob_bytes,
            snapshots=len(snaps),
            snapshot_bytes=snap_bytes,
        )

    def check(self, *, deep: bool = True) -> list[str]:
        """Validate the whole store: index, every image, snapshots. Empty list = consistent."""
        from pytest_minidock.image.validate import validate_image

        problems: list[str] = []
        try:
            entries = self.index.read()
        except StoreError as exc:
            return [str(exc)]
        names = [idx.entry_name(e) for e in entries]
        seen: set[Reference] = set()
        for n in names:
            if n is not None:
                if n in seen:
                    problems.append(f"index: the name {n} appears more than once")
                seen.add(n)
        for e in {e.digest: e for e in entries}.values():
            problems.extend(
                validate_image(StoreImage(self, e), deep=deep, what=f"image {e.digest.short}")
            )
        for digest in self.blobs:
            if deep:
                with self.blobs.open(digest) as f:
                    h = _hash_stream(f)
                if h != digest:
                    problems.append(f"blob {digest} is corrupt (hashes to {h})")
        for snap in self.paths.snapshots.iterdir():
            if not _complete(snap):
                problems.append(f"snapshot {snap} is incomplete (no fs/ or no size)")
        return problems


class _Prefixed:
    """``head``, then what is left of ``rest``: a stream whose start was read already."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                out = bytes(self._head) + self._rest.read()
                self._head = memoryview(b"")
                return out
            out = bytes(self._head[:n])
            self._head = self._head[n:]
            return out
        return self._rest.read(n)


def _complete(snap: Path) -> bool:
    """Whether ``snap`` is a whole snapshot: ``size`` is written last, before publication."""
    return (snap / "size").is_file() and (snap / "fs").is_dir()


def _marker(size: int) -> str:
    """The text of a snapshot's ``size`` marker: the bytes unpacked and the boot it was made
    (or last checked) in, ``"<size> <boot id>"``; older versions wrote ``"<size>"`` alone."""
    boot = _boot_id()
    return f"{size}" if boot is None else f"{size} {boot}"


def _read_marker(snap: Path) -> str | None:
    """The text of the ``size`` marker of ``snap`` (None: there is none, so it is incomplete;
    empty if it cannot be read: the snapshot is then checked, as one of an unknown boot)."""
    try:
        fd = os.open(f"{snap}/size", os.O_RDONLY | os.O_CLOEXEC)  # (no file object: ~5 us less)
        try:
            return os.read(fd, 200).decode("ascii", "replace")
        finally:
            os.close(fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return "" if (snap / "size").is_file() else None


def _marker_size(text: str) -> int:
    """The bytes a ``size`` marker says were unpacked (``ValueError`` if it says none)."""
    size, _, _ = text.strip().partition(" ")
    return int(size)


def _this_boot(text: str) -> bool:
    """Whether a ``size`` marker says it was written in this boot (an old one, of a size
    alone, or one a crash left empty: an earlier boot); always so where boots are unknown."""
    boot = _boot_id()
    if boot is None:
        return True
    parts = text.split()
    return len(parts) == 2 and parts[1] == boot


def _drop(entries: list[Descriptor], *, digest: Digest) -> list[Descriptor]:
    return idx.drop_image(entries, digest)


def _untag(entries: list[Descriptor], *, ref: Reference) -> list[Descriptor]:
    return idx.untag(entries, ref)


def _host_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


def _hash_stream(f: IO[bytes]) -> Digest:
    from pytest_minidock.digest import sha256_file

    return sha256_file(f)[0]


def _dir_size(path: Path) -> int:
    try:
        return _marker_size((path / "size").read_text())
    except (OSError, ValueError):
        return 0
