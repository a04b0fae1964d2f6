"""Image archives: write ``docker save`` tars, and read them back (docker-archive or OCI layout).

``save_archive`` writes what ``docker save`` writes since Docker 25: an OCI image layout
(``oci-layout``, ``index.json``, ``blobs/sha256/…``) plus docker's ``manifest.json``, so both
``docker load`` (any version: it reads ``manifest.json``) and OCI tools accept it. Layers are
written uncompressed, as ``docker save`` writes them.

``ArchiveReader`` reads such a tar, the legacy docker-archive (``<id>/layer.tar`` directories,
symlinked duplicate layers included) and plain OCI-layout tars (names from
``io.containerd.image.name`` or a full ``org.opencontainers.image.ref.name``). It only ever looks up
member names inside the tar; nothing is extracted to disk.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import tempfile
import zlib

from pytest_minidock._record import dataclass
from pytest_minidock.digest import Digest, Hasher, sha256_file
from pytest_minidock.errors import ImageError, InvalidReference
from pytest_minidock.image import mediatypes as mt
from pytest_minidock.image.model import (
    CONTAINERD_NAME,
    REF_NAME,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    canonical_json,
)
from pytest_minidock.reference import Reference

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import IO, Any

    from pytest_minidock.image.protocols import Image, Layer

__all__ = ["ArchiveImage", "ArchiveLayer", "ArchiveReader", "save_archive", "select_platform"]

_CHUNK = 1 << 20


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = 0
    tar.addfile(info)


def _uncompressed(layer: Layer, tmp_dir: str | None) -> tuple[IO[bytes], int, Digest]:
    """The layer's uncompressed tar in a temp file, with its size and digest (its diff_id)."""
    spool = tempfile.TemporaryFile(dir=tmp_dir)  # noqa: SIM115
    hasher = Hasher()
    inflate = (
        zlib.decompressobj(16 + zlib.MAX_WBITS)
        if mt.is_gzip_layer(layer.descriptor.media_type)
        else None
    )
    try:
        with layer.open() as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                data = chunk if inflate is None else inflate.decompress(chunk)
                hasher.update(data)
                spool.write(data)
            if inflate is not None:
                tail = inflate.flush()
                hasher.update(tail)
                spool.write(tail)
    except (OSError, zlib.error) as exc:
        spool.close()
        raise ImageError(f"layer {layer.descriptor.digest}: cannot decompress: {exc}") from exc
    if hasher.digest() != layer.diff_id:
        spool.close()
        raise ImageError(
            f"layer {layer.descriptor.digest}: uncompressed tar hashes to {hasher.digest()}, "
            f"not its diff_id {layer.diff_id}"
        )
    spool.seek(0)
    return spool, hasher.size, hasher.digest()


