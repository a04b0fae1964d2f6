"""Nodes to typed instructions: one frozen dataclass per Dockerfile instruction.

The second parsing step, after ``parser``: each ``Node`` becomes one of ``From``, ``Arg``,
``Env``, ``Label``, ``Workdir``, ``User``, ``Run``, ``Copy``, ``Add``, ``Cmd``, ``Entrypoint``,
``Shell``, ``Expose``, ``Volume``, ``Healthcheck``, ``StopSignal``, ``Onbuild`` or
``Maintainer``, with its flags checked and parsed (``RUN --mount`` into typed mounts, ``COPY
--link`` into a bool, ``HEALTHCHECK --interval`` into nanoseconds) and its arguments counted.
The rules and defaults are buildkit's ``frontend/dockerfile/instructions``; a few checks are
stricter and earlier (a ``RUN`` with no command, flags on instructions that take none, the
trigger of an ``ONBUILD``), so mistakes surface at parse time with their line.

Instructions keep their arguments as written: variables are substituted by ``expand``, which
knows what is in scope; ``stages`` groups them into a ``Dockerfile``. Every error is a
``DockerfileSyntaxError`` naming ``FILE:LINE`` and quoting the line.
"""

from __future__ import annotations

import re

from pytest_minidock._record import dataclass
from pytest_minidock.dockerfile._go import go_lower, parse_go_duration
from pytest_minidock.dockerfile.flags import (
    NETWORK_MODES,
    SECURITY_MODES,
    FlagKind,
    FlagValue,
    Mount,
    parse_flags,
    parse_mount,
    suggest,
)
from pytest_minidock.dockerfile.parser import (
    KNOWN_COMMANDS,
    Heredoc,
    Node,
    ParseResult,
    chomp_heredoc,
    parse_heredoc,
)
from pytest_minidock.errors import DockerfileSyntaxError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from typing import ClassVar, TypeAlias

__all__ = [
    "INSTRUCTION_NAMES",
    "Add",
    "Arg",
    "ArgDecl",
    "Cmd",
    "Command",
    "Copy",
    "Entrypoint",
    "Env",
    "ExecForm",
    "Expose",
    "From",
    "Healthcheck",
    "Instruction",
    "KeyValue",
    "Label",
    "Location",
    "Maintainer",
    "Onbuild",
    "Run",
    "Shell",
    "ShellForm",
    "SourceContent",
    "StopSignal",
    "User",
    "Volume",
    "Workdir",
    "instruction_from_node",
    "node_location",
]

INSTRUCTION_NAMES = (
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
)
"""Every instruction keyword, upper-case."""

MINIMUM_DURATION_NS = 1_000_000
"""HEALTHCHECK durations other than 0 must be at least 1ms (docker's ``MinimumDuration``)."""

# Patterns compiled on first use (by ``re``'s cache), not at import.
_STAGE_NAME = r"[a-z][a-z0-9-_.]*"
_ONBUILD_PREFIX = r"^[\t\n\f\r ]*onbuild[\t\n\f\r ]*"
_INT32 = r"[+-]?[0-9]+"


# -- values ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where an instruction is: file, first and last line (1-based) and its first line's text."""

    path: str
    line: int
    end_line: int
    text: str = ""

    def error(self, problem: str) -> DockerfileSyntaxError:
        """A ``DockerfileSyntaxError`` about ``problem`` at this location."""
        return DockerfileSyntaxError(problem, self.path, self.line, self.end_line, self.text)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class ShellForm:
    """A command in shell form, run as ``SHELL + [command]`` (``/bin/sh -c command``)."""

    command: str


@dataclass(frozen=True)
class ExecForm:
    """A command in exec (JSON) form: the argv itself, no shell."""

    argv: tuple[str, ...]


Command: TypeAlias = ShellForm | ExecForm


