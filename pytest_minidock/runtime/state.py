"""Containers on disk: one directory per container, its state written atomically under a lock.

``ROOT/containers/<id>/`` holds ``config.json`` (the ``ContainerSpec`` plus runtime facts written
once at create), ``state.json`` (status, pids, exit code, times; rewritten by whichever process
changes it, under ``lock``), ``log`` (docker's json-file format), the overlay ``upper``/``work``
dirs, the ``rootfs`` mount point and the container's ``hosts``/``hostname``/``resolv.conf``.
Names are claimed by creating ``ROOT/names/<name>`` exclusively, so two processes can never give
two containers one name. Locks are ``flock``s: a killed process never leaves one held.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from pytest_minidock._record import asdict, dataclass, field, replace
from pytest_minidock.errors import RuntimeFailure, UsageError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = [
    "ContainerRecord",
    "ContainerState",
    "Owner",
    "StateDir",
    "new_id",
    "process_start_time",
    "random_name",
]

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")

_ADJECTIVES = [
    "brave",
    "calm",
    "eager",
    "fair",
    "gentle",
    "happy",
    "jolly",
    "keen",
    "lively",
    "merry",
    "nimble",
    "proud",
    "quick",
    "quiet",
    "sharp",
    "silly",
    "swift",
    "tender",
    "vivid",
    "wise",
    "witty",
    "zen",
    "bold",
    "bright",
    "clever",
    "cool",
    "crisp",
    "dreamy",
]
_NOUNS = [
    "babbage",
    "curie",
    "darwin",
    "euler",
    "faraday",
    "gauss",
    "hopper",
    "hypatia",
    "kepler",
    "lovelace",
    "maxwell",
    "meitner",
    "newton",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "tesla",
    "turing",
    "volta",
    "wozniak",
    "yonath",
    "goldberg",
    "knuth",
]


def new_id() -> str:
    """A fresh 64-hex container ID."""
    return secrets.token_hex(32)


def random_name() -> str:
    """A docker-style ``adjective_scientist`` name (uniqueness is checked on claim)."""
    return f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (None if it does not exist).

    Recorded next to every pid so that a recycled pid is never mistaken for ours.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[19])


def _alive(pid: int, start_time: int | None) -> bool:
    return pid > 0 and start_time is not None and process_start_time(pid) == start_time


@dataclass(frozen=True, slots=True)
class Owner:
    """The process a container belongs to: it dies with it unless kept or detached."""

    pid: int = 0
    start_time: int | None = None
    session: str = ""

    def alive(self) -> bool:
        return _alive(self.pid, self.start_time)

    @classmethod
    def current(cls, session: str = "") -> Owner:
        pid = os.getpid()
        return cls(pid, process_start_time(pid), session)


@dataclass(frozen=True, slots=True)
class ContainerState:
    """The mutable part of a container: ``state.json``."""

    status: str = "created"  # created | running | exited | dead | removing
    pid: int = 0  # the container's PID 1, as the host sees it
    pid_start: int | None = None
    monitor_pid: int = 0
    monitor_start: int | None = None
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    started_at: str = ""
    finished_at: str = ""
    restart_count: int = 0
    detached: bool = False  # started detached from its owner (CLI -d): survives it
    keep: bool = False  # asked to be kept (--minidock-keep): never cleaned as a leftover
    owner: Owner = field(default_factory=Owner)

    def running(self) -> bool:
        """Running, and its PID 1 really is the process we started (not a recycled pid)."""
        return self.status == "running" and _alive(self.pid, self.pid_start)

    def monitor_alive(self) -> bool:
        return _alive(self.monitor_pid, self.monitor_start)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ContainerState:
        obj = json.loads(data)
        owner = Owner(**obj.pop("owner", {}))
        known = {f for f in cls.__dataclass_fields__ if f != "owner"}
        return cls(owner=owner, **{k: v for k, v in obj.items() if k in known})


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """A container as read from disk: its identity, config (raw JSON) and state."""

    id: str
    name: str
    created: str
    config: dict[str, Any]
    state: ContainerState
    dir: Path

    @property
    def short_id(self) -> str:
        return self.id[:12]


def now_iso() -> str:
    """Now, as docker writes times (RFC 3339, nanosecond precision, UTC)."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


