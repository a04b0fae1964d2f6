"""Where the store (and a user's runtime state) lives by default: one per user."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_minidock.store.paths import default_root, default_run_dir

if TYPE_CHECKING:
    import pytest


def test_env_var_wins() -> None:
    assert default_root({"MINIDOCK_ROOT": "/x"}, euid=0) == Path("/x")


def test_root_uses_var_lib() -> None:
    assert default_root({}, euid=0) == Path("/var/lib/minidock")


def test_users_use_xdg_data_home() -> None:
    assert default_root({"XDG_DATA_HOME": "/d", "HOME": "/h"}, euid=1000) == Path("/d/minidock")
    assert default_root({"HOME": "/h"}, euid=1000) == Path("/h/.local/share/minidock")


def test_root_of_a_user_namespace_keeps_the_users_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rootless processes are uid 0 in their user namespace: still the user's store."""
    from pytest_minidock import capabilities

    monkeypatch.setitem(capabilities._facts, "/proc/self/uid_map", False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    env = {"HOME": "/home/alice"}
    assert default_root(env) == Path("/home/alice/.local/share/minidock")


def test_a_relative_xdg_data_home_is_ignored() -> None:
    env = {"XDG_DATA_HOME": "rel", "HOME": "/h"}
    assert default_root(env, euid=1000) == Path("/h/.local/share/minidock")


def test_two_users_never_share_a_store() -> None:
    alice = default_root({"HOME": "/home/alice"}, euid=1000)
    bob = default_root({"HOME": "/home/bob"}, euid=1001)
    assert alice != bob != default_root({}, euid=0)


def test_runtime_state_goes_to_the_users_runtime_dir() -> None:
    assert default_run_dir({}, uid=0) == Path("/run/minidock")
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert default_run_dir(env, uid=1000) == Path("/run/user/1000/minidock")
    assert default_run_dir({}, uid=1000) == Path("/tmp/minidock-1000")
    assert default_run_dir({"XDG_RUNTIME_DIR": "rel"}, uid=7) == Path("/tmp/minidock-7")