@dataclass(frozen=True)
class KeyValue:
    """One ``key=value`` of ``ENV`` or ``LABEL`` (quotes and variables still as written)."""

    key: str
    value: str


@dataclass(frozen=True)
class ArgDecl:
    """One name of an ``ARG``, with its default value (``None``: declared without one)."""

    name: str
    default: str | None = None


@dataclass(frozen=True)
class SourceContent:
    """A ``COPY``/``ADD`` source given inline as a heredoc: file ``path`` with ``data``.

    ``data`` is already chomped for ``<<-``; ``expand`` says whether variables in it are
    substituted (the heredoc word was not quoted).
    """

    path: str
    data: str
    expand: bool = True


# -- instructions ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """Base of every instruction: its ``keyword`` (class-level) and ``location``."""

    keyword: ClassVar[str] = ""
    location: Location


@dataclass(frozen=True, kw_only=True)
class From(Instruction):
    """``FROM [--platform=P] base [AS name]``: starts a stage; ``name`` is lower-cased."""

    keyword: ClassVar[str] = "FROM"
    base: str
    name: str | None = None
    platform: str | None = None


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    """``ARG name[=default] ...``."""

    keyword: ClassVar[str] = "ARG"
    args: tuple[ArgDecl, ...]


@dataclass(frozen=True, kw_only=True)
class Env(Instruction):
    """``ENV key=value ...`` (or the legacy ``ENV key value``, ``legacy=True``)."""

    keyword: ClassVar[str] = "ENV"
    pairs: tuple[KeyValue, ...]
    legacy: bool = False


@dataclass(frozen=True, kw_only=True)
class Label(Instruction):
    """``LABEL key=value ...`` (or the legacy ``LABEL key value``, ``legacy=True``)."""

    keyword: ClassVar[str] = "LABEL"
    pairs: tuple[KeyValue, ...]
    legacy: bool = False


@dataclass(frozen=True, kw_only=True)
class Maintainer(Instruction):
    """``MAINTAINER name`` (deprecated; docker turns it into the ``author`` field)."""

    keyword: ClassVar[str] = "MAINTAINER"
    name: str


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    """``WORKDIR path``."""

    keyword: ClassVar[str] = "WORKDIR"
    path: str


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    """``USER user[:group]``."""

    keyword: ClassVar[str] = "USER"
    user: str


@dataclass(frozen=True, kw_only=True)
class Run(Instruction):
    """``RUN [--mount=...] [--network=...] [--security=...] command``.

    ``mounts`` are parsed as written (see ``flags.parse_mount``); ``mount_specs`` keeps every
    ``--mount=`` text so ``expand`` can parse them again with variables substituted.
    ``heredocs`` are the here-documents named on the line, content as written.
    """

    keyword: ClassVar[str] = "RUN"
    command: Command
    mounts: tuple[Mount, ...] = ()
    mount_specs: tuple[str, ...] = ()
    network: str | None = None
    security: str | None = None
    heredocs: tuple[Heredoc, ...] = ()

    def shebang_heredoc(self) -> Heredoc | None:
        """The heredoc to run as a script file: ``RUN <<EOF`` alone, content starting ``#!``."""
        if (
            isinstance(self.command, ShellForm)
            and len(self.heredocs) >= 1
            and parse_heredoc(self.command.command) is not None
            and self.heredocs[0].content.startswith("#!")
        ):
            return self.heredocs[0]
        return None

    def shell_script(self) -> str | None:
        """The text the shell runs for a shell-form RUN with heredocs folded in, as buildkit does.

        ``RUN <<EOF`` alone runs the (chomped) content; otherwise each heredoc's content and
        terminator are appended to the command line so the shell reads them as its own
        here-documents. ``None`` for exec form.
        """
        if not isinstance(self.command, ShellForm):
            return None
        if not self.heredocs:
            return self.command.command
        if parse_heredoc(self.command.command) is not None:
            return self.heredocs[0].chomped()
        full = self.command.command
        for heredoc in self.heredocs:
            full += "\n" + heredoc.content + heredoc.name
        return full


