"""``minidock`` image commands: import, images, tag, rmi, inspect, save, load, prune, df, check."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~4 ms
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import IO, Any

    from pytest_minidock.reference import Reference
    from pytest_minidock.store.store import Store

__all__ = ["add_image_commands", "add_system_commands", "human_duration", "human_size"]


def _store(args: argparse.Namespace) -> Store:
    from pytest_minidock.api import open_store

    return open_store(args.root)


def _ref(text: str) -> Reference:
    from pytest_minidock.reference import Reference

    return Reference.parse(text)


# -- human formats, as docker prints them ---------------------------------------------------------
def human_size(n: float) -> str:
    """Docker's sizes: decimal units with about three significant digits (``2.15MB``)."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000.0
        i += 1
    return f"{n:.4g}{units[i]}"


def human_duration(seconds: float) -> str:
    """Docker's relative times (``About a minute``, ``3 hours``, ``2 weeks``)."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"


def _created_ago(created: str, now: float) -> str:
    from datetime import datetime

    if not created:
        return "N/A"
    try:
        ts = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "N/A"
    return f"{human_duration(now - ts)} ago"


def _table(rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths[:-1], strict=False)]
        out.write("   ".join([*cells, r[-1]]).rstrip() + "\n")


# -- image commands -------------------------------------------------------------------------------
def cmd_images(args: argparse.Namespace) -> int:
    store = _store(args)
    records = store.images()
    rows: list[tuple[str, str, str, str, str]] = []
    now = time.time()
    wanted = _ref(args.name) if args.name else None
    want_repo = wanted.name if wanted is not None else None
    want = wanted if wanted is not None and wanted.tag is not None else None
    for r in records:
        names: list[Reference | None] = [n for n in r.names if n.tag] or [None]
        for n in names:
            if want_repo is not None and (n is None or n.name != want_repo):
                continue
            if want is not None and n != want:
                continue
            repo = n.familiar_name if n is not None else "<none>"
            tag = (n.tag or "<none>") if n is not None else "<none>"
            rows.append((repo, tag, r.short_id, _created_ago(r.created, now), human_size(r.size)))
    if args.quiet:
        seen: set[str] = set()
        for row in rows:
            if row[2] not in seen:
                seen.add(row[2])
                print(row[2])
        return 0
    _table([("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"), *rows], sys.stdout)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pytest_minidock.image.changes import apply_changes
    from pytest_minidock.image.model import ContainerConfig

    store = _store(args)
    refs = [_ref(args.reference)] if args.reference else []
    changes = apply_changes(ContainerConfig(), args.change) if args.change else None
    if args.file == "-":
        record = store.import_tarball(
            sys.stdin.buffer, refs, source="-", changes=changes, message=args.message
        )
    else:
        try:
            f = open(args.file, "rb")  # noqa: SIM115
        except OSError as exc:
            raise _error(f"cannot open {args.file}: {exc.strerror}") from exc
        with f:
            record = store.import_tarball(
                f, refs, source=args.file, changes=changes, message=args.message
            )
    print(record.id)
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    _store(args).tag(args.source, _ref(args.target))
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    from pytest_minidock.api import Engine

    engine = Engine(args.root, launcher=False)

    def remove(name: str) -> None:
        for line in engine.remove_image(name, force=args.force):
            print(line)

    return for_each(args.images, remove, echo=False)


def cmd_inspect(args: argparse.Namespace) -> int:
    store = _store(args)
    out = []
    status = 0
    for name in args.names:
        try:
            out.append(store.inspect(name))
        except _minidock_error() as exc:
            print(f"Error: {exc}", file=sys.stderr)
            status = 1
    if args.format:
        for obj in out:
            print(format_template(args.format, obj))
    else:
        print(json.dumps(out, indent=4))
    return status


def _go_text(value: Any) -> str:
    """A value as Go's text/template prints it (``true``, ``[a b]``, ``map[k:v]``)."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_go_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_text(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def format_template(template: str, obj: dict[str, Any]) -> str:
    """A tiny subset of Go templates: ``{{.Field}}``, ``{{.A.B}}`` and ``{{json .Field}}``."""
    import re

    def sub(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        as_json = expr.startswith("json ")
        path = expr.removeprefix("json ").strip()
        if not path.startswith("."):
            raise _error(f"template: unsupported expression {{{{{expr}}}}}")
        value: Any = obj
        for part in filter(None, path[1:].split(".")):
            value = value.get(part) if isinstance(value, dict) else None
        if as_json:
            return json.dumps(value)
        return _go_text(value)

    return re.sub(r"\{\{(.*?)\}\}", sub, template)


def cmd_save(args: argparse.Namespace) -> int:
    from pytest_minidock.image.archive import save_archive

    store = _store(args)
    images = []
    for name in args.images:
        record = store.resolve(name)
        names = [n for n in record.names if n.tag]
        with contextlib.suppress(Exception):
            ref = _ref(name).with_default_tag()
            if ref in names:
                names = [ref]
        images.append((store.image(str(record.manifest.digest)), names))
    if args.output in (None, "-"):
        if sys.stdout.isatty():
            raise _error("cowardly refusing to save to a terminal; use -o FILE or redirect stdout")
        save_archive(images, sys.stdout.buffer, tmp_dir=str(store.paths.tmp))
        return 0
    from pathlib import Path

    target = Path(args.output)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            save_archive(images, f, tmp_dir=str(store.paths.tmp))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise _error(f"cannot write {args.output}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from pytest_minidock.image.archive import ArchiveReader

    store = _store(args)
    spooled: Any = None
    if args.input in (None, "-"):
        import shutil
        import tempfile

        spooled = tempfile.TemporaryFile(dir=store.paths.tmp)  # noqa: SIM115
        shutil.copyfileobj(sys.stdin.buffer, spooled, 1 << 20)
        spooled.seek(0)
        src, name = spooled, "stdin"
    else:
        try:
            src, name = open(args.input, "rb"), args.input  # noqa: SIM115
        except OSError as exc:
            raise _error(f"cannot open {args.input}: {exc.strerror}") from exc
    with src, ArchiveReader(src, name) as reader:
        for image, names in reader.images():
            record = store.write_image(image, names)
            if names:
                for n in names:
                    print(f"Loaded image: {n.familiar()}")
            else:
                print(f"Loaded image ID: {record.id}")
    return 0


def cmd_image_prune(args: argparse.Namespace) -> int:
    report = _store(args).prune(all_images=args.all)
    for ref in report.untagged:
        print(f"untagged: {ref.familiar()}")
    for d in report.deleted_images:
        print(f"deleted: {d}")
    print(f"Total reclaimed space: {human_size(report.reclaimed)}")
    return 0


def cmd_system_df(args: argparse.Namespace) -> int:
    du = _store(args).disk_usage()
    pct = f" ({100 * du.reclaimable // du.size}%)" if du.size else ""
    _table(
        [
            ("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"),
            (
                "Images",
                str(du.images),
                str(du.active),
                human_size(du.size),
                human_size(du.reclaimable) + pct,
            ),
        ],
        sys.stdout,
    )
    if args.verbose:
        print(
            f"\nblobs: {du.blobs} ({human_size(du.blob_bytes)}), "
            f"snapshots: {du.snapshots} ({human_size(du.snapshot_bytes)})"
        )
    return 0


def cmd_system_check(args: argparse.Namespace) -> int:
    problems = _store(args).check(deep=not args.quick)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print("store is consistent")
    return 0


def cmd_system_prune(args: argparse.Namespace) -> int:
    return cmd_image_prune(args)


def for_each(names: Sequence[str], action: Callable[[str], object], *, echo: bool = True) -> int:
    """Apply ``action`` to each name as docker does: print the name (with ``echo``) or a one-line
    error, go on with the next, and return 1 if any failed."""
    from pytest_minidock.errors import MinidockError

    status = 0
    for name in names:
        try:
            action(name)
        except MinidockError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            status = 1
            continue
        if echo:
            print(name)
    return status


def _error(message: str) -> Exception:
    from pytest_minidock.errors import UsageError

    return UsageError(message)


def _minidock_error() -> type[Exception]:
    from pytest_minidock.errors import MinidockError

    return MinidockError


def add_image_commands(sub: Any, *, prefix: str = "") -> None:
    p = sub.add_parser("images" if not prefix else "ls", help="list images")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("name", nargs="?", help="only images of this repository[:tag]")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("import", help="import a rootfs tarball as a one-layer image")
    p.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        help="apply a Dockerfile instruction (CMD, ENV, ...) to the image",
    )
    p.add_argument("-m", "--message", default="", help="commit message for the imported image")
    p.add_argument("file", help="tar file (plain, gzip, bzip2 or xz), or - for stdin")
    p.add_argument("reference", nargs="?", help="REPOSITORY[:TAG]")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("tag", help="create a tag TARGET that refers to SOURCE")
    p.add_argument("source")
    p.add_argument("target")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("rmi" if not prefix else "rm", help="remove images")
    p.add_argument("-f", "--force", action="store_true", help="force removal")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_rmi)

    if prefix:  # the top-level ``inspect`` (containers and images) is in cli.containers
        p = sub.add_parser("inspect", help="show low-level information on images")
        p.add_argument("-f", "--format", help="format with a Go-template subset ({{.Id}})")
        p.add_argument("names", nargs="+")
        p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("save", help="save images to a tar archive (docker-archive format)")
    p.add_argument("-o", "--output", help="write to a file instead of stdout")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_save)

    p = sub.add_parser("load", help="load images from a docker-archive or OCI-layout tar")
    p.add_argument("-i", "--input", help="read from a tar file instead of stdin")
    p.add_argument("-q", "--quiet", action="store_true", help="accepted for docker compatibility")
    p.set_defaults(func=cmd_load)


def add_system_commands(sub: Any) -> None:
    """``image ls|rm|prune|…`` and ``system df|prune|check``."""
    image = sub.add_parser("image", help="manage images")
    isub = image.add_subparsers(dest="subcommand", metavar="COMMAND")
    isub.required = True
    add_image_commands(isub, prefix="image")
    p = isub.add_parser("prune", help="remove dangling (or, with -a, all) images")
    p.add_argument("-a", "--all", action="store_true", help="remove all unused images")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt (always the case)")
    p.set_defaults(func=cmd_image_prune)

    system = sub.add_parser("system", help="manage the store")
    ssub = system.add_subparsers(dest="subcommand", metavar="COMMAND")
    ssub.required = True
    p = ssub.add_parser("df", help="show disk usage")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_system_df)
    p = ssub.add_parser("prune", help="remove unused data")
    p.add_argument("-a", "--all", action="store_true", help="remove all unused images")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt (always the case)")
    p.set_defaults(func=cmd_system_prune)
    p = ssub.add_parser("check", help="verify the store: every image, blob and snapshot")
    p.add_argument("--quick", action="store_true", help="skip hashing layer contents")
    p.set_defaults(func=cmd_system_check)
