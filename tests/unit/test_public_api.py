"""The package's small public facade: ``__all__`` sorted, complete and importable."""

from __future__ import annotations

import pytest_minidock


def test_all_is_sorted_and_importable() -> None:
    assert pytest_minidock.__all__ == sorted(pytest_minidock.__all__)
    for name in pytest_minidock.__all__:
        assert hasattr(pytest_minidock, name), name


def test_no_public_name_is_left_out() -> None:
    public = {n for n in vars(pytest_minidock) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(pytest_minidock, n)).__name__ == "module"}
    assert public - modules - {"annotations"} <= set(pytest_minidock.__all__)