@dataclass(frozen=True, kw_only=True)
class Copy(Instruction):
    """``COPY [--from=] [--chown=] [--chmod=] [--link] [--parents] [--exclude=] src... dest``."""

    keyword: ClassVar[str] = "COPY"
    sources: tuple[str, ...]
    dest: str
    contents: tuple[SourceContent, ...] = ()
    from_: str | None = None
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    parents: bool = False
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Add(Instruction):
    """``ADD [--chown=] [--chmod=] [--link] [--keep-git-dir] [--checksum=] [--exclude=] src dest``.

    Sources may be URLs and git repositories as well as context paths.
    """

    keyword: ClassVar[str] = "ADD"
    sources: tuple[str, ...]
    dest: str
    contents: tuple[SourceContent, ...] = ()
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    keep_git_dir: bool = False
    checksum: str | None = None
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Cmd(Instruction):
    """``CMD ["exec", "form"]`` or ``CMD shell form``."""

    keyword: ClassVar[str] = "CMD"
    command: Command


@dataclass(frozen=True, kw_only=True)
class Entrypoint(Instruction):
    """``ENTRYPOINT ["exec", "form"]`` or ``ENTRYPOINT shell form``; ``[]`` resets it."""

    keyword: ClassVar[str] = "ENTRYPOINT"
    command: Command


@dataclass(frozen=True, kw_only=True)
class Shell(Instruction):
    """``SHELL ["executable", "parameters"]``: the shell for later shell-form commands."""

    keyword: ClassVar[str] = "SHELL"
    shell: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    """``EXPOSE port[/proto] ...``."""

    keyword: ClassVar[str] = "EXPOSE"
    ports: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Volume(Instruction):
    """``VOLUME path ...`` or ``VOLUME ["path", ...]``."""

    keyword: ClassVar[str] = "VOLUME"
    paths: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Healthcheck(Instruction):
    """``HEALTHCHECK NONE`` or ``HEALTHCHECK [--interval=...] CMD command``.

    ``test`` is docker's form: ``("NONE",)``, ``("CMD", argv...)`` for exec form or
    ``("CMD-SHELL", command)``. Durations are nanoseconds, 0 meaning the default.
    """

    keyword: ClassVar[str] = "HEALTHCHECK"
    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, kw_only=True)
class StopSignal(Instruction):
    """``STOPSIGNAL signal``."""

    keyword: ClassVar[str] = "STOPSIGNAL"
    signal: str


@dataclass(frozen=True, kw_only=True)
class Onbuild(Instruction):
    """``ONBUILD instruction``: ``trigger`` parsed, ``expression`` as stored in the image."""

    keyword: ClassVar[str] = "ONBUILD"
    trigger: Instruction
    expression: str


# -- node -> instruction -----------------------------------------------------------------------

_FLAGS: dict[str, dict[str, FlagKind]] = {
    "from": {"platform": "string"},
    "copy": {
        "from": "string",
        "chown": "string",
        "chmod": "string",
        "link": "bool",
        "parents": "bool",
        "exclude": "strings",
    },
    "add": {
        "chown": "string",
        "chmod": "string",
        "link": "bool",
        "keep-git-dir": "bool",
        "checksum": "string",
        "exclude": "strings",
    },
    "run": {"mount": "strings", "network": "string", "security": "string"},
    "healthcheck": {
        "interval": "string",
        "timeout": "string",
        "start-period": "string",
        "start-interval": "string",
        "retries": "string",
    },
}


def _str(values: dict[str, FlagValue], name: str) -> str | None:
    value = values.get(name)
    return value if isinstance(value, str) else None


def _strings(values: dict[str, FlagValue], name: str) -> tuple[str, ...]:
    value = values.get(name, ())
    return value if isinstance(value, tuple) else ()


