"""The rootless network holder's own processes (see ``holder``, the owners' side): the
supervisor, which stays in the host's namespaces and runs the outbound helper (slirp4netns or
pasta), and the holder, which owns the user and network namespaces and answers the owners'
requests (``serve``).

``python -S -m pytest_minidock.runtime.holderd start DIR`` (what ``holder.ensure`` runs, under
the lock of DIR) forks the supervisor, waits until the holder is ready and recorded in
``DIR/holder.json``, prints ``ok`` (or ``error: …``) and exits; the supervisor lives on in a
session of its own::

    supervisor  waits for its children; when the holder ends (or it is told to: SIGTERM), it
    │           kills the helper and removes the record, then exits
    ├─ holder   PR_SET_PDEATHSIG: dies with the supervisor; a thread per connection
    └─ helper   PR_SET_PDEATHSIG too; slirp4netns also ends when the holder does (--exit-fd)
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import time

from pytest_minidock._record import replace
from pytest_minidock.errors import MinidockError, NetworkError, PrivilegeError, RuntimeFailure
from pytest_minidock.runtime.holder import (
    ENV_OUTBOUND,
    HELPERS,
    PROTOCOL,
    Holder,
    _read,
    _recv,
    _send,
    _write,
)
from pytest_minidock.runtime.state import process_start_time

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pytest_minidock.runtime._sys import Syscalls
    from pytest_minidock.runtime.network import Kernel

__all__ = ["main", "serve"]

_READY_TIMEOUT = 10.0
_CLONE_NEWNET = 0x40000000
_SIGKILL = 9


def serve(
    conn: socket.socket,
    kernel: Kernel,
    *,
    make_socket: Callable[[int, int, int, int], socket.socket] | None = None,
) -> None:
    """Answer the requests of one connection until it closes: ``hello``, ``kernel`` (a
    ``Kernel`` method of ``kernel``, its arguments as JSON) and ``socket`` (one made by
    ``make_socket(pid, family, type, proto)``, passed back)."""
    with conn:
        while True:
            try:
                request, fds = _recv(conn)
            except (OSError, EOFError):
                return
            for fd in fds:  # (nothing is sent to the holder with fds)
                os.close(fd)
            send: list[int] = []
            made: socket.socket | None = None
            try:
                op = request.get("op")
                if op == "hello":
                    answer: dict[str, Any] = {"result": {"version": PROTOCOL, "pid": os.getpid()}}
                elif op == "kernel":
                    answer = {"result": _kernel_call(kernel, request)}
                elif op == "socket" and make_socket is not None:
                    made = make_socket(
                        int(request["pid"]),
                        int(request["family"]),
                        int(request["type"]),
                        int(request.get("proto", 0)),
                    )
                    send = [made.fileno()]
                    answer = {"result": None}
                else:
                    answer = {"error": {"kind": "RuntimeFailure", "message": f"unknown op {op}"}}
            except BaseException as exc:  # reported to the caller, never fatal here
                answer = {"error": _error_to_wire(exc)}
            try:
                _send(conn, answer, send)
            except OSError:
                return
            finally:
                if made is not None:
                    made.close()


def _kernel_call(kernel: Kernel, request: dict[str, Any]) -> Any:
    method = str(request.get("method"))
    args = list(request.get("args") or ())
    kwargs = dict(request.get("kwargs") or {})
    if method == "occupied":
        return [[str(net), what] for net, what in kernel.occupied()]
    if method == "uplink_mtu":
        return kernel.uplink_mtu()
    if method == "link_exists":
        return kernel.link_exists(str(args[0]))
    if method == "create_bridge":
        name, mac, address, prefixlen, mtu = args
        kernel.create_bridge(str(name), str(mac), str(address), int(prefixlen), int(mtu))
        return None
    if method == "delete_link":
        kernel.delete_link(str(args[0]))
        return None
    if method == "release_link":
        kernel.release_link(str(args[0]))
        return None
    if method == "add_endpoint":
        kernel.add_endpoint(int(args[0]), **kwargs)
        return None
    if method == "ports_of":
        return kernel.ports_of([str(b) for b in args[0]])
    if method == "enable_forwarding":
        kernel.enable_forwarding()
        return None
    if method == "nft":
        from pytest_minidock.runtime.network import batch_from_wire

        lines, messages = args
        kernel.nft(batch_from_wire(lines, messages))
        return None
    raise RuntimeFailure(f"unknown kernel method {method}")


def _error_to_wire(exc: BaseException) -> dict[str, Any]:
    """An exception as ``_error_from`` makes it again on the other side."""
    if isinstance(exc, MinidockError):
        kind = type(exc).__name__
        if kind not in ("BridgeMissing", "NetworkError", "PrivilegeError", "RuntimeFailure"):
            kind = next(
                (k.__name__ for k in (NetworkError, PrivilegeError) if isinstance(exc, k)),
                "RuntimeFailure",
            )
        return {"kind": kind, "message": str(exc)}
    if isinstance(exc, OSError):
        message = exc.strerror if exc.strerror else str(exc)
        return {"kind": "OSError", "errno": exc.errno or 0, "message": message}
    return {"kind": "RuntimeFailure", "message": f"{type(exc).__name__}: {exc}"}


def _socket_maker(setns: Callable[[int, int], None]) -> Callable[[int, int, int, int], Any]:
    def make(pid: int, family: int, kind: int, proto: int) -> socket.socket:
        """Made by the calling thread after entering the namespace (and leaving it again: a
        thread of its own, as each connection has)."""
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target, _CLONE_NEWNET)
            try:
                return socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
            finally:
                setns(own, _CLONE_NEWNET)
        finally:
            os.close(own)
            os.close(target)

    return make


def _serve_forever(listener: socket.socket, syscalls: Syscalls) -> None:  # pragma: no cover
    """The holder's loop: a thread per connection (an owner process keeps one open)."""
    import threading

    from pytest_minidock.runtime.network import LinuxKernel

    kernel = LinuxKernel()
    make_socket = _socket_maker(syscalls.setns)
    me = os.geteuid()
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != me:  # (only the user's own processes map to our uid here)
            conn.close()
            continue
        threading.Thread(
            target=serve, args=(conn, kernel), kwargs={"make_socket": make_socket}, daemon=True
        ).start()


