"""The exception tree: every error pytest-minidock raises on purpose.

::

    MinidockError                    base of everything below; ``str()`` is the one-line message
    ├── UsageError                   bad arguments from a user (CLI flag, fixture argument)
    ├── InvalidDigest                a ``sha256:<hex>`` string that is not one
    ├── InvalidReference             an image reference docker would refuse
    ├── DockerfileError              a Dockerfile that cannot be parsed (names FILE:LINE)
    ├── BuildError                   a build step that failed
    ├── ImageError                   image JSON (config, manifest, index, archive) that is malformed
    ├── StoreError                   the local store cannot do what was asked
    │   ├── ImageNotFound            no image by that reference or ID
    │   ├── BlobNotFound             a blob the store should hold is missing
    │   ├── DigestMismatch           content does not hash to the digest it claims
    │   ├── UnsafeLayer              a layer tar would write outside its snapshot or make a
    │   │                            forbidden file (``..``, absolute path, escaping link, device)
    │   └── ImageInUse               ``rmi`` of an image something still uses, without ``-f``
    ├── RegistryError                a registry refused or failed a request
    ├── RuntimeFailure               a container could not be created, started or stopped
    └── PrivilegeError               the machine or user lacks a capability that is needed

Foreign errors (``OSError``, ``json.JSONDecodeError``, HTTP errors) are translated at one boundary
each with ``raise ... from exc``. Messages are lower-case, name the path, reference or port involved
and, where there is one, say what to do next.
"""

from __future__ import annotations

__all__ = [
    "BlobNotFound",
    "BuildError",
    "DigestMismatch",
    "DockerfileError",
    "ImageError",
    "ImageInUse",
    "ImageNotFound",
    "InvalidDigest",
    "InvalidReference",
    "MinidockError",
    "PrivilegeError",
    "RegistryError",
    "RuntimeFailure",
    "StoreError",
    "UnsafeLayer",
    "UsageError",
]


class MinidockError(Exception):
    """Base of every error raised on purpose by pytest-minidock."""


class UsageError(MinidockError):
    """A user passed arguments that cannot work."""


class InvalidDigest(MinidockError, ValueError):
    """A string that is not a valid ``algorithm:hex`` digest."""


class InvalidReference(MinidockError, ValueError):
    """An image reference that docker would refuse."""


class DockerfileError(MinidockError):
    """A Dockerfile that cannot be parsed or understood."""


class BuildError(MinidockError):
    """A build that failed."""


class ImageError(MinidockError):
    """Image metadata (config, manifest, index or archive) that is malformed."""


class StoreError(MinidockError):
    """The local store cannot do what was asked."""


class ImageNotFound(StoreError):
    """No image matches the reference or ID."""


class BlobNotFound(StoreError):
    """A blob that should be in the store is missing."""


class DigestMismatch(StoreError):
    """Content does not hash to the digest it claims."""


class UnsafeLayer(StoreError):
    """A layer tar that would escape its snapshot or create a forbidden file."""


class ImageInUse(StoreError):
    """An image that cannot be removed because something still uses it."""


class RegistryError(MinidockError):
    """A registry refused or failed a request."""


class RuntimeFailure(MinidockError):
    """A container could not be created, started, or stopped."""


class PrivilegeError(MinidockError):
    """The machine or the user lacks a capability that is needed."""
