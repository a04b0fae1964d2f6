"""``.dockerignore``: reading the file, matching paths like docker, walking a build context.

The rules are those of moby/patternmatcher (used by the docker CLI, buildx and buildkit's fsutil):

* **Reading** (``read_ignore_file``): a line starting with ``#`` in its first column is a
  comment; other lines are trimmed, blank ones dropped; a leading ``!`` marks an exception;
  each pattern is cleaned like Go's ``filepath.Clean`` (``./a//b/`` is ``a/b``) and a leading
  ``/`` is dropped, so ``/foo`` and ``foo`` both mean ``foo`` at the context root.
* **Patterns** are Go ``filepath.Match`` patterns over ``/``-separated paths relative to the
  context (``*`` and ``?`` never cross ``/``, ``[a-z]`` and ``[^a-z]`` classes, ``\\`` escapes)
  plus ``**``, which matches any number of directories, zero included (``**/*.go``,
  ``dir/**``). A pattern that matches a directory matches everything below it.
* **Order matters, the last match wins**: ``*.md`` then ``!README.md`` keeps ``README.md``;
  the reverse order excludes it. A lone ``!`` is an error, as is a malformed ``[`` class.
* A Dockerfile-specific ignore file, ``<Dockerfile name>.dockerignore`` next to the Dockerfile
  (``Dockerfile.dockerignore``, ``app.Dockerfile.dockerignore``), takes precedence over
  ``.dockerignore`` at the context root (``find_ignore_file``).

``walk_context`` lists what docker would send: every included file, directory and symlink
(not followed), sorted, directories before their contents. It does not descend into an excluded
directory unless an exception pattern could re-include something inside it; a directory that is
excluded itself but holds re-included files is listed just before the first of them.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from pytest_minidock._record import dataclass
from pytest_minidock.errors import BuildError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Literal

__all__ = [
    "IGNORE_FILE",
    "IgnorePattern",
    "PatternMatcher",
    "find_ignore_file",
    "go_clean",
    "load_ignore",
    "read_ignore_file",
    "walk_context",
]

IGNORE_FILE = ".dockerignore"
"""The context-wide ignore file's name."""

