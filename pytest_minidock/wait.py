"""Readiness: when a container is ready for a test, checked from outside its image.

A *strategy* says what "ready" means; ``until_ready`` polls it with backoff until it holds, the
time runs out, or the container exits (then it fails at once with the exit code and the last log
lines). Strategies are immutable values, combined with ``&`` (all) and ``|`` (any)::

    wait.ports()                                  # the default: published/EXPOSEd TCP ports LISTEN
    wait.tcp(6379)                                # one port LISTENs (socket table, no shell needed)
    wait.http(8000, "/health", status=200, body=r"ok")
    wait.log(r"ready to accept connections", times=2)
    wait.exec("pg_isready -U postgres")           # exit code 0 inside the container
    wait.healthy()                                # the image's HEALTHCHECK, at its own pace
    wait.tcp(5432) & wait.log("ready")            # == wait.all(...); ``|`` == wait.any(...)
    wait.none()                                   # hand the container over as soon as it runs

Port checks read the container's socket table from the host, so they work on images without a
shell or any tool: a target may answer ``listening`` itself (the fixtures' handle asks the
kernel's ``sock_diag`` for LISTEN sockets only, ~40 us a look), else ``/proc/<PID 1>/net/tcp6``
and ``tcp`` (state ``0A`` = LISTEN) are read, which walks every connection bucket of the machine
(~3 ms a table on a big one). HTTP checks
connect through the published port when there is one, else from inside the container's network
namespace. Nothing here imports the rest of the library: a strategy talks to a ``Target``
(the fixtures' ``Container`` handle is one).
"""

from __future__ import annotations

import abc
import builtins
import os
import re
import struct
import time
from typing import TYPE_CHECKING, Any, Protocol

from pytest_minidock._record import dataclass
from pytest_minidock.errors import RuntimeFailure

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Collection, Mapping, Sequence

__all__ = [
    "ContainerExited",
    "NotReady",
    "Probe",
    "ReadinessTimeout",
    "Step",
    "Strategy",
    "Target",
    "Unhealthy",
    "all",
    "any",
    "diag_listening_ports",
    "exec",
    "healthy",
    "http",
    "listening_ports",
    "log",
    "none",
    "ports",
    "tcp",
    "until_ready",
]

LOG_LINES = 20
"""How many of the container's last log lines a readiness failure quotes."""
FIRST_POLL = 0.0005
MAX_POLL = 0.1
"""The poll interval starts at ``FIRST_POLL`` seconds and grows by half up to ``MAX_POLL``: a
service that listens within milliseconds (most do) is seen within a millisecond or two of it,
for a few cheap looks (a socket table read is ~50 us)."""
_LISTEN = "0A"
_SHORT_READ = 3584
"""A read of a socket table returns whole lines up to one page (4096 bytes): one this short
means the table ended (a line is under 200 bytes), so the read that would say so is skipped."""
_NS = 1e-9


# -- errors ----------------------------------------------------------------------------------------
class NotReady(RuntimeFailure):
    """A container did not become ready; ``str()`` names it, says why, and quotes its logs."""

    def __init__(self, message: str, *, container: str = "", logs: str = "") -> None:
        self.container = container
        self.logs = logs
        if logs:
            message += f"\nlast log lines of container {container}:\n{logs}"
        super().__init__(message)


class ContainerExited(NotReady):
    """The container exited while we waited for it (``exit_code`` is its code)."""

    def __init__(
        self, message: str, *, exit_code: int, container: str = "", logs: str = ""
    ) -> None:
        self.exit_code = exit_code
        super().__init__(message, container=container, logs=logs)


class ReadinessTimeout(NotReady):
    """The container ran, but was not ready before the timeout."""


class Unhealthy(NotReady):
    """A check failed for good (the image's HEALTHCHECK ran out of retries, or cannot run)."""


