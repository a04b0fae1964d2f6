"""What a build is asked for and what it gives back: ``BuildRequest``, ``BuildResult``.

``BuildRequest`` carries ``docker build``'s arguments (context, Dockerfile, tags, build
arguments, target, ``--no-cache``, ``--pull``, the network of ``RUN`` steps, secrets, platform);
``BuildResult`` the image in the store and a ``StepReport`` per step (cached or run, how long).
"""

from __future__ import annotations

import os

from pytest_minidock._record import dataclass, field
from pytest_minidock.errors import BuildError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from typing import TypeAlias

    from pytest_minidock.build.memo import Signature
    from pytest_minidock.digest import Digest
    from pytest_minidock.reference import Reference
    from pytest_minidock.store.store import ImageRecord

__all__ = [
    "BuildInputs",
    "BuildRequest",
    "BuildResult",
    "ImageResolver",
    "SecretSource",
    "StepReport",
    "host_platform",
]

ImageResolver: TypeAlias = "Callable[[str, str, str | None], ImageRecord]"
"""``(reference, pull policy, platform) -> ImageRecord``: an image, pulled if the policy says so;
raises a ``MinidockError`` when there is none."""


def host_platform() -> str:
    """``linux/<arch>`` of this machine, in OCI's names."""
    machine = os.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )
    return f"linux/{arch}"


@dataclass(frozen=True)
class SecretSource:
    """Where a build secret comes from: a file, or an environment variable of the caller."""

    path: Path | None = None
    env: str | None = None

    def read(self) -> bytes:
        if self.path is not None:
            try:
                return self.path.read_bytes()
            except OSError as exc:
                raise BuildError(f"cannot read secret file {self.path}: {exc.strerror}") from exc
        value = os.environ.get(self.env or "")
        if value is None:
            raise BuildError(f"secret environment variable {self.env} is not set")
        return value.encode()


@dataclass(frozen=True)
class BuildRequest:
    """What to build: ``docker build``'s arguments."""

    context: Path
    dockerfile: Path | None = None
    """Default: ``CONTEXT/Dockerfile``."""
    tags: tuple[Reference, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    pull: bool = False
    network: str = "default"
    """The network of ``RUN`` steps without ``--network`` (docker's: ``default``, the bridge that
    gives them outbound access; or ``none``, ``host``, a network name)."""
    secrets: Mapping[str, SecretSource] = field(default_factory=dict)
    platform: str | None = None
    """The target platform (default: this machine's)."""
    dockerfile_text: str | None = None
    """Dockerfile content given directly (``-f -``); ``dockerfile`` then only names it."""


@dataclass(frozen=True)
class StepReport:
    """One step of the build as it went: cached or executed, and how long it took."""

    number: int
    stage: str
    index: int
    name: str
    key: Digest
    cached: bool
    seconds: float
    layer: bool


@dataclass(frozen=True)
class BuildInputs:
    """What a build's result rests on, for ``build.memo``: the signature of every context path
    it looked at (None: absent), the file clock when it started, the cache entries and blobs
    that must still exist, and the store index whose names it resolved and wrote."""

    started_ns: int
    paths: Mapping[str, Signature | None]
    """``lstat`` signatures of the context paths it looked at."""
    followed: Mapping[str, Signature | None]
    """``stat`` signatures of the files it read through any symlink (Dockerfile, ignore files)."""
    required: tuple[str, ...]
    index: str
    names: Mapping[str, str]
    """The image names it resolved (base and ``--from`` images), each with the manifest digest
    it named."""


@dataclass(frozen=True)
class BuildResult:
    """The image a build made and how each step went."""

    record: ImageRecord
    steps: tuple[StepReport, ...]
    warnings: tuple[str, ...] = ()
    inputs: BuildInputs | None = None
    """None when the build read something no file signature covers (``ADD`` of a URL), or
    pulled, or had its Dockerfile as text."""

    @property
    def id(self) -> Digest:
        return self.record.id

    @property
    def executed(self) -> tuple[StepReport, ...]:
        """The steps that ran (not found in the cache)."""
        return tuple(s for s in self.steps if not s.cached)
