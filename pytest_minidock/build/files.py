"""Layers for ``COPY``, ``ADD`` and ``WORKDIR``, written as reproducible tars without a container.

A ``LayerTree`` collects what a step puts in the image (path -> ``TarEntry``: type, mode, owner,
content source) and writes it as a sorted PAX tar with numeric owners and clamped times, so the
same sources always give the same layer, for root and for an ordinary user alike (ownership is
written into the tar, never applied on disk). ``copy_into`` applies docker's copy rules:

* a directory source copies its *contents*; the destination directory takes the source
  directory's mode (and owner, for ``--from``);
* a file source lands at ``dest/name`` when ``dest`` ends in ``/``, is an existing directory in
  the image, or several sources are copied; otherwise at ``dest`` itself;
* ``--parents`` keeps each source's path (after a ``/./`` pivot) under the destination;
* missing directories on the way are created ``0755``, owned by the ``--chown`` user; existing
  ones are written with their own metadata (the destination is resolved through the image's
  symlinks first, as buildkit does);
* files from the context belong to ``0:0`` unless ``--chown``; files from another stage or image
  keep their owner; ``--chmod`` (octal or symbolic) applies to everything copied.

``context_items`` and ``image_items`` turn what a source names (in the context, or in another
stage or image through a ``LayerView``) into ``CopyItem`` values; ``materialize`` writes entries
back onto disk for bind mounts.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat

from pytest_minidock._record import dataclass, replace
from pytest_minidock.build.context import (
    component_matcher,
    has_wildcards,
    is_archive,
    located,
    parents_keep,
)
from pytest_minidock.build.rootfs import clean_path
from pytest_minidock.capabilities import host_root
from pytest_minidock.errors import BuildError
from pytest_minidock.store.layers import TAR_BLOCK, TAR_TYPES, tar_header

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    import tarfile
    from collections.abc import Callable, Iterable
    from pathlib import Path
    from typing import IO, Literal

    from pytest_minidock.build.context import ContextEntry, ContextSource
    from pytest_minidock.build.rootfs import LayerView, ViewEntry
    from pytest_minidock.dockerfile.instructions import Add, Copy

__all__ = [
    "CopyItem",
    "LayerTree",
    "Owner",
    "TarEntry",
    "context_entry",
    "context_items",
    "copy_into",
    "ensure_dir",
    "entries_from_archive",
    "image_items",
    "materialize",
    "parse_chmod",
    "resolve_owner",
    "resolve_user_ids",
    "view_entry",
    "view_item",
    "view_matches",
]

if TYPE_CHECKING:
    TarKind = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo"]
else:
    TarKind = str

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Owner:
    """A numeric ``uid:gid``."""

    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One member of a layer: its path (relative, clean), type, metadata and content source."""

    path: str
    kind: TarKind
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    link: str = ""
    data: bytes | None = None
    host: bytes | None = None
    rdev: int = 0


@dataclass(frozen=True, slots=True)
class CopyItem:
    """One thing a ``COPY``/``ADD`` copies: a file (``entries`` holds it, with ``path`` ``""``) or
    a directory's contents (``entries`` relative to it, ``root`` the directory itself)."""

    name: str
    is_dir: bool
    entries: tuple[TarEntry, ...]
    root: TarEntry | None = None
    keep: str = ""
    """For ``--parents``: the path kept under the destination (``""`` otherwise)."""
    keep_owner: bool = False
    """Keep each entry's owner (``--from``, archives) instead of ``0:0``."""