class StateDir:
    """``ROOT/containers`` and ``ROOT/names``: create, find, lock, update and remove containers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.containers = root / "containers"
        self.names = root / "names"
        self.volumes = root / "volumes"
        for d in (self.containers, self.names):
            d.mkdir(parents=True, exist_ok=True)

    def dir(self, cid: str) -> Path:
        return self.containers / cid

    # -- names ---------------------------------------------------------------------------------
    def claim_name(self, name: str, cid: str) -> None:
        """Reserve ``name`` for ``cid``; ``UsageError`` if another container has it."""
        bare = name.removeprefix("/")
        if not NAME_RE.match(bare):
            raise UsageError(
                f'invalid container name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed'
            )
        path = self.names / bare
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            holder = path.read_text().strip() if path.exists() else "?"
            if holder and not self.dir(holder).exists():  # left by a crash: take it over
                path.write_text(cid)
                return
            raise UsageError(
                f'the container name "/{bare}" is already in use by container "{holder}". '
                "You have to remove (or rename) that container to be able to reuse that name."
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(cid)

    def release_name(self, name: str, cid: str) -> None:
        path = self.names / name.removeprefix("/")
        with contextlib.suppress(OSError):
            if path.read_text().strip() == cid:
                path.unlink()

    def unique_random_name(self, cid: str) -> str:
        for _ in range(100):
            name = random_name()
            try:
                self.claim_name(name, cid)
            except UsageError:
                continue
            return name
        name = f"{random_name()}_{cid[:6]}"
        self.claim_name(name, cid)
        return name

    # -- records -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, cid: str) -> Iterator[None]:
        """Hold ``<dir>/lock`` (flock) for a read-modify-write of the state."""
        fd = os.open(self.dir(cid) / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def update_config(self, cid: str, **keys: Any) -> None:
        """Set top-level keys of ``config.json`` (facts known only at start, e.g. the
        ``NetworkSettings``), atomically, under the container's lock."""
        with self.locked(cid):
            path = self.dir(cid) / "config.json"
            config = json.loads(path.read_bytes())
            config.update(keys)
            _atomic_write(path, json.dumps(config, sort_keys=True).encode())

    def write_state(self, cid: str, state: ContainerState) -> None:
        _atomic_write(self.dir(cid) / "state.json", state.to_json())

    def read_state(self, cid: str) -> ContainerState:
        try:
            return ContainerState.from_json((self.dir(cid) / "state.json").read_bytes())
        except FileNotFoundError:
            raise RuntimeFailure(f"no such container: {cid}") from None
        except (ValueError, TypeError) as exc:
            raise RuntimeFailure(f"container {cid[:12]}: state.json is corrupt: {exc}") from exc

    def update(self, cid: str, **changes: Any) -> ContainerState:
        """Change fields of the state under the lock; return the new state."""
        with self.locked(cid):
            state = replace(self.read_state(cid), **changes)
            self.write_state(cid, state)
            return state

    def read(self, cid: str) -> ContainerRecord:
        d = self.dir(cid)
        try:
            config = json.loads((d / "config.json").read_bytes())
        except FileNotFoundError:
            raise RuntimeFailure(f"no such container: {cid}") from None
        return ContainerRecord(
            id=cid,
            name=config.get("Name", ""),
            created=config.get("Created", ""),
            config=config,
            state=self.read_state(cid),
            dir=d,
        )

    def ids(self) -> list[str]:
        return [p.name for p in self.containers.iterdir() if (p / "config.json").exists()]

    def all(self) -> list[ContainerRecord]:
        out = []
        for cid in self.ids():
            with contextlib.suppress(RuntimeFailure, FileNotFoundError, ValueError):
                out.append(self.read(cid))
        out.sort(key=lambda r: r.created, reverse=True)
        return out

    def find(self, text: str) -> ContainerRecord:
        """A container by full ID, name (with or without ``/``) or unique ID prefix."""
        if not text:
            raise RuntimeFailure("no such container: (empty name)")
        bare = text.removeprefix("/")
        name_file = self.names / bare
        if NAME_RE.match(bare) and name_file.exists():
            cid = name_file.read_text().strip()
            if (self.dir(cid) / "config.json").exists():
                return self.read(cid)
        if (self.dir(text) / "config.json").exists() and len(text) == 64:
            return self.read(text)
        matches = [cid for cid in self.ids() if cid.startswith(text)]
        if len(matches) == 1:
            return self.read(matches[0])
        if len(matches) > 1:
            raise RuntimeFailure(f"multiple containers found with provided prefix: {text}")
        raise RuntimeFailure(f"no such container: {text}")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
