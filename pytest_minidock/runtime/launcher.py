"""The launcher: a small helper process that forks containers' monitors for its owner.

Forking the owner (pytest, with tens or hundreds of MB mapped) costs ~5 ms and more per fork,
copy-on-write faults in the monitor and the teardown of the copied address space at exec. So the
owner starts, once and lazily, a fresh interpreter with only the runtime's own small modules
imported (no store, image model or spec), and asks it to fork the monitors instead::

    owner (pytest, an xdist worker)
      └─ launcher       ``python -m pytest_minidock.runtime.launcher FD OWNER_PID``; one per owner
         │              process; PR_SET_PDEATHSIG(SIGKILL), and it exits when its socket closes.
         └─ monitor     forked from the launcher: cheap; the same ``container.Monitor`` code as
            │           the direct path; its PR_SET_PDEATHSIG is relative to the launcher.
            └─ PID 1

The owner's SIGKILL kills the launcher, which kills the monitors, which kill their PID 1s.

Protocol, over a unix stream socketpair: a request is a 4-byte big-endian length and that many
bytes of JSON (``container._Launch.to_wire``: plain data only), sent in one ``sendmsg`` carrying
with SCM_RIGHTS first the write end of the start's sync pipe, then the stdio fds the request says
are present. The launcher answers through the sync pipe, exactly as a directly forked monitor
does: ``P <pid> <monitor_pid>`` once the payload was exec'd, ``E <code> <message>`` if it could
not start (the launcher itself writes ``E 125 …`` when it cannot fork or read the request); the
owner reads the pipe to its end. Nothing flows back on the socket.

Detached containers (the CLI's ``run -d``/``start``) never go through the launcher: they must
outlive their owner. Containers with resource limits neither (the cgroup is handled by the
owner's cgroup manager). ``MINIDOCK_LAUNCHER=0`` (or ``Runtime(launcher=False)``) turns it off.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from typing import Any

from pytest_minidock.errors import RuntimeFailure

__all__ = ["Launcher", "main", "shared"]

_HEADER = struct.Struct(">I")
_MAX_FDS = 4  # the sync pipe, stdin, stdout, stderr
_MAX_REQUEST = 64 << 20


class Launcher:
    """The owner's side: starts the launcher process on first use and sends it requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
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
        data = json.dumps(request, separators=(",", ":")).encode()
        message = _HEADER.pack(len(data)) + data
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
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.returncode is None:  # pragma: no cover - not collected: do not warn
                proc.returncode = -signal.SIGKILL


class _ParentThread:
    """A thread that lives as long as the process and runs what it is given (the launcher's
    parent, so that the launcher's PR_SET_PDEATHSIG stays bound to the owner's lifetime)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: list[tuple[Any, threading.Event]] = []
        threading.Thread(target=self._loop, name="minidock-launcher-parent", daemon=True).start()

    def run(self, job: Any) -> None:
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


_lock = threading.Lock()
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
def _recv_request(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One request and its fds; None at the end of the stream (the owner is gone)."""
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
        return json.loads(b"".join(chunks)), list(fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _serve(sock: socket.socket, wake_r: int) -> None:  # pragma: no cover - the launcher process
    import select
    from pathlib import Path

    from pytest_minidock.runtime._sys import LinuxSyscalls
    from pytest_minidock.runtime.container import EXIT_RUNTIME, Monitor, _Launch
    from pytest_minidock.runtime.state import StateDir

    sys_ = LinuxSyscalls()
    states: dict[str, StateDir] = {}
    me = os.getpid()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                _reap()
                continue
            try:
                got = _recv_request(sock)
            except (OSError, ValueError, EOFError):
                return  # a broken stream: the owner is gone or confused; the monitors die with us
            if got is None:
                return
            request, fds = got
            sync_w, rest = fds[0], fds[1:]
            try:
                launch = _Launch.from_wire(request, rest)
                if launch.root not in states:
                    states[launch.root] = StateDir(Path(launch.root))
                state = states[launch.root]
                pid = os.fork()
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.write(sync_w, f"E {EXIT_RUNTIME} cannot launch: {exc}\n".encode())
                pid = -1
            if pid == 0:
                try:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    sock.close()
                    os.close(wake_r)
                    Monitor(launch, sys_, state).entry(sync_w, False, parent=me)
                finally:
                    os._exit(EXIT_RUNTIME)
            for received in fds:
                with contextlib.suppress(OSError):
                    os.close(received)


def _reap() -> None:  # pragma: no cover - the launcher process
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str]) -> None:  # pragma: no cover - the launcher process
    fd, owner = int(argv[0]), int(argv[1])
    from pytest_minidock.runtime._sys import LinuxSyscalls
    from pytest_minidock.runtime.container import _preload

    LinuxSyscalls().set_pdeathsig(signal.SIGKILL)
    if os.getppid() != owner:  # the owner died before we could ask to die with it
        os._exit(0)
    _preload()
    from pytest_minidock.runtime import container, logs, mounts, state  # noqa: F401

    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    sock = socket.socket(fileno=fd)
    try:
        _serve(sock, wake_r)
    finally:
        os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
