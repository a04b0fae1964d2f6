"""Readiness strategies (``pytest_minidock.wait``) against a fake container and real sockets of
this process: the socket table parser, HTTP checks, logs, exec, HEALTHCHECK schedules, the
combinators and the poller's exit/timeout/backoff rules. No root needed."""

from __future__ import annotations

import http.server
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

import pytest

from pytest_minidock import wait
from pytest_minidock.errors import RuntimeFailure

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence


class FakeContainer:
    """A ``wait.Target`` whose answers the test scripts (time is a fake clock)."""

    def __init__(self, *, pid: int = 0) -> None:
        self.name = "fake-1"
        self.pid = pid or os.getpid()
        self.exit: int | None = None
        self.ports: list[int] = []
        self.log = ""
        self.runs: list[list[str]] = []
        self.run_results: list[tuple[int, bytes]] = []
        self.hc: dict[str, Any] | None = None
        self.connect_to: tuple[str, int] | None = None
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: list[Any] = []

    # wait.Target
    def pid1(self) -> int:
        return self.pid

    def exit_code(self) -> int | None:
        return self.exit

    def tcp_ports(self) -> list[int]:
        return self.ports

    def connect(self, port: int, timeout: float) -> socket.socket:
        assert self.connect_to is not None
        return socket.create_connection((self.connect_to[0], port), timeout=timeout)

    def run(self, argv: Sequence[str]) -> tuple[int, bytes]:
        self.runs.append(list(argv))
        return self.run_results.pop(0) if self.run_results else (1, b"no")

    def log_text(self) -> str:
        return self.log

    def healthcheck(self) -> Mapping[str, Any] | None:
        return self.hc

    # the fake clock
    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep.pop(0)(self)


def poll(target: FakeContainer, strategy: wait.Strategy, timeout: float = 10.0) -> float:
    return wait.until_ready(target, strategy, timeout, clock=target.clock, sleep=target.sleep)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


