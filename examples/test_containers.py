"""Example: real services in containers as pytest fixtures. Each ``container(...)`` below is a
fixture named by its variable; a test gets a handle once the service is ready, and the container
is removed after it (kept for a look with ``--minidock-keep``; a failing test shows its logs).
Needs root until rootless mode lands."""

from __future__ import annotations

import urllib.request
from typing import TYPE_CHECKING

from pytest_minidock import container, wait
from pytest_minidock.spec import Overrides

if TYPE_CHECKING:
    from pytest_minidock.fixtures import Container, SessionEngine

SERVE = "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www"

# One web server per test, port 8080 published on a free port of 127.0.0.1; handed over once
# 8080 LISTENs (read from the container's socket table: no shell or tool needed in the image).
web = container("busybox", command=["sh", "-c", SERVE], ports=[8080])

# A client on the same session network, reaching the server by its fixture name.
client = container("busybox", command="sleep 600", wait=wait.none(), links=[web])

# One worker for the whole session, ready once its log says so.
worker = container(
    "busybox",
    command=["sh", "-c", "echo loading; sleep 0.2; echo worker ready; exec sleep 600"],
    wait=wait.log("worker ready"),
    scope="session",
)


def test_the_service_answers_on_its_published_port(web: Container) -> None:
    host, port = web.addr(8080)  # where the host reaches the container's 8080
    assert host == "127.0.0.1"
    assert web.url(8080, "/index.html") == f"http://127.0.0.1:{port}/index.html"
    with urllib.request.urlopen(web.url(8080), timeout=10) as answer:
        assert answer.read() == b"hello\n"


def test_containers_reach_linked_ones_by_fixture_name(client: Container) -> None:
    (web,) = client.links
    assert client.exec("wget -qO- http://web:8080/").stdout == b"hello\n"
    assert client.exec(f"wget -qO- http://{web.ip}:8080/").stdout == b"hello\n"
    assert web.exec("wget -qO- http://127.0.0.1:8080/").stdout == b"hello\n"


def test_a_session_container_is_ready_and_shared(worker: Container) -> None:
    assert worker.logs().splitlines() == ["loading", "worker ready"]
    assert worker.exec(["cat", "/proc/1/cmdline"]).stdout.startswith(b"sleep")


def test_one_off_containers_from_the_minidock_fixture(
    minidock: SessionEngine, busybox_image: str
) -> None:
    # `minidock` is the session's Engine; its run() hands back a Container, a context manager.
    job = Overrides(command=("sh", "-c", "echo oops >&2; exit 3"))
    with minidock.run(busybox_image, job) as crashing:
        assert minidock.wait(crashing.id, timeout=10) == 3
        assert crashing.logs(stream="stderr") == "oops\n"
