"""Record classes: the subset of :mod:`dataclasses` this package uses, made cheap to import.

Every ``minidock`` command pays at start for the classes of the modules it imports. The standard
``dataclasses`` module costs ~15 ms to import on this project's machines (it imports ``inspect``)
and ~1 ms per frozen class (one ``exec`` per generated method); a ``minidock run`` imports some
forty of them. This module builds the same classes with one ``exec`` per class and imports nothing
heavy, which brings that cost down to a fraction.

The API mirrors the standard one for what the package uses: :func:`dataclass` (``init``, ``repr``,
``eq``, ``order``, ``frozen``, ``slots``, ``kw_only``, ``unsafe_hash``), :func:`field`
(``default``, ``default_factory``, ``init``, ``repr``, ``compare``, ``hash``, ``kw_only``,
``metadata``), :func:`fields`, :func:`replace`, :func:`asdict`, :func:`is_dataclass` and
:class:`FrozenInstanceError`. ``typing.dataclass_transform`` tells type checkers the classes are
dataclasses. ``ClassVar`` annotations are not fields; ``InitVar`` and ``KW_ONLY`` are not supported
(nothing here uses them) and raise :class:`TypeError` at class creation rather than misbehave.

The classes stay usable with the standard module, which users of the hooks may reach for
(``dataclasses.replace(spec.overrides, ...)``): ``__dataclass_fields__`` is a class attribute that,
on first access, imports :mod:`dataclasses` and answers with real ``dataclasses.Field`` objects.
"""

from __future__ import annotations

import operator
import os

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, Final, TypeVar, dataclass_transform, overload

    _T = TypeVar("_T")
else:

    def dataclass_transform(**_):  # (read by type checkers from the source)
        return lambda func: func


__all__ = [
    "MISSING",
    "Field",
    "FrozenInstanceError",
    "asdict",
    "dataclass",
    "field",
    "fields",
    "is_dataclass",
    "replace",
]

_FIELDS: Final = "__record_fields__"


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final[Any] = _Missing()
_FACTORY: Final[Any] = type("_Factory", (), {"__repr__": lambda self: "<factory>"})()


class FrozenInstanceError(AttributeError):
    """An assignment to (or deletion of) a field of a frozen record."""


