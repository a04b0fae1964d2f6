"""Snapshots: unpack a layer tar once into a read-only directory usable as an overlay lowerdir.

Extraction is a security boundary: a layer comes from a registry or an archive nobody vetted.
``extract_layer`` therefore never uses ``tarfile.extract`` and never follows a symlink. Every
directory on the way to a member is opened with ``O_DIRECTORY | O_NOFOLLOW`` relative to its
parent's descriptor (``openat`` style), files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``,
and metadata is applied through descriptors or with ``follow_symlinks=False``. A member is
refused with ``UnsafeLayer`` when its name is absolute, has a ``..`` component, a NUL byte or is
too long, when its parent path goes through a symlink, when it is a hardlink to anything but a
regular file this layer already extracted, a relative symlink whose target climbs out of the
root, or a device node the policy does not allow. Absolute symlink targets are fine: they are
resolved inside the container's root, never on the host, because nothing here follows them.

On any error everything written below ``dest`` is removed again, leaving ``dest`` empty.

Layers are read by a small strict reader of their usual form (ustar headers, with PAX records
for long names, large numbers and xattrs: what docker, buildkit and this package write), which
spares every command that unpacks a layer the import of ``tarfile`` (with ``shutil``, ``bz2``,
``lzma``: ~7 ms). At the first member in any other form (GNU long names or sparse files, global
PAX headers, ...) the rest of the stream goes to ``tarfile``; members are checked the same way
whichever read them.

OCI whiteouts become overlay whiteouts: ``dir/.wh.name`` a 0:0 character device (as root) or an
empty file with ``user.overlay.whiteout`` (rootless, the parent dir then carries
``user.overlay.opaque=x`` as overlayfs requires); ``dir/.wh..wh..opq`` marks ``dir`` opaque with
``trusted.overlay.opaque=y`` or ``user.overlay.opaque=y``. Overlay xattrs found in the layer
itself are never applied: a layer must not be able to forge overlay metadata.
"""

from __future__ import annotations

import errno
import os
import stat
import zlib

from pytest_minidock._record import dataclass, field
from pytest_minidock.capabilities import host_root
from pytest_minidock.errors import StoreError, UnsafeLayer

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    import tarfile
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any, BinaryIO, Final, Literal, Self, TypeAlias

__all__ = ["ExtractPolicy", "extract_layer", "first_mismatch", "regular_files"]

CHUNK: Final = 1 << 20
_TAR_BUFSIZE: Final = 1 << 16
"""The readers' stream buffer. tarfile's copies the unread rest of this buffer on every header
read, so bigger is slower; the stream below it reads ``CHUNK`` at a time anyway."""
_MAX_PAX: Final = 1 << 20
"""PAX extended headers up to this size are read here; a larger one goes to tarfile."""
MAX_PATH_BYTES: Final = 4096
"""Longest member name, hardlink or symlink target accepted (Linux ``PATH_MAX``)."""
MAX_NAME_BYTES: Final = 255
"""Longest single path component accepted (Linux ``NAME_MAX``)."""
MAX_DEPTH: Final = 256
"""Most path components a member name may have."""

_WH_PREFIX: Final = b".wh."
_WH_META_PREFIX: Final = b".wh..wh."
_WH_OPAQUE: Final = b".wh..wh..opq"
_PAX_XATTR: Final = "SCHILY.xattr."
_NEVER_APPLIED_XATTR_PREFIXES: Final = ("trusted.overlay.", "user.overlay.")
_NEVER_APPLIED_XATTRS: Final = frozenset({"security.selinux"})
_PRIVILEGED_XATTR_PREFIXES: Final = ("trusted.", "security.")
_XATTR_SKIPPABLE_ERRNOS: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP})

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS: Final = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class ExtractPolicy:
    """What extraction may do besides writing plain files, links and directories."""

    devices: bool
    """Create character/block device nodes; when False a device member is ``UnsafeLayer``."""
    chown: bool
    """Apply the tar uid/gid (needs root); when False files belong to the extracting user."""
    whiteout: Literal["chardev", "xattr"]
    """Overlay whiteout form: 0:0 character devices and ``trusted.overlay.opaque`` (root), or
    ``user.overlay.whiteout`` files and ``user.overlay.opaque`` (rootless, ``userxattr``)."""

    @classmethod
    def for_current_user(cls, uid_map: str = "/proc/self/uid_map") -> ExtractPolicy:
        """Everything for root on the host; the rootless subset for anybody else: no device
        nodes, ``user.overlay.*`` whiteouts, and owners only for the root of a user namespace
        that maps more than its own id (``uid_map``: its map). An owner that namespace does not
        map is left as the extracting user."""
        if host_root():
            return cls(devices=True, chown=True, whiteout="chardev")
        chown = False
        if os.geteuid() == 0:  # root of a user namespace: how many ids does it map?
            try:
                with open(uid_map) as f:
                    ids = sum(int(line.split()[2]) for line in f if line.strip())
            except (OSError, ValueError, IndexError):
                ids = 1
            chown = ids > 1
        return cls(devices=False, chown=chown, whiteout="xattr")