_SPACES = (  # what Go's strings.TrimSpace trims (unicode.IsSpace)
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_ESCAPED = frozenset(".+()|{}$")

if TYPE_CHECKING:
    MatchKind = Literal["exact", "prefix", "suffix", "regexp"]
else:
    MatchKind = str


def go_clean(path: str) -> str:
    """Go's ``filepath.Clean`` for ``/`` paths: the shortest equivalent, ``.`` for empty."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(comp)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def _go_dir(path: str) -> str:
    """Go's ``filepath.Dir``: all but the last element, cleaned."""
    return go_clean(path[: path.rfind("/") + 1])


def read_ignore_file(text: str | bytes) -> list[tuple[int, str]]:
    """The patterns of ``.dockerignore`` text as ``(line number, pattern)`` pairs, normalised."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    text = text.removeprefix("\ufeff")
    patterns: list[tuple[int, str]] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if line.startswith("#"):
            continue
        pattern = line.strip(_SPACES)
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip(_SPACES)
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append((number, "!" + pattern if invert else pattern))
    return patterns


def _class(pattern: str, pos: int) -> tuple[str, int]:
    """The ``[...]`` class starting after ``[`` at ``pos``: a Python regex class and the end.

    Raises ``ValueError`` for a class Go's ``filepath.Match`` calls malformed.
    """
    out = ["["]
    if pattern[pos : pos + 1] == "^":
        out.append("^")
        pos += 1
    ranges = 0
    while True:
        if pattern[pos : pos + 1] == "]" and ranges > 0:
            out.append("]")
            return "".join(out), pos + 1
        lo, pos = _class_char(pattern, pos)
        item = re.escape(lo)
        if pattern[pos : pos + 1] == "-":
            hi, pos = _class_char(pattern, pos + 1)
            item += "-" + re.escape(hi)
        out.append(item)
        ranges += 1


def _class_char(pattern: str, pos: int) -> tuple[str, int]:
    ch = pattern[pos : pos + 1]
    if ch in ("", "-", "]"):
        raise ValueError("malformed character class")
    if ch == "\\":
        pos += 1
        ch = pattern[pos : pos + 1]
        if ch == "":
            raise ValueError("escape at the end of a character class")
    pos += 1
    if pos >= len(pattern):
        raise ValueError("unterminated character class")
    return ch, pos


def _compile(pattern: str) -> tuple[MatchKind, re.Pattern[str] | None]:
    """patternmatcher's ``compile``: how to match ``pattern``, and its regex if one is needed."""
    parts = ["^"]
    kind: MatchKind = "exact"
    pos = 0
    step = 0
    size = len(pattern)
    while pos < size:
        ch = pattern[pos]
        pos += 1
        if ch == "*":
            if pattern[pos : pos + 1] == "*":
                pos += 1
                if pattern[pos : pos + 1] == "/":
                    pos += 1
                if pos == size:
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        parts.append(".*")
                        kind = "regexp"
                else:
                    parts.append("(.*/)?")
                    kind = "regexp"
                if step == 0:
                    kind = "suffix"
            else:
                parts.append("[^/]*")
                kind = "regexp"
        elif ch == "?":
            parts.append("[^/]")
            kind = "regexp"
        elif ch in _ESCAPED:
            parts.append("\\" + ch)
        elif ch == "\\":
            if pos < size:
                parts.append(re.escape(pattern[pos]))
                pos += 1
                kind = "regexp"
            else:
                parts.append("\\\\")
        elif ch == "[":
            cls, pos = _class(pattern, pos)
            parts.append(cls)
            kind = "regexp"
        elif ch == "]":
            parts.append("\\]")
            kind = "regexp"
        else:
            parts.append(ch)
        step += 1
    if kind != "regexp":
        return kind, None
    return kind, re.compile("".join(parts) + r"\Z", re.DOTALL)


def _check_syntax(pattern: str) -> None:
    """Raise ``ValueError`` where Go's ``filepath.Match`` reports ``ErrBadPattern``."""
    pos = 0
    while pos < len(pattern):
        ch = pattern[pos]
        pos += 1
        if ch == "\\":
            if pos >= len(pattern):
                raise ValueError("trailing backslash")
            pos += 1
        elif ch == "[":
            _, pos = _class(pattern, pos)


@dataclass(frozen=True, slots=True)
class IgnorePattern:
    """One cleaned pattern: its text (without ``!``), whether it is an exception, how it matches."""

    text: str
    exclusion: bool
    kind: MatchKind
    regex: re.Pattern[str] | None
    dirs: tuple[str, ...]

    def match(self, path: str) -> bool:
        """True if ``path`` (``/``-separated, relative) matches this pattern itself."""
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        assert self.regex is not None
        return self.regex.match(path) is not None

    def could_match_below(self, directory: str) -> bool:
        """True if this pattern could match some path inside ``directory`` (conservative)."""
        names = directory.split("/")
        for i, component in enumerate(self.dirs):
            if "**" in component:
                return True
            if i >= len(names):
                return True
            try:
                kind, regex = _compile(component)
            except ValueError:  # a class split by "/": cannot tell, so assume it could
                return True
            if regex is None and kind == "exact" and component != names[i]:
                return False
            if regex is not None and regex.match(names[i]) is None:
                return False
        return True


@dataclass(frozen=True, slots=True)
class PatternMatcher:
    """Ordered ``.dockerignore`` patterns; the last one that matches a path decides."""

    patterns: tuple[IgnorePattern, ...] = ()

    @classmethod
    def from_patterns(cls, patterns: Iterable[str]) -> PatternMatcher:
        """Compile patterns (``!`` for exceptions); raise ``ValueError`` for a malformed one."""
        compiled = []
        for raw in patterns:
            text = raw.strip(_SPACES)
            if not text:
                continue
            text = go_clean(text)
            exclusion = text.startswith("!")
            if exclusion:
                if len(text) == 1:
                    raise ValueError('illegal exclusion pattern: "!" (a "!" needs a pattern)')
                text = text[1:]
            try:
                _check_syntax(text)
                kind, regex = _compile(text)
            except ValueError as exc:
                raise ValueError(f"invalid pattern {raw.strip()!r}: {exc}") from None
            compiled.append(IgnorePattern(text, exclusion, kind, regex, tuple(text.split("/"))))
        return cls(tuple(compiled))

    @property
    def has_exclusions(self) -> bool:
        """True if any pattern is an exception (``!``)."""
        return any(p.exclusion for p in self.patterns)

    def matches(self, path: str) -> bool:
        """True if ``path`` or a directory above it is excluded (``MatchesOrParentMatches``).

        ``.`` (the context itself) never matches.
        """
        path = go_clean(path)
        if path == ".":
            return False
        matched, _ = self.matches_with_parents(path, None)
        return matched

    def matches_exact(self, path: str) -> bool:
        """True if ``path`` itself is excluded, parents not considered (``MatchesExact``)."""
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue
            if pattern.match(path):
                matched = not pattern.exclusion
        return matched

    def matches_with_parents(
        self, path: str, parent: tuple[bool, ...] | None
    ) -> tuple[bool, tuple[bool, ...]]:
        """``MatchesUsingParentResults``: match ``path`` given what its parent directory matched.

        ``parent`` is the second value this returned for the parent directory, or ``None`` when
        unknown (then the parents are checked one by one). Returns whether ``path`` is excluded
        and the per-pattern results to pass for its children.
        """
        matched = False
        results = []
        for i, pattern in enumerate(self.patterns):
            match = bool(parent[i]) if parent else False
            if not match:
                if pattern.exclusion != matched:
                    results.append(False)
                    continue
                match = pattern.match(path)
                if not match and not parent:
                    parent_path = _go_dir(path)
                    if parent_path != ".":
                        dirs = parent_path.split("/")
                        match = any(
                            pattern.match("/".join(dirs[: n + 1])) for n in range(len(dirs))
                        )
            results.append(match)
            if match:
                matched = not pattern.exclusion
        return matched, tuple(results)

    def could_include_below(self, directory: str) -> bool:
        """True if an exception pattern might re-include something inside ``directory``."""
        return any(p.exclusion and p.could_match_below(directory) for p in self.patterns)


def find_ignore_file(
    context: str | os.PathLike[str], dockerfile: str | os.PathLike[str] | None = None
) -> Path | None:
    """The ignore file docker uses, or ``None``.

    ``<dockerfile>.dockerignore`` next to the Dockerfile wins if it exists, then
    ``CONTEXT/.dockerignore``.
    """
    if dockerfile is not None:
        specific = Path(dockerfile)
        specific = specific.with_name(specific.name + IGNORE_FILE)
        if specific.is_file():
            return specific
    general = Path(context) / IGNORE_FILE
    return general if general.is_file() else None


def load_ignore(
    context: str | os.PathLike[str], dockerfile: str | os.PathLike[str] | None = None
) -> PatternMatcher:
    """The patterns for building ``context`` with ``dockerfile`` (empty if no ignore file).

    Raises ``BuildError`` naming ``FILE:LINE`` for a malformed pattern or an unreadable file.
    """
    path = find_ignore_file(context, dockerfile)
    if path is None:
        return PatternMatcher()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror or exc}") from exc
    patterns: list[IgnorePattern] = []
    for number, pattern in read_ignore_file(data):
        try:
            patterns.extend(PatternMatcher.from_patterns([pattern]).patterns)
        except ValueError as exc:
            raise BuildError(f"{path}:{number}: {exc}; fix or remove the line") from None
    return PatternMatcher(tuple(patterns))


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise BuildError(
            f"cannot read build context directory {directory}: {exc.strerror or exc}"
        ) from exc


def walk_context(
    context: str | os.PathLike[str], matcher: PatternMatcher | None = None
) -> Iterator[str]:
    """Relative ``/``-separated paths of everything in ``context`` that ``matcher`` keeps.

    Sorted by name, each directory before its contents; symlinks are listed, not followed.
    Directories excluded with no exception that could apply inside are not read at all.
    """
    root = Path(context)
    matcher = matcher or PatternMatcher()
    if not matcher.patterns:
        yield from _walk_all(root, "")
        return
    yield from _walk(root, "", None, matcher, [])


def _walk_all(directory: Path, prefix: str) -> Iterator[str]:
    for entry in _entries(directory):
        rel = prefix + entry.name
        yield rel
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_all(Path(entry.path), rel + "/")


def _walk(
    directory: Path,
    prefix: str,
    parent: tuple[bool, ...] | None,
    matcher: PatternMatcher,
    pending: list[str],
) -> Iterator[str]:
    """Walk ``directory``; ``pending`` are excluded ancestors to list before a kept child."""
    for entry in _entries(directory):
        rel = prefix + entry.name
        excluded, results = matcher.matches_with_parents(rel, parent)
        try:
            is_dir = stat.S_ISDIR(entry.stat(follow_symlinks=False).st_mode)
        except OSError as exc:
            raise BuildError(f"cannot stat {entry.path}: {exc.strerror or exc}") from exc
        if not excluded:
            yield from pending
            pending.clear()
            yield rel
            if is_dir:
                yield from _walk(Path(entry.path), rel + "/", results, matcher, [])
        elif is_dir and matcher.could_include_below(rel):
            mine = [*pending, rel]
            yield from _walk(Path(entry.path), rel + "/", results, matcher, mine)
            if not mine:  # a child was listed, so the pending ancestors were too
                pending.clear()
