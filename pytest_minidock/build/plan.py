"""The build plan: every step's cache key, computed from its definition alone (pure).

As in buildkit's solver, a step's key is the hash of what defines it and of its inputs' keys:

* the **parent key**: the key of the image state the step starts from (for the first step, the
  stage's base: the base image's ID, the key of the stage it builds on, or ``scratch``, with the
  platform);
* the **instruction as written after expansion** (``canonical_instruction``: every field of the
  typed instruction except where it is in the file, so moving a line or editing a comment
  changes nothing, while ``COPY --chmod=644`` and ``--chmod=600`` differ);
* the **build arguments in effect where docker counts them** (``Step.args`` of
  ``dockerfile.expand``: all ``ARG`` values in scope for ``RUN``, the substituted ones elsewhere);
* the **digest of every input**: context files a ``COPY``/``ADD`` reads (content, mode,
  ownership, symlink target, never mtime), heredoc contents, downloaded URLs, and the keys of
  stages or IDs of images that ``--from`` and ``RUN --mount`` read.

A ``COPY --link`` layer does not depend on the image below it, so its layer key leaves the parent
out and only the chain key that the next step builds on includes it.

Nothing here reads a file or the clock: the builder computes the inputs (with I/O) and passes them
in, which is what lets the property tests check that a key changes exactly when an input does.
"""

from __future__ import annotations

import json

from pytest_minidock import _record
from pytest_minidock._record import dataclass
from pytest_minidock.digest import Digest, sha256_bytes

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from pytest_minidock.dockerfile.instructions import Instruction

__all__ = [
    "KEY_VERSION",
    "Pairs",
    "PlannedStep",
    "StepDefinition",
    "base_key",
    "canonical_instruction",
    "plan_steps",
    "step_key",
]

KEY_VERSION = "minidock-build-cache-v1"
"""Mixed into every key: bump it when what a key means changes, and old entries stop matching."""

Pairs = tuple[tuple[str, str], ...]


def _plain(value: Any) -> Any:
    """A JSON-able, order-stable form of an instruction's field values."""
    if _record.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"@": type(value).__name__}
        keyword = getattr(type(value), "keyword", None)
        if isinstance(keyword, str) and keyword:
            out["keyword"] = keyword
        for f in _record.fields(value):
            if f.name == "location":
                continue
            out[f.name] = _plain(getattr(value, f.name))
        return out
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot put {type(value).__name__} in a cache key")


def canonical_instruction(instruction: Instruction) -> str:
    """The instruction as one canonical JSON text: its keyword and fields, without its location."""
    return json.dumps(
        _plain(instruction), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


@dataclass(frozen=True)
class StepDefinition:
    """What defines one step, apart from the state it starts from."""

    instruction: str
    """``canonical_instruction`` of the expanded instruction."""
    args: Pairs = ()
    """The build arguments counted for this step, ``(name, value)`` (order does not matter)."""
    inputs: Pairs = ()
    """``(what, digest)`` of every input the step reads, in the order it reads them."""
    independent: bool = False
    """True for ``COPY --link``: the layer does not depend on the image below it."""


@dataclass(frozen=True)
class PlannedStep:
    """A step's keys: ``key`` finds its layer in the build cache, ``chain`` is the image state
    after it (the parent of the next step). They differ only for an independent step."""

    key: Digest
    chain: Digest


def _hash(*parts: Any) -> Digest:
    text = json.dumps([KEY_VERSION, *parts], separators=(",", ":"), ensure_ascii=False)
    return sha256_bytes(text.encode("utf-8", "surrogateescape"))


def base_key(base: str, platform: str) -> Digest:
    """The key a stage starts from: ``base`` is an image ID, a stage's key or ``scratch``."""
    return _hash("base", base, platform)


def step_key(parent: Digest, step: StepDefinition) -> PlannedStep:
    """The keys of ``step`` run on the state ``parent``."""
    args = sorted(step.args)
    inputs = list(step.inputs)
    if step.independent:
        key = _hash("independent", step.instruction, args, inputs)
        return PlannedStep(key, _hash("chain", str(parent), str(key)))
    key = _hash("step", str(parent), step.instruction, args, inputs)
    return PlannedStep(key, key)


def plan_steps(start: Digest, steps: Sequence[StepDefinition]) -> tuple[PlannedStep, ...]:
    """The keys of ``steps`` run one after the other from the state ``start``."""
    planned = []
    parent = start
    for step in steps:
        keys = step_key(parent, step)
        planned.append(keys)
        parent = keys.chain
    return tuple(planned)
