"""``minidock build``'s flags without argparse: ``cli.flags.quick_parse`` parses them as argparse
does (the same table makes both parsers), or leaves the command line to argparse."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_minidock.cli import build_parser
from pytest_minidock.cli.build import BUILD_FLAGS, cmd_build
from pytest_minidock.cli.flags import quick_parse as quick_flags


def argparse_values(argv: list[str]) -> dict[str, object] | None:
    """What the real parser makes of ``build`` + ``argv`` (without the global options), or None
    when it refuses it."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            parsed = vars(build_parser("build").parse_args(["build", *argv]))
    except SystemExit:
        return None
    del parsed["command"], parsed["root"]
    return parsed


def quick_build(argv: list[str]) -> dict[str, object] | None:
    values = quick_flags(argv, BUILD_FLAGS, positional="context")
    return None if values is None else {**values, "func": cmd_build}


def check(argv: list[str]) -> bool:
    """Assert that the quick parse, when it answers, equals argparse's; say whether it answered."""
    quick = quick_build(argv)
    if quick is None:
        return False
    expected = argparse_values(argv)
    assert expected is not None, f"argparse refuses {argv}, the quick parse did not"
    assert quick == expected, argv
    return True


@pytest.mark.parametrize(
    "argv",
    [
        ["."],
        ["-q", "-t", "app:1", "."],
        ["--no-cache", "-t", "a", "--tag", "b", "--tag=c", "-td", "ctx"],
        [".", "-q", "--progress", "plain"],  # options after the context, as argparse takes them
        ["-f", "Dockerfile.dev", "--build-arg", "A=1", "--build-arg=B", "--target", "test", "."],
        ["-fDockerfile", "--pull", "--network=none", "--platform", "linux/amd64", "ctx"],
        ["--secret", "id=npm,src=.npmrc", "--secret=id=x", "--progress=tty", "."],
        ["--tag=", "--target", "", "."],
        ["--build-arg", "X=--no-cache", "."],
        ["-qt", "x", "."],  # short flags run together
        ["-t=x", "-tb", "."],
    ],
)
def test_everyday_build_lines_skip_argparse_and_agree_with_it(argv: list[str]) -> None:
    assert check(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help", "."],
        ["-h"],
        [],  # no context
        ["-q"],
        [".", "other"],  # two contexts
        ["--no-c", "."],  # argparse's abbreviation
        ["--tags", "x", "."],
        ["-t", "-x", "."],  # a value that looks like an option
        ["-t"],
        ["--progress", "fancy", "."],
        ["--pull=yes", "."],
        ["--tag=--", "."],
        ["--", "."],
        ["-"],  # the context on stdin: argparse takes "-" as it is
        ["-f", "-", "."],
    ],
)
def test_anything_unusual_is_left_to_argparse(argv: list[str]) -> None:
    assert quick_build(argv) is None


TOKENS = [
    ".",
    "ctx",
    "-q",
    "--quiet",
    "-t",
    "--tag",
    "--tag=x",
    "-tx",
    "x:1",
    "-f",
    "--file=D",
    "--no-cache",
    "--pull",
    "--progress",
    "plain",
    "--progress=auto",
    "--build-arg",
    "A=1",
    "--secret",
    "--network",
    "none",
    "--target",
    "--platform",
    "-",
    "--",
    "-x",
    "--no-c",
    "",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=7))
def test_any_mix_of_tokens_is_parsed_as_argparse_does_or_left_to_it(argv: list[str]) -> None:
    check(argv)


def test_the_table_knows_every_option_the_parser_has() -> None:
    parser = build_parser("build")
    sub = next(a for a in parser._actions if a.dest == "command")
    build = sub.choices["build"]  # type: ignore[index]
    options = {s for a in build._actions for s in a.option_strings} - {"-h", "--help"}
    assert options == {name for flag in BUILD_FLAGS for name in flag.names}


def test_a_rebuild_answered_from_its_memo_imports_no_argparse_when_parsed_quickly() -> None:
    """What the quick parse is for: the memo's path then imports neither argparse nor ``re``."""
    code = (
        "import sys\n"
        "from pytest_minidock.cli import quick_args\n"
        "quick_args(['build', '-q', '--no-cache', '-t', 'x', '.'])\n"
        "print(sorted(m for m in ('argparse', 're', 'typing') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
