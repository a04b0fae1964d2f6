"""Dockerfile text to nodes that remember their lines, exactly as buildkit's parser does.

This is the first of the two parsing steps (the second, ``instructions``, turns nodes into typed
instructions). It reproduces ``frontend/dockerfile/parser`` of moby/buildkit, including its
quirks, because the same text must mean the same thing here and under ``docker build``:

* **Parser directives** (``# syntax=``, ``# escape=``, ``# check=``) are read only at the very
  top; the first line that is not one (a blank line, another comment, an unknown directive, an
  instruction) ends them. ``# escape=``` makes the backtick the escape and continuation
  character, which suits Windows paths.
* **Lines.** A line whose first non-blank character is ``#`` is a comment, also in the middle of
  a continuation; ``#`` anywhere else is plain text. The escape character at the end of a line
  (trailing blanks allowed) joins the next line with no separator; continuation lines keep their
  leading white space. Blank lines inside a continuation are skipped with a warning, not an error
  (buildkit's ``no-empty-continuation`` rule), and a continuation at the end of the file just
  ends the instruction.
* **Instruction split.** The first word is the keyword (any case); words that follow and start
  with ``--`` are flags, up to a bare ``--``. Each instruction then parses its arguments its own
  way: ``RUN``/``CMD``/``ENTRYPOINT``/``SHELL`` take a JSON array of strings ("exec form") or the
  rest of the line as one string ("shell form") -- text that is not valid JSON silently falls back
  to shell form, but valid JSON holding a non-string is an error; ``COPY``/``ADD``/``VOLUME`` take
  a JSON array or white-space separated words; ``ENV``/``LABEL`` take ``key=value`` pairs (quotes
  kept) or the legacy ``key value``; ``ONBUILD`` parses the rest as a nested instruction.
  Unknown keywords are kept here and refused by ``instructions``.
* **Heredocs.** ``RUN``, ``COPY`` and ``ADD`` in shell form (also inside ``ONBUILD``) may name
  here-documents: ``<<EOF`` (several per line are fine, read in order), ``<<-EOF`` (leading tabs
  stripped from the terminator and, later, from the content), a quoted word ``<<'EOF'`` (content
  is not expanded) and a file descriptor ``3<<EOF``. The content lines belong to the node but not
  to its arguments, so ``dump()`` shows ``(run "<<EOF")``.

``dump()`` writes nodes in buildkit's test format, one ``(keyword ["--flag"] "arg" ...)`` per
line with Go string quoting, so the parser can be compared byte for byte with buildkit's own
golden files.
"""

from __future__ import annotations

import json
import re

from pytest_minidock._record import dataclass, replace
from pytest_minidock.dockerfile._go import (
    GO_SPACE,
    go_lower,
    go_quote,
    go_quote_slice,
    go_trim_left_space,
    go_trim_space,
)
from pytest_minidock.dockerfile.shell import Lexer
from pytest_minidock.errors import DockerfileSyntaxError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DEFAULT_ESCAPE",
    "HEREDOC_INSTRUCTIONS",
    "KNOWN_COMMANDS",
    "MAX_LINE_BYTES",
    "Directive",
    "Heredoc",
    "Node",
    "ParseResult",
    "ParseWarning",
    "chomp_heredoc",
    "dump",
    "dump_node",
    "parse",
    "parse_heredoc",
]

DEFAULT_ESCAPE = "\\"
"""The escape (and line continuation) character unless ``# escape=``` says otherwise."""

MAX_LINE_BYTES = 65535
"""Longest physical line buildkit reads (Go's ``bufio.Scanner`` limit, newline excluded)."""

HEREDOC_INSTRUCTIONS = frozenset({"run", "copy", "add"})
"""Instructions whose shell form may name heredocs (also when wrapped in ONBUILD)."""

_DIRECTIVE_NAMES = frozenset({"syntax", "escape", "check"})
_WHITESPACE_RE = re.compile(r"[\t\v\f\r ]+")
# Patterns of rarer lines, compiled on first use (by ``re``'s cache), not at import.
_DIRECTIVE = r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*"
_HEREDOC = r"([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)"
_LEADING_TABS = r"^\t+"
_SPACE_BYTES = frozenset(b"\t\n\v\f\r \x85\xa0")  # Go's unicode.IsSpace(rune(b)) for a byte
_NOT_STRINGS = (
    "when using JSON array syntax, arrays must be comprised of strings only: "
    'write every element in double quotes, e.g. ["echo", "1"]'
)


