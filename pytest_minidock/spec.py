"""``ContainerSpec``: everything needed to start a container, derived from an image config plus overrides.

Pure code: nothing here starts a process, mounts or touches the network. ``lookup_in_layers`` and
the reader handed to ``resolve_user`` only read files of an image.

``make_spec`` combines an image's ``ContainerConfig`` with ``Overrides`` (what ``docker run``
flags can change) the way the docker daemon does (``daemon/commit.go`` ``merge``,
``mergeAndVerifyConfig``, ``container.CreateDaemonEnvironment``, ``registerMountPoints``):

* **Command.** ``--entrypoint`` replaces the image's ENTRYPOINT *and* drops its CMD; an empty
  ``--entrypoint ""`` (``()`` or ``("",)``) resets the entrypoint. A command after the image
  replaces CMD only. ENTRYPOINT + CMD must not be empty: ``UsageError("no command specified")``.
* **Environment.** ``PATH`` (docker's default), ``HOSTNAME``, ``TERM=xterm`` with a TTY, then the
  ``-e`` variables in order, then the image's variables that ``-e`` does not name; a later value
  replaces an earlier one in place. A bare ``-e NAME`` that ``parse_env`` could not take from the
  host environment stays bare and *unsets* ``NAME`` (the image's value included), as with docker.
  ``HOME`` depends on the user of each process (``exec -u`` included), so it is not part of
  ``ContainerSpec.env``: the runtime adds it with ``with_home(env, resolve_user(...).home)``.
* **Mounts.** ``-v`` and ``--tmpfs`` on the same target are ``duplicate mount point: /x``; image
  VOLUMEs (and bare ``-v /x``) become anonymous volumes unless something else is mounted there.
  Mounts are ordered parents first.

The user-string parsers (``parse_bind``, ``parse_tmpfs``, ``parse_env``, ``parse_env_file``,
``parse_labels``, ``parse_user``, ``signal_number``) raise ``UsageError`` naming the input.
"""  # noqa: E501

from __future__ import annotations

import json
import os
import re
import signal
import stat

from pytest_minidock._record import dataclass, field, fields
from pytest_minidock.capabilities import NAMES as CAPABILITIES
from pytest_minidock.capabilities import normalize as normalize_capability
from pytest_minidock.errors import ImageError, RuntimeFailure, StoreError, UsageError
from pytest_minidock.image.model import Healthcheck
from pytest_minidock.image.whiteouts import is_opaque as _is_opaque
from pytest_minidock.image.whiteouts import is_whiteout as _is_whiteout

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any, Final, Literal

    from pytest_minidock.image.model import ContainerConfig, ImageConfig

__all__ = [
    "CAPABILITIES",
    "DEFAULT_PATH",
    "ContainerSpec",
    "Mount",
    "Overrides",
    "ResolvedUser",
    "lookup_in_layers",
    "make_spec",
    "merge_env",
    "normalize_capability",
    "parse_bind",
    "parse_env",
    "parse_env_file",
    "parse_labels",
    "parse_tmpfs",
    "parse_user",
    "resolve_user",
    "signal_number",
    "with_home",
]

DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The ``PATH`` a container gets when neither the image nor ``-e`` sets one (docker's)."""

DEFAULT_STOP_SIGNAL: Final = "SIGTERM"
DEFAULT_STOP_TIMEOUT: Final = 10
JSON_VERSION: Final = 1
"""Version of the ``ContainerSpec`` JSON written by ``to_json``."""


_MAX_ID: Final = 2**31 - 1
_MAX_HOSTNAME: Final = 64  # HOST_NAME_MAX
_MAX_SYMLINK_HOPS: Final = 8
_NAME_RE: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_NAME_CHARS: Final = "[a-zA-Z0-9][a-zA-Z0-9_.-]"
_NETWORK_RE: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_ATOI_RE: Final = re.compile(r"[+-]?[0-9]+")
_ENV_FILE_SPACE: Final = " \t"

# -v mode words, by the group of which at most one may be given (docker's linux parser).
_MODE_GROUP: Final = {
    "ro": "rw",
    "rw": "rw",
    "z": "label",
    "Z": "label",
    "nocopy": "copy",
    "consistent": "consistency",
    "cached": "consistency",
    "delegated": "consistency",
    "private": "propagation",
    "rprivate": "propagation",
    "shared": "propagation",
    "rshared": "propagation",
    "slave": "propagation",
    "rslave": "propagation",
}
_TMPFS_FLAGS: Final = frozenset(
    {
        "defaults",
        "ro",
        "rw",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "exec",
        "noexec",
        "sync",
        "async",
        "dirsync",
        "mand",
        "nomand",
        "atime",
        "noatime",
        "diratime",
        "nodiratime",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
    }
)
_TMPFS_DATA: Final = frozenset({"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol"})


# ---- the values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Overrides:
    """What ``docker run`` flags can change; ``None`` or empty means "use the image's"."""

    command: tuple[str, ...] | None = None
    """CMD words after the image; ``None`` or ``()`` keeps the image's CMD."""
    entrypoint: tuple[str, ...] | None = None
    """``--entrypoint``; ``()`` or ``("",)`` resets it. Any entrypoint drops the image's CMD."""
    env: tuple[str, ...] = ()
    """``KEY=VALUE`` items (``--env-file`` first, then ``-e``); a bare ``KEY`` unsets ``KEY``."""
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    binds: tuple[str, ...] = ()
    """Raw ``-v`` specs (``parse_bind``)."""
    tmpfs: tuple[str, ...] = ()
    """Raw ``--tmpfs`` specs (``parse_tmpfs``)."""
    read_only: bool = False
    init: bool = False
    privileged: bool = False
    tty: bool = False
    stdin_open: bool = False
    memory: str | None = None
    cpus: str | None = None
    pids_limit: int | None = None
    stop_signal: str | None = None
    stop_timeout: int | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    network: str = "default"
    """``default`` (= ``bridge``), ``none``, ``host``, ``bridge`` or the name of a network."""
    aliases: tuple[str, ...] = ()
    """``--network-alias``: more names the container has on its (user-defined) network."""
    publish: tuple[str, ...] = ()
    """Raw ``-p [IP:][HOSTPORT:]CONTAINERPORT[/PROTO]`` specs (checked by ``runtime.ports``)."""
    publish_all: bool = False
    """``-P``: publish every EXPOSEd port on an ephemeral host port."""


@dataclass(frozen=True, slots=True)
class Mount:
    """One resolved mount request."""

    kind: Literal["bind", "volume", "tmpfs"]
    target: str
    """Absolute, normalised path in the container (never ``/``)."""
    source: str = ""
    """Host path (bind; its existence is the runtime's business) or volume name ("" = anonymous)."""
    readonly: bool = False
    options: str = ""
    """tmpfs options (``size=64m,mode=1777``), or ``nocopy`` for a volume."""


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Everything needed to start a container; ``to_json`` is its on-disk config."""

    image: str
    """The reference or ID as given."""
    image_id: str
    """The image's ``sha256:…`` config digest."""
    argv: tuple[str, ...]
    """Resolved ENTRYPOINT + CMD, never empty."""
    env: tuple[str, ...] = ()
    """The environment of the main process except ``HOME`` (see ``with_home``)."""
    workdir: str = "/"
    user: str = ""
    """As requested (``""`` = root); ``resolve_user`` turns it into ids."""
    hostname: str = ""
    mounts: tuple[Mount, ...] = ()
    read_only: bool = False
    init: bool = False
    privileged: bool = False
    tty: bool = False
    stdin_open: bool = False
    memory: str | None = None
    cpus: str | None = None
    pids_limit: int | None = None
    stop_signal: str = DEFAULT_STOP_SIGNAL
    stop_timeout: int = DEFAULT_STOP_TIMEOUT
    """Seconds between the stop signal and SIGKILL; -1 waits for ever."""
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    network: str = "default"
    healthcheck: Healthcheck | None = None
    aliases: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    """``-p`` specs as given; with ``publish_all``, ``exposed_ports`` are published too."""
    publish_all: bool = False

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, ASCII, no white space); ``from_json`` reads it back."""
        obj: dict[str, Any] = {
            "version": JSON_VERSION,
            "image": self.image,
            "image_id": self.image_id,
            "argv": list(self.argv),
            "env": list(self.env),
            "workdir": self.workdir,
            "user": self.user,
            "hostname": self.hostname,
            "mounts": [
                {
                    "kind": m.kind,
                    "target": m.target,
                    "source": m.source,
                    "readonly": m.readonly,
                    "options": m.options,
                }
                for m in self.mounts
            ],
            "read_only": self.read_only,
            "init": self.init,
            "privileged": self.privileged,
            "tty": self.tty,
            "stdin_open": self.stdin_open,
            "memory": self.memory,
            "cpus": self.cpus,
            "pids_limit": self.pids_limit,
            "stop_signal": self.stop_signal,
            "stop_timeout": self.stop_timeout,
            "cap_add": list(self.cap_add),
            "cap_drop": list(self.cap_drop),
            "labels": dict(self.labels),
            "exposed_ports": list(self.exposed_ports),
            "network": self.network,
            "healthcheck": None if self.healthcheck is None else self.healthcheck.to_dict(),
            "aliases": list(self.aliases),
            "publish": list(self.publish),
            "publish_all": self.publish_all,
        }
        # ASCII keeps any str (lone surrogates from a non-UTF-8 host environment included).
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ContainerSpec:
        """Parse ``to_json`` output; ``StoreError`` if ``data`` is not a container config."""
        what = "container config"
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"{what}: not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise StoreError(f"{what}: expected a JSON object")
        if obj.get("version") != JSON_VERSION:
            raise StoreError(f"{what}: unsupported version {obj.get('version')!r}")
        unknown = set(obj) - _SPEC_KEYS
        if unknown:
            raise StoreError(f"{what}: unknown keys {', '.join(sorted(unknown))}")
        r = _Reader(obj, what)
        raw_mounts = r.get("mounts", list)
        mounts = []
        for i, m in enumerate(raw_mounts):
            if not isinstance(m, dict) or set(m) != _MOUNT_KEYS:
                raise StoreError(f"{what}: mount {i} must be an object with {sorted(_MOUNT_KEYS)}")
            mr = _Reader(m, f"{what} mount {i}")
            raw_kind = mr.text("kind")
            kind = next((k for k in _MOUNT_KINDS if k == raw_kind), None)
            if kind is None:
                raise StoreError(f"{what}: mount {i} has unknown kind {raw_kind!r}")
            mounts.append(
                Mount(
                    kind,
                    mr.text("target"),
                    mr.text("source"),
                    mr.flag("readonly"),
                    mr.text("options"),
                )
            )
        if "healthcheck" not in obj:
            raise StoreError(f"{what}: missing 'healthcheck'")
        hc = obj["healthcheck"]
        try:
            healthcheck = None if hc is None else Healthcheck.from_dict(hc, what)
        except ImageError as exc:
            raise StoreError(str(exc)) from exc
        return cls(
            image=r.text("image"),
            image_id=r.text("image_id"),
            argv=r.texts("argv"),
            env=r.texts("env"),
            workdir=r.text("workdir"),
            user=r.text("user"),
            hostname=r.text("hostname"),
            mounts=tuple(mounts),
            read_only=r.flag("read_only"),
            init=r.flag("init"),
            privileged=r.flag("privileged"),
            tty=r.flag("tty"),
            stdin_open=r.flag("stdin_open"),
            memory=r.opt_text("memory"),
            cpus=r.opt_text("cpus"),
            pids_limit=r.opt_integer("pids_limit"),
            stop_signal=r.text("stop_signal"),
            stop_timeout=r.integer("stop_timeout"),
            cap_add=r.texts("cap_add"),
            cap_drop=r.texts("cap_drop"),
            labels=r.text_map("labels"),
            exposed_ports=r.texts("exposed_ports"),
            network=r.text("network"),
            healthcheck=healthcheck,
            aliases=r.texts("aliases") if "aliases" in obj else (),
            publish=r.texts("publish") if "publish" in obj else (),
            publish_all=r.flag("publish_all") if "publish_all" in obj else False,
        )


_MOUNT_KINDS: Final[tuple[Literal["bind", "volume", "tmpfs"], ...]] = ("bind", "volume", "tmpfs")
_MOUNT_KEYS: Final = frozenset(f.name for f in fields(Mount))
_SPEC_KEYS: Final = frozenset({"version", *(f.name for f in fields(ContainerSpec))})


class _Reader:
    """Typed access to the keys of a JSON object, every problem a ``StoreError``."""

    __slots__ = ("obj", "what")

    def __init__(self, obj: dict[str, Any], what: str) -> None:
        self.obj = obj
        self.what = what

    def get(self, key: str, kind: type) -> Any:
        if key not in self.obj:
            raise StoreError(f"{self.what}: missing {key!r}")
        value = self.obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise StoreError(f"{self.what}: {key!r} must be of type {kind.__name__}")
        return value

    def text(self, key: str) -> str:
        value: str = self.get(key, str)
        return value

    def flag(self, key: str) -> bool:
        value: bool = self.get(key, bool)
        return value

    def integer(self, key: str) -> int:
        value: int = self.get(key, int)
        return value

    def opt_text(self, key: str) -> str | None:
        return None if self.obj.get(key, "") is None else self.text(key)

    def opt_integer(self, key: str) -> int | None:
        return None if self.obj.get(key, 0) is None else self.integer(key)

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.get(key, list)
        if not all(isinstance(v, str) for v in value):
            raise StoreError(f"{self.what}: {key!r} must be a list of strings")
        return tuple(value)

    def text_map(self, key: str) -> dict[str, str]:
        value = self.get(key, dict)
        if not all(isinstance(v, str) for v in value.values()):
            raise StoreError(f"{self.what}: {key!r} must be an object of strings")
        return dict(value)


# ---- building a spec --------------------------------------------------------------------------


def make_spec(
    image: str,
    image_id: str,
    config: ImageConfig,
    overrides: Overrides,
    *,
    default_hostname: str,
) -> ContainerSpec:
    """The spec of a container of ``config`` run with ``overrides`` (docker's merge rules).

    ``default_hostname`` is used unless ``overrides.hostname`` is set (docker: the first 12
    characters of the container ID). Raises ``UsageError`` naming the offending input.
    """
    cc = config.config
    o = overrides
    network = _check_network(o.network)
    if o.hostname and network == "host":
        raise UsageError(
            f"conflicting options: hostname {o.hostname!r} and the network mode 'host'"
        )
    if (o.publish or o.publish_all) and network in ("host", "none"):
        raise UsageError(f"published ports and the network mode {network!r} exclude each other")
    if o.aliases and network in ("default", "bridge", "host", "none"):
        raise UsageError(
            "network-scoped aliases are supported only for containers on user-defined networks"
        )
    hostname = o.hostname or default_hostname
    _check_hostname(hostname)
    user = o.user or cc.user
    if user:
        parse_user(user)
    defaults = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"]
    if o.tty:
        defaults.append("TERM=xterm")
    user_env = tuple(_check_env_item(e, "environment variable") for e in o.env)
    stop_signal = o.stop_signal or cc.stop_signal or DEFAULT_STOP_SIGNAL
    signal_number(stop_signal)
    stop_timeout = DEFAULT_STOP_TIMEOUT if o.stop_timeout is None else o.stop_timeout
    if stop_timeout < -1:
        raise UsageError(f"invalid stop timeout {stop_timeout}: use seconds >= 0, or -1")
    return ContainerSpec(
        image=image,
        image_id=image_id,
        argv=_argv(image, cc, o),
        env=merge_env(defaults, _docker_merge_env(user_env, cc.env)),
        workdir=_workdir(o.workdir, cc.working_dir),
        user=user,
        hostname=hostname,
        mounts=_mounts(o.binds, o.tmpfs, cc.volumes),
        read_only=o.read_only,
        init=o.init,
        privileged=o.privileged,
        tty=o.tty,
        stdin_open=o.stdin_open,
        memory=o.memory,
        cpus=o.cpus,
        pids_limit=o.pids_limit,
        stop_signal=stop_signal,
        stop_timeout=stop_timeout,
        cap_add=_caps(o.cap_add),
        cap_drop=_caps(o.cap_drop),
        labels={**cc.labels, **o.labels},
        exposed_ports=cc.exposed_ports,
        network=network,
        healthcheck=cc.healthcheck,
        aliases=tuple(o.aliases),
        publish=tuple(o.publish),
        publish_all=o.publish_all,
    )


def _argv(image: str, cc: ContainerConfig, o: Overrides) -> tuple[str, ...]:
    command = o.command or ()
    if o.entrypoint is not None:  # any --entrypoint, even "", drops the image's CMD
        entrypoint = o.entrypoint
    else:
        entrypoint = cc.entrypoint or ()
        if not command:
            command = cc.cmd or ()
    if entrypoint == ("",):  # docker's "reset the entrypoint"
        entrypoint = ()
    argv = (*entrypoint, *command)
    if not argv:
        raise UsageError(
            f"no command specified: image {image} has no ENTRYPOINT or CMD and none was given"
        )
    for word in argv:
        if "\0" in word:
            raise UsageError(f"command argument {word!r} contains a NUL byte")
    return argv


def _docker_merge_env(user: Sequence[str], image: Sequence[str]) -> tuple[str, ...]:
    """docker's ``merge``: the user's items, then the image's whose name the user did not give."""
    if not user:
        return tuple(image)
    names = {e.partition("=")[0] for e in user}
    return (*user, *(e for e in image if e.partition("=")[0] not in names))


def _workdir(requested: str | None, image_dir: str) -> str:
    if requested:
        if not requested.startswith("/"):
            raise UsageError(
                f"the working directory '{requested}' is invalid, it needs to be an absolute path"
            )
        return _clean(requested)
    # docker resolves an image's relative WORKDIR against the root
    return _clean("/" + image_dir) if image_dir else "/"


def _check_hostname(hostname: str) -> None:
    if not hostname:
        raise UsageError("the hostname must not be empty")
    if len(hostname.encode("utf-8", "surrogateescape")) > _MAX_HOSTNAME:
        raise UsageError(f"hostname {hostname!r} is longer than {_MAX_HOSTNAME} bytes")
    if any(c.isspace() or not c.isprintable() or c == "/" for c in hostname):
        raise UsageError(f"invalid hostname {hostname!r}: white space, '/' or control character")


def _check_network(network: str) -> str:
    if network in ("default", "none", "host", "bridge"):
        return network
    if network.startswith("container:"):
        raise UsageError(f"network mode {network!r} is not supported")
    if not _NETWORK_RE.fullmatch(network):
        raise UsageError(
            f"invalid network name {network!r}: use none, host, bridge or a name matching "
            f"{_NAME_CHARS}*"
        )
    return network


def _caps(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(normalize_capability(n) for n in names))


# ---- paths and mounts -------------------------------------------------------------------------


def _clean(path: str) -> str:
    """Go's ``path.Clean`` for a path starting with ``/``: no ``.``, ``..`` or repeated ``/``."""
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return "/" + "/".join(out)


def _container_path(target: str, what: str) -> str:
    if not target:
        raise UsageError(f"{what}: the container path must not be empty")
    if "\0" in target:
        raise UsageError(f"{what}: the container path contains a NUL byte")
    if not target.startswith("/"):
        raise UsageError(f"{what}: invalid mount path: '{target}' mount path must be absolute")
    cleaned = _clean(target)
    if cleaned == "/":
        raise UsageError(f"{what}: invalid specification: destination can't be '/'")
    return cleaned


def _mode_words(mode: str) -> list[str] | None:
    """The words of a ``-v`` mode, or ``None`` when docker would call the mode invalid."""
    if not mode:
        return []
    words = mode.split(",")
    groups = [_MODE_GROUP.get(w) for w in words]
    if None in groups or len(set(groups)) != len(groups):
        return None
    return words


def parse_bind(spec: str) -> Mount:
    """Parse a ``-v`` spec like docker's linux parser.

    ``/host:/ctr[:MODE]`` is a bind mount, ``name:/ctr[:MODE]`` a named volume, ``/ctr`` an
    anonymous volume. MODE is comma-separated words: ``ro``/``rw``, ``z``/``Z`` and
    ``consistent``/``cached``/``delegated`` (accepted, ignored), ``nocopy`` (volumes only) and the
    default propagation ``rprivate``; other propagation modes are refused as unsupported.
    """
    what = f"invalid volume specification: '{spec}'"
    if "\0" in spec:
        raise UsageError(f"{what}: contains a NUL byte")
    parts = spec.split(":", 3)
    if not parts[0]:
        raise UsageError(what)
    mode = ""
    if len(parts) == 1:
        source, target = "", parts[0]
    elif len(parts) == 2:
        if _mode_words(parts[1]) is not None:  # "/ctr:ro": an anonymous volume takes no mode
            raise UsageError(what)
        source, target = parts
    elif len(parts) == 3:
        source, target, mode = parts
    else:
        raise UsageError(what)
    words = _mode_words(mode)
    if words is None:
        raise UsageError(f"{what}: invalid mode: {mode}")
    target = _container_path(target, what)
    readonly = "ro" in words
    for word in words:
        if _MODE_GROUP[word] == "propagation" and word != "rprivate":
            raise UsageError(f"{what}: mount propagation {word!r} is not supported")
    if source.startswith("/"):
        if "nocopy" in words:
            raise UsageError(f"{what}: nocopy applies to volumes, not to bind mounts")
        return Mount("bind", target, _clean(source), readonly)
    if source:
        if len(source) == 1:
            raise UsageError(
                f"volume name {source!r} is too short, names should be at least two "
                "alphanumeric characters"
            )
        if not _NAME_RE.fullmatch(source):
            raise UsageError(
                f'"{source}" includes invalid characters for a local volume name, only '
                f'"{_NAME_CHARS}" are allowed. If you intended to pass a host directory, use '
                "absolute path"
            )
    return Mount("volume", target, source, readonly, "nocopy" if "nocopy" in words else "")


def parse_tmpfs(spec: str) -> Mount:
    """Parse a ``--tmpfs`` spec: ``/run`` or ``/run:size=64m,mode=1777,noexec``.

    Options are checked against what docker accepts (mount flags and ``size``, ``mode``,
    ``uid``, ``gid``, ``nr_inodes``, ``nr_blocks``, ``mpol``); their values are the runtime's to
    parse. The last of ``ro``/``rw`` decides ``readonly``.
    """
    what = f"--tmpfs {spec}"
    target, _, raw = spec.partition(":")
    target = _container_path(target, what)
    readonly = False
    options = [o for o in raw.split(",") if o]
    for opt in options:
        if opt in _TMPFS_FLAGS:
            if opt in ("ro", "rw"):
                readonly = opt == "ro"
            continue
        key, eq, value = opt.partition("=")
        if key not in _TMPFS_DATA or not eq or not value or "\0" in value:
            raise UsageError(f"{what}: invalid tmpfs option {opt!r}")
    return Mount("tmpfs", target, "", readonly, ",".join(options))


def _mounts(
    binds: Iterable[str], tmpfs: Iterable[str], image_volumes: Iterable[str]
) -> tuple[Mount, ...]:
    explicit: dict[str, Mount] = {}
    anonymous: dict[str, Mount] = {}
    for mount in [*map(parse_bind, binds), *map(parse_tmpfs, tmpfs)]:
        if mount.kind == "volume" and not mount.source:
            anonymous.setdefault(mount.target, mount)
        elif mount.target in explicit:
            raise UsageError(f"duplicate mount point: {mount.target}")
        else:
            explicit[mount.target] = mount
    for volume in image_volumes:
        target = _container_path(volume, f"image VOLUME {volume!r}")
        anonymous.setdefault(target, Mount("volume", target))
    mounts = [*explicit.values(), *(m for t, m in anonymous.items() if t not in explicit)]
    mounts.sort(key=lambda m: m.target.count("/"))  # parents before what is mounted inside them
    return tuple(mounts)


# ---- environment and labels -------------------------------------------------------------------


def _check_env_item(item: str, what: str) -> str:
    if not item.partition("=")[0]:
        raise UsageError(f"invalid {what}: {item}")
    if "\0" in item:
        raise UsageError(f"invalid {what} {item!r}: contains a NUL byte")
    return item


def parse_env(items: Iterable[str], environ: Mapping[str, str]) -> tuple[str, ...]:
    """``-e`` values: ``KEY=VALUE`` as given; a bare ``KEY`` takes ``environ[KEY]``.

    A bare ``KEY`` missing from ``environ`` stays bare: in ``Overrides.env`` it unsets ``KEY``,
    so the container does not have the variable at all (docker's behaviour).
    """
    out = []
    for item in items:
        _check_env_item(item, "environment variable")
        bare = "=" not in item
        out.append(f"{item}={environ[item]}" if bare and item in environ else item)
    return tuple(out)


def parse_env_file(text: str, source: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    """An ``--env-file`` read like docker does; ``source`` names the file in errors.

    Lines are ``KEY=VALUE`` (the value verbatim: no quotes, no trimming) or a bare ``KEY`` taken
    from ``environ`` (left out if not set there). Leading white space is ignored, blank lines and
    ``#`` comments skipped, a UTF-8 byte-order mark and ``\\r\\n`` line ends accepted.
    """
    out: list[str] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if lineno == 1:
            line = line.removeprefix("\ufeff")
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        name, eq, value = line.partition("=")
        where = f"{source}:{lineno}"
        if any(c in name for c in _ENV_FILE_SPACE):
            raise UsageError(f"{where}: variable '{name}' contains whitespaces")
        if not name:
            raise UsageError(f"{where}: no variable name on line '{line}'")
        if "\0" in line:
            raise UsageError(f"{where}: variable '{name}' contains a NUL byte")
        if eq:
            out.append(f"{name}={value}")
        elif name in environ:
            out.append(f"{name}={environ[name]}")
    return tuple(out)


def merge_env(base: Iterable[str], override: Iterable[str]) -> tuple[str, ...]:
    """``base`` then ``override``: a later ``KEY=…`` replaces an earlier one where it first was.

    A bare ``KEY`` (no ``=``) removes ``KEY``; set again later, it returns to its first place
    (docker's ``ReplaceOrAppendEnvValues``, without its duplicates).
    """
    merged: dict[str, str | None] = {}
    for item in (*base, *override):
        name, eq, _ = item.partition("=")
        merged[name] = item if eq else None
    return tuple(item for item in merged.values() if item is not None)


def with_home(env: Iterable[str], home: str) -> tuple[str, ...]:
    """``env`` with ``HOME=home`` unless it sets a non-empty ``HOME`` (what runc does)."""
    items = list(env)
    for i, item in enumerate(items):
        if item.startswith("HOME="):
            if item != "HOME=":
                return tuple(items)
            items[i] = f"HOME={home}"
            return tuple(items)
    return (*items, f"HOME={home}")


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``--label KEY=VALUE`` values (a bare ``KEY`` is an empty label), later wins."""
    labels: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key.strip():
            raise UsageError(f"invalid label '{item}': empty name")
        if any(c in key for c in _ENV_FILE_SPACE):
            raise UsageError(f"label '{key}' contains whitespaces")
        labels[key] = value
    return labels


# ---- signals ----------------------------------------------------------------------------------


def _signal_table() -> dict[str, int]:
    table = {name.removeprefix("SIG"): int(sig) for name, sig in signal.Signals.__members__.items()}
    rtmin, rtmax = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
    for n in range(1, 15):
        table[f"RTMIN+{n}"] = rtmin + n
        table[f"RTMAX-{n}"] = rtmax - n
    table["RTMIN+15"] = rtmin + 15
    return table


_SIGNALS: Final = _signal_table()


def signal_number(name: str) -> int:
    """The number of a signal given as ``TERM``, ``SIGTERM``, ``sigterm`` or ``15``."""
    if _ATOI_RE.fullmatch(name):
        number = int(name)
        if 1 <= number <= int(signal.SIGRTMAX):
            return number
    else:
        number = _SIGNALS.get(name.upper().removeprefix("SIG"), 0)
        if number:
            return number
    raise UsageError(f"invalid signal: {name}")


# ---- users ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolvedUser:
    """A user spec resolved against an image's ``/etc/passwd`` and ``/etc/group``."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    """Supplementary groups (``setgroups``): ``gid`` first, as docker has done since 20.10.18."""
    home: str


def parse_user(text: str) -> tuple[str, str | None]:
    """Split ``name|uid[:group|gid]``; the group is ``None`` when not given (or empty)."""
    if "\0" in text or "\n" in text:
        raise UsageError(f"invalid user {text!r}: contains a NUL byte or a newline")
    user, _, group = text.partition(":")
    if ":" in group:
        raise UsageError(f"invalid user {text!r}: expected name|uid[:group|gid]")
    if not user and not group:
        raise UsageError(f"invalid user {text!r}: expected name|uid[:group|gid]")
    for part in (user, group):
        if _ATOI_RE.fullmatch(part) and not 0 <= int(part) <= _MAX_ID:
            raise UsageError(f"invalid user {text!r}: uids and gids must be in range 0-{_MAX_ID}")
    return user, group or None


@dataclass(frozen=True, slots=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True, slots=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _colon_lines(data: bytes | None) -> Iterable[list[str]]:
    if data is None:
        return
    for raw in data.split(b"\n"):
        line = raw.strip().decode("utf-8", "surrogateescape")
        if line and not line.startswith("#"):
            yield line.split(":")


def _parse_passwd(data: bytes | None) -> list[_PasswdEntry]:
    out = []
    for parts in _colon_lines(data):
        f = parts + [""] * (7 - len(parts))
        if _ATOI_RE.fullmatch(f[2]) and _ATOI_RE.fullmatch(f[3]):  # docker would read 0 instead
            out.append(_PasswdEntry(f[0], int(f[2]), int(f[3]), f[5]))
    return out


def _parse_group(data: bytes | None) -> list[_GroupEntry]:
    out = []
    for parts in _colon_lines(data):
        f = parts + [""] * (4 - len(parts))
        if _ATOI_RE.fullmatch(f[2]):
            out.append(_GroupEntry(f[0], int(f[2]), tuple(f[3].split(","))))
    return out


def resolve_user(user: str, read_file: Callable[[str], bytes | None]) -> ResolvedUser:
    """Resolve ``user`` (``""`` is root) like docker (moby/sys/user ``GetExecUser``).

    ``read_file(path)`` returns a file of the container's image, ``None`` if absent. A numeric
    uid needs no passwd entry (gid 0, home ``/``); a name does. An explicit group is looked up by
    name (or taken as a number) in ``/etc/group``; without one, the supplementary groups are the
    groups listing the user's name.
    """
    name, group = parse_user(user) if user else ("", None)
    numeric_uid = int(name) if _ATOI_RE.fullmatch(name) else None

    def is_user(entry: _PasswdEntry) -> bool:
        if not name:
            return entry.uid == 0
        if numeric_uid is not None:  # a number is always a uid, never a name
            return entry.uid == numeric_uid
        return entry.name == name

    matched = next(filter(is_user, _parse_passwd(read_file("/etc/passwd"))), None)
    if matched is not None:
        uid, gid, home = matched.uid, matched.gid, matched.home or "/"
    elif name and numeric_uid is None:
        raise UsageError(f"unable to find user {name}: no matching entries in passwd file")
    else:
        uid, gid, home = numeric_uid or 0, 0, "/"
    sgids: list[int] = []
    if group is not None:  # explicit: no supplementary groups from /etc/group
        if _ATOI_RE.fullmatch(group):  # a number is always a gid, listed or not
            gid = int(group)
        else:
            groups = _parse_group(read_file("/etc/group"))
            found = next((g for g in groups if g.name == group), None)
            if found is None:
                raise UsageError(f"unable to find group {group}: no matching entries in group file")
            gid = found.gid
    elif matched is not None:
        groups = _parse_group(read_file("/etc/group"))
        sgids = [g.gid for g in groups if matched.name in g.members]
    return ResolvedUser(uid, gid, tuple(dict.fromkeys([gid, *sgids])), home)


# ---- reading files from image layers ----------------------------------------------------------


if TYPE_CHECKING:
    _Found = Literal["dir", "file", "link", "none"]
else:
    _Found = str


def _step(stack: list[bytes], name: bytes) -> tuple[_Found, list[bytes], bytes]:
    """Look ``name`` up in a merged directory given as its layer dirs, top first.

    Returns ``("dir", layer dirs top first, b"")``, ``("file", [], path)``, ``("link", [],
    target)`` or ``("none", [], b"")`` (absent, whited out, or not a file, dir or symlink).
    """
    dirs: list[bytes] = []
    for parent in stack:
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot read image layer path {os.fsdecode(path)}: {exc.strerror or exc}"
            ) from exc
        if _is_whiteout(path, st):
            break
        if stat.S_ISDIR(st.st_mode):
            dirs.append(path)
            if _is_opaque(path):
                break
            continue
        if dirs:  # a directory above hides whatever is below it
            break
        if stat.S_ISLNK(st.st_mode):
            return ("link", [], os.readlink(path))
        if stat.S_ISREG(st.st_mode):
            return ("file", [], path)
        return ("none", [], b"")
    if dirs:
        return ("dir", dirs, b"")
    return ("none", [], b"")


def _dir_stack(top_first: list[bytes], parts: list[bytes]) -> list[bytes]:
    """The layer dirs of the merged directory ``parts`` (known to be a directory)."""
    stack = top_first  # overlayfs ignores opaque marks on the layers' roots
    for name in parts:
        kind, found, _ = _step(stack, name)
        if kind != "dir":
            return []
        stack = found
    return stack


def _read_regular(path: bytes) -> bytes | None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise RuntimeFailure(
            f"cannot read image file {os.fsdecode(path)}: {exc.strerror or exc}"
        ) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def lookup_in_layers(lowerdirs: Sequence[str], path: str) -> bytes | None:
    """The content of ``path`` in the merged view of overlay ``lowerdirs`` (base layer first).

    Layers are searched from the top down. A whiteout of the path or of a parent ends the search
    (``None``), an opaque parent hides the layers below it. Symlinks are resolved inside the merged
    view (``..`` stops at its root; at most 8), never on the host: nothing outside the layer
    directories is read. ``None`` also when the path is a directory or not a regular file.
    """
    if "\0" in path:
        return None
    top_first = [os.fsencode(d) for d in reversed(lowerdirs)]
    todo = [p for p in reversed(os.fsencode(path).split(b"/")) if p not in (b"", b".")]
    current: list[bytes] = []
    stack = top_first
    hops = 0
    while todo:
        name = todo.pop()
        if name == b"..":
            if current:
                current.pop()
                stack = _dir_stack(top_first, current)
            continue
        kind, dirs, where = _step(stack, name)
        if kind == "link":
            hops += 1
            if hops > _MAX_SYMLINK_HOPS or not where:
                return None
            todo.extend(p for p in reversed(where.split(b"/")) if p not in (b"", b"."))
            if where.startswith(b"/"):
                current, stack = [], top_first
            continue
        if kind == "dir":
            current.append(name)
            stack = dirs
            continue
        if kind == "file" and not todo:
            return _read_regular(where)
        return None
    return None