class Field:
    """One field of a record: its name, default, and which generated methods use it."""

    __slots__ = (
        "compare",
        "default",
        "default_factory",
        "hash",
        "init",
        "kw_only",
        "metadata",
        "name",
        "repr",
        "type",
    )

    def __init__(  # noqa: PLR0917 - the record of field()'s keywords, made in two places
        self,
        default: Any,
        default_factory: Any,
        init: bool,
        repr: bool,
        compare: bool,
        hash: bool | None,
        kw_only: Any,
        metadata: Mapping[Any, Any] | None,
    ) -> None:
        self.name = ""
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory
        self.init = init
        self.repr = repr
        self.compare = compare
        self.hash = hash
        self.kw_only = kw_only
        self.metadata: Mapping[Any, Any] = metadata if metadata is not None else {}

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r}, kw_only={self.kw_only!r})"


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    init: bool = True,
    repr: bool = True,
    compare: bool = True,
    hash: bool | None = None,
    kw_only: bool | Any = MISSING,
    metadata: Mapping[Any, Any] | None = None,
) -> Any:
    """Describe one field, as :func:`dataclasses.field` does."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, init, repr, compare, hash, kw_only, metadata)


class _StdlibFields:
    """``__dataclass_fields__`` for the standard module, built on first access."""

    def __get__(self, obj: object, objtype: type | None = None) -> dict[str, Any]:
        owner = objtype if objtype is not None else type(obj)
        cached = owner.__dict__.get("__record_stdlib_fields__")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        import dataclasses

        out: dict[str, Any] = {}
        for f in getattr(owner, _FIELDS).values():
            std: Any = dataclasses.field(
                default=dataclasses.MISSING if f.default is MISSING else f.default,
                default_factory=(
                    dataclasses.MISSING if f.default_factory is MISSING else f.default_factory
                ),
                init=f.init,
                repr=f.repr,
                compare=f.compare,
                hash=f.hash,
                kw_only=f.kw_only if f.kw_only is not MISSING else dataclasses.MISSING,
                metadata=f.metadata or None,
            )
            std.name = f.name
            std.type = f.type
            std._field_type = dataclasses._FIELD  # type: ignore[attr-defined]
            out[f.name] = std
        type.__setattr__(owner, "__record_stdlib_fields__", out)
        return out


_CLASSVARS: Final = ("ClassVar", "typing.ClassVar", "Final", "typing.Final")
_KW_ONLY: Final = ("KW_ONLY", "dataclasses.KW_ONLY")


def _is_classvar(annotation: object) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(_CLASSVARS)
    origin = getattr(annotation, "__origin__", annotation)
    import typing

    return origin is typing.ClassVar


def _check_annotation(cls: type, name: str, annotation: object) -> None:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    if "InitVar" in text or text in _KW_ONLY:
        raise TypeError(f"{cls.__qualname__}.{name}: InitVar and KW_ONLY are not supported")


def _collect(cls: type, kw_only: bool) -> dict[str, Field]:
    all_fields: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        inherited = base.__dict__.get(_FIELDS)
        if inherited is not None:
            all_fields.update(inherited)
    # The class's own annotations, unevaluated (inspect.get_annotations would cost its import).
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    for name, annotation in annotations.items():
        # (a string, the usual case under ``from __future__ import annotations``: checked here)
        if (
            annotation.startswith(_CLASSVARS)
            if type(annotation) is str
            else _is_classvar(annotation)
        ):
            continue
        _check_annotation(cls, name, annotation)
        default = cls.__dict__.get(name, MISSING)
        if isinstance(default, Field):
            f = default
            if f.default is MISSING:
                # The class attribute was the Field itself: take it away (dataclasses does too).
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        else:
            f = Field(default, MISSING, True, True, True, None, MISSING, None)
        if isinstance(f.default, (list, dict, set)):
            raise ValueError(
                f"mutable default {type(f.default)} for field {name} of {cls.__qualname__} is "
                "not allowed: use default_factory"
            )
        f.name = name
        f.type = annotation
        if f.kw_only is MISSING:
            f.kw_only = kw_only
        all_fields[name] = f
    return all_fields


def _make_methods(
    cls: type,
    all_fields: dict[str, Field],
    *,
    init: bool,
    repr_: bool,
    eq: bool,
    order: bool,
    frozen: bool,
    hash_action: str,
    owner: list[type],
) -> dict[str, Any]:
    """Generate the methods and return those the class does not define. ``owner`` holds the
    class the methods belong to: ``_with_slots`` rebinds it to the slotted copy it makes."""
    own = cls.__dict__
    make_init = init and "__init__" not in own
    if make_init:  # (checked now; the method itself is written at the first instance)
        seen_default = False
        for f in all_fields.values():
            if not f.init or f.kw_only:
                continue
            if f.default is not MISSING or f.default_factory is not MISSING:
                seen_default = True
            elif seen_default:
                raise TypeError(
                    f"non-default argument {f.name!r} follows default argument in "
                    f"{cls.__qualname__}"
                )

    methods: dict[str, Any] = {}
    if repr_ and "__repr__" not in own:
        methods["__repr__"] = _repr_method(tuple(f.name for f in all_fields.values() if f.repr))
    compared = _getter(tuple(f.name for f in all_fields.values() if f.compare))
    if eq and "__eq__" not in own:
        methods["__eq__"] = _compare_method(compared, operator.eq)
    if order:
        for name, op in (
            ("__lt__", operator.lt),
            ("__le__", operator.le),
            ("__gt__", operator.gt),
            ("__ge__", operator.ge),
        ):
            if name in own:
                raise TypeError(f"cannot overwrite attribute {name} in class {cls.__qualname__}")
            methods[name] = _compare_method(compared, op)
    if hash_action == "add":
        hashed = _getter(
            tuple(f.name for f in all_fields.values() if (f.compare if f.hash is None else f.hash))
        )
        methods["__hash__"] = lambda self: hash(hashed(self))
    if frozen:
        for name in ("__setattr__", "__delattr__"):
            if name in own:
                raise TypeError(f"cannot overwrite attribute {name} in class {cls.__qualname__}")
        methods.update(_frozen_methods(frozenset(all_fields), owner))

    for name, fn in methods.items():
        fn.__qualname__ = f"{cls.__qualname__}.{name}"
        fn.__module__ = cls.__module__
    if make_init:
        methods["__init__"] = _deferred_init(cls, all_fields, frozen, owner)
    return methods


def _init_source(
    cls: type, all_fields: dict[str, Field], frozen: bool
) -> tuple[str, dict[str, Any]]:
    """The source of a record's ``__init__`` and the names it uses (defaults, factories)."""
    names: dict[str, Any] = {"_MISSING": MISSING, "_FACTORY": _FACTORY}
    args: list[str] = []
    kw: list[str] = []
    body: list[str] = []
    setter = "_setattr(self, {n!r}, {v})" if frozen else "self.{n} = {v}"
    if frozen:
        names["_setattr"] = object.__setattr__
    for f in all_fields.values():
        n = f.name
        if f.default_factory is not MISSING:
            names[f"_dflt_{n}"] = f.default_factory
            if f.init:
                value = f"_dflt_{n}() if {n} is _FACTORY else {n}"
                param = f"{n}=_FACTORY"
            else:
                value = f"_dflt_{n}()"
                param = ""
        elif f.default is not MISSING:
            names[f"_dflt_{n}"] = f.default
            value = n if f.init else f"_dflt_{n}"
            param = f"{n}=_dflt_{n}" if f.init else ""
        else:
            if not f.init:
                continue
            value = n
            param = n
        if param:
            (kw if f.kw_only else args).append(param)
        body.append("  " + setter.format(n=n, v=value))
    if hasattr(cls, "__post_init__"):
        body.append("  self.__post_init__()")
    signature = ", ".join(["self", *args, *(["*", *kw] if kw else [])])
    return "\n".join([f"def __init__({signature}):", *(body or ["  pass"])]), names


