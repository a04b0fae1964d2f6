"""The network holder of rootless mode: one process per user owning a user namespace and a
network namespace in which that user's container networks live, and doing their privileged work.

An ordinary user can make bridges, veths and nftables rules only in a network namespace owned by
a user namespace of their own. The user's processes (pytest, the CLI: the *owners*) stay in the
host's namespaces, so that pulls, registries and published ports are the host's; the networks
live in the holder's network namespace instead, where ``network.LinuxKernel`` works unchanged::

    supervisor   ``python -S -m pytest_minidock.runtime.holderd``: the host's namespaces; runs
    │            the outbound helper; stops everything when the holder or it is stopped
    ├─ holder    user namespace (``/etc/subuid`` map through newuidmap, else the single
    │            mapping) + network namespace; serves the owners' network requests on a unix
    │            socket (``HolderKernel``: ``network.Kernel`` over that socket) and makes
    │            sockets in containers' network namespaces for them (``socket_in``)
    └─ slirp4netns / pasta   outbound access for the namespace (tap device, NAT in user space)

A container's processes (the launcher, a directly forked monitor) join the holder's *user*
namespace first thing (``enter``; ``userns.become_root`` calls it) and stay in the host's network
namespace, which ``--network host`` containers share; a container with a network of its own
makes one owned by that user namespace, so the holder may enter it to put its veth in. A
published port is bound on the host by the owner (``ports.reserve``) and relayed in by the
container's monitor or launcher, from a thread that moved into the holder's network namespace
(``enter_network``, ``portfwd.relay_published``). ``joined`` tells such a process from root.

Its pids and start times are recorded in ``holder.json`` in the user's runtime directory
(``user_dir``: ``$XDG_RUNTIME_DIR/minidock``, else ``/run/user/UID/minidock``, else
``/tmp/minidock-UID``; ``holder-full/`` or ``holder-single/`` there, one per id map, see
``kind``), and it is started under a file lock there, so that concurrent processes make one; a
dead one (pid gone or reused, by its start time) is replaced. Like podman's pause process it
stays when its last container is gone (networks persist, as for root); ``stop`` ends it (its
networks go with it: their next use makes them again).

Without slirp4netns or pasta (Debian packages ``slirp4netns``, ``passt``), or when they cannot
run (they need ``/dev/net/tun`` to be mode 0666), networks still connect containers and
published ports still work, but containers reach nothing outside; a message says so once per
process. ``MINIDOCK_ROOTLESS_NET`` chooses: ``slirp4netns``, ``pasta`` or ``none``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
import sys
import time
from _thread import allocate_lock

from pytest_minidock._record import dataclass
from pytest_minidock.capabilities import forget_userns, host_uid
from pytest_minidock.errors import MinidockError, NetworkError, PrivilegeError, RuntimeFailure

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Iterable, Sequence
    from typing import Any

    from pytest_minidock.runtime._sys import Syscalls

__all__ = [
    "ENV_DIR",
    "ENV_OUTBOUND",
    "PROTOCOL",
    "Holder",
    "HolderKernel",
    "current",
    "ensure",
    "enter",
    "enter_network",
    "holder_dir",
    "joined",
    "kind",
    "namespace_fds",
    "no_outbound_message",
    "socket_in",
    "stop",
    "user_dir",
]

PROTOCOL = 1
"""The version of the holder's protocol (recorded): one of another version is replaced."""
ENV_DIR = "MINIDOCK_RUNTIME_DIR"
"""Overrides ``user_dir`` (tests use a private one)."""
ENV_OUTBOUND = "MINIDOCK_ROOTLESS_NET"
"""``slirp4netns``, ``pasta`` or ``none``; unset: the first of ``HELPERS`` that is found."""
HELPERS = ("slirp4netns", "pasta")
"""Tried in this order. slirp4netns first: Debian 12's pasta (2023-03) now and then never passes a
server's close on to the container (a client waiting for it hangs), and slirp4netns's
``--exit-fd`` ties its life to the holder's."""
_HEADER = struct.Struct(">I")
_MAX_MESSAGE = 16 << 20
_START_TIMEOUT = 30.0
_READY_TIMEOUT = 10.0
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIGKILL = 9
_SIGTERM = 15


