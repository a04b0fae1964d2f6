"""The Dockerfile language: text to nodes to typed instructions to expanded build steps.

No execution happens here. The layers, each usable alone:

* ``parser``: text -> nodes (``Node``) with line ranges, exactly as buildkit parses (directives,
  escapes, continuations, exec vs shell form, heredocs); ``dump()`` writes buildkit's test
  format.
* ``instructions``: nodes -> one frozen dataclass per instruction, flags and ``RUN --mount``
  specs parsed (``flags``); ``stages`` groups them into the stages of a ``Dockerfile``.
* ``expand``: docker's variable scoping (global ``ARG`` lines for ``FROM``, ``ARG``/``ENV`` in a
  stage, automatic platform arguments) and ``expand_stage``, the pure function the builder runs.
* ``shell``: the ``$VAR``/quote/escape lexer both of those use.

Every error is a ``DockerfileSyntaxError`` (a ``DockerfileError``) naming ``FILE:LINE``.

The records here are not slotted: a build makes a handful of each, while ``slots=True`` makes a
record class about a third dearer to create, which every ``minidock build`` pays at import.
"""

from __future__ import annotations

from pytest_minidock.dockerfile.expand import ExpandedStage, Step, expand_stage
from pytest_minidock.dockerfile.instructions import Instruction
from pytest_minidock.dockerfile.parser import Node, ParseResult, dump, parse
from pytest_minidock.dockerfile.shell import expand_word, expand_words
from pytest_minidock.dockerfile.stages import (
    Dockerfile,
    Stage,
    parse_dockerfile,
    read_dockerfile,
)

__all__ = [
    "Dockerfile",
    "ExpandedStage",
    "Instruction",
    "Node",
    "ParseResult",
    "Stage",
    "Step",
    "dump",
    "expand_stage",
    "expand_word",
    "expand_words",
    "parse",
    "parse_dockerfile",
    "read_dockerfile",
]
