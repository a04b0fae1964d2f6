"""The in-house record classes behave as the standard dataclasses the package used to import."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from typing import ClassVar

import pytest

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
