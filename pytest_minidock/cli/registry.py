"""``minidock`` registry commands: pull, push, login, logout — docker's flags and output.

Progress is drawn per layer, redrawn in place on a terminal (docker's bars) and as one plain line
per state change otherwise. Nothing here imports the registry client until a command runs.
"""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~4 ms
if TYPE_CHECKING:
    import argparse
    from typing import IO, Any, Protocol

    from pytest_minidock.api import Engine
else:
    Protocol = object  # (the protocol is a plain class at run time)

__all__ = ["ProgressPrinter", "add_registry_commands", "ensure_image"]

_BAR = 50
_REDRAW_EVERY = 0.1
_FINAL = frozenset(
    {
        "Already exists",
        "Pull complete",
        "Download complete",
        "Pushed",
        "Layer already exists",
        "Mounted from",
    }
)


class Event(Protocol):
    """The fields of ``registry.progress.Progress`` this module reads."""

    @property
    def id(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def current(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def detail(self) -> str: ...


def _size(n: float) -> str:
    from pytest_minidock.cli.images import human_size

    return human_size(n)


def _bar(current: int, total: int) -> str:
    """docker's ``[=====>      ]   1.2MB/2.1MB``."""
    if total <= 0:
        return ""
    done = min(_BAR, int(current * 100 / total) // 2)
    return f"[{'=' * done}>{' ' * (_BAR - done)}] {_size(current):>8}/{_size(total)}"


class ProgressPrinter:
    """Prints progress events as docker does: one line per layer.

    On a terminal the lines are redrawn in place (at most ten times a second per line); otherwise
    a line is printed only when a layer's state changes.
    """

    def __init__(self, out: IO[str], *, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._order: list[str] = []
        self._text: dict[str, str] = {}
        self._action: dict[str, str] = {}
        self._drawn: dict[str, float] = {}
        self.started = False

    def _line(self, event: Event) -> str:
        text = f"{event.id}: {event.action}"
        if event.action == "Mounted from":
            return f"{text} {event.detail}"
        if event.action in ("Downloading", "Pushing") and event.total > 0 and self.tty:
            return f"{text} {_bar(event.current, event.total)}"
        if event.action == "Retrying":
            return f"{text} {event.detail}".rstrip()
        return text

    def __call__(self, event: Event) -> None:
        self.started = True
        if event.action == "Pulling from":
            self.out.write(f"{event.id}: Pulling from {event.detail}\n")
            self.out.flush()
            return
        text = self._line(event)
        if event.id not in self._text:
            self._order.append(event.id)
            self._text[event.id] = text
            self._action[event.id] = event.action
            self.out.write(text + "\n")
            self._drawn[event.id] = time.monotonic()
            self.out.flush()
            return
        changed = self._action.get(event.id) != event.action
        self._action[event.id] = event.action
        self._text[event.id] = text
        if not self.tty:
            if changed:
                self.out.write(text + "\n")
                self.out.flush()
            return
        now = time.monotonic()
        if (
            not changed
            and event.action not in _FINAL
            and now - self._drawn[event.id] < _REDRAW_EVERY
        ):
            return
        self._drawn[event.id] = now
        up = len(self._order) - self._order.index(event.id)
        self.out.write(f"\x1b[{up}A\r\x1b[2K{text}\x1b[{up}B\r")
        self.out.flush()


def _engine(args: argparse.Namespace) -> Engine:
    from pytest_minidock.api import Engine

    return Engine(args.root, launcher=False)


def cmd_pull(args: argparse.Namespace) -> int:
    engine = _engine(args)
    if "@" not in args.reference and ":" not in args.reference.rpartition("/")[2]:
        print("Using default tag: latest")
    printer = None if args.quiet else ProgressPrinter(sys.stdout)
    result = engine.pull(args.reference, platform=args.platform, progress=printer)
    if not args.quiet:
        print(f"Digest: {result.digest}")
        status = "Image is up to date" if result.up_to_date else "Downloaded newer image"
        print(f"Status: {status} for {result.reference.familiar()}")
    print(result.reference)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from pytest_minidock.reference import Reference

    engine = _engine(args)
    ref = Reference.parse(args.reference).with_default_tag()
    if not args.quiet:
        print(f"The push refers to repository [{ref.name}]")
    printer = None if args.quiet else ProgressPrinter(sys.stdout)
    result = engine.push(args.reference, progress=printer)
    if args.quiet:
        print(result.reference)
    else:
        print(f"{result.reference.tag}: digest: {result.digest} size: {result.size}")
    return 0


def _read_password_stdin() -> str:
    data = sys.stdin.read()
    return data.removesuffix("\n").removesuffix("\r")


def cmd_login(args: argparse.Namespace) -> int:
    import getpass

    from pytest_minidock.errors import RegistryAuthError, UsageError

    engine = _engine(args)
    username: str = args.username or ""
    password: str = args.password or ""
    if args.password and args.password_stdin:
        raise UsageError("--password and --password-stdin are mutually exclusive")
    if args.password:
        print(
            "WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
            file=sys.stderr,
        )
    if args.password_stdin:
        if not username:
            raise UsageError("must provide --username with --password-stdin")
        password = _read_password_stdin()
    if not username and not password:
        try:
            engine.login(args.server, "", "")
        except RegistryAuthError:
            if not sys.stdin.isatty():
                raise
        else:
            print("Login Succeeded")
            return 0
    interactive = sys.stdin.isatty()
    if not username:
        if not interactive:
            raise UsageError("cannot perform an interactive login from a non TTY device")
        username = input("Username: ").strip()
    if not password:
        if not interactive:
            raise UsageError("cannot perform an interactive login from a non TTY device")
        password = getpass.getpass("Password: ")
    if not username:
        raise UsageError("a user name is required to log in")
    result = engine.login(args.server, username, password)
    if result.in_plain_text:
        print(
            f"WARNING! Your password will be stored unencrypted in {result.stored_in}.\n"
            "Configure a credential helper to remove this warning. See\n"
            "https://docs.docker.com/engine/reference/commandline/login/#credentials-store\n",
            file=sys.stderr,
        )
    print("Login Succeeded")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    result = _engine(args).logout(args.server)
    if result.changed:
        print(f"Removing login credentials for {result.server}")
    else:
        print(f"Not logged in to {result.server}")
    return 0


def ensure_image(engine: Engine, image: str, policy: str) -> None:
    """``run``/``create --pull POLICY``: pull as the policy says, reporting on stderr as docker
    does (``Unable to find image … locally``, then the pull's progress and status)."""
    printer = ProgressPrinter(sys.stderr)
    announced: list[bool] = []

    def report(event: Any) -> None:
        if not announced:
            announced.append(True)
            if policy == "missing":
                sys.stderr.write(f"Unable to find image '{image}' locally\n")
        printer(event)

    before = {r.manifest.digest for r in engine.store.images()} if policy == "always" else None
    record = engine.ensure_image(image, policy, progress=report)
    if announced:
        fresh = before is None or record.manifest.digest not in before
        status = "Downloaded newer image" if fresh else "Image is up to date"
        sys.stderr.write(f"Digest: {record.manifest.digest}\nStatus: {status} for {image}\n")
        sys.stderr.flush()


def add_registry_commands(sub: Any) -> None:
    """``pull``, ``push``, ``login`` and ``logout``."""
    p = sub.add_parser("pull", help="download an image from a registry")
    p.add_argument("--platform", help="os/arch[/variant] to pull (default: this machine's)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image name")
    p.add_argument("reference", metavar="NAME[:TAG|@DIGEST]")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("push", help="upload an image to a registry")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image name")
    p.add_argument("reference", metavar="NAME[:TAG]")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("login", help="log in to a registry (default: Docker Hub)")
    p.add_argument("-u", "--username", help="user name")
    p.add_argument("-p", "--password", help="password or token (insecure: prefer stdin)")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password or token from stdin"
    )
    p.add_argument("server", nargs="?", default=None, metavar="SERVER")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("logout", help="log out from a registry (default: Docker Hub)")
    p.add_argument("server", nargs="?", default=None, metavar="SERVER")
    p.set_defaults(func=cmd_logout)
