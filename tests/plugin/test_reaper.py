"""Removal in the background: function-scoped containers are removed by the session's reaper
thread while the next test runs; the session waits for it at its end, a newer container never
shares a name with a dying one where a peer could resolve it, and a SIGKILL of pytest with
removals pending still leaves nothing running (the next session removes the rest)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from pytest_minidock.fixtures.reaper import Reaper
from tests.plugin.conftest import HTTPD, inner_args, process_exists, running
from tests.plugin.test_lifecycle import _gone, _pytest_process, _wait_for

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_minidock.api import Engine


# -- the reaper alone ------------------------------------------------------------------------------
class FakeHandle:
    def __init__(self, cid: str, log: list[str], gate: threading.Event | None = None) -> None:
        self.id = cid
        self.log = log
        self.gate = gate

    def remove(self) -> None:
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.id == "bad":
            raise OSError("cannot remove bad")
        self.log.append(self.id)


def test_the_reaper_removes_in_order_without_blocking_and_drains() -> None:
    reaper = Reaper()
    log: list[str] = []
    gate = threading.Event()
    t0 = time.monotonic()
    for cid in ("a", "b", "c"):
        reaper.submit(FakeHandle(cid, log, gate))  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 1  # submit does not wait for the removal
    assert sorted(h.id for h in reaper.pending()) == ["a", "b", "c"]
    assert log == []
    gate.set()
    reaper.wait(lambda h: h.id == "b")
    assert log[:2] == ["a", "b"]
    reaper.drain()
    assert log == ["a", "b", "c"]
    assert reaper.pending() == []
    assert not [t for t in threading.enumerate() if t.name == "minidock-reaper"]
    reaper.submit(FakeHandle("d", log))  # type: ignore[arg-type]
    reaper.drain()  # a drained reaper starts again
    assert log[-1] == "d"


def test_the_reaper_keeps_what_a_removal_raised_and_goes_on() -> None:
    reaper = Reaper()
    log: list[str] = []
    reaper.submit(FakeHandle("bad", log))  # type: ignore[arg-type]
    reaper.submit(FakeHandle("good", log))  # type: ignore[arg-type]
    reaper.drain()
    assert log == ["good"]
    assert [str(e) for e in reaper.errors] == ["cannot remove bad"]


# -- in a session ----------------------------------------------------------------------------------
RECORD = """
import json, os

def pytest_runtest_call(item):
    with open(os.environ["OUT"], "a") as f:
        for name, value in item.funcargs.items():
            if hasattr(value, "exec") and hasattr(value, "addr"):
                f.write(json.dumps({"test": item.name, "fixture": name, "id": value.id,
                                    "pid": value.pid}) + "\\n")
"""


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.privileged
@pytest.mark.rootless
@pytest.mark.netns
def test_background_removal_leaves_nothing_at_the_session_end(
    pytester: pytest.Pytester,
    plugin_root: Path,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = pytester.path / "used.jsonl"
    monkeypatch.setenv("OUT", str(out))
    pytester.makeconftest(
        RECORD
        + f"""
from pytest_minidock import container

web = container("busybox", command=["sh", "-c", {HTTPD!r}], ports=[8080])
"""
    )
    pytester.makepyfile(
        """
        import urllib.request

        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_serves(i, web):
            with urllib.request.urlopen(web.url(8080), timeout=10) as answer:
                assert answer.read() == b"hello\\n"
        """
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=6)
    used = _rows(out)
    assert len({r["id"] for r in used}) == 6
    for row in used:  # all gone once the session is over: no wait needed here
        assert not engine.runtime.state.dir(row["id"]).exists(), row
        assert not process_exists(row["pid"]), row
    assert not [t for t in threading.enumerate() if t.name == "minidock-reaper"]
    # (the engine fixture fails the test if a container or a network was left)


ALIASES = """
import time
from pytest_minidock import container, wait
from pytest_minidock.fixtures.handle import Container

_remove = Container.remove

def slow_remove(self):  # removals take their time: a newer container would overlap
    time.sleep(0.5)
    _remove(self)

Container.remove = slow_remove

def pytest_unconfigure(config):  # (the session runs in the test's process: put it back)
    Container.remove = _remove

