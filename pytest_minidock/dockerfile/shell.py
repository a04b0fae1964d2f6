"""Shell-word lexing: quotes, escapes and ``$VAR`` substitution, as buildkit's ``shell.Lex``.

Docker does not run a shell to expand variables in ``ENV``, ``COPY``, ``WORKDIR`` and the other
instructions that support them; it runs this small lexer, which mimics ``sh`` closely but not
exactly. Given a word and the variables in scope it

* removes single quotes (everything inside is literal) and double quotes (inside them only
  ``$`` is special, and the escape character escapes only ``"``, ``$`` and itself);
* removes the escape character (``\\`` or the backtick chosen by ``# escape=```) and keeps the
  character after it literally; an escape at the very end is dropped;
* substitutes ``$name``, ``${name}`` and the modifiers ``${name:-word}``, ``${name-word}``,
  ``${name:+word}``, ``${name+word}``, ``${name:?message}``, ``${name?message}``,
  ``${name#pattern}``, ``${name##pattern}``, ``${name%pattern}``, ``${name%%pattern}``,
  ``${name/pattern/replacement}`` and ``${name//pattern/replacement}`` (patterns know ``*`` and
  ``?``). Positional (``$1``) and special (``$@ $* $# $? $- $$ $! $0``) parameters are never set;
  a ``$`` not followed by a name stays a ``$``;
* and, for ``words()``, splits the result into words at unquoted white space; white space that a
  substitution produced splits too, quoted white space does not.

Options mirror buildkit's: ``raw_quotes`` and ``raw_escapes`` keep quotes and escape characters in
the output, ``skip_process_quotes`` treats quotes as plain characters (heredoc bodies), and
``skip_unset_env`` leaves references to unset variables as written.

Errors raise ``DockerfileSyntaxError`` without a location; callers that know the instruction add
it.
"""

from __future__ import annotations

import re

from pytest_minidock._record import dataclass
from pytest_minidock.dockerfile._go import GO_SPACE
from pytest_minidock.errors import DockerfileSyntaxError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["LexResult", "Lexer", "expand_word", "expand_words"]

_SPECIAL_PARAMS = frozenset("@*#?-$!0")
_MODIFIERS = ":- - :+ + :? ? # ## % %% / //"


class _LexError(Exception):
    """A problem found while lexing one word; turned into ``DockerfileSyntaxError``."""


@dataclass(frozen=True)
class LexResult:
    """What lexing a word produced: the single string, the words, and the names looked up."""

    result: str
    words: tuple[str, ...]
    matched: frozenset[str]
    unmatched: frozenset[str]


@dataclass(frozen=True)
class Lexer:
    """A configured lexer; ``word()``/``words()``/``process()`` run it on one input."""

    escape: str = "\\"
    raw_quotes: bool = False
    raw_escapes: bool = False
    skip_process_quotes: bool = False
    skip_unset_env: bool = False

    def process(self, text: str, env: Mapping[str, str]) -> LexResult:
        """Lex ``text`` with the variables ``env``; raise ``DockerfileSyntaxError`` on a problem."""
        run = _Run(self, text, env)
        try:
            result, words = run.stop_on("", self.raw_escapes)
        except _LexError as exc:
            raise DockerfileSyntaxError(f"{exc} in {text!r}") from None
        return LexResult(result, tuple(words), frozenset(run.matched), frozenset(run.unmatched))

    def word(self, text: str, env: Mapping[str, str]) -> str:
        """The expanded text as one string (buildkit's ``ProcessWord``)."""
        return self.process(text, env).result

    def words(self, text: str, env: Mapping[str, str]) -> tuple[str, ...]:
        """The expanded text split into words (buildkit's ``ProcessWords``)."""
        return self.process(text, env).words


