"""pytest-minidock: test against real services in containers, with no Docker daemon.

The public names are re-exported here, imported on first use so that ``import pytest_minidock``
(which every submodule import, the ``minidock`` command and the pytest plugin pay for) stays cheap.
Everything else lives in private-by-convention modules and may change.

``build`` names two things: the ``build()`` fixture factory (public) and the ``build`` subpackage
(the Dockerfile builder). The import system binds a subpackage to its parent's attribute when it
is imported, which would replace the factory under users' feet; so this package's module type
keeps the attribute, and the public ``build`` is a callable that also answers attribute look-ups
for the subpackage (``pytest_minidock.build.builder`` still works).
"""

from __future__ import annotations

import sys
import types

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from typing import Any

    from pytest_minidock import wait
    from pytest_minidock.digest import Digest
    from pytest_minidock.errors import MinidockError
    from pytest_minidock.fixtures import Container, build, container
    from pytest_minidock.reference import Reference

__all__ = [
    "Container",
    "Digest",
    "MinidockError",
    "Reference",
    "__version__",
    "build",
    "container",
    "wait",
]

__version__ = "0.1.0"

_LAZY = {
    "Container": "pytest_minidock.fixtures",
    "Digest": "pytest_minidock.digest",
    "MinidockError": "pytest_minidock.errors",
    "Reference": "pytest_minidock.reference",
    "container": "pytest_minidock.fixtures",
    "wait": "pytest_minidock.wait",
}
"""Public name -> the module defining it (``wait`` is a module: ``wait.tcp(80)``, ``wait.http``)."""


class _Build:
    """``pytest_minidock.build``: called, the ``build()`` fixture factory; otherwise the
    ``pytest_minidock.build`` subpackage (the Dockerfile builder)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from pytest_minidock.fixtures import build as factory

        return factory(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(_import("pytest_minidock.build"), name)

    def __repr__(self) -> str:
        return "<pytest_minidock.build: the build() fixture factory>"


class _Package(types.ModuleType):
    """This package's module type: importing the ``build`` subpackage leaves ``build`` alone."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "build" and isinstance(value, types.ModuleType):
            return  # reachable as sys.modules["pytest_minidock.build"] and through _Build
        super().__setattr__(name, value)


if not TYPE_CHECKING:
    build = _Build()
sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_minidock' has no attribute {name!r}")
    imported = _import(module)
    value = imported if module.endswith("." + name) else getattr(imported, name)
    globals()[name] = value
    return value


def _import(name: str) -> types.ModuleType:
    """``importlib.import_module`` for absolute names, without importing ``importlib``."""
    __import__(name)
    return sys.modules[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
