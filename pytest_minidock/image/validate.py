"""``validate``: check every invariant an image must hold, whatever its source.

Used by ``minidock system check`` and by the tests against every image source, as
go-containerregistry's ``validate.Image`` is.
"""

from __future__ import annotations

import gzip
import zlib

from pytest_minidock.digest import Hasher, sha256_bytes
from pytest_minidock.errors import MinidockError
from pytest_minidock.image import mediatypes as mt

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from pytest_minidock.image.protocols import Image, Layer

__all__ = ["validate_image"]

_CHUNK = 1 << 20


def validate_image(image: Image, *, deep: bool = True, what: str = "image") -> list[str]:
    """Return the problems found in ``image`` (an empty list when it is consistent).

    Checks that the config blob hashes to the manifest's config descriptor, that there is one
    layer per diff_id, and, with ``deep``, that each layer blob hashes to its descriptor (digest
    and size) and decompresses to a tar that hashes to its diff_id.
    """
    problems: list[str] = []
    try:
        manifest = image.manifest()
        raw_config = image.raw_config()
        config = image.config()
    except MinidockError as exc:
        return [f"{what}: {exc}"]
    if sha256_bytes(raw_config) != manifest.config.digest:
        problems.append(f"{what}: config does not hash to {manifest.config.digest}")
    if len(raw_config) != manifest.config.size:
        problems.append(
            f"{what}: config is {len(raw_config)} bytes, manifest says {manifest.config.size}"
        )
    if manifest.config.media_type not in mt.CONFIG_TYPES:
        problems.append(f"{what}: unexpected config media type {manifest.config.media_type!r}")
    if len(manifest.layers) != len(config.diff_ids):
        problems.append(
            f"{what}: manifest has {len(manifest.layers)} layers but the config lists "
            f"{len(config.diff_ids)} diff_ids"
        )
    layers = image.layers()
    for i, (layer, desc) in enumerate(zip(layers, manifest.layers, strict=False)):
        name = f"{what} layer {i} ({desc.digest})"
        if layer.descriptor.digest != desc.digest:
            problems.append(f"{name}: source serves {layer.descriptor.digest}")
        if desc.media_type not in mt.LAYER_TYPES:
            problems.append(f"{name}: unexpected media type {desc.media_type!r}")
        if i < len(config.diff_ids) and layer.diff_id != config.diff_ids[i]:
            problems.append(f"{name}: diff_id {layer.diff_id} != config's {config.diff_ids[i]}")
        if deep:
            problems.extend(_check_layer_bytes(layer, desc.media_type, name))
    return problems


def _check_layer_bytes(lay: Layer, media_type: str, name: str) -> list[str]:
    blob_hash = Hasher()
    diff_hash = Hasher()
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if mt.is_gzip_layer(media_type) else None
    try:
        with lay.open() as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                blob_hash.update(chunk)
                if inflate is None:
                    diff_hash.update(chunk)
                else:
                    diff_hash.update(inflate.decompress(chunk))
            if inflate is not None:
                diff_hash.update(inflate.flush())
    except (OSError, zlib.error, gzip.BadGzipFile, MinidockError) as exc:
        return [f"{name}: cannot read: {exc}"]
    problems = []
    if blob_hash.digest() != lay.descriptor.digest:
        problems.append(f"{name}: blob hashes to {blob_hash.digest()}")
    if blob_hash.size != lay.descriptor.size:
        problems.append(
            f"{name}: blob is {blob_hash.size} bytes, descriptor says {lay.descriptor.size}"
        )
    if diff_hash.digest() != lay.diff_id:
        problems.append(
            f"{name}: uncompressed tar hashes to {diff_hash.digest()}, "
            f"not its diff_id {lay.diff_id}"
        )
    return problems
