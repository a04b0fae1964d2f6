"""``build()`` fixtures: lazy, once per session, wired to ``Engine.build`` with the session's
options (``--minidock-no-cache``, ``--minidock-pull``) and the build-progress hook, and a clear
error when the engine has no builder. The builder itself is the build layer's to test: here a
stand-in engine (the ``pytest_minidock_engine`` hook) records the calls."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest

from tests.plugin.conftest import inner_args

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_minidock.api import Engine

pytestmark = [pytest.mark.privileged, pytest.mark.rootless]

RECORDING_BUILDER = """
import json, os
from pytest_minidock import build, container, wait
from pytest_minidock.fixtures import SessionEngine
from pytest_minidock.reference import Reference

class RecordingBuilder(SessionEngine):
    def build(self, context, *, dockerfile=None, tags=(), buildargs=None, target=None,
              no_cache=False, pull=False, progress=None):
        with open(os.environ["OUT"], "a") as f:
            f.write(json.dumps({"context": context, "dockerfile": dockerfile, "tags": list(tags),
                                "buildargs": buildargs, "target": target,
                                "no_cache": no_cache, "pull": pull}) + "\\n")
        progress({"step": "1/1", "cached": False})
        for tag in tags:
            self.store.tag("busybox", Reference.parse(tag))
        return self.store.resolve("busybox")

def pytest_minidock_engine(config, root, session):
    return RecordingBuilder(root, session=session)

def pytest_minidock_build_progress(config, image, event):
    with open(os.environ["OUT"], "a") as f:
        f.write(json.dumps({"progress": image, "event": event}) + "\\n")

app_image = build("app", dockerfile="Dockerfile.test", buildargs={"PY": "3.11"},
                  target="final", tag="app:test")
app = container(app_image, command="sleep 600", wait=wait.none())
unused_image = build("nowhere")
"""


def test_build_fixtures_call_the_engine_builder_once_with_the_session_options(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(RECORDING_BUILDER)
    (pytester.mkdir("app") / "Dockerfile.test").write_text("FROM busybox\n")
    pytester.makepyfile(
        """
        def test_one(app, app_image):
            assert app.record().config["ImageID"] == app_image.id
            assert str(app_image) == "app:test"

        def test_two(app_image):
            assert app_image.fixture == "app_image" and app_image.tags == ("app:test",)
        """
    )
    out = pytester.path / "calls.jsonl"
    monkeypatch.setenv("OUT", str(out))
    args = inner_args(plugin_root, "--minidock-no-cache", "--minidock-pull=always")
    result = pytester.runpytest_inprocess(*args)
    result.assert_outcomes(passed=2)
    calls = [json.loads(line) for line in out.read_text().splitlines()]
    assert calls == [
        {
            "context": str(pytester.path / "app"),  # next to the conftest that called build()
            "dockerfile": "Dockerfile.test",
            "tags": ["app:test"],
            "buildargs": {"PY": "3.11"},
            "target": "final",
            "no_cache": True,
            "pull": True,
        },
        {"progress": "app_image", "event": {"step": "1/1", "cached": False}},
    ]  # once for the session, and never for the unused build() fixture
    result.stdout.fnmatch_lines(["*= minidock =*", "*", "image app_image: sha256:* in * s"])
    engine.remove_image("app:test")


def test_a_missing_builder_or_context_is_a_clear_error(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makeconftest(
        """
        import os
        from pytest_minidock import build
        from pytest_minidock.fixtures import SessionEngine

        class NoBuilder(SessionEngine):
            build = None

        def pytest_minidock_engine(config, root, session):
            return NoBuilder(root, session=session) if os.environ.get("NO_BUILDER") else None

        image = build("missing")
        """
    )
    pytester.makepyfile("def test_image(image):\n    pass\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_BUILDER", "1")
        result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*build() fixture 'image': this version of pytest-minidock has no Dockerfile builder*"]
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*build() fixture 'image': no such build context: */missing"])


DOCKERFILE = """FROM busybox
ARG GREETING
RUN echo "$GREETING" > /greeting && cat /proc/sys/kernel/random/uuid > /stamp
CMD ["sleep", "600"]
LABEL token={token}
"""

BUILT = """
import json, os
from pytest_minidock import build, container, wait

app_image = build("app", buildargs={"GREETING": "hi there"})
app = container(app_image, wait=wait.none(), scope="session")

def test_built(app, app_image, worker_id):
    with open(os.path.join(os.environ["OUT"], worker_id), "w") as f:
        json.dump({"id": app_image.id, "steps": app_image.steps, "cached": app_image.cached,
                   "stamp": app.exec("cat /stamp").stdout.decode(),
                   "greeting": app.exec("cat /greeting").stdout.decode()}, f)
"""


def _build_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    (pytester.mkdir("app") / "Dockerfile").write_text(DOCKERFILE.format(token=os.urandom(8).hex()))
    pytester.makepyfile(BUILT)
    out = pytester.mkdir("out")
    monkeypatch.setenv("OUT", str(out))
    return out


def _results(out: Path) -> dict[str, dict[str, object]]:
    return {p.name: json.loads(p.read_text()) for p in out.iterdir()}


def test_a_build_fixture_builds_with_the_engine_builder_and_its_cache(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _build_project(pytester, monkeypatch)
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=1)
    first = _results(out)["master"]
    assert first["greeting"] == "hi there\n"
    assert first["cached"] < first["steps"]  # the RUN step ran
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=1)
    second = _results(out)["master"]
    assert second["id"] == first["id"]
    assert second["stamp"] == first["stamp"]  # the RUN step came from the cache
    assert second["cached"] == second["steps"]
    result.stdout.fnmatch_lines([f"image app_image: {first['id'][:19]} in * s, * steps cached"])


def test_xdist_workers_build_an_image_once(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _build_project(pytester, monkeypatch)
    result = pytester.runpytest_subprocess(*inner_args(plugin_root, "-n", "2", "--dist", "each"))
    result.assert_outcomes(passed=2)
    seen = _results(out)
    assert set(seen) == {"gw0", "gw1"}
    # one build: a RUN step executed twice would have written two different stamps
    assert seen["gw0"]["stamp"] == seen["gw1"]["stamp"]
    assert seen["gw0"]["id"] == seen["gw1"]["id"]
    ran = [w for w in seen.values() if w["cached"] < w["steps"]]  # type: ignore[operator]
    assert len(ran) == 1, seen  # the other worker found every step in the cache