def _command(node: Node) -> Command:
    if node.json:
        return ExecForm(node.args)
    return ShellForm(" ".join(node.args))


def _pairs(node: Node, keyword: str) -> tuple[tuple[KeyValue, ...], bool]:
    args = node.args
    if not args:
        raise DockerfileSyntaxError(
            f"{keyword} requires at least one argument: write {keyword} name=value"
        )
    pairs = []
    for i in range(0, len(args) - 2, 3):
        if not args[i]:
            raise DockerfileSyntaxError(
                f"{keyword} names can not be blank: write {keyword} name=value"
            )
        pairs.append(KeyValue(args[i], args[i + 1]))
    return tuple(pairs), args[2] == ""


def _one(node: Node, keyword: str, what: str) -> str:
    if len(node.args) != 1:
        raise DockerfileSyntaxError(f"{keyword} requires exactly one argument: {what}")
    return node.args[0]


def _duration(values: dict[str, FlagValue], name: str) -> int:
    text = _str(values, name)
    if not text:
        return 0
    ns = parse_go_duration(text)
    if ns is None:
        raise DockerfileSyntaxError(
            f"invalid --{name} duration {text!r}: use a number and a unit, like 30s, 1m30s or 500ms"
        )
    if ns != 0 and ns < MINIMUM_DURATION_NS:
        raise DockerfileSyntaxError(
            f"--{name}={text} is shorter than the minimum of 1ms (use 0 for the default)"
        )
    return ns


def _healthcheck(node: Node, location: Location) -> Healthcheck:
    if not node.args:
        raise DockerfileSyntaxError(
            "HEALTHCHECK requires at least one argument: HEALTHCHECK CMD command, or "
            "HEALTHCHECK NONE"
        )
    kind = node.args[0].upper()
    command = node.args[1:]
    if kind == "NONE":
        if command:
            raise DockerfileSyntaxError("HEALTHCHECK NONE takes no arguments; remove them")
        parse_flags("HEALTHCHECK NONE", node.flags, {})
        return Healthcheck(location=location, test=("NONE",))
    values = parse_flags("HEALTHCHECK", node.flags, _FLAGS["healthcheck"])
    if kind != "CMD":
        raise DockerfileSyntaxError(
            f"unknown type {node.args[0]!r} in HEALTHCHECK: use HEALTHCHECK CMD command, or "
            "HEALTHCHECK NONE"
        )
    if not command:
        raise DockerfileSyntaxError("missing command after HEALTHCHECK CMD: add the command")
    test = ("CMD", *command) if node.json else ("CMD-SHELL", " ".join(command))
    retries = 0
    retries_text = _str(values, "retries")
    if retries_text:
        if re.fullmatch(_INT32, retries_text) is None or not -(2**31) <= int(retries_text) < 2**31:
            raise DockerfileSyntaxError(
                f"invalid --retries {retries_text!r}: use a whole number, like 3"
            )
        retries = int(retries_text)
        if retries < 0:
            raise DockerfileSyntaxError(f"--retries cannot be negative ({retries})")
    return Healthcheck(
        location=location,
        test=test,
        interval=_duration(values, "interval"),
        timeout=_duration(values, "timeout"),
        start_period=_duration(values, "start-period"),
        start_interval=_duration(values, "start-interval"),
        retries=retries,
    )


def _sources(node: Node, keyword: str) -> tuple[tuple[str, ...], str, tuple[SourceContent, ...]]:
    if len(node.args) < 2:
        raise DockerfileSyntaxError(
            f"{keyword} requires at least two arguments, a source and a destination: "
            f"{keyword} src... dest"
        )
    *sources, dest = node.args
    if parse_heredoc(dest) is not None:
        raise DockerfileSyntaxError(f"{keyword} cannot accept a heredoc as a destination")
    by_name = {h.name: h for h in node.heredocs}
    paths: list[str] = []
    contents: list[SourceContent] = []
    for source in sources:
        heredoc = parse_heredoc(source)
        if heredoc is None:
            paths.append(source)
            continue
        found = by_name.get(heredoc.name)
        data = found.content if found is not None else ""
        if heredoc.chomp:
            data = chomp_heredoc(data)
        contents.append(SourceContent(heredoc.name, data, heredoc.expand))
    return tuple(paths), dest, tuple(contents)