def _deferred_init(
    cls: type, all_fields: dict[str, Field], frozen: bool, owner: list[type]
) -> Callable[..., None]:
    """An ``__init__`` that writes and compiles the record's real one on the first call and
    puts it in its place (on ``owner[0]``: the slotted copy when ``slots=True`` makes one).
    Compiling costs ~0.15 ms a class, writing the source a few µs a field, and a command
    imports many record classes it never instantiates."""
    qualname = f"{cls.__qualname__}.__init__"
    module = cls.__module__
    made: list[Callable[..., None]] = []

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        target = owner[0]
        real = target.__dict__.get("__init__")
        if real is __init__ or real is None:
            if not made:
                source, names = _init_source(target, all_fields, frozen)
                exec(_init_code(source), names)  # generated from field names only
                names["__init__"].__qualname__ = qualname
                names["__init__"].__module__ = module
                made.append(names["__init__"])
            real = made[0]
            if target.__dict__.get("__init__") is __init__:
                type.__setattr__(target, "__init__", real)
        real(self, *args, **kwargs)

    __init__.__qualname__ = qualname
    __init__.__module__ = module
    return __init__


class _CodeFile:
    """The file of compiled ``__init__`` methods (see ``_init_code``), as this process knows it:
    where it is (``None``: nowhere, or not writable), the generated sources with their compiled
    code (``marshal`` bytes until first used) and whether the next write starts it over."""

    __slots__ = ("codes", "fresh", "path")

    def __init__(self, path: str | None, codes: dict[str, Any], fresh: bool) -> None:
        self.path = path
        self.codes = codes
        self.fresh = fresh


_CODES: list[_CodeFile] = []
"""The ``_CodeFile``, read once at the first record made."""
_CODES_MAGIC = b"minidock-record-inits 2\n"
_CODES_MAX_BYTES = 1 << 20
"""A larger file is started over (by the next process compiling something)."""
_RECORD_MARK = b"\x00r"
_RECORD_HEAD = 18  # the mark, an 8-byte check, the source's and the code's 4-byte lengths
_CODE_TYPE = type(_CodeFile.__init__.__code__)


def _codes_path() -> str | None:
    """Where compiled ``__init__`` methods are kept: next to this module's own bytecode (the
    same directory, ``PYTHONPYCACHEPREFIX`` included), or nowhere without one."""
    cached = globals().get("__cached__")
    if not isinstance(cached, str) or not cached.endswith(".pyc"):
        return None
    return cached[:-4] + ".inits"


def _header() -> bytes:
    """The file's first line: its format and the interpreter whose ``marshal`` wrote the code
    (its version and build, bytecode magic number, cache tag and ``marshal`` format)."""
    import marshal
    import sys

    bootstrap = sys.modules.get("_frozen_importlib_external")
    magic = getattr(bootstrap, "MAGIC_NUMBER", b"")
    interpreter = (
        f"{sys.version}|{sys.implementation.cache_tag}|{bytes(magic).hex()}|{marshal.version}"
    )
    return _CODES_MAGIC + interpreter.encode(errors="replace").replace(b"\n", b" ") + b"\n"