# -- the socket table ----------------------------------------------------------------------------
def test_listening_ports_reads_the_socket_table_of_a_process(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    six = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    six.bind(("::1", 0))
    six.listen()
    bound_only = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bound_only.bind(("127.0.0.1", 0))
    try:
        found = wait.listening_ports(os.getpid())
        assert port in found
        assert six.getsockname()[1] in found
        assert bound_only.getsockname()[1] not in found  # bound, not LISTEN
        assert wait.listening_ports(os.getpid(), [port]) >= {port}
    finally:
        six.close()
        bound_only.close()
    assert wait.listening_ports(2**22 + 12345) == set()  # no such process


def test_tcp_waits_for_a_listening_port(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    target = FakeContainer()
    assert poll(target, wait.tcp(port)) == 0.0
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        unused = free.getsockname()[1]
    with pytest.raises(wait.ReadinessTimeout) as info:
        poll(target, wait.tcp(f"{unused}/tcp"), timeout=1)
    assert f"port {unused}/tcp is not listening" in str(info.value)
    assert "fake-1 was not ready after 1 s of wait.tcp(" in str(info.value)


def test_ports_waits_for_every_published_or_exposed_port(listener: socket.socket) -> None:
    target = FakeContainer()
    assert poll(target, wait.ports()) == 0.0  # no ports: ready at once
    target.ports = [listener.getsockname()[1]]
    assert poll(target, wait.ports()) == 0.0
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        target.ports.append(free.getsockname()[1])
    with pytest.raises(wait.ReadinessTimeout, match=rf"port {target.ports[1]}/tcp not listening"):
        poll(target, wait.ports(), timeout=0.5)


# -- http ----------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = (200, b"all ok") if self.path == "/health" else (404, b"nope")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_http_checks_status_and_body(http_server: int) -> None:
    target = FakeContainer()
    target.connect_to = ("127.0.0.1", http_server)
    assert poll(target, wait.http(http_server, "/health")) == 0.0
    assert poll(target, wait.http(http_server, "/health", body=r"al+ ok")) == 0.0
    assert poll(target, wait.http(http_server, "/", status=(200, 404))) == 0.0
    with pytest.raises(wait.ReadinessTimeout, match=r"GET / on port \d+ answered 404, not 200"):
        poll(target, wait.http(http_server, "/"), timeout=0.2)
    with pytest.raises(wait.ReadinessTimeout, match="the body does not match 'nothing'"):
        poll(target, wait.http(http_server, "/health", body="nothing"), timeout=0.2)


def test_http_reports_refused_connections() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    target = FakeContainer()
    target.connect_to = ("127.0.0.1", port)
    with pytest.raises(wait.ReadinessTimeout, match="cannot connect"):
        poll(target, wait.http(port), timeout=0.1)


# -- logs, exec, health --------------------------------------------------------------------------
def test_log_counts_matches_across_output() -> None:
    target = FakeContainer()
    target.log = "starting\n"
    target.on_sleep = [lambda t: setattr(t, "log", t.log + "ready\n")] * 2
    elapsed = poll(target, wait.log(r"^ready$", times=2))
    assert target.log.count("ready") == 2
    assert elapsed == sum(target.sleeps)
    with pytest.raises(wait.ReadinessTimeout, match="showed 'never' 0 times so far"):
        poll(target, wait.log("never"), timeout=0.05)


def test_exec_runs_until_the_command_succeeds() -> None:
    target = FakeContainer()
    target.run_results = [(1, b"not yet"), (2, b"still not\nreally"), (0, b"")]
    poll(target, wait.exec("pg_isready -U postgres"))
    assert target.runs == [["/bin/sh", "-c", "pg_isready -U postgres"]] * 3
    target.run_results = [(7, b"last words")] * 100
    with pytest.raises(wait.ReadinessTimeout, match=r"exited with 7: last words"):
        poll(target, wait.exec(["check", "it"]), timeout=0.01)
    assert target.runs[-1] == ["check", "it"]


def health(**timings: int) -> dict[str, Any]:
    return {"Test": ["CMD-SHELL", "test -f /ok"], **timings}


def test_healthy_runs_the_healthcheck_at_the_image_pace() -> None:
    target = FakeContainer()
    target.hc = health(Interval=2_000_000_000, StartPeriod=0, Retries=5)
    target.run_results = [(1, b""), (1, b""), (0, b"")]
    elapsed = poll(target, wait.healthy(), timeout=60)
    assert target.runs == [["/bin/sh", "-c", "test -f /ok"]] * 3
    assert elapsed == pytest.approx(4.0)  # the first check at once, then every --interval


def test_healthy_uses_the_start_interval_during_the_start_period() -> None:
    target = FakeContainer()
    target.hc = {
        "Test": ["CMD", "probe", "--quick"],
        "Interval": 30_000_000_000,
        "StartPeriod": 10_000_000_000,
        "StartInterval": 1_000_000_000,
        "Retries": 1,
    }
    target.run_results = [(1, b"")] * 3 + [(0, b"")]
    assert poll(target, wait.healthy(), timeout=60) == pytest.approx(3.0)
    assert target.runs[0] == ["probe", "--quick"]


def test_healthy_fails_for_good_after_its_retries() -> None:
    target = FakeContainer()
    target.hc = health(Interval=100_000_000, Retries=3)
    target.log = "db: cannot open /data\n"
    target.run_results = [(1, b"missing")] * 10
    with pytest.raises(wait.Unhealthy) as info:
        poll(target, wait.healthy(), timeout=60)
    assert len(target.runs) == 3
    message = str(info.value)
    assert "container fake-1 is unhealthy: its HEALTHCHECK failed 3 times in a row" in message
    assert "exited with 1: missing" in message
    assert message.endswith("last log lines of container fake-1:\ndb: cannot open /data")


def test_healthy_needs_a_healthcheck() -> None:
    target = FakeContainer()
    with pytest.raises(wait.Unhealthy, match=r"needs a HEALTHCHECK, and its image has none"):
        poll(target, wait.healthy())
    target.hc = {"Test": ["NONE"]}
    with pytest.raises(wait.Unhealthy):
        poll(target, wait.healthy())


# -- the poller ----------------------------------------------------------------------------------
def test_an_exit_while_waiting_fails_at_once_with_code_and_logs() -> None:
    target = FakeContainer()
    target.log = "".join(f"line {i}\n" for i in range(30))
    target.on_sleep = [lambda t: None, lambda t: setattr(t, "exit", 3)]
    with pytest.raises(wait.ContainerExited) as info:
        poll(target, wait.log("never"), timeout=600)
    assert info.value.exit_code == 3
    assert isinstance(info.value, RuntimeFailure)
    assert target.now < 0.1
    message = str(info.value)
    assert message.startswith("container fake-1 exited with code 3 while waiting for wait.log(")
    assert "line 9\n" not in message
    assert message.endswith("\n".join(f"line {i}" for i in range(10, 30)))


def test_a_long_pause_still_notices_an_exit() -> None:
    target = FakeContainer()
    target.hc = health(Interval=30_000_000_000, Retries=9)
    target.on_sleep = [lambda t: None, lambda t: setattr(t, "exit", 137)]
    with pytest.raises(wait.ContainerExited, match="code 137"):
        poll(target, wait.healthy(), timeout=600)
    assert target.now <= 2 * wait.MAX_POLL + 1e-9


def test_the_poll_interval_backs_off_to_its_cap() -> None:
    target = FakeContainer()
    with pytest.raises(wait.ReadinessTimeout):
        poll(target, wait.log("never"), timeout=2)
    assert target.sleeps[0] == wait.FIRST_POLL
    assert target.sleeps[1] == pytest.approx(wait.FIRST_POLL * 1.5)
    assert max(target.sleeps) == wait.MAX_POLL
    assert target.now == pytest.approx(2.0)


def test_none_is_ready_at_once() -> None:
    target = FakeContainer()
    assert poll(target, wait.none()) == 0.0
    assert target.sleeps == []


# -- combinations --------------------------------------------------------------------------------
def test_all_needs_every_part_and_checks_each_until_it_holds() -> None:
    target = FakeContainer()
    target.run_results = [(0, b"")]
    target.on_sleep = [lambda t: setattr(t, "log", "up\n")]
    strategy = wait.exec("true") & wait.log("up")
    poll(target, strategy)
    assert len(target.runs) == 1  # ready parts are not checked again
    assert strategy == wait.all(wait.exec("true"), wait.log("up"))


def test_any_needs_one_part() -> None:
    target = FakeContainer()
    target.run_results = [(1, b""), (0, b"")]
    poll(target, wait.log("never") | wait.exec("true"))
    assert len(target.runs) == 2
    with pytest.raises(wait.ReadinessTimeout, match=r"showed 'a' 0 times so far or the log"):
        poll(FakeContainer(), wait.any(wait.log("a"), wait.log("b")), timeout=0.01)


def test_strategies_read_as_code() -> None:
    combined = (wait.tcp(5432) & wait.log("ready", times=2)) | wait.http(80, "/h", status=204)
    assert repr(combined) == (
        "(wait.tcp(5432) & wait.log('ready', times=2)) | wait.http(80, '/h', status=204)"
    )
    assert repr(wait.tcp(1) & (wait.none() | wait.healthy())) == (
        "wait.tcp(1) & (wait.none() | wait.healthy())"
    )
    assert repr(wait.exec("x")) == "wait.exec(['/bin/sh', '-c', 'x'])"
    assert wait.all(wait.tcp(1)) == wait.tcp(1)


def test_bad_arguments_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="not a TCP port"):
        wait.tcp("53/udp")
    with pytest.raises(ValueError, match="not a TCP port"):
        wait.tcp(70000)
    with pytest.raises(ValueError, match="must start with '/'"):
        wait.http(80, "health")
    with pytest.raises(ValueError, match="times must be at least 1"):
        wait.log("x", times=0)
    with pytest.raises(ValueError, match="needs a command"):
        wait.exec([])
    with pytest.raises(ValueError, match="at least one"):
        wait.any()
