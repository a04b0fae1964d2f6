"""The ``minidock`` command for images: docker's names, flags, output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.cli import main
from pytest_minidock.cli.images import human_duration, human_size

if TYPE_CHECKING:
    from pathlib import Path


def run(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--root", str(root), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0B"), (999, "999B"), (2_150_000, "2.15MB"), (1_234_567_890, "1.235GB")]
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


@pytest.mark.parametrize(
    ("s", "text"),
    [
        (0, "Less than a second"),
        (30, "30 seconds"),
        (90, "About a minute"),
        (600, "10 minutes"),
        (3600, "About an hour"),
        (7200, "2 hours"),
        (3 * 86400, "3 days"),
        (21 * 86400, "3 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(s: int, text: str) -> None:
    assert human_duration(s) == text


def test_import_images_tag_save_rmi_load_round_trip(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, busybox_rootfs: Path
) -> None:
    root = tmp_path / "store"
    code, out, _ = run(
        capsys, root, "import", "-c", 'CMD ["sh"]', str(busybox_rootfs), "busybox:latest"
    )
    assert code == 0
    image_id = out.strip()
    assert image_id.startswith("sha256:")

    code, out, _ = run(capsys, root, "images")
    header, row = out.splitlines()
    assert header.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert row.split()[:3] == ["busybox", "latest", image_id[7:19]]
    assert row.rstrip().endswith("MB")

    assert run(capsys, root, "tag", "busybox", "localhost:5000/tools/bb:1")[0] == 0
    code, out, _ = run(capsys, root, "images", "-q")
    assert out.split() == [image_id[7:19]]
    code, out, _ = run(capsys, root, "images", "localhost:5000/tools/bb")
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["localhost:5000/tools/bb", "1"]]

    code, out, _ = run(capsys, root, "inspect", "busybox")
    (info,) = json.loads(out)
    assert info["Id"] == image_id
    assert info["Config"]["Cmd"] == ["sh"]
    code, out, _ = run(capsys, root, "inspect", "-f", "{{.Id}} {{json .Config.Cmd}}", "busybox")
    assert out.strip() == f'{image_id} ["sh"]'

    archive = tmp_path / "bb.tar"
    assert (
        run(capsys, root, "save", "-o", str(archive), "busybox", "localhost:5000/tools/bb:1")[0]
        == 0
    )
    code, out, _ = run(capsys, root, "rmi", "busybox", "localhost:5000/tools/bb:1")
    assert out.splitlines() == [
        "Untagged: busybox:latest",
        "Untagged: localhost:5000/tools/bb:1",
        f"Deleted: {image_id}",
    ]
    assert run(capsys, root, "images", "-q")[1] == ""

    code, out, _ = run(capsys, root, "load", "-i", str(archive))
    assert code == 0
    assert out.splitlines() == [
        "Loaded image: busybox:latest",
        "Loaded image: localhost:5000/tools/bb:1",
    ]
    assert run(capsys, root, "images", "-q")[1].split() == [image_id[7:19]]
    code, out, _ = run(capsys, root, "system", "check")
    assert (code, out.strip()) == (0, "store is consistent")


def test_errors_are_one_line_and_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = tmp_path / "store"
    code, _, err = run(capsys, root, "rmi", "nosuch:1")
    assert (code, err.strip()) == (1, "Error: no such image: nosuch:1")
    code, _, err = run(capsys, root, "tag", "nosuch", "x")
    assert (code, err.strip()) == (1, "Error: no such image: nosuch")
    code, _, err = run(capsys, root, "import", str(tmp_path / "missing.tar"), "x")
    assert code == 1
    assert err.startswith("Error: cannot open ")
    assert "missing.tar" in err
    code, _, err = run(capsys, root, "load", "-i", str(root / "oci-layout"))
    assert code == 1
    assert "not a readable image archive" in err


def test_image_prune_and_system_df(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, busybox_rootfs: Path
) -> None:
    root = tmp_path / "store"
    run(capsys, root, "import", str(busybox_rootfs), "bb:1")
    run(capsys, root, "import", str(busybox_rootfs), "bb:1")  # the first becomes dangling
    assert "<none>" in run(capsys, root, "images")[1]
    _code, out, _ = run(capsys, root, "system", "df")
    assert out.splitlines()[1].split()[:3] == ["Images", "2", "0"]
    _code, out, _ = run(capsys, root, "image", "prune", "-f")
    assert out.splitlines()[0].startswith("deleted: sha256:")
    assert "<none>" not in run(capsys, root, "image", "ls")[1]


def test_python_dash_m_and_the_console_script(tmp_path: Path) -> None:
    from pathlib import Path

    script = Path(sys.executable).parent / "minidock"
    for argv in ([sys.executable, "-m", "pytest_minidock"], [str(script)]):
        res = subprocess.run(
            [*argv, "--root", str(tmp_path), "images"], capture_output=True, text=True, check=False
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]


def test_a_relative_root_is_made_absolute_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Containers and RUN steps resolve the root after a chdir: the CLI hands on an absolute one."""
    from pytest_minidock.cli import images

    seen: list[str] = []
    original = images.cmd_images

    def spy(args: object) -> int:
        seen.append(args.root)  # type: ignore[attr-defined]
        return original(args)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "cmd_images", spy)
    monkeypatch.chdir(tmp_path)
    assert main(["--root", "rel", "images"]) == 0
    capsys.readouterr()
    assert seen == [str(tmp_path / "rel")]
    assert (tmp_path / "rel" / "oci-layout").is_file()