SERVE = {httpd!r}
web = container("busybox", command=["sh", "-c", SERVE], ports=[8080])
client = container("busybox", command="sleep 600", wait=wait.none(), links=[web])
watcher = container("busybox", command="sleep 600", wait=wait.none(), scope="session")
"""

COUNT_WEB = "awk '{for (i = 2; i <= NF; i++) if ($i == \"web\") n++} END {print n + 0}' /etc/hosts"


@pytest.mark.privileged
@pytest.mark.rootless
@pytest.mark.netns
def test_a_name_on_the_network_never_has_two_containers(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    """A linked container, and a live session container, resolve ``web`` to the current one:
    creating a container that could resolve the name of a container being removed waits for
    that removal."""
    pytester.makeconftest(ALIASES.format(httpd=HTTPD))
    pytester.makepyfile(
        f"""
        import pytest

        COUNT_WEB = {COUNT_WEB!r}

        @pytest.mark.parametrize("i", range(3))
        def test_linked(i, web, client):
            assert client.exec(COUNT_WEB).stdout == b"1\\n"
            got = client.exec("wget -qO- http://web:8080/")
            assert got.stdout == b"hello\\n", got

        @pytest.mark.parametrize("i", range(3))
        def test_watched(i, watcher, web):
            assert watcher.exec(COUNT_WEB).stdout == b"1\\n"
            hosts = watcher.exec("cat /etc/hosts").stdout.decode()
            assert web.ip + "\\t" in hosts, hosts
        """
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=6)


@pytest.mark.privileged
@pytest.mark.rootless
@pytest.mark.netns
def test_a_port_stays_held_while_its_container_is_being_removed(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    """While the reaper has not removed a container, its host port stays bound: a newer
    container gets another one, and nothing else on the host can take it."""
    pytester.makeconftest(ALIASES.format(httpd=HTTPD))
    pytester.makepyfile(
        """
        import errno
        import socket
        import urllib.request

        import pytest

        PORTS = []

        @pytest.mark.parametrize("i", range(3))
        def test_port(i, web):
            host, port = web.addr(8080)
            for previous in PORTS[-1:]:  # its removal waits 0.5 s first: still pending
                assert port != previous
                probe = socket.socket()
                try:
                    with pytest.raises(OSError) as held:
                        probe.bind((host, previous))
                    assert held.value.errno == errno.EADDRINUSE
                finally:
                    probe.close()
            PORTS.append(port)
            with urllib.request.urlopen(web.url(8080), timeout=10) as answer:
                assert answer.read() == b"hello\\n"
        """
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=3)


SLOW_REMOVAL = """
import json, os, time
from pytest_minidock import container, wait
from pytest_minidock.fixtures.handle import Container

_remove = Container.remove
_stuck = []

def slow_remove(self):
    if not _stuck:  # the first removal is stuck in the reaper: pending when pytest is killed
        _stuck.append(self.id)
        time.sleep(600)
    _remove(self)

Container.remove = slow_remove

box = container("busybox", command="sleep 600", wait=wait.none())

def test_a(box):
    with open(os.environ["OUT"] + ".first", "w") as f:
        json.dump({"id": box.id, "pid": box.pid}, f)

def test_b(box):
    with open(os.environ["OUT"] + ".tmp", "w") as f:
        json.dump({"id": box.id, "pid": box.pid}, f)
    os.rename(os.environ["OUT"] + ".tmp", os.environ["OUT"])
    time.sleep(600)
"""


@pytest.mark.privileged
@pytest.mark.rootless
def test_sigkill_with_a_removal_pending_leaves_nothing_running(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makepyfile(SLOW_REMOVAL)
    out = pytester.path / "started.json"
    with _pytest_process(pytester, plugin_root, out) as proc:
        second = _wait_for(out, proc)
        first: dict[str, int] = json.loads((pytester.path / "started.json.first").read_text())
        assert running(engine, str(first["id"]))  # test_a is over, its removal is stuck
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    for started in (first, second):
        assert _gone(started["pid"]), "a container's PID 1 outlived the killed pytest"
        assert not running(engine, str(started["id"]))
    pytester.makepyfile("def test_next(minidock):\n    pass\n")
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=1)
    for started in (first, second):
        assert not engine.runtime.state.dir(str(started["id"])).exists()


FAILING_REMOVAL = """
from pytest_minidock import container, wait
from pytest_minidock.fixtures.handle import Container

_remove = Container.remove

def failing_remove(self):  # removed all the same, then fails
    _remove(self)
    raise OSError("disk on fire")

Container.remove = failing_remove

def pytest_unconfigure(config):  # (the session runs in the test's process: put it back)
    Container.remove = _remove

box = container("busybox", command="sleep 600", wait=wait.none(), scope="session")
"""


@pytest.mark.privileged
def test_a_removal_that_fails_is_an_error_naming_the_container(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    """What a removal in the background raised is raised at the session's end, as an error of
    the last teardown that names the container."""
    pytester.makeconftest(FAILING_REMOVAL)
    pytester.makepyfile(
        """
        def test_uses(box):
            print("ID=" + box.id)
        """
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root), "-s")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["E       OSError: disk on fire", "E       removing container box-*"]
    )
    cid = next(line.split("ID=")[1] for line in result.outlines if "ID=" in line)
    assert not engine.runtime.state.dir(cid).exists()
    assert not [t for t in threading.enumerate() if t.name == "minidock-reaper"]