def _check(span: bytes | memoryview) -> int:
    """A checksum of a record's lengths, source and code (no ``zlib`` import: ~1 µs a record)."""
    return hash(int.from_bytes(span, "little")) & 0xFFFFFFFFFFFFFFFF


def _record(source: str, raw_code: bytes) -> bytes:
    raw_source = source.encode()
    span = len(raw_source).to_bytes(4, "little") + len(raw_code).to_bytes(4, "little")
    span += raw_source + raw_code
    return _RECORD_MARK + _check(span).to_bytes(8, "little") + span


def _load_codes(path: str | None) -> _CodeFile:
    """The file at ``path``: the header of ``_header`` (else the file is ignored and is started
    over), then records of a source and its ``marshal``-ed code, each with its lengths and a
    checksum, which ``_init_code`` verifies for the few sources a command uses. A torn last
    record (a process died writing it, or is writing it) is left out; a record that is not
    where the one before ends means the file is damaged: it is started over."""
    if path is None:
        return _CodeFile(None, {}, True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return _CodeFile(path, {}, True)
    try:
        size = os.fstat(fd).st_size
        # (Not read(_CODES_MAX_BYTES + 1): a buffer that large costs more than the reading.)
        data = os.read(fd, size + 1) if size <= _CODES_MAX_BYTES else b""
    except OSError:
        data = b""
    finally:
        os.close(fd)
    header = _header()
    if len(data) > _CODES_MAX_BYTES or not data.startswith(header):
        return _CodeFile(path, {}, True)
    codes: dict[str, Any] = {}
    pos = len(header)
    while pos + _RECORD_HEAD <= len(data):
        if data[pos : pos + 2] != _RECORD_MARK:
            return _CodeFile(path, codes, True)
        n_source = int.from_bytes(data[pos + 10 : pos + 14], "little")
        n_code = int.from_bytes(data[pos + 14 : pos + 18], "little")
        start = pos + _RECORD_HEAD + n_source
        end = start + n_code
        if end > len(data):
            break  # a torn last record
        try:
            source = data[pos + _RECORD_HEAD : start].decode()
        except UnicodeDecodeError:
            return _CodeFile(path, codes, True)
        codes[source] = data[pos:end]  # the whole record, checked when used
        pos = end
    return _CodeFile(path, codes, False)


def _intact(record: bytes) -> bool:
    return _check(record[10:]) == int.from_bytes(record[2:10], "little")


def _load_code(record: bytes) -> Any:
    """The code object in ``record``, or ``None`` if it is damaged."""
    import marshal

    if not _intact(record):
        return None
    n_source = int.from_bytes(record[10:14], "little")
    try:
        code = marshal.loads(memoryview(record)[_RECORD_HEAD + n_source :])
    except (EOFError, ValueError, TypeError):
        return None
    return code if type(code) is _CODE_TYPE else None


def _save_code(file: _CodeFile, source: str, code: Any) -> None:
    """Add one compiled source to ``file``: appended (one ``write`` of ``O_APPEND``, which
    concurrent writers' do not interleave with), or when the file is to be started over, all
    this process knows written to a new file renamed over it. Quietly nothing where bytecode
    is not written or cannot be (nor tried again in this process once it could not)."""
    import marshal
    import sys

    path = file.path
    if path is None or sys.dont_write_bytecode:
        return
    record = _record(source, marshal.dumps(code))
    try:
        if not file.fresh:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except FileNotFoundError:
                file.fresh = True  # removed since read (a cleared __pycache__)
            else:
                try:
                    os.write(fd, record)
                finally:
                    os.close(fd)
                return
        _rewrite(path, source, record, file.codes)
        file.fresh = False
    except OSError:
        file.path = None


def _rewrite(path: str, source: str, record: bytes, codes: dict[str, Any]) -> None:
    """Start the file at ``path`` over: the header, ``record`` (of ``source``) and the other
    intact records of ``codes``, written aside and renamed in place."""
    import _thread
    import marshal

    parts = [_header(), record]
    for known, value in list(codes.items()):
        if known == source:
            continue
        if isinstance(value, bytes):
            if _intact(value):
                parts.append(value)
        elif type(value) is _CODE_TYPE:
            parts.append(_record(known, marshal.dumps(value)))
    tmp = f"{path}.{os.getpid()}.{_thread.get_ident()}.tmp"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, b"".join(parts))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:  # noqa: SIM105 - contextlib would cost an import
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _init_code(source: str) -> Any:
    """The compiled ``source`` of a generated ``__init__``: from the file of earlier
    compilations when it is there (compiling costs ~0.15 ms; a ``marshal`` load, ~0.01 ms)."""
    if not _CODES:
        _CODES.append(_load_codes(_codes_path()))
    file = _CODES[0]
    code = file.codes.get(source)
    if isinstance(code, bytes):
        code = _load_code(code)
        if code is None:
            file.fresh = True  # a damaged record: the file is started over
    if code is None:
        code = compile(source, "<string>", "exec")
        file.codes[source] = code
        _save_code(file, source, code)
    else:
        file.codes[source] = code
    return code


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function returning the tuple of ``names``' values of a record (C-speed attrgetter)."""
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        get_one = operator.attrgetter(names[0])
        return lambda obj: (get_one(obj),)
    return operator.attrgetter(*names)