class LayerTree:
    """The members of one layer, by path."""

    def __init__(self) -> None:
        self.entries: dict[str, TarEntry] = {}

    def add(self, entry: TarEntry) -> None:
        """Add (or replace) an entry; a replaced directory keeps what is below it."""
        self.entries[entry.path] = entry

    def __len__(self) -> int:
        return len(self.entries)

    def tar_size(self) -> int:
        """About how large the layer's tar is (PAX records for long names not counted)."""
        total = 2 * TAR_BLOCK
        for e in self.entries.values():
            size = (len(e.data) if e.data is not None else e.size) if e.kind == "file" else 0
            total += TAR_BLOCK + size + -size % TAR_BLOCK
        return total

    def _hardlinks(self) -> dict[str, TarEntry]:
        """The entries with each hard-link group's data on the member that sorts first."""
        entries = dict(self.entries)
        groups: dict[str, list[str]] = {}
        for path, entry in entries.items():
            if entry.kind == "hardlink":
                groups.setdefault(entry.link, []).append(path)
        for target, links in groups.items():
            data = entries.get(target)
            if data is None or data.kind != "file":
                raise BuildError(f"hard link {links[0]} points to {target}, which is no file here")
            members = sorted([target, *links], key=os.fsencode)
            first = members[0]
            if first != target:
                entries[first] = replace(data, path=first)
                entries[target] = replace(data, kind="hardlink", link=first, size=0, host=None)
            for path in members[1:]:
                entries[path] = replace(entries[path], kind="hardlink", link=first, size=0)
        return entries

    def write(self, out: IO[bytes], mtime: int) -> None:
        """Write the layer tar (uncompressed) to ``out``: sorted, PAX, times set to ``mtime``.

        Encoded by ``store.layers.tar_header``, as the layers of ``RUN`` steps are (so neither
        depends on how a Python version's ``tarfile`` happens to fill unused header fields)."""
        entries = self._hardlinks()
        for path in sorted(entries, key=os.fsencode):
            entry = entries[path]
            kind = entry.kind
            size = 0
            if kind == "file":
                size = len(entry.data) if entry.data is not None else entry.size
            major = minor = 0
            if kind in ("char", "block"):
                major, minor = os.major(entry.rdev), os.minor(entry.rdev)
            out.write(
                tar_header(
                    os.fsencode(path + "/" if kind == "dir" else path),
                    mode=entry.mode & 0o7777,
                    uid=entry.uid,
                    gid=entry.gid,
                    size=size,
                    mtime=mtime,
                    typeflag=TAR_TYPES[kind],
                    linkname=os.fsencode(entry.link) if kind in ("symlink", "hardlink") else b"",
                    devmajor=major,
                    devminor=minor,
                )
            )
            if kind != "file":
                continue
            if entry.data is not None:
                out.write(entry.data)
            else:
                _copy_host_file(out, entry)
            out.write(bytes(-size % TAR_BLOCK))
        out.write(bytes(2 * TAR_BLOCK))  # the end of the archive


