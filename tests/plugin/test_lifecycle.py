"""What survives a session: ``--minidock-keep``, ``minidock_retention``, ``--minidock-reuse``; and
what does not: containers of a pytest killed by SIGKILL or SIGTERM, cleaned on the next start."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.errors import MinidockError
from tests.plugin.conftest import INNER, inner_args, process_exists, remove, running

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pytest_minidock.api import Engine

pytestmark = [pytest.mark.privileged, pytest.mark.rootless]

RECORDING = """
import json, os

def pytest_runtest_call(item):
    out = os.environ.get("OUT")
    for name, value in item.funcargs.items():
        if out and hasattr(value, "exec") and hasattr(value, "addr"):
            with open(out, "a") as f:
                f.write(json.dumps({"test": item.name, "fixture": name,
                                    "id": value.id, "name": value.name}) + "\\n")
"""


def rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_keep_leaves_containers_running_and_lists_them(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(
        RECORDING
        + """
from pytest_minidock import container, wait
kept = container("busybox", command="sleep 600", wait=wait.none())
"""
    )
    pytester.makepyfile("def test_it(kept):\n    pass\n")
    out = pytester.path / "out.jsonl"
    monkeypatch.setenv("OUT", str(out))
    result = pytester.runpytest_subprocess(*inner_args(plugin_root, "--minidock-keep"))
    result.assert_outcomes(passed=1)
    (row,) = rows(out)
    try:
        record = engine.container(row["id"])
        assert record.state.running(), record.state  # it outlived the pytest process
        assert record.state.keep
        result.stdout.fnmatch_lines(
            [
                "*= minidock =*",
                f"kept {row['name']}: no published ports",
                f"    minidock --root {plugin_root} exec -it {row['name']} sh",
            ]
        )
        # the next session's clean-up leaves kept containers alone
        pytester.makepyfile("def test_engine(minidock):\n    assert minidock.containers()\n")
        pytester.runpytest_inprocess(*inner_args(plugin_root)).assert_outcomes(passed=1)
        assert running(engine, row["id"])
    finally:
        remove(engine, row["id"])


def test_retention_failed_keeps_only_the_containers_of_failing_tests(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nminidock_retention = failed\n")
    pytester.makeconftest(
        RECORDING
        + """
from pytest_minidock import container, wait
box = container("busybox", command=["sh", "-c", "echo box says hi; exec sleep 600"],
                wait=wait.log("hi"))
"""
    )
    pytester.makepyfile(
        """
        def test_passes(box):
            pass

        def test_fails(box):
            assert False
        """
    )
    out = pytester.path / "out.jsonl"
    monkeypatch.setenv("OUT", str(out))
    result = pytester.runpytest_subprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=1, failed=1)
    by_test = {r["test"]: r for r in rows(out)}
    failed, passed = by_test["test_fails"], by_test["test_passes"]
    try:
        assert running(engine, failed["id"])
        with pytest.raises(MinidockError, match="no such container"):
            engine.container(passed["id"])
        hint = f"minidock --root {plugin_root} exec -it {failed['name']} sh"
        result.stdout.fnmatch_lines(
            [
                f"*- minidock logs: {failed['name']} -*",
                "box says hi",
                f"[[]kept: {hint}]",
                "*= minidock =*",
                "containers: 2 started*",
                f"kept {failed['name']}: no published ports",
                f"    {hint}",
            ]
        )
    finally:
        remove(engine, failed["id"])


def test_the_keep_hook_decides_for_keepable_containers(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nminidock_retention = all\n")
    pytester.makeconftest(
        RECORDING
        + """
from pytest_minidock import container, wait
precious = container("busybox", command="sleep 600", env={"KEEP": "1"}, wait=wait.none())
scratch = container("busybox", command="sleep 600", wait=wait.none())

def pytest_minidock_keep(config, container, failed):
    return "KEEP=1" in container.record().config["Spec"]["env"]
"""
    )
    pytester.makepyfile("def test_both(precious, scratch):\n    pass\n")
    out = pytester.path / "out.jsonl"
    monkeypatch.setenv("OUT", str(out))
    result = pytester.runpytest_subprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=1)
    by_fixture = {r["fixture"]: r for r in rows(out)}
    try:  # retention "all" would keep both: the hook said no to one
        assert running(engine, by_fixture["precious"]["id"])
        with pytest.raises(MinidockError, match="no such container"):
            engine.container(by_fixture["scratch"]["id"])
    finally:
        remove(engine, by_fixture["precious"]["id"])


def test_reuse_reattaches_unchanged_containers_and_recreates_changed_ones(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    conftest = (
        RECORDING
        + """
