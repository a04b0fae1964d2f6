"""Platform strings, normalisation and manifest-list selection (attestations skipped)."""

from __future__ import annotations

import pytest

from pytest_minidock.digest import Digest
from pytest_minidock.errors import UsageError
from pytest_minidock.image import mediatypes as mt
from pytest_minidock.image.model import Descriptor, Index, Platform
from pytest_minidock.registry.platforms import (
    available,
    host_platform,
    is_attestation,
    normalize,
    parse_platform,
    select_manifest,
)


def entry(n: int, platform: str | None, **annotations: str) -> Descriptor:
    plat = None
    if platform is not None:
        parts = platform.split("/")
        plat = Platform(parts[0], parts[1], parts[2] if len(parts) > 2 else "")
    return Descriptor(
        mt.OCI_MANIFEST, Digest("sha256", f"{n:064x}"), 500 + n, annotations, platform=plat
    )


def index(*entries: Descriptor) -> Index:
    return Index(manifests=entries)


ATTESTATION = entry(
    9,
    "unknown/unknown",
    **{
        "vnd.docker.reference.type": "attestation-manifest",
        "vnd.docker.reference.digest": "sha256:" + "1" * 64,
    },
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/arm64/v8", Platform("linux", "arm64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("linux/amd64/v1", Platform("linux", "amd64")),
    ],
)
def test_parse_platform(text: str, expected: Platform) -> None:
    assert parse_platform(text) == expected


def test_parse_platform_with_only_an_os_uses_this_machine_s_architecture() -> None:
    assert parse_platform("linux") == Platform("linux", host_platform().architecture)


@pytest.mark.parametrize("text", ["", "linux/", "/amd64", "a/b/c/d", "linux//v7"])
def test_bad_platforms_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="invalid platform"):
        parse_platform(text)


def test_host_platform_is_normalised() -> None:
    host = host_platform()
    assert host == normalize(host)
    assert host.os == "linux"


def test_attestations_are_recognised_and_never_chosen() -> None:
    assert is_attestation(ATTESTATION)
    assert is_attestation(entry(8, "unknown/unknown"))
    assert not is_attestation(entry(1, "linux/amd64"))
    idx = index(ATTESTATION, entry(2, "linux/arm64"), entry(1, "linux/amd64"))
    assert select_manifest(idx, Platform("linux", "amd64")) == idx.manifests[2]
    assert available(idx) == ["linux/arm64", "linux/amd64"]
    only_attestation = index(ATTESTATION)
    assert select_manifest(only_attestation, Platform("linux", "amd64")) is None


def test_exact_match_wins_and_variants_are_normalised() -> None:
    idx = index(
        entry(1, "linux/amd64"),
        entry(2, "linux/arm64/v8"),
        entry(3, "linux/arm/v6"),
        entry(4, "linux/arm/v7"),
        entry(5, "linux/s390x"),
    )
    assert select_manifest(idx, Platform("linux", "arm64")) == idx.manifests[1]
    assert select_manifest(idx, parse_platform("linux/aarch64")) == idx.manifests[1]
    assert select_manifest(idx, Platform("linux", "arm", "v7")) == idx.manifests[3]
    assert select_manifest(idx, Platform("linux", "arm")) == idx.manifests[3]
    assert select_manifest(idx, Platform("linux", "arm", "v6")) == idx.manifests[2]
    assert select_manifest(idx, Platform("linux", "s390x")) == idx.manifests[4]
    assert select_manifest(idx, Platform("windows", "amd64")) is None


def test_an_arm_host_runs_older_arm_variants_but_not_newer_ones() -> None:
    idx = index(entry(1, "linux/arm/v5"), entry(2, "linux/arm/v6"))
    assert select_manifest(idx, Platform("linux", "arm", "v7")) == idx.manifests[1]
    assert select_manifest(idx, Platform("linux", "arm", "v5")) == idx.manifests[0]
    newer = index(entry(3, "linux/arm/v8"))
    assert select_manifest(newer, Platform("linux", "arm", "v7")) is None


def test_amd64_micro_architecture_levels() -> None:
    idx = index(entry(1, "linux/amd64/v3"), entry(2, "linux/amd64/v2"))
    assert select_manifest(idx, Platform("linux", "amd64")) is None  # a baseline host
    assert select_manifest(idx, Platform("linux", "amd64", "v2")) == idx.manifests[1]
    assert select_manifest(idx, Platform("linux", "amd64", "v4")) == idx.manifests[0]


def test_a_single_entry_without_platform_is_taken() -> None:
    idx = index(entry(1, None))
    assert select_manifest(idx, Platform("linux", "amd64")) == idx.manifests[0]
    two = index(entry(1, None), entry(2, None))
    assert select_manifest(two, Platform("linux", "amd64")) is None
