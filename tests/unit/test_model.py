"""OCI / Docker image JSON: parsing both families, canonical output, clear errors."""

from __future__ import annotations

import json

import pytest

from pytest_minidock.digest import sha256_bytes
from pytest_minidock.errors import ImageError
from pytest_minidock.image import mediatypes as mt
from pytest_minidock.image.changes import apply_changes
from pytest_minidock.image.model import (
    ContainerConfig,
    Descriptor,
    Healthcheck,
    ImageConfig,
    Index,
    Manifest,
    Platform,
)

D1 = sha256_bytes(b"1")
D2 = sha256_bytes(b"2")

DOCKER_MANIFEST = {
    "schemaVersion": 2,
    "mediaType": mt.DOCKER_MANIFEST,
    "config": {"mediaType": mt.DOCKER_CONFIG, "size": 7023, "digest": str(D1)},
    "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP, "size": 32654, "digest": str(D2)}],
}


def test_docker_v2_schema2_manifest_is_read() -> None:
    m = Manifest.from_json(json.dumps(DOCKER_MANIFEST).encode())
    assert m.media_type == mt.DOCKER_MANIFEST
    assert m.config.digest == D1
    assert m.layers[0].size == 32654
    assert Manifest.from_json(m.to_json()) == m


def test_manifest_json_is_canonical() -> None:
    m = Manifest(Descriptor(mt.OCI_CONFIG, D1, 2), (Descriptor(mt.OCI_LAYER_GZIP, D2, 3),))
    raw = m.to_json()
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    assert Manifest.from_json(raw).to_json() == raw


def test_index_with_platforms() -> None:
    idx = Index(
        (
            Descriptor(mt.OCI_MANIFEST, D1, 10, platform=Platform("linux", "arm64", "v8")),
            Descriptor(mt.OCI_MANIFEST, D2, 11, platform=Platform("linux", "amd64")),
        )
    )
    back = Index.from_json(idx.to_json())
    assert back == idx
    assert str(back.manifests[0].platform) == "linux/arm64/v8"


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"schemaVersion": 1}', "unsupported schemaVersion 1"),
        (json.dumps({**DOCKER_MANIFEST, "layers": {}}).encode(), "'layers' must be a list"),
        (
            json.dumps({**DOCKER_MANIFEST, "config": {"mediaType": "x", "size": 1}}).encode(),
            "missing 'digest'",
        ),
        (
            json.dumps(
                {**DOCKER_MANIFEST, "config": {"mediaType": "x", "size": -1, "digest": str(D1)}}
            ).encode(),
            "negative size",
        ),
        (
            json.dumps(
                {**DOCKER_MANIFEST, "config": {"mediaType": "x", "size": 1, "digest": "md5:1"}}
            ).encode(),
            "invalid digest",
        ),
    ],
)
def test_malformed_manifests_are_named(doc: bytes, fragment: str) -> None:
    with pytest.raises(ImageError, match=fragment) as info:
        Manifest.from_json(doc, "manifest of busybox:latest")
    assert "manifest of busybox:latest" in str(info.value)


def test_config_round_trip_keeps_unknown_fields() -> None:
    raw = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "container_config": {"Hostname": "abc"},
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": ["sh"],
            "ExposedPorts": {"80/tcp": {}},
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1000000000},
            "Hostname": "",
        },
        "rootfs": {"type": "layers", "diff_ids": [str(D1)]},
        "history": [{"created_by": "x", "empty_layer": True}],
    }
    cfg = ImageConfig.from_json(json.dumps(raw).encode())
    assert cfg.config.cmd == ("sh",)
    assert cfg.config.exposed_ports == ("80/tcp",)
    assert cfg.config.healthcheck == Healthcheck(("CMD", "true"), interval=1_000_000_000)
    assert cfg.history[0].empty_layer
    again = json.loads(cfg.to_json())
    assert again["container_config"] == {"Hostname": "abc"}
    assert again["config"]["Hostname"] == ""
    assert ImageConfig.from_json(cfg.to_json()) == cfg


def test_config_without_layers_rootfs_is_refused() -> None:
    with pytest.raises(ImageError, match="rootfs"):
        ImageConfig.from_json(b'{"architecture":"amd64","os":"linux"}', "config x")


def test_import_changes() -> None:
    cfg = apply_changes(
        ContainerConfig(),
        [
            'CMD ["sh"]',
            "ENV A=1 B=two",
            "EXPOSE 80 53/udp",
            "WORKDIR /srv",
            "USER nobody",
            "ENTRYPOINT echo hi",
            'LABEL a="b c"',
            "STOPSIGNAL SIGINT",
            "VOLUME /data",
        ],
    )
    assert cfg.cmd == ("sh",)
    assert cfg.env == ("A=1", "B=two")
    assert cfg.exposed_ports == ("53/udp", "80/tcp")
    assert cfg.entrypoint == ("/bin/sh", "-c", "echo hi")
    assert cfg.labels == {"a": "b c"}
    assert (cfg.working_dir, cfg.user, cfg.stop_signal, cfg.volumes) == (
        "/srv",
        "nobody",
        "SIGINT",
        ("/data",),
    )


def test_import_change_refuses_run() -> None:
    from pytest_minidock.errors import UsageError

    with pytest.raises(UsageError, match="RUN is not allowed"):
        apply_changes(ContainerConfig(), ["RUN true"])
