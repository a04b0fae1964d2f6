"""The build context: what COPY/ADD see (.dockerignore, wildcards, symlinks), the digests of what
they read (content, mode, owner, link target -- never mtime), the stat cache, ADD's archives and
downloads, and errors that name FILE:LINE and the source."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import time
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.build.context import (
    BuildContext,
    StatCache,
    component_matcher,
    fetch_url,
    has_wildcards,
    is_archive,
    parents_keep,
)
from pytest_minidock.dockerfile.instructions import Location
from pytest_minidock.errors import BuildError
from tests.support.httpfiles import serve_directory

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

HERE = Location("ctx/Dockerfile", 7, 7, "COPY missing.txt /app/")


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('main')\n")
    (root / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "src" / "notes.md").write_text("notes\n")
    (root / "README.md").write_text("readme\n")
    (root / "a.txt").write_text("a\n")
    (root / "b.txt").write_text("b\n")
    (root / "secret.key").write_text("k\n")
    (root / "build.log").write_text("log\n")
    (root / "link.txt").symlink_to("a.txt")
    (root / "escape").symlink_to("/etc/passwd")
    (root / ".dockerignore").write_text("*.log\nsecret.key\nsrc/**/*.md\n")
    return root


def sources(context: BuildContext, *written: str, excludes: tuple[str, ...] = ()) -> dict[str, str]:
    """rel -> digest of what ``COPY written...`` copies."""
    return {s.rel: s.digest for s in context.sources(written, HERE, excludes=excludes)}


def entries(context: BuildContext, written: str) -> list[str]:
    (source,) = context.sources([written], HERE)
    return [e.rel for e in source.entries]


def test_dockerignore_hides_paths_everywhere(ctx: Path) -> None:
    context = BuildContext(ctx)
    assert entries(context, "src") == ["main.py", "pkg", "pkg/mod.py"]  # notes.md is ignored
    with pytest.raises(BuildError, match=r"ctx/Dockerfile:7: COPY failed: source 'secret\.key'"):
        context.sources(["secret.key"], HERE)
    # (escape is a link to /etc/passwd, which the context does not have)
    assert sorted(sources(context, "*")) == [
        ".dockerignore",
        "README.md",
        "a.txt",
        "b.txt",
        "link.txt",
        "src",
    ]


def test_a_dockerfile_specific_ignore_file_wins(ctx: Path) -> None:
    (ctx / "app.Dockerfile").write_text("FROM scratch\n")
    (ctx / "app.Dockerfile.dockerignore").write_text("a.txt\n")
    context = BuildContext(ctx, ctx / "app.Dockerfile")
    assert "build.log" in sources(context, "*.log")
    with pytest.raises(BuildError, match=r"'a\.txt' not found"):
        context.sources(["a.txt"], HERE)


def test_wildcards_match_per_component_like_go(ctx: Path) -> None:
    context = BuildContext(ctx)
    assert list(sources(context, "?.txt")) == ["a.txt", "b.txt"]
    assert list(sources(context, "[a-b].txt")) == ["a.txt", "b.txt"]
    assert list(sources(context, "[^a].txt")) == ["b.txt"]
    assert list(sources(context, "src/*.py")) == ["src/main.py"]
    assert list(sources(context, "*/*/mod.py")) == ["src/pkg/mod.py"]
    assert has_wildcards("a*")
    assert not has_wildcards(r"a\*")
    assert component_matcher(r"a\*").match("a*")
    assert not component_matcher(r"a\*").match("ab")
    with pytest.raises(ValueError, match="unterminated"):
        component_matcher("[ab")


def test_paths_cannot_leave_the_context_and_links_are_followed_inside_it(ctx: Path) -> None:
    context = BuildContext(ctx)
    assert list(sources(context, "../../a.txt")) == ["a.txt"]
    (link,) = context.sources(["link.txt"], HERE)
    (target,) = context.sources(["a.txt"], HERE)
    assert link.entries[0].kind == "file"
    assert link.entries[0].host == ctx / "a.txt"
    assert link.name == "link.txt"
    assert link.entries[0].digest == target.entries[0].digest
    # an absolute link resolves inside the context, where /etc/passwd does not exist
    with pytest.raises(BuildError, match="'escape' not found in the build context"):
        context.sources(["escape"], HERE)
    (root,) = context.sources(["."], HERE)
    by_rel = {e.rel: e for e in root.entries}
    assert by_rel["link.txt"].kind == "symlink"
    assert by_rel["link.txt"].link == "a.txt"


def test_errors_name_file_line_and_the_source(ctx: Path) -> None:
    context = BuildContext(ctx)
    with pytest.raises(BuildError) as info:
        context.sources(["missing.txt"], HERE)
    message = str(info.value)
    assert message.startswith("ctx/Dockerfile:7: COPY failed: source 'missing.txt' not found")
    assert message.endswith("| COPY missing.txt /app/")
    with pytest.raises(BuildError, match=r"ctx/Dockerfile:7: COPY failed: source 'x\*' matches"):
        context.sources(["x*"], HERE)
    with pytest.raises(BuildError, match="ctx/Dockerfile:7: COPY --exclude"):
        context.sources(["a.txt"], HERE, excludes=("[",))


def test_exclude_patterns_apply_to_the_context_and_source_relative_paths(ctx: Path) -> None:
    context = BuildContext(ctx)
    (src,) = context.sources(["src"], HERE, excludes=("*.py",))
    assert [e.rel for e in src.entries] == ["pkg", "pkg/mod.py"]  # main.py at src's top level
    assert list(sources(context, "*.txt", excludes=("b.txt",))) == ["a.txt", "link.txt"]


def test_parents_keep_the_path_or_what_follows_a_pivot() -> None:
    assert parents_keep("src/pkg/mod.py", "src/pkg/mod.py") == "src/pkg/mod.py"
    assert parents_keep("./src/./pkg/mod.py", "src/pkg/mod.py") == "pkg/mod.py"
    assert parents_keep("src/./*/mod.py", "src/pkg/mod.py") == "pkg/mod.py"


def _digest(context: BuildContext, written: str) -> str:
    return next(iter(sources(context, written).values()))


def test_digests_cover_content_mode_owner_and_link_target_never_mtime(ctx: Path) -> None:
    def fresh(written: str) -> str:
        return _digest(BuildContext(ctx), written)

    before = fresh("src")
    os.utime(ctx / "src" / "main.py", (1, 1))
    assert fresh("src") == before  # times never count
    (ctx / "src" / "main.py").write_text("print('changed')\n")
    changed = fresh("src")
    assert changed != before
    os.chmod(ctx / "src" / "main.py", 0o755)
    moded = fresh("src")
    assert moded != changed
    if os.geteuid() == 0:
        os.chown(ctx / "src" / "main.py", 1000, 1000)
        assert fresh("src") != moded
    (ctx / "src" / "l").symlink_to("main.py")
    linked = fresh("src")
    (ctx / "src" / "l").unlink()
    (ctx / "src" / "l").symlink_to("pkg")
    assert fresh("src") != linked
    (ctx / "src" / "new").write_text("")
    assert fresh("src") not in (before, changed, moded, linked)
    # an ignored file never counts
    ignored = fresh("src")
    (ctx / "src" / "more.md").write_text("ignored\n")
    assert fresh("src") == ignored
    # the name a file lands under counts
    (ctx / "c.txt").write_text("a\n")
    assert fresh("c.txt") != fresh("a.txt")


def test_the_stat_cache_hashes_an_unchanged_file_once(ctx: Path, tmp_path: Path) -> None:
    saved = tmp_path / "stat.json"
    time.sleep(0.05)  # past the clock tick the files were written in (see the racy test)
    first = StatCache.load(saved)
    digest = _digest(BuildContext(ctx, stat_cache=first), "src")
    assert (first.hashed, first.reused) == (2, 0)
    first.save()
    second = StatCache.load(saved)  # the next process
    assert _digest(BuildContext(ctx, stat_cache=second), "src") == digest
    assert (second.hashed, second.reused) == (0, 2)
    # the same size and the same mtime, but rewritten: ctime (and content) tell
    st = os.stat(ctx / "src" / "main.py")
    (ctx / "src" / "main.py").write_text("print('MAIN')\n")
    os.utime(ctx / "src" / "main.py", ns=(st.st_atime_ns, st.st_mtime_ns))
    time.sleep(0.05)
    third = StatCache.load(saved)
    assert _digest(BuildContext(ctx, stat_cache=third), "src") != digest
    assert (third.hashed, third.reused) == (1, 1)
    assert StatCache.load(tmp_path / "missing.json").entries == {}
    (tmp_path / "junk.json").write_text("{not json")
    assert StatCache.load(tmp_path / "junk.json").entries == {}


def test_a_file_changed_in_the_tick_it_is_read_in_is_not_remembered(
    ctx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With coarse file times (a clock tick of 4 ms here), a same-size rewrite in the tick the
    file was hashed in would keep its times: such a file is hashed again next time."""
    import pytest_minidock.build.context as context_module

    times = [context_module.max_time(os.stat(p)) for p in (ctx / "src").rglob("*")]
    oldest, newest = min(times), max(times)
    monkeypatch.setattr(context_module, "_fs_clock_ns", lambda: oldest)  # still their tick
    cache = StatCache()
    _digest(BuildContext(ctx, stat_cache=cache), "src")
    assert cache.entries == {}
    _digest(BuildContext(ctx, stat_cache=cache), "src")
    assert (cache.hashed, cache.reused) == (4, 0)
    monkeypatch.setattr(context_module, "_fs_clock_ns", lambda: newest + 1)  # a tick later
    _digest(BuildContext(ctx, stat_cache=cache), "src")
    _digest(BuildContext(ctx, stat_cache=cache), "src")
    assert (cache.hashed, cache.reused) == (6, 2)


