"""Variable scoping and substitution for a build: what each instruction sees and uses.

``shell`` knows *how* ``$VAR`` is substituted; this module knows *which* variables are in scope
where, following docker's rules:

* Instructions that substitute variables: ``ADD``, ``COPY`` (sources, destination, ``--from``,
  ``--chown``, ``--chmod``, ``--checksum``, ``--exclude`` and the content of unquoted heredocs),
  ``ENV`` and ``LABEL`` (keys and values), ``ARG`` defaults, ``EXPOSE`` (split into words),
  ``STOPSIGNAL``, ``USER``, ``VOLUME``, ``WORKDIR`` and the values of ``RUN --mount``.
  ``RUN``, ``CMD``, ``ENTRYPOINT``, ``SHELL`` and ``HEALTHCHECK`` commands are left to the
  shell; ``ONBUILD`` triggers are substituted when they fire in a child build.
* ``FROM`` (image and ``--platform``) sees only the global ``ARG`` lines declared before the first
  ``FROM``, plus the automatic platform arguments ``BUILDPLATFORM``, ``BUILDOS``,
  ``BUILDARCH``, ``BUILDVARIANT``, ``TARGETPLATFORM``, ``TARGETOS``, ``TARGETARCH`` and
  ``TARGETVARIANT`` (``linux/amd64`` here unless told otherwise).
* Inside a stage an ``ARG`` is in scope from its declaration to the end of the stage. Its value
  is the ``--build-arg`` if one is given, else its default (itself substituted), else -- for
  ``ARG NAME`` with no default -- the global ``ARG`` or automatic argument of that name. Global
  and automatic arguments are not visible in a stage until re-declared that way.
* ``ENV`` values (and the base image's environment) always win over an ``ARG`` of the same name.
  All pairs of one ``ENV`` see the environment from before it.
* The proxy arguments (``HTTP_PROXY``, ``https_proxy``, ``NO_PROXY`` ... ) need no ``ARG``: when
  given as build arguments they are set in the environment of every ``RUN`` without counting
  in its cache key, unless declared with ``ARG``.

``expand_stage`` is the pure function the builder calls: a stage and the build arguments in,
the expanded instructions out, each ``Step`` saying which build arguments it used (for a
``RUN``: every ``ARG`` in effect, since they become its environment -- docker counts an
``ARG`` in the cache key from its declaration onward; for the others: the ones substituted).
"""

from __future__ import annotations

from contextlib import contextmanager

from pytest_minidock._record import dataclass, replace
from pytest_minidock.dockerfile.flags import Mount, parse_mount
from pytest_minidock.dockerfile.instructions import (
    Add,
    Arg,
    ArgDecl,
    Copy,
    Env,
    Expose,
    Instruction,
    KeyValue,
    Label,
    Location,
    Run,
    SourceContent,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from pytest_minidock.dockerfile.shell import Lexer
from pytest_minidock.dockerfile.stages import Dockerfile, Stage
from pytest_minidock.errors import DockerfileSyntaxError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

__all__ = [
    "DEFAULT_PLATFORM",
    "PROXY_ARGS",
    "ExpandedStage",
    "Step",
    "expand_from",
    "expand_stage",
    "global_args",
    "platform_args",
    "unconsumed_build_args",
]

DEFAULT_PLATFORM = "linux/amd64"
"""The build and target platform unless the caller says otherwise."""

PROXY_ARGS = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)
"""Predefined build arguments usable in ``RUN`` without an ``ARG``."""

_HEREDOC_LEXER = Lexer(skip_process_quotes=True)

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Step:
    """One instruction of a stage after substitution, with the build arguments it depends on.

    ``args`` are the ``(name, value)`` build arguments that count in the step's cache key,
    sorted by name. ``run_env`` (``RUN`` only) is what the command gets in its environment on
    top of the image's: the ``ARG`` values in effect and the proxy arguments.
    """

    instruction: Instruction
    original: Instruction
    args: Pairs = ()
    run_env: Pairs = ()


