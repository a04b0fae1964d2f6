"""The launcher: a small helper process that starts, and monitors, containers for its owner.

Forking the owner (pytest, with tens or hundreds of MB mapped) costs ~5 ms and more per fork,
copy-on-write faults in the child and the teardown of the copied address space at exec. So the
owner starts, once and lazily, a fresh interpreter with only the runtime's own small modules
imported (no store, image model or spec), and asks it to start containers instead::

    owner (pytest, an xdist worker)
      └─ launcher       ``python -m pytest_minidock.runtime.launcher FD OWNER_PID``; one per owner
         │              process; PR_SET_PDEATHSIG(SIGKILL), and it exits when its socket closes.
         │              It is the monitor of its plain containers: logs their output from one
         │              poll loop and records their exits (``_Supervisor``), so a running
         │              container costs no Python process of its own.
         ├─ PID 1       forked from the launcher after ``unshare(CLONE_NEWPID)``; dies with it.
         └─ monitor     only for containers with a terminal or the owner's stdio: forked from the
            └─ PID 1    launcher, the same ``container.Monitor`` code as the direct path.

The owner's SIGKILL kills the launcher, which kills its PID 1s and monitors (and they theirs).

Protocol, over a unix stream socketpair: a request is a 4-byte big-endian length and that many
bytes of JSON (``container._Launch.to_wire``: plain data only), sent in one ``sendmsg`` carrying
with SCM_RIGHTS first the write end of the start's sync pipe, then the fds the request says are
present (``container._Launch.to_wire``: stdio, network, ports, and the exit pipe the launcher
closes once it has recorded the container's exit, which the owner's ``wait`` sleeps on). The
launcher answers through the sync pipe, exactly as a directly forked monitor does:
``P <pid> <monitor_pid>`` once the payload was exec'd, ``E <code> <message>`` if it could not
start (the launcher itself writes ``E 125 …`` when it cannot fork or read the request); the
owner reads the pipe to its end. Nothing flows back on the socket.

Detached containers (the CLI's ``run -d``/``start``) never go through the launcher: they must
outlive their owner. Containers with resource limits neither (the cgroup is handled by the
owner's cgroup manager). ``MINIDOCK_LAUNCHER=0`` (or ``Runtime(launcher=False)``) turns it off.

Rootless (an ordinary user's owner), the launcher first becomes root of a user namespace of its
own (``userns.become_root``: its containers' namespaces all belong to it). It may then not go
back into the host's PID namespace after an ``unshare(CLONE_NEWPID)``, so each PID 1 is forked
by an intermediate child instead, the launcher being a child subreaper (``_fork_pid1_through``).
If it cannot get a user namespace, it answers every request with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from _thread import allocate_lock

from pytest_minidock.errors import RuntimeFailure

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    import subprocess
    import threading
    from collections.abc import Callable
    from typing import Any

__all__ = ["Launcher", "main", "shared"]

_HEADER = struct.Struct(">I")
_PREFORK_DELAY = 0.025
"""Seconds between a start and the fork of the next zygote (and the making of the next spare
directories), unless a container exits first (then at once): that fork (~2 ms during which the
launcher's loop stands still) and the new zygote's namespaces would otherwise compete with the
container being started (for the CPU, the kernel's namespace lock during its ``pivot_root``)
and delay the recording of a quick exit."""
_ZYGOTES = 2
"""Zygotes kept ready: two, so that the next start finds one fully prepared even when the
last one was forked only a moment ago (its new namespaces and mounts take a few ms), and two
starts in a row both find one."""
_HOST_ZYGOTES = 2
"""The same for the host's network, once a container asked for it."""
_SPARES = 2
"""Spare container directories kept ready per state root (``StateDir.make_spare``): each new
zygote makes the missing ones first thing, beside this process (~10 inode creations each,
0.5-5 ms on a busy ext4: the launcher's loop would not answer a start meanwhile)."""
_MAX_PORTS = 64
_MAX_FDS = 5 + _MAX_PORTS  # the sync pipe, stdin, stdout, stderr, the go pipe, port sockets
_MAX_REQUEST = 64 << 20


class Launcher:
    """The owner's side: starts the launcher process on first use and sends it requests."""

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._owner = 0
        self.starts = 0
        """How many launcher processes this object started (for tests)."""

    @property
    def pid(self) -> int:
        """The running launcher's pid, 0 if there is none."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else 0

    def launch(self, request: dict[str, Any], fds: list[int]) -> None:
        """Send one start request with ``fds`` (sync pipe first); start the launcher if needed."""
        message = _encode(request)
        with self._lock:
            for attempt in (1, 2):
                sock = self._ensure()
                try:
                    sent = socket.send_fds(sock, [message], fds)
                    if sent < len(message):
                        sock.sendall(message[sent:])
                    return
                except (BrokenPipeError, ConnectionError) as exc:
                    self._drop()  # it died (killed by someone): start another one
                    if attempt == 2:
                        raise RuntimeFailure(f"the launcher process is gone: {exc}") from exc

    def close(self) -> None:
        """Stop the launcher (its monitors, and so its containers, die with it)."""
        with self._lock:
            self._drop()

    def warm(self) -> None:
        """Start the launcher process now if there is none, without waiting for it: an owner
        that will start containers soon overlaps the launcher's start-up with its own work."""
        with self._lock:
            self._ensure()

    def _at_exit(self) -> None:
        """The owner exits: let the launcher go (it would die with us anyway) and collect it."""
        if self._owner == os.getpid():
            with contextlib.suppress(Exception):
                self.close()

    def _ensure(self) -> socket.socket:
        if self._sock is not None and self._owner == os.getpid() and self.pid:
            return self._sock
        if self._owner != os.getpid():  # a forked copy of the owner: the launcher is not ours
            self._sock = None
            self._proc = None
        else:
            self._drop()
        self._start()
        assert self._sock is not None
        return self._sock

    def _start(self) -> None:
        # (imported here: the launcher process, which imports this module, never needs them)
        import subprocess
        import threading

        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        owner = os.getpid()
        # -S: no site-packages (the runtime needs only the standard library); PYTHONPATH: this
        # very copy of the package.
        argv = [sys.executable, "-S", "-m", __name__, str(theirs.fileno()), str(owner)]
        env = dict(os.environ)
        env["PYTHONPATH"] = _package_parent()
        procs: list[subprocess.Popen[bytes]] = []
        error: list[BaseException] = []

        def spawn() -> None:
            try:
                procs.append(
                    subprocess.Popen(
                        argv,
                        pass_fds=[theirs.fileno()],
                        close_fds=True,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        env=env,
                        cwd="/",
                    )
                )
            except BaseException as exc:  # pragma: no cover - reported below
                error.append(exc)

        try:
            if threading.current_thread() is threading.main_thread():
                spawn()
            else:  # PR_SET_PDEATHSIG fires when the parent *thread* exits: use one that stays
                _parent_thread().run(spawn)
        finally:
            theirs.close()
        if error or not procs:
            mine.close()
            raise RuntimeFailure(f"cannot start the launcher: {error[0] if error else '?'}")
        self._proc, self._sock, self._owner = procs[0], mine, owner
        self.starts += 1
        if self.starts == 1:
            import atexit

            atexit.register(self._at_exit)

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc, self._proc = self._proc, None
        if proc is not None:
            import subprocess

            # Its socket closed, it exits at once (after removing its spare directories); its
            # containers die with it.
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.returncode is None:  # pragma: no cover - not collected: do not warn
                proc.returncode = -signal.SIGKILL


def _encode(request: dict[str, Any]) -> bytes:
    """A request as sent: its length, then its JSON."""
    data = json.dumps(request, separators=(",", ":")).encode()
    return _HEADER.pack(len(data)) + data


class _ParentThread:
    """A thread that lives as long as the process and runs what it is given (the launcher's
    parent, so that the launcher's PR_SET_PDEATHSIG stays bound to the owner's lifetime)."""

    def __init__(self) -> None:
        import threading

        self._cond = threading.Condition()
        self._jobs: list[tuple[Any, threading.Event]] = []
        threading.Thread(target=self._loop, name="minidock-launcher-parent", daemon=True).start()

    def run(self, job: Any) -> None:
        import threading

        done = threading.Event()
        with self._cond:
            self._jobs.append((job, done))
            self._cond.notify()
        done.wait()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job, done = self._jobs.pop(0)
            try:
                job()
            finally:
                done.set()


_lock = allocate_lock()
_singletons: dict[str, Any] = {}  # "parent": the _ParentThread, "launcher": the shared Launcher


def _package_parent() -> str:
    import pytest_minidock

    return os.path.dirname(os.path.dirname(os.path.abspath(pytest_minidock.__file__)))


def _parent_thread() -> _ParentThread:
    with _lock:
        found: _ParentThread | None = _singletons.get("parent")
        if found is None:
            found = _singletons["parent"] = _ParentThread()
        return found


def shared() -> Launcher:
    """This process's launcher (one per owner process, whatever the number of ``Runtime``s:
    a request names its state root)."""
    with _lock:
        found: Launcher | None = _singletons.get("launcher")
        if found is None:
            found = _singletons["launcher"] = Launcher()
        return found


# -- the launcher process ------------------------------------------------------------------------
def _recv_request(sock: socket.socket) -> tuple[dict[str, Any], list[int], bytes] | None:
    """One request, its fds and the message as sent (``_encode``'s bytes, to pass on as it is);
    None at the end of the stream (the owner is gone)."""
    # Not socket.recv_fds: it drops its flags argument, and the fds must be close-on-exec (the
    # sync pipe's write end would otherwise stay open in the payload, and ``start`` block).
    import array

    ints = array.array("i")
    head, ancdata, _, _ = sock.recvmsg(
        _HEADER.size, socket.CMSG_LEN(_MAX_FDS * ints.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            ints.frombytes(data[: len(data) - len(data) % ints.itemsize])
    fds = list(ints)
    if not head:
        for fd in fds:
            os.close(fd)
        return None
    try:
        while len(head) < _HEADER.size:
            more = sock.recv(_HEADER.size - len(head))
            if not more:
                raise EOFError
            head += more
        (size,) = _HEADER.unpack(head)
        if size > _MAX_REQUEST:
            raise ValueError(f"request too large ({size} bytes)")
        chunks: list[bytes] = []
        left = size
        while left:
            chunk = sock.recv(min(left, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        return json.loads(data), list(fds), head + data
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


class _Supervised:
    """One container the launcher monitors itself: its PID 1, output pipes and log."""

    __slots__ = ("code", "exit_fd", "log", "monitor", "open_fds", "pid", "staged")

    def __init__(self, monitor: Any, pid: int, log: Any, fds: tuple[int, int]) -> None:
        self.monitor = monitor
        self.pid = pid
        self.log = log
        self.open_fds = set(fds)
        self.code: int | None = None
        self.exit_fd = -1
        """The owner's exit pipe, closed once the exit is recorded (set once started)."""
        self.staged = ""
        """Its zygote's staged directory (``mounts.premount``), removed once it exited."""
        # (the port sockets of monitor.launch stay open here until the exit is recorded)


class _Zygote:
    """A PID 1 forked ahead of time: already in its own PID, mount, UTS, IPC and cgroup
    namespaces, and network namespace (loopback up) unless made for the host's network, blocked
    until it is handed a request on ``sock``."""

    __slots__ = ("err_r", "out_r", "pid", "sock", "staged", "start")

    def __init__(
        self, pid: int, sock: socket.socket, out_r: int, err_r: int, staged: str = ""
    ) -> None:
        from pytest_minidock.runtime.state import process_start_time

        self.pid = pid
        self.sock = sock
        self.out_r = out_r
        self.err_r = err_r
        self.start = process_start_time(pid)
        """Its start time, read now rather than when a container is recorded running."""
        self.staged = staged
        """Where it mounts an overlay ahead (``mounts.premount``), if it does."""

    def close(self) -> None:
        self.sock.close()
        for fd in (self.out_r, self.err_r):
            with contextlib.suppress(OSError):
                os.close(fd)


class _Supervisor:  # pragma: no cover - the launcher process
    """The launcher as the monitor of its owner's plain containers (no terminal, no stdio).

    Such a container costs no process of its own: PID 1 is forked from here (after
    ``unshare(CLONE_NEWPID)``; ``setns`` back to our own PID namespace afterwards), its output
    is logged by this process's poll loop and its exit recorded here, with the same ``Monitor``
    code as a separate monitor process uses. Containers with a terminal or the owner's stdio
    still get a monitor process each (forwarding to a slow reader must not stall the others).

    PID 1s are kept forked ahead (``_Zygote``, ``_ZYGOTES`` of them): a start then costs no
    fork, no namespace creation and no system mounts (``mounts.plan_kit``: made ahead too), only
    the container's own root filesystem and the exec. Zygotes for the host's network
    (``_HOST_ZYGOTES``, once a container asked for it) share the host's network namespace. A
    new zygote first makes the spare container directories missing (``make_spares``), so that
    this process's loop never stands still for them.
    """

    def __init__(self, sys_: Any, poller: Any) -> None:
        from pytest_minidock.runtime.state import process_start_time

        self.sys = sys_
        self.poller = poller
        self.me = os.getpid()
        self.me_start = process_start_time(self.me)
        self.pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.pidfd = sys_.pidfd_open(self.me)
        self.by_fd: dict[int, tuple[_Supervised, str]] = {}
        self.by_pid: dict[int, _Supervised] = {}
        self.zygotes: list[_Zygote] = []
        """Ready PID 1s, oldest (the most surely done with its preparation) first."""
        self.host_zygotes: list[_Zygote] = []
        """The same for the host's network, once a container asked for that network."""
        self.host_wanted = False
        self.finished = False
        """A container's exit was recorded since the last look: a good moment to prefork."""
        self.states: dict[str, Any] = {}
        """The ``StateDir`` of each state root a request named."""
        self.tag = f"{self.me}-{self.me_start}"
        """What this launcher's spare container directories are named after."""
        self.forked_at = 0.0
        """When the last zygote was forked (it makes the spare directories missing then)."""
        self.last_overlay: tuple[str, str, str] | None = None
        """(state root, ``lowerdir=``, options) of the last start's overlay: what new zygotes
        mount ahead (``mounts.premount``)."""
        self.stale_staged: list[str] = []
        """Staged directories of zygotes that are gone: the next zygote removes them."""
        from pytest_minidock.capabilities import host_root

        self.rootless = not host_root()
        """Root of a user namespace of ours, not of the host (``main`` made it): PID 1s are
        forked through an intermediate process (``_fork_pid1_through``)."""
        if self.rootless:
            sys_.set_child_subreaper()

    def note_overlay(self, request: dict[str, Any]) -> None:
        """Remember the overlay ``request`` mounts (see ``last_overlay``)."""
        from pytest_minidock.runtime.mounts import overlay_parts

        for op in request.get("plan", ()):
            if op[0] == "mount" and op[3] == "overlay":
                parts = overlay_parts(op[5])
                if parts is not None:
                    self.last_overlay = (str(request["root"]), parts[0], parts[3])
                return

    def state(self, root: str) -> Any:
        """The ``StateDir`` of ``root`` (made on first use)."""
        found = self.states.get(root)
        if found is None:
            from pathlib import Path

            from pytest_minidock.runtime.state import StateDir

            found = self.states[root] = StateDir(Path(root))
        return found

    def spares_short(self) -> bool:
        """Whether a state root lacks spare directories."""
        with contextlib.suppress(OSError):
            return any(s.spare_count(self.tag) < _SPARES for s in self.states.values())
        return False

    def make_spares(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Make the spare directories missing (in a zygote, beside the launcher's loop), until
        ``stop()`` says a start is waiting."""
        import fcntl

        for state in list(self.states.values()):
            with contextlib.suppress(OSError):
                room = os.open(state.workroom(self.tag), os.O_RDONLY | os.O_CLOEXEC)
                try:  # one maker at a time (two zygotes would make one spare too many)
                    fcntl.flock(room, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    while state.spare_count(self.tag) < _SPARES and not stop():
                        state.make_spare(self.tag)
                finally:
                    os.close(room)

    def _fork_pid1(self, child: Callable[[int, int], None]) -> tuple[int, int, int]:
        """Fork a PID 1 (new PID namespace) running ``child(out_w, err_w)``; its pid and the
        read ends of its output pipes."""
        from pytest_minidock.runtime import _sys
        from pytest_minidock.runtime.container import EXIT_RUNTIME

        if self.rootless:
            return self._fork_pid1_through(child)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = -1
        try:
            self.sys.unshare(_sys.CLONE_NEWPID)
            try:
                pid = os.fork()
            finally:
                if pid != 0:
                    self.sys.setns(self.pidns, _sys.CLONE_NEWPID)
            if pid == 0:
                try:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    child(out_w, err_w)
                finally:
                    os._exit(EXIT_RUNTIME)
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            if pid != 0:
                os.close(out_w)
                os.close(err_w)
        return pid, out_r, err_r

    def _fork_pid1_through(self, child: Callable[[int, int], None]) -> tuple[int, int, int]:
        """``_fork_pid1`` rootless: our PID namespace is the host's, which the user namespace we
        are root of does not own, so we may not ``setns`` back into it after an ``unshare``.
        An intermediate child unshares and forks PID 1 instead, then exits; PID 1 becomes our
        child (we are a child subreaper) and waits for our ``g`` (sent once we reaped the
        intermediate, so that its parent is us) before its ``PR_SET_PDEATHSIG``. One more
        fork than as root, off the start path for zygotes."""
        from pytest_minidock.runtime import _sys
        from pytest_minidock.runtime.container import EXIT_RUNTIME

        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
        pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
        try:
            mid = os.fork()
        except BaseException:
            for fd in (out_r, out_w, err_r, err_w, gate_r, gate_w, pid_r, pid_w):
                os.close(fd)
            raise
        if mid == 0:  # pragma: no cover - the intermediate child
            status = EXIT_RUNTIME
            try:
                os.close(pid_r)
                os.close(gate_w)
                try:
                    self.sys.unshare(_sys.CLONE_NEWPID)
                    pid = os.fork()
                except OSError as exc:
                    os.write(pid_w, f"E{exc}".encode())
                    raise
                if pid == 0:  # PID 1
                    try:
                        os.close(pid_w)
                        if os.read(gate_r, 1) != b"g":  # the launcher is gone
                            os._exit(EXIT_RUNTIME)
                        os.close(gate_r)
                        signal.set_wakeup_fd(-1)
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        child(out_w, err_w)
                    finally:
                        os._exit(EXIT_RUNTIME)
                os.write(pid_w, str(pid).encode())
                status = 0
            finally:
                os._exit(status)
        for fd in (out_w, err_w, gate_r, pid_w):
            os.close(fd)
        try:
            os.waitpid(mid, 0)
            text = os.read(pid_r, 4096)
            if not text or text.startswith(b"E"):
                why = text[1:].decode(errors="replace") or "its intermediate process died"
                raise RuntimeFailure(f"cannot fork a PID 1: {why}")
            os.write(gate_w, b"g")
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(gate_w)
            os.close(pid_r)
        return int(text), out_r, err_r

    def prefork(self, most: int = _ZYGOTES) -> None:
        """Keep ``most`` zygotes ready, and as many (``_HOST_ZYGOTES`` at most) for the host's
        network once wanted (call with no received descriptor open: they would inherit it)."""
        while len(self.zygotes) < most:
            self._prefork_one(own_net=True)
        while self.host_wanted and len(self.host_zygotes) < min(most, _HOST_ZYGOTES):
            self._prefork_one(own_net=False)

    def stop_zygotes(self) -> None:
        """Kill the zygotes, and the PID 1s they became (which die with this process anyway),
        and collect them: the launcher is about to exit."""
        zygotes = self.zygotes + self.host_zygotes
        self.zygotes, self.host_zygotes = [], []
        pids = [zygote.pid for zygote in zygotes] + list(self.by_pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for zygote in zygotes:
            zygote.close()

    def short(self) -> bool:
        """Whether a zygote is missing."""
        host_short = self.host_wanted and len(self.host_zygotes) < _HOST_ZYGOTES
        return len(self.zygotes) < _ZYGOTES or host_short

    def _prefork_one(self, *, own_net: bool) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        staged, overlay = "", self.last_overlay
        if overlay is not None and os.environ.get("MINIDOCK_PREMOUNT", "1") != "0":
            with contextlib.suppress(OSError):
                room = self.state(overlay[0]).workroom(self.tag)
                staged = f"{room}/z{os.urandom(4).hex()}"
        stale, self.stale_staged = self.stale_staged, []

        def child(out_w: int, err_w: int) -> None:
            from pathlib import Path

            from pytest_minidock.runtime import mounts
            from pytest_minidock.runtime.container import (
                EXIT_RUNTIME,
                Monitor,
                _close_fds_except,
                _Launch,
                _remove_tree,
                unshare_namespaces,
            )

            self.sys.set_pdeathsig(signal.SIGKILL)
            if select.select([self.pidfd], [], [], 0)[0]:
                os._exit(EXIT_RUNTIME)
            # a spare may wait long: it must not pin what the launcher holds for others (their
            # host ports above all, which would stay bound after their exit)
            _close_fds_except({0, 1, 2, theirs.fileno(), out_w, err_w})
            unshare_namespaces(self.sys, own_net=own_net)
            kit = not self.rootless  # (rootless: devices are bound from the host's /dev)
            if kit:  # the system mounts, now rather than at start
                mounts.apply(mounts.plan_kit(), self.sys)
            premounted = None
            # the last start's overlay, for the next one (over the kit's private "/" only:
            # a mount under a shared one would show on the host)
            if staged and overlay is not None and kit:
                with contextlib.suppress(OSError):
                    premounted = mounts.premount(staged, overlay[1], overlay[2], self.sys)

            def asked() -> bool:  # a start is waiting for this process: chores can wait
                return bool(select.select([theirs], [], [], 0)[0])

            # chores for the next starts, unless this one is asked for first (the launcher's
            # own loop stands still for none of them): spare directories, old staged ones
            self.make_spares(asked)
            for path in stale:
                if asked():
                    break
                _remove_tree(Path(path))
            got = _recv_request(theirs)
            if got is None:
                os._exit(0)
            request, fds, _ = got
            launch = _Launch.from_wire(request, fds[1:])
            no_state: Any = None  # (PID 1 records nothing)
            Monitor(launch, self.sys, no_state)._pid1(
                launch,
                sync_w=fds[0],
                out_w=out_w,
                err_w=err_w,
                tty_slave=-1,
                tty_master=-1,
                out_r=-1,
                err_r=-1,
                prepared=True,
                kit_ready=kit,
                premounted=premounted,
            )

        try:
            pid, out_r, err_r = self._fork_pid1(child)
        except BaseException:
            mine.close()
            self.stale_staged += stale
            raise
        finally:
            theirs.close()
        zygote = _Zygote(pid, mine, out_r, err_r, staged)
        (self.zygotes if own_net else self.host_zygotes).append(zygote)
        self.forked_at = time.monotonic()

    def hand_off(self, message: bytes, fds: list[int], *, own_net: bool) -> _Zygote | None:
        """Give a request (``message`` and ``fds`` as received) to a zygote, first thing: PID 1
        sets the container up while this process does its own part (``start``). The zygote
        used, or None (there is none, or it died: ``start`` forks a PID 1 instead)."""
        pool = self.zygotes if own_net else self.host_zygotes
        self.host_wanted = self.host_wanted or not own_net
        if not pool:
            return None
        zygote = pool.pop(0)
        try:
            sent = socket.send_fds(zygote.sock, [message], fds)
            if sent < len(message):
                zygote.sock.sendall(message[sent:])
        except OSError:  # it died: start the usual way
            zygote.close()
            if zygote.staged:
                self.stale_staged.append(zygote.staged)
            return None
        zygote.sock.close()
        return zygote

    def start(self, monitor: Any, sync_w: int, zygote: _Zygote | None) -> None:
        """Start ``monitor.launch`` (PID 1 is ``zygote`` if it was handed the request, else a
        fresh fork), record it running and answer ``P`` on ``sync_w``."""
        from pytest_minidock.runtime.logs import LogWriter

        launch = monitor.launch
        try:
            if zygote is not None:
                pid, out_r, err_r = zygote.pid, zygote.out_r, zygote.err_r
            else:

                def child(out_w: int, err_w: int) -> None:
                    monitor._pid1(
                        launch,
                        sync_w=sync_w,
                        out_w=out_w,
                        err_w=err_w,
                        tty_slave=-1,
                        tty_master=-1,
                        out_r=-1,
                        err_r=-1,
                        parent_pidfd=self.pidfd,
                    )

                pid, out_r, err_r = self._fork_pid1(child)
            log = LogWriter(launch.dir / "log")
        except BaseException:
            if zygote is not None:  # (it is running already: stop it)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(zygote.pid, signal.SIGKILL)
                zygote.close()
            raise
        item = _Supervised(monitor, pid, log, (out_r, err_r))
        item.staged = zygote.staged if zygote is not None else ""
        self.by_pid[pid] = item
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            self.by_fd[fd] = (item, stream)
            self.poller.register(fd, select.POLLIN)
        try:
            started = zygote.start if zygote is not None else None
            if launch.port_fds:  # rootless: relayed from here (one thread for all containers)
                from pytest_minidock.runtime import portfwd

                monitor.relay = portfwd.relay_published(launch.root, launch.cid, launch.port_fds)
            monitor.record_running(pid, self.me, self.me_start, pid_start=started)
        except BaseException as exc:  # no state to run in: stop it, report why
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise RuntimeFailure(f"cannot record container {launch.cid[:12]}: {exc}") from exc
        os.write(sync_w, f"P {pid} {self.me}\n".encode())
        item.exit_fd = launch.exit_fd

    def output(self, fd: int) -> None:
        """Log what PID 1's processes wrote on ``fd`` (closed at its end)."""
        item, stream = self.by_fd[fd]
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if data:
            item.log.write(stream, data)
            return
        self.poller.unregister(fd)
        os.close(fd)
        del self.by_fd[fd]
        item.open_fds.discard(fd)
        self._finish(item)

    def reap(self) -> None:
        """Collect every exited child: our PID 1s (their exit is recorded) and monitors."""
        from pytest_minidock.runtime.container import _exit_code

        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            item = self.by_pid.pop(pid, None)
            if item is not None:
                item.code = _exit_code(status)
                self._finish(item)

    def _finish(self, item: _Supervised) -> None:
        """Record the exit once PID 1 is gone and its output fully logged."""
        if item.code is None or item.open_fds:
            return
        item.log.close()
        with contextlib.suppress(Exception):
            item.monitor.record_exit(item.code)  # (it closes the port sockets too)
        if item.exit_fd >= 0:  # the owner's wait wakes up
            with contextlib.suppress(OSError):
                os.close(item.exit_fd)
            item.exit_fd = -1
        if item.staged:
            self.stale_staged.append(item.staged)
        self.finished = True


def _serve(
    sock: socket.socket, wake_r: int, broken: str = ""
) -> None:  # pragma: no cover - the launcher process
    from pytest_minidock.runtime._sys import LinuxSyscalls

    if broken:  # (rootless, no user namespace: each start is told why)
        _refuse(sock, broken)
        return
    sys_ = LinuxSyscalls()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    supervisor = _Supervisor(sys_, poller)
    try:
        _loop(sock, wake_r, sys_=sys_, supervisor=supervisor)
    finally:  # the owner is gone (or confused): no spare is left behind
        # the zygotes first: one may be making a spare in the room removed below, and would
        # publish it after its contents were removed (a container taking it has no upper dir)
        supervisor.stop_zygotes()
        for state in supervisor.states.values():
            with contextlib.suppress(OSError):
                state.remove_spares(supervisor.tag)


def _loop(
    sock: socket.socket, wake_r: int, *, sys_: Any, supervisor: _Supervisor
) -> None:  # pragma: no cover - the launcher process
    from pytest_minidock.runtime.container import EXIT_RUNTIME, Monitor, _Launch

    me = supervisor.me
    poller = supervisor.poller
    with contextlib.suppress(OSError, RuntimeFailure):
        supervisor.prefork(1)  # (the first request is on its way: the other one later)
    prefork_at: float | None = None
    while True:
        timeout = None if prefork_at is None else max(0.0, prefork_at - time.monotonic()) * 1000
        events = poller.poll(timeout)
        if prefork_at is not None and time.monotonic() >= prefork_at:
            prefork_at = None
            if supervisor.short():  # (new zygotes make the spare directories)
                with contextlib.suppress(OSError, RuntimeFailure):
                    supervisor.prefork()
            elif supervisor.spares_short() and time.monotonic() - supervisor.forked_at > 0.1:
                supervisor.make_spares()  # (only starts that took no zygote: made here then)
        for fd, _ in events:
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                supervisor.reap()
                continue
            if fd != sock.fileno():
                supervisor.output(fd)
                continue
            try:
                got = _recv_request(sock)
            except (OSError, ValueError, EOFError):
                return  # a broken stream: the owner is gone or confused; the containers die with us
            if got is None:
                return
            request, fds, message = got
            sync_w, rest = fds[0], fds[1:]
            with contextlib.suppress(Exception):
                supervisor.note_overlay(request)
            pid = -1
            kept: tuple[int, ...] = ()
            zygote: _Zygote | None = None
            try:
                if int(request.get("ports", 0)) > _MAX_PORTS:
                    raise ValueError(f"more than {_MAX_PORTS} published ports")
                plain = not (request["tty"] or request["stdin"] or request["stdout"])
                plain = plain and not request["stderr"]
                own_net = bool(request["own_net"])
                zygote = supervisor.hand_off(message, fds, own_net=own_net) if plain else None
                launch = _Launch.from_wire(request, rest, plan=zygote is None)
                monitor = Monitor(launch, sys_, supervisor.state(launch.root))
                if plain:
                    supervisor.start(monitor, sync_w, zygote)
                    kept = (*launch.port_fds, launch.exit_fd)
                else:
                    pid = os.fork()
            except BaseException as exc:
                if zygote is not None and zygote.pid not in supervisor.by_pid:
                    with contextlib.suppress(ProcessLookupError):  # handed the request: stop it
                        os.kill(zygote.pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.write(sync_w, f"E {EXIT_RUNTIME} cannot launch: {exc}\n".encode())
            if pid == 0:
                try:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    sock.close()
                    os.close(wake_r)
                    monitor.entry(sync_w, False, parent=me)
                finally:
                    os._exit(EXIT_RUNTIME)
            for received in fds:
                if received not in kept:
                    with contextlib.suppress(OSError):
                        os.close(received)
            # fork the next zygote, make the next spare directory, later (see the delay)
            prefork_at = time.monotonic() + _PREFORK_DELAY
        if supervisor.finished:  # an exit was recorded: the machine is quieter now
            supervisor.finished = False
            if supervisor.short() or supervisor.spares_short():
                prefork_at = time.monotonic()


def _refuse(sock: socket.socket, why: str) -> None:  # pragma: no cover - the launcher process
    """Answer every request with ``E 125 why`` until the owner is gone."""
    from pytest_minidock.runtime.container import EXIT_RUNTIME

    while True:
        try:
            got = _recv_request(sock)
        except (OSError, ValueError, EOFError):
            return
        if got is None:
            return
        _, fds, _ = got
        with contextlib.suppress(OSError):
            os.write(fds[0], f"E {EXIT_RUNTIME} {why}\n".encode())
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def main(argv: list[str]) -> None:  # pragma: no cover - the launcher process
    fd, owner = int(argv[0]), int(argv[1])
    from pytest_minidock.runtime._sys import LinuxSyscalls
    from pytest_minidock.runtime.container import _preload

    sys_ = LinuxSyscalls()
    sys_.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != owner:  # the owner died before we could ask to die with it
        os._exit(0)
    broken = ""
    if os.geteuid() != 0:  # rootless: root of a user namespace of our own, first thing
        from pytest_minidock.errors import MinidockError
        from pytest_minidock.runtime.userns import become_root

        try:
            become_root(sys_)
        except MinidockError as exc:
            broken = str(exc)
        sys_.set_pdeathsig(signal.SIGKILL)  # (kept across the unshare; said again all the same)
        if os.getppid() != owner:
            os._exit(0)
    _preload()
    from pytest_minidock.runtime import container, logs, mounts, state  # noqa: F401

    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    sock = socket.socket(fileno=fd)
    try:
        _serve(sock, wake_r, broken)
    finally:
        os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
