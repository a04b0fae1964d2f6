"""``container()`` fixtures and their handles in inner pytest sessions: scopes, names, exec and
logs, failure reports with the containers' logs, readiness (every strategy proven by a service
that only becomes ready after a delay), the ``minidock`` fixture, hooks and markers."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.plugin.conftest import HTTPD, inner_args

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_minidock.api import Engine

pytestmark = [pytest.mark.privileged, pytest.mark.rootless]

CONFTEST = """
from pytest_minidock import container, wait

shell = container("busybox", command="sleep 600", wait=wait.none())
service = container("busybox", command=["sh", "-c", "echo service up; exec sleep 600"],
                    wait=wait.log("service up"), scope="session")
"""


def test_function_and_session_scopes_names_exec_and_logs(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import json, os

        from pytest_minidock import Container

        def record(name, c):
            with open(os.environ["OUT"], "a") as f:
                f.write(json.dumps({"test": name, "id": c.id, "name": c.name}) + "\\n")

        def test_one(shell, service):
            assert isinstance(shell, Container)
            result = shell.exec("echo $((6 * 7)); echo oops >&2; exit 4")
            assert (result.exit_code, result.stdout, result.stderr) == (4, b"42\\n", b"oops\\n")
            assert shell.exec(["cat", "/etc/hostname"]).exit_code == 0
            assert service.logs() == "service up\\n"
            assert service.logs(stream="stderr") == ""
            assert shell.status == "running" and shell.exit_code is None
            labels = shell.record().config["Spec"]["labels"]
            assert labels["org.minidock.pytest.fixture"] == "shell"
            record("one", shell); record("one", service)

        def test_two(shell, service):
            record("two", shell); record("two", service)
        """
    )
    out = pytester.path / "out.jsonl"
    monkeypatch.setenv("OUT", str(out))
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    shells = [r for r in rows if r["name"].startswith("shell-")]
    services = [r for r in rows if r["name"].startswith("service-")]
    assert len({r["id"] for r in shells}) == 2  # function scope: one per test
    assert len({r["id"] for r in services}) == 1  # session scope: one for both
    run = services[0]["name"].removeprefix("service-")
    assert {r["name"] for r in shells} == {f"shell-{run}", f"shell-{run}-2"}
    for row in rows:  # every container is gone after the session
        with pytest.raises(Exception, match="no such container"):
            engine.container(row["id"])
    result.stdout.fnmatch_lines(["*= minidock =*", "containers: 3 started (p50 start * ms*"])