@dataclass(frozen=True)
class ExpandedStage:
    """A stage after substitution: base image, platform and steps, plus what FROM used."""

    stage: Stage
    base: str
    platform: str | None
    from_args: Pairs
    steps: tuple[Step, ...]


def _split_platform(text: str) -> tuple[str, str, str]:
    parts = text.split("/")
    os_name = parts[0] if parts else ""
    arch = parts[1] if len(parts) > 1 else ""
    variant = parts[2] if len(parts) > 2 else ""
    return os_name, arch, variant


def platform_args(
    platform: str = DEFAULT_PLATFORM, build_platform: str = DEFAULT_PLATFORM
) -> dict[str, str]:
    """The automatic ``TARGET*`` and ``BUILD*`` arguments for ``os/arch[/variant]`` platforms."""
    values: dict[str, str] = {}
    for prefix, text in (("BUILD", build_platform), ("TARGET", platform)):
        os_name, arch, variant = _split_platform(text)
        values[f"{prefix}PLATFORM"] = text
        values[f"{prefix}OS"] = os_name
        values[f"{prefix}OSVERSION"] = ""
        values[f"{prefix}ARCH"] = arch
        values[f"{prefix}VARIANT"] = variant
    return values


@contextmanager
def _at(location: Location) -> Iterator[None]:
    """Give a ``DockerfileSyntaxError`` raised inside without a location this one."""
    try:
        yield
    except DockerfileSyntaxError as exc:
        if exc.path is not None:
            raise
        raise location.error(exc.problem) from None


def global_args(
    dockerfile: Dockerfile,
    build_args: Mapping[str, str] | None = None,
    *,
    platform: str = DEFAULT_PLATFORM,
    build_platform: str = DEFAULT_PLATFORM,
) -> dict[str, str]:
    """The variables ``FROM`` lines see: automatic platform arguments, then global ``ARG`` lines.

    A global ``ARG`` takes its ``--build-arg`` value if given, else its default substituted
    with the global arguments before it; one with neither stays unset.
    """
    build_args = build_args or {}
    lexer = Lexer(escape=dockerfile.escape)
    values = platform_args(platform, build_platform)
    for name in values:
        if name in build_args:
            values[name] = build_args[name]
    for arg in dockerfile.global_args:
        for decl in arg.args:
            if decl.name in build_args:
                values[decl.name] = build_args[decl.name]
            elif decl.default is not None:
                with _at(arg.location):
                    values[decl.name] = lexer.word(decl.default, values)
    return values


def expand_from(
    dockerfile: Dockerfile,
    stage: Stage,
    build_args: Mapping[str, str] | None = None,
    *,
    platform: str = DEFAULT_PLATFORM,
    build_platform: str = DEFAULT_PLATFORM,
) -> tuple[str, str | None, Pairs]:
    """The stage's base image and ``--platform`` with global arguments substituted.

    Returns ``(base, platform or None, used)`` where ``used`` are the global arguments that
    appeared. Raises ``DockerfileSyntaxError`` for a blank result.
    """
    values = global_args(dockerfile, build_args, platform=platform, build_platform=build_platform)
    lexer = Lexer(escape=dockerfile.escape)
    location = stage.location
    used: set[str] = set()

    def run(text: str) -> str:
        result = lexer.process(text, values)
        used.update(result.matched)
        return result.result

    with _at(location):
        base = run(stage.base)
    if base == "":
        raise location.error(
            f"base name ({stage.base}) should not be blank: give the ARG a default or pass "
            "--build-arg"
        )
    chosen: str | None = None
    if stage.platform is not None:
        with _at(location):
            result = run(stage.platform)
        if result == "":
            raise location.error(
                f"empty platform value from expression {stage.platform}: give the ARG a value"
            )
        chosen = result
    return base, chosen, tuple(sorted((k, values[k]) for k in used))