@dataclass(frozen=True)
class Heredoc:
    """A here-document named on an instruction line (``<<EOF``) and the content that followed.

    ``content`` is exactly the text between the instruction and the terminator, line endings
    included and nothing stripped; ``chomped()`` applies ``<<-``. ``expand`` is false when any
    part of the terminator word was quoted (``<<'EOF'``, ``<<"EOF"``, ``<<E'O'F``).
    """

    name: str
    content: str = ""
    expand: bool = True
    chomp: bool = False
    fd: int = 0

    def chomped(self) -> str:
        """The content with leading tabs removed from every line when the heredoc was ``<<-``."""
        return chomp_heredoc(self.content) if self.chomp else self.content


@dataclass(frozen=True)
class Directive:
    """A parser directive from the top of the file, e.g. ``# syntax=docker/dockerfile:1``."""

    name: str
    value: str
    line: int


@dataclass(frozen=True)
class ParseWarning:
    """Something buildkit accepts but warns about (currently: empty continuation lines)."""

    line: int
    message: str


@dataclass(frozen=True)
class Node:
    """One instruction as written: keyword, flags, arguments and where it is in the file.

    ``keyword`` keeps the case it was written in (``command`` is lower-case). ``args`` are the
    argument values the instruction's parser produced -- for ``ENV``/``LABEL`` triples
    ``key, value, separator`` where the separator is ``"="`` or ``""`` for the legacy
    ``KEY value`` form; for ``HEALTHCHECK`` the type then the command. ``json`` tells exec form.
    ``child`` is the nested instruction of ``ONBUILD``. ``original`` is the logical line with
    continuations joined; ``start_line``/``end_line`` are 1-based and include continuation and
    heredoc lines. ``comments`` are the comment lines just above the instruction.
    """

    keyword: str
    args: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    child: Node | None = None
    json: bool = False
    heredocs: tuple[Heredoc, ...] = ()
    start_line: int = 0
    end_line: int = 0
    original: str = ""
    comments: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        """The keyword in lower case, e.g. ``run``."""
        return go_lower(self.keyword)

    def can_contain_heredoc(self) -> bool:
        """True for shell-form ``RUN``/``COPY``/``ADD``, also as the trigger of an ``ONBUILD``."""
        node = self.child if self.command == "onbuild" and self.child is not None else self
        return node.command in HEREDOC_INSTRUCTIONS and not node.json


@dataclass(frozen=True)
class ParseResult:
    """A parsed Dockerfile: its nodes, directives, escape character, warnings and source lines."""

    path: str
    nodes: tuple[Node, ...]
    directives: tuple[Directive, ...] = ()
    escape: str = DEFAULT_ESCAPE
    warnings: tuple[ParseWarning, ...] = ()
    lines: tuple[str, ...] = ()

    def line_text(self, line: int) -> str:
        """Physical line ``line`` (1-based) without its line ending, ``""`` if out of range."""
        return self.lines[line - 1] if 1 <= line <= len(self.lines) else ""

    def directive(self, name: str) -> str | None:
        """The value of directive ``name`` (``syntax``, ``escape``, ``check``), if given."""
        for d in self.directives:
            if d.name == name.lower():
                return d.value
        return None


# -- dump --------------------------------------------------------------------------------------


def dump_node(node: Node) -> str:
    """One node in buildkit's ``Node.Dump()`` format: ``run ["--mount=..."] "echo hi"``."""
    out = node.command
    if node.flags:
        out += " " + go_quote_slice(node.flags)
    if node.child is not None:
        out += " (" + dump_node(node.child) + ")"
    for arg in node.args:
        out += " " + go_quote(arg)
    return go_trim_space(out)


def dump(nodes: Iterable[Node]) -> str:
    """Nodes as buildkit's parser test ``result`` files: one ``(...)`` line each, newline-ended."""
    return go_trim_space("".join(f"({dump_node(n)})\n" for n in nodes)) + "\n"


# -- heredocs ----------------------------------------------------------------------------------


