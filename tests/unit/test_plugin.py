"""The pytest plugin: enabled by installing (``pytest11`` entry point), disabled with
``-p no:minidock``; its ``minidock_store`` fixture honours ``--minidock-root`` and the ini key."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
