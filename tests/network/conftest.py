"""Registry tests: the real registry fixtures, and an environment that ignores the user's own
docker logins, mirrors and registry settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support.registry import basic_registry, registry, tls_registry, token_registry

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["basic_registry", "registry", "tls_registry", "token_registry"]

_ENV = (
    "MINIDOCK_REGISTRY_MIRRORS",
    "MINIDOCK_INSECURE_REGISTRIES",
    "MINIDOCK_REGISTRY_TIMEOUT",
)


@pytest.fixture(autouse=True)
def isolated_registry_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``DOCKER_CONFIG`` and the registries config point into ``tmp_path``; returns the
    docker config directory (empty until a test logs in)."""
    docker_config = tmp_path / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    monkeypatch.setenv("MINIDOCK_REGISTRIES_CONFIG", str(tmp_path / "registries.json"))
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    return docker_config
