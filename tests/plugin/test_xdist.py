"""pytest-xdist: per-worker containers by default, ``shared=True`` ones started once for all
workers and removed by the last one out."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.plugin.conftest import inner_args

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_minidock.api import Engine

pytestmark = [pytest.mark.privileged, pytest.mark.rootless]


def test_a_shared_container_is_started_once_for_all_workers(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(
        """
        from pytest_minidock import container, wait

        common = container("busybox", command="sleep 600", wait=wait.none(), scope="session",
                           shared=True)
        mine = container("busybox", command="sleep 600", wait=wait.none(), scope="session")
        """
    )
    pytester.makepyfile(
        """
        import json, os, time

        def test_both_workers(common, mine, worker_id):
            barrier = os.environ["BARRIER"]
            with open(os.path.join(barrier, worker_id), "w") as f:
                json.dump({"common": [common.id, common.name], "mine": [mine.id, mine.name],
                           "common_running": common.status}, f)
            deadline = time.monotonic() + 60
            while len(os.listdir(barrier)) < 2:  # both hold the shared one at the same time
                assert time.monotonic() < deadline, "the other worker never came"
                time.sleep(0.02)
            assert common.exec("true").exit_code == 0
        """
    )
    barrier = pytester.mkdir("barrier")
    monkeypatch.setenv("BARRIER", str(barrier))
    result = pytester.runpytest_subprocess(*inner_args(plugin_root, "-n", "2", "--dist", "each"))
    result.assert_outcomes(passed=2)
    seen = {p.name: json.loads(p.read_text()) for p in barrier.iterdir()}
    assert set(seen) == {"gw0", "gw1"}
    assert seen["gw0"]["common"] == seen["gw1"]["common"]  # one shared container
    assert seen["gw0"]["mine"][0] != seen["gw1"]["mine"][0]  # one per worker
    assert seen["gw0"]["mine"][1].endswith("-gw0")
    assert seen["gw1"]["mine"][1].endswith("-gw1")
    assert not seen["gw0"]["common"][1].endswith(("-gw0", "-gw1"))
    # started once: three containers in all (the shared one, then one per worker)
    result.stdout.fnmatch_lines(["*= minidock =*", "containers: 3 started*"])
    # the last worker out removed it; nothing else is left (the engine fixture checks too)
    with pytest.raises(Exception, match="no such container"):
        engine.container(seen["gw0"]["common"][0])
    assert not list((plugin_root / "pytest" / "shared").glob("*.json"))
