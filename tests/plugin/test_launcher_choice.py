"""Whether a session starts its containers through the runtime's launcher: only when the collected
tests will start at least ``LAUNCHER_MIN_CONTAINERS`` (counted at collection, when the launcher
is then started ahead); a session with a container or two forks them itself. Either way they die
with the session and leave nothing; a session's lone container is on the default bridge, more are
on the session network."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.fixtures.session import LAUNCHER_MIN_CONTAINERS, expected_containers
from tests.plugin.conftest import inner_args

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_minidock.api import Engine


# -- counting (no containers started) -------------------------------------------------------------
FIXTURES = """
from pytest_minidock import build, container

per_test = container("busybox")
per_module = container("busybox", scope="module")
per_class = container("busybox", scope="class")
once = container("busybox", scope="session")
image = build(".")
client = container("busybox", links=[once])
built = container(image)
"""


def _count(pytester: pytest.Pytester, tests: str) -> int | None:
    pytester.makeconftest(FIXTURES)
    pytester.makepyfile(test_a=tests, test_b="def test_b(once, per_module):\n    pass\n")
    items = pytester.getitems(pytester.path)
    return expected_containers(items)


def test_function_scoped_ones_count_per_test_wider_ones_per_node(
    pytester: pytest.Pytester,
) -> None:
    tests = """
import pytest

@pytest.mark.parametrize("i", range(3))
def test_each(i, per_test):
    pass

def test_once(once, per_module):
    pass

def test_nothing():
    pass

class TestC:
    def test_1(self, per_class, once):
        pass

    def test_2(self, per_class):
        pass
"""
    # per_test 3, once 1, per_module 2 (two modules), per_class 1
    assert _count(pytester, tests) == 7


def test_links_count_too(pytester: pytest.Pytester) -> None:
    # client and its link; test_b: once (again: it counts as a link above) and per_module
    assert _count(pytester, "def test_it(client):\n    pass\n") == 4


def test_the_engine_fixture_or_a_build_makes_the_count_unknown(pytester: pytest.Pytester) -> None:
    assert _count(pytester, "def test_it(minidock):\n    pass\n") is None
    assert _count(pytester, "def test_it(image):\n    pass\n") is None
    assert _count(pytester, "def test_it(built):\n    pass\n") is None


# -- in a session ----------------------------------------------------------------------------------
RECORD = """
import json, os
from pathlib import Path

from pytest_minidock import container, wait

c = container("busybox", command="sleep 600", wait=wait.none())

def pytest_runtest_call(item):
    handle = item.funcargs["c"]
    status = Path(f"/proc/{handle.pid}/status").read_text()
    parent = int(next(l for l in status.splitlines() if l.startswith("PPid:")).split()[1])
    cmdline = Path(f"/proc/{parent}/cmdline").read_bytes().replace(b"\\0", b" ").decode()
    with open(os.environ["OUT"], "a") as f:
        row = {"pid": handle.pid, "parent": cmdline, "network": handle.network, "ip": handle.ip}
        f.write(json.dumps(row) + "\\n")
"""


@pytest.mark.privileged
@pytest.mark.netns
@pytest.mark.parametrize("tests", [1, LAUNCHER_MIN_CONTAINERS])
def test_a_few_containers_are_forked_by_the_session_more_by_its_launcher(
    tests: int,
    pytester: pytest.Pytester,
    plugin_root: Path,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = pytester.path / "parents.jsonl"
    monkeypatch.setenv("OUT", str(out))
    pytester.makeconftest(RECORD)
    pytester.makepyfile(
        f"import pytest\n\n@pytest.mark.parametrize('i', range({tests}))\n"
        "def test_it(i, c):\n    pass\n"
    )
    result = pytester.runpytest_subprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=tests)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    parents = [row["parent"] for row in rows]
    assert len(parents) == tests
    (network,) = {row["network"] for row in rows}
    if tests == 1:  # a lone container needs no session network: the default bridge
        assert network == "default", network
    else:
        assert network.startswith("minidock-"), network
    assert all(row["ip"] for row in rows)
    via_launcher = [p for p in parents if "runtime.launcher" in p]
    if tests < LAUNCHER_MIN_CONTAINERS:
        assert via_launcher == [], parents  # PID 1's parent: its monitor, forked from pytest
    else:
        assert via_launcher == parents
    # (the engine fixture fails the test if a container or a network was left)


@pytest.mark.parametrize(
    ("expected", "reuse", "keep_all", "retention", "alone"),
    [
        (1, False, False, "none", True),
        (2, False, False, "none", False),  # two containers (or one and its link)
        (None, False, False, "none", False),  # the minidock engine or build(): unknown
        (1, True, False, "none", False),  # reattached next run: the stable session network
        (1, False, True, "none", False),  # kept with its network
        (1, False, False, "failed", False),
    ],
)
def test_a_lone_container_goes_on_the_default_bridge_only_when_nothing_is_kept(
    expected: int | None, reuse: bool, keep_all: bool, retention: str, alone: bool
) -> None:
    from pytest_minidock.fixtures.session import MinidockSession

    session = MinidockSession.__new__(MinidockSession)
    session.expected, session.reuse, session.keep_all = expected, reuse, keep_all
    session.retention = retention
    assert session._alone() is alone
