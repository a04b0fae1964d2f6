"""Acceptance tests of the pytest plugin: each writes a small conftest and tests, runs them in an
inner pytest session (in-process or a subprocess) against a store holding busybox images, and
checks what the inner session reported and what it left on disk."""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

# Loaded once: in-process inner runs share their classes. A module first imported by an inner
# run is dropped after it (pytester restores sys.modules): the rootless holder's connection
# (``holder._Client``) of that copy with it, unclosed, a ResourceWarning that fails whichever
# later test the garbage collector finds it in.
import pytest_minidock.fixtures
import pytest_minidock.runtime.holder
import pytest_minidock.runtime.network  # noqa: F401
from pytest_minidock.api import Engine
from pytest_minidock.errors import MinidockError
from pytest_minidock.image.changes import apply_changes
from pytest_minidock.image.model import Healthcheck
from pytest_minidock.reference import Reference
from tests.conftest import make_busybox_root

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# The inner sessions do not need hypothesis, whose plugin costs ~1 s per session here.
INNER = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider")

HTTPD = (
    "mkdir -p /www && echo hello > /www/index.html && echo ok > /www/health && "
    "exec httpd -f -p 8080 -h /www"
)
"""A shell command serving ``/`` (hello) and ``/health`` (ok) on port 8080."""


def _derive(engine: Engine, name: str, changes: list[str], **config: object) -> None:
    """Commit ``busybox`` again as ``name`` with ``--change`` lines and config fields."""
    image = engine.store.image("busybox")
    config_ = image.config()
    cc = apply_changes(config_.config, changes)
    if config:
        cc = replace(cc, **config)  # type: ignore[arg-type]
    manifest = image.manifest()
    engine.store.commit_layers(
        replace(config_, config=cc), list(manifest.layers), [Reference.parse(name)]
    )


@pytest.fixture(scope="session")
def plugin_root(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Path:
    """A store with ``busybox``, ``web:1`` (EXPOSE 8080, serves after 0.3 s) and ``health:1``
    and ``health:0`` (a HEALTHCHECK that passes once ``/tmp/healthy`` exists, made after 0.3 s;
    checked every 50 ms, three failures in a row are fatal: after a 5 s start period for
    ``health:1``, at once for ``health:0``)."""
    root = make_busybox_root(tmp_path_factory.mktemp("plugin-root"), busybox_rootfs)
    engine = Engine(root)
    _derive(engine, "web:1", ["EXPOSE 8080", f'CMD ["sh", "-c", "sleep 0.3; {HTTPD}"]'])
    check = Healthcheck(test=("CMD-SHELL", "test -f /tmp/healthy"), interval=50_000_000, retries=3)
    start = 'CMD ["sh", "-c", "sleep 0.3; touch /tmp/healthy; exec sleep 600"]'
    _derive(
        engine,
        "health:1",
        [start],
        healthcheck=replace(check, start_period=5_000_000_000, start_interval=50_000_000),
    )
    _derive(engine, "health:0", [start], healthcheck=check)
    return root


def networks(root: Path) -> set[str]:
    """The user-defined networks of a store root."""
    from pytest_minidock.runtime.network import PREDEFINED, Networks

    return {n.name for n in Networks(root).list()} - set(PREDEFINED)


@pytest.fixture
def engine(plugin_root: Path) -> Iterator[Engine]:
    """The store's engine; the test fails if it leaves a container or a network behind (and
    removes them)."""
    eng = Engine(plugin_root)
    before = {r.id for r in eng.runtime.state.all()}
    nets_before = networks(plugin_root)
    yield eng
    left = [r for r in eng.runtime.state.all() if r.id not in before]
    for record in left:
        with contextlib.suppress(MinidockError):
            eng.remove(record.id, force=True)
    nets_left = networks(plugin_root) - nets_before
    for net in nets_left:
        with contextlib.suppress(MinidockError):
            eng.network_remove(net, force=True)
    assert not [f"{r.name} ({r.state.status})" for r in left], "containers left behind"
    assert not nets_left, "networks left behind"


def inner_args(root: Path, *args: str) -> list[str]:
    return [*INNER, f"--minidock-root={root}", *args]


def running(engine: Engine, cid: str) -> bool:
    try:
        return engine.container(cid).state.running()
    except MinidockError:
        return False


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def remove(engine: Engine, *cids: str) -> None:
    """Remove kept containers, then the networks they kept (kept networks survive too)."""
    nets = set()
    for cid in cids:
        with contextlib.suppress(MinidockError):
            nets.add(engine.container(cid).config["Spec"]["network"])
            engine.remove(cid, force=True)
    for net in nets - {"default", "bridge", "none", "host"}:
        with contextlib.suppress(MinidockError):
            engine.network_remove(net)
