"""Registry mirrors, configured as users do (``MINIDOCK_REGISTRY_MIRRORS``, or the registries
config file with docker's ``registry-mirrors`` and our ``mirrors``), served by real registries.

The engines here read their hosts configuration from the environment, as the CLI does; their
transport refuses any host but this machine, so a test that went wrong cannot reach Docker Hub.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.api import Engine
from pytest_minidock.reference import Reference
from pytest_minidock.registry.policy import RegistryOptions, RetryPolicy
from tests.conftest import make_busybox_root
from tests.network.faults import FaultyTransport
from tests.support.registry import start_registry

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.support.registry import RegistryServer

pytestmark = pytest.mark.network


@pytest.fixture
def source(tmp_path: Path, busybox_rootfs: Path) -> Engine:
    return Engine(make_busybox_root(tmp_path / "root", busybox_rootfs))


@pytest.fixture
def second_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path / "second-registry")
    try:
        yield server
    finally:
        server.stop()


def puller(root: Path) -> tuple[Engine, FaultyTransport]:
    """An engine with the default hosts configuration (environment, then file)."""
    engine = Engine(root)
    transport = FaultyTransport()
    engine.registry_transport = transport
    engine.registry_options = RegistryOptions(timeout=10, retry=RetryPolicy(attempts=1))
    return engine, transport


def seed(source: Engine, registry: RegistryServer, path: str) -> None:
    ref = registry.ref(path)
    source.store.tag("busybox", Reference.parse(ref))
    source.push(ref)


def test_a_docker_hub_mirror_from_the_environment(
    source: Engine, registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(source, registry, "library/mirrored:1")
    monkeypatch.setenv("MINIDOCK_REGISTRY_MIRRORS", f"http://{registry.host}")
    engine, transport = puller(tmp_path / "pulled")
    result = engine.pull("mirrored:1")
    assert result.source == registry.host
    assert result.reference == Reference.parse("docker.io/library/mirrored:1")
    assert result.id == source.store.resolve("busybox").id
    assert engine.store.resolve("mirrored:1").id == result.id
    assert all(
        s.path == "/v2/" or s.path.startswith("/v2/library/mirrored/") for s in transport.sent
    )
    assert engine.store.check() == []


def test_mirrors_from_the_config_file_for_docker_hub_and_another_registry(
    source: Engine,
    registry: RegistryServer,
    second_registry: RegistryServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(source, registry, "library/from-file:1")
    seed(source, registry, "team/app:1")  # the mirror of the second registry holds this one
    seed(source, second_registry, "team/app:2")  # and only the registry itself has this one
    config = tmp_path / "registries.json"  # what the autouse fixture points the env at
    config.write_text(
        json.dumps(
            {
                "registry-mirrors": [f"http://{registry.host}"],
                "mirrors": {second_registry.host: [f"http://{registry.host}"]},
            }
        )
    )
    engine, _ = puller(tmp_path / "pulled")
    assert engine.pull("from-file:1").source == registry.host
    mirrored = engine.pull(second_registry.ref("team/app:1"))
    assert mirrored.source == registry.host
    assert mirrored.reference == Reference.parse(second_registry.ref("team/app:1"))
    # a tag the mirror lacks: 404 there, then the registry itself answers
    direct = engine.pull(second_registry.ref("team/app:2"))
    assert direct.source == second_registry.host
    assert engine.store.check() == []


def test_a_loopback_registry_speaking_tls_is_found_over_https(
    source: Engine, tls_registry: RegistryServer, tmp_path: Path
) -> None:
    # loopback registries are asked over plain HTTP first; distribution's TLS server answers
    # that with a 400 ("Client sent an HTTP request to an HTTPS server"), and HTTPS follows
    seed(source, tls_registry, "secure/busybox:1")
    engine, transport = puller(tmp_path / "pulled")
    result = engine.pull(tls_registry.ref("secure/busybox:1"))
    assert result.id == source.store.resolve("busybox").id
    schemes = [s.scheme for s in transport.sent]
    assert schemes[0] == "http"
    assert transport.sent[0].status == 400
    assert set(schemes[1:]) == {"https"}
    assert engine.store.check() == []
