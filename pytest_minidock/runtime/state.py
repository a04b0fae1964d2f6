"""Containers on disk: one directory per container, its state written atomically under a lock.

``ROOT/containers/<id>/`` holds ``config.json`` (the ``ContainerSpec`` plus runtime facts written
once at create), ``state`` (status, pids, exit code, times as JSON, in one of two checksummed
slots rewritten in place by whichever process changes it, under an ``flock`` of that file: see
``_write_slots``), ``log`` (docker's json-file format), the overlay ``upper``/``work``
dirs, the ``rootfs`` mount point and the container's ``hosts``/``hostname``/``resolv.conf``.
Names are claimed by creating ``ROOT/names/<name>`` exclusively, so two processes can never give
two containers one name. Locks are ``flock``s: a killed process never leaves one held.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import zlib

from pytest_minidock._record import asdict, dataclass, field, fields, replace
from pytest_minidock.errors import RuntimeFailure, UsageError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

__all__ = [
    "ContainerRecord",
    "ContainerState",
    "Owner",
    "StateDir",
    "new_id",
    "process_start_time",
    "random_name",
]

_NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_REST = _NAME_FIRST | frozenset("_.-")


def __getattr__(name: str) -> Any:
    """``NAME_RE``, the regex ``valid_name`` replaces, compiled on first use (for callers)."""
    if name == "NAME_RE":
        import re

        found = globals()["NAME_RE"] = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
        return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def valid_name(name: str) -> bool:
    """Whether ``name`` (its ``/`` removed) is a container name docker accepts:
    ``[a-zA-Z0-9][a-zA-Z0-9_.-]+`` (no regex: compiling one costs every command ~0.3 ms)."""
    return len(name) > 1 and name[0] in _NAME_FIRST and all(c in _NAME_REST for c in name[1:])


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
    return os.urandom(32).hex()


def random_name() -> str:
    """A docker-style ``adjective_scientist`` name (uniqueness is checked on claim)."""
    # os.urandom, not secrets: importing secrets (hmac, hashlib, random) costs every command ~3 ms.
    pick = int.from_bytes(os.urandom(4), "big")
    return f"{_ADJECTIVES[pick % len(_ADJECTIVES)]}_{_NOUNS[(pick >> 16) % len(_NOUNS)]}"


def process_start_time(pid: int, *, running: bool = False) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (None if it does not exist, or with
    ``running`` if it has exited and waits to be reaped: a zombie).

    Recorded next to every pid so that a recycled pid is never mistaken for ours.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    if running and fields[0] in (b"Z", b"X"):
        return None
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
        start = _own_start.get(pid)
        if start is None:  # (read once per process: it never changes)
            start = _own_start[pid] = process_start_time(pid)
        return cls(pid, start, session)


_own_start: dict[int, int | None] = {}


@dataclass(frozen=True, slots=True)
class ContainerState:
    """The mutable part of a container: its ``state`` file."""

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
        known = {f.name for f in fields(cls) if f.name != "owner"}
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
        self.spares = root / "spares"
        for d in (self.containers, self.names):
            d.mkdir(parents=True, exist_ok=True)

    # -- spare container directories -----------------------------------------------------------
    # Making a container's directory costs ~10 inode creations, 0.1-0.5 ms each on ext4. A
    # launcher makes spares when it is idle (``ROOT/spares/<pid>-<start time>-<random>``, made
    # aside under a dot name, then renamed into place); ``create`` takes one with a rename.
    def workroom(self, tag: str) -> Path:
        """``spares/.<tag>-work``: where ``tag`` makes its spares before they are renamed into
        ``spares`` (so that ``take_spare``'s rename never waits for ``spares``' lock while an
        inode is made in it: ~0.5-2 ms each on a busy ext4), and its zygotes' staged
        directories (``mounts.premount``). Removed with its spares."""
        room = self.spares / f".{tag}-work"
        try:
            os.mkdir(room)
        except FileExistsError:
            pass
        except FileNotFoundError:  # (never the root itself: it may have been removed)
            self.spares.mkdir(exist_ok=True)
            room.mkdir(exist_ok=True)
        return room

    def make_spare(self, tag: str) -> None:
        """Put one spare container directory in ``spares`` (``tag``: its maker, ``pid-start``)."""
        name = f"{tag}-{os.urandom(4).hex()}"
        tmp = self.workroom(tag) / name
        os.mkdir(tmp)
        try:
            for sub in SPARE_DIRS:
                os.mkdir(tmp / sub)
            for file in SPARE_FILES:
                os.close(os.open(tmp / file, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
            os.rename(tmp, self.spares / name)
        except BaseException:
            _remove_dir(tmp)
            raise

    def spare_count(self, tag: str) -> int:
        """How many spares ``tag`` made are waiting."""
        try:
            return sum(1 for n in os.listdir(self.spares) if n.startswith(tag + "-"))
        except FileNotFoundError:
            return 0

    def take_spare(self, cid: str) -> bool:
        """Make a spare the directory of container ``cid``; False if there is none."""
        try:
            names = os.listdir(self.spares)
        except FileNotFoundError:
            return False
        for name in names:
            if name.startswith("."):
                continue
            try:
                os.rename(self.spares / name, self.dir(cid))
            except FileNotFoundError:  # taken by another process meanwhile
                continue
            return True
        return False

    def remove_spares(self, tag: str | None = None) -> None:
        """Remove the spares ``tag`` made (None: those whose maker is gone, half-made or not)."""
        try:
            names = os.listdir(self.spares)
        except FileNotFoundError:
            return
        for name in names:
            if tag is not None:
                mine = name.removeprefix(".").startswith(tag + "-")
            else:
                pid, _, rest = name.removeprefix(".").partition("-")
                start = rest.partition("-")[0]
                try:
                    mine = not _alive(int(pid), int(start))
                except ValueError:
                    mine = True
            if mine:
                path = self.spares / name
                if not name.startswith("."):
                    # a ready spare: claim it first, with a rename, since ``take_spare`` (another
                    # owner's ``create``) may be renaming it into a container at this very
                    # moment: one of the two renames wins, and no container gets a spare that
                    # is being emptied (an overlay mount failing with ENOENT)
                    claimed = self.spares / f".{name}.rm"
                    try:
                        os.rename(path, claimed)
                    except FileNotFoundError:
                        continue
                    path = claimed
                _remove_dir(path)

    def dir(self, cid: str) -> Path:
        return self.containers / cid

    # -- names ---------------------------------------------------------------------------------
    def claim_name(self, name: str, cid: str, *, via: Path | None = None) -> None:
        """Reserve ``name`` for ``cid``; ``UsageError`` if another container has it.

        ``via``: an empty file of the container's (a spare's ``name``): it gets the ID and is
        linked into ``names`` (a new directory entry; making a new inode costs ~0.7 ms on a
        busy ext4, writing a file that is there ~0.04 ms)."""
        bare = name.removeprefix("/")
        if not valid_name(bare):
            raise UsageError(
                f'invalid container name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed'
            )
        path = self.names / bare
        fd = -1
        try:
            if via is not None and _holds(via, cid):
                os.link(via, path)
                return
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

    def unique_random_name(self, cid: str, *, via: Path | None = None) -> str:
        for _ in range(100):
            name = random_name()
            try:
                self.claim_name(name, cid, via=via)
            except UsageError:
                continue
            return name
        name = f"{random_name()}_{cid[:6]}"
        self.claim_name(name, cid, via=via)
        return name

    # -- records -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, cid: str) -> Iterator[None]:
        """Hold the container's lock (an ``flock`` of its ``state`` file, which is never
        replaced) for a read-modify-write of its state or config."""
        d = self.dir(cid)
        try:
            fd = os.open(d / "state", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # made by an older version (state.json): its lock file
            fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                # Unlock, not only close: a process forked meanwhile by another thread holds a
                # copy of this open file description, and with it the lock, until it execs.
                fcntl.flock(fd, fcntl.LOCK_UN)
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
        """Write the state (under ``locked``, but for a container being created): in place, in
        the slot of the ``state`` file that does not hold the latest state."""
        _write_slots(self.dir(cid), state.to_json())

    def read_state(self, cid: str) -> ContainerState:
        d = self.dir(cid)
        try:
            data = _read_slots(d)
        except FileNotFoundError:
            raise RuntimeFailure(f"no such container: {cid}") from None
        except ValueError as exc:
            raise RuntimeFailure(f"container {cid[:12]}: its state is corrupt: {exc}") from exc
        try:
            return ContainerState.from_json(data)
        except (ValueError, TypeError) as exc:
            raise RuntimeFailure(f"container {cid[:12]}: its state is corrupt: {exc}") from exc

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
        if valid_name(bare) and name_file.exists():
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


# -- the state file -----------------------------------------------------------------------------
# Rewriting a file by rename costs ~0.3-1 ms on ext4 (a new inode, block allocation forced by
# auto_da_alloc); an in-place write of an allocated block ~10 us. So ``state`` has two slots of
# _SLOT bytes, each a header (sequence number, length, CRC-32, in hex) and the JSON. A writer
# (holding the lock) writes the slot that does not hold the latest state; a reader takes the
# valid slot with the highest sequence number. The latest state is never overwritten: a reader
# racing a writer, or a crash mid-write, finds a torn slot invalid and the other one intact.
_SLOT = 4096
_HEAD = 32  # 16 + 8 + 8 hex digits
_MAX_READ_TRIES = 5


def _frame(seq: int, payload: bytes) -> bytes:
    body = b"%016x%08x" % (seq, len(payload)) + payload
    return body[:24] + b"%08x" % zlib.crc32(body) + payload


def _unframe(slot: bytes) -> tuple[int, bytes] | None:
    """(sequence number, JSON) of a valid slot, else None."""
    head = slot[:_HEAD]
    try:
        seq, size, crc = int(head[:16], 16), int(head[16:24], 16), int(head[24:32], 16)
    except ValueError:
        return None
    payload = slot[_HEAD : _HEAD + size]
    if len(payload) != size or zlib.crc32(head[:24] + payload) != crc:
        return None
    return seq, payload


def _latest(raw: bytes) -> tuple[int, int, bytes] | None:
    """(slot index, sequence number, JSON) of the latest valid slot of ``raw``."""
    best: tuple[int, int, bytes] | None = None
    for index in (0, 1):
        found = _unframe(raw[index * _SLOT : (index + 1) * _SLOT])
        if found is not None and (best is None or found[0] > best[1]):
            best = (index, *found)
    return best


def _read_slots(d: Path) -> bytes:
    """The latest state's JSON (``FileNotFoundError``: no state; ``ValueError``: no valid slot
    after a few tries, which a torn read of a concurrent write never needs)."""
    try:
        fd = os.open(d / "state", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # written by an older version
        with open(d / "state.json", "rb") as f:
            return f.read()
    try:
        for attempt in range(_MAX_READ_TRIES):
            found = _latest(os.pread(fd, 2 * _SLOT, 0))
            if found is not None:
                return found[2]
            time.sleep(0.0002 * (attempt + 1))
    finally:
        os.close(fd)
    raise ValueError("no valid copy of the state")


def _write_slots(d: Path, payload: bytes) -> None:
    if len(payload) > _SLOT - _HEAD:  # only a very long error message can do that
        obj = json.loads(payload)
        obj["error"] = obj.get("error", "")[:500] + "..."
        payload = json.dumps(obj, sort_keys=True).encode()
    try:
        fd = os.open(d / "state", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = os.open(d / "state", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.pwrite(fd, _frame(1, payload), 0)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):  # an older version's state, now replaced
            os.unlink(d / "state.json")
        return
    try:
        found = _latest(os.pread(fd, 2 * _SLOT, 0))
        index, seq = (1, 0) if found is None else (1 - found[0], found[1])
        os.pwrite(fd, _frame(seq + 1, payload), index * _SLOT)
    finally:
        os.close(fd)


SPARE_DIRS = ("upper", "work", "rootfs")
SPARE_FILES = ("hostname", "hosts", "resolv.conf", "state", "log", "name", ".config.json")
"""What a spare container directory holds (the container's files are empty, to be written):
``name`` becomes the container's entry in ``names`` (``claim_name``), ``.config.json`` its
``config.json`` (renamed once written)."""


def _holds(path: Path, cid: str) -> bool:
    """Write ``cid`` into the empty file ``path`` (once: True if it holds ``cid`` then)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        data = os.pread(fd, 65, 0)
        if not data:
            os.write(fd, cid.encode())
            return True
        return data == cid.encode()
    finally:
        os.close(fd)


def _remove_dir(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
