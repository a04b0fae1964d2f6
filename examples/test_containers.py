"""Example: a real service in a container, from a test, through the library (the pytest fixtures
of the plugin will wrap exactly this). Needs root until rootless mode lands."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.api import Engine
from pytest_minidock.spec import Overrides

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pytest_minidock.store.store import Store

if os.geteuid() != 0:
    pytest.fail("the container examples need root for now: run them with sudo", pytrace=False)


@pytest.fixture
def web(minidock_store: Store, busybox_image: str) -> Iterator[tuple[Engine, str]]:
    """A busybox httpd serving one page; removed after the test, whatever happens."""
    engine = Engine(minidock_store.root)
    started = engine.run(
        busybox_image,
        Overrides(
            command=(
                "sh",
                "-c",
                "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www",
            ),
            init=True,
        ),
    )
    try:
        yield engine, started.id
    finally:
        engine.remove(started.id, force=True)


def test_the_service_answers_inside_its_container(web: tuple[Engine, str]) -> None:
    engine, cid = web
    deadline = time.monotonic() + 5
    while True:
        result = engine.exec(cid, ["wget", "-qO-", "http://127.0.0.1:8080/"], capture=True)
        if result.exit_code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert result.stdout == b"hello\n"


def test_a_crashing_command_reports_its_exit_code(
    minidock_store: Store, busybox_image: str
) -> None:
    engine = Engine(minidock_store.root)
    started = engine.run(busybox_image, Overrides(command=("sh", "-c", "echo oops >&2; exit 3")))
    assert engine.wait(started.id, timeout=10) == 3
    engine.remove(started.id)
