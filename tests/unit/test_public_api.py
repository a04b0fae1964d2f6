"""The package's small public facade: ``__all__`` sorted, complete, importable and lazy."""

from __future__ import annotations

import subprocess
import sys

import pytest_minidock


def test_all_is_sorted_and_importable() -> None:
    assert pytest_minidock.__all__ == sorted(pytest_minidock.__all__)
    for name in pytest_minidock.__all__:
        assert getattr(pytest_minidock, name) is not None, name


def test_no_public_name_is_left_out() -> None:
    public = {n for n in dir(pytest_minidock) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(pytest_minidock, n)).__name__ == "module"}
    assert public - modules - {"annotations", "importlib", "TYPE_CHECKING", "Any"} <= set(
        pytest_minidock.__all__
    )


def test_importing_the_package_imports_nothing_heavy() -> None:
    heavy = ("dataclasses", "hashlib", "pytest_minidock.digest")
    code = f"import sys, pytest_minidock; print(sorted(m for m in sys.modules if m in {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
