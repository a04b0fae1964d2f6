"""Shared fixtures and the rule that a test's missing capability fails in CI instead of skipping."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.rootfs import busybox_tar

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pytest_minidock.store.store import Store

pytest_plugins = ["pytester"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOTLESS_STAGE = os.environ.get("MINIDOCK_TEST_ROOTLESS") == "1"
"""Set by ``./dev rootless``: the ``rootless`` tests run as an ordinary user, whose user namespace
gives the privileges that ``privileged`` and ``netns`` mean."""


ROOTLESS = os.geteuid() != 0
"""Whether the tests run as an ordinary user (the rootless stage): a few assertions differ."""


def root_only(reason: str) -> pytest.MarkDecorator:
    """Mark one test of a ``rootless`` module as needing real root after all (the rootless
    stage leaves it out); ``reason`` says why."""
    return pytest.mark.rootless(False, reason=reason)


def _root_only(item: pytest.Item) -> str | None:
    """Why ``item`` needs real root, if it is not marked ``rootless`` or ``root_only``."""
    marker = item.get_closest_marker("rootless")
    if marker is None:
        return "not marked 'rootless'"
    if marker.args[:1] == (False,):
        return str(marker.kwargs.get("reason", "marked root_only"))
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The rootless stage runs the tests marked ``rootless`` only, without the ``root_only``
    ones among them (``-m rootless`` selects those too)."""
    if not ROOTLESS_STAGE:
        return
    kept = [item for item in items if _root_only(item) is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if _root_only(i) is not None])
        items[:] = kept


def _missing_capability(item: pytest.Item) -> str | None:
    if ROOTLESS_STAGE:
        if os.geteuid() == 0:
            return "the rootless stage must run as an ordinary user, not root"
        root_only_reason = _root_only(item)
        if root_only_reason is not None:
            return f"needs real root: {root_only_reason}"
        from pytest_minidock.runtime.userns import unavailable_reason

        reason = unavailable_reason()
        return None if reason is None else f"rootless: {reason}"
    if item.get_closest_marker("privileged") and os.geteuid() != 0:
        return "needs root (marker 'privileged')"
    if item.get_closest_marker("netns") and os.geteuid() != 0:
        return "needs root to create network namespaces (marker 'netns')"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = _missing_capability(item)
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason}: CI must provide it", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The path of a command-line tool the test needs; in CI its absence fails the test."""
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"needs {name!r} on PATH (./dev installs it)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def debian_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``debian:bookworm`` minbase rootfs tar made with debootstrap (slow: only on demand)."""
    from tests.support.rootfs import debian_tar

    require_tool("debootstrap")
    work = tmp_path_factory.mktemp("debootstrap")
    return debian_tar(work.parent / "debian.tar", work / "root")


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs tar made from Debian's busybox-static (once per session)."""
    return busybox_tar(tmp_path_factory.mktemp("rootfs") / "busybox.tar")


ROOTS: list[Path] = []
"""Every root ``make_busybox_root`` made this session: their networks go at its end."""


@pytest.fixture(scope="session", autouse=True)
def _networks_of_test_roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Remove the bridges, veths and nftables tables that containers of the test roots made
    (a root's ``bridge`` network lives on after its containers, as docker's does): the roots
    ``make_busybox_root`` made, and any other root under this session's temporary directory."""
    yield
    state_files = ("state.0", "state.1", "state.json")  # (state.json: older versions)
    roots = [r for r in ROOTS if any((r / "networks" / f).is_file() for f in state_files)]
    for top, dirs, files in os.walk(tmp_path_factory.getbasetemp()):
        if os.path.basename(top) == "networks" and any(f in files for f in state_files):
            roots.append(Path(top).parent)
            dirs.clear()
    if roots:
        from pytest_minidock.errors import MinidockError
        from pytest_minidock.runtime.network import Networks

        for root in dict.fromkeys(roots):
            with contextlib.suppress(MinidockError):  # e.g. a state a test corrupted on purpose
                Networks(root).destroy()


def make_busybox_root(root: Path, rootfs: Path) -> Path:
    """Make ``root`` a store holding ``busybox:latest`` (``CMD ["sh"]``) from ``rootfs``."""
    ROOTS.append(root)
    from pytest_minidock.image.changes import apply_changes
    from pytest_minidock.image.model import ContainerConfig
    from pytest_minidock.reference import Reference
    from pytest_minidock.store.store import Store
    from tests.support.rootfs import BUSYBOX_CHANGES

    with open(rootfs, "rb") as f:
        Store(root).import_tarball(
            f,
            [Reference.parse("busybox:latest")],
            source=str(rootfs),
            changes=apply_changes(ContainerConfig(), BUSYBOX_CHANGES),
        )
    return root


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """An empty store in a temporary directory."""
    from pytest_minidock.store.store import Store

    return Store(tmp_path / "store")


def pytest_unconfigure(config: pytest.Config) -> None:
    """The tests use the library in this process too (engines, networks): close its nf_tables
    socket, as the plugin's session end does, rather than leave it to the exit (a
    ``ResourceWarning``, an error under ``filterwarnings = error``)."""
    import sys

    nftables = sys.modules.get("pytest_minidock.runtime.nftables")
    if nftables is not None:
        nftables.close()