def test_a_failing_test_shows_the_logs_of_every_container_it_used(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makeconftest(
        CONFTEST
        + """
linked = container("busybox", command=["sh", "-c", "echo from the linked one; exec sleep 600"],
                   wait=wait.log("linked"), scope="session")

import pytest

@pytest.fixture
def app(linked, shell):
    return shell
"""
    )
    pytester.makepyfile(
        """
        def test_fails(app, service):
            app.exec("echo written by the test > /proc/1/fd/1")
            assert False, "the test failed"

        def test_passes(service):
            pass
        """
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=1, failed=1)
    text = result.stdout.str()
    failure = text[text.index("_ test_fails _") : text.index("short test summary")]
    assert "-- minidock logs: service-" in failure
    assert "service up" in failure
    assert "-- minidock logs: shell-" in failure
    assert "written by the test" in failure
    assert "-- minidock logs: linked-" in failure
    assert "from the linked one" in failure
    assert "[kept:" not in failure  # nothing is kept by default
    assert "test_passes" not in failure


def test_a_container_exiting_while_waited_for_fails_at_once(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makeconftest(
        """
        from pytest_minidock import container, wait

        crashing = container("busybox", command=["sh", "-c", "echo cannot bind; exit 3"],
                             wait=wait.tcp(1234), timeout=120)
        """
    )
    pytester.makepyfile("def test_never_runs(crashing):\n    pass\n")
    result = pytester.runpytest_inprocess(*inner_args(plugin_root), "--durations=1")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*container crashing-* exited with code 3 while waiting for wait.tcp(1234) (after *",
            "last log lines of container crashing-*:",
            "cannot bind",
        ]
    )
    assert "During handling" not in result.stdout.str()
    assert result.duration < 30  # not the 120 s timeout


def test_a_container_not_ready_in_time_fails_with_what_is_missing(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makeconftest(
        """
        from pytest_minidock import container, wait

        slow = container("busybox", command=["sh", "-c", "echo warming up; exec sleep 600"],
                         wait=wait.log("warm now"))
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.minidock(timeout=0.5)
        def test_slow(slow):
            pass
        """
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*container slow-* was not ready after 0.5 s of wait.log('warm now'): the log "
            "showed 'warm now' 0 times so far",
            "last log lines of container slow-*:",
            "warming up",
            "*- minidock logs: slow-* -*",
        ]
    )


READINESS = f"""
from pytest_minidock import container, wait

def after(seconds, then):
    return ["sh", "-c", f"sleep {{seconds}}; {{then}}"]

by_log = container("busybox", command=after(0.3, "touch /tmp/r; echo ready; echo ready; sleep 600"),
                   wait=wait.log("^ready$", times=2))
by_exec = container("busybox", command=after(0.3, "touch /tmp/r; exec sleep 600"),
                    wait=wait.exec("test -f /tmp/r"))
by_tcp = container("busybox", command=after(0.3, {HTTPD!r}), wait=wait.tcp(8080))
by_http = container("busybox", command=after(0.3, {HTTPD!r}),
                    wait=wait.http(8080, "/health", body="^ok"))
by_default = container("web:1")
by_health = container("health:1", wait=wait.healthy())
by_both = container("busybox", command=after(0.3, "echo a; sleep 0.2; echo b; exec sleep 600"),
                    wait=wait.log("a") & wait.log("b"))
by_either = container("busybox", command=after(0.3, "echo b; exec sleep 600"),
                      wait=wait.log("never") | wait.log("b"))
no_wait = container("busybox", command=after(0.3, "touch /tmp/r; exec sleep 600"),
                    wait=wait.none())
"""


@pytest.mark.parametrize(
    "case",
    [
        ("by_log", "test -f /tmp/r", 0.25),
        ("by_exec", "test -f /tmp/r", 0.25),
        ("by_tcp", "wget -qO- http://127.0.0.1:8080/", 0.25),
        ("by_http", "wget -qO- http://127.0.0.1:8080/health", 0.25),
        ("by_default", "wget -qO- http://127.0.0.1:8080/", 0.25),
        ("by_health", "test -f /tmp/healthy", 0.25),
        ("by_both", "true", 0.45),
        ("by_either", "true", 0.25),
    ],
    ids=lambda case: case[0],
)
def test_each_wait_strategy_hands_over_only_a_ready_container(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, case: tuple[str, str, float]
) -> None:
    fixture, check, least = case
    pytester.makeconftest(READINESS)
    pytester.makepyfile(
        f"""
        def test_ready({fixture}, no_wait):
            assert no_wait.exec("test -f /tmp/r").exit_code == 1  # wait.none(): not yet
            result = {fixture}.exec({check!r})
            assert result.exit_code == 0, result
            assert {fixture}.timings["ready"] >= {least}, {fixture}.timings
        """
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=1)


def test_an_unhealthy_container_fails_after_its_retries(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makeconftest(
        """
        from pytest_minidock import container, wait

        sick = container("health:0", command=["sh", "-c", "echo no disk; exec sleep 600"],
                         wait=wait.healthy(), timeout=120)
        """
    )
    pytester.makepyfile("def test_sick(sick):\n    pass\n")
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(errors=1)
    result.stdout.re_match_lines(
        [
            r"container sick-\w+ is unhealthy: its HEALTHCHECK failed 3 times in a row \(last: "
            r"the HEALTHCHECK \['/bin/sh', '-c', 'test -f /tmp/healthy'\] exited with 1\)",
            r"last log lines of container sick-\w+:",
            "no disk",
        ]
    )


def test_the_minidock_fixture_runs_handles_as_context_managers(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_minidock import wait
        from pytest_minidock.api import Engine
        from pytest_minidock.errors import MinidockError
        from pytest_minidock.spec import Overrides

        def test_run(minidock):
            assert isinstance(minidock, Engine)
            with minidock.run("busybox", Overrides(command=("sh", "-c", {HTTPD!r}))) as web:
                web.wait_ready(wait.http(8080, "/health"), timeout=10)
                assert web.exec("wget -qO- 127.0.0.1:8080/").stdout == b"hello\\n"
                with pytest.raises(MinidockError, match="port 8080/tcp of container "
                                   + web.name + r" is not published \\(published: none\\)"):
                    web.addr(8080)
                cid = web.id
            with pytest.raises(MinidockError, match="no such container"):
                minidock.container(cid)
        """
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=1)


def test_hooks_edit_specs_and_observe_containers(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makeconftest(
        """
        import dataclasses
        from pytest_minidock import container, wait

        seen = []
        box = container("busybox", command="sleep 600", env={"FROM_FIXTURE": "1"}, wait=wait.none())

        def pytest_minidock_container_spec(request, spec):
            spec.env["TEST_NAME"] = request.node.name
            spec.overrides = dataclasses.replace(spec.overrides, workdir="/tmp")

        def pytest_minidock_container_started(config, container):
            seen.append(("started", container.fixture, sorted(container.timings)))

        def pytest_minidock_container_finished(config, container, failed, kept):
            seen.append(("finished", container.fixture, failed, kept, container.status))

        def pytest_sessionfinish(session):
            print("SEEN", seen)
        """
    )
    pytester.makepyfile(
        """
        def test_env(box):
            out = box.exec("echo $FROM_FIXTURE $TEST_NAME $(pwd)").stdout
            assert out == b"1 test_env /tmp\\n"
        """
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root), "-s")
    result.assert_outcomes(passed=1)
    assert (
        "SEEN [('started', 'box', ['ready', 'start']), "
        "('finished', 'box', False, False, 'running')]"
    ) in result.stdout.str()


def test_bad_fixture_arguments_are_errors_at_import(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makeconftest(
        """
        from pytest_minidock import container

        bad = container("busybox", shared=True)
        """
    )
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*UsageError: container(shared=True) needs scope='session'"])