def save_archive(
    images: Sequence[tuple[Image, Sequence[Reference]]],
    out: IO[bytes],
    *,
    tmp_dir: str | None = None,
) -> None:
    """Write ``images`` (each with the names to record) as a ``docker save`` tar to ``out``.

    Layers are written uncompressed (``blobs/sha256/<diff_id>``), as ``docker save`` does; the
    archive's manifest points at them and the config is unchanged, so the image ID survives a
    save/load round trip.
    """
    written: set[Digest] = set()
    sizes: dict[Digest, int] = {}
    index_entries: list[dict[str, Any]] = []
    manifest_json: list[dict[str, Any]] = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_dir(tar, "blobs/")
        _add_dir(tar, "blobs/sha256/")

        def add_blob(digest: Digest, size: int, f: IO[bytes]) -> None:
            info = tarfile.TarInfo(f"blobs/{digest.algorithm}/{digest.hex}")
            info.size = size
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, f)
            written.add(digest)

        for image, names in images:
            manifest = image.manifest()
            raw_config = image.raw_config()
            layer_descs = []
            for layer in image.layers():
                if layer.diff_id not in sizes:
                    spool, size, _ = _uncompressed(layer, tmp_dir)
                    with spool:
                        add_blob(layer.diff_id, size, spool)
                    sizes[layer.diff_id] = size
                layer_descs.append(Descriptor(mt.OCI_LAYER, layer.diff_id, sizes[layer.diff_id]))
            if manifest.config.digest not in written:
                add_blob(manifest.config.digest, len(raw_config), io.BytesIO(raw_config))
            archived = Manifest(
                config=Descriptor(mt.OCI_CONFIG, manifest.config.digest, len(raw_config)),
                layers=tuple(layer_descs),
            )
            raw_manifest = archived.to_json()
            mdigest = Digest.from_bytes(raw_manifest)
            if mdigest not in written:
                add_blob(mdigest, len(raw_manifest), io.BytesIO(raw_manifest))
            desc: dict[str, Any] = {
                "mediaType": mt.OCI_MANIFEST,
                "digest": str(mdigest),
                "size": len(raw_manifest),
            }
            tagged = [n.with_default_tag() for n in names]
            if not tagged:
                index_entries.append(desc)
            for name in tagged:
                annotations = {CONTAINERD_NAME: str(name)}
                if name.tag:
                    annotations[REF_NAME] = name.tag
                index_entries.append({**desc, "annotations": annotations})
            manifest_json.append(
                {
                    "Config": f"blobs/sha256/{manifest.config.digest.hex}",
                    "RepoTags": [n.familiar() for n in tagged if n.tag],
                    "Layers": [f"blobs/sha256/{d.digest.hex}" for d in layer_descs],
                }
            )
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(
            tar,
            "index.json",
            canonical_json(
                {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": index_entries}
            ),
        )
        _add_bytes(tar, "manifest.json", canonical_json(manifest_json))


@dataclass(frozen=True, slots=True)
class ArchiveLayer:
    """A layer read from an archive member (``Layer`` protocol)."""

    descriptor: Descriptor
    diff_id: Digest
    reader: ArchiveReader
    member: str

    def open(self) -> IO[bytes]:
        return self.reader.open_member(self.member)


class ArchiveImage:
    """An image read from an archive (``Image`` protocol)."""

    def __init__(
        self,
        reader: ArchiveReader,
        raw_manifest: bytes,
        raw_config: bytes,
        layer_members: Sequence[str],
        what: str,
    ) -> None:
        self._reader = reader
        self._raw_manifest = raw_manifest
        self._raw_config = raw_config
        self._members = list(layer_members)
        self.what = what

    def raw_manifest(self) -> bytes:
        return self._raw_manifest

    def manifest(self) -> Manifest:
        return Manifest.from_json(self._raw_manifest, f"{self.what} manifest")

    def raw_config(self) -> bytes:
        return self._raw_config

    def config(self) -> ImageConfig:
        return ImageConfig.from_json(self._raw_config, f"{self.what} config")

    def layers(self) -> list[ArchiveLayer]:
        manifest = self.manifest()
        diff_ids = self.config().diff_ids
        if not (len(manifest.layers) == len(diff_ids) == len(self._members)):
            raise ImageError(
                f"{self.what}: {len(manifest.layers)} layers, {len(diff_ids)} diff_ids and "
                f"{len(self._members)} layer files do not match"
            )
        return [
            ArchiveLayer(d, i, self._reader, m)
            for d, i, m in zip(manifest.layers, diff_ids, self._members, strict=False)
        ]


def select_platform(index: Index, want: Platform, what: str) -> Descriptor:
    """The manifest of ``index`` for ``want``, skipping attestation entries."""
    candidates = [
        d
        for d in index.manifests
        if d.media_type in mt.MANIFEST_TYPES | mt.INDEX_TYPES
        and d.annotations.get("vnd.docker.reference.type") != "attestation-manifest"
    ]
    for d in candidates:
        p = d.platform
        if p is None or (
            p.os == want.os
            and p.architecture == want.architecture
            and (not want.variant or p.variant in ("", want.variant))
        ):
            return d
    have = ", ".join(str(d.platform) for d in candidates if d.platform) or "none"
    raise ImageError(f"{what}: no manifest for platform {want} (have: {have})")


class ArchiveReader:
    """Reads the images of a ``docker save`` / OCI-layout tar (a seekable file object)."""

    def __init__(self, fileobj: IO[bytes], name: str = "archive") -> None:
        self.name = name
        try:
            self._tar = tarfile.open(fileobj=fileobj, mode="r:*")  # noqa: SIM115
            self._members = {_norm(m.name): m for m in self._tar.getmembers() if _norm(m.name)}
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ImageError(f"{name}: not a readable image archive: {exc}") from exc

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _member(self, name: str, depth: int = 0) -> tarfile.TarInfo:
        key = _norm(name)
        info = self._members.get(key)
        if info is None:
            raise ImageError(f"{self.name}: missing file {name!r}")
        if info.issym() and depth < 8:
            target = posixpath.normpath(posixpath.join(posixpath.dirname(key), info.linkname))
            if target.startswith("../") or target == ".." or target.startswith("/"):
                raise ImageError(f"{self.name}: {name!r} links outside the archive")
            return self._member(target, depth + 1)
        if info.islnk() and depth < 8:
            return self._member(info.linkname, depth + 1)
        if not info.isfile():
            raise ImageError(f"{self.name}: {name!r} is not a regular file")
        return info

    def has(self, name: str) -> bool:
        return _norm(name) in self._members

    def open_member(self, name: str) -> IO[bytes]:
        f = self._tar.extractfile(self._member(name))
        if f is None:
            raise ImageError(f"{self.name}: cannot read {name!r}")
        return f

    def read(self, name: str) -> bytes:
        with self.open_member(name) as f:
            return f.read()

    def member_size(self, name: str) -> int:
        return self._member(name).size

    def images(
        self, platform: Platform | None = None
    ) -> list[tuple[ArchiveImage, list[Reference]]]:
        """Every image in the archive with its names."""
        if self.has("manifest.json"):
            return self._docker_images()
        if self.has("index.json"):
            return self._oci_images(platform or Platform())
        raise ImageError(
            f"{self.name}: neither manifest.json nor index.json found: not a docker-archive or "
            "OCI-layout tar"
        )

    def _json(self, name: str) -> Any:
        import json

        try:
            return json.loads(self.read(name))
        except ValueError as exc:
            raise ImageError(f"{self.name}: {name} is not valid JSON: {exc}") from exc

    def _oci_manifests_by_config(self) -> dict[Digest, bytes]:
        """Manifests found in the archive's OCI index, keyed by their config digest."""
        found: dict[Digest, bytes] = {}
        if not self.has("index.json"):
            return found
        try:
            index = Index.from_json(self.read("index.json"), f"{self.name} index.json")
        except ImageError:
            return found
        for d in index.manifests:
            if d.media_type in mt.MANIFEST_TYPES and self.has(_blob(d.digest)):
                raw = self.read(_blob(d.digest))
                try:
                    found[Manifest.from_json(raw).config.digest] = raw
                except ImageError:
                    continue
        return found

    def _docker_images(self) -> list[tuple[ArchiveImage, list[Reference]]]:
        entries = self._json("manifest.json")
        if not isinstance(entries, list):
            raise ImageError(f"{self.name}: manifest.json must be a list")
        oci = self._oci_manifests_by_config()
        out: list[tuple[ArchiveImage, list[Reference]]] = []
        for i, entry in enumerate(entries):
            what = f"{self.name} image {i}"
            if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
                raise ImageError(f"{what}: manifest.json entry needs a 'Config' path")
            layers = entry.get("Layers") or []
            if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
                raise ImageError(f"{what}: 'Layers' must be a list of paths")
            raw_config = self.read(entry["Config"])
            config_digest = Digest.from_bytes(raw_config)
            names = []
            for tag in entry.get("RepoTags") or []:
                try:
                    names.append(Reference.parse(str(tag)))
                except InvalidReference as exc:
                    raise ImageError(f"{what}: bad RepoTags entry: {exc}") from exc
            raw_manifest = oci.get(config_digest)
            if raw_manifest is None:
                raw_manifest = self._synthesize_manifest(raw_config, layers, what)
            out.append((ArchiveImage(self, raw_manifest, raw_config, layers, what), names))
        return out

    def _synthesize_manifest(self, raw_config: bytes, layers: list[str], what: str) -> bytes:
        config = ImageConfig.from_json(raw_config, f"{what} config")
        if len(config.diff_ids) != len(layers):
            raise ImageError(
                f"{what}: {len(layers)} layer files but {len(config.diff_ids)} "
                "diff_ids in the config"
            )
        descs = []
        for path, diff_id in zip(layers, config.diff_ids, strict=False):
            with self.open_member(path) as f:
                head = f.read(2)
            size = self.member_size(path)
            if head == b"\x1f\x8b":
                with self.open_member(path) as f:
                    digest, _ = sha256_file(f)
                descs.append(Descriptor(mt.OCI_LAYER_GZIP, digest, size))
            else:
                descs.append(Descriptor(mt.OCI_LAYER, diff_id, size))
        return Manifest(
            config=Descriptor(mt.OCI_CONFIG, Digest.from_bytes(raw_config), len(raw_config)),
            layers=tuple(descs),
        ).to_json()

    def _oci_images(self, platform: Platform) -> list[tuple[ArchiveImage, list[Reference]]]:
        index = Index.from_json(self.read("index.json"), f"{self.name} index.json")
        by_digest: dict[Digest, tuple[Descriptor, list[Reference]]] = {}
        for d in index.manifests:
            name = d.annotations.get(CONTAINERD_NAME) or d.annotations.get(REF_NAME, "")
            ref = None
            if name and ("/" in name or ":" in name):
                try:
                    ref = Reference.parse(name)
                except InvalidReference:
                    ref = None
            entry = by_digest.setdefault(d.digest, (d, []))
            if ref is not None:
                entry[1].append(ref)
        out = []
        for top, names in by_digest.values():
            what = f"{self.name} {top.digest}"
            desc = top
            while desc.media_type in mt.INDEX_TYPES:
                sub = Index.from_json(self.read(_blob(desc.digest)), what)
                desc = select_platform(sub, platform, what)
            if desc.media_type not in mt.MANIFEST_TYPES:
                continue
            raw_manifest = self.read(_blob(desc.digest))
            try:
                desc.digest.verify(raw_manifest)
            except ValueError as exc:
                raise ImageError(f"{what}: {exc}") from exc
            manifest = Manifest.from_json(raw_manifest, what)
            raw_config = self.read(_blob(manifest.config.digest))
            members = [_blob(d.digest) for d in manifest.layers]
            out.append((ArchiveImage(self, raw_manifest, raw_config, members, what), names))
        return out


def _blob(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


def _norm(name: str) -> str:
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")
