"""What each Dockerfile instruction does to the image config, and how history describes it (pure).

``apply_instruction`` follows docker's dispatchers: ``ENV`` replaces a variable in place or
appends it, ``WORKDIR`` resolves a relative path against the current one, shell-form ``CMD`` and
``ENTRYPOINT`` run through ``SHELL`` (``/bin/sh -c`` by default), an ``ENTRYPOINT`` clears a
``CMD`` inherited from the base image (not one set earlier in the same stage), ``EXPOSE`` ports are
normalised to ``port/proto`` with ranges expanded, ``HEALTHCHECK NONE`` disables a base image's
check, ``ONBUILD`` records its trigger, ``MAINTAINER`` sets the author.
"""

from __future__ import annotations

import json
import re

from pytest_minidock._record import replace
from pytest_minidock.build.rootfs import clean_path
from pytest_minidock.dockerfile.instructions import (
    Arg,
    Cmd,
    Entrypoint,
    Env,
    ExecForm,
    Expose,
    Healthcheck,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    ShellForm,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from pytest_minidock.image.model import Healthcheck as ImageHealthcheck

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from pytest_minidock.build.plan import Pairs
    from pytest_minidock.dockerfile.instructions import Command, Instruction
    from pytest_minidock.image.model import ContainerConfig

__all__ = [
    "DEFAULT_SHELL",
    "apply_instruction",
    "command_argv",
    "created_by",
    "expose_ports",
    "join_workdir",
    "run_description",
    "set_env",
]

DEFAULT_SHELL = ("/bin/sh", "-c")
"""The shell of shell-form commands unless ``SHELL`` says otherwise."""

_PORT = r"(\d+)(?:-(\d+))?(?:/([A-Za-z]+))?"  # compiled on first use
_PROTOCOLS = ("tcp", "udp", "sctp")


def join_workdir(current: str, path: str) -> str:
    """``WORKDIR path`` after ``current`` (``""`` is ``/``): absolute, clean."""
    if path.startswith("/"):
        return clean_path(path)
    return clean_path((current or "/") + "/" + path)


def set_env(env: tuple[str, ...], key: str, value: str) -> tuple[str, ...]:
    """``env`` with ``key`` set: replaced where it was, else appended."""
    out = list(env)
    for i, item in enumerate(out):
        if item.partition("=")[0] == key:
            out[i] = f"{key}={value}"
            return tuple(out)
    out.append(f"{key}={value}")
    return tuple(out)


def expose_ports(ports: tuple[str, ...]) -> tuple[str, ...]:
    """``EXPOSE`` words as ``port/proto`` (``80`` is ``80/tcp``; ``8000-8002`` is three).

    Raises ``ValueError`` naming a word that is no port.
    """
    out: list[str] = []
    for word in ports:
        match = re.fullmatch(_PORT, word)
        if match is None:
            raise ValueError(f"invalid port {word!r} for EXPOSE: use PORT[/PROTOCOL] like 80/tcp")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        proto = (match.group(3) or "tcp").lower()
        if proto not in _PROTOCOLS:
            raise ValueError(
                f"invalid protocol {match.group(3)!r} in EXPOSE {word}: use tcp, udp or sctp"
            )
        if not (0 < low <= 65535 and 0 < high <= 65535) or high < low:
            raise ValueError(f"invalid port range {word!r} for EXPOSE: ports are 1 to 65535")
        out.extend(f"{port}/{proto}" for port in range(low, high + 1))
    return tuple(out)


def command_argv(command: Command, shell: tuple[str, ...] | None) -> tuple[str, ...]:
    """The argv of a ``CMD``/``ENTRYPOINT``/``RUN`` command: exec form as is, shell form through
    ``shell``."""
    if isinstance(command, ExecForm):
        return command.argv
    return (*(shell or DEFAULT_SHELL), command.command)


def apply_instruction(
    config: ContainerConfig, instruction: Instruction, *, cmd_set: bool
) -> tuple[ContainerConfig, bool, str | None]:
    """The config after ``instruction`` (already expanded), whether the stage has set ``CMD``
    now, and the new author (``MAINTAINER``) or ``None``.

    Instructions that only make a layer (``RUN``, ``COPY``, ``ADD``) or no change (``ARG``)
    return ``config`` unchanged. Raises ``ValueError`` for an ``EXPOSE`` word that is no port.
    """
    if isinstance(instruction, Env):
        env = config.env
        for pair in instruction.pairs:
            env = set_env(env, pair.key, pair.value)
        return replace(config, env=env), cmd_set, None
    if isinstance(instruction, Label):
        labels = dict(config.labels)
        for pair in instruction.pairs:
            labels[pair.key] = pair.value
        return replace(config, labels=labels), cmd_set, None
    if isinstance(instruction, Workdir):
        return (
            replace(config, working_dir=join_workdir(config.working_dir, instruction.path)),
            cmd_set,
            None,
        )
    if isinstance(instruction, User):
        return replace(config, user=instruction.user), cmd_set, None
    if isinstance(instruction, Cmd):
        return replace(config, cmd=command_argv(instruction.command, config.shell)), True, None
    if isinstance(instruction, Entrypoint):
        argv = command_argv(instruction.command, config.shell)
        cmd = config.cmd if cmd_set else None
        return replace(config, entrypoint=argv or None, cmd=cmd), cmd_set, None
    if isinstance(instruction, Shell):
        return replace(config, shell=instruction.shell), cmd_set, None
    if isinstance(instruction, Expose):
        ports = set(config.exposed_ports) | set(expose_ports(instruction.ports))
        return replace(config, exposed_ports=tuple(sorted(ports))), cmd_set, None
    if isinstance(instruction, Volume):
        volumes = set(config.volumes) | set(instruction.paths)
        return replace(config, volumes=tuple(sorted(volumes))), cmd_set, None
    if isinstance(instruction, Healthcheck):
        check = ImageHealthcheck(
            test=instruction.test,
            interval=instruction.interval,
            timeout=instruction.timeout,
            start_period=instruction.start_period,
            start_interval=instruction.start_interval,
            retries=instruction.retries,
        )
        return replace(config, healthcheck=check), cmd_set, None
    if isinstance(instruction, StopSignal):
        return replace(config, stop_signal=instruction.signal), cmd_set, None
    if isinstance(instruction, Onbuild):
        return replace(config, on_build=(*config.on_build, instruction.expression)), cmd_set, None
    if isinstance(instruction, Maintainer):
        return config, cmd_set, instruction.name
    return config, cmd_set, None


def run_description(argv: tuple[str, ...], args: Pairs) -> str:
    """How docker's history shows a ``RUN``: ``|N K=V … argv``, the build args first."""
    words = " ".join(argv)
    if not args:
        return words
    return f"|{len(args)} " + " ".join(f"{k}={v}" for k, v in args) + " " + words


def created_by(
    instruction: Instruction,
    *,
    shell: tuple[str, ...] | None = None,
    args: Pairs = (),
    content: str = "",
) -> str:
    """The ``created_by`` of the history entry ``instruction`` makes (docker's wording).

    ``content``: for ``COPY``/``ADD``, ``kind:hex`` of what was copied (``file:…``, ``dir:…``,
    ``multi:…``).
    """
    keyword = instruction.keyword
    if isinstance(instruction, Run):
        if isinstance(instruction.command, ShellForm):
            script = instruction.shell_script() or instruction.command.command
            argv = (*(shell or DEFAULT_SHELL), script)
        else:
            argv = instruction.command.argv
        return f"RUN {run_description(argv, args)}"
    if keyword in ("COPY", "ADD"):
        dest = getattr(instruction, "dest", "")
        return f"{keyword} {content} in {dest}"
    if isinstance(instruction, Env | Label):
        return f"{keyword} " + " ".join(f"{p.key}={p.value}" for p in instruction.pairs)
    if isinstance(instruction, Arg):
        return "ARG " + " ".join(
            d.name if d.default is None else f"{d.name}={d.default}" for d in instruction.args
        )
    if isinstance(instruction, Workdir):
        return f"WORKDIR {instruction.path}"
    if isinstance(instruction, User):
        return f"USER {instruction.user}"
    if isinstance(instruction, Cmd | Entrypoint):
        return f"{keyword} {json.dumps(list(command_argv(instruction.command, shell)))}"
    if isinstance(instruction, Shell):
        return f"SHELL {json.dumps(list(instruction.shell))}"
    if isinstance(instruction, Expose):
        try:
            return "EXPOSE " + " ".join(expose_ports(instruction.ports))
        except ValueError:  # reported with its location when the config is applied
            return "EXPOSE " + " ".join(instruction.ports)
    if isinstance(instruction, Volume):
        return f"VOLUME {json.dumps(list(instruction.paths))}"
    if isinstance(instruction, Healthcheck):
        return f"HEALTHCHECK {json.dumps(list(instruction.test))}"
    if isinstance(instruction, StopSignal):
        return f"STOPSIGNAL {instruction.signal}"
    if isinstance(instruction, Onbuild):
        return f"ONBUILD {instruction.expression}"
    if isinstance(instruction, Maintainer):
        return f"MAINTAINER {instruction.name}"
    return keyword