class _Scope:
    """The variables of one stage as its instructions are applied in order."""

    def __init__(
        self,
        dockerfile: Dockerfile,
        build_args: Mapping[str, str],
        globals_: Mapping[str, str],
        base_env: Iterable[str],
    ) -> None:
        self.lexer = Lexer(escape=dockerfile.escape)
        self.build_args = build_args
        self.globals = globals_
        self.env: dict[str, str] = {}
        for item in base_env:
            key, _, value = item.partition("=")
            self.env[key] = value
        self.args: dict[str, str | None] = {}
        self.used: set[str] = set()

    def variables(self) -> dict[str, str]:
        merged = {k: v for k, v in self.args.items() if v is not None}
        merged.update(self.env)
        return merged

    def word(self, text: str, variables: Mapping[str, str] | None = None) -> str:
        result = self.lexer.process(text, self.variables() if variables is None else variables)
        self.used.update(result.matched)
        return result.result

    def words(self, text: str) -> tuple[str, ...]:
        result = self.lexer.process(text, self.variables())
        self.used.update(result.matched)
        return result.words

    def args_in_effect(self) -> Pairs:
        return tuple(
            sorted((k, v) for k, v in self.args.items() if v is not None and k not in self.env)
        )

    def used_args(self) -> Pairs:
        return tuple(
            sorted(
                (k, v)
                for k, v in self.args.items()
                if k in self.used and v is not None and k not in self.env
            )
        )


def _expand_arg(scope: _Scope, arg: Arg) -> tuple[Arg, Pairs]:
    decls = []
    declared: dict[str, str] = {}
    for decl in arg.args:
        value: str | None
        if decl.name in scope.build_args:
            value = scope.build_args[decl.name]
        elif decl.default is not None:
            value = scope.word(decl.default)
        else:  # ARG NAME: the global of that name, else whatever NAME already was
            value = scope.globals.get(decl.name, scope.args.get(decl.name))
        scope.args[decl.name] = value
        decls.append(ArgDecl(decl.name, value))
        if value is not None and decl.name not in scope.env:
            declared[decl.name] = value
    used = dict(scope.used_args())
    used.update(declared)
    return replace(arg, args=tuple(decls)), tuple(sorted(used.items()))


def _expand_copy(scope: _Scope, inst: Copy | Add) -> Copy | Add:
    def optional(value: str | None) -> str | None:
        return None if value is None else scope.word(value)

    contents = []
    for content in inst.contents:
        data = content.data
        if content.expand:
            result = _HEREDOC_LEXER.process(data, scope.variables())
            scope.used.update(result.matched)
            data = result.result
        contents.append(SourceContent(content.path, data, content.expand))
    sources = tuple(scope.word(s) for s in inst.sources)
    dest = scope.word(inst.dest)
    chown, chmod = optional(inst.chown), optional(inst.chmod)
    excludes = tuple(scope.word(e) for e in inst.excludes)
    if isinstance(inst, Copy):
        return replace(
            inst,
            sources=sources,
            dest=dest,
            contents=tuple(contents),
            chown=chown,
            chmod=chmod,
            excludes=excludes,
            from_=optional(inst.from_),
        )
    return replace(
        inst,
        sources=sources,
        dest=dest,
        contents=tuple(contents),
        chown=chown,
        chmod=chmod,
        excludes=excludes,
        checksum=optional(inst.checksum),
    )


def _expand_run(scope: _Scope, inst: Run) -> Run:
    mounts: list[Mount] = []
    for spec in inst.mount_specs:
        mount = parse_mount(spec, scope.word)
        assert mount is not None
        mounts.append(mount)
    return replace(inst, mounts=tuple(mounts))


