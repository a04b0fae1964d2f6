"""Platforms: ``os/arch[/variant]`` strings, the host's platform, and manifest-list selection.

Selection follows containerd's matcher: names are normalised first (``x86_64`` is ``amd64``,
``aarch64`` is ``arm64``, ``arm64/v8`` is ``arm64``, a bare ``arm`` is ``arm/v7``), an exact
match wins, and an ``arm`` host also runs older ``arm`` variants (v7 runs v6 and v5). Attestation
manifests (buildkit's provenance and SBOM entries, ``vnd.docker.reference.type:
attestation-manifest``, platform ``unknown/unknown``) are never chosen.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pytest_minidock._record import replace
from pytest_minidock.errors import UsageError
from pytest_minidock.image import mediatypes as mt
from pytest_minidock.image.model import Platform

if TYPE_CHECKING:
    from pytest_minidock.image.model import Descriptor, Index

__all__ = [
    "REFERENCE_TYPE",
    "available",
    "host_platform",
    "is_attestation",
    "normalize",
    "parse_platform",
    "select_manifest",
]

REFERENCE_TYPE = "vnd.docker.reference.type"
_ATTESTATION = "attestation-manifest"
_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "armhf": "arm",
    "armel": "arm",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
}
_ARCH_VARIANT = {"armhf": "v7", "armel": "v6", "armv7l": "v7", "armv6l": "v6"}


def normalize(platform: Platform) -> Platform:
    """The canonical spelling: lower-case, arch aliases resolved, default variants made explicit
    for ``arm`` (``v7``) and dropped for ``arm64`` (``v8``) and ``amd64`` (``v1``)."""
    os_name = platform.os.lower()
    raw_arch = platform.architecture.lower()
    arch = _ARCH_ALIASES.get(raw_arch, raw_arch)
    variant = platform.variant.lower() or _ARCH_VARIANT.get(raw_arch, "")
    if arch == "arm" and not variant:
        variant = "v7"
    elif (arch == "arm64" and variant == "v8") or (arch == "amd64" and variant == "v1"):
        variant = ""
    return replace(platform, os=os_name, architecture=arch, variant=variant)


def parse_platform(text: str) -> Platform:
    """``linux/amd64``, ``linux/arm/v7``, ``linux`` (the host's architecture) → ``Platform``."""
    parts = text.strip().split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise UsageError(
            f"invalid platform {text!r}: expected OS[/ARCH[/VARIANT]], e.g. linux/amd64"
        )
    host = host_platform()
    if len(parts) == 1:
        return normalize(Platform(os=parts[0], architecture=host.architecture))
    return normalize(
        Platform(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else "")
    )


def host_platform() -> Platform:
    """The platform this machine runs: ``linux/amd64`` on x86_64."""
    machine = os.uname().machine.lower()
    return normalize(
        Platform(os="linux", architecture=machine, variant=_ARCH_VARIANT.get(machine, ""))
    )


def is_attestation(desc: Descriptor) -> bool:
    """Whether an index entry is an attestation (provenance, SBOM) rather than an image."""
    if desc.annotations.get(REFERENCE_TYPE) == _ATTESTATION:
        return True
    return desc.platform is not None and desc.platform.os == "unknown"


def _candidates(index: Index) -> list[Descriptor]:
    return [
        d
        for d in index.manifests
        if not is_attestation(d) and (d.media_type in mt.MANIFEST_TYPES or not d.media_type)
    ]


def available(index: Index) -> list[str]:
    """The platforms an index offers, as ``os/arch[/variant]`` strings (attestations left out)."""
    return [str(normalize(d.platform)) for d in _candidates(index) if d.platform is not None]


def _variant_number(variant: str) -> int:
    return int(variant[1:]) if variant[:1] == "v" and variant[1:].isdigit() else -1


def select_manifest(index: Index, want: Platform) -> Descriptor | None:
    """The entry of ``index`` to run on ``want``, or None when it offers nothing that fits."""
    target = normalize(want)
    candidates = _candidates(index)
    with_platform = [(d, normalize(d.platform)) for d in candidates if d.platform is not None]
    for desc, plat in with_platform:
        if (plat.os, plat.architecture, plat.variant) == (
            target.os,
            target.architecture,
            target.variant,
        ):
            return desc
    wanted_level = _variant_number(target.variant)
    best: tuple[int, Descriptor] | None = None
    for desc, plat in with_platform:
        if (plat.os, plat.architecture) != (target.os, target.architecture):
            continue
        if target.architecture not in ("arm", "amd64"):
            continue
        level = _variant_number(plat.variant) if plat.variant else 1
        if target.architecture == "amd64" and not target.variant:
            continue  # a baseline amd64 host does not run v2/v3 builds
        if level <= max(wanted_level, 1) and (best is None or level > best[0]):
            best = (level, desc)
    if best is not None:
        return best[1]
    if len(candidates) == 1 and candidates[0].platform is None:
        return candidates[0]
    return None