def _run(node: Node, location: Location) -> Run:
    values = parse_flags("RUN", node.flags, _FLAGS["run"])
    if not node.args:
        raise DockerfileSyntaxError('RUN needs a command: RUN command, or RUN ["exec", "form"]')
    specs = _strings(values, "mount")
    mounts = tuple(m for m in (parse_mount(spec) for spec in specs) if m is not None)
    network = _str(values, "network")
    if network is not None and network not in NETWORK_MODES:
        raise DockerfileSyntaxError(
            f"unsupported network mode {network!r}{suggest(network, NETWORK_MODES)}; use "
            f"{', '.join(NETWORK_MODES)}"
        )
    security = _str(values, "security")
    if security is not None and security not in SECURITY_MODES:
        raise DockerfileSyntaxError(
            f"unsupported security mode {security!r}{suggest(security, SECURITY_MODES)}; use "
            f"{', '.join(SECURITY_MODES)}"
        )
    return Run(
        location=location,
        command=_command(node),
        mounts=mounts,
        mount_specs=specs,
        network=network,
        security=security,
        heredocs=node.heredocs,
    )


def _from(node: Node, location: Location) -> From:
    args = node.args
    name: str | None = None
    if len(args) == 3 and args[1].lower() == "as":
        name = go_lower(args[2])
        if re.fullmatch(_STAGE_NAME, name) is None:
            raise DockerfileSyntaxError(
                f"invalid name for build stage: {args[2]!r}; a name starts with a letter and "
                "has only letters, digits, '-', '_' and '.'"
            )
    elif len(args) != 1:
        raise DockerfileSyntaxError(
            "FROM requires either one or three arguments: FROM image [AS name]"
        )
    values = parse_flags("FROM", node.flags, _FLAGS["from"])
    return From(location=location, base=args[0], name=name, platform=_str(values, "platform"))


