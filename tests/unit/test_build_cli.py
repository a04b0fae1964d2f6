"""``minidock build``/``builder prune`` flags as the library gets them, and the progress printers
(plain and tty), without building anything."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import pytest

from pytest_minidock.build.builder import SecretSource
from pytest_minidock.build.cache import CachePruneReport
from pytest_minidock.build.progress import BuildEvent, PlainProgress, TtyProgress, printer
from pytest_minidock.cli import build_parser, main
from pytest_minidock.cli.build import _build_args, _secrets
from pytest_minidock.digest import Digest
from pytest_minidock.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path


def test_build_args_take_values_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_ENV", "env-value")
    monkeypatch.delenv("UNSET_ONE", raising=False)
    assert _build_args(["A=1", "B=x=y", "C=", "FROM_ENV", "UNSET_ONE"]) == {
        "A": "1",
        "B": "x=y",
        "C": "",
        "FROM_ENV": "env-value",
    }
    with pytest.raises(UsageError, match="invalid --build-arg '=1'"):
        _build_args(["=1"])


def test_secrets_from_files_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    monkeypatch.setenv("NPM_TOKEN", "n")
    got = _secrets([f"id=tok,src={token}", "id=npm,env=NPM_TOKEN", "id=NPM_TOKEN"])
    assert got == {
        "tok": SecretSource(path=token),
        "npm": SecretSource(env="NPM_TOKEN"),
        "NPM_TOKEN": SecretSource(env="NPM_TOKEN"),
    }
    assert got["npm"].read() == b"n"
    assert got["tok"].read() == b"t"
    with pytest.raises(UsageError, match="no such file"):
        _secrets([f"id=x,src={tmp_path / 'missing'}"])
    with pytest.raises(UsageError, match="it needs id=ID"):
        _secrets(["src=/etc/hostname"])
    with pytest.raises(UsageError, match="use id=ID,src=FILE"):
        _secrets(["tok"])


class _Result:
    id = Digest.from_bytes(b"image")
    inputs = None  # nothing to write a memo from


def test_build_passes_every_flag_to_the_engine(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    def fake_build(self: Any, context: str, **kwargs: Any) -> _Result:
        seen.update(kwargs, context=context, root=str(self.root))
        return _Result()

    monkeypatch.setattr("pytest_minidock.api.Engine.build", fake_build)
    secret = tmp_path / "s"
    secret.write_text("x")
    argv = [
        "--root",
        str(tmp_path / "root"),
        "build",
        "-f",
        "other.Dockerfile",
        "-t",
        "a:1",
        "--tag",
        "b",
        "--build-arg",
        "V=2",
        "--target",
        "build",
        "--no-cache",
        "--pull",
        "--network",
        "host",
        "--secret",
        f"id=s,src={secret}",
        "--platform",
        "linux/amd64",
        "-q",
        "ctx",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"{_Result.id}\n"
    assert seen == {
        "context": "ctx",
        "root": str(tmp_path / "root"),
        "dockerfile": "../other.Dockerfile",  # -f is relative to here, the library's to ctx
        "tags": ["a:1", "b"],
        "buildargs": {"V": "2"},
        "target": "build",
        "no_cache": True,
        "pull": True,
        "network": "host",
        "progress": None,
        "secrets": {"s": SecretSource(path=secret)},
        "platform": "linux/amd64",
        "dockerfile_text": None,
    }
    seen.clear()
    assert main(["build", "--progress", "plain", "."]) == 0
    assert isinstance(seen["progress"], PlainProgress)
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit):
        build_parser("build").parse_args(["build", "--progress", "fancy", "."])
    assert main(["build", "-"]) == 1
    assert "context on stdin is not supported" in capsys.readouterr().err


def test_dockerfile_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_build(self: Any, context: str, **kwargs: Any) -> _Result:
        seen.update(kwargs)
        return _Result()

    monkeypatch.setattr("pytest_minidock.api.Engine.build", fake_build)
    monkeypatch.setattr("sys.stdin", io.StringIO("FROM busybox\n"))
    assert main(["build", "-q", "-f", "-", "."]) == 0
    assert (seen["dockerfile"], seen["dockerfile_text"]) == ("Dockerfile", "FROM busybox\n")


def test_builder_prune(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[bool] = []

    def fake_prune(self: Any, *, all: bool = False) -> CachePruneReport:
        calls.append(all)
        return CachePruneReport(entries=3, mounts=1, reclaimed=2_500_000)

    monkeypatch.setattr("pytest_minidock.api.Engine.builder_prune", fake_prune)
    assert main(["builder", "prune", "-a", "-f"]) == 0
    assert calls == [True]
    assert capsys.readouterr().out == (
        "Deleted build cache entries: 3\nDeleted cache mounts: 1\nTotal reclaimed space: 2.5MB\n"
    )


EVENTS = [
    BuildEvent("start", 1, "[stage-0 1/2] RUN make"),
    BuildEvent("output", 1, "[stage-0 1/2] RUN make", "cc main.c", 0.25),
    BuildEvent("done", 1, "[stage-0 1/2] RUN make", elapsed=1.04),
    BuildEvent("cached", 2, "[stage-0 2/2] COPY a /b"),
    BuildEvent("start", 3, "[stage-0 1/1] RUN false"),
    BuildEvent("error", 3, "[stage-0 1/1] RUN false", "exit code: 1", 0.1),
    BuildEvent("info", 4, "exporting to image", "writing image sha256:abc"),
]


def test_plain_progress_prints_buildkit_lines() -> None:
    out = io.StringIO()
    show = PlainProgress(out)
    for event in EVENTS:
        show(event)
    assert out.getvalue() == (
        "#1 [stage-0 1/2] RUN make\n"
        "#1 0.250 cc main.c\n"
        "#1 DONE 1.0s\n\n"
        "#2 [stage-0 2/2] COPY a /b\n#2 CACHED\n\n"
        "#3 [stage-0 1/1] RUN false\n"
        "#3 ERROR: exit code: 1\n\n"
        "#4 exporting to image\n#4 writing image sha256:abc\n#4 DONE 0.0s\n\n"
    )


def test_tty_progress_shows_running_steps_in_place() -> None:
    out = io.StringIO()
    show = TtyProgress(out)
    for event in EVENTS:
        show(event)
    text = out.getvalue()
    assert "=> [stage-0 1/2] RUN make  0.0s" in text  # the live status line
    assert "cc main.c" in text
    assert "\r\x1b[K" in text  # ... rewritten in place
    assert "\x1b[34m=> [stage-0 1/2] RUN make  1.0s\x1b[0m\n" in text
    assert "\x1b[34m=> CACHED [stage-0 2/2] COPY a /b\x1b[0m\n" in text
    assert "\x1b[31m=> ERROR [stage-0 1/1] RUN false\x1b[0m\nexit code: 1\n" in text


def test_printer_picks_by_mode() -> None:
    assert isinstance(printer("auto", io.StringIO()), PlainProgress)  # not a terminal
    assert isinstance(printer("tty", io.StringIO()), TtyProgress)
    assert isinstance(printer("plain", io.StringIO()), PlainProgress)
    with pytest.raises(ValueError, match="unknown progress mode 'fancy'"):
        printer("fancy", io.StringIO())