def _expand_one(scope: _Scope, inst: Instruction) -> tuple[Instruction, Pairs, Pairs]:
    """The expanded instruction, the build args it uses and (for RUN) its extra environment."""
    scope.used = set()
    if isinstance(inst, Arg):
        expanded_arg, used = _expand_arg(scope, inst)
        return expanded_arg, used, ()
    if isinstance(inst, Env):
        before = scope.variables()
        pairs = tuple(
            KeyValue(scope.word(p.key, before), scope.word(p.value, before)) for p in inst.pairs
        )
        used = scope.used_args()
        for pair in pairs:
            scope.env[pair.key] = pair.value
        return replace(inst, pairs=pairs), used, ()
    if isinstance(inst, Run):
        expanded_run = _expand_run(scope, inst)
        in_effect = scope.args_in_effect()
        declared = {k for k, v in scope.args.items() if v is not None}
        proxies = tuple(
            (k, scope.build_args[k])
            for k in PROXY_ARGS
            if k in scope.build_args and k not in declared and k not in scope.env
        )
        return expanded_run, in_effect, in_effect + proxies
    expanded: Instruction
    if isinstance(inst, Label):
        pairs = tuple(KeyValue(scope.word(p.key), scope.word(p.value)) for p in inst.pairs)
        expanded = replace(inst, pairs=pairs)
    elif isinstance(inst, Copy | Add):
        expanded = _expand_copy(scope, inst)
    elif isinstance(inst, Workdir):
        expanded = replace(inst, path=scope.word(inst.path))
    elif isinstance(inst, User):
        expanded = replace(inst, user=scope.word(inst.user))
    elif isinstance(inst, StopSignal):
        expanded = replace(inst, signal=scope.word(inst.signal))
    elif isinstance(inst, Volume):
        paths = tuple(scope.word(p) for p in inst.paths)
        if any(p.strip() == "" for p in paths):
            raise DockerfileSyntaxError(
                "VOLUME specified can not be an empty string (a variable expanded to nothing)"
            )
        expanded = replace(inst, paths=paths)
    elif isinstance(inst, Expose):
        ports = tuple(w for p in inst.ports for w in scope.words(p))
        if not ports:
            raise DockerfileSyntaxError("EXPOSE has no ports after variable substitution")
        expanded = replace(inst, ports=ports)
    else:
        expanded = inst  # RUN/CMD/ENTRYPOINT/SHELL/HEALTHCHECK/ONBUILD/MAINTAINER
    return expanded, scope.used_args(), ()


def expand_stage(
    dockerfile: Dockerfile,
    stage: Stage | str | int,
    build_args: Mapping[str, str] | None = None,
    *,
    base_env: Iterable[str] = (),
    platform: str = DEFAULT_PLATFORM,
    build_platform: str = DEFAULT_PLATFORM,
) -> ExpandedStage:
    """Substitute variables in every instruction of ``stage`` (a ``Stage``, name or index).

    ``build_args`` are the ``--build-arg`` values; ``base_env`` the base image's environment as
    ``KEY=value`` strings (it is in scope and wins over ``ARG`` values, like ``ENV``). Pure: the
    same inputs give the same steps. Raises ``DockerfileSyntaxError`` naming ``FILE:LINE`` for a
    bad substitution or a failed ``${VAR?message}``.
    """
    if not isinstance(stage, Stage):
        stage = dockerfile.stage(stage)
    build_args = dict(build_args or {})
    base, chosen, from_args = expand_from(
        dockerfile, stage, build_args, platform=platform, build_platform=build_platform
    )
    globals_ = global_args(dockerfile, build_args, platform=platform, build_platform=build_platform)
    scope = _Scope(dockerfile, build_args, globals_, base_env)
    steps = []
    for inst in stage.instructions:
        with _at(inst.location):
            expanded, used, run_env = _expand_one(scope, inst)
        steps.append(Step(expanded, inst, used, run_env))
    return ExpandedStage(stage, base, chosen, from_args, tuple(steps))


def unconsumed_build_args(dockerfile: Dockerfile, build_args: Mapping[str, str]) -> tuple[str, ...]:
    """Build arguments no ``ARG`` declares (docker warns "were not consumed"), sorted.

    Proxy and automatic platform arguments always count as consumed.
    """
    declared = set(PROXY_ARGS) | set(platform_args())
    for arg in dockerfile.global_args:
        declared.update(d.name for d in arg.args)
    for stage in dockerfile.stages:
        for inst in stage.instructions:
            if isinstance(inst, Arg):
                declared.update(d.name for d in inst.args)
    return tuple(sorted(set(build_args) - declared))
