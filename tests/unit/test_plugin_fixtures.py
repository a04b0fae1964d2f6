"""The plugin's fixtures without running containers: factory arguments, fixture names, the
facade, hook registration, the machine check (a ``pytest.UsageError`` only for sessions that use
containers) and the terminal summary."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import pytest

import pytest_minidock
from pytest_minidock import build, container, wait
from pytest_minidock.errors import UsageError
from pytest_minidock.fixtures import Container, summary_lines
from pytest_minidock.fixtures import session as state

if TYPE_CHECKING:
    from pathlib import Path

NO_HYPOTHESIS = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider")

CONFTEST = """
from pytest_minidock import build, container, wait

redis = container("redis:7", ports=[6379], scope="session")
app_image = build("app", buildargs={"PY": "3.11"})
"""


def test_the_facade_exports_the_fixed_names() -> None:
    assert pytest_minidock.wait is importlib.import_module("pytest_minidock.wait")
    assert wait.tcp(80) == pytest_minidock.wait.tcp(80)
    assert container is importlib.import_module("pytest_minidock.fixtures").container
    assert {"build", "container", "wait"} <= set(pytest_minidock.__all__)


def test_build_stays_the_factory_when_the_builder_package_is_imported() -> None:
    builder = importlib.import_module("pytest_minidock.build.builder")
    from pytest_minidock import build as again

    assert again is build
    assert pytest_minidock.build is build
    assert callable(build)
    assert build.builder is builder  # the subpackage is still reachable through it
    fixture = build("ctx", tag="x:1")
    assert "The image built from ctx" in (fixture.__doc__ or "")


def test_factories_make_fixtures_named_by_their_attribute(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    result = pytester.runpytest_inprocess(*NO_HYPOTHESIS, "--fixtures")
    result.stdout.fnmatch_lines(
        [
            "*- fixtures defined from conftest -*",
            "redis [[]session scope[]] -- *factories.py:*",
            "    A container of redis:7 (pytest-minidock).",
            "app_image [[]session scope[]] -- *factories.py:*",
            "    The image built from app (pytest-minidock).",
        ]
    )
    result.stdout.fnmatch_lines_random(
        [
            "minidock [[]session scope[]] -- *plugin.py:*",
            "minidock_session [[]session scope[]] -- *plugin.py:*",
        ]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scope": "forever"}, "unknown scope 'forever'"),
        ({"shared": True}, "container(shared=True) needs scope='session'"),
        ({"wait": "tcp"}, "wait must be a wait strategy such as wait.tcp(80), not 'tcp'"),
        ({"pull": "sometimes"}, "pull must be missing, always or never, not 'sometimes'"),
        ({"command": ["sh", 1]}, "command must be a string or a list of strings"),
    ],
)
def test_bad_factory_arguments_fail_at_once(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as info:
        container("busybox", **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_the_machine_check_names_what_is_missing(tmp_path: Path) -> None:
    # an ordinary user runs containers rootless, unless user namespaces are forbidden
    assert state.missing_capability(euid=1000, proc_sys=tmp_path) is None
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "max_user_namespaces").write_text("0\n")
    reason = state.missing_capability(euid=1000, proc_sys=tmp_path) or ""
    assert "needs root to run containers" in reason
    assert "user.max_user_namespaces = 0" in reason
    no_admin = "Name:\tpytest\nCapEff:\t0000000000000000\n"
    assert "needs CAP_SYS_ADMIN" in (state.missing_capability(euid=0, status=no_admin) or "")
    full = "CapEff:\t000001ffffffffff\n"
    assert state.missing_capability(euid=0, status=full) is None


def test_sessions_using_containers_stop_early_on_a_machine_that_cannot(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "missing_capability", lambda: "no root here: ask for it")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        def test_plain():
            pass

        def test_redis(redis):
            pass
        """
    )
    result = pytester.runpytest_inprocess(*NO_HYPOTHESIS)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: no root here: ask for it",
            "1 collected test(s) use containers, the first: "
            "test_sessions_using_containers_stop_early_on_a_machine_that_cannot.py::test_redis",
        ]
    )
    # the same session without the container test runs: nothing asks for containers
    result = pytester.runpytest_inprocess(*NO_HYPOTHESIS, "-k", "plain")
    result.assert_outcomes(passed=1, deselected=1)
    pytester.makepyfile("def test_store(minidock_store):\n    pass\n")
    result = pytester.runpytest_inprocess(*NO_HYPOTHESIS, f"--minidock-root={pytester.path}")
    result.assert_outcomes(passed=1)