def _outbound(pid: int, directory: str, exit_r: int, syscalls: Syscalls) -> tuple[Any, str, str]:
    """Start the outbound helper for the holder ``pid``: (its process or None, its name or "",
    the problem if none runs)."""  # pragma: no cover - the supervisor
    import shutil
    import subprocess

    wanted = os.environ.get(ENV_OUTBOUND, "").strip().lower()
    if wanted in ("none", "off", "0"):
        return None, "", f"{ENV_OUTBOUND}={wanted}"
    names = [wanted] if wanted else list(HELPERS)
    problems: list[str] = []
    for name in names:
        path = shutil.which(name)
        if path is None:
            if wanted:
                problems.append(f"{name} is not installed")
            continue
        log = open(f"{directory}/holder.log", "ab")  # noqa: SIM115 - the helper's stderr
        ready_r, ready_w = os.pipe()
        try:
            if name == "slirp4netns":
                argv = [
                    path,
                    "--configure",
                    "--mtu=65520",
                    "--disable-host-loopback",
                    f"--ready-fd={ready_w}",
                    f"--exit-fd={exit_r}",
                    str(pid),
                    "tap0",
                ]
                keep = [ready_w, exit_r]
            else:
                argv = [path, "-f", "-q", "--config-net", "--no-map-gw"]
                argv += ["-t", "none", "-u", "none", "-T", "none", "-U", "none", str(pid)]
                keep = []
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=keep,
                preexec_fn=lambda: syscalls.set_pdeathsig(_SIGKILL),  # noqa: PLW1509 (1 thread)
                cwd="/",
            )
        except OSError as exc:
            problems.append(f"{name}: {exc.strerror or exc}")
            continue
        finally:
            os.close(ready_w)
            log.close()
        try:
            ok = _wait_ready(proc, pid, ready_r if name == "slirp4netns" else -1)
        finally:
            os.close(ready_r)
        if ok:
            return proc, name, ""
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        problems.append(f"{name} failed: {_last_line(f'{directory}/holder.log') or '?'}")
    if not problems:
        problems.append("neither slirp4netns nor pasta is installed")
    return None, "", "; ".join(problems)


def _wait_ready(proc: Any, pid: int, ready_fd: int) -> bool:  # pragma: no cover - supervisor
    """Until the helper says it is ready (``ready_fd``) or the namespace has a default route."""
    import select

    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready_fd >= 0:
            if select.select([ready_fd], [], [], 0.05)[0]:
                return os.read(ready_fd, 1) == b"1"
        else:
            if _has_default_route(pid):
                return True
            time.sleep(0.005)
    return False


