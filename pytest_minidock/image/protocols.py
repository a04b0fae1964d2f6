"""The ``Image`` and ``Layer`` protocols that every image source (store, archive, registry) meets.

A layer knows its blob descriptor (compressed digest, size, media type) and its ``diff_id`` (the
digest of the uncompressed tar) separately, as the OCI image spec does.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import IO, Protocol

    from pytest_minidock.digest import Digest
    from pytest_minidock.image.model import Descriptor, ImageConfig, Manifest
else:
    Protocol = object  # (the protocols are plain classes at run time)

__all__ = ["Image", "Layer"]


class Layer(Protocol):
    """One layer of an image, readable as the blob its descriptor names."""

    @property
    def descriptor(self) -> Descriptor:
        """Media type, digest and size of the blob as stored by this source."""

    @property
    def diff_id(self) -> Digest:
        """Digest of the uncompressed tar (from the image config)."""

    def open(self) -> IO[bytes]:
        """The blob's bytes, exactly as ``descriptor`` describes them."""


class Image(Protocol):
    """A single-platform image: a manifest, its config and its layers."""

    def raw_manifest(self) -> bytes:
        """The manifest's JSON bytes (its digest identifies the image in a registry)."""

    def manifest(self) -> Manifest:
        """The parsed manifest."""

    def raw_config(self) -> bytes:
        """The config's JSON bytes (its digest is the image ID)."""

    def config(self) -> ImageConfig:
        """The parsed config."""

    def layers(self) -> Sequence[Layer]:
        """The layers, base first."""
