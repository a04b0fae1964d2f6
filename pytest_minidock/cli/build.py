"""``minidock build`` and ``minidock builder prune``: docker's flags over ``Engine.build``.

A rebuild that nothing changed for is answered from its memo (``build.memo``) before anything
of the builder is imported; on that path this module imports nothing the interpreter has not
loaded at start (not even ``typing``): each import there is a cost of every ``minidock build``.
For the same reason ``cli.quick_args`` reads the everyday spellings of ``build``'s flags without
argparse (which, with the ``re``, ``gettext`` and ``locale`` it imports, is about half of a
rebuild answered from its memo); one table (``BUILD_FLAGS``) makes both parsers.
"""

from __future__ import annotations

import os
import sys

from pytest_minidock.cli.flags import Flag, add_flags

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from pytest_minidock.build.request import BuildResult

__all__ = ["BUILD_FLAGS", "add_build_commands"]

BUILD_FLAGS: tuple[Flag, ...] = (
    Flag(("-f", "--file"), "value", "the Dockerfile (default: CONTEXT/Dockerfile; - for stdin)"),
    Flag(("-t", "--tag"), "append", "name the image NAME[:TAG]"),
    Flag(("--build-arg",), "append", None, metavar="NAME=VALUE"),
    Flag(("--target",), "value", "build this stage (by name or index) and what it needs"),
    Flag(("--no-cache",), "flag", "run every step, use no cache"),
    Flag(("--pull",), "flag", "pull base images even when present"),
    Flag(
        ("--network",),
        "value",
        "network of RUN steps: default (the bridge, as docker), none, host or a name",
    ),
    Flag(("--progress",), "choice", None, default="auto", choices=("auto", "plain", "tty")),
    Flag(("-q", "--quiet"), "flag", "print only the image ID"),
    Flag(("--secret",), "append", None, metavar="id=ID,src=FILE"),
    Flag(("--platform",), "value", "target platform, e.g. linux/amd64"),
)
"""``build``'s options in help order (``cli.flags``: they make its argparse parser, and
``cli.quick_args`` reads them without argparse)."""


