"""``minidock build`` and ``minidock builder prune``: docker's flags over ``Engine.build``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

__all__ = ["add_build_commands"]


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
    from pytest_minidock.build.builder import SecretSource
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
    from pytest_minidock.api import Engine
    from pytest_minidock.errors import UsageError

    if args.context == "-":
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
    # The runtime's launcher forks the RUN containers from a single-threaded helper: stages build
    # in threads here, and forking a multi-threaded process is best left alone.
    engine = Engine(args.root)
    progress = None
    if not args.quiet:
        from pytest_minidock.build.progress import printer

        progress = printer(args.progress, sys.stderr)
    result = engine.build(
        args.context,
        dockerfile=dockerfile,
        tags=args.tag,
        buildargs=_build_args(args.build_arg),
        target=args.target,
        no_cache=args.no_cache,
        pull=args.pull,
        network=args.network,
        progress=progress,
        secrets=_secrets(args.secret),
        platform=args.platform,
        dockerfile_text=text,
    )
    if args.quiet:
        print(result.id)
    return 0


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
    p.add_argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile; - for stdin)")
    p.add_argument("-t", "--tag", action="append", default=[], help="name the image NAME[:TAG]")
    p.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--target", help="build this stage (by name or index) and what it needs")
    p.add_argument("--no-cache", action="store_true", help="run every step, use no cache")
    p.add_argument("--pull", action="store_true", help="pull base images even when present")
    p.add_argument("--network", help="network of RUN steps: none (default), host or a name")
    p.add_argument("--progress", choices=("auto", "plain", "tty"), default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    p.add_argument("--secret", action="append", default=[], metavar="id=ID,src=FILE")
    p.add_argument("--platform", help="target platform, e.g. linux/amd64")
    p.add_argument("context", help="the build context directory")
    p.set_defaults(func=cmd_build)

    b = sub.add_parser("builder", help="manage the build cache")
    bsub = b.add_subparsers(dest="builder_command", metavar="COMMAND")
    bsub.required = True
    prune = bsub.add_parser("prune", help="remove build cache")
    prune.add_argument("-a", "--all", action="store_true", help="remove all of it")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask")
    prune.set_defaults(func=cmd_builder_prune)
