"""The in-house record classes behave as the standard dataclasses the package used to import."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pytest_minidock import _record as record
from pytest_minidock._record import (
    FrozenInstanceError,
    asdict,
    dataclass,
    field,
    fields,
    is_dataclass,
    replace,
)


@dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = field(default_factory=tuple)
    note: str = field(default="", repr=False, compare=False)
    kind: ClassVar[str] = "point"


@dataclass(frozen=True, slots=True, kw_only=True)
class Labelled(Point):
    label: str
    extra: list[int] = field(default_factory=list)


@dataclass(frozen=True, order=True, slots=True)
class Version:
    major: int
    minor: int = 0


@dataclass(slots=True)
class Counter:
    n: int = 0


@dataclass(frozen=True, eq=False)
class Identity:
    value: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "double", self.value * 2)


def test_init_defaults_factories_and_classvars() -> None:
    p = Point(1)
    assert (p.x, p.y, p.tags, p.note) == (1, 0, (), "")
    assert Point.kind == "point"
    assert [f.name for f in fields(Point)] == ["x", "y", "tags", "note"]
    assert Point.__match_args__ == ("x", "y", "tags", "note")
    assert not hasattr(p, "__dict__")


def test_repr_skips_repr_false_fields() -> None:
    assert repr(Point(1, 2, note="hidden")) == "Point(x=1, y=2, tags=())"


def test_eq_and_hash_follow_compare() -> None:
    assert Point(1, note="a") == Point(1, note="b")
    assert hash(Point(1, note="a")) == hash(Point(1, note="b"))
    assert Point(1) != Point(2)
    assert Point(1) != (1, 0, (), "")
    assert Counter.__hash__ is None  # eq without frozen: unhashable, like dataclasses


def test_frozen_rejects_assignment_and_deletion() -> None:
    p = Point(1)
    with pytest.raises(FrozenInstanceError, match="'x'"):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.x  # type: ignore[misc]
    c = Counter()
    c.n = 3
    assert c.n == 3


def test_inheritance_and_kw_only() -> None:
    item = Labelled(1, label="a")
    assert item.label == "a"
    assert item.extra == []
    assert [f.name for f in fields(item)] == ["x", "y", "tags", "note", "label", "extra"]
    with pytest.raises(TypeError):
        Labelled(1, 2, (), "", "a")  # type: ignore[misc]
    assert Labelled(1, label="a").extra is not Labelled(1, label="a").extra


def test_order() -> None:
    assert sorted([Version(2), Version(1, 5), Version(1, 2)]) == [
        Version(1, 2),
        Version(1, 5),
        Version(2),
    ]
    assert Version(1) < Version(1, 1)


def test_post_init_and_identity_eq() -> None:
    one = Identity(2)
    assert one.double == 4  # type: ignore[attr-defined]
    assert one != Identity(2)
    assert hash(one) == hash(one)


def test_replace_asdict_and_pickle() -> None:
    item = Labelled(1, label="a", extra=[1])
    changed = replace(item, label="b")
    assert changed == Labelled(1, label="b", extra=[1])
    assert asdict(item) == {"x": 1, "y": 0, "tags": (), "note": "", "label": "a", "extra": [1]}
    assert pickle.loads(pickle.dumps(item)) == item
    assert is_dataclass(item)
    assert is_dataclass(Labelled)
    assert not is_dataclass(object())


def test_standard_module_works_on_records() -> None:
    """Users of the hooks edit specs with ``dataclasses.replace``: that keeps working."""
    item = Labelled(1, label="a")
    assert dataclasses.is_dataclass(item)
    assert dataclasses.replace(item, label="z").label == "z"
    assert [f.name for f in dataclasses.fields(Labelled)] == [f.name for f in fields(Labelled)]
    assert dataclasses.asdict(Point(3)) == {"x": 3, "y": 0, "tags": (), "note": ""}


def test_definition_errors() -> None:
    with pytest.raises(TypeError, match="non-default argument 'b'"):

        @dataclass
        class Bad:
            a: int = 1
            b: int  # type: ignore[misc]

    with pytest.raises(ValueError, match="mutable default"):

        @dataclass
        class Mutable:
            a: list[int] = []  # type: ignore[misc]  # noqa: RUF012


def test_importing_it_does_not_import_dataclasses() -> None:
    code = "import sys, pytest_minidock._record as r; print('dataclasses' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_init_is_compiled_on_first_use_and_then_is_the_class_own() -> None:
    """``__init__`` is generated at the first instantiation (a command imports many record
    classes it never makes); afterwards the class holds the generated function itself, with the
    record's signature and argument errors."""
    import inspect

    @dataclass(frozen=True, slots=True)
    class Lazy:
        a: int
        b: str = "b"

    stub = Lazy.__dict__["__init__"]
    assert Lazy(1).b == "b"
    real = Lazy.__dict__["__init__"]
    assert real is not stub
    assert real.__qualname__.endswith("Lazy.__init__")
    assert list(inspect.signature(Lazy).parameters) == ["a", "b"]
    stub(Lazy.__new__(Lazy), 2)  # a stale reference to the stub still initialises
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'a'"):
        Lazy()


