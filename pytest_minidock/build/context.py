"""The build context: what ``COPY``/``ADD`` may read, and the content digests of what they read.

* **What is visible.** The context directory with ``.dockerignore`` (or
  ``<Dockerfile>.dockerignore``) applied: an excluded path does not exist for the build, exactly
  as if docker had not sent it. Source paths are relative to the context root and cannot leave
  it (``../x`` is ``x``, as in buildkit); a symlink named as a source is followed inside the
  context, symlinks inside a copied directory are copied as symlinks.
* **Wildcards** follow Go's ``filepath.Match`` per path component (``*``, ``?``, ``[a-z]``,
  ``[^a-z]``, ``\\`` escapes; nothing crosses ``/``), matches sorted by name.
* **Digests.** Each entry's digest covers its type, mode (permission, setuid/setgid/sticky bits),
  owner, size, symlink target and content, never its times; a source's digest covers its entries
  and where they land. Content hashes are remembered in a stat cache keyed by path, device, inode,
  size, mtime and ctime (``StatCache``), so an unchanged file is never read twice, in this
  process or the next one (the cache is saved under the store root). A file changed in the
  clock tick it was read in is not remembered (git's "racily clean" rule): with coarse file
  times, a second change in that tick would look like no change at all.
* ``fetch_url`` downloads ``ADD https://…`` sources (stdlib ``urllib``), ``is_archive`` says
  whether ``ADD`` unpacks a local file.

Every error is a ``BuildError`` naming ``FILE:LINE`` of the instruction and the source path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import sys
import time
from pathlib import Path

from pytest_minidock._record import dataclass, field
from pytest_minidock.build.ignore import PatternMatcher, go_clean, load_ignore
from pytest_minidock.build.memo import Signature, signature
from pytest_minidock.digest import sha256
from pytest_minidock.errors import BuildError, StoreError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Literal

    from pytest_minidock.dockerfile.instructions import Location

__all__ = [
    "BuildContext",
    "ContextEntry",
    "ContextSource",
    "Download",
    "EntryKind",
    "StatCache",
    "component_matcher",
    "entry_digest",
    "fetch_url",
    "has_wildcards",
    "is_archive",
    "located",
    "parents_keep",
]

if TYPE_CHECKING:
    EntryKind = Literal["file", "dir", "symlink", "char", "block", "fifo"]
else:
    EntryKind = str

_READ = 1 << 20
_without_openssl = [1 << 18]
"""How many more bytes of file content may be hashed by CPython's own sha256 (see
``_content_hex``)."""
_MAX_SYMLINKS = 40
_STAT_CACHE_VERSION = 1


def _kind(mode: int) -> EntryKind | None:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISCHR(mode):
        return "char"
    if stat.S_ISBLK(mode):
        return "block"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return None  # sockets are never part of a context


def located(location: Location, problem: str) -> BuildError:
    """A ``BuildError`` reading ``FILE:LINE: problem | the line``."""
    return BuildError(f"{location}: {problem} | {location.text.strip()}")


def entry_digest(
    kind: str, mode: int, *, uid: int, gid: int, size: int, link: str, content: str
) -> str:
    """The hex digest of one entry: everything that defines it except its times."""
    text = f"{kind}\0{stat.S_IMODE(mode):o}\0{uid}\0{gid}\0{size}\0{link}\0{content}"
    hexdigest: str = sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
    return hexdigest


# -- wildcards ---------------------------------------------------------------------------------


def has_wildcards(path: str) -> bool:
    """True if ``path`` has an unescaped ``*``, ``?`` or ``[``."""
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "*?[":
            return True
        i += 1
    return False


def component_matcher(pattern: str) -> re.Pattern[str]:
    """A regex for one path component matched like Go's ``filepath.Match``.

    Raises ``ValueError`` for a malformed pattern (an unterminated ``[`` class).
    """
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i >= n:
                raise ValueError(f"pattern {pattern!r} ends with an escape")
            out.append(re.escape(pattern[i]))
            i += 1
        elif ch == "[":
            items: list[str] = []
            negate = i < n and pattern[i] == "^"
            if negate:
                i += 1
            while True:
                if i >= n:
                    raise ValueError(f"pattern {pattern!r} has an unterminated [ class")
                if pattern[i] == "]" and items:
                    i += 1
                    break
                lo, i = _class_char(pattern, i)
                if i < n and pattern[i] == "-":
                    hi, i = _class_char(pattern, i + 1)
                    items.append(re.escape(lo) + "-" + re.escape(hi))
                else:
                    items.append(re.escape(lo))
            out.append("[" + ("^" if negate else "") + "".join(items) + "]")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if i >= len(pattern):
        raise ValueError(f"pattern {pattern!r} has an unterminated [ class")
    ch = pattern[i]
    if ch == "\\":
        if i + 1 >= len(pattern):
            raise ValueError(f"pattern {pattern!r} ends with an escape")
        return pattern[i + 1], i + 2
    if ch in "-]":
        raise ValueError(f"pattern {pattern!r} has a malformed [ class")
    return ch, i + 1


def parents_keep(written: str, match: str) -> str:
    """For ``COPY --parents``: the part of ``match`` kept under the destination.

    Everything, unless the source as written has a ``/./`` pivot: then only what follows it.
    """
    text = written.lstrip("/")
    if text.startswith("./"):
        text = text[2:]
    cut = text.find("/./")
    if cut < 0:
        return match
    prefix = [p for p in go_clean(text[:cut]).split("/") if p not in ("", ".")]
    parts = match.split("/")
    return "/".join(parts[len(prefix) :])


# -- stat cache --------------------------------------------------------------------------------


@dataclass
class StatCache:
    """Content hashes of context files by path, valid while ``lstat`` shows the same file.

    A file's hash is reused when its device, inode, size, mtime and ctime are all unchanged (a
    rewrite, ``touch`` or ``chmod`` changes one of them); ``path`` is where it is saved.
    """

    path: Path | None = None
    entries: dict[str, tuple[int, int, int, int, int, str]] = field(default_factory=dict)
    dirty: bool = False
    hashed: int = 0
    reused: int = 0

    @classmethod
    def load(cls, path: Path) -> StatCache:
        """The cache saved at ``path`` (empty if there is none or it is unreadable)."""
        cache = cls(path)
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return cache
        if not isinstance(data, dict) or data.get("version") != _STAT_CACHE_VERSION:
            return cache
        entries = data.get("entries")
        if isinstance(entries, dict):
            for rel, value in entries.items():
                if isinstance(value, list) and len(value) == 6:
                    dev, ino, size, mtime, ctime, digest = value
                    cache.entries[rel] = (dev, ino, size, mtime, ctime, digest)
        return cache

    @staticmethod
    def _fingerprint(st: os.stat_result) -> tuple[int, int, int, int, int]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def get(self, rel: str, st: os.stat_result) -> str | None:
        found = self.entries.get(rel)
        if found is not None and found[:5] == self._fingerprint(st):
            self.reused += 1
            return found[5]
        return None

    def put(self, rel: str, st: os.stat_result, digest: str, *, racy: bool = False) -> None:
        """Remember ``digest`` for the file ``st`` describes -- unless it is ``racy``: changed
        in the clock tick its content was read in, when a second change in that same tick would
        leave the same times behind (git's "racily clean" entries), so it is hashed again next
        time."""
        self.hashed += 1
        if racy:
            self.entries.pop(rel, None)
            return
        self.entries[rel] = (*self._fingerprint(st), digest)
        self.dirty = True

    def save(self) -> None:
        """Write the cache to ``path`` atomically, if it changed."""
        if self.path is None or not self.dirty:
            return
        data = {
            "version": _STAT_CACHE_VERSION,
            "entries": {k: list(v) for k, v in self.entries.items()},
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            with contextlib.suppress(FileNotFoundError):  # not renamed over it: see cache.put
                os.unlink(self.path)
            os.rename(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return  # a cache that cannot be saved only costs time next build
        self.dirty = False


# -- entries and sources -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One file, directory or link of the context that a source copies."""

    rel: str
    """Where it lands, relative to the destination (``""`` for a file copied by name)."""
    host: Path
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    size: int
    link: str
    rdev: int
    digest: str


@dataclass(frozen=True, slots=True)
class ContextSource:
    """One source path (a match of a pattern) with every entry it copies and their digest."""

    written: str
    """The source as written in the Dockerfile (after variable expansion)."""
    rel: str
    """The match, relative to the context root (``""`` is the root)."""
    name: str
    """Its base name, what a file is called at a directory destination."""
    is_dir: bool
    entries: tuple[ContextEntry, ...]
    """For a directory, everything below it (``rel`` relative to it); for a file, itself."""
    root: ContextEntry | None
    """For a directory, the directory itself."""
    digest: str


class BuildContext:
    """A context directory as the build sees it (``.dockerignore`` applied)."""

    def __init__(
        self,
        root: Path | str,
        dockerfile: Path | str | None = None,
        *,
        stat_cache: StatCache | None = None,
        matcher: PatternMatcher | None = None,
        seen: dict[str, Signature | None] | None = None,
    ) -> None:
        """``seen``: filled with the ``lstat`` signature of every path looked at (for
        ``build.memo``)."""
        self.seen = seen
        path = Path(root)
        try:
            self.root = path.resolve(strict=True)
        except OSError as exc:
            raise BuildError(
                f"build context {root}: {exc.strerror or exc}; give an existing directory"
            ) from exc
        if not self.root.is_dir():
            raise BuildError(f"build context {root} is not a directory")
        self.matcher = matcher if matcher is not None else load_ignore(self.root, dockerfile)
        self.stat_cache = stat_cache if stat_cache is not None else StatCache()

    # -- visibility ---------------------------------------------------------------------------
    def excluded(self, rel: str) -> bool:
        """True if ``.dockerignore`` hides ``rel`` (or a directory above it)."""
        return bool(self.matcher.patterns) and self.matcher.matches(rel)

    def real(self, rel: str, *, follow: bool = True) -> str | None:
        """``rel`` with symlinks resolved inside the context; ``None`` if it is not there.

        ``follow``: also follow a symlink in the last component.
        """
        todo = [p for p in reversed(rel.split("/")) if p not in ("", ".")]
        done: list[str] = []
        hops = 0
        while todo:
            name = todo.pop()
            if name == "..":
                if done:
                    done.pop()
                continue
            candidate = "/".join([*done, name])
            try:
                st = os.lstat(self.root / candidate)
            except (FileNotFoundError, NotADirectoryError):
                if self.seen is not None:
                    self.seen[str(self.root / candidate)] = None
                return None
            except OSError as exc:
                raise BuildError(f"cannot stat {self.root / candidate}: {exc.strerror}") from exc
            if self.seen is not None:
                self.seen[str(self.root / candidate)] = signature(st)
            if self.excluded(candidate):
                return None
            if stat.S_ISLNK(st.st_mode) and (todo or follow):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    return None
                target = os.readlink(self.root / candidate)
                if target.startswith("/"):
                    done = []
                todo.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
                continue
            if todo and not stat.S_ISDIR(st.st_mode):
                return None
            done.append(name)
        return "/".join(done)

    def _matches(self, pattern: str) -> list[str]:
        """The context paths ``pattern`` (clean, relative) names, wildcards expanded, sorted."""
        parts = [p for p in pattern.split("/") if p]
        found = [""]
        for part in parts:
            if not has_wildcards(part):
                found = [f"{d}/{part}" if d else part for d in found]
                continue
            regex = component_matcher(part)
            nxt: list[str] = []
            for directory in found:
                real = self.real(directory)
                if real is None:
                    continue
                where = self.root / real if real else self.root
                if self.seen is not None:  # its listing: entries added or removed change it
                    try:
                        self.seen[str(where)] = signature(os.lstat(where))
                    except OSError:
                        self.seen[str(where)] = None
                try:
                    with os.scandir(where) as it:
                        names = sorted(e.name for e in it)
                except (NotADirectoryError, FileNotFoundError):
                    continue
                except OSError as exc:
                    raise BuildError(f"cannot read {where}: {exc.strerror}") from exc
                for name in names:
                    rel = f"{real}/{name}" if real else name
                    if regex.match(name) and not self.excluded(rel):
                        nxt.append(f"{directory}/{name}" if directory else name)
            found = nxt
        return sorted(found)

    # -- sources ------------------------------------------------------------------------------
    def sources(
        self,
        written: Sequence[str],
        location: Location,
        keyword: str = "COPY",
        *,
        excludes: Sequence[str] = (),
    ) -> list[ContextSource]:
        """Every source path ``written`` names, with entries and digests.

        Raises ``BuildError`` naming ``FILE:LINE`` and the path when a source matches nothing
        (or only what ``.dockerignore`` or ``--exclude`` hides).
        """
        try:
            exclude = PatternMatcher.from_patterns(excludes)
        except ValueError as exc:
            raise BuildError(f"{location}: {keyword} --exclude: {exc}") from None
        out: list[ContextSource] = []
        for text in written:
            cleaned = go_clean("/" + text).lstrip("/")
            try:
                matches = self._matches(cleaned)
            except ValueError as exc:
                raise BuildError(f"{location}: {keyword} source {text!r}: {exc}") from None
            kept = 0
            for match in matches:
                real = self.real(match)
                if real is None:
                    continue
                if exclude.patterns and real and exclude.matches(real):
                    continue
                out.append(self._source(text, match, real, exclude))
                kept += 1
            if kept == 0:
                what = "matches no file" if has_wildcards(cleaned) else "not found"
                raise BuildError(
                    f"{location}: {keyword} failed: source {text!r} {what} in the build context "
                    f"{self.root} (or it is excluded by .dockerignore or --exclude) | "
                    f"{location.text.strip()}"
                )
        return out

    def _source(
        self, written: str, match: str, real: str, exclude: PatternMatcher
    ) -> ContextSource:
        host = self.root / real if real else self.root
        try:
            st = os.lstat(host)
        except OSError as exc:
            raise BuildError(f"cannot stat {host}: {exc.strerror}") from exc
        if self.seen is not None:
            self.seen[str(host)] = signature(st)
        name = match.rpartition("/")[2]
        if stat.S_ISDIR(st.st_mode):
            root = self._entry("", real, host, st)
            entries = tuple(self._walk(real, exclude))
            parts = [f"{e.rel}\0{e.digest}" for e in entries]
            digest = _content_hex(
                "\n".join([f"dir\0{match}\0{root.digest}", *parts]).encode(
                    "utf-8", "surrogateescape"
                )
            )
            return ContextSource(written, match, name, True, entries, root, digest)
        entry = self._entry("", real, host, st)
        digest = sha256(
            f"file\0{match}\0{entry.digest}".encode("utf-8", "surrogateescape")
        ).hexdigest()
        return ContextSource(written, match, name, False, (entry,), None, digest)

    def _entry(self, rel: str, ctx_rel: str, host: Path, st: os.stat_result) -> ContextEntry:
        kind = _kind(st.st_mode)
        if kind is None:
            raise BuildError(f"{host} is a socket, which cannot be copied into an image")
        link = os.readlink(host) if kind == "symlink" else ""
        content = ""
        size = 0
        if kind == "file":
            size = st.st_size
            content = self.stat_cache.get(ctx_rel, st) or ""
            if not content:
                before = _fs_clock_ns()
                content = _hash_file(host, size)
                self.stat_cache.put(ctx_rel, st, content, racy=max_time(st) >= before)
        rdev = st.st_rdev if kind in ("char", "block") else 0
        digest = entry_digest(
            kind, st.st_mode, uid=st.st_uid, gid=st.st_gid, size=size, link=link, content=content
        )
        if rdev:
            digest = sha256(f"{digest}\0{rdev}".encode()).hexdigest()
        return ContextEntry(
            rel,
            host,
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            size,
            link,
            rdev,
            digest,
        )

    def _walk(self, real_dir: str, exclude: PatternMatcher) -> Iterator[ContextEntry]:
        parent: tuple[bool, ...] | None = None
        if self.matcher.patterns and real_dir:
            _, parent = self.matcher.matches_with_parents(real_dir, None)
        yield from self._walk_dir(real_dir, "", parent, exclude, [])

    def _walk_dir(
        self,
        real_dir: str,
        prefix: str,
        parent: tuple[bool, ...] | None,
        exclude: PatternMatcher,
        pending: list[ContextEntry],
    ) -> Iterator[ContextEntry]:
        where = self.root / real_dir if real_dir else self.root
        try:
            with os.scandir(where) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise BuildError(
                f"cannot read build context directory {where}: {exc.strerror}"
            ) from exc
        patterns = bool(self.matcher.patterns)
        for child in children:
            ctx_rel = f"{real_dir}/{child.name}" if real_dir else child.name
            rel = prefix + child.name
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                raise BuildError(f"cannot stat {child.path}: {exc.strerror}") from exc
            if self.seen is not None:
                self.seen[child.path] = signature(st)
            if stat.S_ISSOCK(st.st_mode):
                continue
            results: tuple[bool, ...] | None = None
            excluded = False
            if patterns:
                excluded, results = self.matcher.matches_with_parents(ctx_rel, parent)
            if exclude.patterns and (exclude.matches(ctx_rel) or exclude.matches(rel)):
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if not excluded:
                yield from pending
                pending.clear()
                yield self._entry(rel, ctx_rel, Path(child.path), st)
                if is_dir:
                    yield from self._walk_dir(ctx_rel, rel + "/", results, exclude, [])
            elif is_dir and self.matcher.could_include_below(ctx_rel):
                mine = [*pending, self._entry(rel, ctx_rel, Path(child.path), st)]
                yield from self._walk_dir(ctx_rel, rel + "/", results, exclude, mine)
                if not mine:
                    pending.clear()

    def tree_digest(self, rel: str, location: Location, what: str) -> str:
        """The digest of everything at ``rel`` (for ``RUN --mount=type=bind``): ``BuildError``
        naming ``FILE:LINE`` if it is not in the context."""
        cleaned = go_clean("/" + rel).lstrip("/")
        real = self.real(cleaned)
        if real is None:
            raise BuildError(
                f"{location}: {what}: {rel!r} is not in the build context {self.root} (or it is "
                f"excluded by .dockerignore) | {location.text.strip()}"
            )
        return self._source(rel, cleaned, real, PatternMatcher()).digest

    def filtered(self, rel: str) -> bool:
        """Whether ``.dockerignore`` may hide something at or below ``rel``: a bind mount of it
        then needs a filtered copy rather than the directory itself."""
        if not self.matcher.patterns:
            return False
        real = self.real(go_clean("/" + rel).lstrip("/"))
        if not real:
            return True
        if self.excluded(real):
            return True
        if not (self.root / real).is_dir():
            return False
        return any(p.could_match_below(real) for p in self.matcher.patterns)


_CLOCK_REALTIME_COARSE = 5  # Linux: the clock file times come from (one tick of resolution)


def _fs_clock_ns() -> int:
    """The current time as the kernel stamps files with it (coarse, up to a tick behind)."""
    try:
        return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)
    except OSError:  # not Linux: be conservative by a generous tick
        return time.time_ns() - 20_000_000


def max_time(st: os.stat_result) -> int:
    """The later of a file's mtime and ctime, in nanoseconds."""
    return max(st.st_mtime_ns, st.st_ctime_ns)


def _content_hex(data: bytes) -> str:
    """The hex sha256 of ``data``, a file's content or a directory's listing.

    ``hashlib`` loads OpenSSL (~4 ms), as long as CPython's own sha256 (``digest.sha256``)
    takes for ~300 KiB (it is ~10 times slower per byte): a context of a few small files is
    hashed without it, and once more than ``_without_openssl`` bytes were, OpenSSL's is used."""
    if "hashlib" not in sys.modules and len(data) <= _without_openssl[0]:
        _without_openssl[0] -= len(data)
        small: str = sha256(data).hexdigest()
        return small
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _hash_file(path: Path, size: int) -> str:
    """The hex sha256 of the content of the file at ``path``, whose ``stat`` said ``size``
    bytes (read in one piece of that size when it is small: no chunk-sized buffer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        want = min(size + 1, _READ)  # one byte more: a file grown since ``stat`` shows
        head = os.read(fd, want)
        if len(head) < want and not (head and os.read(fd, 1)):
            return _content_hex(head)  # the whole file (most are smaller than a chunk)
        import hashlib

        h = hashlib.sha256(head)
        os.lseek(fd, len(head), os.SEEK_SET)
        while chunk := os.read(fd, _READ):
            h.update(chunk)
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return h.hexdigest()


# -- ADD: archives and URLs --------------------------------------------------------------------


def is_archive(path: Path) -> bool:
    """Whether ``ADD`` unpacks the local file ``path``: a tar, plain or gzip/bzip2/xz compressed
    (docker's ``isArchivePath``: the first tar header must read)."""
    import lzma
    import tarfile
    import zlib

    from pytest_minidock.store.blobio import decompressing

    try:
        with open(path, "rb") as raw:
            stream = decompressing(raw, str(path))
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    return tar.next() is not None
            finally:
                stream.close()
    except (OSError, tarfile.TarError, EOFError, StoreError, zlib.error, lzma.LZMAError):
        return False


@dataclass(frozen=True, slots=True)
class Download:
    """A file ``ADD`` downloaded: where it is, its name from the URL, its sha256 and size."""

    path: Path
    name: str
    digest: str
    size: int


def fetch_url(
    url: str,
    out: Path,
    location: Location,
    *,
    checksum: str | None = None,
    timeout: float = 60.0,
) -> Download:
    """Download ``url`` to ``out`` (http/https), hashing it; check ``--checksum`` if given.

    Raises ``BuildError`` naming ``FILE:LINE`` and the URL for any failure.
    """
    import urllib.error
    import urllib.parse
    import urllib.request

    from pytest_minidock import __version__

    parsed = urllib.parse.urlsplit(url)
    name = urllib.parse.unquote(parsed.path.rstrip("/").rpartition("/")[2])
    request = urllib.request.Request(url, headers={"User-Agent": f"minidock/{__version__}"})
    import hashlib

    h = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(out, "xb") as f:
            while chunk := response.read(_READ):
                h.update(chunk)
                f.write(chunk)
                size += len(chunk)
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(OSError):
            out.unlink()
        raise BuildError(
            f"{location}: ADD failed: downloading {url}: HTTP {exc.code} {exc.reason} | "
            f"{location.text.strip()}"
        ) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        with contextlib.suppress(OSError):
            out.unlink()
        reason = getattr(exc, "reason", None) or exc
        raise BuildError(
            f"{location}: ADD failed: downloading {url}: {reason} | {location.text.strip()}"
        ) from exc
    digest = h.hexdigest()
    if checksum is not None:
        algorithm, _, expected = checksum.partition(":")
        if algorithm != "sha256" or not expected:
            raise BuildError(
                f"{location}: ADD --checksum={checksum}: use sha256:<64 hex characters>"
            )
        if expected != digest:
            with contextlib.suppress(OSError):
                out.unlink()
            raise BuildError(
                f"{location}: ADD failed: {url} has digest sha256:{digest}, not the "
                f"--checksum sha256:{expected} | {location.text.strip()}"
            )
    return Download(out, name, digest, size)