def extract_layer(tar_stream: BinaryIO, dest: Path, *, policy: ExtractPolicy, source: str) -> int:
    """Unpack the uncompressed layer tar ``tar_stream`` into the empty directory ``dest``.

    Returns the number of bytes of regular-file content written. ``source`` names the layer
    (e.g. its digest) in error messages. Raises ``UnsafeLayer`` for a member that would escape
    ``dest`` or that the policy forbids, ``StoreError`` for a corrupt tar or a filesystem error;
    either way ``dest`` is left empty. The stream is read to EOF, so a digest-verifying stream
    gets to check the whole layer.
    """
    try:
        root_fd = os.open(dest, _DIR_FLAGS)
    except OSError as exc:
        raise StoreError(
            f"cannot extract layer {source}: snapshot directory {dest}: {exc.strerror}"
        ) from exc
    try:
        if os.listdir(root_fd):
            raise StoreError(
                f"cannot extract layer {source}: snapshot directory {dest} is not empty"
            )
        before = _RootState.capture(root_fd)
        extractor = _Extractor(root_fd, policy, source)
        try:
            extractor.run(tar_stream)
        except BaseException:
            extractor.close()
            _empty_dir(root_fd)
            before.restore(root_fd)
            raise
        extractor.close()
        return extractor.written
    finally:
        os.close(root_fd)


@dataclass(frozen=True, slots=True)
class _RootState:
    """Owner, mode and xattr names of ``dest`` before extraction, put back after a failure."""

    st: os.stat_result
    xattrs: frozenset[str]

    @classmethod
    def capture(cls, fd: int) -> _RootState:
        try:
            names = frozenset(os.listxattr(fd))
        except OSError:
            names = frozenset()
        return cls(os.fstat(fd), names)

    def restore(self, fd: int) -> None:
        try:
            for name in os.listxattr(fd):
                if name not in self.xattrs:
                    os.removexattr(fd, name)
        except OSError:
            pass
        try:
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != (self.st.st_uid, self.st.st_gid):
                os.fchown(fd, self.st.st_uid, self.st.st_gid)
            os.fchmod(fd, stat.S_IMODE(self.st.st_mode))
        except OSError:
            pass


# ---- reading tars ----------------------------------------------------------------------------

_BLOCK: Final = 512
_REGULAR: Final = frozenset({b"0", b"\0", b"7"})  # tarfile's REGTYPE, AREGTYPE, CONTTYPE
_PLAIN: Final = _REGULAR | {b"1", b"2", b"3", b"4", b"5", b"6"}
"""The member types read here; any other (GNU's, global PAX headers, ...) goes to tarfile."""
_LOW_BYTES: Final = bytes(range(128))  # deleted from a header, they leave its bytes >= 128


class _BadTar(Exception):
    """The stream is not a valid tar (reported as ``StoreError``)."""


class _Handover(Exception):
    """A member in a form this reader leaves to tarfile; ``data`` is what was read of the stream
    from its first header on (the rest is still in the stream)."""

    def __init__(self, data: bytes) -> None:
        super().__init__("handed over to tarfile")
        self.data = data


class _Header:
    """A member as read by ``_TarReader``: the fields of ``tarfile.TarInfo`` the extractor uses,
    with tarfile's values (names decoded as UTF-8 with ``surrogateescape``)."""

    __slots__ = (
        "devmajor",
        "devminor",
        "gid",
        "linkname",
        "mode",
        "mtime",
        "name",
        "pax_headers",
        "size",
        "type",
        "uid",
    )

    def __init__(self, buf: bytes) -> None:
        if _number(buf[148:156]) not in _checksums(buf):
            raise _BadTar("damaged tar header: bad checksum")
        self.name = _text(buf[0:100])
        self.mode = _number(buf[100:108])
        self.uid = _number(buf[108:116])
        self.gid = _number(buf[116:124])
        self.size = _number(buf[124:136])
        self.mtime: int | float = _number(buf[136:148])
        self.type = buf[156:157]
        self.linkname = _text(buf[157:257])
        self.devmajor = _number(buf[329:337])
        self.devminor = _number(buf[337:345])
        self.pax_headers: dict[str, str] = {}
        prefix = _text(buf[345:500])
        if self.type == b"\0" and self.name.endswith("/"):  # an old V7 directory
            self.type = b"5"
        if self.type == b"5":
            self.name = self.name.rstrip("/")
        if prefix and self.type in _PLAIN:  # (GNU headers keep other things there)
            self.name = prefix + "/" + self.name

    def apply_pax(self, records: dict[str, str]) -> None:
        """Take the fields an extended header sets, as tarfile does (a bad number is 0)."""
        for key, value in records.items():
            if key == "path":
                self.name = value.rstrip("/")
            elif key == "linkpath":
                self.linkname = value
            elif key in ("size", "uid", "gid"):
                try:
                    setattr(self, key, int(value))
                except ValueError:
                    setattr(self, key, 0)
            elif key == "mtime":
                try:
                    self.mtime = float(value)
                except ValueError:
                    self.mtime = 0
        self.pax_headers = records
        if self.type == b"5":
            self.name = self.name.rstrip("/")

    def isreg(self) -> bool:
        return self.type in _REGULAR

    def isdir(self) -> bool:
        return self.type == b"5"

    def issym(self) -> bool:
        return self.type == b"2"

    def islnk(self) -> bool:
        return self.type == b"1"

    def ischr(self) -> bool:
        return self.type == b"3"

    def isblk(self) -> bool:
        return self.type == b"4"

    def isfifo(self) -> bool:
        return self.type == b"6"