def test_deferred_init_with_subclasses() -> None:
    @dataclass
    class Base:
        a: int

    class Plain(Base):
        def __init__(self) -> None:
            super().__init__(7)

    @dataclass
    class Child(Base):
        b: int = 2

    assert Plain().a == 7
    assert (Child(1).a, Child(1).b) == (1, 2)
    assert Base(3) == Base(3)


# --------------------------------------------------------------------------------------------
# The file of compiled ``__init__`` methods kept next to ``_record``'s bytecode
# --------------------------------------------------------------------------------------------

_MAKE_RECORDS = """
import sys
import pytest_minidock._record as r

calls = []
real_compile = compile

def counting_compile(*args, **kwargs):
    calls.append(args[0])
    return real_compile(*args, **kwargs)

r.compile = counting_compile
names = sys.argv[1].split(",") if sys.argv[1] else []
for name in names:
    cls = r.dataclass(frozen=True, slots=True)(
        type(name, (), {"__annotations__": {f"{name}_a": "int", f"{name}_b": "str"}})
    )
    made = cls(1, "x")
    assert getattr(made, f"{name}_a") == 1 and getattr(made, f"{name}_b") == "x"
print(len(calls), r._codes_path())
"""


def _make_records(
    names: list[str], prefix: Path, *, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a fresh interpreter that makes one record class per name (fields named after it)
    with its bytecode under ``prefix``: how many ``__init__`` it compiled, and the file's path."""
    run_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run_env["PYTHONPYCACHEPREFIX"] = str(prefix)
    run_env.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", _MAKE_RECORDS, ",".join(names)],
        capture_output=True,
        text=True,
        env=run_env,
        check=True,
    )
    assert out.stderr == ""
    count, path = out.stdout.split()
    return int(count), path


def test_a_second_process_compiles_nothing(tmp_path: Path) -> None:
    assert _make_records(["one", "two", "three"], tmp_path)[0] == 3
    count, path = _make_records(["one", "two", "three"], tmp_path)
    assert count == 0
    assert path.startswith(str(tmp_path))
    assert Path(path).read_bytes().startswith(record._header())
    assert _make_records(["one", "four"], tmp_path)[0] == 1  # one more, appended
    assert _make_records(["four", "three"], tmp_path)[0] == 0