def test_hookspecs_are_registered_and_checked(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        def pytest_minidock_keep(config, container, failed):
            return None

        def pytest_minidock_container_spec(request, spec):
            pass
        """
    )
    pytester.makepyfile("def test_x():\n    pass\n")
    pytester.runpytest_inprocess(*NO_HYPOTHESIS).assert_outcomes(passed=1)
    pytester.makeconftest("def pytest_minidock_keep(config, container, mood):\n    pass\n")
    result = pytester.runpytest_inprocess(*NO_HYPOTHESIS)
    assert result.ret != pytest.ExitCode.OK
    assert "pytest_minidock_keep" in result.stdout.str() + result.stderr.str()


def test_the_summary_aggregates_workers() -> None:
    lines = summary_lines(
        [
            {"start": [0.010, 0.030], "ready": [0.001, 0.002], "images": [], "kept": []},
            {
                "start": [0.020],
                "ready": [0.005],
                "images": [
                    {"fixture": "app_image", "id": "sha256:" + "ab" * 32, "seconds": 1.5},
                    {
                        "fixture": "db",
                        "id": "sha256:" + "cd" * 32,
                        "seconds": 0.1,
                        "steps": 4,
                        "cached": 3,
                    },
                ],
                "kept": [
                    {
                        "name": "redis-1a2b3c",
                        "published": ["127.0.0.1:41234->6379/tcp"],
                        "hint": "minidock exec -it redis-1a2b3c sh",
                    }
                ],
            },
        ]
    )
    assert lines == [
        "containers: 3 started (p50 start 20 ms, p50 ready 2 ms)",
        "image app_image: sha256:abababababab in 1.50 s",
        "image db: sha256:cdcdcdcdcdcd in 0.10 s, 3 of 4 steps cached",
        "kept redis-1a2b3c: 127.0.0.1:41234->6379/tcp",
        "    minidock exec -it redis-1a2b3c sh",
    ]
    assert summary_lines([]) == []


class _Record:
    def __init__(self, config: dict[str, object]) -> None:
        self.config = config


class _Engine:
    """Just enough engine for a handle to read a container's docker-shaped NetworkSettings."""

    def __init__(self, settings: dict[str, object]) -> None:
        self.settings = settings

    def container(self, name: str) -> _Record:
        return _Record({"NetworkSettings": self.settings})


def _handle(settings: dict[str, object], network: str = "minidock-abc123") -> Container:
    from pytest_minidock.runtime.container import Started

    started = Started("f" * 64, 1234, 1233, False)
    return Container(_Engine(settings), started, name="web-abc123", network=network)  # type: ignore[arg-type]


SETTINGS = {
    "Ports": {
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "41234"}],
        "9000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41235"}],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "41236"}],
        "7000/tcp": None,
    },
    "Networks": {
        "bridge": {"IPAddress": "172.17.0.5"},
        "minidock-abc123": {"IPAddress": "10.89.0.7", "Aliases": ["web"]},
    },
}


def test_the_handle_reads_published_ports_and_addresses() -> None:
    web = _handle(SETTINGS)
    assert web.addr(8080) == ("127.0.0.1", 41234)
    assert web.addr("8080/tcp") == ("127.0.0.1", 41234)
    assert web.addr(9000) == ("127.0.0.1", 41235)  # 0.0.0.0: reachable on loopback
    assert web.addr("53/udp") == ("127.0.0.1", 41236)
    assert web.url(8080) == "http://127.0.0.1:41234/"
    assert web.url(8080, "/health?x=1") == "http://127.0.0.1:41234/health?x=1"
    assert web.url(9000, "api", scheme="https") == "https://127.0.0.1:41235/api"
    assert web.ip == "10.89.0.7"  # its address on the session network, not the first one
    assert web.published() == [
        "127.0.0.1:41236->53/udp",
        "127.0.0.1:41234->8080/tcp",
        "127.0.0.1:41235->9000/tcp",
    ]


def test_an_unpublished_port_is_an_error_naming_what_is_published() -> None:
    web = _handle(SETTINGS)
    for port in (7000, 1234, "8080/udp"):
        with pytest.raises(UsageError) as info:
            web.addr(port)
        assert "of container web-abc123 is not published (published: 53/udp -> " in str(info.value)
    bare = _handle({})
    with pytest.raises(UsageError, match=r"port 80/tcp of container web-abc123 is not published"):
        bare.url(80)
    with pytest.raises(UsageError, match="container web-abc123 has no IP address"):
        _ = bare.ip
    assert _handle({"Networks": {"other": {"IPAddress": "10.0.0.2"}}}).ip == "10.0.0.2"
