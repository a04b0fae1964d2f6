"""The end of a session: the last test's containers are removed in place (the session waits for
them right after, so no reaper thread), the veths of removed containers are deleted in the
background and settled before pytest ends, and nothing is left: no container, process, veth,
endpoint or open nf_tables socket."""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING, Any

import pytest

from pytest_minidock.fixtures.reaper import Reaper
from pytest_minidock.runtime import network, nftables
from tests.plugin.conftest import HTTPD, inner_args, process_exists

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_minidock.api import Engine

pytestmark = [pytest.mark.privileged, pytest.mark.netns]

RECORD = """
import json, os

from pytest_minidock.runtime.network import Networks

def pytest_runtest_call(item):
    with open(os.environ["OUT"], "a") as f:
        for name, value in item.funcargs.items():
            if hasattr(value, "exec") and hasattr(value, "addr"):
                links = [a.host_ifname for a in Networks(value.engine.root).attachments(value.id)]
                f.write(json.dumps({"id": value.id, "pid": value.pid, "links": links}) + "\\n")
"""


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def _run(pytester: pytest.Pytester, root: Path, scope: str, tests: int) -> list[dict[str, Any]]:
    out = pytester.path / "used.jsonl"
    pytester.makeconftest(
        RECORD
        + f"""
from pytest_minidock import container

web = container("busybox", command=["sh", "-c", {HTTPD!r}], ports=[8080], scope={scope!r})
"""
    )
    pytester.makepyfile(
        f"""
        import urllib.request

        import pytest

        @pytest.mark.parametrize("i", range({tests}))
        def test_serves(i, web):
            with urllib.request.urlopen(web.url(8080), timeout=10) as answer:
                assert answer.read() == b"hello\\n"
        """
    )
    reaped: list[dict[str, Any]] = []
    submit = Reaper.submit

    def counting_submit(self: Reaper, handle: Any) -> None:
        reaped.append({"reaped": handle.id})
        submit(self, handle)

    with pytest.MonkeyPatch.context() as mp:  # (the inner session runs in this process)
        mp.setenv("OUT", str(out))
        mp.setattr(Reaper, "submit", counting_submit)
        result = pytester.runpytest_inprocess(*inner_args(root))
    result.assert_outcomes(passed=tests)
    return _rows(out) + reaped


def _nothing_left(engine: Engine, used: list[dict[str, Any]]) -> None:
    links = _links()
    for row in used:
        assert not engine.runtime.state.dir(row["id"]).exists(), row
        assert not process_exists(row["pid"]), row
        assert row["links"], row  # (it was attached)
        for name in row["links"]:
            assert f" {name}@" not in links, row  # settled before pytest ended
    assert not network._pending  # (every deletion joined)
    assert not nftables._sockets  # closed at the end, not left to the exit (a ResourceWarning)


def test_a_session_container_is_removed_in_place_and_leaves_nothing(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    rows = _run(pytester, plugin_root, "session", 1)
    used = [r for r in rows if "id" in r]
    assert len(used) == 1
    assert not [r for r in rows if "reaped" in r]  # no reaper thread for the last teardown
    _nothing_left(engine, used)


def test_function_scoped_removals_go_to_the_reaper_but_the_last(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    rows = _run(pytester, plugin_root, "function", 3)
    used = [r for r in rows if "id" in r]
    assert len({r["id"] for r in used}) == 3
    reaped = [r["reaped"] for r in rows if "reaped" in r]
    assert reaped == [used[0]["id"], used[1]["id"]]  # the last one was removed in place
    _nothing_left(engine, used)