def _text(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU's base-256 (tarfile's ``nti``)."""
    if field[0] in (0o200, 0o377):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0o377 else n
    end = field.find(b"\0")
    try:
        return int((field if end < 0 else field[:end]).decode("ascii").strip() or "0", 8)
    except ValueError:  # (UnicodeDecodeError included)
        raise _BadTar("damaged tar header: invalid header") from None


def _checksums(buf: bytes) -> tuple[int, int]:
    """The unsigned and the signed sum of the header, its checksum field read as spaces."""
    rest = buf[:148] + buf[156:]
    unsigned = 256 + sum(rest)
    return unsigned, unsigned - 256 * len(rest.translate(None, _LOW_BYTES))


def _pax_records(data: bytes) -> dict[str, str] | None:
    """The ``"<len> <key>=<value>\\n"`` records of an extended header (up to NUL padding),
    decoded as tarfile decodes them; None if one of them is a GNU sparse map (for tarfile)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise _BadTar("damaged tar header: invalid PAX record")
        length = int(digits)
        end = pos + length - 1  # the record's newline
        key, equals, value = data[space + 1 : end].partition(b"=")
        if length < 5 or end >= len(data) or data[end] != 0x0A or not key or not equals:
            raise _BadTar("damaged tar header: invalid PAX record")
        name = key.decode("utf-8", "surrogateescape")
        if name.startswith("GNU.sparse."):
            return None
        out[name] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _TarReader:
    """Reads the members of an uncompressed tar stream, the way ``tarfile`` does with the
    extractor's settings (a damaged header is an error, never a silent end; a clean end of
    the stream on a header boundary is an end, as docker has it). ``next`` raises
    ``_Handover`` at a member in a form left to tarfile."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._buf = b""
        self._pos = 0
        self._mark = -1  # where the member being read started in _buf (-1: none)
        self._started = False
        self._left = 0  # unread content of the current member
        self._pad = 0  # and the padding after it

    def _fill(self, n: int) -> None:
        """Buffer at least ``n`` bytes (fewer only at the end of the stream), keeping what
        was read from ``_mark`` on."""
        base = self._pos if self._mark < 0 else self._mark
        parts = [self._buf[base:]]
        have = len(self._buf) - self._pos
        while have < n:
            data = self._stream.read(max(n - have, _TAR_BUFSIZE))
            if not data:
                break
            parts.append(data)
            have += len(data)
        self._buf = b"".join(parts)
        self._pos -= base
        self._mark = -1 if self._mark < 0 else 0

    def _take(self, n: int) -> bytes:
        if len(self._buf) - self._pos < n:
            self._fill(n)
        data = self._buf[self._pos : self._pos + n]
        self._pos += len(data)
        return data

    def _skip(self, n: int) -> None:
        while n > 0:
            got = len(self._take(min(n, _TAR_BUFSIZE)))
            if not got:
                raise _BadTar("unexpected end of data")
            n -= got

    def readinto(self, view: memoryview) -> int:
        """Read the current member's content (0 at its end, or early when the stream ends)."""
        n = min(len(view), self._left)
        if n <= 0:
            return 0
        if self._pos == len(self._buf):
            data = self._stream.read(max(n, _TAR_BUFSIZE))
            if not data:
                return 0
            self._buf, self._pos = data, 0
        data = self._buf[self._pos : self._pos + n]
        self._pos += len(data)
        self._left -= len(data)
        view[: len(data)] = data
        return len(data)

    def _header(self, *, first: bool) -> _Header | None:
        buf = self._take(_BLOCK)
        if not buf:
            if first and not self._started:
                raise _BadTar("empty file")
            if first:
                return None  # the stream ended on a header boundary
            raise _BadTar("damaged tar header: unexpected end of data after an extended header")
        self._started = True
        if len(buf) < _BLOCK:
            raise _BadTar("damaged tar header: truncated header")
        if buf.count(0) == _BLOCK:
            if first:
                return None  # end-of-archive blocks
            raise _BadTar("damaged tar header: end of archive after an extended header")
        return _Header(buf)

    def next(self) -> _Header | None:
        """The next member (its content is read with ``readinto``), or None at the end."""
        self._skip(self._left + self._pad)
        self._left = self._pad = 0
        self._mark = self._pos
        try:
            member = self._header(first=True)
            if member is None:
                return None
            if member.type == b"x" and member.size <= _MAX_PAX:
                data = self._take(member.size + -member.size % _BLOCK)
                if len(data) < member.size:
                    raise _BadTar("unexpected end of data")
                records = _pax_records(data)
                following = self._header(first=False)
                assert following is not None
                if records is None or following.type not in _PLAIN:
                    raise _Handover(self._buf[self._mark :])
                following.apply_pax(records)
                member = following
            elif member.type not in _PLAIN:
                raise _Handover(self._buf[self._mark :])
        finally:
            self._mark = -1
        if member.isreg():
            self._left = member.size
            self._pad = -member.size % _BLOCK
        return member


class _Prefixed:
    """``data``, then the rest of ``stream``: for tarfile, from the member it takes over."""

    def __init__(self, data: bytes, stream: BinaryIO) -> None:
        self._data = data
        self._stream = stream

    def read(self, n: int = -1) -> bytes:
        if self._data:
            out = self._data if n < 0 else self._data[:n]
            self._data = self._data[len(out) :]
            return out
        return self._stream.read(n)


def _tarfile_classes() -> tuple[type[tarfile.TarInfo], Any]:
    """tarfile's reader, strict about damaged headers (imported only when a layer needs it)."""
    import tarfile

    class StrictTarInfo(tarfile.TarInfo):
        """A TarInfo whose reader fails on a damaged header instead of silently stopping there.

        ``TarFile.next`` treats a bad checksum or a short header after the first member as the
        end of the archive; a layer cut or corrupted that way would extract as a silently
        truncated tree. A clean EOF on a header boundary (no end-of-archive blocks) is still
        accepted, as docker does.
        """

        @classmethod
        def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Self:
            try:
                return super().fromtarfile(tarfile_)
            except tarfile.HeaderError as exc:
                if type(exc).__name__ in ("EOFHeaderError", "EmptyHeaderError"):
                    raise  # a proper end of archive, or a clean EOF on a header boundary
                raise tarfile.ReadError(f"damaged tar header: {exc}") from None

    class StreamTarFile(tarfile.TarFile):
        """``TarFile`` with the ``members`` list typeshed leaves out (cleared as we stream)."""

        members: list[tarfile.TarInfo]

    return StrictTarInfo, StreamTarFile