def chomp_heredoc(content: str) -> str:
    """Remove leading tabs from every line (what ``<<-`` does to the content)."""
    return re.sub(_LEADING_TABS, "", content, flags=re.MULTILINE)


_HEREDOC_WORD = Lexer(skip_unset_env=True)
_HEREDOC_WORD_RAW = Lexer(raw_quotes=True, skip_unset_env=True)
_HEREDOC_LINE = Lexer(raw_quotes=True, raw_escapes=True, skip_unset_env=True)


def parse_heredoc(word: str) -> Heredoc | None:
    """The heredoc a word like ``<<EOF``, ``<<-'EOF'`` or ``3<<EOF`` names, or ``None``.

    Content is empty: it is read from the lines after the instruction. Raises
    ``DockerfileSyntaxError`` for a terminator with unbalanced quotes.
    """
    if "<<" not in word:  # most words: no need for the pattern
        return None
    match = re.fullmatch(_HEREDOC, word)
    if match is None or not match.group(3):
        return None
    rest = match.group(3)
    words = _HEREDOC_WORD.words(rest, {})
    if len(words) != 1:
        return None
    raw = _HEREDOC_WORD_RAW.words(rest, {})
    if len(raw) != 1:  # pragma: no cover - both lexers split at the same places
        raise DockerfileSyntaxError(
            f"internal lexing of heredoc produced inconsistent results: {rest}"
        )
    quotes = words[0].count("'") + words[0].count('"')
    raw_quotes = raw[0].count("'") + raw[0].count('"')
    fd_text = match.group(1)
    fd = int(fd_text) if fd_text and len(fd_text) < 20 else 0
    return Heredoc(name=words[0], expand=quotes == raw_quotes, chomp=match.group(2) == "-", fd=fd)


def _heredocs_in_line(line: str) -> list[Heredoc]:
    try:
        words = _HEREDOC_LINE.words(line, {})
    except DockerfileSyntaxError:  # buildkit ignores lines its lexer cannot split
        return []
    found = []
    for word in words:
        heredoc = parse_heredoc(word)
        if heredoc is not None:
            found.append(heredoc)
    return found


# -- argument parsers (buildkit's line_parsers.go) ---------------------------------------------


def _to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _to_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _extract_flags(line: str) -> tuple[str, list[str]]:
    """Leading ``--flag`` words and the rest of the line (buildkit's ``extractBuilderFlags``).

    Buildkit walks the line byte by byte and turns each byte into a rune, so a non-ASCII byte in
    a flag reads as Latin-1 and the bytes 0x85 and 0xA0 count as white space. That is
    reproduced here on purpose: the same flag text must give the same flags.
    """
    data = _to_bytes(line)
    size = len(data)
    words: list[str] = []
    word: list[str] = []
    in_spaces, in_word, in_quote = 0, 1, 2
    phase = in_spaces
    quote = 0
    blank_ok = False
    pos = 0
    while pos <= size:
        ch = data[pos] if pos < size else -1
        if phase == in_spaces:
            if pos == size:
                break
            if ch in _SPACE_BYTES:
                pos += 1
                continue
            if ch != 0x2D or pos + 1 == size or data[pos + 1] != 0x2D:
                return _to_text(data[pos:]), words
            phase = in_word
        if pos == size:
            text = "".join(word)
            if text != "--" and (blank_ok or text):
                words.append(text)
            break
        if phase == in_word:
            if ch in _SPACE_BYTES:
                text = "".join(word)
                if text == "--":
                    return _to_text(data[pos:]), words
                if blank_ok or text:
                    words.append(text)
                phase, word, blank_ok = in_spaces, [], False
                pos += 1
                continue
            if ch in (0x22, 0x27):
                quote, blank_ok, phase = ch, True, in_quote
                pos += 1
                continue
            if ch == 0x5C:
                if pos + 1 == size:
                    pos += 1
                    continue
                pos += 1
                ch = data[pos]
            word.append(chr(ch))
            pos += 1
            continue
        # in_quote
        if ch == quote:
            phase = in_word
            pos += 1
            continue
        if ch == 0x5C:
            if pos + 1 == size:
                phase = in_word
                pos += 1
                continue
            pos += 1
            ch = data[pos]
        word.append(chr(ch))
        pos += 1
    return "", words