def test_concurrent_processes_append_whole_records(tmp_path: Path) -> None:
    _make_records(["start"], tmp_path)  # the file exists: the others append to it
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path)
    groups = [[f"p{i}_{j}" for j in range(8)] for i in range(6)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MAKE_RECORDS, ",".join(group)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for group in groups
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    count, path = _make_records([name for group in groups for name in group], tmp_path)
    assert count == 0
    loaded = record._load_codes(path)
    assert not loaded.fresh  # every record whole and where the one before ends
    assert len(loaded.codes) == 1 + 6 * 8


def test_nothing_is_written_without_bytecode(tmp_path: Path) -> None:
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    assert _make_records(["one"], tmp_path, env=env)[0] == 1
    assert _make_records(["one"], tmp_path, env=env)[0] == 1
    assert not list(tmp_path.rglob("*.inits"))


def test_an_unwritable_place_is_silent(tmp_path: Path) -> None:
    """Bytecode that cannot be written (its directory cannot be made) is no error: the
    ``__init__`` methods are compiled in each process, and nothing is printed."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert _make_records(["one", "two"], blocker / "prefix")[0] == 2
    assert _make_records(["one", "two"], blocker / "prefix")[0] == 2


def _compiled(source: str) -> Any:
    return compile(source, "<string>", "exec")


_SOURCES = [f"def __init__(self, a{i}):\n  self.a{i} = a{i}" for i in range(3)]


def _saved(path: Path, sources: list[str]) -> record._CodeFile:
    file = record._load_codes(str(path))
    for source in sources:
        file.codes[source] = code = _compiled(source)  # as _init_code does
        record._save_code(file, source, code)
    return file


def _works(code: Any, n: int) -> bool:
    names: dict[str, Any] = {}
    exec(code, names)
    obj = type("Obj", (), {})()
    names["__init__"](obj, 5)
    return bool(getattr(obj, f"a{n}") == 5)


@pytest.fixture
def writing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytecode is written (the suite runs with ``PYTHONDONTWRITEBYTECODE``)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


@pytest.mark.usefixtures("writing")
def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.inits"
    assert record._load_codes(str(path)).fresh
    _saved(path, _SOURCES)
    loaded = record._load_codes(str(path))
    assert not loaded.fresh
    assert list(loaded.codes) == _SOURCES
    for n, source in enumerate(_SOURCES):
        assert _works(record._load_code(loaded.codes[source]), n)
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.usefixtures("writing")
def test_a_torn_last_record_is_left_out_and_appended_after(tmp_path: Path) -> None:
    path = tmp_path / "x.inits"
    _saved(path, _SOURCES[:2])
    path.write_bytes(path.read_bytes()[:-5])  # a process died writing the second record
    loaded = record._load_codes(str(path))
    assert list(loaded.codes) == _SOURCES[:1]
    assert not loaded.fresh  # (perhaps it is being written): appended after
    record._save_code(loaded, _SOURCES[2], _compiled(_SOURCES[2]))
    # The torn record now runs into the next one: its code fails its checksum, and what follows
    # it is not a record where one should start, so the file is started over at the next write.
    damaged = record._load_codes(str(path))
    assert _works(record._load_code(damaged.codes[_SOURCES[0]]), 0)
    assert record._load_code(damaged.codes[_SOURCES[1]]) is None
    assert damaged.fresh
    assert _SOURCES[2] not in damaged.codes


@pytest.mark.usefixtures("writing")
def test_a_damaged_file_is_started_over_through_init_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.inits"
    _saved(path, _SOURCES[:2])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the second record's code
    path.write_bytes(bytes(data))
    monkeypatch.setattr(record, "_codes_path", lambda: str(path))
    monkeypatch.setattr(record, "_CODES", [])
    assert _works(record._init_code(_SOURCES[0]), 0)  # intact: loaded
    assert _works(record._init_code(_SOURCES[1]), 1)  # damaged: compiled, file started over
    loaded = record._load_codes(str(path))
    assert not loaded.fresh
    assert sorted(loaded.codes) == sorted(_SOURCES[:2])
    assert all(record._load_code(r) is not None for r in loaded.codes.values())


@pytest.mark.usefixtures("writing")
def test_another_interpreters_file_is_ignored_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "x.inits"
    _saved(path, _SOURCES[:2])
    data = path.read_bytes()
    header = record._header()
    other = header.replace(sys.version.split()[0].encode(), b"3.99.0")
    assert other != header
    path.write_bytes(other + data[len(header) :])
    loaded = record._load_codes(str(path))
    assert loaded.codes == {}
    assert loaded.fresh
    record._save_code(loaded, _SOURCES[2], _compiled(_SOURCES[2]))
    assert path.read_bytes().startswith(header)
    assert list(record._load_codes(str(path)).codes) == [_SOURCES[2]]


def test_the_header_names_the_interpreter_and_its_bytecode() -> None:
    import importlib.util
    import marshal

    header = record._header()
    assert header.count(b"\n") == 2  # the format, then the interpreter
    for part in (
        sys.version.split()[0],
        sys.implementation.cache_tag,
        importlib.util.MAGIC_NUMBER.hex(),
        f"|{marshal.version}",
    ):
        assert part.encode() in header


@pytest.mark.usefixtures("writing")
def test_a_file_grown_too_large_is_started_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.inits"
    _saved(path, _SOURCES[:2])
    monkeypatch.setattr(record, "_CODES_MAX_BYTES", path.stat().st_size - 1)
    loaded = record._load_codes(str(path))
    assert loaded.codes == {}
    assert loaded.fresh
    record._save_code(loaded, _SOURCES[2], _compiled(_SOURCES[2]))
    assert list(record._load_codes(str(path)).codes) == [_SOURCES[2]]  # caching again


@pytest.mark.usefixtures("writing")
def test_a_removed_file_is_started_over(tmp_path: Path) -> None:
    path = tmp_path / "x.inits"
    file = _saved(path, _SOURCES[:1])
    path.unlink()
    record._save_code(file, _SOURCES[1], _compiled(_SOURCES[1]))
    assert path.read_bytes().startswith(record._header())
    assert sorted(record._load_codes(str(path)).codes) == sorted(_SOURCES[:2])


def test_dont_write_bytecode_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    path = tmp_path / "x.inits"
    _saved(path, _SOURCES)
    assert not path.exists()


@pytest.mark.usefixtures("writing")
def test_an_unwritable_file_is_silent_and_not_tried_again(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    file = _saved(blocker / "x.inits", _SOURCES[:1])  # its directory cannot be made
    assert file.path is None
    record._save_code(file, _SOURCES[1], _compiled(_SOURCES[1]))
    assert blocker.read_text() == ""
