"""The pytest plugin (``pytest11`` entry point ``minidock``): options, ini keys and fixtures.

Thin by design: it registers what pytest needs and imports the library lazily, so that merely having
pytest-minidock installed costs a test session next to nothing. Disable it with ``-p no:minidock``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_minidock.store.store import Store


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("minidock", "containers for tests (pytest-minidock)")
    group.addoption(
        "--minidock-root",
        dest="minidock_root",
        default=None,
        metavar="DIR",
        help="store root for images and containers (default: ini minidock_root, "
        "$MINIDOCK_ROOT, /var/lib/minidock for root, ~/.local/share/minidock otherwise)",
    )
    parser.addini("minidock_root", "store root for images and containers", default="")


def store_root(config: pytest.Config) -> str | None:
    """The store root chosen by option, then ini, else None (the library's default)."""
    option: str | None = config.getoption("minidock_root")
    if option:
        return option
    ini = str(config.getini("minidock_root") or "")
    return ini or None


@pytest.fixture(scope="session")
def minidock_store(pytestconfig: pytest.Config) -> Store:
    """The local image store of this session.

    Name: ``minidock_store`` · Scope: session · Depends: nothing.
    Creates the store layout under the configured root if missing; removes nothing.
    """
    from pytest_minidock.store.store import Store

    return Store(store_root(pytestconfig))
