"""``run`` and ``create`` without argparse: ``cli.quick_args`` parses as argparse does, or not."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_minidock.cli import build_parser, quick_args
from pytest_minidock.cli.flags import DETACH, RUN_FLAGS


def argparse_values(argv: list[str]) -> dict[str, object] | None:
    """What the real parser makes of ``argv``, or None when it refuses it."""
    command = next(a for a in argv if a in ("run", "create"))
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return vars(build_parser(command).parse_args(argv))
    except SystemExit:
        return None


def check(argv: list[str]) -> bool:
    """Assert that the quick parse, when it answers, equals argparse's; say whether it answered."""
    quick = quick_args(argv)
    if quick is None:
        return False
    expected = argparse_values(argv)
    assert expected is not None, f"argparse refuses {argv}, the quick parse did not"
    assert vars(quick) == expected, argv
    return True


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "busybox"],
        ["run", "--rm", "busybox", "true"],
        ["run", "--rm", "--network", "none", "busybox", "true"],
        ["--root", "/tmp/x", "run", "-d", "--name=web", "-p", "8080:80", "nginx"],
        ["--root=/tmp/x", "create", "--name", "db", "-e", "A=1", "-eB=2", "postgres:16"],
        ["run", "-it", "--rm", "debian:bookworm-slim", "bash", "-l"],
        ["run", "-ite", "X=1", "busybox", "env"],
        ["run", "-p8080:80", "-v", "/a:/b:ro", "--tmpfs", "/run", "busybox"],
        ["run", "--pids-limit", "20", "--stop-timeout=3", "--pull=never", "busybox"],
        ["run", "--net", "host", "-h", "box", "-u", "1000:1000", "-w", "/tmp", "busybox"],
        ["run", "busybox", "sh", "-c", "echo --rm -d"],  # options after the image: the command's
        ["run", "--name=", "busybox"],
        ["run", "-e=A", "-eB=C", "-e", "D=", "busybox"],
        ["create", "--entrypoint", "sh", "-l", "a=b", "--cap-add", "NET_ADMIN", "busybox"],
    ],
)
def test_everyday_command_lines_skip_argparse_and_agree_with_it(argv: list[str]) -> None:
    assert check(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--help"],
        ["run", "--rmm", "busybox"],  # unknown
        ["run", "--netw", "none", "busybox"],  # argparse's abbreviation
        ["run", "-e", "-x", "busybox"],  # a value that looks like an option
        ["run", "--pids-limit", "many", "busybox"],
        ["run", "--pull", "sometimes", "busybox"],
        ["run", "--rm"],  # no image
        ["run", "--", "busybox"],
        ["run", "--rm=yes", "busybox"],
        ["create", "-d", "busybox"],  # create has no -d
        ["--root", "-x", "run", "busybox"],
        ["ps", "-a"],
    ],
)
def test_anything_unusual_is_left_to_argparse(argv: list[str]) -> None:
    assert quick_args(argv) is None


def test_the_table_builds_the_same_parser_argparse_shows() -> None:
    """Every flag of the table is an option of both parsers; ``-d`` only of ``run``."""
    for command in ("run", "create"):
        parser = build_parser(command)
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[index]
        strings = {s for a in sub._actions for s in a.option_strings}
        for flag in RUN_FLAGS:
            assert set(flag.names) <= strings
        assert (set(DETACH.names) <= strings) == (command == "run")


_SPELLINGS = [name for flag in (*RUN_FLAGS, DETACH) for name in flag.names]
_VALUES = st.sampled_from(
    ["", "x", "A=1", "8080:80", "-x", "--rm", "=", "5", "-1", "never", "a b", "--", "-", "busybox"]
)
_TOKENS = st.one_of(
    st.sampled_from(_SPELLINGS),
    st.builds(lambda n, v: f"{n}={v}", st.sampled_from(_SPELLINGS), _VALUES),
    st.builds(
        lambda a, b: f"-{a}{b}",
        st.sampled_from("ditPhe"),
        st.sampled_from(["", "t", "i", "x", "A=1", "5"]),
    ),
    _VALUES,
)


@settings(max_examples=400, deadline=None)
@given(
    command=st.sampled_from(["run", "create"]),
    root=st.sampled_from([[], ["--root", "/r"], ["--root=/r"]]),
    tokens=st.lists(_TOKENS, max_size=8),
)
def test_quick_parse_agrees_with_argparse(command: str, root: list[str], tokens: list[str]) -> None:
    check([*root, command, *tokens])
