"""The ``minidock`` command: docker's subcommands and flags, each a small function over the library.

Modules are imported when a subcommand needs them, so ``minidock images`` stays quick to start.
Exit status: 0 on success, 1 when minidock reports an error (printed as ``Error: …`` on stderr),
2 for bad command-line usage; ``run``/``exec``/``start -a`` exit with the container's code, and
with 125/126/127 when it cannot be started (as docker does).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not ``typing``'s (~6 ms to import; contextlib is ~1 ms more)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

__all__ = ["build_parser", "entry", "main", "quick_args"]


class _Skip:
    """Absorbs the set-up calls of a subcommand parser that this run does not need."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


def _formatter_class() -> type[argparse.HelpFormatter]:
    """argparse's help formatter, sized without ``shutil`` (argparse imports it to ask the
    terminal's width, and it pulls in zlib, bz2 and lzma: ~3 ms of every command). Made when a
    parser is built: the module does not import argparse (``quick_args``)."""
    import argparse

    class Formatter(argparse.HelpFormatter):
        def __init__(
            self,
            prog: str,
            indent_increment: int = 2,
            max_help_position: int = 24,
            width: int | None = None,
        ) -> None:
            if width is None:
                width = _terminal_columns() - 2
            super().__init__(prog, indent_increment, max_help_position, width)

    return Formatter


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: ``$COLUMNS``, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _OnlySubparsers:
    """Builds only the parser of the subcommand being run (building all of them costs ~30 ms)."""

    def __init__(self, sub: Any, only: str | None, formatter: type[argparse.HelpFormatter]) -> None:
        self._sub = sub
        self._only = only
        self._formatter = formatter

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self._only is None or name == self._only:
            kwargs.setdefault("formatter_class", self._formatter)
            return self._sub.add_parser(name, **kwargs)
        return _Skip()


def _command_name(argv: Sequence[str]) -> str | None:
    """The subcommand in ``argv`` (None when help or the version is asked for first)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--root":
            skip = True
        elif arg.startswith("--root="):
            continue
        elif arg.startswith("-"):
            return None
        else:
            return arg
    return None


_COMMANDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("images", "add_image_commands", ("images", "import", "tag", "rmi", "save", "load")),
    (
        "containers",
        "add_container_commands",
        (
            *("run", "create", "start", "ps", "exec", "logs", "stop", "kill", "rm", "wait"),
            *("inspect", "port", "top", "cp", "commit", "volume"),
        ),
    ),
    ("network", "add_network_commands", ("network",)),
    ("registry", "add_registry_commands", ("pull", "push", "login", "logout")),
    ("build", "add_build_commands", ("build", "builder")),
    ("images", "add_system_commands", ("image", "system")),
)
"""In help order: the ``pytest_minidock.cli`` module, its function adding subcommands, and the
subcommands that function adds."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``minidock`` parser; with ``only``, just that subcommand's parser is built (and only
    the module that defines it is imported)."""
    import argparse

    from pytest_minidock import __version__

    formatter = _formatter_class()
    parser = argparse.ArgumentParser(
        prog="minidock",
        description="Daemonless containers: docker's commands, no daemon.",
        formatter_class=formatter,
    )
    parser.add_argument(
        "--root",
        default=None,
        help="store root (default: $MINIDOCK_ROOT, /var/lib/minidock for root, "
        "$XDG_DATA_HOME/minidock or ~/.local/share/minidock for other users, whose "
        "containers run rootless)",
    )
    parser.add_argument("--version", action="version", version=f"minidock {__version__}")
    real = parser.add_subparsers(dest="command", metavar="COMMAND")
    real.required = True
    sub = _OnlySubparsers(real, only, formatter)
    chosen = [c for c in _COMMANDS if only in c[2]] or _COMMANDS
    for module, adder, _names in chosen:
        name = f"pytest_minidock.cli.{module}"
        __import__(name)
        getattr(sys.modules[name], adder)(sub)
    return parser


def quick_args(arguments: Sequence[str]) -> Any | None:
    """The parsed ``[--root DIR] run|create|build …`` without argparse (``cli.flags``: the
    everyday spellings of their flags), or None when argparse must parse ``arguments``."""
    root = None
    i = 0
    if arguments[:1] == ["--root"] and len(arguments) > 1 and arguments[1][:1] not in ("-", ""):
        root, i = arguments[1], 2
    elif arguments[:1] and arguments[0].startswith("--root="):
        root, i = arguments[0][len("--root=") :], 1
    command = arguments[i] if i < len(arguments) else ""
    if command not in ("run", "create", "build"):
        return None
    from pytest_minidock.cli.flags import DETACH, RUN_FLAGS, Args, quick_parse

    rest = arguments[i + 1 :]
    if command == "build":
        from pytest_minidock.cli import build

        values = quick_parse(rest, build.BUILD_FLAGS, positional="context")
        if values is None:
            return None
        return Args(root=root, func=build.cmd_build, **values)
    run = command == "run"
    values = quick_parse(rest, (*RUN_FLAGS, DETACH) if run else RUN_FLAGS, positional="image")
    if values is None:
        return None
    from pytest_minidock.cli import containers

    if not run:
        values["detach"] = True
    func = containers.cmd_run if run else containers.cmd_create
    return Args(root=root, func=func, error_code=125, **values)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``minidock`` command line; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = quick_args(arguments)
    if args is None:
        args = build_parser(_command_name(arguments)).parse_args(arguments)
    if getattr(args, "root", None):
        # absolute: containers and RUN steps resolve paths after chdir and in other namespaces
        args.root = os.path.abspath(args.root)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:  # noqa: SIM105 - not contextlib.suppress: importing contextlib is ~1 ms
            sys.stdout.close()
        except OSError:
            pass
        return 141
    except Exception as exc:
        from pytest_minidock.errors import MinidockError  # only now: ~1 ms of every command

        if not isinstance(exc, MinidockError):
            raise
        print(f"Error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", getattr(args, "error_code", 1)))
    return status


def entry() -> int:
    """The ``minidock`` console script: :func:`main`, then, when nothing is left to run at exit,
    leave without the interpreter's teardown (freeing every module and object costs ~10 ms
    per command here). Returns the status only when the usual exit must run (see
    ``_nothing_at_exit``). The collector's threshold is raised for the whole command."""
    import gc

    # Imports make tens of thousands of objects and next to no cycles: the collector's passes
    # over them (~10 ms of a build) find nothing. A high threshold, not gc.disable(): a
    # long-running command (``logs -f``, a large pull) still collects now and then.
    gc.set_threshold(100_000, 50, 100)
    status = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        status = status or 141
    except (OSError, ValueError):  # closed, or the disk is full: let the usual exit report it
        return status
    try:  # noqa: SIM105 - not contextlib.suppress: importing contextlib is ~1 ms
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if _nothing_at_exit():
        os._exit(status)
    return status


def _nothing_at_exit() -> bool:
    """Whether the interpreter's exit would only free memory: no ``atexit`` callbacks, no other
    live threads (daemon threads included: one may be mid-write) and no profiler or tracer
    (``python -m cProfile -m pytest_minidock`` writes its stats after the command returns)."""
    import atexit

    if sys.getprofile() is not None or sys.gettrace() is not None:
        return False
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return False
    count = getattr(atexit, "_ncallbacks", None)
    return count is not None and count() == 0