# -- the container, as strategies see it ---------------------------------------------------------
class Target(Protocol):
    """What a strategy may ask of a container.

    A target may also have ``listening(wanted: Collection[int]) -> set[int]``: the TCP ports of
    ``wanted`` (or more) that LISTEN in its network namespace; without it, port checks read
    ``/proc/<pid1()>/net/tcp6`` and ``tcp``.
    """

    @property
    def name(self) -> str: ...

    def pid1(self) -> int:
        """The host pid of the container's PID 1 (0 when it does not run)."""
        ...

    def exit_code(self) -> int | None:
        """None while the container runs, else its exit code."""
        ...

    def tcp_ports(self) -> list[int]:
        """The container's published and EXPOSEd TCP ports."""
        ...

    def connect(self, port: int, timeout: float) -> socket.socket:
        """A TCP connection to the container's ``port`` (via its published address if any)."""
        ...

    def run(self, argv: Sequence[str]) -> tuple[int, bytes]:
        """Run ``argv`` in the container; its exit code and output."""
        ...

    def log_text(self) -> str:
        """Everything the container wrote so far (stdout and stderr, interleaved)."""
        ...

    def healthcheck(self) -> Mapping[str, Any] | None:
        """The image's HEALTHCHECK as docker writes it (``Test``, ``Interval`` ns, …) or None."""
        ...


@dataclass(frozen=True, slots=True)
class Step:
    """One check's outcome: ready or not, what is missing, and when to look again."""

    ready: bool
    detail: str = ""
    delay: float | None = None
    """The earliest re-check this check wants, in seconds (None: the poller's backoff)."""


class Probe(Protocol):
    """A strategy's checking state for one container (``Strategy.probe`` makes a fresh one)."""

    def check(self, target: Target, elapsed: float) -> Step: ...


class Strategy(abc.ABC):
    """What "ready" means. Combine with ``&`` (all must hold) and ``|`` (one is enough)."""

    @abc.abstractmethod
    def probe(self) -> Probe:
        """A fresh checking state for one container."""

    def __and__(self, other: Strategy) -> Strategy:
        return all(self, other)

    def __or__(self, other: Strategy) -> Strategy:
        return any(self, other)

    def __repr__(self) -> str:
        return f"wait.{self}"


class _Stateless(Strategy):
    """A strategy whose checks need no memory: it is its own probe."""

    def probe(self) -> Probe:
        return self

    @abc.abstractmethod
    def check(self, target: Target, elapsed: float) -> Step:
        """One look at ``target``, ``elapsed`` seconds into the wait."""