def _onbuild(node: Node, location: Location) -> Onbuild:
    parse_flags("ONBUILD", node.flags, {})
    child = node.child
    if child is None:
        raise DockerfileSyntaxError(
            "ONBUILD requires at least one argument: the instruction to run later"
        )
    trigger = child.keyword.strip().upper()
    if trigger == "ONBUILD":
        raise DockerfileSyntaxError("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("FROM", "MAINTAINER"):
        raise DockerfileSyntaxError(f"{trigger} isn't allowed as an ONBUILD trigger")
    expression = re.sub(_ONBUILD_PREFIX, "", node.original, count=1, flags=re.IGNORECASE)
    for heredoc in node.heredocs:
        expression += "\n" + heredoc.content + heredoc.name
    nested = Node(
        child.keyword,
        child.args,
        child.flags,
        None,
        child.json,
        node.heredocs,
        node.start_line,
        node.end_line,
        child.original,
    )
    return Onbuild(location=location, trigger=_instruction(nested, location), expression=expression)


def _instruction(node: Node, location: Location) -> Instruction:
    command = node.command
    if command == "from":
        return _from(node, location)
    if command == "run":
        return _run(node, location)
    if command == "healthcheck":
        return _healthcheck(node, location)
    if command == "onbuild":
        return _onbuild(node, location)
    if command in ("copy", "add"):
        keyword = command.upper()
        values = parse_flags(keyword, node.flags, _FLAGS[command])
        sources, dest, contents = _sources(node, keyword)
        if command == "copy":
            return Copy(
                location=location,
                sources=sources,
                dest=dest,
                contents=contents,
                from_=_str(values, "from"),
                chown=_str(values, "chown"),
                chmod=_str(values, "chmod"),
                link=values.get("link") is True,
                parents=values.get("parents") is True,
                excludes=_strings(values, "exclude"),
            )
        return Add(
            location=location,
            sources=sources,
            dest=dest,
            contents=contents,
            chown=_str(values, "chown"),
            chmod=_str(values, "chmod"),
            link=values.get("link") is True,
            keep_git_dir=values.get("keep-git-dir") is True,
            checksum=_str(values, "checksum"),
            excludes=_strings(values, "exclude"),
        )
    if command not in KNOWN_COMMANDS:
        upper = node.keyword.upper()
        hint = suggest(upper, INSTRUCTION_NAMES) or (
            f"; the instructions are {', '.join(INSTRUCTION_NAMES)}"
        )
        raise DockerfileSyntaxError(f"unknown instruction {node.keyword!r}{hint}")
    keyword = command.upper()
    parse_flags(keyword, node.flags, {})
    args = node.args
    if command == "arg":
        if not args:
            raise DockerfileSyntaxError("ARG requires at least one argument: ARG name[=default]")
        decls = []
        for word in args:
            name, eq, value = word.partition("=")
            if eq and not name:
                raise DockerfileSyntaxError(
                    f"ARG names can not be blank in {word!r}: write ARG name=default"
                )
            decls.append(ArgDecl(name, value if eq else None))
        return Arg(location=location, args=tuple(decls))
    if command in ("env", "label"):
        pairs, legacy = _pairs(node, keyword)
        if command == "env":
            return Env(location=location, pairs=pairs, legacy=legacy)
        return Label(location=location, pairs=pairs, legacy=legacy)
    if command == "maintainer":
        return Maintainer(location=location, name=_one(node, keyword, "MAINTAINER name"))
    if command == "workdir":
        return Workdir(location=location, path=_one(node, keyword, "the directory"))
    if command == "user":
        return User(location=location, user=_one(node, keyword, "USER name[:group]"))
    if command == "stopsignal":
        return StopSignal(location=location, signal=_one(node, keyword, "STOPSIGNAL SIGTERM"))
    if command == "cmd":
        return Cmd(location=location, command=_command(node))
    if command == "entrypoint":
        return Entrypoint(location=location, command=_command(node))
    if command == "shell":
        if not args:
            raise DockerfileSyntaxError(
                'SHELL requires at least one argument: SHELL ["/bin/sh", "-c"]'
            )
        if not node.json:
            raise DockerfileSyntaxError(
                'SHELL requires the arguments to be in JSON form: SHELL ["executable", "param"]'
            )
        return Shell(location=location, shell=args)
    if command == "expose":
        if not args:
            raise DockerfileSyntaxError("EXPOSE requires at least one argument: EXPOSE 80/tcp")
        return Expose(location=location, ports=args)
    # volume
    if not args:
        raise DockerfileSyntaxError("VOLUME requires at least one argument: VOLUME /data")
    paths = tuple(a.strip() for a in args)
    if any(p == "" for p in paths):
        raise DockerfileSyntaxError("VOLUME specified can not be an empty string")
    return Volume(location=location, paths=paths)


def node_location(node: Node, result: ParseResult) -> Location:
    """The location of ``node`` in the file ``result`` was parsed from.

    The text shown is the physical line, or the joined logical line when the instruction
    continues over several lines.
    """
    text = result.line_text(node.start_line)
    if text.rstrip().endswith(result.escape) and node.original:
        text = node.original
    return Location(result.path, node.start_line, node.end_line, text)


def instruction_from_node(node: Node, result: ParseResult) -> Instruction:
    """The typed instruction for one node of ``result``; raise a located error if invalid."""
    location = node_location(node, result)
    try:
        return _instruction(node, location)
    except DockerfileSyntaxError as exc:
        if exc.path is not None:
            raise
        raise location.error(exc.problem) from None