if TYPE_CHECKING:
    _Member: TypeAlias = "_Header | tarfile.TarInfo"
    _Content: TypeAlias = "Callable[[_Member], Any]"
    """Opens a member's content (something with ``readinto``)."""


def _split_name(name: str, what: str, refuse: Callable[[str], Exception]) -> list[bytes]:
    """The components of a member or link name (``.`` and ``//`` dropped), or ``refuse(why)``
    raised for one extraction never follows: NUL, too long, absolute, ``..``, too deep."""
    raw = os.fsencode(name)
    if b"\0" in raw:
        raise refuse(f"{what} contains a NUL byte")
    if len(raw) > MAX_PATH_BYTES:
        raise refuse(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    if raw.startswith(b"/"):
        raise refuse(f"{what} is an absolute path")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    for part in parts:
        if part == b"..":
            raise refuse(f"{what} has a '..' component")
        if len(part) > MAX_NAME_BYTES:
            raise refuse(f"{what} has a component longer than {MAX_NAME_BYTES} bytes")
    if len(parts) > MAX_DEPTH:
        raise refuse(f"{what} is nested deeper than {MAX_DEPTH} directories")
    return parts


def _each_tarfile_member(stream: Any, visit: Callable[[Any, Any], None]) -> None:
    """Read the rest of a layer stream with tarfile (strict headers: ``_tarfile_classes``),
    calling ``visit(member, extractfile)`` for each member; tarfile's errors, also those of
    ``visit`` reading a member, come out as ``_BadTar``."""
    import tarfile

    strict_info, stream_tarfile = _tarfile_classes()
    try:
        with stream_tarfile.open(
            fileobj=stream,
            mode="r|",
            bufsize=_TAR_BUFSIZE,
            encoding="utf-8",
            errors="surrogateescape",
            tarinfo=strict_info,
        ) as tf:
            while (member := tf.next()) is not None:
                tf.members.clear()  # a stream has no use for them: keep memory flat
                visit(member, tf.extractfile)
    except tarfile.TarError as exc:
        raise _BadTar(str(exc)) from exc


@dataclass(slots=True)
class _DirMeta:
    mode: int
    uid: int
    gid: int
    mtime_ns: int | None  # None: an implicit parent, keep whatever time it has


@dataclass(slots=True)
class _State:
    """What this layer created so far, keyed by relative path bytes (b"" is the root)."""

    created: set[bytes] = field(default_factory=set)  # everything that exists below dest
    regular: set[bytes] = field(default_factory=set)  # regular files: valid hardlink targets
    dirs: dict[bytes, _DirMeta] = field(default_factory=dict)  # metadata applied at the end
    whiteouts: set[bytes] = field(default_factory=set)
    xwhiteouts: dict[bytes, set[bytes]] = field(default_factory=dict)  # parent -> names
    opaque: set[bytes] = field(default_factory=set)

    def forget(self, rel: bytes) -> None:
        """Drop every record of ``rel``, which was just removed."""
        self.created.discard(rel)
        self.regular.discard(rel)
        self.dirs.pop(rel, None)
        self.whiteouts.discard(rel)
        self.opaque.discard(rel)
        self.xwhiteouts.pop(rel, None)
        parent, _, name = rel.rpartition(b"/")
        names = self.xwhiteouts.get(parent)
        if names is not None:
            names.discard(name)


def _rel(parts: list[bytes]) -> bytes:
    return b"/".join(parts)


def _show(rel: bytes) -> str:
    return os.fsdecode(rel) if rel else "."


class _Extractor:
    def __init__(self, root_fd: int, policy: ExtractPolicy, source: str) -> None:
        self.root_fd = root_fd
        self.policy = policy
        self.source = source
        self.written = 0
        self.state = _State()
        self.host_root = host_root()
        self._cache_key: tuple[bytes, ...] | None = None
        self._cache_fd = -1
        self._member = ""
        self._buf = bytearray()  # grown to the largest member, up to CHUNK, when needed

    # ---- plumbing ---------------------------------------------------------------------------
    def _chown(self, target: int | bytes, uid: int, gid: int, dir_fd: int | None = None) -> None:
        """Give ``target`` (an fd, or a name in ``dir_fd``) the member's owner; in a user
        namespace, an owner its map lacks (EINVAL) leaves it the extracting user's."""
        try:
            if isinstance(target, int):
                os.fchown(target, uid, gid)
            else:
                os.chown(target, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.EINVAL or self.host_root:
                raise

    def close(self) -> None:
        self._drop_cache()

    def _drop_cache(self) -> None:
        if self._cache_fd >= 0:
            os.close(self._cache_fd)
        self._cache_fd = -1
        self._cache_key = None

    def unsafe(self, reason: str) -> UnsafeLayer:
        """The error for the member being extracted: names the layer, the member and why."""
        return UnsafeLayer(f"unsafe layer {self.source}: member {self._member!r}: {reason}")

    def run(self, stream: BinaryIO) -> None:
        reader = _TarReader(stream)
        try:
            try:
                while (member := reader.next()) is not None:
                    self._member = member.name
                    self._one(member, lambda _member: reader)
            except _Handover as handover:
                self._run_tarfile(_Prefixed(handover.data, stream))
            self._member = ""
            self._finish()
            while stream.read(CHUNK):  # let a verifying stream see every byte
                pass
        except (UnsafeLayer, StoreError):
            raise
        except (_BadTar, EOFError, zlib.error) as exc:
            where = f" at member {self._member!r}" if self._member else ""
            raise StoreError(f"layer {self.source} is not a valid tar{where}: {exc}") from exc
        except OSError as exc:
            where = f" member {self._member!r}" if self._member else ""
            raise StoreError(
                f"cannot extract layer {self.source}{where}: {exc.strerror or exc}"
            ) from exc

    def _run_tarfile(self, stream: Any) -> None:
        """The rest of the layer, from a member ``_TarReader`` leaves to tarfile."""

        def visit(member: Any, extract: Any) -> None:
            self._member = member.name
            self._one(member, extract)

        _each_tarfile_member(stream, visit)

    # ---- names ------------------------------------------------------------------------------

    def _split(self, name: str, what: str) -> list[bytes]:
        """Validate a member or link name and return its components (``.`` and ``//`` dropped)."""
        return _split_name(name, what, self.unsafe)

    # ---- directory walking (never follows a symlink) ----------------------------------------

    def _open_dir(self, parts: list[bytes], *, create: bool) -> int:
        """Open ``parts`` below the root as a directory, one ``openat`` at a time.

        Missing directories are made (mode 0755, as docker does) when ``create``. The caller owns
        the returned descriptor (never the root's).
        """
        cur = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=cur)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=cur)
                    rel = _rel(parts[: i + 1])
                    self.state.created.add(rel)
                    self.state.dirs[rel] = _DirMeta(0o755, -1, -1, None)
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=cur)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(part, dir_fd=cur, follow_symlinks=False)
                    kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                    raise self.unsafe(
                        f"parent path {_show(_rel(parts[: i + 1]))!r} is {kind}"
                    ) from None
                os.close(cur)
                cur = nxt
        except BaseException:
            os.close(cur)
            raise
        return cur

    def _parent(self, parents: list[bytes]) -> int:
        """The (cached) descriptor of a member's parent directory, made if missing."""
        key = tuple(parents)
        if key != self._cache_key:
            self._drop_cache()
            self._cache_fd = self._open_dir(parents, create=True)
            self._cache_key = key
        return self._cache_fd

    def _clear(self, pfd: int, rel: bytes, name: bytes) -> None:
        """Remove whatever ``name`` in ``pfd`` is, if anything (this layer made it)."""
        if rel not in self.state.created:
            return
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            _rmtree_at(pfd, name, lambda sub: self.state.forget(rel + b"/" + sub))
        else:
            os.unlink(name, dir_fd=pfd)
        self.state.forget(rel)

    # ---- members ----------------------------------------------------------------------------

    def _one(self, member: _Member, content: _Content) -> None:
        parts = self._split(member.name, "name")
        if not parts:
            if not member.isdir():
                raise self.unsafe("only a directory may stand for the layer root")
            self.state.dirs[b""] = self._dir_meta(member)
            self._set_xattrs(self.root_fd, member, b"")
            return
        if len(parts) > 1 and parts[0].startswith(_WH_META_PREFIX):
            return  # aufs metadata such as .wh..wh.plnk/ (docker skips it too)
        parents, leaf = parts[:-1], parts[-1]
        for part in parents:
            if part.startswith(_WH_PREFIX):
                raise self.unsafe("a whiteout name is used as a directory")
        rel = _rel(parts)
        if leaf.startswith(_WH_PREFIX):
            self._whiteout(parents, leaf)
        elif member.isreg():
            self._regular(content, member, parents, leaf, rel)
        elif member.isdir():
            self._directory(member, parents, leaf, rel)
        elif member.issym():
            self._symlink(member, parents, leaf, rel)
        elif member.islnk():
            self._hardlink(member, parents, leaf, rel)
        elif member.ischr() or member.isblk():
            if not self.policy.devices:
                raise self.unsafe(
                    "device nodes are not allowed here (extracting as a user who cannot make them)"
                )
            self._node(member, parents, leaf, rel)
        elif member.isfifo():
            self._node(member, parents, leaf, rel)
        else:
            raise self.unsafe(f"unsupported tar entry type {member.type!r}")

    def _regular(
        self,
        content: _Content,
        member: _Member,
        parents: list[bytes],
        leaf: bytes,
        rel: bytes,
    ) -> None:
        pfd = self._parent(parents)
        self._clear(pfd, rel, leaf)
        fd = os.open(leaf, _CREATE_FLAGS, 0o600, dir_fd=pfd)
        try:
            src = content(member)
            if src is None:  # pragma: no cover - isreg() members always have data
                raise StoreError(f"layer {self.source}: no data for {member.name!r}")
            need = min(max(member.size, 1), CHUNK)
            if len(self._buf) < need:  # no zeroed 1 MiB for the few small files of most layers
                self._buf = bytearray(need)
            view = memoryview(self._buf)
            total = 0
            while True:
                n = src.readinto(view)
                if not n:
                    break
                chunk = view[:n]
                while chunk:
                    chunk = chunk[os.write(fd, chunk) :]
                total += n
            if total != member.size:
                raise StoreError(
                    f"layer {self.source} is truncated: {member.name!r} has {total} of "
                    f"{member.size} bytes"
                )
            self.written += total
            if self.policy.chown:
                self._chown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)
            self._set_xattrs(fd, member, rel)
            ns = _mtime_ns(member)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)
        self.state.created.add(rel)
        self.state.regular.add(rel)

    def _directory(self, member: _Member, parents: list[bytes], leaf: bytes, rel: bytes) -> None:
        pfd = self._parent(parents)
        exists = rel in self.state.created
        if not exists or not stat.S_ISDIR(os.stat(leaf, dir_fd=pfd, follow_symlinks=False).st_mode):
            was_whiteout = rel in self.state.whiteouts
            self._clear(pfd, rel, leaf)
            os.mkdir(leaf, 0o700, dir_fd=pfd)
            self.state.created.add(rel)
            if was_whiteout:
                # ``.wh.d`` then ``d/`` in one layer: the new d replaces the lower one whole.
                self.state.opaque.add(rel)
        self.state.dirs[rel] = self._dir_meta(member)
        if self._xattrs(member):
            fd = os.open(leaf, _DIR_FLAGS, dir_fd=pfd)
            try:
                self._set_xattrs(fd, member, rel)
            finally:
                os.close(fd)

    def _symlink(self, member: _Member, parents: list[bytes], leaf: bytes, rel: bytes) -> None:
        target = os.fsencode(member.linkname)
        if not target:
            raise self.unsafe("symlink has an empty target")
        if b"\0" in target:
            raise self.unsafe("symlink target contains a NUL byte")
        if len(target) > MAX_PATH_BYTES:
            raise self.unsafe(f"symlink target is longer than {MAX_PATH_BYTES} bytes")
        if not target.startswith(b"/"):
            # Resolve lexically from the link's directory; it must stay inside the root.
            depth = len(parents)
            for part in target.split(b"/"):
                if part == b"..":
                    depth -= 1
                    if depth < 0:
                        raise self.unsafe(
                            f"symlink target {member.linkname!r} climbs out of the layer root"
                        )
                elif part not in (b"", b"."):
                    depth += 1
        pfd = self._parent(parents)
        self._clear(pfd, rel, leaf)
        os.symlink(target, leaf, dir_fd=pfd)
        self.state.created.add(rel)
        if self.policy.chown:
            self._chown(leaf, member.uid, member.gid, dir_fd=pfd)
        if self._xattrs(member):
            self._set_xattrs(_proc_path(pfd, leaf), member, rel)
        ns = _mtime_ns(member)
        os.utime(leaf, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, member: _Member, parents: list[bytes], leaf: bytes, rel: bytes) -> None:
        tparts = self._split(member.linkname, "hardlink target")
        trel = _rel(tparts)
        if not tparts or trel not in self.state.regular:
            raise self.unsafe(
                f"hardlink target {member.linkname!r} is not a regular file extracted earlier "
                "from this layer"
            )
        if trel == rel:
            raise self.unsafe("hardlink to itself")
        pfd = self._parent(parents)
        self._clear(pfd, rel, leaf)
        if trel not in self.state.regular:  # the clear removed the target's directory
            raise self.unsafe(f"hardlink target {member.linkname!r} was replaced by its own link")
        tfd = self._open_dir(tparts[:-1], create=False)
        try:
            st = os.stat(tparts[-1], dir_fd=tfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):  # pragma: no cover - guarded by state.regular
                raise self.unsafe(f"hardlink target {member.linkname!r} is not a regular file")
            os.link(tparts[-1], leaf, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)
        self.state.created.add(rel)
        self.state.regular.add(rel)

    def _node(self, member: _Member, parents: list[bytes], leaf: bytes, rel: bytes) -> None:
        pfd = self._parent(parents)
        self._clear(pfd, rel, leaf)
        if member.isfifo():
            os.mkfifo(leaf, 0o600, dir_fd=pfd)
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
            os.mknod(leaf, kind | 0o600, device, dir_fd=pfd)
        self.state.created.add(rel)
        if self.policy.chown:
            self._chown(leaf, member.uid, member.gid, dir_fd=pfd)
        os.chmod(leaf, member.mode & 0o7777, dir_fd=pfd, follow_symlinks=False)
        if self._xattrs(member):
            self._set_xattrs(_proc_path(pfd, leaf), member, rel)
        ns = _mtime_ns(member)
        os.utime(leaf, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)

    def _whiteout(self, parents: list[bytes], leaf: bytes) -> None:
        prel = _rel(parents)
        if leaf == _WH_OPAQUE:
            self._parent(parents)  # the directory exists in this layer, even if only implied
            self.state.opaque.add(prel)
            return
        if leaf.startswith(_WH_META_PREFIX):  # other aufs metadata (.wh..wh.plnk, ...)
            return
        name = leaf[len(_WH_PREFIX) :]
        if name in (b"", b".", b".."):
            raise self.unsafe("whiteout names no entry")
        rel = _rel([*parents, name])
        pfd = self._parent(parents)
        self._clear(pfd, rel, name)
        if self.policy.whiteout == "chardev":
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
        else:
            fd = os.open(name, _CREATE_FLAGS, 0o644, dir_fd=pfd)
            try:
                os.setxattr(fd, "user.overlay.whiteout", b"y")
            finally:
                os.close(fd)
            self.state.xwhiteouts.setdefault(prel, set()).add(name)
        self.state.created.add(rel)
        self.state.whiteouts.add(rel)

    # ---- metadata ---------------------------------------------------------------------------

    def _dir_meta(self, member: _Member) -> _DirMeta:
        return _DirMeta(member.mode & 0o7777, member.uid, member.gid, _mtime_ns(member))

    def _xattrs(self, member: _Member) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        for key, value in member.pax_headers.items():
            if not key.startswith(_PAX_XATTR):
                continue
            name = key[len(_PAX_XATTR) :]
            if not name or "\0" in name or len(name) > MAX_NAME_BYTES:
                raise self.unsafe(f"invalid xattr name {name!r}")
            if name in _NEVER_APPLIED_XATTRS or name.startswith(_NEVER_APPLIED_XATTR_PREFIXES):
                continue
            out.append((name, value.encode("utf-8", "surrogateescape")))
        out.sort()
        return out

    def _set_xattrs(self, target: int | bytes, member: _Member, rel: bytes) -> None:
        for name, value in self._xattrs(member):
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, value)
                else:
                    os.setxattr(target, name, value, follow_symlinks=False)
            except OSError as exc:
                if (
                    exc.errno in _XATTR_SKIPPABLE_ERRNOS
                    and name.startswith(_PRIVILEGED_XATTR_PREFIXES)
                    and not self.host_root
                ):
                    continue
                raise StoreError(
                    f"cannot extract layer {self.source}: cannot set xattr {name} on "
                    f"{_show(rel)!r}: {exc.strerror or exc}"
                ) from exc

    def _finish(self) -> None:
        """Overlay markers, then directory owners, modes and times, deepest first."""
        self._drop_cache()
        state = self.state
        opaque_name = (
            "trusted.overlay.opaque" if self.policy.whiteout == "chardev" else "user.overlay.opaque"
        )
        for prel in list(state.xwhiteouts):
            if not state.xwhiteouts[prel]:
                del state.xwhiteouts[prel]
            elif prel in state.opaque:
                # Nothing below an opaque dir shows through anyway, and overlay only honours
                # xattr whiteouts in dirs marked "x": drop them rather than leave stray files.
                fd = self._open_dir(prel.split(b"/") if prel else [], create=False)
                try:
                    for name in state.xwhiteouts[prel]:
                        os.unlink(name, dir_fd=fd)
                finally:
                    os.close(fd)
                del state.xwhiteouts[prel]
        todo = set(state.dirs) | state.opaque | set(state.xwhiteouts)
        for rel in sorted(todo, key=lambda r: (-r.count(b"/") if r else 1, r)):
            self._member = _show(rel)
            fd = self._open_dir(rel.split(b"/") if rel else [], create=False)
            try:
                if rel in state.opaque:
                    os.setxattr(fd, opaque_name, b"y")
                elif rel in state.xwhiteouts:
                    os.setxattr(fd, opaque_name, b"x")
                meta = state.dirs.get(rel)
                if meta is None:
                    continue
                if self.policy.chown and meta.uid >= 0:
                    self._chown(fd, meta.uid, meta.gid)
                os.fchmod(fd, meta.mode)
                if meta.mtime_ns is not None:
                    os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
            finally:
                os.close(fd)


