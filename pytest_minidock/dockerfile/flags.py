"""Builder flags (``--from=``, ``--mount=``, ``--link`` …) and RUN mounts as typed values.

Flags follow buildkit's ``BFlags``: each instruction declares the flags it accepts and whether
each is a boolean (``--link`` or ``--link=true|false``), a string (``--from=build``, the ``=``
is required) or a repeatable string (``--mount=…`` and ``--exclude=…`` may be given many
times). Anything else is an error naming the flag and what the instruction accepts.

``--mount`` values are comma-separated ``key=value`` fields in CSV syntax (a field may be
double-quoted to hold a comma), parsed into one frozen dataclass per mount type with buildkit's
defaults and checks. Values may use ``$VAR``: ``parse_mount`` without an ``expand`` function
leaves fields that contain ``$`` unchecked, and ``expand.expand_stage`` parses the mount again
with the variables in scope.
"""

from __future__ import annotations

import posixpath
import re

from pytest_minidock._record import dataclass
from pytest_minidock.dockerfile._go import parse_go_bool, parse_go_uint
from pytest_minidock.errors import DockerfileSyntaxError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Literal, TypeAlias

__all__ = [
    "BindMount",
    "CacheMount",
    "FlagKind",
    "Mount",
    "SecretMount",
    "SshMount",
    "TmpfsMount",
    "parse_flags",
    "parse_mount",
    "parse_ram_bytes",
    "suggest",
]

if TYPE_CHECKING:
    FlagKind: TypeAlias = Literal["bool", "string", "strings"]
else:
    FlagKind = str
FlagValue: TypeAlias = "bool | str | tuple[str, ...]"

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")
NETWORK_MODES = ("default", "none", "host")
SECURITY_MODES = ("sandbox", "insecure")


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_flags(
    keyword: str, flags: tuple[str, ...], accepted: Mapping[str, FlagKind]
) -> dict[str, FlagValue]:
    """The flags given to ``keyword``, checked against ``accepted`` (name -> kind).

    Returns only the flags that were given: booleans as ``bool``, strings as ``str`` and
    repeatable strings as tuples in the order given. Raises ``DockerfileSyntaxError``.
    """
    values: dict[str, FlagValue] = {}
    for flag in flags:
        if not flag.startswith("--"):  # pragma: no cover - the parser only makes -- words
            raise DockerfileSyntaxError(f"flag {flag!r} should start with --")
        name, eq, value = flag[2:].partition("=")
        kind = accepted.get(name)
        if kind is None:
            raise DockerfileSyntaxError(_unknown_flag(keyword, name, accepted))
        if name in values and kind != "strings":
            raise DockerfileSyntaxError(f"flag --{name} is given twice; give it once")
        if kind == "bool":
            if eq and value == "":
                raise DockerfileSyntaxError(
                    f"flag --{name} needs a value after '=' (or none at all: --{name} means true)"
                )
            lowered = value.lower()
            if lowered not in ("", "true", "false"):
                raise DockerfileSyntaxError(f"flag --{name} expects true or false, not {value!r}")
            values[name] = lowered != "false"
        elif not eq:
            raise DockerfileSyntaxError(f"flag --{name} needs a value: write --{name}=VALUE")
        elif kind == "string":
            values[name] = value
        else:
            previous = values.get(name, ())
            assert isinstance(previous, tuple)
            values[name] = (*previous, value)
    return values


def _unknown_flag(keyword: str, name: str, accepted: Mapping[str, FlagKind]) -> str:
    if not accepted:
        return f"unknown flag --{name}: {keyword} takes no flags"
    names = sorted(accepted)
    listed = ", ".join(f"--{n}" for n in names)
    import difflib

    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    return f"unknown flag --{name} for {keyword}{hint}; {keyword} accepts {listed}"


# -- mounts ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BindMount:
    """``--mount=type=bind``: a directory of the context (or of ``from_``) at ``target``."""

    target: str
    source: str = ""
    from_: str | None = None
    readonly: bool = True
    spec: str = ""


@dataclass(frozen=True, kw_only=True)
class CacheMount:
    """``--mount=type=cache``: a directory kept between builds, shared by ``id``."""

    target: str
    id: str
    sharing: str = "shared"
    from_: str | None = None
    source: str = ""
    readonly: bool = False
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    spec: str = ""


@dataclass(frozen=True, kw_only=True)
class TmpfsMount:
    """``--mount=type=tmpfs``: an empty tmpfs at ``target``, ``size`` bytes at most."""

    target: str
    size: int | None = None
    spec: str = ""


@dataclass(frozen=True, kw_only=True)
class SecretMount:
    """``--mount=type=secret``: secret ``id`` as a file at ``target`` and/or in variable ``env``."""

    id: str
    target: str | None = None
    env: str | None = None
    required: bool = False
    mode: int = 0o400
    uid: int = 0
    gid: int = 0
    spec: str = ""