# -- where and who --------------------------------------------------------------------------------
def user_dir(environ: dict[str, str] | None = None, *, make: bool = True) -> str:
    """The user's private runtime directory for minidock (``$MINIDOCK_RUNTIME_DIR``, else
    ``$XDG_RUNTIME_DIR/minidock``, else ``/run/user/UID/minidock``, else ``/tmp/minidock-UID``),
    made (mode 0700) if ``make``. ``PrivilegeError`` if it exists but is not private to us."""
    env = os.environ if environ is None else environ
    uid = host_uid()
    path = env.get(ENV_DIR, "")
    if not path:
        base = env.get("XDG_RUNTIME_DIR", "")
        if not (base and _owned_dir(base)):
            base = f"/run/user/{uid}"
        path = f"{base}/minidock" if _owned_dir(base) else f"/tmp/minidock-{uid}"
    if make:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        _check_private(path)
    return path


def kind(uid_map: str = "/proc/self/uid_map") -> str:
    """Which holder this process's containers use: ``full`` (the ``/etc/subuid`` map through
    newuidmap) or ``single`` (the user's own id only: no subordinate ids or helpers, or
    ``MINIDOCK_USERNS=single``). Each has its own user namespace, so each its own holder. (A
    process in a holder's user namespace already: that one's, by its map.)"""
    from pytest_minidock.capabilities import in_initial_userns

    if not in_initial_userns(uid_map):
        try:
            with open(uid_map) as f:
                ids = sum(int(line.split()[2]) for line in f if line.strip())
        except (OSError, ValueError, IndexError):
            ids = 1
        return "full" if ids > 1 else "single"
    from pytest_minidock.runtime.userns import runtime_idmap

    return "full" if runtime_idmap().helpers else "single"


def holder_dir(which: str | None = None, *, make: bool = True) -> str:
    """The directory of the user's holder of kind ``which`` (default ``kind()``), made if
    ``make`` (with the runtime directory)."""
    path = f"{user_dir(make=make)}/holder-{which or kind()}"
    if make:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    return path


def _owned_dir(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def _check_private(path: str) -> None:
    import stat

    try:
        st = os.lstat(path)
    except OSError as exc:
        raise PrivilegeError(f"cannot use {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PrivilegeError(
            f"{path} is not a private directory of this user (it must be one, mode 0700): "
            f"remove it or set {ENV_DIR}"
        )


# -- the record -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Holder:
    """A running holder, as ``holder.json`` records it."""

    dir: str
    pid: int
    start: int
    supervisor: int = 0
    supervisor_start: int = 0
    outbound: str = ""
    """``slirp4netns`` or ``pasta``; empty: containers reach nothing outside (see ``problem``)."""
    problem: str = ""
    """Why there is no outbound access, if there is none."""
    helper: int = 0
    helper_start: int = 0
    version: int = PROTOCOL

    @property
    def socket(self) -> str:
        return f"{self.dir}/holder.sock"

    def alive(self) -> bool:
        return _running(self.pid, self.start)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start": self.start,
            "supervisor": self.supervisor,
            "supervisor_start": self.supervisor_start,
            "outbound": self.outbound,
            "problem": self.problem,
            "helper": self.helper,
            "helper_start": self.helper_start,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, directory: str, obj: dict[str, Any]) -> Holder:
        return cls(
            dir=directory,
            pid=int(obj["pid"]),
            start=int(obj["start"]),
            supervisor=int(obj.get("supervisor", 0)),
            supervisor_start=int(obj.get("supervisor_start", 0)),
            outbound=str(obj.get("outbound", "")),
            problem=str(obj.get("problem", "")),
            helper=int(obj.get("helper", 0)),
            helper_start=int(obj.get("helper_start", 0)),
            version=int(obj.get("version", 0)),
        )


