"""A read-only merged view of an image's layers, as overlayfs would show them to a container.

The builder needs to look into the image it is building without mounting anything: where a
``COPY`` destination really is (symlinks on the way are followed inside the image, never on the
host), whether a ``WORKDIR`` exists, who ``--chown=name`` is in ``/etc/passwd``, and what
``COPY --from=stage`` copies. ``LayerView`` answers from the layers' snapshot directories (base
first), honouring the store's whiteouts (0:0 character devices or ``user.overlay.whiteout``
files) and opaque directories (``*.overlay.opaque=y``), like ``spec.lookup_in_layers``.
Nothing here writes.
"""

from __future__ import annotations

import os
import posixpath
import stat

from pytest_minidock._record import dataclass
from pytest_minidock.errors import BuildError
from pytest_minidock.image.whiteouts import is_opaque as _is_opaque
from pytest_minidock.image.whiteouts import is_whiteout as _is_whiteout

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

__all__ = ["MAX_SYMLINKS", "LayerView", "ViewEntry", "clean_path"]

MAX_SYMLINKS = 40
"""Most symlinks followed while resolving one path (Linux's ``MAXSYMLINKS``)."""


def clean_path(path: str) -> str:
    """``path`` made absolute and clean: ``a/./b/../c`` is ``/a/c``; ``..`` stops at ``/``."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


@dataclass(frozen=True, slots=True)
class ViewEntry:
    """One path of the merged view: where it is in the image and which layer file provides it."""

    path: str
    """Absolute and clean, as a container sees it."""
    host: bytes
    """The file in the topmost layer that has it (for a directory: the topmost directory)."""
    st: os.stat_result
    """``lstat`` of ``host``."""
    dirs: tuple[bytes, ...] = ()
    """For a directory: the layer directories merged into it, top first."""

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.st.st_mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.st.st_mode)


class LayerView:
    """The merged file tree of ``layers`` (snapshot directories, base layer first)."""

    def __init__(self, layers: Sequence[Path | str]) -> None:
        self.layers = tuple(os.fsencode(os.fspath(p)) for p in layers)
        self._top_first = list(reversed(self.layers))

    # -- one component --------------------------------------------------------------------------
    def _child(self, parent: ViewEntry | None, name: str, path: str) -> ViewEntry | None:
        """``name`` inside the directory ``parent`` (``None``: the root), merged over layers."""
        stack = list(parent.dirs) if parent is not None else self._top_first
        raw = os.fsencode(name)
        dirs: list[bytes] = []
        top: os.stat_result | None = None
        for layer_dir in stack:
            candidate = os.path.join(layer_dir, raw)
            try:
                st = os.lstat(candidate)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise BuildError(
                    f"cannot read image layer path {os.fsdecode(candidate)}: {exc.strerror or exc}"
                ) from exc
            if _is_whiteout(candidate, st):
                break
            if stat.S_ISDIR(st.st_mode):
                if top is None:
                    top = st
                dirs.append(candidate)
                if _is_opaque(candidate):
                    break
                continue
            if top is None:  # a file, link or device on top
                return ViewEntry(path, candidate, st)
            break  # a directory above hides whatever is below it
        if top is None:
            return None
        return ViewEntry(path, dirs[0], top, tuple(dirs))

    def root(self) -> ViewEntry:
        """The root directory (its metadata from the topmost layer)."""
        if not self._top_first:
            empty = os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, 0))
            return ViewEntry("/", b"", empty)
        top = self._top_first[0]
        return ViewEntry("/", top, os.lstat(top), tuple(self._top_first))

    # -- paths ----------------------------------------------------------------------------------
    def resolve(self, path: str, *, follow: bool = True) -> ViewEntry | None:
        """The entry at ``path``, symlinks on the way followed inside the view; ``None`` if absent.

        ``follow``: also follow a symlink in the last component.
        """
        real = self.realpath(path, follow=follow)
        return self._walk_clean(real) if real is not None else None

    def lstat(self, path: str) -> ViewEntry | None:
        """Like ``resolve`` without following a final symlink."""
        return self.resolve(path, follow=False)

    def _walk_clean(self, path: str) -> ViewEntry | None:
        entry: ViewEntry | None = self.root()
        current = ""
        for name in (p for p in path.split("/") if p):
            if entry is None or not entry.is_dir:
                return None
            current += "/" + name
            entry = self._child(entry, name, current)
        return entry

    def realpath(self, path: str, *, follow: bool = True) -> str | None:
        """``path`` with every symlink resolved inside the view; missing trailing parts are kept.

        ``None`` when a component on the way is a file (not a directory) or the links loop.
        """
        todo = [p for p in reversed(path.split("/")) if p not in ("", ".")]
        done: list[str] = []
        entries: list[ViewEntry] = [self.root()]
        hops = 0
        missing = False
        while todo:
            name = todo.pop()
            if name == "..":
                if done:
                    done.pop()
                    entries.pop()
                continue
            if missing:
                done.append(name)
                continue
            parent = entries[-1]
            if not parent.is_dir:
                return None
            child = self._child(parent, name, "/" + "/".join([*done, name]))
            if child is None:
                missing = True
                done.append(name)
                continue
            if child.is_symlink and (todo or follow):
                hops += 1
                if hops > MAX_SYMLINKS:
                    return None
                target = os.fsdecode(os.readlink(child.host))
                todo.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
                if target.startswith("/"):
                    done, entries = [], [self.root()]
                continue
            done.append(name)
            entries.append(child)
        return "/" + "/".join(done)

    # -- directories ----------------------------------------------------------------------------
    def listdir(self, entry: ViewEntry) -> list[ViewEntry]:
        """The children of the directory ``entry``, merged over its layers, sorted by name."""
        seen: set[bytes] = set()
        names: list[bytes] = []
        for layer_dir in entry.dirs:
            try:
                with os.scandir(layer_dir) as it:
                    found = [e.name for e in it]
            except OSError as exc:
                raise BuildError(
                    f"cannot read image layer directory {os.fsdecode(layer_dir)}: "
                    f"{exc.strerror or exc}"
                ) from exc
            for found_name in found:
                if found_name not in seen:
                    seen.add(found_name)
                    names.append(found_name)
        out: list[ViewEntry] = []
        base = entry.path.rstrip("/")
        for raw in sorted(names):
            name = os.fsdecode(raw)
            child = self._child(entry, name, f"{base}/{name}")
            if child is not None:
                out.append(child)
        return out

    def walk(self, entry: ViewEntry, prefix: str = "") -> Iterator[tuple[str, ViewEntry]]:
        """Everything below the directory ``entry`` as ``(relative path, entry)``, parents first."""
        for child in self.listdir(entry):
            rel = prefix + posixpath.basename(child.path)
            yield rel, child
            if child.is_dir:
                yield from self.walk(child, rel + "/")

    def read_file(self, path: str, limit: int = 1 << 24) -> bytes | None:
        """The content of the regular file at ``path`` (links followed), ``None`` if none."""
        entry = self.resolve(path)
        if entry is None or not entry.is_file:
            return None
        try:
            with open(entry.host, "rb") as f:
                return f.read(limit)
        except OSError as exc:
            raise BuildError(f"cannot read {path} from the image: {exc.strerror or exc}") from exc
