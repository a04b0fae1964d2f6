"""The pytest plugin: enabled by installing (``pytest11`` entry point), disabled with
``-p no:minidock``; its ``minidock_store`` fixture honours ``--minidock-root`` and the ini key."""

from __future__ import annotations

import pytest

# The inner sessions do not need hypothesis, whose plugin costs ~1 s per session here.
NO_HYPOTHESIS = ("-p", "no:hypothesispytest")

TEST = """
def test_root(minidock_store):
    print("ROOT=" + str(minidock_store.root))
"""


def test_installed_plugin_adds_its_options(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*NO_HYPOTHESIS, "--help")
    result.stdout.fnmatch_lines(["*--minidock-root=DIR*"])


def test_disabled_with_dash_p_no_minidock(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TEST)
    result = pytester.runpytest(*NO_HYPOTHESIS, "-p", "no:minidock")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'minidock_store' not found*"])


def test_store_root_from_option_then_ini(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TEST)
    option_root = pytester.path / "from-option"
    result = pytester.runpytest(*NO_HYPOTHESIS, "-s", f"--minidock-root={option_root}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*ROOT={option_root}"])
    assert (option_root / "oci-layout").is_file()

    ini_root = pytester.path / "from-ini"
    pytester.makeini(f"[pytest]\nminidock_root = {ini_root}\n")
    result = pytester.runpytest(*NO_HYPOTHESIS, "-s")
    result.stdout.fnmatch_lines([f"*ROOT={ini_root}"])


def test_all_options_and_ini_keys_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*NO_HYPOTHESIS, "--help")
    result.stdout.fnmatch_lines_random(
        [
            "*--minidock-keep*",
            "*--minidock-reuse*",
            "*--minidock-pull=*",
            "*--minidock-no-cache*",
            "*--minidock-timeout=SECONDS*",
            "*minidock_pull (string)*",
            "*minidock_timeout (string)*",
            "*minidock_retention (string)*",
        ]
    )


def test_bad_ini_values_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    pytester.makeini("[pytest]\nminidock_retention = sometimes\n")
    result = pytester.runpytest(*NO_HYPOTHESIS)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*ini minidock_retention = 'sometimes': use one of none, failed, all*"]
    )
    pytester.makeini("[pytest]\nminidock_timeout = soon\n")
    result = pytester.runpytest(*NO_HYPOTHESIS)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini minidock_timeout = 'soon': expected seconds*"])
    pytester.makeini("[pytest]\nminidock_pull = maybe\n")
    result = pytester.runpytest(*NO_HYPOTHESIS)
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*NO_HYPOTHESIS, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.minidock(timeout=SECONDS): *"])


class _FakeRewriteHook:
    def __init__(self) -> None:
        self._must_rewrite = {"pytest_minidock", "other_plugin"}
        self._marked_for_rewrite_cache = {
            "pytest_minidock": True,
            "pytest_minidock.plugin": True,
            "pytest_minidockish": False,
            "other_plugin.x": True,
        }


class _FakePluginManager:
    def __init__(self, hook: object) -> None:
        self.rewrite_hook = hook


def test_the_library_is_unmarked_for_assertion_rewriting() -> None:
    from pytest_minidock.plugin import unmark_for_rewrite

    hook = _FakeRewriteHook()
    unmark_for_rewrite(_FakePluginManager(hook))  # type: ignore[arg-type]
    assert hook._must_rewrite == {"other_plugin"}
    assert hook._marked_for_rewrite_cache == {"pytest_minidockish": False, "other_plugin.x": True}
    # pytest's private names gone or changed (or --assert=plain): nothing happens
    unmark_for_rewrite(_FakePluginManager(None))  # type: ignore[arg-type]
    unmark_for_rewrite(_FakePluginManager(object()))  # type: ignore[arg-type]


LOADERS = """
import importlib
import sys

def test_loaders():
    importlib.import_module("pytest_minidock.spec")  # (not imported by the plugin at start)
    for name in ("pytest_minidock.spec", "pytest_minidock.plugin", "test_loaders"):
        print(name, "LOADER=" + type(sys.modules[name].__loader__).__name__)

def test_own_asserts_still_rewritten():
    left = [1]
    assert left == [2]
"""


def test_tests_are_rewritten_and_the_library_is_not(pytester: pytest.Pytester) -> None:
    """The library's modules imported during a session come through Python's own loader (no
    assertion rewriting, whose loader reads cached code several times slower); the tests' own
    assertions are rewritten as ever."""
    pytester.makepyfile(test_loaders=LOADERS)
    result = pytester.runpytest_subprocess(*NO_HYPOTHESIS, "-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines_random(
        [
            "*pytest_minidock.spec LOADER=SourceFileLoader",
            "test_loaders LOADER=AssertionRewritingHook",
            "E       assert [[]1[]] == [[]2[]]",
        ]
    )
