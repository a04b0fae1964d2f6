"""Build memos: ``minidock build`` answers a rebuild nothing changed for without building, and
builds as usual as soon as anything the result rests on changed (the context files it read, the
Dockerfile, an ignore file, a listed directory, the store's names, the cache entries)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from pytest_minidock.build import memo
from pytest_minidock.cli import main
from tests.unit.test_build_builder import make_base

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, list[str]]:
    """A store with ``base:1``, a context, and a log of the builds that really ran."""
    root = tmp_path / "root"
    make_base(root)
    ctx = tmp_path / "ctx"
    (ctx / "src" / "sub").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM base:1\nCOPY app.txt /app/\nCOPY src* /src/\nENV A=1\n")
    (ctx / "app.txt").write_text("hello\n")
    (ctx / "src" / "a").write_text("a\n")
    (ctx / "src" / "sub" / "b").write_text("b\n")
    (ctx / "unrelated").write_text("x\n")
    time.sleep(0.05)  # a few clock ticks: the files are not racy for the first build
    built: list[str] = []
    from pytest_minidock.api import Engine

    real = Engine.build

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        built.append("build")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "build", counting)
    return root, ctx, built


def _build(root: Path, ctx: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert main(["--root", str(root), "build", "-q", "-t", "app:1", *extra, str(ctx)]) == 0
    return capsys.readouterr().out.strip()


def test_an_unchanged_rebuild_is_answered_from_the_memo(
    setup: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, ctx, built = setup
    first = _build(root, ctx, capsys)
    assert built == ["build"]
    assert _build(root, ctx, capsys) == first
    assert built == ["build"]  # answered without building
    assert main(["--root", str(root), "build", "--progress", "plain", "-t", "app:1", str(ctx)]) == 0
    err = capsys.readouterr().err
    assert "#2 [stage-0 2/3] COPY src* /src/\n#2 CACHED" in err
    assert f"writing image {first}; naming to docker.io/library/app:1" in err
    assert built == ["build"]
    (ctx / "unrelated").write_text("changed, but no COPY reads it\n")
    assert _build(root, ctx, capsys) == first
    assert built == ["build"]


@pytest.mark.parametrize(
    "change",
    [
        "content",
        "mode",
        "new file in a copied dir",
        "new wildcard match",
        "dockerfile",
        "dockerignore",
        "tag moved",
        "cache pruned",
        "other flags",
    ],
)
def test_any_change_it_rests_on_builds_again(
    setup: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str], change: str
) -> None:
    root, ctx, built = setup
    first = _build(root, ctx, capsys)
    assert _build(root, ctx, capsys) == first
    assert built == ["build"]
    extra: list[str] = []
    same = False
    if change == "content":
        (ctx / "src" / "sub" / "b").write_text("B\n")
    elif change == "mode":
        os.chmod(ctx / "app.txt", 0o600)
    elif change == "new file in a copied dir":
        (ctx / "src" / "sub" / "c").write_text("c\n")
    elif change == "new wildcard match":
        (ctx / "src2").mkdir()
    elif change == "dockerfile":
        (ctx / "Dockerfile").write_text("FROM base:1\nCOPY app.txt /app/\nCOPY src* /src/\n")
    elif change == "dockerignore":
        (ctx / ".dockerignore").write_text("src/sub\n")
    elif change == "tag moved":
        assert main(["--root", str(root), "tag", "base:1", "app:1"]) == 0
        capsys.readouterr()
        same = True  # the same steps, all cached: the same image, named again
    elif change == "cache pruned":
        assert main(["--root", str(root), "builder", "prune", "-a", "-f"]) == 0
        capsys.readouterr()
    else:
        extra = ["--build-arg", "X=1"]
        same = True
    time.sleep(0.05)  # a few clock ticks: the change is not racy for the next build
    image = _build(root, ctx, capsys, *extra)
    assert built == ["build", "build"]
    assert (image == first) == same
    assert _build(root, ctx, capsys, *extra) == image  # the new state is memoized in turn
    assert built == ["build", "build"]


def test_no_memo_for_no_cache_pull_stdin_or_when_turned_off(
    setup: tuple[Path, Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, ctx, built = setup
    _build(root, ctx, capsys)
    _build(root, ctx, capsys, "--no-cache")
    assert len(built) == 2
    _build(root, ctx, capsys)  # the no-cache build moved the tag: a miss, then memoized
    _build(root, ctx, capsys)
    assert len(built) == 3
    monkeypatch.setenv("MINIDOCK_BUILD_MEMO", "0")
    _build(root, ctx, capsys)
    assert len(built) == 4


def test_a_racy_or_inconsistent_memo_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    sig = memo.signature(os.lstat(path))
    index = tmp_path / "index.json"
    index.write_text(
        '{"manifests":[{"digest":"sha256:1","annotations":'
        '{"io.containerd.image.name":"docker.io/library/a:1"}}]}'
    )
    common: dict[str, Any] = {
        "image": "sha256:2",
        "index": str(index),
        "paths": {str(path): sig},
        "followed": {},
        "required": [str(path)],
        "events": [],
    }
    key = memo.memo_key(context="/x")
    # changed in (or after) the tick the build started in: not trustworthy
    assert not memo.write(str(tmp_path), key, started_ns=sig[4], names={}, **common)
    # a name the build wrote or read points elsewhere now
    later = max(sig[4], sig[5]) + 1
    assert not memo.write(
        str(tmp_path), key, started_ns=later, names={"docker.io/library/a:1": "sha256:9"}, **common
    )
    assert memo.write(
        str(tmp_path), key, started_ns=later, names={"docker.io/library/a:1": "sha256:1"}, **common
    )
    assert memo.check(str(tmp_path), key) is not None
    assert memo.check(str(tmp_path), memo.memo_key(context="/y")) is None
    path.unlink()
    assert memo.check(str(tmp_path), key) is None


def test_a_dockerfile_read_through_a_symlink_is_followed(
    setup: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, ctx, built = setup
    real = ctx.parent / "real.Dockerfile"
    real.write_text("FROM base:1\nENV A=1\n")
    (ctx / "Dockerfile").unlink()
    (ctx / "Dockerfile").symlink_to(real)
    time.sleep(0.05)
    first = _build(root, ctx, capsys)
    assert _build(root, ctx, capsys) == first
    assert built == ["build"]
    real.write_text("FROM base:1\nENV A=2\n")  # the link itself is unchanged
    assert _build(root, ctx, capsys) != first
    assert built == ["build", "build"]


def test_the_memo_key_is_the_same_for_the_same_request_in_any_order() -> None:
    one = memo.memo_key(context="/c", build_args={"A": "1", "B": "2"}, tags=["x:1", "y:1"])
    two = memo.memo_key(tags=["x:1", "y:1"], build_args={"B": "2", "A": "1"}, context="/c")
    assert one == two
    assert memo.memo_key(context="/c", tags=["y:1", "x:1"], build_args={"A": "1", "B": "2"}) != one
    assert memo.memo_key(context="/c", build_args={"A": "1", "B": "3"}, tags=["x:1", "y:1"]) != one


def test_an_unreadable_memo_is_a_miss(tmp_path: Path) -> None:
    key = memo.memo_key(context="/x")
    assert (
        memo.write(
            str(tmp_path),
            key,
            image="sha256:2",
            index=str(tmp_path / "missing-index.json"),
            paths={},
            followed={},
            required=[],
            started_ns=time.time_ns(),
            names={},
            events=[],
        )
        is False
    )  # no index to check the names against: not trusted, not written
    directory = tmp_path / "buildcache" / "memo"
    (tmp_path / "index.json").write_text('{"manifests": []}')
    assert memo.write(
        str(tmp_path),
        key,
        image="sha256:2",
        index=str(tmp_path / "index.json"),
        paths={},
        followed={},
        required=[],
        started_ns=time.time_ns() + 10**9,
        names={},
        events=[("info", 1, "exporting to image", "writing image sha256:2")],
    )
    assert memo.check(str(tmp_path), key) is not None
    (written,) = directory.iterdir()
    for garbage in (b"", b"not a memo", written.read_bytes()[:-3]):
        written.write_bytes(garbage)
        assert memo.check(str(tmp_path), key) is None


def test_the_memo_path_imports_nothing_the_cli_has_not() -> None:
    """``minidock build`` answers from a memo before importing the builder; the modules on
    that path add nothing else to a process (no json, zlib, typing...) but built-in ones."""
    code = (
        "import sys, pytest_minidock.cli; before = set(sys.modules); "
        "import pytest_minidock.cli.build, pytest_minidock.build.memo; "
        "print(*sorted(set(sys.modules) - before - set(sys.builtin_module_names)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == [
        "pytest_minidock.build",
        "pytest_minidock.build.memo",
        "pytest_minidock.cli.build",
        "pytest_minidock.cli.flags",
    ]


def test_a_build_leaves_the_garbage_collector_as_it_found_it(
    setup: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, ctx, built = setup
    assert gc.isenabled()
    _build(root, ctx, capsys, "--no-cache")
    assert gc.isenabled()
    gc.disable()
    try:
        _build(root, ctx, capsys, "--no-cache")
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert built == ["build", "build"]