def _build_args(items: list[str]) -> dict[str, str]:
    """``--build-arg K=V``; a bare ``K`` takes ``K`` from the environment (skipped if unset)."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key:
            from pytest_minidock.errors import UsageError

            raise UsageError(f"invalid --build-arg {item!r}: use NAME=VALUE")
        if eq:
            out[key] = value
        elif key in os.environ:
            out[key] = os.environ[key]
    return out


def _secrets(items: list[str]) -> dict[str, Any]:
    """``--secret id=ID[,src=FILE|,env=VAR]`` (``type=file|env`` accepted, as buildx does)."""
    if not items:
        return {}
    from pathlib import Path

    from pytest_minidock.build.request import SecretSource
    from pytest_minidock.errors import UsageError

    out: dict[str, Any] = {}
    for item in items:
        fields: dict[str, str] = {}
        for part in item.split(","):
            key, eq, value = part.partition("=")
            if not eq:
                raise UsageError(f"invalid --secret {item!r}: use id=ID,src=FILE or id=ID,env=VAR")
            fields[key.strip().lower()] = value
        secret_id = fields.get("id")
        if not secret_id:
            raise UsageError(f"invalid --secret {item!r}: it needs id=ID")
        src = fields.get("src") or fields.get("source")
        env = fields.get("env")
        if src is None and env is None:
            if fields.get("type") == "env" or (secret_id in os.environ and "type" not in fields):
                env = secret_id
            else:
                src = secret_id
        if src is not None:
            path = Path(src).expanduser()
            if not path.is_file():
                raise UsageError(f"--secret {item}: no such file {src}")
            out[secret_id] = SecretSource(path=path)
        else:
            out[secret_id] = SecretSource(env=env)
    return out


def cmd_build(args: argparse.Namespace) -> int:
    if args.context == "-":
        from pytest_minidock.errors import UsageError

        raise UsageError(
            "building from a context on stdin is not supported: give the context directory"
        )
    text = None
    dockerfile = args.file
    if dockerfile == "-":
        text = sys.stdin.read()
        dockerfile = "Dockerfile"
    elif dockerfile is not None:  # -f is relative to here; the library's is to the context
        dockerfile = os.path.relpath(os.path.abspath(dockerfile), os.path.abspath(args.context))
    build_args = _build_args(args.build_arg)
    secrets = _secrets(args.secret)  # checked even when the memo answers
    root, memo_key = _memo_key(args, dockerfile, build_args, text)
    if memo_key is not None and _answer_from_memo(args, root, memo_key):
        return 0

    result = _build(
        args, root, dockerfile=dockerfile, build_args=build_args, secrets=secrets, text=text
    )
    if memo_key is not None and result.inputs is not None:
        _write_memo(root, memo_key, result, args.tag)
    if args.quiet:
        print(result.id)
    return 0


def _build(
    args: argparse.Namespace,
    root: str,
    *,
    dockerfile: str | None,
    build_args: dict[str, str],
    secrets: dict[str, Any],
    text: str | None,
) -> BuildResult:
    from pytest_minidock.api import Engine

    # One short-lived process: RUN containers are forked from it directly, as ``run`` does, when
    # it has no other thread; while stages build in threads, the step runner goes through the
    # runtime's launcher (forking a multi-threaded process is best left alone).
    engine = Engine(root, launcher=False)
    progress = None
    if not args.quiet:
        from pytest_minidock.build.progress import printer

        progress = printer(args.progress, sys.stderr)
    return engine.build(
        args.context,
        dockerfile=dockerfile,
        tags=args.tag,
        buildargs=build_args,
        target=args.target,
        no_cache=args.no_cache,
        pull=args.pull,
        network=args.network,
        progress=progress,
        secrets=secrets,
        platform=args.platform,
        dockerfile_text=text,
    )


# -- build memos: a rebuild nothing changed for, answered before importing the builder --------
def _memo_key(
    args: argparse.Namespace, dockerfile: str | None, build_args: dict[str, str], text: str | None
) -> tuple[str, str | None]:
    """The store root, and the memo key of this build (None: never answered from a memo)."""
    if args.root:
        root = os.path.abspath(args.root)
    else:
        from pytest_minidock.store.paths import default_root

        root = os.path.abspath(default_root())
    if (
        text is not None
        or args.no_cache
        or args.pull
        or os.environ.get("MINIDOCK_BUILD_MEMO") == "0"
    ):
        return root, None
    from pytest_minidock import __version__
    from pytest_minidock.build.memo import memo_key

    return root, memo_key(
        version=__version__,
        context=os.path.realpath(args.context),
        dockerfile=dockerfile or "Dockerfile",
        tags=list(args.tag),
        build_args=build_args,
        target=args.target,
        network=args.network,
        platform=args.platform,
        secrets=sorted(args.secret),
        source_date_epoch=os.environ.get("SOURCE_DATE_EPOCH"),
    )


def _answer_from_memo(args: argparse.Namespace, root: str, key: str) -> bool:
    """Print what the build would (every step cached) if its memo still holds."""
    from pytest_minidock.build.memo import check

    memo = check(root, key)
    if memo is None:
        return False
    if not args.quiet:
        from pytest_minidock.build.progress import BuildEvent, printer

        progress = printer(args.progress, sys.stderr)
        for kind, number, name, text in memo["events"]:
            progress(BuildEvent(kind, number, name, text))
    else:
        print(memo["image"])
    return True


def _write_memo(root: str, key: str, result: BuildResult, tags: list[str]) -> None:
    from pytest_minidock.build.memo import write
    from pytest_minidock.reference import Reference

    inputs = result.inputs
    assert inputs is not None
    events: list[tuple[str, int, str, str]] = [
        ("info", n, "[warning]", w) for n, w in enumerate(result.warnings, 1)
    ]
    events += [("cached", s.number, s.name, "") for s in result.steps]
    last = max((e[1] for e in events), default=0)
    exported = f"writing image {result.id}"
    named = [str(Reference.parse(t).with_default_tag()) for t in tags]
    if any(name in inputs.names for name in named):
        return  # it reads a name it writes: the next build starts from this image
    if named:
        exported += "; naming to " + ", ".join(named)
    events.append(("info", last + 1, "exporting to image", exported))
    write(
        root,
        key,
        image=str(result.id),
        index=inputs.index,
        paths=inputs.paths,
        followed=inputs.followed,
        required=inputs.required,
        started_ns=inputs.started_ns,
        names={**inputs.names, **dict.fromkeys(named, str(result.record.manifest.digest))},
        events=events,
    )


def cmd_builder_prune(args: argparse.Namespace) -> int:
    from pytest_minidock.api import Engine
    from pytest_minidock.cli.images import human_size

    if not args.force and sys.stdin.isatty():
        what = "all build cache" if args.all else "build cache no image uses"
        answer = input(
            f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    report = Engine(args.root, launcher=False).builder_prune(all=args.all)
    print(f"Deleted build cache entries: {report.entries}")
    if report.mounts:
        print(f"Deleted cache mounts: {report.mounts}")
    print(f"Total reclaimed space: {human_size(report.reclaimed)}")
    return 0


def add_build_commands(sub: Any) -> None:
    """Register ``build`` and ``builder`` on the ``minidock`` subcommand parser."""
    p = sub.add_parser("build", help="build an image from a Dockerfile")
    add_flags(p, BUILD_FLAGS)
    p.add_argument("context", help="the build context directory")
    p.set_defaults(func=cmd_build)

    b = sub.add_parser("builder", help="manage the build cache")
    bsub = b.add_subparsers(dest="builder_command", metavar="COMMAND")
    bsub.required = True
    prune = bsub.add_parser("prune", help="remove build cache")
    prune.add_argument("-a", "--all", action="store_true", help="remove all of it")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask")
    prune.set_defaults(func=cmd_builder_prune)