def _mtime_ns(member: _Member) -> int:
    mtime = member.mtime
    if isinstance(mtime, int):
        return mtime * 1_000_000_000
    return round(mtime * 1_000_000_000)


def _proc_path(dir_fd: int, name: bytes) -> bytes:
    """A path naming ``name`` inside the directory open as ``dir_fd`` (for calls lacking
    ``dir_fd``); only the last component is left to the caller's ``follow_symlinks``."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def _rmtree_at(parent_fd: int, name: bytes, removed: Callable[[bytes], None] | None = None) -> None:
    """Remove the directory ``name`` in ``parent_fd`` and everything below it, never following a
    symlink, and without recursion (depth is bounded by ``MAX_DEPTH`` open descriptors).

    ``removed`` is told the path (relative to ``name``) of every entry removed below it.
    Directories the owner cannot enter or write are made so first (rootless extraction).
    """
    stack: list[tuple[int, bytes, int, bytes]] = []  # (dir fd, its name, parent fd, rel path)
    pfd = os.dup(parent_fd)
    try:
        stack.append((_open_for_removal(pfd, name), name, pfd, b""))
        while stack:
            fd, dname, dparent, drel = stack[-1]
            child: bytes | None = None
            with os.scandir(fd) as it:
                for entry in it:
                    ename = os.fsencode(entry.name)
                    if entry.is_dir(follow_symlinks=False):
                        child = ename
                        break
                    os.unlink(ename, dir_fd=fd)
                    if removed is not None:
                        removed(drel + b"/" + ename if drel else ename)
            if child is not None:
                crel = drel + b"/" + child if drel else child
                stack.append((_open_for_removal(fd, child), child, fd, crel))
                continue
            stack.pop()
            os.close(fd)
            os.rmdir(dname, dir_fd=dparent)
            if removed is not None and drel:
                removed(drel)
    finally:
        for fd, _, _, _ in stack:
            os.close(fd)
        os.close(pfd)


def _open_for_removal(parent_fd: int, name: bytes) -> int:
    """Open a directory about to be emptied, making sure its owner may read and write it."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=parent_fd, follow_symlinks=False)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o700 != 0o700:
            os.fchmod(fd, 0o700)
    except OSError:
        os.close(fd)
        raise
    return fd