def _has_default_route(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/net/route") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return False
    return any(len(r.split()) > 7 and r.split()[1] == "00000000" for r in rows)


def _last_line(path: str) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        lines = [ln for ln in f.read()[-4096:].decode(errors="replace").splitlines() if ln]
        return lines[-1].strip() if lines else ""
    return ""


def _holder_main(
    directory: str, status_w: int, syscalls: Syscalls, parent: int
) -> None:  # pragma: no cover - the holder process
    """The holder: enter a user namespace and a network namespace, listen, serve forever."""
    from pytest_minidock.runtime import userns

    syscalls.set_pdeathsig(_SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    try:
        userns.enter(userns.runtime_idmap(), syscalls)
        syscalls.unshare(_CLONE_NEWNET)
        syscalls.loopback_up()
        path = f"{directory}/holder.sock"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(64)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(status_w, f"error: {exc}".encode())
        os._exit(1)
    os.write(status_w, b"ok")
    os.close(status_w)
    _serve_forever(listener, syscalls)


def _supervise(directory: str) -> int:  # pragma: no cover - the supervisor process
    """``python -m pytest_minidock.runtime.holder start DIR``: fork the supervisor (which
    outlives this process), report on stdout when the holder is ready, exit."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    if os.fork() != 0:
        os.close(report_w)
        data = b""
        while chunk := os.read(report_r, 4096):
            data += chunk
        sys.stdout.write(data.decode(errors="replace") + "\n")
        sys.stdout.flush()
        return 0 if data == b"ok" else 1
    os.close(report_r)
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)  # (stdout is the starter's pipe: let it end)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)
    try:
        _supervisor(directory, report_w)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report_w, f"error: {exc}".encode())
    finally:
        os._exit(0)


def _supervisor(directory: str, report_w: int) -> None:  # pragma: no cover - supervisor
    import signal

    from pytest_minidock.runtime._sys import LinuxSyscalls

    syscalls = LinuxSyscalls()
    me = os.getpid()
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    exit_r, exit_w = os.pipe()  # slirp4netns's --exit-fd: the holder holds the write end
    pid = os.fork()
    if pid == 0:
        os.close(status_r)
        os.close(exit_r)
        os.close(report_w)
        _holder_main(directory, status_w, syscalls, me)
        os._exit(1)
    os.close(status_w)
    os.close(exit_w)
    status = b""
    while chunk := os.read(status_r, 4096):
        status += chunk
    os.close(status_r)
    if status != b"ok":
        with contextlib.suppress(OSError):
            os.kill(pid, _SIGKILL)
        os.waitpid(pid, 0)
        os.write(report_w, (status.decode(errors="replace") or "error: the holder died").encode())
        return
    proc, name, problem = _outbound(pid, directory, exit_r, syscalls)
    os.close(exit_r)
    helper = proc.pid if proc is not None else 0
    holder = Holder(
        dir=directory,
        pid=pid,
        start=process_start_time(pid) or 0,
        supervisor=me,
        supervisor_start=process_start_time(me) or 0,
        outbound=name,
        problem=problem,
        helper=helper,
        helper_start=(process_start_time(helper) or 0) if helper else 0,
    )
    _write(holder)
    stopping: list[int] = []

    def on_term(signum: int, frame: object) -> None:
        stopping.append(signum)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    os.write(report_w, b"ok")
    os.close(report_w)
    try:
        while True:
            child, _ = os.waitpid(-1, 0)
            if child == pid:
                break
            if child == helper:  # the way out is gone: say so to the next owners
                print(f"minidock holder: {name} exited", file=sys.stderr)
                holder = replace(holder, outbound="", problem=f"{name} exited")
                _write(holder)
                helper = 0
    finally:
        for victim in (pid, helper):
            if victim:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, _SIGKILL)
        recorded = _read(directory)
        if recorded is not None and recorded.pid == pid:
            for name_ in ("holder.json", "holder.sock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{directory}/{name_}")
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, 0)[0]:
                pass


def main(argv: list[str]) -> int:  # pragma: no cover - the supervisor process
    if len(argv) == 2 and argv[0] == "start":
        return _supervise(argv[1])
    print("usage: python -m pytest_minidock.runtime.holder start DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
