"""``Engine.ensure_image`` and ``Engine.pull`` over a fake transport: pull policies, platform
selection through an index, verification, and nothing partial left in the store."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.api import Engine
from pytest_minidock.errors import (
    ImageNotFound,
    RegistryBadContent,
    RegistryNotFound,
    UsageError,
)
from pytest_minidock.image import mediatypes as mt
from pytest_minidock.reference import Reference
from pytest_minidock.registry.policy import RegistryOptions, RetryPolicy
from tests.network.fake_registry import TinyImage, sha256, tiny_image
from tests.unit.test_registry_session import FakeResponse

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from pytest_minidock.registry.transport import Body

HOST = "reg.example"
Canned = tuple[int, bytes, dict[str, str]]


class RoutedTransport:
    """Answers by URL path from a table (thread-safe: pulls download on a pool)."""

    def __init__(self, routes: dict[str, Canned | bytes]) -> None:
        self.routes = routes
        self.paths: list[str] = []
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body = None,
        *,
        verify_tls: bool = True,
    ) -> FakeResponse:
        path = url.split(HOST, 1)[1]
        with self._lock:
            self.paths.append(f"{method} {path}")
        found = self.routes.get(path)
        if found is None:
            return FakeResponse(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
        if isinstance(found, bytes):
            return FakeResponse(200, found)
        status, data, headers = found
        return FakeResponse(status, data, headers)

    def close(self) -> None:
        return None


def routes_for(repo: str, tag: str, image: TinyImage) -> dict[str, Canned | bytes]:
    headers = {"Content-Type": image.media_type, "Docker-Content-Digest": image.digest}
    return {
        f"/v2/{repo}/manifests/{tag}": (200, image.manifest, headers),
        f"/v2/{repo}/manifests/{image.digest}": (200, image.manifest, headers),
        f"/v2/{repo}/blobs/{image.config_digest}": image.config,
        f"/v2/{repo}/blobs/{image.layer_digest}": image.layer,
    }


def engine_with(tmp_path: Path, transport: RoutedTransport) -> Engine:
    engine = Engine(tmp_path / "root")
    engine.registry_transport = transport
    engine.registry_options = RegistryOptions(timeout=2.0, retry=RetryPolicy(attempts=1))
    engine.credentials = lambda registry: None
    return engine


@pytest.fixture(autouse=True)
def no_user_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("MINIDOCK_REGISTRIES_CONFIG", str(tmp_path / "none.json"))
    monkeypatch.delenv("MINIDOCK_REGISTRY_MIRRORS", raising=False)


def test_ensure_image_pulls_what_is_missing_once(tmp_path: Path) -> None:
    image = tiny_image()
    transport = RoutedTransport(routes_for("team/app", "1", image))
    engine = engine_with(tmp_path, transport)
    record = engine.ensure_image(f"{HOST}/team/app:1")
    assert str(record.id) == image.config_digest
    assert record.names == (Reference.parse(f"{HOST}/team/app:1"),)
    assert str(record.manifest.digest) == image.digest
    assert sorted(transport.paths) == sorted(
        [
            "GET /v2/team/app/manifests/1",
            f"GET /v2/team/app/blobs/{image.config_digest}",
            f"GET /v2/team/app/blobs/{image.layer_digest}",
        ]
    )
    transport.paths.clear()
    assert engine.ensure_image(f"{HOST}/team/app:1") == record  # "missing": now it is there
    assert engine.ensure_image(f"{HOST}/team/app:1", "never") == record
    assert transport.paths == []
    assert engine.ensure_image(f"{HOST}/team/app:1", "always").id == record.id
    assert transport.paths == ["GET /v2/team/app/manifests/1"]  # blobs are already there
    assert engine.store.check() == []


def test_ensure_image_policies(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, RoutedTransport({}))
    with pytest.raises(UsageError, match="invalid pull policy 'sometimes'"):
        engine.ensure_image("x", "sometimes")
    with pytest.raises(ImageNotFound, match="the pull policy is 'never'"):
        engine.ensure_image(f"{HOST}/team/app:1", "never")
    with pytest.raises(ImageNotFound, match="no such image"):
        engine.ensure_image("sha256:" + "0" * 64, "always")  # IDs are never pulled
    with pytest.raises(RegistryNotFound, match=f"not found on {HOST}"):
        engine.ensure_image(f"{HOST}/team/app:1")


def test_pull_by_digest_names_the_image_by_digest(tmp_path: Path) -> None:
    image = tiny_image(docker=True)
    transport = RoutedTransport(routes_for("team/app", "1", image))
    engine = engine_with(tmp_path, transport)
    ref = f"{HOST}/team/app@{image.digest}"
    result = engine.pull(ref)
    assert str(result.reference) == ref
    assert result.record.manifest.media_type == mt.DOCKER_MANIFEST
    assert result.downloaded == 2
    assert engine.ensure_image(ref, "never") == result.record
    assert engine.store.resolve(ref).id == result.id


def index_routes(images: dict[str, TinyImage], attestation: bytes) -> dict[str, object]:
    manifests = []
    routes: dict[str, Canned | bytes] = {}
    for platform, image in images.items():
        os_name, arch = platform.split("/")
        manifests.append(
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": len(image.manifest),
                "platform": {"os": os_name, "architecture": arch},
            }
        )
        routes.update(routes_for("multi", "unused", image))
    manifests.append(
        {
            "mediaType": mt.OCI_MANIFEST,
            "digest": sha256(attestation),
            "size": len(attestation),
            "platform": {"os": "unknown", "architecture": "unknown"},
            "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
        }
    )
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
    ).encode()
    routes["/v2/multi/manifests/latest"] = (200, index, {"Content-Type": mt.OCI_INDEX})
    return {"routes": routes, "index": index}


def test_an_index_yields_this_platform_s_image_and_never_the_attestation(tmp_path: Path) -> None:
    amd = tiny_image(b"amd64\n")
    arm = tiny_image(b"arm64\n", arch="arm64")
    built = index_routes({"linux/arm64": arm, "linux/amd64": amd}, b"not an image")
    transport = RoutedTransport(built["routes"])  # type: ignore[arg-type]
    engine = engine_with(tmp_path, transport)
    result = engine.pull(f"{HOST}/multi", platform="linux/amd64")
    assert str(result.digest) == amd.digest
    assert result.index_digest is not None
    assert str(result.index_digest) == sha256(built["index"])  # type: ignore[arg-type]
    assert str(result.reference) == f"{HOST}/multi:latest"
    arm_result = engine.pull(f"{HOST}/multi:latest", platform="linux/arm64/v8")
    assert str(arm_result.id) == arm.config_digest
    assert all("attestation" not in p and sha256(b"not an image") not in p for p in transport.paths)
    with pytest.raises(RegistryNotFound, match="no manifest for linux/s390x") as info:
        engine.pull(f"{HOST}/multi", platform="linux/s390x")
    assert "linux/arm64, linux/amd64" in str(info.value)


def test_a_single_platform_image_of_another_platform_is_refused_when_asked(
    tmp_path: Path,
) -> None:
    arm = tiny_image(arch="arm64")
    engine = engine_with(tmp_path, RoutedTransport(routes_for("team/app", "1", arm)))
    with pytest.raises(RegistryNotFound, match="no manifest for linux/amd64"):
        engine.pull(f"{HOST}/team/app:1", platform="linux/amd64")
    assert engine.store.images() == []
    engine.pull(f"{HOST}/team/app:1")  # no platform asked: taken as it is


def test_a_corrupt_layer_leaves_no_name_and_no_partial_blob(tmp_path: Path) -> None:
    image = tiny_image()
    routes = routes_for("team/app", "1", image)
    bad = bytearray(image.layer)
    bad[-5] ^= 0xFF
    routes[f"/v2/team/app/blobs/{image.layer_digest}"] = bytes(bad)
    engine = engine_with(tmp_path, RoutedTransport(routes))
    with pytest.raises(RegistryBadContent) as info:
        engine.pull(f"{HOST}/team/app:1")
    text = str(info.value)
    assert f"cannot download layer {image.layer_digest} of {HOST}/team/app:1" in text
    assert f"not {image.layer_digest}" in text
    assert engine.store.images() == []
    assert not engine.store.blobs.exists(
        Reference.parse(f"{HOST}/x@{image.layer_digest}").digest  # type: ignore[arg-type]
    )
    assert list((engine.root / "tmp").iterdir()) == []


def test_a_manifest_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    image = tiny_image()
    other = tiny_image(b"something else\n")
    routes = routes_for("team/app", "1", image)
    routes[f"/v2/team/app/manifests/{image.digest}"] = (
        200,
        other.manifest,
        {"Content-Type": mt.OCI_MANIFEST},
    )
    routes["/v2/team/app/manifests/2"] = (
        200,
        other.manifest,
        {"Content-Type": mt.OCI_MANIFEST, "Docker-Content-Digest": image.digest},
    )
    engine = engine_with(tmp_path, RoutedTransport(routes))
    for ref in (f"{HOST}/team/app@{image.digest}", f"{HOST}/team/app:2"):
        with pytest.raises(RegistryBadContent, match=f"hashes to {other.digest}, not"):
            engine.pull(ref)
    assert engine.store.images() == []
    assert list(engine.store.blobs) == []
