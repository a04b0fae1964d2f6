"""The registry commands' shell: lazy imports, argument handling, progress rendering."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.cli import build_parser, main
from pytest_minidock.cli.registry import ProgressPrinter
from pytest_minidock.registry.progress import Progress

if TYPE_CHECKING:
    from pathlib import Path


def test_images_imports_no_registry_code(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pytest_minidock.cli import main\n"
        f"assert main(['--root', {str(tmp_path)!r}, 'images']) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.startswith('pytest_minidock.registry')\n"
        "               or m in ('ssl', 'http.client', 'concurrent.futures'))\n"
        "print('loaded:', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "loaded: []"


def test_registry_commands_and_the_pull_flag_parse() -> None:
    args = build_parser("pull").parse_args(["pull", "--platform", "linux/arm64", "redis:7"])
    assert (args.reference, args.platform, args.quiet) == ("redis:7", "linux/arm64", False)
    args = build_parser("login").parse_args(["login", "-u", "me", "--password-stdin", "r:5000"])
    assert (args.username, args.password_stdin, args.server) == ("me", True, "r:5000")
    assert build_parser("logout").parse_args(["logout"]).server is None
    assert build_parser("push").parse_args(["push", "-q", "r:5000/x:1"]).quiet
    for command in ("run", "create"):
        assert build_parser(command).parse_args([command, "busybox"]).pull == "missing"
        args = build_parser(command).parse_args([command, "--pull", "never", "busybox", "true"])
        assert (args.pull, args.image, args.command) == ("never", "busybox", ["true"])


def test_an_unknown_pull_policy_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser("run").parse_args(["run", "--pull", "sometimes", "busybox"])
    assert info.value.code == 2
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


def test_login_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    assert main(["--root", root, "login", "--password-stdin", "r.example"]) == 1
    assert "must provide --username with --password-stdin" in capsys.readouterr().err
    code = main(["--root", root, "login", "-p", "x", "--password-stdin", "-u", "u"])
    assert code == 1
    assert "mutually exclusive" in capsys.readouterr().err


def test_run_with_pull_never_names_the_policy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["--root", str(tmp_path / "root"), "create", "--pull", "never", "nosuch:1"])
    assert code == 125
    assert "the pull policy is 'never'" in capsys.readouterr().err


def pull_events() -> list[Progress]:
    return [
        Progress("1", "Pulling from", detail="tools/app"),
        Progress("aaaaaaaaaaaa", "Already exists", 10, 10),
        Progress("bbbbbbbbbbbb", "Pulling fs layer", 0, 2_000_000),
        Progress("bbbbbbbbbbbb", "Downloading", 0, 2_000_000),
        Progress("bbbbbbbbbbbb", "Downloading", 1_000_000, 2_000_000),
        Progress("bbbbbbbbbbbb", "Downloading", 2_000_000, 2_000_000),
        Progress("bbbbbbbbbbbb", "Verifying Checksum", 2_000_000, 2_000_000),
        Progress("bbbbbbbbbbbb", "Download complete", 2_000_000, 2_000_000),
        Progress("bbbbbbbbbbbb", "Pull complete", 2_000_000, 2_000_000),
    ]


def test_plain_progress_prints_one_line_per_state_change() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=False)
    for event in pull_events():
        printer(event)
    assert out.getvalue().splitlines() == [
        "1: Pulling from tools/app",
        "aaaaaaaaaaaa: Already exists",
        "bbbbbbbbbbbb: Pulling fs layer",
        "bbbbbbbbbbbb: Downloading",
        "bbbbbbbbbbbb: Verifying Checksum",
        "bbbbbbbbbbbb: Download complete",
        "bbbbbbbbbbbb: Pull complete",
    ]


def test_terminal_progress_redraws_each_layer_s_line_in_place() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=True)
    printer(Progress("aaaaaaaaaaaa", "Pulling fs layer", 0, 100))
    printer(Progress("bbbbbbbbbbbb", "Pulling fs layer", 0, 100))
    printer(Progress("aaaaaaaaaaaa", "Downloading", 50, 100))
    printer(Progress("bbbbbbbbbbbb", "Pushed", 100, 100))
    printer(Progress("cccccccccccc", "Mounted from", 1, 1, "library/busybox"))
    text = out.getvalue()
    first, second, *_ = text.split("\n")
    assert first == "aaaaaaaaaaaa: Pulling fs layer"
    assert second == "bbbbbbbbbbbb: Pulling fs layer"
    bar = "[" + "=" * 25 + ">" + " " * 25 + "]"
    assert f"\x1b[2A\r\x1b[2Kaaaaaaaaaaaa: Downloading {bar}      50B/100B\x1b[2B\r" in text
    assert "\x1b[1A\r\x1b[2Kbbbbbbbbbbbb: Pushed\x1b[1B\r" in text
    assert text.endswith("cccccccccccc: Mounted from library/busybox\n")
