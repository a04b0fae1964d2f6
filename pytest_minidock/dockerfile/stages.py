"""Instructions grouped into build stages: the ``Dockerfile`` as a whole.

``dockerfile_from_result`` walks the typed instructions of a parsed file: ``ARG`` lines before the
first ``FROM`` are global (they are all ``FROM`` lines can use), each ``FROM`` starts a
``Stage`` (name lower-cased, unique), and everything else belongs to the current stage.
``Dockerfile.stage()`` finds a stage by name (any case) or index, as ``--target`` and
``COPY --from`` do.
"""

from __future__ import annotations

from pathlib import Path

from pytest_minidock._record import dataclass
from pytest_minidock.dockerfile._go import go_lower
from pytest_minidock.dockerfile.instructions import (
    Arg,
    From,
    Instruction,
    Location,
    instruction_from_node,
    node_location,
)
from pytest_minidock.dockerfile.parser import Directive, ParseResult, ParseWarning, parse
from pytest_minidock.errors import DockerfileError, StageNotFound

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    import os

__all__ = [
    "Dockerfile",
    "Stage",
    "dockerfile_from_result",
    "parse_dockerfile",
    "read_dockerfile",
]


@dataclass(frozen=True)
class Stage:
    """One build stage: ``FROM base [AS name]`` and the instructions up to the next ``FROM``."""

    name: str | None
    index: int
    base: str
    platform: str | None
    instructions: tuple[Instruction, ...]
    location: Location

    @property
    def display_name(self) -> str:
        """The name, or ``stage-N`` for an unnamed stage (buildkit's convention)."""
        return self.name if self.name is not None else f"stage-{self.index}"


@dataclass(frozen=True)
class Dockerfile:
    """A whole Dockerfile: global ``ARG`` lines, stages, escape character, directives, warnings."""

    path: str
    stages: tuple[Stage, ...]
    global_args: tuple[Arg, ...] = ()
    escape: str = "\\"
    directives: tuple[Directive, ...] = ()
    warnings: tuple[ParseWarning, ...] = ()

    def find_stage(self, key: str | int) -> Stage | None:
        """The stage named ``key`` (any case) or with index ``key`` (int or digits), or ``None``."""
        if isinstance(key, int) or key.isdigit():
            index = int(key)
            return self.stages[index] if 0 <= index < len(self.stages) else None
        lowered = go_lower(key)
        for stage in self.stages:
            if stage.name == lowered:
                return stage
        return None

    def stage(self, key: str | int) -> Stage:
        """Like ``find_stage`` but raise ``StageNotFound`` naming the stages there are."""
        found = self.find_stage(key)
        if found is None:
            names = [s.name for s in self.stages if s.name is not None]
            known = f"the named stages are {', '.join(names)}" if names else "no stage has a name"
            what = f"index {key}" if isinstance(key, int) or key.isdigit() else f"name {key!r}"
            raise StageNotFound(
                f"{self.path}: no build stage with {what}; {known}, and the indexes are "
                f"0 to {len(self.stages) - 1}"
            )
        return found

    @property
    def target(self) -> Stage:
        """The stage ``docker build`` builds when no ``--target`` is given: the last one."""
        return self.stages[-1]


def dockerfile_from_result(result: ParseResult) -> Dockerfile:
    """Group the nodes of ``result`` into global ``ARG`` lines and stages."""
    global_args: list[Arg] = []
    stages: list[Stage] = []
    current: From | None = None
    body: list[Instruction] = []
    by_name: dict[str, Stage] = {}

    def close() -> None:
        if current is None:
            return
        stage = Stage(
            current.name,
            len(stages),
            current.base,
            current.platform,
            tuple(body),
            current.location,
        )
        stages.append(stage)
        if stage.name is not None:
            by_name[stage.name] = stage

    for node in result.nodes:
        instruction = instruction_from_node(node, result)
        if isinstance(instruction, From):
            close()
            if instruction.name is not None and instruction.name in by_name:
                first = by_name[instruction.name]
                raise instruction.location.error(
                    f"duplicate stage name {instruction.name!r}: stage {first.index} "
                    f"({first.location}) already uses it; give each stage its own name"
                )
            current, body = instruction, []
        elif current is None:
            if isinstance(instruction, Arg):
                global_args.append(instruction)
                continue
            raise instruction.location.error(
                f"{instruction.keyword} before the first FROM: only ARG may come before FROM; "
                "start the stage with a FROM line"
            )
        else:
            body.append(instruction)
    close()
    if not stages:
        last = result.nodes[-1]
        raise node_location(last, result).error(
            "the Dockerfile has no FROM: add one, e.g. FROM debian:bookworm"
        )
    return Dockerfile(
        result.path,
        tuple(stages),
        tuple(global_args),
        result.escape,
        result.directives,
        result.warnings,
    )


def parse_dockerfile(source: str | bytes, path: str = "Dockerfile") -> Dockerfile:
    """Parse Dockerfile text into stages; ``path`` names the file in errors."""
    return dockerfile_from_result(parse(source, path))


def read_dockerfile(path: str | os.PathLike[str]) -> Dockerfile:
    """Read and parse the Dockerfile at ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DockerfileError(
            f"cannot read Dockerfile {str(path)!r}: {exc.strerror or exc}; check the path"
        ) from exc
    return parse_dockerfile(data, str(path))