# -- the socket table ----------------------------------------------------------------------------
def listening_ports(pid: int, wanted: Collection[int] | None = None) -> set[int]:
    """TCP ports in LISTEN state in the network namespace of ``pid`` (IPv6 table, then IPv4).

    With ``wanted``, reading stops as soon as all of them were seen: the kernel walks its whole
    connection table for every read of these files (milliseconds on a big machine), and listening
    sockets come first. A short read ends a table without the extra read that would say so.
    """
    found: set[int] = set()
    goal = None if wanted is None else set(wanted)
    for table in ("tcp6", "tcp"):
        try:
            fd = os.open(f"/proc/{pid}/net/{table}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            carry, header = b"", True
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                *lines, carry = (carry + chunk).split(b"\n")
                for line in lines:
                    if header:
                        header = False
                        continue
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == _LISTEN.encode():
                        found.add(int(fields[1].rsplit(b":", 1)[1], 16))
                if goal is not None and goal <= found:
                    return found
                if len(chunk) < _SHORT_READ:  # the kernel stopped early: the table ended
                    break
        except OSError:
            pass
        finally:
            os.close(fd)
    return found


NETLINK_SOCK_DIAG = 4
"""The netlink protocol of ``diag_listening_ports``' socket."""
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x301
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCPF_LISTEN = 1 << 10
_AF_INET, _AF_INET6, _IPPROTO_TCP = 2, 10, 6


def diag_listening_ports(sock: socket.socket) -> set[int]:
    """TCP ports in LISTEN state in the network namespace of ``sock``, a netlink
    ``NETLINK_SOCK_DIAG`` socket made there, IPv6 and IPv4. Asking for LISTEN sockets only, the
    kernel walks its listening hash alone, not the table of every connection."""
    found: set[int] = set()
    for seq, family in enumerate((_AF_INET6, _AF_INET), start=1):
        # inet_diag_req_v2: family, protocol, ext, pad, states, then an empty inet_diag_sockid
        request = struct.pack("=BBBBI", family, _IPPROTO_TCP, 0, 0, _TCPF_LISTEN) + bytes(48)
        size = 16 + len(request)
        header = struct.pack("=IHHII", size, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, seq, 0)
        sock.send(header + request)
        done = False
        while not done:
            data = sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, got_seq, _ = struct.unpack_from("=IHHII", data, offset)
                if got_seq == seq:
                    if kind == _NLMSG_DONE:
                        done = True
                    elif kind == _NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + 16)[0]
                        raise OSError(code, os.strerror(code))
                    elif kind == _SOCK_DIAG_BY_FAMILY:  # inet_diag_msg: idiag_sport at 4
                        found.add(struct.unpack_from("!H", data, offset + 20)[0])
                if length < 16:
                    break
                offset += (length + 3) & ~3
            if not data:
                raise OSError("sock_diag: the kernel closed the socket")
    return found


def _listening(target: Target, wanted: Collection[int]) -> set[int]:
    """The ports of ``wanted`` that LISTEN: the target's own look if it has one, else /proc."""
    look: Callable[[Collection[int]], set[int]] | None = getattr(target, "listening", None)
    if look is not None:
        return look(wanted)
    return listening_ports(target.pid1(), wanted)


# -- strategies ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, repr=False)
class _Tcp(_Stateless):
    port: int

    def check(self, target: Target, elapsed: float) -> Step:
        if self.port in _listening(target, (self.port,)):
            return Step(True)
        return Step(False, f"port {self.port}/tcp is not listening")

    def __str__(self) -> str:
        return f"tcp({self.port})"


@dataclass(frozen=True, slots=True, repr=False)
class _Ports(_Stateless):
    def check(self, target: Target, elapsed: float) -> Step:
        wanted = set(target.tcp_ports())
        if not wanted:
            return Step(True)
        missing = wanted - _listening(target, wanted)
        if not missing:
            return Step(True)
        names = ", ".join(f"{p}/tcp" for p in sorted(missing))
        return Step(False, f"port{'s' if len(missing) > 1 else ''} {names} not listening")

    def __str__(self) -> str:
        return "ports()"


