"""pytest-minidock: test against real services in containers, with no Docker daemon.

The public names are re-exported here, imported on first use so that ``import pytest_minidock``
(which every submodule import, the ``minidock`` command and the pytest plugin pay for) stays cheap.
Everything else lives in private-by-convention modules and may change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_minidock.digest import Digest
    from pytest_minidock.errors import MinidockError
    from pytest_minidock.reference import Reference

__all__ = ["Digest", "MinidockError", "Reference", "__version__"]

__version__ = "0.1.0"

_LAZY = {
    "Digest": "pytest_minidock.digest",
    "MinidockError": "pytest_minidock.errors",
    "Reference": "pytest_minidock.reference",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_minidock' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
