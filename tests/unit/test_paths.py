"""Where the store lives by default."""

from __future__ import annotations

from pathlib import Path

from pytest_minidock.store.paths import default_root


def test_env_var_wins() -> None:
    assert default_root({"MINIDOCK_ROOT": "/x"}, euid=0) == Path("/x")


def test_root_uses_var_lib() -> None:
    assert default_root({}, euid=0) == Path("/var/lib/minidock")


def test_users_use_xdg_data_home() -> None:
    assert default_root({"XDG_DATA_HOME": "/d", "HOME": "/h"}, euid=1000) == Path("/d/minidock")
    assert default_root({"HOME": "/h"}, euid=1000) == Path("/h/.local/share/minidock")
