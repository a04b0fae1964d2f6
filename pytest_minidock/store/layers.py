"""Layer changesets: make reproducible gzip tar layers from a directory or from the diff of two.

A layer is an OCI image-spec changeset: a PAX tar whose entries are sorted by path bytes (so a
parent always comes before its children), named relative to the root without a leading ``./``
or ``/`` (directories end in ``/``), with empty uname/gname, numeric uid/gid, full modes
(setuid/setgid/sticky included), symlinks, hardlinks, devices, fifos and xattrs
(``SCHILY.xattr.<name>``). Deletions are whiteouts: ``dir/.wh.name`` hides ``name`` from the
layers below, ``dir/.wh..wh..opq`` hides everything below ``dir``.

Everything is streamed: the tar is cut into fixed 1 MiB chunks that are deflated in parallel on
a small thread pool (each chunk primed with the previous 32 KiB as a dictionary, pigz style),
while the main thread walks the tree, reads files and hashes the uncompressed stream. The gzip
header carries no name and no time, and the chunking does not depend on file boundaries or on
the number of threads, so the same content always gives a byte-identical blob and digest. The
file is fsynced before the call returns (``GzipPipeline.finish``, ``copy_tar``), so the store
may rename it into place at once; on an error it is removed.

Modification times are clamped to ``SOURCE_DATE_EPOCH`` (or 0) unless the caller asks for
another bound, or for the files' own times with ``mtime=None``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import io
import os
import stat

from pytest_minidock._record import dataclass
from pytest_minidock.digest import Digest, Hasher
from pytest_minidock.errors import StoreError, UsageError
from pytest_minidock.store.blobio import (
    CHUNK,
    ChunkSink,
    GzipPipeline,
    LayerBlob,
    Prefetch,
    VerifyingReader,
)

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path
    from typing import BinaryIO, Final, cast
else:

    def cast(_type: object, value: object) -> object:  # typing's, without its import
        return value


__all__ = [
    "DEFAULT_COMPRESSLEVEL",
    "MTIME_FROM_ENV",
    "OPAQUE_WHITEOUT",
    "TAR_BLOCK",
    "TAR_TYPES",
    "WHITEOUT_PREFIX",
    "LayerBlob",
    "compress_tar",
    "compress_tar_bytes",
    "copy_tar",
    "layer_from_diff",
    "layer_from_dir",
    "layer_from_overlay_upper",
    "open_layer",
    "tar_header",
]

DEFAULT_COMPRESSLEVEL: Final = 1
"""gzip level used unless the caller says otherwise. Measured on a 97 MB tree of Python's standard
library on 2 cores: level 1 makes 95 MB/s and a 33% blob, level 6 41 MB/s and a 29% blob; 2.3x the
speed for 14% more bytes, and a local store mostly writes and reads, it rarely ships."""

WHITEOUT_PREFIX: Final = ".wh."
OPAQUE_WHITEOUT: Final = ".wh..wh..opq"

TAR_BLOCK: Final = 512
"""A tar block (``tarfile.BLOCKSIZE``, without importing tarfile): headers fill one, contents
are padded to whole ones, two empty ones end the archive."""
_BLOCK: Final = TAR_BLOCK
_PAX_XATTR: Final = "SCHILY.xattr."

# Overlay keeps its own bookkeeping in these namespaces; it never belongs in a layer.
_OVERLAY_XATTR_PREFIXES: Final = ("trusted.overlay.", "user.overlay.")
_SKIPPED_XATTRS: Final = frozenset({"security.selinux"})
_OPAQUE_XATTRS: Final = ("trusted.overlay.opaque", "user.overlay.opaque")
_WHITEOUT_XATTRS: Final = ("trusted.overlay.whiteout", "user.overlay.whiteout")
_UNEXPORTABLE_XATTRS: Final = {
    "trusted.overlay.redirect": "redirect_dir",
    "user.overlay.redirect": "redirect_dir",
    "trusted.overlay.metacopy": "metacopy",
    "user.overlay.metacopy": "metacopy",
}

_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC: Final = b"\xfd7zXZ\x00"
_BZIP2_MAGIC: Final = b"BZh"


class _FromEnv(enum.Enum):
    TOKEN = enum.auto()


MTIME_FROM_ENV: Final = _FromEnv.TOKEN
"""Default for ``mtime``: clamp to ``int($SOURCE_DATE_EPOCH)`` when set, else to 0."""

MtimeArg = int | None | _FromEnv


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def layer_from_dir(
    root: Path,
    out: Path,
    *,
    mtime: MtimeArg = MTIME_FROM_ENV,
    compresslevel: int = DEFAULT_COMPRESSLEVEL,
) -> LayerBlob:
    """Write every entry below ``root`` (not ``root`` itself) as a gzip layer to ``out``."""
    clamp = _resolve_mtime(mtime)
    return _build(
        out,
        compresslevel,
        lambda: _items_from_dir(os.fsencode(root)),
        clamp,
        what=f"layer from {root}",
    )


def layer_from_diff(
    lower: Path,
    upper: Path,
    out: Path,
    *,
    mtime: MtimeArg = MTIME_FROM_ENV,
    compresslevel: int = DEFAULT_COMPRESSLEVEL,
    exclude: Callable[[str], bool] | None = None,
) -> LayerBlob:
    """Write the changes that turn ``lower`` into ``upper`` as a gzip layer to ``out``.

    ``exclude`` drops entries by their path as the container sees it (``/etc/hosts``).

    New and changed entries are emitted with the metadata they have in ``upper``, together with
    every ancestor directory (as docker does, so a snapshot of this layer alone gets the right
    owner and mode on those directories); removed entries become ``.wh.`` whiteouts (one for a
    removed directory, none for its children). Regular files count as changed when their size
    differs, or when their mtime differs and their bytes do too.
    """
    clamp = _resolve_mtime(mtime)
    return _build(
        out,
        compresslevel,
        lambda: _excluding(_items_from_diff(os.fsencode(lower), os.fsencode(upper)), exclude),
        clamp,
        what=f"layer from the diff of {lower} and {upper}",
    )


def layer_from_overlay_upper(
    upper: Path,
    out: Path,
    *,
    mtime: MtimeArg = MTIME_FROM_ENV,
    compresslevel: int = DEFAULT_COMPRESSLEVEL,
    exclude: Callable[[str], bool] | None = None,
) -> LayerBlob:
    """Write an overlayfs upper directory as a gzip layer to ``out``.

    ``exclude`` gets each entry's path as the container sees it (``/etc/hosts``) and drops the
    entries it returns True for (a runtime's mount points, say).

    Overlay whiteouts (a 0:0 character device, or a file carrying ``*.overlay.whiteout``) become
    ``.wh.name`` entries and opaque directories (``*.overlay.opaque`` = ``y``) get a
    ``.wh..wh..opq`` entry; overlay's own xattrs are dropped. An upper dir that depends on its
    lower layers (``redirect_dir`` or ``metacopy`` xattrs) cannot be exported and raises
    ``StoreError``: mount the overlay with ``redirect_dir=off,metacopy=off``.
    """
    clamp = _resolve_mtime(mtime)
    return _build(
        out,
        compresslevel,
        lambda: _excluding(_items_from_overlay_upper(os.fsencode(upper)), exclude),
        clamp,
        what=f"layer from overlay upper dir {upper}",
    )


def compress_tar(
    src: BinaryIO, out: Path, *, compresslevel: int = DEFAULT_COMPRESSLEVEL
) -> LayerBlob:
    """Gzip an uncompressed tar stream (read to EOF) into ``out``, hashing both sides as it goes.

    The same tar bytes always give the same blob, identical to what ``layer_from_*`` write.
    """

    def fill(pipe: GzipPipeline) -> None:
        sink = ChunkSink(pipe.feed)
        while True:
            data = src.read(CHUNK)
            if not data:
                break
            sink.write(data)
        sink.flush()

    return _compress_into(out, compresslevel, fill)


def compress_tar_bytes(
    data: bytes, out: Path, *, compresslevel: int = DEFAULT_COMPRESSLEVEL
) -> LayerBlob:
    """``compress_tar`` of a tar already in memory: the same blob, without the chunk buffer."""

    def fill(pipe: GzipPipeline) -> None:
        for start in range(0, len(data), CHUNK):
            pipe.feed(data[start : start + CHUNK])

    return _compress_into(out, compresslevel, fill)


def _compress_into(
    out: Path, compresslevel: int, fill: Callable[[GzipPipeline], None]
) -> LayerBlob:
    """The blob ``fill`` feeds a ``GzipPipeline`` writing ``out``; ``out`` removed on failure."""
    _check_level(compresslevel)
    try:
        with GzipPipeline(out, compresslevel) as pipe:
            fill(pipe)
            return pipe.finish()
    except OSError as exc:
        _unlink_quietly(out)
        raise StoreError(f"cannot compress tar stream into {out}: {_oserror_text(exc)}") from exc
    except BaseException:
        _unlink_quietly(out)
        raise


def copy_tar(src: BinaryIO, out: Path) -> LayerBlob:
    """Write an uncompressed tar stream (read to EOF) into ``out`` as is, hashing it as it goes.

    For an uncompressed layer blob (``application/vnd.oci.image.layer.v1.tar``) the blob digest
    and the diff_id are the same.
    """
    hasher = Hasher()
    try:
        with open(out, "xb") as f:
            while True:
                data = src.read(CHUNK)
                if not data:
                    break
                hasher.update(data)
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        _unlink_quietly(out)
        raise StoreError(f"cannot write tar stream into {out}: {_oserror_text(exc)}") from exc
    except BaseException:
        _unlink_quietly(out)
        raise
    digest = hasher.digest()
    return LayerBlob(out, digest, hasher.size, digest, hasher.size)


def open_layer(path: Path, *, diff_id: Digest | None = None) -> BinaryIO:
    """Open a layer blob and return its uncompressed tar stream.

    gzip and plain tar are recognised by their first bytes; zstd, xz and bzip2 layers raise
    ``StoreError``. With ``diff_id``, reading the stream to EOF raises ``DigestMismatch`` unless
    the uncompressed bytes hash to it.
    """
    try:
        raw = open(path, "rb")  # noqa: SIM115 - ownership passes to the returned stream
    except OSError as exc:
        raise StoreError(f"cannot open layer {path}: {_oserror_text(exc)}") from exc
    try:
        magic = raw.read(6)
        raw.seek(0)
        stream: io.BufferedIOBase
        if magic.startswith(_GZIP_MAGIC):
            import gzip  # only for reading layers: not at import

            inflating = Prefetch(gzip.GzipFile(fileobj=raw, mode="rb"), raw, f"layer {path}")
            stream = io.BufferedReader(inflating, CHUNK)
        elif magic.startswith(_ZSTD_MAGIC):
            raise StoreError(
                f"layer {path} is zstd-compressed; zstd is unsupported (the Python 3.11 standard "
                "library cannot read it): use a gzip or uncompressed layer"
            )
        elif magic.startswith(_XZ_MAGIC) or magic.startswith(_BZIP2_MAGIC):
            raise StoreError(
                f"layer {path} is xz- or bzip2-compressed, which OCI layers are not: "
                "use a gzip or uncompressed layer"
            )
        else:
            stream = raw
        if diff_id is not None:
            stream = io.BufferedReader(VerifyingReader(stream, diff_id, f"layer {path}"), CHUNK)
        return cast("BinaryIO", stream)
    except BaseException:
        raw.close()
        raise


# --------------------------------------------------------------------------------------------
# Items: what goes into the tar, before sorting
# --------------------------------------------------------------------------------------------


class _Kind(enum.Enum):
    FILE = enum.auto()  # a real filesystem entry at ``src``
    WHITEOUT = enum.auto()  # ``.wh.name``
    OPAQUE = enum.auto()  # ``.wh..wh..opq``


@dataclass(slots=True)
class _Item:
    rel: bytes  # the tar name, without the trailing "/" of a directory
    kind: _Kind
    src: bytes  # filesystem path of the entry (for WHITEOUT/OPAQUE: where the marker came from)
    st: os.stat_result | None  # lstat of ``src`` (None for synthetic markers)
    xattrs: list[tuple[str, bytes]]


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _ancestors(rel: bytes) -> Iterable[bytes]:
    while True:
        cut = rel.rfind(b"/")
        if cut < 0:
            return
        rel = rel[:cut]
        yield rel


def _scan(root: bytes) -> Iterable[tuple[bytes, bytes, os.stat_result]]:
    """Yield (rel, path, lstat) for every entry below ``root``, sockets skipped, unsorted."""
    stack: list[tuple[bytes, bytes]] = [(b"", root)]
    while stack:
        rel, path = stack.pop()
        with os.scandir(path) as it:
            for de in it:
                st = de.stat(follow_symlinks=False)
                if stat.S_ISSOCK(st.st_mode):
                    continue
                r = _join(rel, de.name)
                yield r, de.path, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append((r, de.path))


def _read_xattrs(path: bytes, *, keep_overlay: bool = False) -> list[tuple[str, bytes]]:
    """The xattrs of ``path`` (not followed), sorted, without overlay's and SELinux's."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
    out: list[tuple[str, bytes]] = []
    for name in sorted(names):
        if name in _SKIPPED_XATTRS:
            continue
        if not keep_overlay and name.startswith(_OVERLAY_XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:  # removed between list and get
                continue
            raise
        out.append((name, value))
    return out


def _items_from_dir(root: bytes) -> list[_Item]:
    items = [_Item(rel, _Kind.FILE, path, st, _read_xattrs(path)) for rel, path, st in _scan(root)]
    items.sort(key=lambda i: i.rel)
    return items


def _items_from_overlay_upper(upper: bytes) -> list[_Item]:
    items: list[_Item] = []
    for rel, path, st in _scan(upper):
        xattrs = _read_xattrs(path, keep_overlay=True)
        names = {name for name, _ in xattrs}
        for name in names:
            if name in _UNEXPORTABLE_XATTRS:
                raise StoreError(
                    f"{os.fsdecode(path)} carries {name}: an overlay upper dir that uses "
                    f"{_UNEXPORTABLE_XATTRS[name]} depends on its lower layers and cannot be "
                    f"exported; mount the overlay with {_UNEXPORTABLE_XATTRS[name]}=off"
                )
        parent, _, base = rel.rpartition(b"/")
        is_whiteout = (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0) or (
            stat.S_ISREG(st.st_mode) and any(n in names for n in _WHITEOUT_XATTRS)
        )
        if is_whiteout:
            wh = _join(parent, WHITEOUT_PREFIX.encode() + base)
            items.append(_Item(wh, _Kind.WHITEOUT, path, st, []))
            continue
        kept = [(n, v) for n, v in xattrs if not n.startswith(_OVERLAY_XATTR_PREFIXES)]
        items.append(_Item(rel, _Kind.FILE, path, st, kept))
        if stat.S_ISDIR(st.st_mode) and any(
            n == opq and v == b"y" for n, v in xattrs for opq in _OPAQUE_XATTRS
        ):
            items.append(_Item(_join(rel, OPAQUE_WHITEOUT.encode()), _Kind.OPAQUE, path, st, []))
    items.sort(key=lambda i: i.rel)
    return items


def _excluding(items: list[_Item], exclude: Callable[[str], bool] | None) -> list[_Item]:
    if exclude is None:
        return items
    return [i for i in items if not exclude("/" + os.fsdecode(i.rel).rstrip("/"))]


def _listdir(path: bytes) -> dict[bytes, tuple[bytes, os.stat_result]]:
    out: dict[bytes, tuple[bytes, os.stat_result]] = {}
    with os.scandir(path) as it:
        for de in it:
            st = de.stat(follow_symlinks=False)
            if not stat.S_ISSOCK(st.st_mode):
                out[de.name] = (de.path, st)
    return out


def _same_content(a: bytes, b: bytes) -> bool:
    with (
        open(a, "rb", buffering=0) as fa,
        open(b, "rb", buffering=0) as fb,
    ):
        while True:
            ca = fa.read(CHUNK)
            cb = fb.read(CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True


def _changed(
    lpath: bytes,
    lst: os.stat_result,
    upath: bytes,
    ust: os.stat_result,
    uxattrs: list[tuple[str, bytes]],
) -> bool:
    if stat.S_IFMT(lst.st_mode) != stat.S_IFMT(ust.st_mode):
        return True
    if (
        stat.S_IMODE(lst.st_mode) != stat.S_IMODE(ust.st_mode)
        or lst.st_uid != ust.st_uid
        or lst.st_gid != ust.st_gid
    ):
        return True
    mode = ust.st_mode
    if stat.S_ISREG(mode):
        if lst.st_size != ust.st_size:
            return True
        if lst.st_mtime_ns != ust.st_mtime_ns and not _same_content(lpath, upath):
            return True
    elif stat.S_ISLNK(mode):
        if os.readlink(lpath) != os.readlink(upath):
            return True
    elif (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and lst.st_rdev != ust.st_rdev:
        return True
    return _read_xattrs(lpath) != uxattrs


def _items_from_diff(lower: bytes, upper: bytes) -> list[_Item]:
    emitted: dict[bytes, _Item] = {}
    upper_dirs: dict[bytes, tuple[bytes, os.stat_result]] = {}
    # (rel, lower dir or None when everything below is new, upper dir)
    stack: list[tuple[bytes, bytes | None, bytes]] = [(b"", lower, upper)]
    while stack:
        rel, ldir, udir = stack.pop()
        uchildren = _listdir(udir)
        lchildren = _listdir(ldir) if ldir is not None else {}
        for name, (lpath, _) in lchildren.items():
            if name not in uchildren:
                wh = _join(rel, WHITEOUT_PREFIX.encode() + name)
                emitted[wh] = _Item(wh, _Kind.WHITEOUT, lpath, None, [])
        for name, (upath, ust) in uchildren.items():
            r = _join(rel, name)
            uxattrs = _read_xattrs(upath)
            lentry = lchildren.get(name)
            if stat.S_ISDIR(ust.st_mode):
                upper_dirs[r] = (upath, ust)
                if lentry is not None and stat.S_ISDIR(lentry[1].st_mode):
                    if _changed(lentry[0], lentry[1], upath, ust, uxattrs):
                        emitted[r] = _Item(r, _Kind.FILE, upath, ust, uxattrs)
                    stack.append((r, lentry[0], upath))
                else:
                    emitted[r] = _Item(r, _Kind.FILE, upath, ust, uxattrs)
                    stack.append((r, None, upath))
            elif lentry is None or _changed(lentry[0], lentry[1], upath, ust, uxattrs):
                emitted[r] = _Item(r, _Kind.FILE, upath, ust, uxattrs)
    # Every ancestor of a change goes in too, with its upper metadata (docker does the same):
    # a snapshot made from this layer alone must not invent owners and modes for them.
    for rel in list(emitted):
        for anc in _ancestors(rel):
            if anc in emitted:
                break
            upath, ust = upper_dirs[anc]
            emitted[anc] = _Item(anc, _Kind.FILE, upath, ust, _read_xattrs(upath))
    return sorted(emitted.values(), key=lambda i: i.rel)


# --------------------------------------------------------------------------------------------
# Tar writing
# --------------------------------------------------------------------------------------------


def _resolve_mtime(mtime: MtimeArg) -> int | None:
    if mtime is MTIME_FROM_ENV:
        env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        if not env:
            return 0
        try:
            return int(env)
        except ValueError:
            raise UsageError(
                f"SOURCE_DATE_EPOCH={env!r} is not an integer number of seconds; fix or unset it"
            ) from None
    return mtime


def _check_level(level: int) -> None:
    if not 0 <= level <= 9:
        raise UsageError(f"gzip compresslevel {level} is out of range: use 0..9")


def _tar_mtime(st: os.stat_result | None, clamp: int | None) -> int:
    if st is None:
        return clamp if clamp is not None else 0
    seconds = st.st_mtime_ns // 1_000_000_000
    return seconds if clamp is None else min(seconds, clamp)


_OCTAL_LIMIT_8: Final = 8**7  # largest value + 1 that fits a 7-digit octal field (uid, gid)
_OCTAL_LIMIT_12: Final = 8**11  # the same for the 11-digit fields (size, mtime)
TAR_TYPES: Final = {
    "file": b"0",
    "hardlink": b"1",
    "symlink": b"2",
    "char": b"3",
    "block": b"4",
    "dir": b"5",
    "fifo": b"6",
}
"""The tar typeflag of each kind of member (``tarfile``'s REGTYPE, LNKTYPE, ...)."""
_TYPE_REG: Final = TAR_TYPES["file"]
_TYPE_LINK: Final = TAR_TYPES["hardlink"]
_TYPE_SYMLINK: Final = TAR_TYPES["symlink"]
_TYPE_CHR: Final = TAR_TYPES["char"]
_TYPE_BLK: Final = TAR_TYPES["block"]
_TYPE_DIR: Final = TAR_TYPES["dir"]
_TYPE_FIFO: Final = TAR_TYPES["fifo"]
_TYPE_PAX: Final = b"x"


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One ``"<len> <key>=<value>\\n"`` record, ``<len>`` counting itself."""
    body = b" " + key + b"=" + value + b"\n"
    size = len(body) + 1
    while len(b"%d" % size) + len(body) != size:
        size = len(b"%d" % size) + len(body)
    return b"%d" % size + body


def _ascii_field(data: bytes) -> bytes:
    return bytes(c if c < 0x80 else 0x3F for c in data[:100])


def _ustar_block(
    name: bytes,
    *,
    mode: int = 0,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    typeflag: bytes = _TYPE_REG,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
) -> bytearray:
    """A 512-byte POSIX ustar header (uname/gname empty); fields must already fit."""
    buf = bytearray(
        b"".join(
            (
                name.ljust(100, b"\0"),
                b"%07o\0" % mode,
                b"%07o\0" % uid,
                b"%07o\0" % gid,
                b"%011o\0" % size,
                b"%011o\0" % mtime,
                b"        ",  # checksum, counted as spaces
                typeflag,
                linkname.ljust(100, b"\0"),
                b"ustar\x0000",
                bytes(64),  # uname, gname
                b"%07o\0" % devmajor,
                b"%07o\0" % devminor,
                bytes(167),  # prefix and padding
            )
        )
    )
    buf[148:156] = b"%06o\0 " % sum(buf)
    return buf


def tar_header(
    name: bytes,
    *,
    mode: int = 0,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    typeflag: bytes = _TYPE_REG,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: list[tuple[str, bytes]] | None = None,
) -> bytes:
    """A ustar header, preceded by a PAX extended header when a field needs one (a name or
    link target longer than 100 bytes or not ASCII, a number too large for its field, xattrs).

    The one tar writer of the package: the layers made here and the builder's ``COPY`` and
    ``WORKDIR`` layers (``build.files``) are encoded the same way."""
    records: list[bytes] = []
    binary = False
    for key, value in ((b"path", name), (b"linkpath", linkname)):
        if len(value) > 100 or not value.isascii():
            records.append(_pax_record(key, value))
            binary = binary or not _is_utf8(value)
    if not 0 <= uid < _OCTAL_LIMIT_8:
        records.append(_pax_record(b"uid", b"%d" % uid))
        uid = 0
    if not 0 <= gid < _OCTAL_LIMIT_8:
        records.append(_pax_record(b"gid", b"%d" % gid))
        gid = 0
    if not 0 <= size < _OCTAL_LIMIT_12:
        records.append(_pax_record(b"size", b"%d" % size))
        size = 0
    if not 0 <= mtime < _OCTAL_LIMIT_12:
        records.append(_pax_record(b"mtime", b"%d" % mtime))
        mtime = 0
    for xname, value in xattrs or ():
        records.append(_pax_record(_PAX_XATTR.encode() + os.fsencode(xname), value))
        binary = binary or not _is_utf8(value)
    block = _ustar_block(
        _ascii_field(name),
        mode=mode,
        uid=uid,
        gid=gid,
        size=size,
        mtime=mtime,
        typeflag=typeflag,
        linkname=_ascii_field(linkname),
        devmajor=devmajor,
        devminor=devminor,
    )
    if not records:
        return bytes(block)
    if binary:
        records.insert(0, _pax_record(b"hdrcharset", b"BINARY"))
    payload = b"".join(records)
    pax = _ustar_block(b"././@PaxHeader", size=len(payload), typeflag=_TYPE_PAX)
    return b"".join((pax, payload, bytes(-len(payload) % _BLOCK), block))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _write_items(items: list[_Item], sink: ChunkSink, clamp: int | None) -> None:
    first_link: dict[tuple[int, int], bytes] = {}
    for item in items:
        name = item.rel
        if item.kind is not _Kind.FILE:
            # Whiteouts and opaque markers: empty regular files, mode 0, owned by root.
            sink.write(tar_header(name, mtime=_tar_mtime(item.st, clamp)))
            continue
        st = item.st
        assert st is not None
        mode = st.st_mode
        size = 0
        linkname = b""
        devmajor = devminor = 0
        if stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in first_link:
                typeflag = _TYPE_LINK
                linkname = first_link[key]
            else:
                if st.st_nlink > 1:
                    first_link[key] = name
                typeflag = _TYPE_REG
                size = st.st_size
        elif stat.S_ISDIR(mode):
            typeflag = _TYPE_DIR
            name += b"/"
        elif stat.S_ISLNK(mode):
            typeflag = _TYPE_SYMLINK
            linkname = os.readlink(item.src)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            typeflag = _TYPE_CHR if stat.S_ISCHR(mode) else _TYPE_BLK
            devmajor = os.major(st.st_rdev)
            devminor = os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            typeflag = _TYPE_FIFO
        else:  # sockets and anything unknown are not part of an image
            continue
        sink.write(
            tar_header(
                name,
                mode=stat.S_IMODE(mode),
                uid=st.st_uid,
                gid=st.st_gid,
                size=size,
                mtime=_tar_mtime(st, clamp),
                typeflag=typeflag,
                linkname=linkname,
                devmajor=devmajor,
                devminor=devminor,
                xattrs=item.xattrs,
            )
        )
        if size:
            sink.copy_file(item.src, size)
            sink.write(bytes(-size % _BLOCK))


def _build(
    out: Path,
    level: int,
    items: Callable[[], list[_Item]],
    clamp: int | None,
    *,
    what: str,
) -> LayerBlob:
    _check_level(level)
    try:
        listed = items()
        with GzipPipeline(out, level) as pipe:
            sink = ChunkSink(pipe.feed)
            _write_items(listed, sink, clamp)
            sink.write(bytes(2 * _BLOCK))  # end-of-archive marker
            sink.flush()
            return pipe.finish()
    except OSError as exc:
        _unlink_quietly(out)
        name = f" {os.fsdecode(exc.filename)}" if exc.filename is not None else ""
        raise StoreError(f"cannot make {what}:{name} {_oserror_text(exc)}") from exc
    except BaseException:
        _unlink_quietly(out)
        raise


def _oserror_text(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