def _repr_method(names: tuple[str, ...]) -> Callable[[Any], str]:
    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{self.__class__.__qualname__}({inner})"

    return __repr__


def _compare_method(
    values: Callable[[Any], tuple[Any, ...]], op: Callable[[Any, Any], Any]
) -> Callable[[Any, Any], Any]:
    def compare(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return op(values(self), values(other))
        return NotImplemented

    return compare


def _frozen_methods(
    field_names: frozenset[str], owner: list[type]
) -> dict[str, Callable[..., None]]:
    def __setattr__(self: Any, name: str, value: Any) -> None:
        if self.__class__ is owner[0] or name in field_names:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        parent: Any = super(owner[0], self)
        parent.__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if self.__class__ is owner[0] or name in field_names:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        parent: Any = super(owner[0], self)
        parent.__delattr__(name)

    return {"__setattr__": __setattr__, "__delattr__": __delattr__}


def _frozen_getstate(self: Any) -> list[Any]:
    return [getattr(self, name) for name in getattr(self, _FIELDS)]


def _frozen_setstate(self: Any, state: list[Any]) -> None:
    for name, value in zip(getattr(self, _FIELDS), state, strict=True):
        object.__setattr__(self, name, value)


def _process(
    cls: type[_T],
    *,
    init: bool,
    repr_: bool,
    eq: bool,
    order: bool,
    frozen: bool,
    slots: bool,
    kw_only: bool,
    unsafe_hash: bool,
) -> type[_T]:
    if order and not eq:
        raise ValueError("eq must be true if order is true")
    all_fields = _collect(cls, kw_only)
    for base in cls.__mro__[1:]:
        params = base.__dict__.get("__record_params__")
        if params is not None and params["frozen"] != frozen:
            raise TypeError(
                f"cannot inherit {'non-' if frozen else ''}frozen dataclass from a "
                f"{'' if frozen else 'non-'}frozen one"
            )
    own_hash = cls.__dict__.get("__hash__", MISSING)
    explicit_hash = not (own_hash is MISSING or (own_hash is None and "__eq__" in cls.__dict__))
    if unsafe_hash:
        if explicit_hash:
            raise TypeError(f"cannot overwrite attribute __hash__ in class {cls.__qualname__}")
        hash_action = "add"
    elif eq and frozen and not explicit_hash:
        hash_action = "add"
    elif eq and not frozen and not explicit_hash:
        hash_action = "none"
    else:
        hash_action = ""
    owner: list[type] = [cls]
    methods = _make_methods(
        cls,
        all_fields,
        init=init,
        repr_=repr_,
        eq=eq,
        order=order,
        frozen=frozen,
        hash_action=hash_action,
        owner=owner,
    )
    for name, fn in methods.items():
        setattr(cls, name, fn)
    if hash_action == "none":
        cls.__hash__ = None  # type: ignore[assignment]
    type.__setattr__(cls, _FIELDS, all_fields)
    type.__setattr__(cls, "__record_params__", {"frozen": frozen, "eq": eq, "order": order})
    type.__setattr__(cls, "__dataclass_fields__", _StdlibFields())
    if "__match_args__" not in cls.__dict__:
        type.__setattr__(
            cls,
            "__match_args__",
            tuple(f.name for f in all_fields.values() if f.init and not f.kw_only),
        )
    if slots:
        cls = _with_slots(cls, all_fields, frozen)
        owner[0] = cls  # the frozen and __init__ methods work on the slotted copy
    return cls


def _with_slots(cls: type[_T], all_fields: dict[str, Field], frozen: bool) -> type[_T]:
    if "__slots__" in cls.__dict__:
        raise TypeError(f"{cls.__qualname__} already specifies __slots__")
    inherited: set[str] = set()
    for base in cls.__mro__[1:-1]:
        inherited.update(getattr(base, "__slots__", ()))
    body = dict(cls.__dict__)
    body["__slots__"] = tuple(n for n in all_fields if n not in inherited)
    for name in all_fields:
        body.pop(name, None)
    body.pop("__dict__", None)
    body.pop("__weakref__", None)
    body.pop("__record_stdlib_fields__", None)
    qualname = getattr(cls, "__qualname__", None)
    metaclass: Any = type(cls)
    new: Any = metaclass(cls.__name__, cls.__bases__, body)
    if qualname is not None:
        new.__qualname__ = qualname
    if frozen:
        if "__getstate__" not in body:
            new.__getstate__ = _frozen_getstate
        if "__setstate__" not in body:
            new.__setstate__ = _frozen_setstate
    return new  # type: ignore[no-any-return]


if TYPE_CHECKING:  # the overloads are for type checkers only

    @overload
    def dataclass(cls: type[_T], /) -> type[_T]: ...

    @overload
    def dataclass(
        *,
        init: bool = True,
        repr: bool = True,
        eq: bool = True,
        order: bool = False,
        unsafe_hash: bool = False,
        frozen: bool = False,
        slots: bool = False,
        kw_only: bool = False,
    ) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(field_specifiers=(field, Field))
def dataclass(
    cls: type[_T] | None = None,
    /,
    *,
    init: bool = True,
    repr: bool = True,
    eq: bool = True,
    order: bool = False,
    unsafe_hash: bool = False,
    frozen: bool = False,
    slots: bool = False,
    kw_only: bool = False,
) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """Make ``cls`` a record class, as :func:`dataclasses.dataclass` does."""

    def wrap(c: type[_T]) -> type[_T]:
        return _process(
            c,
            init=init,
            repr_=repr,
            eq=eq,
            order=order,
            frozen=frozen,
            slots=slots,
            kw_only=kw_only,
            unsafe_hash=unsafe_hash,
        )

    if cls is None:
        return wrap
    return wrap(cls)


def is_dataclass(obj: object) -> bool:
    """Whether ``obj`` is a record class or an instance of one (or a standard dataclass)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return hasattr(cls, _FIELDS) or hasattr(cls, "__dataclass_fields__")


def fields(obj: object) -> tuple[Any, ...]:
    """The fields of a record class or instance, in definition order."""
    cls = obj if isinstance(obj, type) else type(obj)
    found = getattr(cls, _FIELDS, None)
    if found is None:
        if hasattr(cls, "__dataclass_fields__"):  # a standard dataclass
            import dataclasses

            return tuple(dataclasses.fields(cls))
        raise TypeError(f"{cls.__qualname__} is not a dataclass")
    return tuple(found.values())


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of the record ``obj`` with ``changes`` applied, through its ``__init__``."""
    found = getattr(type(obj), _FIELDS, None)
    if found is None:
        raise TypeError("replace() should be called on dataclass instances")
    for f in found.values():
        if not f.init:
            if f.name in changes:
                raise ValueError(
                    f"field {f.name} is declared with init=False, it cannot be specified with "
                    "replace()"
                )
            continue
        if f.name not in changes:
            changes[f.name] = getattr(obj, f.name)
    return type(obj)(**changes)


def asdict(obj: object) -> dict[str, Any]:
    """The record ``obj`` as a dict, recursing into records, lists, tuples and dicts."""
    if getattr(type(obj), _FIELDS, None) is None or isinstance(obj, type):
        raise TypeError("asdict() should be called on dataclass instances")
    return _asdict(obj)  # type: ignore[no-any-return]


def _asdict(value: Any) -> Any:
    found = getattr(type(value), _FIELDS, None)
    if found is not None and not isinstance(value, type):
        return {name: _asdict(getattr(value, name)) for name in found}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*[_asdict(v) for v in value])
    if isinstance(value, (list, tuple)):
        return type(value)(_asdict(v) for v in value)
    if isinstance(value, dict):
        return type(value)((_asdict(k), _asdict(v)) for k, v in value.items())
    if isinstance(value, (str, int, float, bool, bytes, type(None))):
        return value
    import copy

    return copy.deepcopy(value)
