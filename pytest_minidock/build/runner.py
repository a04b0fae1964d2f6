"""The seam between the builder and whatever runs ``RUN`` commands: the ``StepRunner`` protocol.

The builder never imports the runtime. For a ``RUN`` step it hands a ``StepRunner`` a
``RunRequest`` -- the command, the image so far (its config and its layers' snapshot
directories), where to run it, as whom, on which network, with which mounts already resolved to
host paths -- and a path to write the step's layer to. The runner runs the command in a
container on those layers, streams its output to the callback, and, if the command succeeded,
writes the container's changes (its overlay upper directory) as a gzip layer at that path,
leaving the mounts out. ``api.Engine`` implements it over the runtime; tests use fakes.
"""

from __future__ import annotations

from pytest_minidock._record import dataclass

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Literal, Protocol

    from pytest_minidock.dockerfile.instructions import Location
    from pytest_minidock.image.model import ImageConfig
    from pytest_minidock.store.layers import LayerBlob
else:
    Protocol = object  # (the protocol is a plain class at run time)

__all__ = ["RunMount", "RunOutcome", "RunRequest", "StepRunner"]


@dataclass(frozen=True)
class RunMount:
    """A mount for one ``RUN``: a host path bound at ``target``, or a tmpfs."""

    kind: Literal["bind", "tmpfs"]
    target: str
    source: str = ""
    readonly: bool = False
    options: str = ""
    """tmpfs options, e.g. ``size=67108864``."""


@dataclass(frozen=True)
class RunRequest:
    """Everything a ``StepRunner`` needs to run one ``RUN`` command."""

    argv: tuple[str, ...]
    """The command, shell form already wrapped in the image's ``SHELL``."""
    env: tuple[str, ...]
    """``KEY=VALUE`` on top of the image's ``Env``: build arguments in effect, secrets as env."""
    config: ImageConfig
    """The image so far (its ``Env``, ``WorkingDir`` and ``User`` apply)."""
    layers: tuple[Path, ...]
    """Snapshot directories of its layers, base first (possibly none: ``FROM scratch``)."""
    workdir: str
    user: str
    network: str
    """``none``, ``host`` or a network name."""
    mounts: tuple[RunMount, ...] = ()
    privileged: bool = False
    """``RUN --security=insecure``."""
    location: Location | None = None
    image_id: str = ""
    """An identity for the image so far (recorded on the temporary container)."""


@dataclass(frozen=True)
class RunOutcome:
    """How a ``RUN`` ended: its exit code, and its layer when the exit code is 0."""

    exit_code: int
    layer: LayerBlob | None = None


class StepRunner(Protocol):
    """Runs ``RUN`` commands for the builder."""

    def run(
        self, request: RunRequest, layer_out: Path, output: Callable[[bytes], None]
    ) -> RunOutcome:
        """Run ``request``; pass its output (stdout and stderr, as it comes) to ``output``; on
        success write its changes as a gzip layer at ``layer_out`` and return it. Leave no
        container, mount or process behind, whatever happens."""
        ...