def _copy_host_file(out: IO[bytes], entry: TarEntry) -> None:
    """Write the ``entry.size`` bytes of the host file ``entry.host`` to ``out``."""
    assert entry.host is not None
    shown = os.fsdecode(entry.host)
    try:
        fd = os.open(entry.host, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise BuildError(f"cannot read {shown}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb", buffering=0) as f:
        size = os.fstat(fd).st_size
        left = entry.size
        while left and size == entry.size:
            try:
                chunk = f.read(min(left, _CHUNK))
            except OSError as exc:
                raise BuildError(f"cannot read {shown}: {exc.strerror or exc}") from exc
            if not chunk:
                size = entry.size - left  # it shrank
                break
            out.write(chunk)
            left -= len(chunk)
        if size != entry.size:
            raise BuildError(
                f"{shown} changed while it was being copied "
                f"({entry.size} bytes when hashed, {size} now); run the build again"
            )


# -- ownership and modes -----------------------------------------------------------------------


def _number(text: str) -> bool:
    """Whether ``text`` is a decimal number (ASCII digits only, as ``[0-9]+``)."""
    return text.isascii() and text.isdigit()


def _colon_file(data: bytes | None) -> list[list[str]]:
    if data is None:
        return []
    out = []
    for raw in data.split(b"\n"):
        line = raw.strip().decode("utf-8", "surrogateescape")
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


def resolve_owner(text: str, view: LayerView | None) -> Owner:
    """``--chown``/``USER`` text (``user[:group]``, names or numbers) as ids in the image.

    A user without a group gets the group of the same number (docker's rule for ``--chown``).
    Raises ``ValueError`` for a name that ``/etc/passwd`` or ``/etc/group`` do not have.
    """
    user, _, group = text.partition(":")
    if not user:
        raise ValueError(f"invalid user {text!r}: expected user[:group]")
    if _number(user):
        uid = int(user)
    else:
        passwd = _colon_file(view.read_file("/etc/passwd") if view is not None else None)
        found = next((f for f in passwd if f[0] == user and len(f) > 3), None)
        if found is None or not _number(found[2]):
            raise ValueError(f"unable to find user {user}: no matching entries in passwd file")
        uid = int(found[2])
    if not group:
        return Owner(uid, uid)
    if _number(group):
        return Owner(uid, int(group))
    groups = _colon_file(view.read_file("/etc/group") if view is not None else None)
    match = next((f for f in groups if f[0] == group and len(f) > 2), None)
    if match is None or not _number(match[2]):
        raise ValueError(f"unable to find group {group}: no matching entries in group file")
    return Owner(uid, int(match[2]))


def resolve_user_ids(text: str, view: LayerView | None) -> Owner:
    """``USER`` text as ids the way a container gets them: a user's primary group from
    ``/etc/passwd`` unless a group is given (numbers need no entry)."""
    user, _, group = text.partition(":")
    uid, gid = 0, 0
    if user:
        passwd = _colon_file(view.read_file("/etc/passwd") if view is not None else None)
        if _number(user):
            uid = int(user)
            found = next((f for f in passwd if len(f) > 3 and f[2] == user), None)
        else:
            found = next((f for f in passwd if f[0] == user and len(f) > 3), None)
            if found is None or not _number(found[2]):
                raise ValueError(f"unable to find user {user}: no matching entries in passwd file")
            uid = int(found[2])
        if found is not None and _number(found[3]):
            gid = int(found[3])
    if group:
        gid = resolve_owner(f"0:{group}", view).gid
    return Owner(uid, gid)


def parse_chmod(text: str) -> Callable[[int, bool], int]:
    """``--chmod`` as a function ``(mode, is_dir) -> mode``: octal (``755``, ``0644``) or
    symbolic (``u+x``, ``go-w``, ``a=rX``, comma-separated). Raises ``ValueError``."""
    if re.fullmatch(r"[0-7]{1,4}", text):
        fixed = int(text, 8)
        return lambda mode, is_dir: fixed
    clauses = []
    for clause in text.split(","):
        match = re.fullmatch(r"([ugoa]*)([-+=])([rwxXst]*)", clause)
        if match is None or not clause:
            raise ValueError(
                f"invalid --chmod={text}: use an octal mode like 0755 or symbolic like u+x,go-w"
            )
        clauses.append(match.groups())

    def apply(mode: int, is_dir: bool) -> int:
        for written, op, perms in clauses:
            who = written or "a"
            mask = 0
            bits = 0
            if "u" in who or "a" in who:
                mask |= 0o4700
            if "g" in who or "a" in who:
                mask |= 0o2070
            if "o" in who or "a" in who:
                mask |= 0o1007
            for p in perms:
                if p == "r":
                    bits |= 0o444
                elif p == "w":
                    bits |= 0o222
                elif p == "x" or (p == "X" and (is_dir or mode & 0o111)):
                    bits |= 0o111
                elif p == "s":
                    bits |= 0o6000
                elif p == "t":
                    bits |= 0o1000
            bits &= mask
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                mode = (mode & ~mask) | bits
        return mode & 0o7777

    return apply


# -- the copy rules ----------------------------------------------------------------------------


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]`` (not the root, not the path itself)."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _dir_entry(path: str, view: LayerView | None, owner: Owner) -> TarEntry:
    """A directory entry for ``path``: the image's own metadata if it has one, else new."""
    if view is not None:
        found = view.lstat(path)
        if found is not None and found.is_dir:
            st = found.st
            return TarEntry(path.lstrip("/"), "dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        if found is not None:
            raise BuildError(f"cannot copy to {path}: it exists in the image and is no directory")
    return TarEntry(path.lstrip("/"), "dir", 0o755, owner.uid, owner.gid)


def ensure_dir(tree: LayerTree, path: str, view: LayerView | None, owner: Owner) -> None:
    """Put ``path`` and its ancestors in ``tree`` as directories (existing ones keep their
    metadata, new ones are ``0755`` and belong to ``owner``)."""
    for directory in [*_ancestors(path), path]:
        if directory == "/" or directory.lstrip("/") in tree.entries:
            continue
        tree.add(_dir_entry(directory, view, owner))


def copy_into(
    tree: LayerTree,
    items: Iterable[CopyItem],
    dest: str,
    *,
    workdir: str,
    view: LayerView | None,
    chown: Owner | None = None,
    chmod: Callable[[int, bool], int] | None = None,
    parents: bool = False,
    many: bool = False,
) -> str:
    """Put ``items`` into ``tree`` at ``dest`` (relative to ``workdir``) by docker's rules.

    ``view`` is the image being built on (``None`` for ``--link``: nothing below is looked at);
    ``many``: more than one source was named. Returns the destination path used. Raises
    ``BuildError`` (without location: the caller adds it) when the rules are broken.
    """
    items = list(items)
    absolute = dest if dest.startswith("/") else posixpath.join(workdir or "/", dest)
    wants_dir = dest.endswith("/") or dest in (".", "") or absolute.endswith("/.")
    target = clean_path(absolute)
    if view is not None:
        real = view.realpath(target)
        if real is None:
            raise BuildError(f"cannot copy to {dest}: a path on the way is not a directory")
        target = real
    existing = view.resolve(target) if view is not None else None
    is_dir_dest = (
        wants_dir
        or parents
        or (existing is not None and existing.is_dir)
        or any(item.is_dir for item in items if not item.keep)
    )
    if (many or len(items) > 1) and not is_dir_dest:
        raise BuildError(
            f"when copying more than one source, the destination must be a directory and end "
            f"with a /: write {dest}/"
        )
    default_owner = chown or Owner(0, 0)
    for directory in _ancestors(target):
        if directory.lstrip("/") not in tree.entries:
            tree.add(_dir_entry(directory, view, default_owner))

    def owned(entry: TarEntry, keep_owner: bool) -> TarEntry:
        uid, gid = (entry.uid, entry.gid) if keep_owner else (0, 0)
        if chown is not None:
            uid, gid = chown.uid, chown.gid
        mode = entry.mode
        if chmod is not None and entry.kind in ("file", "dir"):
            mode = chmod(mode, entry.kind == "dir")
        return replace(entry, uid=uid, gid=gid, mode=mode)

    for item in items:
        if parents and item.keep:
            base = clean_path(f"{target}/{item.keep}")
            if base != target:
                ensure_dir(tree, posixpath.dirname(base), view, default_owner)
        else:
            base = target
        if item.is_dir:
            if base != "/":
                if item.root is not None:
                    tree.add(owned(replace(item.root, path=base.lstrip("/")), item.keep_owner))
                else:
                    ensure_dir(tree, base, view, default_owner)
            for entry in item.entries:
                path = clean_path(f"{base}/{entry.path}").lstrip("/")
                moved = replace(entry, path=path)
                if entry.kind == "hardlink":
                    moved = replace(moved, link=clean_path(f"{base}/{entry.link}").lstrip("/"))
                tree.add(owned(moved, item.keep_owner))
            continue
        (entry,) = item.entries
        if parents and item.keep:
            path = base
        elif is_dir_dest:
            if target.lstrip("/") not in tree.entries and target != "/":
                ensure_dir(tree, target, view, default_owner)
            path = clean_path(f"{target}/{item.name}")
        else:
            path = target
        tree.add(owned(replace(entry, path=path.lstrip("/")), item.keep_owner))
    return target


# -- archives ----------------------------------------------------------------------------------


def entries_from_archive(path: Path, spool: Path, what: str) -> tuple[TarEntry, ...]:
    """The members of the (possibly compressed) tar at ``path`` as entries relative to where
    ``ADD`` unpacks them; file contents are spooled into the directory ``spool``.

    Names are cleaned (a leading ``/`` or ``./`` dropped); a name that climbs out with ``..``
    raises ``BuildError`` naming the member.
    """
    import tarfile  # (only ADD of a local archive reads tars)

    from pytest_minidock.store.blobio import decompressing

    out: list[TarEntry] = []
    count = 0
    try:
        with open(path, "rb") as raw:
            stream = decompressing(raw, str(path))
            with contextlib.closing(stream), tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    name = _member_name(member.name, what)
                    if name is None:
                        continue
                    entry = _archive_entry(member, name, what)
                    if entry.kind == "file":
                        count += 1
                        spooled = spool / f"{count}"
                        source = tar.extractfile(member)
                        assert source is not None
                        with source, open(spooled, "xb") as f:
                            while chunk := source.read(_CHUNK):
                                f.write(chunk)
                        entry = replace(entry, host=os.fsencode(spooled))
                    out.append(entry)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BuildError(f"cannot unpack {what}: {exc}") from exc
    return tuple(out)


def _member_name(name: str, what: str) -> str | None:
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise BuildError(f"cannot unpack {what}: member {name!r} points outside the archive")
        parts.append(part)
    return "/".join(parts) or None


def _archive_entry(member: tarfile.TarInfo, name: str, what: str) -> TarEntry:
    mode = member.mode & 0o7777
    if member.isreg():
        return TarEntry(name, "file", mode, member.uid, member.gid, member.size)
    if member.isdir():
        return TarEntry(name, "dir", mode, member.uid, member.gid)
    if member.issym():
        return TarEntry(name, "symlink", 0o777, member.uid, member.gid, link=member.linkname)
    if member.islnk():
        link = _member_name(member.linkname, what)
        if link is None:
            raise BuildError(f"cannot unpack {what}: hard link {member.name!r} has no target")
        return TarEntry(name, "hardlink", mode, member.uid, member.gid, link=link)
    if member.ischr() or member.isblk():
        kind: TarKind = "char" if member.ischr() else "block"
        rdev = os.makedev(member.devmajor, member.devminor)
        return TarEntry(name, kind, mode, member.uid, member.gid, rdev=rdev)
    if member.isfifo():
        return TarEntry(name, "fifo", mode, member.uid, member.gid)
    raise BuildError(f"cannot unpack {what}: member {member.name!r} has an unknown type")


# -- entries from other places, and back onto disk ---------------------------------------------


def context_entry(entry: ContextEntry, path: str) -> TarEntry:
    """A context entry as a layer member at ``path``."""
    host = os.fsencode(entry.host) if entry.kind == "file" else None
    return TarEntry(
        path,
        entry.kind,
        entry.mode,
        entry.uid,
        entry.gid,
        entry.size,
        entry.link,
        host=host,
        rdev=entry.rdev,
    )


def view_entry(entry: ViewEntry, path: str) -> TarEntry:
    """An entry of an image (a ``LayerView``) as a layer member at ``path``, owner kept."""
    st = entry.st
    mode = st.st_mode
    kind: TarKind
    link = ""
    rdev = 0
    if stat.S_ISREG(mode):
        kind = "file"
    elif stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_ISLNK(mode):
        kind = "symlink"
        link = os.fsdecode(os.readlink(entry.host))
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "char" if stat.S_ISCHR(mode) else "block"
        rdev = st.st_rdev
    elif stat.S_ISFIFO(mode):
        kind = "fifo"
    else:
        raise BuildError(f"cannot copy {entry.path}: sockets cannot be copied")
    return TarEntry(
        path,
        kind,
        stat.S_IMODE(mode),
        st.st_uid,
        st.st_gid,
        st.st_size if kind == "file" else 0,
        link,
        host=entry.host if kind == "file" else None,
        rdev=rdev,
    )


def view_item(view: LayerView, entry: ViewEntry, name: str, keep: str = "") -> CopyItem:
    """What copying ``entry`` of an image copies: the file, or the directory's contents."""
    if entry.is_dir:
        entries = tuple(view_entry(child, rel) for rel, child in view.walk(entry))
        return CopyItem(name, True, entries, view_entry(entry, ""), keep, keep_owner=True)
    return CopyItem(name, False, (view_entry(entry, ""),), None, keep, keep_owner=True)


def materialize(entries: Iterable[TarEntry], dest: Path) -> None:
    """Write ``entries`` (paths relative to ``dest``) as real files under ``dest``.

    For bind mounts of a filtered context or of another stage. Owners are applied only as root;
    nothing is ever written through a symlink.
    """
    root = os.fsencode(dest)
    as_root = host_root()
    dirs: list[tuple[bytes, int]] = []
    for entry in sorted(entries, key=lambda e: os.fsencode(e.path)):
        rel = os.fsencode(entry.path)
        if not rel:
            continue
        target = os.path.join(root, rel)
        _check_parents(root, rel)
        try:
            if entry.kind == "dir":
                with contextlib.suppress(FileExistsError):
                    os.mkdir(target, 0o700)
                dirs.append((target, entry.mode))
            elif entry.kind == "file":
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    if entry.data is not None:
                        out.write(entry.data)
                    elif entry.host is not None:
                        with open(entry.host, "rb") as src:
                            while chunk := src.read(_CHUNK):
                                out.write(chunk)
                os.chmod(target, entry.mode)
            elif entry.kind == "symlink":
                os.symlink(entry.link, target)
            elif entry.kind == "hardlink":
                os.link(os.path.join(root, os.fsencode(entry.link)), target, follow_symlinks=False)
            elif entry.kind == "fifo":
                os.mkfifo(target, entry.mode)
            elif as_root:
                kind = stat.S_IFCHR if entry.kind == "char" else stat.S_IFBLK
                os.mknod(target, kind | entry.mode, entry.rdev)
            else:
                continue
            if as_root:
                os.chown(target, entry.uid, entry.gid, follow_symlinks=False)
        except OSError as exc:
            raise BuildError(f"cannot write {os.fsdecode(target)}: {exc.strerror}") from exc
    for path, mode in reversed(dirs):
        os.chmod(path, mode)


def _check_parents(root: bytes, rel: bytes) -> None:
    current = root
    for part in rel.split(b"/")[:-1]:
        current = os.path.join(current, part)
        if not stat.S_ISDIR(os.lstat(current).st_mode):
            raise BuildError(f"refusing to write below {os.fsdecode(current)}: not a directory")


# -- what a COPY/ADD source copies -------------------------------------------------------------


def context_items(
    inst: Copy | Add, source: ContextSource, *, parents: bool, spool: Callable[[], Path]
) -> list[CopyItem]:
    """What copying ``source`` of the context copies: a file, a directory's contents, or (for
    ``ADD``) an archive's members, unpacked into ``spool()``."""
    keep = parents_keep(source.written, source.rel) if parents else ""
    if source.is_dir:
        entries = tuple(context_entry(e, e.rel) for e in source.entries)
        assert source.root is not None
        root = context_entry(source.root, "")
        if source.rel == "":  # the context root's own mode is not docker's to send
            root = replace(root, mode=0o755)
        return [CopyItem(source.name, True, entries, root, keep)]
    (entry,) = source.entries
    if inst.keyword == "ADD" and entry.kind == "file" and is_archive(entry.host):
        members = entries_from_archive(entry.host, spool(), f"{source.written} (ADD)")
        return [CopyItem(source.name, True, members, None, keep, keep_owner=True)]
    return [CopyItem(source.name, False, (context_entry(entry, ""),), None, keep)]


def image_items(inst: Copy | Add, view: LayerView, name: str) -> list[CopyItem]:
    """What ``COPY --from`` copies out of the image ``view`` (stage or image ``name``): each
    source with wildcards expanded, ``--exclude`` and ``--parents`` applied. Raises
    ``BuildError`` naming ``FILE:LINE`` for a source that is not there."""
    from pytest_minidock.build.ignore import PatternMatcher

    parents = getattr(inst, "parents", False)
    try:
        exclude = PatternMatcher.from_patterns(inst.excludes)
    except ValueError as exc:
        raise located(inst.location, f"{inst.keyword} --exclude: {exc}") from None
    items: list[CopyItem] = []
    for source in inst.sources:
        found = 0
        for match in view_matches(view, clean_path(source)):
            entry = view.resolve(match)
            if entry is None:
                continue
            keep = parents_keep(source, match.lstrip("/")) if parents else ""
            item = view_item(view, entry, posixpath.basename(match) or "/", keep)
            if exclude.patterns:
                kept = tuple(e for e in item.entries if not exclude.matches(e.path))
                item = replace(item, entries=kept)
            items.append(item)
            found += 1
        if not found:
            raise located(inst.location, f"{inst.keyword} failed: {source!r} not found in {name!r}")
    return items


def view_matches(view: LayerView, path: str) -> list[str]:
    """The paths of an image that ``path`` (wildcards per component) names, sorted."""
    parts = [p for p in path.split("/") if p]
    found = ["/"]
    for part in parts:
        if not has_wildcards(part):
            found = [posixpath.join(d, part) for d in found]
            continue
        try:
            regex = component_matcher(part)
        except ValueError:
            return []
        matched = []
        for directory in found:
            entry = view.resolve(directory)
            if entry is None or not entry.is_dir:
                continue
            for child in view.listdir(entry):
                base = posixpath.basename(child.path)
                if regex.match(base):
                    matched.append(posixpath.join(directory, base))
        found = matched
    return sorted(found)