def _split_command(line: str) -> tuple[str, list[str], str]:
    parts = _WHITESPACE_RE.split(go_trim_space(line), maxsplit=1)
    flags: list[str] = []
    rest = ""
    if len(parts) == 2:
        rest, flags = _extract_flags(parts[1])
    return parts[0], flags, go_trim_space(rest)


def _parse_words(rest: str, escape: str) -> list[str]:
    """Quote-aware word split that keeps quotes and escapes (buildkit's ``parseWords``)."""
    words: list[str] = []
    word: list[str] = []
    in_spaces, in_word, in_quote = 0, 1, 2
    phase = in_spaces
    quote = ""
    blank_ok = False
    size = len(rest)
    pos = 0
    while pos <= size:
        ch = rest[pos] if pos < size else ""
        if phase == in_spaces:
            if pos == size:
                break
            if ch in GO_SPACE:
                pos += 1
                continue
            phase = in_word
        if pos == size:
            if blank_ok or word:
                words.append("".join(word))
            break
        if phase == in_word:
            if ch in GO_SPACE:
                if blank_ok or word:
                    words.append("".join(word))
                phase, word, blank_ok = in_spaces, [], False
                pos += 1
                continue
            if ch in "'\"":
                quote, blank_ok, phase = ch, True, in_quote
            if ch == escape:
                if pos + 1 == size:
                    pos += 1
                    continue
                word.append(ch)
                pos += 1
                ch = rest[pos]
            word.append(ch)
            pos += 1
            continue
        # in_quote
        if ch == quote:
            phase = in_word
        if ch == escape and quote != "'":
            if pos + 1 == size:
                phase = in_word
                pos += 1
                continue
            pos += 1
            word.append(ch)
            ch = rest[pos]
        word.append(ch)
        pos += 1
    return words


class _NotJSON(Exception):
    """The text is not a JSON array (so it is shell form)."""


def _reject_constant(name: str) -> object:
    raise _NotJSON(name)  # NaN and Infinity are not JSON to Go


def _checked_number(text: str) -> object:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise _NotJSON(text)  # Go cannot store it in a float64: an unmarshal error
    return number


def _parse_json(rest: str) -> tuple[str, ...]:
    """A JSON array of strings; ``_NotJSON`` if it is not JSON, an error if not all strings."""
    rest = go_trim_left_space(rest)
    if not rest.startswith("["):
        raise _NotJSON(rest)
    try:
        value = json.loads(
            rest,
            parse_constant=_reject_constant,
            parse_float=_checked_number,
            parse_int=_checked_number,
        )
    except (ValueError, RecursionError) as exc:
        raise _NotJSON(rest) from exc
    if not isinstance(value, list):  # pragma: no cover - text starting with "[" is an array
        raise _NotJSON(rest)
    if not all(isinstance(v, str) for v in value):
        raise DockerfileSyntaxError(_NOT_STRINGS)
    # Go replaces invalid UTF-8 and unpaired surrogate escapes with U+FFFD.
    return tuple(v if v.isascii() else re.sub("[\ud800-\udfff]", "\ufffd", v) for v in value)


def _maybe_json(rest: str) -> tuple[tuple[str, ...], bool]:
    if rest == "":
        return (), False
    try:
        return _parse_json(rest), True
    except _NotJSON:
        return (rest,), False


def _maybe_json_to_list(rest: str) -> tuple[tuple[str, ...], bool]:
    try:
        return _parse_json(rest), True
    except _NotJSON:
        return _whitespace_list(rest), False


def _whitespace_list(rest: str) -> tuple[str, ...]:
    if rest == "":
        return ()
    return tuple(_WHITESPACE_RE.split(rest))


def _name_val(rest: str, key: str, escape: str) -> tuple[str, ...]:
    words = _parse_words(rest, escape)
    if not words:
        return ()
    if "=" not in words[0]:
        parts = _WHITESPACE_RE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise DockerfileSyntaxError(
                f"{key} must have two arguments: write {key} name=value "
                f"(or the legacy {key} name value)"
            )
        return (parts[0], parts[1], "")
    out: list[str] = []
    for word in words:
        if "=" not in word:
            raise DockerfileSyntaxError(
                f"{key} syntax error: can't find '=' in {word!r}; "
                f"every word must be name=value (quote values that contain spaces)"
            )
        name, _, value = word.partition("=")
        out.extend((name, value, "="))
    return tuple(out)