def expand_word(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand ``text`` as docker expands one instruction argument (``ENV``, ``WORKDIR``, …)."""
    return Lexer(escape=escape).word(text, env)


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> tuple[str, ...]:
    """Expand ``text`` and split it into words, as docker does for ``EXPOSE``."""
    return Lexer(escape=escape).words(text, env)


class _Words:
    """Accumulates words the way buildkit's ``wordsStruct`` does."""

    __slots__ = ("in_word", "word", "words")

    def __init__(self) -> None:
        self.word = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch in GO_SPACE:
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word = ""
                self.in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.word += ch
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw_string(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def get(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word = ""
            self.in_word = False
        return self.words


def _clean(text: str) -> str:
    """What Go's ``text/scanner`` reads: a leading BOM skipped, undecodable bytes as U+FFFD."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if any("\udc80" <= c <= "\udcff" for c in text):
        text = "".join("\ufffd" if "\udc80" <= c <= "\udcff" else c for c in text)
    return text


class _Run:
    """One pass of the lexer over one input."""

    def __init__(self, lexer: Lexer, text: str, env: Mapping[str, str]) -> None:
        self.lexer = lexer
        self.text = _clean(text)
        self.pos = 0
        self.env = env
        self.raw_escapes = lexer.raw_escapes
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    # -- scanner -----------------------------------------------------------------------------

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        if self.pos < len(self.text):
            self.pos += 1
            return self.text[self.pos - 1]
        return ""

    # -- words -------------------------------------------------------------------------------

    def stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Lex up to ``stop`` (consumed) or the end when ``stop`` is empty."""
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            return self._stop_on(stop)
        finally:
            self.raw_escapes = saved

    def _stop_on(self, stop: str) -> tuple[str, list[str]]:
        lexer = self.lexer
        out: list[str] = []
        words = _Words()
        while ch := self.peek():
            if stop and ch == stop:
                self.next()
                return "".join(out), words.get()
            if ch == "$":
                tmp = self.dollar()
                out.append(tmp)
                words.add_string(tmp)
            elif ch in "'\"" and not lexer.skip_process_quotes:
                tmp = self.single_quote() if ch == "'" else self.double_quote()
                out.append(tmp)
                words.add_raw_string(tmp)
            elif ch == "<":
                tmp = self.possible_heredoc()
                out.append(tmp)
                words.add_raw_string(tmp)
            else:
                ch = self.next()
                if ch == lexer.escape:
                    if self.raw_escapes:
                        words.add_raw_char(ch)
                        out.append(ch)
                    ch = self.next()
                    if not ch:
                        break
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                out.append(ch)
        if stop:
            raise _LexError(f"unexpected end of text while looking for the matching {stop!r}")
        return "".join(out), words.get()

    def possible_heredoc(self) -> str:
        """``<<`` keeps the white space after it, so ``<< EOF`` stays one word."""
        self.next()
        if self.peek() != "<":
            return "<"
        self.next()
        start = self.pos
        while self.peek() and self.peek() in GO_SPACE:
            self.next()
        return "<<" + self.text[start : self.pos]

    def single_quote(self) -> str:
        raw = self.lexer.raw_quotes
        opening = self.next()
        out = [opening] if raw else []
        while True:
            ch = self.next()
            if not ch:
                raise _LexError("unmatched single quote (add the closing ')")
            if ch == "'":
                if raw:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def double_quote(self) -> str:
        raw = self.lexer.raw_quotes
        escape = self.lexer.escape
        opening = self.next()
        out = [opening] if raw else []
        while True:
            ch = self.peek()
            if not ch:
                raise _LexError('unmatched double quote (add the closing ")')
            if ch == '"':
                closing = self.next()
                if raw:
                    out.append(closing)
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self.peek()
                if not following:
                    continue
                if following in ('"', "$", escape):
                    ch = self.next()
            out.append(ch)

    # -- substitution ------------------------------------------------------------------------

    def name(self) -> str:
        out: list[str] = []
        while ch := self.peek():
            if not out and ch.isdecimal():
                while (digit := self.peek()) and digit.isdecimal():
                    out.append(self.next())
                return "".join(out)
            if not out and ch in _SPECIAL_PARAMS:
                return self.next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            out.append(self.next())
        return "".join(out)

    def lookup(self, name: str) -> tuple[str, bool]:
        value = self.env.get(name)
        if value is None:
            self.unmatched.add(name)
            return "", False
        self.matched.add(name)
        return value, True

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value, found = self.lookup(name)
            if not found and self.lexer.skip_unset_env:
                return "$" + name
            return value
        self.next()
        first = self.peek()
        if not first:
            raise _LexError("missing '}' after '${'")
        if first in "{}:":
            raise _LexError("bad substitution: write a variable name after '${'")
        name = self.name()
        ch = self.next()
        if ch == "}":
            value, found = self.lookup(name)
            if not found and self.lexer.skip_unset_env:
                return "${" + name + "}"
            return value
        if not ch:
            raise _LexError(f"missing '}}' after '${{{name}'")
        modifier = ch
        null_is_unset = False
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            modifier += ch
        if null_is_unset or ch in "+-?#%":
            return self._modified(name, ch, modifier, null_is_unset)
        if ch == "/":
            return self._replaced(name)
        raise _LexError(
            f"unsupported modifier {modifier!r} in '${{{name}{modifier}...}}' "
            f"(use one of {_MODIFIERS})"
        )

    def _modified(self, name: str, ch: str, modifier: str, null_is_unset: bool) -> str:
        try:
            word, _ = self.stop_on("}", ch in "#%")
        except _LexError:
            if not self.peek():
                raise _LexError(f"missing '}}' after '${{{name}{modifier}'") from None
            raise
        value, found = self.lookup(name)
        if self.lexer.skip_unset_env and not found:
            return "${" + name + modifier + word + "}"
        unset = not found or (null_is_unset and value == "")
        if ch == "-":
            return word if unset else value
        if ch == "+":
            return "" if unset else word
        if ch == "?":
            if not found:
                raise _LexError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _LexError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in "#%":
            greedy = word[:1] == ch
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _LexError(
            f"unsupported modifier {modifier!r} in '${{{name}{modifier}...}}' "
            f"(use one of {_MODIFIERS})"
        )

    def _replaced(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.stop_on("/", True)
        except _LexError:
            if not self.peek():
                raise _LexError(f"missing '/' in '${{{name}/...}}'") from None
            raise
        try:
            replacement, _ = self.stop_on("}", True)
        except _LexError:
            if not self.peek():
                raise _LexError(f"missing '}}' after '${{{name}/{pattern}/'") from None
            raise
        value, found = self.lookup(name)
        if self.lexer.skip_unset_env and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = _pattern_regex(pattern, greedy=True, anchored=False)
        if replace_all:
            return regex.sub(lambda m: _go_expand(replacement, m), value)
        match = regex.search(value)
        if match is None:
            return value
        return value[: match.start()] + replacement + value[match.end() :]


# -- patterns ----------------------------------------------------------------------------------

_REGEX_SPECIAL = frozenset("[]{}.+()|^$")


def _pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell pattern (``*``, ``?``, backslash escapes; no brackets) as a regular expression."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    text = _clean(pattern)
    i = 0
    while i < len(text):
        tok = text[i]
        i += 1
        if tok == "*":
            out.append(star)
        elif tok == "?":
            out.append(".")
        elif tok == "\\":
            following = text[i] if i < len(text) else ""
            if following in ("}", "/"):
                continue
            i += 1
            if following not in ("*", "?", "\\"):
                raise _LexError(
                    f"invalid pattern {pattern!r}: '\\{following}' is not an escape "
                    "(only \\*, \\? and \\\\ are)"
                )
            out.append("\\" + following)
        elif tok in _REGEX_SPECIAL:
            out.append("\\" + tok)
        else:
            out.append(tok)
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _pattern_regex(pattern, greedy=greedy, anchored=True).search(value)
    return value if match is None else value[match.end() :]


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern but keep each ``\\x`` escape pair in order (``a\\*c`` -> ``c\\*a``)."""
    out = [""] * len(pattern)
    last = len(pattern) - 1
    i = 0
    while i <= last:
        tok = pattern[i]
        at = last - i
        if tok == "\\" and i != last:
            out[at - 1] = tok
            out[at] = pattern[i + 1]
            i += 2
        else:
            out[at] = tok
            i += 1
    return "".join(out)


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _go_expand(template: str, match: re.Match[str]) -> str:
    """Go's ``Regexp.Expand`` for a pattern without groups: ``$0`` is the match, ``$$`` a ``$``."""
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        if template[i + 1 : i + 2] == "$":
            out.append("$")
            i += 2
            continue
        rest = template[i + 1 :]
        brace = rest[:1] == "{"
        body = rest[1:] if brace else rest
        n = 0
        while n < len(body) and (body[n].isalpha() or body[n].isdecimal() or body[n] == "_"):
            n += 1
        if n == 0 or (brace and body[n : n + 1] != "}"):
            out.append("$")
            i += 1
            continue
        name = body[:n]
        if name == "0":
            out.append(match.group(0))
        i += 1 + n + (2 if brace else 0)
    return "".join(out)