def _running(pid: int, start: int) -> bool:
    """Whether ``pid`` is the process that started at ``start`` and has not exited (a zombie
    waiting for its parent has)."""
    from pytest_minidock.runtime.state import process_start_time

    return pid > 0 and process_start_time(pid, running=True) == start


def _read(directory: str) -> Holder | None:
    try:
        with open(f"{directory}/holder.json", "rb") as f:
            return Holder.from_json(directory, json.loads(f.read()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(holder: Holder) -> None:
    tmp = f"{holder.dir}/.holder.json.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(holder.to_json(), f)
    os.rename(tmp, f"{holder.dir}/holder.json")


def current(directory: str | None = None) -> Holder | None:
    """The user's running holder, or None (none recorded, or it is gone)."""
    found = _read(directory or holder_dir(make=False))
    if found is None or not found.alive() or found.version != PROTOCOL:
        return None
    return found


def ensure(directory: str | None = None) -> Holder:
    """The user's running holder, started if there is none (under the directory's lock, so
    concurrent callers make one). ``PrivilegeError`` when it cannot be made (user namespaces
    disabled, say), naming why."""
    directory = directory or holder_dir()
    found = current(directory)
    if found is not None:
        return found
    if joined():  # (a monitor of the holder that was: a new one could not reach its containers)
        raise RuntimeFailure(f"the rootless network holder recorded in {directory} is gone")
    import fcntl

    fd = os.open(f"{directory}/holder.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        old = _read(directory)
        if old is not None and old.alive() and old.version == PROTOCOL:
            return old  # made meanwhile by another process
        if old is not None:
            _kill(old)  # what is left of a dead one (or of another version)
        return _start(directory)
    finally:
        os.close(fd)


def _kill(holder: Holder, sig: int = _SIGKILL) -> None:
    """Signal the holder's processes that are still the recorded ones (by start time)."""
    for pid, start in (
        (holder.supervisor, holder.supervisor_start),
        (holder.pid, holder.start),
        (holder.helper, holder.helper_start),
    ):
        if _running(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _start(directory: str) -> Holder:
    import subprocess

    from pytest_minidock.runtime import userns

    log = f"{directory}/holder.log"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{directory}/holder.json")
    argv = [sys.executable, "-S", "-m", "pytest_minidock.runtime.holderd", "start", directory]
    env = dict(os.environ)
    env["PYTHONPATH"] = _package_parent()
    with open(log, "wb") as err:
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd="/",
                timeout=_START_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeFailure(
                f"the rootless network holder did not start in {_START_TIMEOUT:.0f}s (see {log})"
            ) from exc
    text = done.stdout.decode(errors="replace").strip()
    found = _read(directory)
    if done.returncode != 0 or found is None or not found.alive():
        reason = text.removeprefix("error: ") or f"exit status {done.returncode}, see {log}"
        unavailable = userns.unavailable_reason()
        if unavailable and unavailable not in reason:
            reason += f" ({unavailable})"
        raise PrivilegeError(f"cannot start the rootless network holder: {reason}")
    return found


def _package_parent() -> str:
    import pytest_minidock

    return os.path.dirname(os.path.dirname(os.path.abspath(pytest_minidock.__file__)))


def stop(directory: str | None = None, timeout: float = 5.0) -> bool:
    """Stop the user's holder (its networks go with it; containers still in its namespaces
    keep them until they exit). Whether there was one."""
    directory = directory or holder_dir(make=False)
    found = _read(directory)
    if found is None:
        return False
    was_alive = found.alive()
    _kill(found, _SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (found.alive() or _alive_supervisor(found)):
        time.sleep(0.005)
    _kill(found)
    for name in ("holder.json", "holder.sock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{directory}/{name}")
    _Client.forget()
    return was_alive


def _alive_supervisor(holder: Holder) -> bool:
    return _running(holder.supervisor, holder.supervisor_start)


# -- joining --------------------------------------------------------------------------------------
def namespace_fds(found: Holder | None = None) -> tuple[int, int]:
    """Open the holder's user and network namespaces (``ensure``-d): (user fd, net fd), to pass
    to ``enter`` later, e.g. in a forked child. ``RuntimeFailure`` if it is gone meanwhile."""
    holder = found or ensure()
    fds: list[int] = []
    try:
        for ns in ("user", "net"):
            fds.append(os.open(f"/proc/{holder.pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC))
        if not holder.alive():
            raise FileNotFoundError(errno.ESRCH, "no such process")
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise RuntimeFailure(
            f"the rootless network holder (pid {holder.pid}) is gone: {exc.strerror or exc}"
        ) from exc
    return fds[0], fds[1]


def enter(
    found: Holder | None = None,
    *,
    fds: tuple[int, int] | None = None,
    net: bool = False,
    syscalls: Syscalls | None = None,
) -> None:
    """Join the holder's user namespace (``fds`` from ``namespace_fds``, else opened now), and
    with ``net`` its network namespace too: afterwards this process is uid 0 there, with every
    capability over the holder's namespaces and those it makes. The caller must have one thread
    (a user namespace is joined by a single-threaded process only).

    Without ``net`` (what containers' processes do) it stays in the host's network namespace,
    which containers on ``--network host`` share; containers with a network of their own make
    one owned by this user namespace, which the holder may enter to wire it up."""
    if syscalls is None:
        from pytest_minidock.runtime._sys import LinuxSyscalls

        syscalls = LinuxSyscalls()
    user_fd, net_fd = fds if fds is not None else namespace_fds(found)
    joins = [(user_fd, _CLONE_NEWUSER, "user")]
    if net:
        joins.append((net_fd, _CLONE_NEWNET, "net"))
    try:
        for fd, kind, name in joins:
            if _same_namespace(fd, name):  # (joining one's own user namespace is EINVAL)
                continue
            try:
                syscalls.setns(fd, kind)
            except OSError as exc:
                raise PrivilegeError(
                    f"cannot join the rootless network holder's {name} namespace: "
                    f"{exc.strerror or exc}"
                ) from exc
    finally:
        if fds is None:
            os.close(user_fd)
            os.close(net_fd)
    forget_userns()
    _Joined.done = True
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    with contextlib.suppress(OSError):  # (denied under the single mapping: nothing to drop)
        os.setgroups([])


class _Joined:
    done = False


def joined() -> bool:
    """Whether this process (or the one it was forked from) joined a holder with ``enter``: a
    rootless container's monitor or launcher, whose network work the holder does
    (``HolderKernel``) and whose published ports it relays (``portfwd.relay_published``)."""
    return _Joined.done


def enter_network(found: Holder | None = None, *, syscalls: Syscalls | None = None) -> None:
    """Move the calling *thread* into the holder's network namespace, for good (a process in
    the holder's user namespace may enter it, but not go back to the host's): the rootless
    relay of published ports connects from there (``portfwd.relay_published``)."""
    if syscalls is None:
        from pytest_minidock.runtime._sys import LinuxSyscalls

        syscalls = LinuxSyscalls()
    user_fd, net_fd = namespace_fds(found)
    os.close(user_fd)
    try:
        syscalls.setns(net_fd, _CLONE_NEWNET)
    except OSError as exc:
        raise PrivilegeError(
            f"cannot enter the rootless network holder's network namespace: {exc.strerror or exc}"
        ) from exc
    finally:
        os.close(net_fd)


def _same_namespace(fd: int, name: str) -> bool:
    ours = os.stat(f"/proc/thread-self/ns/{name}")
    theirs = os.fstat(fd)
    return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)


# -- the owners' side -----------------------------------------------------------------------------
def no_outbound_message(holder: Holder) -> str:
    """What to tell a user whose holder gives containers no way out."""
    why = holder.problem or "neither slirp4netns nor pasta is installed"
    return (
        f"minidock: rootless networks have no outbound access ({why}): containers reach each "
        "other and published ports work, but nothing outside; install slirp4netns or passt "
        "(pasta), which need /dev/net/tun to be mode 0666"
    )


class _Once:
    warned = False


def _warn_no_outbound(holder: Holder) -> None:
    if not holder.outbound and not _Once.warned:
        _Once.warned = True
        print(no_outbound_message(holder), file=sys.stderr)


_NONE = object()
"""``_Client.call``'s answer when no holder runs and none was to be started."""


class _Client:
    """This process's connection to the holder (one, shared by threads; another one in a
    forked child)."""

    _lock = allocate_lock()
    _sock: socket.socket | None = None
    _pid = 0
    _holder: Holder | None = None

    @classmethod
    def forget(cls) -> None:
        with cls._lock:
            cls._drop()

    @classmethod
    def _drop(cls) -> None:
        if cls._sock is not None and cls._pid == os.getpid():
            cls._sock.close()
        cls._sock, cls._holder = None, None

    @classmethod
    def call(cls, request: dict[str, Any], *, start: bool = True) -> tuple[Any, list[int]]:
        """Send ``request``; the answer's result and the fds it carried. Restarts the holder
        (and retries once) if it is gone; without ``start``, ``(_NONE, [])`` when no holder
        runs (for what only looks or removes: a holder that is gone took everything along)."""
        with cls._lock:
            for attempt in (1, 2):
                sock = cls._connected(start)
                if sock is None:
                    return _NONE, []
                try:
                    _send(sock, request)
                    answer, fds = _recv(sock)
                except (OSError, EOFError) as exc:
                    cls._drop()
                    if attempt == 2:
                        raise RuntimeFailure(
                            f"the rootless network holder does not answer: {exc}"
                        ) from exc
                    continue
                if "error" in answer:
                    for fd in fds:
                        os.close(fd)
                    raise _error_from(answer["error"])
                return answer.get("result"), fds
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _connected(cls, start: bool = True) -> socket.socket | None:
        if cls._sock is not None and cls._pid == os.getpid():
            holder = cls._holder
            if holder is not None and holder.alive():
                return cls._sock
            cls._drop()
        cls._sock = None
        if start:
            holder = ensure()
        else:
            found = current()
            if found is None:
                return None
            holder = found
        _warn_no_outbound(holder)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(holder.socket)
        except OSError as exc:
            sock.close()
            raise RuntimeFailure(
                f"cannot reach the rootless network holder at {holder.socket}: {exc.strerror}"
            ) from exc
        cls._sock, cls._pid, cls._holder = sock, os.getpid(), holder
        return sock


def _error_from(error: dict[str, Any]) -> BaseException:
    kind, message = str(error.get("kind", "")), str(error.get("message", ""))
    if kind == "BridgeMissing":
        from pytest_minidock.runtime.network import BridgeMissing

        return BridgeMissing(message)
    if kind == "OSError":
        code = int(error.get("errno") or 0)
        return OSError(code, message) if code else OSError(message)
    known: dict[str, type[MinidockError]] = {
        "NetworkError": NetworkError,
        "PrivilegeError": PrivilegeError,
        "RuntimeFailure": RuntimeFailure,
    }
    return known.get(kind, RuntimeFailure)(message)


class HolderKernel:
    """``network.Kernel`` for an ordinary user: every call is made by the holder, in its
    network namespace. What makes something starts the holder if none runs; what only looks or
    removes (and nftables rules, rendered whole with a bridge made anew) does not: a holder that
    is gone took its links and rules along. ``occupied`` adds the host's own addresses and
    routes, so that no network hides a place of the host's from the containers."""

    def _call(self, method: str, *args: Any, start: bool = True) -> Any:
        result, fds = _Client.call({"op": "kernel", "method": method, "args": args}, start=start)
        for fd in fds:
            os.close(fd)
        return result

    def occupied(self) -> list[tuple[ipaddress.IPv4Network, str]]:
        import ipaddress

        from pytest_minidock.runtime.network import LinuxKernel

        found = [(ipaddress.IPv4Network(n), what) for n, what in self._call("occupied")]
        with contextlib.suppress(OSError):  # (a dump needs no privilege)
            found += [(n, f"{what} (host)") for n, what in LinuxKernel().occupied()]
        return found

    def uplink_mtu(self) -> int:
        return int(self._call("uplink_mtu"))

    def link_exists(self, name: str) -> bool:
        found = self._call("link_exists", name, start=False)
        return found is not _NONE and bool(found)

    def create_bridge(self, name: str, mac: str, address: str, prefixlen: int, mtu: int) -> None:
        self._call("create_bridge", name, mac, address, prefixlen, mtu)

    def delete_link(self, name: str) -> None:
        self._call("delete_link", name, start=False)  # (no holder: no link)

    def release_link(self, name: str) -> None:
        self._call("release_link", name, start=False)

    def add_endpoint(self, pid: int, **kwargs: Any) -> None:
        _, fds = _Client.call(
            {"op": "kernel", "method": "add_endpoint", "args": [pid], "kwargs": kwargs}
        )
        for fd in fds:
            os.close(fd)

    def ports_of(self, bridges: Iterable[str]) -> dict[str, list[str]]:
        found = self._call("ports_of", sorted(bridges), start=False)
        if found is _NONE:
            return {}
        return {str(k): [str(x) for x in v] for k, v in found.items()}

    def enable_forwarding(self) -> None:
        self._call("enable_forwarding")

    def nft(self, batch: Any) -> None:  # (an ``nftables.Batch``: network's own module)
        # (no holder: no table; one is rendered whole with the next bridge, see ``Networks``)
        messages = [[kind, flags, body.hex()] for kind, flags, body in batch.messages]
        self._call("nft", list(batch.lines), messages, start=False)


def socket_in(pid: int, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket made in the network namespace of process ``pid`` (a rootless container's PID 1)
    by the holder, which may enter it where the calling process may not."""
    _, fds = _Client.call(
        {"op": "socket", "pid": pid, "family": family, "type": kind, "proto": proto}
    )
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise RuntimeFailure("the rootless network holder sent no socket")
    return socket.socket(fileno=fds[0])


# -- the wire -------------------------------------------------------------------------------------
def _send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    frame = _HEADER.pack(len(data)) + data
    sent = socket.send_fds(sock, [frame], list(fds)) if fds else sock.send(frame)
    if sent < len(frame):
        sock.sendall(frame[sent:])


def _recv(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and the fds that came with it; ``EOFError`` at the end of the stream."""
    import array

    ints = array.array("i")
    head, ancdata, _, _ = sock.recvmsg(
        _HEADER.size, socket.CMSG_LEN(4 * ints.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            ints.frombytes(data[: len(data) - len(data) % ints.itemsize])
    fds = list(ints)
    try:
        if not head:
            raise EOFError("the other end closed the connection")
        while len(head) < _HEADER.size:
            more = sock.recv(_HEADER.size - len(head))
            if not more:
                raise EOFError("the other end closed the connection")
            head += more
        (size,) = _HEADER.unpack(head)
        if size > _MAX_MESSAGE:
            raise EOFError(f"message too large ({size} bytes)")
        chunks: list[bytes] = []
        while size:
            chunk = sock.recv(min(size, 1 << 20))
            if not chunk:
                raise EOFError("the other end closed the connection")
            chunks.append(chunk)
            size -= len(chunk)
        obj = json.loads(b"".join(chunks))
        if not isinstance(obj, dict):
            raise EOFError("a message is not a JSON object")
        return obj, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