def _health(rest: str) -> tuple[tuple[str, ...], bool]:
    data = _to_bytes(rest)
    sep = 0
    while sep < len(data) and data[sep] not in _SPACE_BYTES:
        sep += 1
    nxt = sep
    while nxt < len(data) and data[nxt] in _SPACE_BYTES:
        nxt += 1
    if sep == 0:
        return (), False
    command, is_json = _maybe_json(_to_text(data[nxt:]))
    return (_to_text(data[:sep]), *command), is_json


_MAYBE_JSON = frozenset({"cmd", "entrypoint", "run", "shell"})
_MAYBE_JSON_LIST = frozenset({"add", "copy", "volume"})
_WHITESPACE = frozenset({"expose", "from"})
_STRING = frozenset({"maintainer", "stopsignal", "user", "workdir"})
KNOWN_COMMANDS = frozenset(
    _MAYBE_JSON
    | _MAYBE_JSON_LIST
    | _WHITESPACE
    | _STRING
    | {"arg", "env", "label", "healthcheck", "onbuild"}
)
"""Every instruction keyword buildkit knows, in lower case."""


def _node_from_line(line: str, escape: str) -> Node:
    keyword, flags, rest = _split_command(line)
    command = go_lower(keyword)
    args: tuple[str, ...] = ()
    child: Node | None = None
    is_json = False
    if command in _MAYBE_JSON:
        args, is_json = _maybe_json(rest)
    elif command in _MAYBE_JSON_LIST:
        args, is_json = _maybe_json_to_list(rest)
    elif command in _WHITESPACE:
        args = _whitespace_list(rest)
    elif command in _STRING:
        args = (rest,) if rest else ()
    elif command == "arg":
        args = tuple(_parse_words(rest, escape))
    elif command in ("env", "label"):
        args = _name_val(rest, command.upper(), escape)
    elif command == "healthcheck":
        args, is_json = _health(rest)
    elif command == "onbuild":
        if rest:
            child = _node_from_line(rest, escape)
    else:
        args = ("",)  # unknown: kept, with one empty argument, and refused later
    return Node(keyword, args, tuple(flags), child, is_json, original=line)


# -- line assembly -----------------------------------------------------------------------------


def _split_lines(text: str) -> list[str]:
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _trim_newline(line: str) -> str:
    return line.rstrip("\r\n")


def _is_comment(line: str) -> bool:
    return go_trim_left_space(line).startswith("#")