@dataclass(frozen=True, slots=True, repr=False)
class _Http(_Stateless):
    port: int
    path: str
    status: tuple[int, ...]
    body: str | None
    method: str
    timeout: float

    def check(self, target: Target, elapsed: float) -> Step:
        import http.client

        what = f"{self.method} {self.path} on port {self.port}"
        try:
            sock = target.connect(self.port, self.timeout)
        except OSError as exc:
            return Step(False, f"{what}: cannot connect: {exc.strerror or exc}")
        conn = http.client.HTTPConnection("localhost", self.port, timeout=self.timeout)
        conn.sock = sock
        try:
            conn.request(self.method, self.path, headers={"Connection": "close"})
            response = conn.getresponse()
            data = response.read(1 << 20)
        except (OSError, http.client.HTTPException) as exc:
            return Step(False, f"{what}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()
        if response.status not in self.status:
            wanted = " or ".join(str(s) for s in self.status)
            return Step(False, f"{what} answered {response.status}, not {wanted}")
        if self.body is not None:
            text = data.decode("utf-8", errors="replace")
            if not re.search(self.body, text):
                return Step(False, f"{what}: the body does not match {self.body!r}")
        return Step(True)

    def __str__(self) -> str:
        statuses = self.status[0] if len(self.status) == 1 else self.status
        extra = "" if self.status == (200,) else f", status={statuses}"
        if self.body is not None:
            extra += f", body={self.body!r}"
        return f"http({self.port}, {self.path!r}{extra})"


@dataclass(frozen=True, slots=True, repr=False)
class _Log(_Stateless):
    pattern: str
    times: int

    def check(self, target: Target, elapsed: float) -> Step:
        seen = builtins.sum(1 for _ in re.finditer(self.pattern, target.log_text(), re.MULTILINE))
        if seen >= self.times:
            return Step(True)
        count = f" {self.times} times" if self.times > 1 else ""
        return Step(False, f"the log showed {self.pattern!r}{count} {seen} times so far")

    def __str__(self) -> str:
        times = f", times={self.times}" if self.times != 1 else ""
        return f"log({self.pattern!r}{times})"


@dataclass(frozen=True, slots=True, repr=False)
class _Exec(_Stateless):
    argv: tuple[str, ...]
    exit_code: int

    def check(self, target: Target, elapsed: float) -> Step:
        code, output = target.run(self.argv)
        if code == self.exit_code:
            return Step(True)
        said = output.decode("utf-8", errors="replace").strip().splitlines()[-3:]
        tail = f": {' | '.join(said)}" if said else ""
        return Step(False, f"{' '.join(self.argv)!r} exited with {code}{tail}")

    def __str__(self) -> str:
        return f"exec({list(self.argv)!r})"


@dataclass(frozen=True, slots=True, repr=False)
class _None(_Stateless):
    def check(self, target: Target, elapsed: float) -> Step:
        return Step(True)

    def __str__(self) -> str:
        return "none()"


class _HealthProbe:
    """Docker's HEALTHCHECK schedule: the first run at once (tests should not idle for an
    ``--interval``), then every ``--start-interval`` during ``--start-period`` and every
    ``--interval`` after it; ``--retries`` failures in a row after the start period are fatal."""

    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        self.failures = 0

    def check(self, target: Target, elapsed: float) -> Step:
        hc = target.healthcheck()
        test = list(hc.get("Test") or ()) if hc else []
        if not test or test[0] == "NONE":
            raise Unhealthy(
                f"container {target.name}: wait.healthy() needs a HEALTHCHECK, and its image "
                "has none; use another wait strategy (wait.tcp, wait.http, wait.exec)",
                container=target.name,
            )
        assert hc is not None
        if test[0] == "CMD-SHELL":
            argv = ["/bin/sh", "-c", " ".join(test[1:])]
        elif test[0] == "CMD":
            argv = test[1:]
        else:
            argv = test
        interval = _seconds(hc, "Interval", 30.0)
        start_period = _seconds(hc, "StartPeriod", 0.0)
        start_interval = _seconds(hc, "StartInterval", 5.0)
        retries = int(hc.get("Retries") or 3)
        code, output = target.run(argv)
        if code == 0:
            return Step(True)
        starting = elapsed < start_period
        if not starting:
            self.failures += 1
        said = output.decode("utf-8", errors="replace").strip()[-200:]
        detail = f"the HEALTHCHECK {argv!r} exited with {code}" + (f": {said}" if said else "")
        if self.failures >= retries:
            raise Unhealthy(
                f"container {target.name} is unhealthy: its HEALTHCHECK failed {retries} times "
                f"in a row (last: {detail})",
                container=target.name,
            )
        delay = start_interval if starting else interval
        return Step(False, detail, self.interval if self.interval is not None else delay)


@dataclass(frozen=True, slots=True, repr=False)
class _Healthy(Strategy):
    interval: float | None

    def probe(self) -> Probe:
        return _HealthProbe(self.interval)

    def __str__(self) -> str:
        return "healthy()" if self.interval is None else f"healthy(interval={self.interval})"


class _AllProbe:
    def __init__(self, parts: tuple[Strategy, ...]) -> None:
        self.pending = [(s, s.probe()) for s in parts]

    def check(self, target: Target, elapsed: float) -> Step:
        waiting, details, delays = [], [], []
        for strategy, probe in self.pending:
            step = probe.check(target, elapsed)
            if not step.ready:  # ready ones are done: once up, a check is not repeated
                waiting.append((strategy, probe))
                details.append(step.detail)
                delays.append(step.delay)
        self.pending = waiting
        if not waiting:
            return Step(True)
        return Step(False, "; ".join(d for d in details if d), _soonest(delays))


class _AnyProbe:
    def __init__(self, parts: tuple[Strategy, ...]) -> None:
        self.probes = [s.probe() for s in parts]

    def check(self, target: Target, elapsed: float) -> Step:
        details, delays = [], []
        for probe in self.probes:
            step = probe.check(target, elapsed)
            if step.ready:
                return Step(True)
            details.append(step.detail)
            delays.append(step.delay)
        return Step(False, " or ".join(d for d in details if d), _soonest(delays))


@dataclass(frozen=True, slots=True, repr=False)
class _All(Strategy):
    parts: tuple[Strategy, ...]

    def probe(self) -> Probe:
        return _AllProbe(self.parts)

    def __and__(self, other: Strategy) -> Strategy:
        return all(*self.parts, other)

    def __str__(self) -> str:
        return " & ".join(_grouped(p, _Any) for p in self.parts)

    def __repr__(self) -> str:
        return str(self)


@dataclass(frozen=True, slots=True, repr=False)
class _Any(Strategy):
    parts: tuple[Strategy, ...]

    def probe(self) -> Probe:
        return _AnyProbe(self.parts)

    def __or__(self, other: Strategy) -> Strategy:
        return any(*self.parts, other)

    def __str__(self) -> str:
        return " | ".join(_grouped(p, _All) for p in self.parts)

    def __repr__(self) -> str:
        return str(self)


def _grouped(part: Strategy, other: type) -> str:
    return f"({part!r})" if isinstance(part, other) else repr(part)


def _soonest(delays: builtins.list[float | None]) -> float | None:
    known = [d for d in delays if d is not None]
    if len(known) < len(delays):
        return None  # someone wants the poller's pace
    return builtins.min(known) if known else None


def _seconds(hc: Mapping[str, Any], key: str, default: float) -> float:
    value = hc.get(key) or 0
    return float(value) * _NS if value else default


def _port(port: int | str) -> int:
    text = str(port)
    number, _, proto = text.partition("/")
    if proto not in ("", "tcp") or not number.isdigit() or not 0 < int(number) < 65536:
        raise ValueError(f"not a TCP port: {port!r} (use a number such as 8080 or '8080/tcp')")
    return int(number)


# -- the public constructors ---------------------------------------------------------------------
def tcp(port: int | str) -> Strategy:
    """Ready when the container LISTENs on TCP ``port`` (its socket table, read from the host)."""
    return _Tcp(_port(port))


def ports() -> Strategy:
    """Ready when every published or EXPOSEd TCP port LISTENs; the default strategy."""
    return _Ports()


def http(
    port: int | str,
    path: str = "/",
    *,
    status: int | Collection[int] = 200,
    body: str | None = None,
    method: str = "GET",
    timeout: float = 2.0,
) -> Strategy:
    """Ready when ``METHOD path`` on ``port`` answers ``status`` (and its body matches the
    regex ``body``, if given). Reached through the published port, or from inside the
    container's network namespace when the port is not published."""
    statuses = (status,) if isinstance(status, int) else tuple(status)
    if not path.startswith("/"):
        raise ValueError(f"the path must start with '/': {path!r}")
    if body is not None:
        re.compile(body)
    return _Http(_port(port), path, statuses, body, method.upper(), timeout)


def log(pattern: str, times: int = 1) -> Strategy:
    """Ready when the regex ``pattern`` (multiline) matched the container's output ``times``
    times (stdout and stderr)."""
    re.compile(pattern)
    if times < 1:
        raise ValueError(f"times must be at least 1, not {times}")
    return _Log(pattern, times)


def exec(cmd: str | Sequence[str], *, exit_code: int = 0) -> Strategy:
    """Ready when ``cmd`` run in the container exits with ``exit_code`` (a string runs through
    ``/bin/sh -c``, a list as it is)."""
    argv = ("/bin/sh", "-c", cmd) if isinstance(cmd, str) else tuple(cmd)
    if not argv:
        raise ValueError("wait.exec needs a command")
    return _Exec(argv, exit_code)


def healthy(*, interval: float | None = None) -> Strategy:
    """Ready when the image's HEALTHCHECK passes, run through exec at the image's own intervals
    (``interval`` overrides them); it fails once the check failed ``--retries`` times in a row."""
    return _Healthy(interval)


def none() -> Strategy:
    """Ready as soon as the container runs."""
    return _None()


def all(*strategies: Strategy) -> Strategy:
    """Ready when every strategy is (each is checked until it holds, then no more)."""
    parts: builtins.list[Strategy] = []
    for s in strategies:
        parts.extend(s.parts if isinstance(s, _All) else (s,))
    return parts[0] if len(parts) == 1 else _All(tuple(parts))


def any(*strategies: Strategy) -> Strategy:
    """Ready when one of the strategies is."""
    parts: builtins.list[Strategy] = []
    for s in strategies:
        parts.extend(s.parts if isinstance(s, _Any) else (s,))
    if not parts:
        raise ValueError("wait.any needs at least one strategy")
    return parts[0] if len(parts) == 1 else _Any(tuple(parts))


# -- the poller ----------------------------------------------------------------------------------
def until_ready(
    target: Target,
    strategy: Strategy,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> float:
    """Poll ``strategy`` until it holds; return the seconds it took.

    Raises ``ContainerExited`` as soon as the container is seen exited, ``Unhealthy`` when a
    check fails for good and ``ReadinessTimeout`` after ``timeout`` seconds, each naming the
    container and quoting its last log lines.
    """
    probe = strategy.probe()
    start = clock()
    pause = FIRST_POLL
    while True:
        code = target.exit_code()
        if code is not None:
            raise ContainerExited(
                f"container {target.name} exited with code {code} while waiting for "
                f"{strategy!r} (after {clock() - start:.2f} s)",
                exit_code=code,
                container=target.name,
                logs=_tail(target),
            )
        elapsed = clock() - start
        try:
            step = probe.check(target, elapsed)
        except Unhealthy as exc:
            if exc.logs:
                raise
            raise Unhealthy(str(exc), container=target.name, logs=_tail(target)) from None
        if step.ready:
            return clock() - start
        elapsed = clock() - start
        if elapsed >= timeout:
            raise ReadinessTimeout(
                f"container {target.name} was not ready after {timeout:g} s of "
                f"{strategy!r}: {step.detail or 'not ready'}",
                container=target.name,
                logs=_tail(target),
            )
        wanted = pause if step.delay is None else step.delay
        deadline = clock() + builtins.min(wanted, timeout - elapsed)
        while True:  # a long pause (a HEALTHCHECK interval) still notices an exit soon
            left = deadline - clock()
            if left <= 0:
                break
            sleep(builtins.min(left, MAX_POLL))
            if left > MAX_POLL and target.exit_code() is not None:
                break
        pause = builtins.min(pause * 1.5, MAX_POLL)


def _tail(target: Target, lines: int = LOG_LINES) -> str:
    try:
        text = target.log_text()
    except Exception as exc:  # the logs are a courtesy: never hide the real failure
        return f"(logs unavailable: {exc})"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(no output)"