import os
from pytest_minidock import container, wait
db = container("busybox", command="sleep 600", env={"VERSION": os.environ["VERSION"]},
               wait=wait.none(), scope="session")
client = container("busybox", command="sleep 600", wait=wait.none(), links=[db])
"""
    )
    pytester.makeconftest(conftest)
    pytester.makepyfile(
        """
        def test_db(db, client):
            # a reattached container is still reachable by name from this run's containers
            reached = client.exec("ping -c 1 -W 5 db")
            assert reached.exit_code == 0, reached
        """
    )
    out = pytester.path / "out.jsonl"
    monkeypatch.setenv("OUT", str(out))
    ids: list[str] = []
    try:
        for version in ("1", "1", "2"):
            monkeypatch.setenv("VERSION", version)
            result = pytester.runpytest_subprocess(*inner_args(plugin_root, "--minidock-reuse"))
            result.assert_outcomes(passed=1)
            ids.append([r for r in rows(out) if r["fixture"] == "db"][-1]["id"])
            assert running(engine, ids[-1])
        assert ids[0] == ids[1]  # unchanged: reattached
        assert ids[2] != ids[1]  # changed: recreated, and the old one removed
        with pytest.raises(MinidockError, match="no such container"):
            engine.container(ids[0])
    finally:
        remove(engine, *ids)
        for record in engine.runtime.state.all():  # the network they shared, if any
            assert record.id not in ids


@contextlib.contextmanager
def _pytest_process(
    pytester: pytest.Pytester, root: Path, out: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """An inner pytest as a process; killed (if still running) and reaped on the way out."""
    env = {**os.environ, "OUT": str(out)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", *INNER, f"--minidock-root={root}", *args],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


HANGING = """
import json, os, time
from pytest_minidock import container, wait

box = container("busybox", command="sleep 600", wait=wait.none(), scope="session")

def test_hangs(box):
    with open(os.environ["OUT"] + ".tmp", "w") as f:
        json.dump({"id": box.id, "pid": box.pid}, f)
    os.rename(os.environ["OUT"] + ".tmp", os.environ["OUT"])
    time.sleep(600)
"""


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            output = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"the inner pytest ended early ({proc.returncode}):\n{output}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the inner pytest did not start its container in time")
        time.sleep(0.05)
    data: dict[str, int] = json.loads(path.read_text())
    return data


def _sigkill_once_started(pytester: pytest.Pytester, plugin_root: Path) -> dict[str, int]:
    """Run the inner pytest until its container started, SIGKILL it; what it reported."""
    out = pytester.path / "started.json"
    with _pytest_process(pytester, plugin_root, out) as proc:
        started = _wait_for(out, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return started


def _gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while process_exists(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_sigkill_of_pytest_leaves_nothing_running_and_the_next_session_cleans_up(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makepyfile(HANGING)
    started = _sigkill_once_started(pytester, plugin_root)
    assert _gone(started["pid"]), "the container's PID 1 outlived the killed pytest"
    cid = str(started["id"])
    assert not running(engine, cid)
    assert engine.runtime.state.dir(cid).exists()  # its state is left for the next start

    pytester.makepyfile("def test_next(minidock):\n    pass\n")
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=1)
    assert not engine.runtime.state.dir(cid).exists()


@pytest.mark.parametrize("retention", ["none", "failed"])
def test_sigterm_tears_the_session_down(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, retention: str
) -> None:
    pytester.makeini(f"[pytest]\nminidock_retention = {retention}\n")
    pytester.makepyfile(HANGING)
    out = pytester.path / "started.json"
    with _pytest_process(pytester, plugin_root, out) as proc:
        started = _wait_for(out, proc)
        os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert b"KeyboardInterrupt" in output, output.decode()
    assert _gone(started["pid"])
    # torn down, not merely killed: nothing left on disk, even for a detached (keepable) one
    assert not engine.runtime.state.dir(str(started["id"])).exists()


def test_a_keepable_container_of_a_killed_run_is_removed_by_the_next_session(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    # With retention, containers start detached (to be able to outlive pytest): a SIGKILL
    # leaves them running, and the next session removes them since nobody asked to keep them.
    pytester.makeini("[pytest]\nminidock_retention = failed\n")
    pytester.makepyfile(HANGING)
    started = _sigkill_once_started(pytester, plugin_root)
    cid = str(started["id"])
    assert running(engine, cid)
    pytester.makepyfile("def test_next(minidock):\n    pass\n")
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=1)
    assert _gone(started["pid"])
    assert not engine.runtime.state.dir(cid).exists()