def _subcommands(parser: object) -> dict[str, object]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_command_table_names_every_subcommand() -> None:
    """``build_parser(only=...)`` imports only the module the table names for a command, so the
    table must list exactly the subcommands the modules add, and each alone must parse."""
    from pytest_minidock.cli import _COMMANDS, build_parser

    every = _subcommands(build_parser())
    listed = [name for _module, _adder, names in _COMMANDS for name in names]
    assert sorted(listed) == sorted(every)
    for name in listed:
        assert list(_subcommands(build_parser(only=name))) == [name]


def test_console_script_skips_teardown_but_not_output(tmp_path: Path) -> None:
    """``entry`` leaves with ``os._exit`` when nothing is registered to run at exit: all
    output is flushed first, even to a pipe, and the status is the command's."""
    code = (
        "import sys\n"
        "from pytest_minidock.cli import entry\n"
        "sys.argv[1:] = ['--root', sys.argv[1], 'images']\n"
        "sys.exit(entry())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "root")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("REPOSITORY")
    bad = subprocess.run(
        [sys.executable, "-c", code.replace("'images'", "'rmi', 'nothing:here'"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert "nothing:here" in bad.stderr


def test_exit_keeps_the_interpreter_teardown_when_something_waits_for_it() -> None:
    import atexit
    import threading

    from pytest_minidock.cli import _nothing_at_exit

    def noop() -> None:
        pass

    before = _nothing_at_exit()
    atexit.register(noop)
    try:
        assert _nothing_at_exit() is False
    finally:
        atexit.unregister(noop)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        assert _nothing_at_exit() is False
    finally:
        stop.set()
        thread.join()
    assert _nothing_at_exit() is before


@pytest.mark.parametrize(
    ("args", "code"),
    [(["run", "busybox", "true"], 125), (["exec", "web", "true"], 126), (["start", "web"], 1)],
)
def test_an_ordinary_user_without_user_namespaces_gets_one_clear_line(
    args: list[str],
    code: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rootless on a machine that forbids user namespaces: ``run``/``start``/``exec`` say which
    setting to change (docker's exit codes), before touching the image or the container, instead
    of a bare errno from the first namespace."""
    from pytest_minidock import capabilities
    from pytest_minidock.runtime import userns

    monkeypatch.setattr(capabilities, "host_root", lambda: False)
    monkeypatch.setattr(userns, "host_root", lambda: False)
    monkeypatch.setattr(userns, "_checked", [])
    monkeypatch.setattr(
        userns,
        "unavailable_reason",
        lambda proc_sys=None: "user namespaces are disabled (user.max_user_namespaces = 0)",
    )
    status, out, err = run(capsys, tmp_path, *args)
    assert status == code
    assert err == (
        "Error: cannot run containers as an ordinary user: user namespaces are disabled "
        "(user.max_user_namespaces = 0)\n"
    )
    assert out == ""


def test_exit_keeps_the_teardown_under_a_profiler() -> None:
    from pytest_minidock.cli import _nothing_at_exit

    previous = sys.getprofile()
    sys.setprofile(lambda frame, event, arg: None)
    try:
        assert _nothing_at_exit() is False
    finally:
        sys.setprofile(previous)
