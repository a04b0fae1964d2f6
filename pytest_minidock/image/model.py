"""OCI image objects as frozen values: descriptors, manifests, indexes and image configs.

Each type parses from JSON bytes (``from_json``, translating every malformation into an
``ImageError`` naming what was being read) and serialises canonically (``to_json``: sorted keys, no
insignificant white space) so that the same value always hashes to the same digest. Fields we do not
model are kept in ``extra`` and written back, so a foreign config survives an edit.
"""

from __future__ import annotations

import json

from pytest_minidock._record import dataclass, field, replace
from pytest_minidock.digest import Digest
from pytest_minidock.errors import ImageError, InvalidDigest
from pytest_minidock.image import mediatypes as mt

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "ContainerConfig",
    "Descriptor",
    "Healthcheck",
    "History",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "canonical_json",
    "parse_json_object",
]

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` with sorted keys and no insignificant white space (UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse ``data`` as a JSON object, raising ``ImageError`` that names ``what``."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{what}: not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ImageError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _str(obj: dict[str, Any], key: str, what: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        if value is None and default is None:
            raise ImageError(f"{what}: missing {key!r}")
        raise ImageError(f"{what}: {key!r} must be a string")
    return value


def _int(obj: dict[str, Any], key: str, what: str, default: int | None = None) -> int:
    value = obj.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        if value is None:
            raise ImageError(f"{what}: missing {key!r}")
        raise ImageError(f"{what}: {key!r} must be an integer")
    return value


def _digest(obj: dict[str, Any], key: str, what: str) -> Digest:
    try:
        return Digest.parse(_str(obj, key, what))
    except InvalidDigest as exc:
        raise ImageError(f"{what}: {exc}") from exc


def _str_list(value: Any, key: str, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"{what}: {key!r} must be a list of strings")
    return tuple(value)


def _str_map(value: Any, key: str, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ImageError(f"{what}: {key!r} must be an object of strings")
    return dict(value)


def _key_set(value: Any, key: str, what: str) -> tuple[str, ...]:
    """Docker's ``{"80/tcp": {}}`` sets, as a sorted tuple of keys."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ImageError(f"{what}: {key!r} must be an object")
    return tuple(sorted(value))


@dataclass(frozen=True, slots=True)
class Platform:
    """The platform an image runs on (``os``/``architecture``/``variant``)."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""
    os_version: str = ""

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> Platform:
        if not isinstance(obj, dict):
            raise ImageError(f"{what}: 'platform' must be an object")
        return cls(
            os=_str(obj, "os", what, ""),
            architecture=_str(obj, "architecture", what, ""),
            variant=_str(obj, "variant", what, ""),
            os_version=_str(obj, "os.version", what, ""),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A typed, sized, content-addressed pointer to a blob (OCI descriptor)."""

    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=True)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str = ""

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise ImageError(f"{what}: descriptor must be an object")
        size = _int(obj, "size", what)
        if size < 0:
            raise ImageError(f"{what}: negative size {size}")
        platform = obj.get("platform")
        return cls(
            media_type=_str(obj, "mediaType", what),
            digest=_digest(obj, "digest", what),
            size=size,
            annotations=_str_map(obj.get("annotations"), "annotations", what),
            platform=None if platform is None else Platform.from_dict(platform, what),
            urls=_str_list(obj.get("urls"), "urls", what) or (),
            artifact_type=_str(obj, "artifactType", what, ""),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        if self.urls:
            out["urls"] = list(self.urls)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def with_annotations(self, annotations: dict[str, str]) -> Descriptor:
        """A copy with ``annotations`` replacing the current ones."""
        return replace(self, annotations=dict(annotations))


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest (OCI or Docker v2 schema 2): a config and an ordered list of layers."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = mt.OCI_MANIFEST
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None

    @classmethod
    def from_json(cls, data: bytes, what: str = "manifest") -> Manifest:
        obj = parse_json_object(data, what)
        if obj.get("schemaVersion") != 2:
            raise ImageError(f"{what}: unsupported schemaVersion {obj.get('schemaVersion')!r}")
        media_type = obj.get("mediaType", mt.OCI_MANIFEST)
        if media_type not in mt.MANIFEST_TYPES:
            raise ImageError(f"{what}: not an image manifest (mediaType {media_type!r})")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise ImageError(f"{what}: 'layers' must be a list")
        subject = obj.get("subject")
        return cls(
            config=Descriptor.from_dict(obj.get("config"), f"{what} config"),
            layers=tuple(
                Descriptor.from_dict(d, f"{what} layer {i}") for i, d in enumerate(layers)
            ),
            media_type=media_type,
            annotations=_str_map(obj.get("annotations"), "annotations", what),
            subject=None if subject is None else Descriptor.from_dict(subject, f"{what} subject"),
        )

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_dict(),
            "layers": [d.to_dict() for d in self.layers],
        }
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        if self.subject is not None:
            obj["subject"] = self.subject.to_dict()
        return canonical_json(obj)


@dataclass(frozen=True, slots=True)
class Index:
    """An image index (OCI) or manifest list (Docker): manifests for several platforms."""

    manifests: tuple[Descriptor, ...]
    media_type: str = mt.OCI_INDEX
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes, what: str = "index") -> Index:
        obj = parse_json_object(data, what)
        if obj.get("schemaVersion") != 2:
            raise ImageError(f"{what}: unsupported schemaVersion {obj.get('schemaVersion')!r}")
        media_type = obj.get("mediaType", mt.OCI_INDEX)
        if media_type not in mt.INDEX_TYPES:
            raise ImageError(f"{what}: not an image index (mediaType {media_type!r})")
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise ImageError(f"{what}: 'manifests' must be a list")
        return cls(
            manifests=tuple(
                Descriptor.from_dict(d, f"{what} manifest {i}") for i, d in enumerate(manifests)
            ),
            media_type=media_type,
            annotations=_str_map(obj.get("annotations"), "annotations", what),
        )

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [d.to_dict() for d in self.manifests],
        }
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return canonical_json(obj)


@dataclass(frozen=True, slots=True)
class Healthcheck:
    """A HEALTHCHECK: the test command and its timings in nanoseconds (0 = inherit default)."""

    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> Healthcheck:
        if not isinstance(obj, dict):
            raise ImageError(f"{what}: 'Healthcheck' must be an object")
        return cls(
            test=_str_list(obj.get("Test"), "Healthcheck.Test", what) or (),
            interval=_int(obj, "Interval", what, 0),
            timeout=_int(obj, "Timeout", what, 0),
            start_period=_int(obj, "StartPeriod", what, 0),
            start_interval=_int(obj, "StartInterval", what, 0),
            retries=_int(obj, "Retries", what, 0),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Test": list(self.test)}
        for key, value in (
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("StartInterval", self.start_interval),
            ("Retries", self.retries),
        ):
            if value:
                out[key] = value
        return out


_CC_KEYS = {
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "Shell",
    "OnBuild",
    "ArgsEscaped",
}


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """The ``config`` section of an image config: how containers of the image run by default."""

    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    volumes: tuple[str, ...] = ()
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    healthcheck: Healthcheck | None = None
    shell: tuple[str, ...] | None = None
    on_build: tuple[str, ...] = ()
    args_escaped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> ContainerConfig:
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise ImageError(f"{what}: 'config' must be an object")
        hc = obj.get("Healthcheck")
        return cls(
            user=_str(obj, "User", what, ""),
            exposed_ports=_key_set(obj.get("ExposedPorts"), "ExposedPorts", what),
            env=_str_list(obj.get("Env"), "Env", what) or (),
            entrypoint=_str_list(obj.get("Entrypoint"), "Entrypoint", what),
            cmd=_str_list(obj.get("Cmd"), "Cmd", what),
            volumes=_key_set(obj.get("Volumes"), "Volumes", what),
            working_dir=_str(obj, "WorkingDir", what, ""),
            labels=_str_map(obj.get("Labels"), "Labels", what),
            stop_signal=_str(obj, "StopSignal", what, ""),
            healthcheck=None if hc is None else Healthcheck.from_dict(hc, what),
            shell=_str_list(obj.get("Shell"), "Shell", what),
            on_build=_str_list(obj.get("OnBuild"), "OnBuild", what) or (),
            args_escaped=bool(obj.get("ArgsEscaped", False)),
            extra={k: v for k, v in obj.items() if k not in _CC_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.env:
            out["Env"] = list(self.env)
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.volumes:
            out["Volumes"] = {v: {} for v in self.volumes}
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.healthcheck is not None:
            out["Healthcheck"] = self.healthcheck.to_dict()
        if self.shell is not None:
            out["Shell"] = list(self.shell)
        if self.on_build:
            out["OnBuild"] = list(self.on_build)
        if self.args_escaped:
            out["ArgsEscaped"] = True
        return out


@dataclass(frozen=True, slots=True)
class History:
    """One entry of an image's history (one per Dockerfile step, layer or not)."""

    created: str = ""
    created_by: str = ""
    comment: str = ""
    author: str = ""
    empty_layer: bool = False

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> History:
        if not isinstance(obj, dict):
            raise ImageError(f"{what}: history entries must be objects")
        return cls(
            created=_str(obj, "created", what, ""),
            created_by=_str(obj, "created_by", what, ""),
            comment=_str(obj, "comment", what, ""),
            author=_str(obj, "author", what, ""),
            empty_layer=bool(obj.get("empty_layer", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (
            ("created", self.created),
            ("created_by", self.created_by),
            ("comment", self.comment),
            ("author", self.author),
        ):
            if value:
                out[key] = value
        if self.empty_layer:
            out["empty_layer"] = True
        return out


_IC_KEYS = {
    "architecture",
    "os",
    "variant",
    "os.version",
    "created",
    "author",
    "config",
    "rootfs",
    "history",
}


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """An image config: platform, defaults for containers, the layers' diff_ids and history.

    The digest of its JSON is the image ID.
    """

    diff_ids: tuple[Digest, ...]
    config: ContainerConfig = field(default_factory=ContainerConfig)
    architecture: str = "amd64"
    os: str = "linux"
    variant: str = ""
    created: str = ""
    author: str = ""
    history: tuple[History, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes, what: str = "image config") -> ImageConfig:
        obj = parse_json_object(data, what)
        rootfs = obj.get("rootfs")
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
            raise ImageError(f"{what}: 'rootfs' must be an object of type 'layers'")
        raw_ids = rootfs.get("diff_ids") or []
        if not isinstance(raw_ids, list):
            raise ImageError(f"{what}: 'rootfs.diff_ids' must be a list")
        try:
            diff_ids = tuple(Digest.parse(str(d)) for d in raw_ids)
        except InvalidDigest as exc:
            raise ImageError(f"{what}: rootfs.diff_ids: {exc}") from exc
        history = obj.get("history") or []
        if not isinstance(history, list):
            raise ImageError(f"{what}: 'history' must be a list")
        return cls(
            diff_ids=diff_ids,
            config=ContainerConfig.from_dict(obj.get("config"), what),
            architecture=_str(obj, "architecture", what, ""),
            os=_str(obj, "os", what, ""),
            variant=_str(obj, "variant", what, ""),
            created=_str(obj, "created", what, ""),
            author=_str(obj, "author", what, ""),
            history=tuple(History.from_dict(h, what) for h in history),
            extra={k: v for k, v in obj.items() if k not in _IC_KEYS},
        )

    def to_json(self) -> bytes:
        obj: dict[str, Any] = dict(self.extra)
        obj["architecture"] = self.architecture
        obj["os"] = self.os
        if self.variant:
            obj["variant"] = self.variant
        if self.created:
            obj["created"] = self.created
        if self.author:
            obj["author"] = self.author
        obj["config"] = self.config.to_dict()
        obj["rootfs"] = {"type": "layers", "diff_ids": [str(d) for d in self.diff_ids]}
        if self.history:
            obj["history"] = [h.to_dict() for h in self.history]
        return canonical_json(obj)

    @property
    def platform(self) -> Platform:
        """The platform this config declares."""
        return Platform(os=self.os, architecture=self.architecture, variant=self.variant)
