"""Go standard-library behaviour the Dockerfile language inherits from buildkit.

Buildkit is written in Go, and several details of the Dockerfile language are really details of
Go's standard library: which characters ``unicode.IsSpace`` calls white space (``strings.TrimSpace``
trims them), how ``strconv.Quote`` writes a string (the parser's dump format), how
``time.ParseDuration`` reads ``30s`` or ``1m30s`` (HEALTHCHECK), ``strconv.ParseBool`` and
``ParseUint`` (flags and mount options) and ``strings.ToLower`` (simple, per-character case
mapping, unlike Python's ``str.lower``). They live here so the rest of the package reads like the
language and not like Go.

Strings that came from bytes which are not valid UTF-8 are decoded with ``surrogateescape``: each
bad byte is a lone surrogate ``U+DC80``-``U+DCFF``, which ``go_quote`` writes back as ``\\xNN`` the
way Go does for the raw byte.
"""

from __future__ import annotations

import re

__all__ = [
    "GO_SPACE",
    "go_lower",
    "go_quote",
    "go_quote_slice",
    "go_trim_left_space",
    "go_trim_space",
    "is_go_space",
    "parse_go_bool",
    "parse_go_duration",
    "parse_go_uint",
]

GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
"""The characters Go's ``unicode.IsSpace`` accepts (Unicode ``White_Space``)."""

_SPACES = "".join(sorted(GO_SPACE))

_SIMPLE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def is_go_space(ch: str) -> bool:
    """Go's ``unicode.IsSpace`` for one character."""
    return ch in GO_SPACE


def go_trim_space(text: str) -> str:
    """Go's ``strings.TrimSpace``: strip Unicode white space from both ends."""
    return text.strip(_SPACES)


def go_trim_left_space(text: str) -> str:
    """Go's ``strings.TrimLeftFunc(s, unicode.IsSpace)``."""
    return text.lstrip(_SPACES)


def go_lower(text: str) -> str:
    """Go's ``strings.ToLower``: simple per-character lowering, no final-sigma or ``İ`` rules."""
    if text.isascii():
        return text.lower()
    return "".join(c.lower()[0] for c in text)


def _quote_char(ch: str) -> str:
    escaped = _SIMPLE_ESCAPES.get(ch)
    if escaped is not None:
        return escaped
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if ch.isprintable():
        return ch
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0xD800 <= code <= 0xDFFF:  # not a valid rune: Go writes the replacement character
        return "\\ufffd"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote``: a double-quoted literal that keeps printable Unicode as is.

    Unlike ``json.dumps`` or ``repr``, control characters below 0x20 and DEL become ``\\xNN``
    (except the seven C escapes), other non-printable characters ``\\uNNNN``/``\\UNNNNNNNN``.
    """
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return '"' + "".join(_quote_char(c) for c in text) + '"'


def go_quote_slice(items: tuple[str, ...] | list[str]) -> str:
    """Go's ``fmt.Sprintf("%q", []string{...})``: ``["a" "b"]``."""
    return "[" + " ".join(go_quote(i) for i in items) + "]"


_BOOL_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_BOOL_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_bool(text: str) -> bool | None:
    """Go's ``strconv.ParseBool``; ``None`` where Go returns an error."""
    if text in _BOOL_TRUE:
        return True
    if text in _BOOL_FALSE:
        return False
    return None


def parse_go_uint(text: str, base: int, bits: int) -> int | None:
    """Go's ``strconv.ParseUint(text, base, bits)`` for base 8 or 10; ``None`` on error."""
    digits = "01234567" if base == 8 else "0123456789"
    if not text or any(c not in digits for c in text):
        return None
    value = int(text, base)
    return value if value < (1 << bits) else None


_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek small letter mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)"  # compiled on first use
_MAX_DURATION = (1 << 63) - 1


def parse_go_duration(text: str) -> int | None:
    """Go's ``time.ParseDuration`` in nanoseconds (``1m30s``, ``1.5h``); ``None`` on error.

    A sequence of decimal numbers, each with an optional fraction and a required unit (``ns``,
    ``us``/``µs``, ``ms``, ``s``, ``m``, ``h``), with an optional sign; ``0`` alone needs no unit.
    """
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        return None
    total = 0
    while rest:
        match = re.match(_DURATION_PART, rest)
        if match is None:  # pragma: no cover - the pattern matches any prefix
            return None
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not frac:
            return None
        scale = _UNIT_NS.get(unit)
        if scale is None:
            return None
        value = int(whole or "0") * scale
        if frac:
            value += int(frac) * scale // (10 ** len(frac))
        total += value
        if total > _MAX_DURATION + (1 if negative else 0):
            return None
        rest = rest[match.end() :]
    return -total if negative else total