def test_bind_mount_sources_have_digests_and_know_when_they_need_filtering(ctx: Path) -> None:
    context = BuildContext(ctx)
    assert context.tree_digest("src", HERE, "RUN --mount") == _digest(context, "src")
    with pytest.raises(BuildError, match="ctx/Dockerfile:7: RUN --mount: 'nope' is not"):
        context.tree_digest("nope", HERE, "RUN --mount")
    assert context.filtered("src")  # src/**/*.md may hide something below
    assert not context.filtered("src/pkg/mod.py")
    assert not BuildContext(ctx, matcher=context.matcher.__class__()).filtered(".")


def test_a_missing_context_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"build context .*nowhere"):
        BuildContext(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    with pytest.raises(BuildError, match="is not a directory"):
        BuildContext(tmp_path / "file")


def _tar(path: Path, mode: str) -> Path:
    with tarfile.open(path, mode) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    return path


def test_add_unpacks_only_real_archives(tmp_path: Path) -> None:
    assert is_archive(_tar(tmp_path / "a.tar", "w"))
    assert is_archive(_tar(tmp_path / "a.tgz", "w:gz"))
    assert is_archive(_tar(tmp_path / "a.tar.bz2", "w:bz2"))
    assert is_archive(_tar(tmp_path / "a.tar.xz", "w:xz"))
    (tmp_path / "plain.tar").write_text("not a tar at all, despite the name\n" * 40)
    assert not is_archive(tmp_path / "plain.tar")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    assert not is_archive(tmp_path / "bad.gz")
    assert not is_archive(tmp_path / "missing")


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    served = tmp_path / "served"
    served.mkdir()
    with serve_directory(served) as base:
        yield base, served


def test_add_downloads_urls_and_checks_checksums(
    http_root: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = http_root
    (served / "tool.sh").write_bytes(b"#!/bin/sh\necho tool\n")
    expected = hashlib.sha256(b"#!/bin/sh\necho tool\n").hexdigest()
    got = fetch_url(f"{base}/tool.sh", tmp_path / "dl1", HERE)
    assert (got.name, got.digest, got.size) == ("tool.sh", expected, 20)
    assert got.path.read_bytes() == b"#!/bin/sh\necho tool\n"
    ok = fetch_url(f"{base}/tool.sh", tmp_path / "dl2", HERE, checksum=f"sha256:{expected}")
    assert ok.digest == expected
    with pytest.raises(BuildError, match=r"ctx/Dockerfile:7: ADD failed: .* not the --checksum"):
        fetch_url(f"{base}/tool.sh", tmp_path / "dl3", HERE, checksum="sha256:" + "0" * 64)
    assert not (tmp_path / "dl3").exists()
    with pytest.raises(BuildError, match=r"ctx/Dockerfile:7: ADD failed: downloading .*HTTP 404"):
        fetch_url(f"{base}/missing", tmp_path / "dl4", HERE)
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BuildError, match="ctx/Dockerfile:7: ADD failed: downloading"):
        fetch_url(f"http://127.0.0.1:{port}/x", tmp_path / "dl5", HERE, timeout=5)


@pytest.mark.parametrize("size", [0, 1, 5000, (1 << 20) - 1, 1 << 20, (3 << 20) + 5])
def test_file_content_digests_are_sha256_whatever_the_size(tmp_path: Path, size: int) -> None:
    """Small files are read in one piece and hashed without OpenSSL while little was, larger
    ones are streamed: the digest is the file's sha256 either way."""
    from pytest_minidock.build import context as context_module

    path = tmp_path / "f"
    data = os.urandom(size)
    path.write_bytes(data)
    assert context_module._hash_file(path, size) == hashlib.sha256(data).hexdigest()
    # a file that grew after its stat said ``size`` is hashed whole, not cut at that size
    path.write_bytes(data + b"more")
    assert context_module._hash_file(path, size) == hashlib.sha256(data + b"more").hexdigest()


def test_content_digests_switch_to_openssl_after_a_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While ``hashlib`` is not imported, content is hashed without it up to a budget of bytes;
    past it, ``hashlib`` (OpenSSL) is imported and used."""
    import sys

    from pytest_minidock.build import context as context_module

    monkeypatch.delitem(sys.modules, "hashlib")  # as in a fresh ``minidock build``
    monkeypatch.setattr(context_module, "_without_openssl", [10])
    assert context_module._content_hex(b"12345") == hashlib.sha256(b"12345").hexdigest()
    assert context_module._without_openssl == [5]
    assert "hashlib" not in sys.modules
    assert context_module._content_hex(b"123456") == hashlib.sha256(b"123456").hexdigest()
    assert "hashlib" in sys.modules
    assert context_module._without_openssl == [5]