@dataclass(frozen=True, kw_only=True)
class SshMount:
    """``--mount=type=ssh``: the SSH agent socket ``id``; ``target`` empty means the default."""

    id: str = "default"
    target: str = ""
    required: bool = False
    mode: int = 0o600
    uid: int = 0
    gid: int = 0
    spec: str = ""


Mount: TypeAlias = BindMount | CacheMount | TmpfsMount | SecretMount | SshMount

_MOUNT_KEYS = [
    "type",
    "from",
    "source",
    "src",
    "target",
    "dst",
    "destination",
    "readonly",
    "ro",
    "readwrite",
    "rw",
    "required",
    "size",
    "id",
    "sharing",
    "mode",
    "uid",
    "gid",
    "env",
]
_RAM = r"(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?"
_RAM_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_ram_bytes(text: str) -> int | None:
    """docker's ``units.RAMInBytes``: ``64m`` -> 67108864 (binary units); ``None`` if invalid."""
    match = re.fullmatch(_RAM, text)
    if match is None:
        return None
    try:
        number = float(match.group(1))
    except ValueError:  # "1.2.3" matches the pattern but is no number
        return None
    unit = (match.group(2) or "").lower()
    return int(number * _RAM_UNITS.get(unit, 1))


def _csv_fields(text: str) -> list[str]:
    """One record of Go's ``encoding/csv`` (comma separated, ``"`` quoting, strict quotes)."""
    if text == "":
        raise DockerfileSyntaxError("empty --mount: write --mount=type=TYPE,target=PATH,...")
    fields: list[str] = []
    i = 0
    while True:
        if text[i : i + 1] == '"':
            out: list[str] = []
            i += 1
            while True:
                j = text.find('"', i)
                if j < 0:
                    raise DockerfileSyntaxError(f"--mount={text}: unterminated quoted field")
                out.append(text[i:j])
                i = j + 1
                if text[i : i + 1] == '"':
                    out.append('"')
                    i += 1
                    continue
                break
            if i < len(text) and text[i] != ",":
                raise DockerfileSyntaxError(
                    f'--mount={text}: extraneous or missing " in a quoted field'
                )
            fields.append("".join(out))
        else:
            j = text.find(",", i)
            field = text[i:] if j < 0 else text[i:j]
            if '"' in field:
                raise DockerfileSyntaxError(
                    f'--mount={text}: bare " in a field; quote the whole field instead'
                )
            fields.append(field)
            i = len(text) if j < 0 else j
        if i >= len(text):
            return fields
        i += 1  # the comma
        if i == len(text):
            fields.append("")
            return fields


@dataclass
class _MountFields:
    type: str = "bind"
    source: str = ""
    target: str = ""
    from_: str | None = None
    readonly: bool | None = None
    required: bool = False
    size: int | None = None
    id: str = ""
    sharing: str = ""
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    env: str | None = None


def _number(key: str, value: str, base: int) -> int:
    number = parse_go_uint(value, base, 32)
    if number is None:
        kind = "an octal number like 0755" if base == 8 else "a number"
        raise DockerfileSyntaxError(f"invalid --mount {key}={value!r}: use {kind}")
    return number


def _field(m: _MountFields, key: str, value: str, field: str) -> None:
    if key == "type":
        kind = value.lower()
        if kind not in MOUNT_TYPES:
            raise DockerfileSyntaxError(
                f"unsupported mount type {value!r}{suggest(kind, MOUNT_TYPES)}; "
                f"use one of {', '.join(MOUNT_TYPES)}"
            )
        m.type = kind
    elif key == "from":
        m.from_ = value
    elif key in ("source", "src"):
        m.source = value
    elif key in ("target", "dst", "destination"):
        m.target = value
    elif key in ("readonly", "ro", "readwrite", "rw"):
        flag = parse_go_bool(value)
        if flag is None:
            raise DockerfileSyntaxError(f"invalid --mount {key}={value!r}: use true or false")
        m.readonly = flag if key in ("readonly", "ro") else not flag
    elif key == "required":
        if m.type not in ("secret", "ssh"):
            raise DockerfileSyntaxError(f"unexpected key 'required' for mount type {m.type!r}")
        flag = parse_go_bool(value)
        if flag is None:
            raise DockerfileSyntaxError(f"invalid --mount {key}={value!r}: use true or false")
        m.required = flag
    elif key == "size":
        if m.type != "tmpfs":
            raise DockerfileSyntaxError(f"unexpected key 'size' for mount type {m.type!r}")
        m.size = parse_ram_bytes(value)
        if m.size is None:
            raise DockerfileSyntaxError(
                f"invalid --mount size={value!r}: use bytes or a unit, like 64m or 1g"
            )
    elif key == "id":
        m.id = value
    elif key == "sharing":
        mode = value.lower()
        if mode not in SHARING_MODES:
            raise DockerfileSyntaxError(
                f"unsupported sharing value {value!r}{suggest(mode, SHARING_MODES)}; "
                f"use one of {', '.join(SHARING_MODES)}"
            )
        m.sharing = mode
    elif key == "mode":
        m.mode = _number(key, value, 8)
    elif key in ("uid", "gid"):
        setattr(m, key, _number(key, value, 10))
    elif key == "env":
        if m.type != "secret":
            raise DockerfileSyntaxError(f"unexpected key 'env' for mount type {m.type!r}")
        m.env = value
    else:
        raise DockerfileSyntaxError(
            f"unexpected key {key!r} in --mount field {field!r}{suggest(key, _MOUNT_KEYS)}"
        )


