"""Flag tables: each builds a subcommand's argparse parser and is read directly by
:func:`quick_parse`, so that an everyday ``minidock run``, ``create`` or ``build`` starts without
argparse.

Importing argparse (with the ``gettext`` and ``locale`` it pulls in) and building a parser
costs a command ~10 ms here: a sixth of a ``minidock run --rm busybox true``, half of a
``minidock build`` answered from its memo. :func:`quick_parse` understands the common
spellings of flags (``--rm``, ``-it``, ``-e K=V``, ``--name=web``, ``-p8080:80``) and returns
None for anything else: ``--help``, an unknown or abbreviated option, a value that looks like
an option (``-e -x``), ``--``, a number or choice argparse would refuse. The caller then parses
with argparse, which gives the same result or the usual usage error.
``tests/unit/test_quick_flags.py`` and ``test_build_cli_quick.py`` check that both agree.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~4 ms
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

__all__ = ["DETACH", "RUN_FLAGS", "Args", "Flag", "add_flags", "add_run_flags", "quick_parse"]


class Flag:
    """One option of a subcommand: its spellings, where argparse stores it, and how it reads it.

    ``kind`` is ``flag`` (store_true), ``value`` (store), ``append``, ``int`` (a value read with
    ``int``), ``choice`` (a value in ``choices``) or ``help``."""

    __slots__ = ("choices", "default", "dest", "help", "kind", "metavar", "names")

    def __init__(
        self,
        names: tuple[str, ...],
        kind: str,
        help: str | None,
        *,
        default: Any = None,
        choices: tuple[str, ...] = (),
        metavar: str | None = None,
    ) -> None:
        self.names = names
        self.kind = kind
        self.help = help
        self.default = default
        self.choices = choices
        self.metavar = metavar
        self.dest = next((n for n in names if n.startswith("--")), names[0])[2:].replace("-", "_")


RUN_FLAGS: tuple[Flag, ...] = (
    Flag(("--help",), "help", "show this help message and exit"),
    Flag(("--name",), "value", "assign a name to the container"),
    Flag(("--rm",), "flag", "remove the container when it exits"),
    Flag(("-e", "--env"), "append", "set environment variables"),
    Flag(("--env-file",), "append", "read a file of variables"),
    Flag(("-w", "--workdir"), "value", "working directory inside the container"),
    Flag(("-u", "--user"), "value", "username or UID (format: name|uid[:group|gid])"),
    Flag(("--entrypoint",), "value", "overwrite the default ENTRYPOINT of the image"),
    Flag(("-h", "--hostname"), "value", "container host name"),
    Flag(("-i", "--interactive"), "flag", "keep STDIN open"),
    Flag(("-t", "--tty"), "flag", "allocate a pseudo-TTY"),
    Flag(("-v", "--volume"), "append", "bind mount a volume"),
    Flag(("--tmpfs",), "append", "mount a tmpfs directory"),
    Flag(("--read-only",), "flag", "mount the root filesystem read-only"),
    Flag(("--init",), "flag", "run an init that forwards signals and reaps"),
    Flag(("-m", "--memory"), "value", "memory limit (e.g. 512m)"),
    Flag(("--cpus",), "value", "number of CPUs (e.g. 1.5)"),
    Flag(("--pids-limit",), "int", "process limit"),
    Flag(
        ("--network", "--net"),
        "value",
        "connect to a network: bridge (default), none, host or a network's name",
        default="default",
    ),
    Flag(("--network-alias",), "append", "another name on the network"),
    Flag(
        ("-p", "--publish"),
        "append",
        "publish a container's port to the host (default host IP 127.0.0.1; 0 = any)",
        metavar="[IP:][HOSTPORT:]PORT[/PROTO]",
    ),
    Flag(("-P", "--publish-all"), "flag", "publish every exposed port, ephemeral"),
    Flag(("--privileged",), "flag", "give extended privileges"),
    Flag(("--cap-add",), "append", "add Linux capabilities"),
    Flag(("--cap-drop",), "append", "drop Linux capabilities"),
    Flag(("-l", "--label"), "append", "set metadata"),
    Flag(("--stop-signal",), "value", "signal to stop the container"),
    Flag(("--stop-timeout",), "int", "seconds to wait before killing on stop"),
    Flag(
        ("--pull",),
        "choice",
        "pull the image before creating: missing (default), always, never",
        default="missing",
        choices=("missing", "always", "never"),
    ),
)
"""The options ``run`` and ``create`` share, in help order (``run`` adds ``-d``)."""

DETACH = Flag(("-d", "--detach"), "flag", "run in the background")


def add_flags(p: argparse.ArgumentParser, flags: Sequence[Flag]) -> None:
    """Add ``flags`` to ``p`` as argparse options."""
    for flag in flags:
        kw: dict[str, Any] = {} if flag.help is None else {"help": flag.help}
        if flag.kind == "help":
            kw["action"] = "help"
        elif flag.kind == "flag":
            kw["action"] = "store_true"
        elif flag.kind == "append":
            kw.update(action="append", default=[])
        else:
            kw["default"] = flag.default
            if flag.kind == "int":
                kw["type"] = int
            elif flag.kind == "choice":
                kw["choices"] = flag.choices
        if flag.metavar:
            kw["metavar"] = flag.metavar
        p.add_argument(*flag.names, **kw)


def add_run_flags(p: argparse.ArgumentParser, *, detach: bool) -> None:
    """Add :data:`RUN_FLAGS` (and ``-d`` for ``run``), the image and the command to ``p``."""
    import argparse

    add_flags(p, (*RUN_FLAGS, DETACH) if detach else RUN_FLAGS)
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(error_code=125)


class Args:
    """The parsed command line, as argparse's ``Namespace`` would hold it."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    if TYPE_CHECKING:  # (as typeshed types argparse's Namespace)

        def __getattr__(self, name: str) -> Any: ...

    def __repr__(self) -> str:
        return f"Args({', '.join(f'{k}={v!r}' for k, v in sorted(self.__dict__.items()))})"