def _empty_dir(root_fd: int) -> None:
    """Remove everything inside the directory open as ``root_fd`` (best effort, no raising)."""
    try:
        if stat.S_IMODE(os.fstat(root_fd).st_mode) & 0o700 != 0o700:
            os.fchmod(root_fd, 0o700)
        for name in os.listdir(root_fd):
            ename = os.fsencode(name)
            try:
                st = os.stat(ename, dir_fd=root_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    _rmtree_at(root_fd, ename)
                else:
                    os.unlink(ename, dir_fd=root_fd)
            except OSError:
                continue
    except OSError:
        return


# ---- checking a snapshot against its layer ---------------------------------------------------


def regular_files(tar_stream: BinaryIO, *, source: str) -> tuple[dict[bytes, int], int]:
    """The regular files an ``extract_layer`` of the layer tar ``tar_stream`` leaves, by path
    relative to the snapshot (``a/b``) with their sizes, and the bytes of file content it
    writes (what it returns), from the members' headers alone: nothing is written.

    Members are read and named as ``extract_layer`` reads and names them (the same reader,
    tarfile past a form it leaves, ``.``/``//`` dropped); a later member replaces an earlier one
    of its path (a directory replaced by a file takes its whole tree along), a whiteout removes
    the path it names, aufs metadata and whiteouts are never regular files, and a hardlink has
    the size its target had when it was made. ``StoreError`` for a tar that is not valid or a
    member ``extract_layer`` would have refused (a snapshot of it cannot be checked)."""
    walk = _Walk(source)
    reader = _TarReader(tar_stream)
    try:
        try:
            while (member := reader.next()) is not None:
                walk.member = member.name
                walk.one(member)
        except _Handover as handover:
            walk.run_tarfile(_Prefixed(handover.data, tar_stream))
    except StoreError:
        raise
    except (_BadTar, EOFError, zlib.error, OSError) as exc:
        raise StoreError(
            f"layer {source} is not a valid tar at member {walk.member!r}: {exc}"
        ) from exc
    return walk.files, walk.written


class _Walk:
    """What ``regular_files`` keeps while it reads the members (paths as ``_State`` has them)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.member = ""
        self.files: dict[bytes, int] = {}
        self.written = 0
        self._dirs: set[bytes] = set()  # directories there are, named or implied by a member
        self._parents: tuple[bytes, ...] | None = None

    def refuse(self, reason: str) -> StoreError:
        return StoreError(f"layer {self.source}: member {self.member!r}: {reason}")

    def run_tarfile(self, stream: Any) -> None:
        def visit(member: Any, extract: Any) -> None:
            self.member = member.name
            self.one(member)

        _each_tarfile_member(stream, visit)

    def _split(self, name: str, what: str) -> list[bytes]:
        """``_Extractor._split``'s components of a name (``StoreError`` where it refuses)."""
        return _split_name(name, what, self.refuse)

    def _clear(self, rel: bytes) -> None:
        """What ``_Extractor._clear`` removes at ``rel``: the entry, and its tree if a dir."""
        self.files.pop(rel, None)
        if rel in self._dirs:
            below = rel + b"/"
            for gone in [p for p in self.files if p.startswith(below)]:
                del self.files[gone]
            self._dirs = {d for d in self._dirs if d != rel and not d.startswith(below)}
            self._parents = None

    def one(self, member: _Member) -> None:
        parts = self._split(member.name, "name")
        if not parts:
            if not member.isdir():
                raise self.refuse("only a directory may stand for the layer root")
            return
        if len(parts) > 1 and parts[0].startswith(_WH_META_PREFIX):
            return  # aufs metadata: skipped
        parents, leaf = parts[:-1], parts[-1]
        key = tuple(parents)
        if key != self._parents:  # the parents are made (directories) if missing
            for i in range(1, len(parents) + 1):
                self._dirs.add(_rel(parents[:i]))
            self._parents = key
        rel = _rel(parts)
        if leaf.startswith(_WH_PREFIX):
            if leaf == _WH_OPAQUE or leaf.startswith(_WH_META_PREFIX):
                return
            name = leaf[len(_WH_PREFIX) :]
            if name in (b"", b".", b".."):
                raise self.refuse("whiteout names no entry")
            self._clear(_rel([*parents, name]))
        elif member.isreg():
            self._clear(rel)
            self.files[rel] = member.size
            self.written += member.size
        elif member.isdir():
            if rel not in self._dirs:
                self._clear(rel)
                self._dirs.add(rel)
        elif member.islnk():
            target = _rel(self._split(member.linkname, "hardlink target"))
            self._clear(rel)
            size = self.files.get(target)
            if size is None or target == rel:
                raise self.refuse(f"hardlink target {member.linkname!r} is not an earlier file")
            self.files[rel] = size
        elif member.issym() or member.ischr() or member.isblk() or member.isfifo():
            self._clear(rel)
        else:
            raise self.refuse(f"unsupported tar entry type {member.type!r}")


def first_mismatch(fs: Path, files: dict[bytes, int]) -> bytes | None:
    """The first of ``files`` (``regular_files``'s) that the snapshot directory ``fs`` lacks,
    holds as something else than a regular file, or holds with another size; None if all
    match. Parents are opened ``O_PATH | O_NOFOLLOW`` from ``fs`` down (a symlink on the way is
    a mismatch, never followed), so only search permission is needed; a directory that cannot
    be searched is a mismatch too (the snapshot cannot be checked)."""
    root_fd = os.open(fs, _PATH_FLAGS)
    cache_key: bytes | None = None
    cache_fd = -1
    try:
        for rel in sorted(files, key=_parent_of):  # (each directory opened once)
            parent, _, leaf = rel.rpartition(b"/")
            try:
                if parent != cache_key:
                    if cache_fd >= 0:
                        os.close(cache_fd)
                    cache_fd, cache_key = -1, None
                    cache_fd = _open_path(root_fd, parent)
                    cache_key = parent
                st = os.stat(leaf, dir_fd=cache_fd, follow_symlinks=False)
            except OSError:
                return rel
            if not stat.S_ISREG(st.st_mode) or st.st_size != files[rel]:
                return rel
        return None
    finally:
        if cache_fd >= 0:
            os.close(cache_fd)
        os.close(root_fd)


def _parent_of(rel: bytes) -> bytes:
    return rel.rpartition(b"/")[0]


def _open_path(root_fd: int, rel: bytes) -> int:
    """An ``O_PATH`` descriptor of the directory ``rel`` below ``root_fd``, never following a
    symlink (``OSError`` if one is on the way)."""
    cur = os.dup(root_fd)
    try:
        for part in rel.split(b"/") if rel else ():
            nxt = os.open(part, _PATH_FLAGS, dir_fd=cur)
            os.close(cur)
            cur = nxt
    except BaseException:
        os.close(cur)
        raise
    return cur