_TYPED_KEYS = frozenset(
    {
        "type",
        "readonly",
        "ro",
        "readwrite",
        "rw",
        "required",
        "size",
        "sharing",
        "mode",
        "uid",
        "gid",
    }
)


def parse_mount(spec: str, expand: Callable[[str], str] | None = None) -> Mount | None:
    """Parse one ``--mount=`` value (``spec`` is the text after ``--mount=``).

    ``expand`` substitutes variables in each value (``from`` never expands, as in buildkit).
    Without it the mount is parsed before the variables are known: text fields that use ``$``
    stay as written, typed fields that do (``mode=$M``) keep their defaults unchecked, and a
    mount whose very type is a variable gives ``None``. Raises ``DockerfileSyntaxError``.
    """
    m = _MountFields()
    deferred_type = False
    for field in _csv_fields(spec):
        key, eq, value = field.partition("=")
        key = key.lower()
        if not eq:
            if key in ("readonly", "ro"):
                m.readonly = True
            elif key in ("readwrite", "rw"):
                m.readonly = False
            elif key == "required" and m.type in ("secret", "ssh"):
                m.required = True
            elif key == "required":
                raise DockerfileSyntaxError(f"unexpected key 'required' for mount type {m.type!r}")
            else:
                raise DockerfileSyntaxError(
                    f"invalid --mount field {field!r}: it must be a key=value pair"
                )
            continue
        if key == "from" and re.search(r"\$.", value):
            raise DockerfileSyntaxError(
                "--mount from= doesn't support variable expansion; define an alias stage "
                "(FROM ${VAR} AS alias) and use from=alias"
            )
        if expand is not None and key != "from":
            value = expand(value)
        elif expand is None and "$" in value and key in _TYPED_KEYS:
            deferred_type = deferred_type or key == "type"
            continue
        _field(m, key, value, field)
    return None if deferred_type else _finish(m, spec)


def _finish(m: _MountFields, spec: str) -> Mount:
    if m.type in ("bind", "tmpfs"):
        for name in ("mode", "uid", "gid"):
            if getattr(m, name) is not None:
                raise DockerfileSyntaxError(f"{name} is not allowed for {m.type!r} mounts")
    if m.sharing and m.type != "cache":
        raise DockerfileSyntaxError(f"sharing= is only for cache mounts, not {m.type!r}; remove it")
    if m.type in ("bind", "cache", "tmpfs") and not m.target:
        raise DockerfileSyntaxError(f"{m.type} mount has no target: add target=/path/in/container")
    if m.type == "bind":
        readonly = True if m.readonly is None else m.readonly
        return BindMount(
            target=m.target, source=m.source, from_=m.from_, readonly=readonly, spec=spec
        )
    if m.type == "cache":
        return CacheMount(
            target=m.target,
            id=m.id or m.target,
            sharing=m.sharing or "shared",
            from_=m.from_,
            source=m.source,
            readonly=bool(m.readonly),
            mode=0o755 if m.mode is None else m.mode,
            uid=m.uid or 0,
            gid=m.gid or 0,
            spec=spec,
        )
    if m.type == "tmpfs":
        return TmpfsMount(target=m.target, size=m.size, spec=spec)
    if m.type == "secret":
        if m.from_ is not None:
            raise DockerfileSyntaxError("secret mount should not have a from=; remove it")
        if not (m.source or m.target or m.id):
            raise DockerfileSyntaxError(
                "secret mount needs id= (or target=): e.g. type=secret,id=npmrc"
            )
        if m.source and m.id:
            raise DockerfileSyntaxError("secret mount has both source= and id=; give only id=")
        secret_id = m.id or m.source or posixpath.basename(m.target)
        target = m.target or (None if m.env is not None else f"/run/secrets/{secret_id}")
        return SecretMount(
            id=secret_id,
            target=target,
            env=m.env,
            required=m.required,
            mode=0o400 if m.mode is None else m.mode,
            uid=m.uid or 0,
            gid=m.gid or 0,
            spec=spec,
        )
    return SshMount(
        id=m.id or "default",
        target=m.target,
        required=m.required,
        mode=0o600 if m.mode is None else m.mode,
        uid=m.uid or 0,
        gid=m.gid or 0,
        spec=spec,
    )