class _Parser:
    """One parse of one file; state mirrors buildkit's ``Parse`` loop."""

    def __init__(self, path: str, lines: list[str]) -> None:
        self.path = path
        self.raw = lines
        self.lines = tuple(_trim_newline(line) for line in lines)
        self.escape = DEFAULT_ESCAPE
        self.directives: list[Directive] = []
        self.directives_done = False
        self.seen: set[str] = set()

    def error(
        self, problem: str, line: int, end_line: int | None = None, text: str | None = None
    ) -> DockerfileSyntaxError:
        if text is None and 1 <= line <= len(self.lines):
            text = self.lines[line - 1]
        return DockerfileSyntaxError(problem, self.path, line, end_line, text)

    def directive(self, token: str, line: int) -> bool:
        if self.directives_done:
            return False
        if not token.startswith("#"):
            self.directives_done = True
            return False
        match = re.fullmatch(_DIRECTIVE, go_trim_left_space(token[1:]))
        name = match.group(1).lower() if match else ""
        if match is None or name not in _DIRECTIVE_NAMES:
            self.directives_done = True
            return False
        if name in self.seen:
            raise self.error(f"only one {name} parser directive can be used; remove this one", line)
        self.seen.add(name)
        value = match.group(2)
        if name == "escape":
            if value not in ("`", "\\"):
                raise self.error(
                    f"invalid escape token {value!r}: use ` (backtick) or \\ (backslash)", line
                )
            self.escape = value
        self.directives.append(Directive(name, value, line))
        return True

    def check_length(self, raw: str, line: int) -> None:
        if len(raw) > MAX_LINE_BYTES // 4 and len(_to_bytes(raw.rstrip("\n"))) > MAX_LINE_BYTES:
            raise self.error(
                f"line is longer than {MAX_LINE_BYTES} bytes, the most docker reads; "
                "split it with line continuations",
                line,
            )

    def process(self, raw: str, line: int, strip_left: bool) -> tuple[str, bool]:
        self.check_length(raw, line)
        token = _trim_newline(raw)
        if strip_left:
            token = go_trim_left_space(token)
        is_directive = self.directive(token, line)
        return ("" if _is_comment(token) else token), is_directive

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        """``line`` without a continuation (the escape character last, blanks after it allowed,
        not itself escaped), and whether the line ends the instruction."""
        stripped = line.rstrip(" \t")
        if not stripped.endswith(self.escape):
            return line, True
        body = stripped[:-1]
        if body.endswith(self.escape):  # an escaped escape character: no continuation
            return line, True
        return body, False

    def run(self) -> ParseResult:
        raw = self.raw
        total = len(raw)
        nodes: list[Node] = []
        warnings: list[ParseWarning] = []
        comments: list[str] = []
        current = 0
        i = 0
        while i < total:
            text = raw[i]
            i += 1
            if current == 0 and text.startswith("\ufeff"):
                text = text[1:]
            if _is_comment(text):
                comment = go_trim_space(text[1:])
                comments = [*comments, comment] if comment else []
            token, is_directive = self.process(text, current + 1, strip_left=True)
            if is_directive and comments:
                comments.pop()
            current += 1
            start = current
            body, end_of_line = self.trim_continuation(token)
            if end_of_line and body == "":
                continue
            parts = [body]
            empty_continuation = False
            while not end_of_line and i < total:
                text = raw[i]
                i += 1
                token, _ = self.process(text, current + 1, strip_left=False)
                current += 1
                if _is_comment(text):
                    continue
                if go_trim_left_space(token) == "":
                    empty_continuation = True
                    continue
                body, end_of_line = self.trim_continuation(token)
                parts.append(body)
            line = "".join(parts)
            if empty_continuation:
                warnings.append(
                    ParseWarning(
                        current,
                        f"empty continuation line found in: {line} (remove the blank lines "
                        "inside the instruction; they will become errors in a future release)",
                    )
                )
            try:
                node = _node_from_line(line, self.escape)
            except DockerfileSyntaxError as exc:
                raise self.error(exc.problem, start, current, line) from None
            if "<<" in line and node.can_contain_heredoc():
                try:
                    heredocs = _heredocs_in_line(line)
                except DockerfileSyntaxError as exc:
                    raise self.error(exc.problem, start, current, line) from None
                filled = []
                for heredoc in heredocs:
                    content: list[str] = []
                    terminated = False
                    while i < total:
                        text = raw[i]
                        i += 1
                        current += 1
                        self.check_length(text, current)
                        candidate = _trim_newline(text)
                        if heredoc.chomp:
                            candidate = candidate.lstrip("\t")
                        if candidate == heredoc.name:
                            terminated = True
                            break
                        content.append(text)
                    if not terminated:
                        raise self.error(
                            f"unterminated heredoc: no line {heredoc.name!r} ends the heredoc "
                            f"<<{heredoc.name} before the end of the file; add it on a line "
                            "of its own",
                            start,
                            current,
                            line,
                        )
                    filled.append(replace(heredoc, content="".join(content)))
                node = replace(node, heredocs=tuple(filled))
            nodes.append(
                replace(node, start_line=start, end_line=current, comments=tuple(comments))
            )
            comments = []
        if not nodes:
            raise self.error(
                "file with no instructions: a Dockerfile needs at least a FROM line",
                max(current, 1),
            )
        return ParseResult(
            self.path,
            tuple(nodes),
            tuple(self.directives),
            self.escape,
            tuple(warnings),
            self.lines,
        )


def parse(source: str | bytes, path: str = "Dockerfile") -> ParseResult:
    """Parse Dockerfile text; ``path`` is only used to name the file in errors.

    Bytes are decoded as UTF-8, keeping undecodable bytes (see ``_go``). Raises
    ``DockerfileSyntaxError`` naming ``path:line`` for text buildkit's parser rejects.
    """
    text = source.decode("utf-8", "surrogateescape") if isinstance(source, bytes) else source
    return _Parser(path, _split_lines(text)).run()