def _table(flags: Sequence[Flag]) -> tuple[dict[str, Flag], dict[str, Flag]]:
    longs: dict[str, Flag] = {}
    shorts: dict[str, Flag] = {}
    for flag in flags:
        for name in flag.names:
            if name.startswith("--"):
                longs[name] = flag
            else:
                shorts[name[1]] = flag
    return longs, shorts


def quick_parse(
    argv: Sequence[str], flags: Sequence[Flag], *, positional: str
) -> dict[str, Any] | None:
    """The values argparse would give ``argv`` (a subcommand's arguments) for ``flags`` and
    one positional, or None to let argparse parse them. ``positional`` is ``image`` for
    ``run``/``create`` (the first argument that is not an option; all after it are the
    ``command``, as argparse's ``REMAINDER`` has it) or another name for one argument that
    options may follow (``build``'s ``context``)."""
    longs, shorts = _table(flags)
    values: dict[str, Any] = {}
    for option in flags:
        if option.kind == "append":
            values[option.dest] = []
        elif option.kind == "flag":
            values[option.dest] = False
        elif option.kind != "help":
            values[option.dest] = option.default
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-"):
            if positional in values:
                return None  # a second one: argparse says so
            values[positional] = arg
            if positional == "image":
                if "--" in argv[i:]:  # (argparse may drop it from the command)
                    return None
                values["command"] = list(argv[i:])
                return values
            continue
        if arg in {"-", "--"} or arg.startswith("---"):
            return None
        if arg.startswith("--"):
            name, eq, inline = arg.partition("=")
            flag = longs.get(name)
            if flag is None or flag.kind == "help" or (eq and flag.kind == "flag"):
                return None
            if flag.kind == "flag":
                values[flag.dest] = True
                continue
            if not eq:
                if i == len(argv) or argv[i].startswith("-"):
                    return None
                inline = argv[i]
                i += 1
            if not _store(values, flag, inline):
                return None
            continue
        if "=" in arg:  # argparse reads ``-e=X`` as X, ``-eA=B`` as A=B, ``-it=X`` as an error
            flag = shorts.get(arg[1])
            if flag is None or flag.kind in ("flag", "help"):
                return None
            if not _store(values, flag, arg[3:] if arg[2] == "=" else arg[2:]):
                return None
            continue
        j = 1
        while j < len(arg):
            flag = shorts.get(arg[j])
            if flag is None:
                return None
            j += 1
            if flag.kind == "flag":
                values[flag.dest] = True
                continue
            inline = arg[j:]
            if not inline:
                if i == len(argv) or argv[i].startswith("-"):
                    return None
                inline = argv[i]
                i += 1
            if not _store(values, flag, inline):
                return None
            break
    return values if positional in values and positional != "image" else None


def _store(values: dict[str, Any], flag: Flag, text: str) -> bool:
    """Store ``text`` for ``flag``; False when argparse would refuse it (or might read it
    otherwise: it drops a ``--`` value)."""
    if text == "--":
        return False
    if flag.kind == "append":
        values[flag.dest].append(text)
    elif flag.kind == "int":
        try:
            values[flag.dest] = int(text)
        except ValueError:
            return False
    elif flag.kind == "choice":
        if text not in flag.choices:
            return False
        values[flag.dest] = text
    else:
        values[flag.dest] = text
    return True
