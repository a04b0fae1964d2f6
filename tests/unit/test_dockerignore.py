""".dockerignore reading and matching (moby/patternmatcher's test tables) and the context walk."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_minidock.build import ignore
from pytest_minidock.build.ignore import (
    PatternMatcher,
    find_ignore_file,
    go_clean,
    load_ignore,
    read_ignore_file,
    walk_context,
)
from pytest_minidock.errors import BuildError

if TYPE_CHECKING:
    import os
    from pathlib import Path


def matcher(*patterns: str) -> PatternMatcher:
    return PatternMatcher.from_patterns(patterns)


def matches(path: str, patterns: list[str]) -> bool:
    """patternmatcher's package-level ``MatchesOrParentMatches``."""
    return matcher(*patterns).matches(path)


def walk_match(pm: PatternMatcher, path: str) -> bool:
    """Match ``path`` the way a walk does: parent directories first, passing their results."""
    parts = path.split("/")
    parent: tuple[bool, ...] | None = None
    for i in range(1, len(parts)):
        _, parent = pm.matches_with_parents("/".join(parts[:i]), parent)
    matched, _ = pm.matches_with_parents(path, parent)
    return matched


# -- reading -----------------------------------------------------------------------------------


def test_read_ignore_file() -> None:
    content = (
        "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! "
    )
    assert [p for _, p in read_ignore_file(content)] == [
        "test1",
        "test2",
        "a/file/here",
        "lastfile",
        "!inverted/abs/path",
        "!",
        "!",
    ]


def test_read_ignore_file_cleans_and_numbers_lines() -> None:
    text = b"\xef\xbb\xbf./a//b/\r\n  # not a comment when indented\r\n\t*.tmp \r\n../up\n/\n"
    assert read_ignore_file(text) == [
        (1, "a/b"),
        (2, "# not a comment when indented"),
        (3, "*.tmp"),
        (4, "../up"),
        (5, "/"),
    ]


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        ("", "."),
        ("a/b/../c", "a/c"),
        ("./a//b/", "a/b"),
        ("../../a", "../../a"),
        ("/../a", "/a"),
        ("//a", "/a"),
        ("a/..", "."),
        ("/", "/"),
    ],
)
def test_go_clean(path: str, cleaned: str) -> None:
    assert go_clean(path) == cleaned


# -- patternmatcher_test.go --------------------------------------------------------------------


def test_simple_matches() -> None:
    assert matches("fileutils.go", ["*"])
    assert matches("fileutils.go", ["*.go"])
    assert matches("fileutils.go", ["!fileutils.go", "*.go"])
    assert not matches("docs/README.md", ["docs", "!docs/README.md"])
    assert not matches("docs/README.md", ["docs/", "!docs/README.md"])
    assert not matches("docs/README.md", ["docs/*", "!docs/README.md"])
    assert not matches("fileutils.go", ["*.go", "!fileutils.go"])
    assert not matches(".", ["*.go"])
    assert not matches("/any/path/there", [])


@pytest.mark.parametrize("patterns", [["!"], ["["], ["a", "!"], ["a[b-"]])
def test_malformed_patterns_are_errors(patterns: list[str]) -> None:
    with pytest.raises(ValueError, match=r"illegal exclusion pattern|invalid pattern"):
        matcher(*patterns)


EXACT, INEXACT, FAIL = "exact", "inexact", "fail"

MATCH_TABLE = [
    ("**", "file", EXACT),
    ("**", "file/", EXACT),
    ("**/", "file", EXACT),
    ("**/", "file/", EXACT),
    ("**", "/", EXACT),
    ("**/", "/", EXACT),
    ("**", "dir/file", EXACT),
    ("**/", "dir/file", EXACT),
    ("**", "dir/file/", EXACT),
    ("**/", "dir/file/", EXACT),
    ("**/**", "dir/file", EXACT),
    ("**/**", "dir/file/", EXACT),
    ("dir/**", "dir/file", EXACT),
    ("dir/**", "dir/file/", EXACT),
    ("dir/**", "dir/dir2/file", EXACT),
    ("dir/**", "dir/dir2/file/", EXACT),
    ("**/dir", "dir", EXACT),
    ("**/dir", "dir/file", INEXACT),
    ("**/dir2/*", "dir/dir2/file", EXACT),
    ("**/dir2/*", "dir/dir2/file/", INEXACT),
    ("**/dir2/**", "dir/dir2/dir3/file", EXACT),
    ("**/dir2/**", "dir/dir2/dir3/file/", EXACT),
    ("**file", "file", EXACT),
    ("**file", "dir/file", EXACT),
    ("**/file", "dir/file", EXACT),
    ("**file", "dir/dir/file", EXACT),
    ("**/file", "dir/dir/file", EXACT),
    ("**/file*", "dir/dir/file", EXACT),
    ("**/file*", "dir/dir/file.txt", EXACT),
    ("**/file*txt", "dir/dir/file.txt", EXACT),
    ("**/file*.txt", "dir/dir/file.txt", EXACT),
    ("**/file*.txt*", "dir/dir/file.txt", EXACT),
    ("**/**/*.txt", "dir/dir/file.txt", EXACT),
    ("**/**/*.txt2", "dir/dir/file.txt", FAIL),
    ("**/*.txt", "file.txt", EXACT),
    ("**/**/*.txt", "file.txt", EXACT),
    ("a**/*.txt", "a/file.txt", EXACT),
    ("a**/*.txt", "a/dir/file.txt", EXACT),
    ("a**/*.txt", "a/dir/dir/file.txt", EXACT),
    ("a/*.txt", "a/dir/file.txt", FAIL),
    ("a/*.txt", "a/file.txt", EXACT),
    ("a/*.txt**", "a/file.txt", EXACT),
    ("a[b-d]e", "ae", FAIL),
    ("a[b-d]e", "ace", EXACT),
    ("a[b-d]e", "aae", FAIL),
    ("a[^b-d]e", "aze", EXACT),
    (".*", ".foo", EXACT),
    (".*", "foo", FAIL),
    ("abc.def", "abcdef", FAIL),
    ("abc.def", "abc.def", EXACT),
    ("abc.def", "abcZdef", FAIL),
    ("abc?def", "abcZdef", EXACT),
    ("abc?def", "abcdef", FAIL),
    ("**/foo/bar", "foo/bar", EXACT),
    ("**/foo/bar", "dir/foo/bar", EXACT),
    ("**/foo/bar", "dir/dir2/foo/bar", EXACT),
    ("abc/**", "abc", FAIL),
    ("abc/**", "abc/def", EXACT),
    ("abc/**", "abc/def/ghi", EXACT),
    ("**/.foo", ".foo", EXACT),
    ("**/.foo", "bar.foo", FAIL),
    ("a(b)c/def", "a(b)c/def", EXACT),
    ("a(b)c/def", "a(b)c/xyz", FAIL),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", EXACT),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        EXACT,
    ),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", EXACT),
    ("a\\\\", "a\\", EXACT),
    ("a\\*b", "a*b", EXACT),
]

MULTI_TABLE = [
    (["**", "!util/docker/web"], "util/docker/web/foo", FAIL),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", EXACT),
    (
        ["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        FAIL,
    ),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", FAIL),
]


@pytest.mark.parametrize(("pattern", "text", "kind"), MATCH_TABLE)
def test_matches_exact(pattern: str, text: str, kind: str) -> None:
    assert matcher(pattern).matches_exact(text) == (kind == EXACT)


@pytest.mark.parametrize(("pattern", "text", "kind"), MATCH_TABLE)
def test_matches_or_parent_matches(pattern: str, text: str, kind: str) -> None:
    assert matcher(pattern).matches_with_parents(text, None)[0] == (kind != FAIL)


@pytest.mark.parametrize(("pattern", "text", "kind"), MATCH_TABLE)
def test_matches_using_parent_results(pattern: str, text: str, kind: str) -> None:
    assert walk_match(matcher(pattern), text) == (kind != FAIL)


@pytest.mark.parametrize(("patterns", "text", "kind"), MULTI_TABLE)
def test_multiple_patterns(patterns: list[str], text: str, kind: str) -> None:
    pm = matcher(*patterns)
    assert pm.matches_with_parents(text, None)[0] == (kind != FAIL)
    assert walk_match(pm, text) == (kind != FAIL)


def test_clean_patterns() -> None:
    assert len(matcher("docs", "config").patterns) == 2
    assert len(matcher("docs", "config", "").patterns) == 2
    assert matcher("docs", "!docs/README.md").has_exclusions
    assert matcher("docs", "  !docs/README.md").has_exclusions
    assert matcher("docs", "!docs/README.md  ").has_exclusions
    assert not matcher("docs").has_exclusions


# go's filepath.Match table, as patternmatcher runs it (ok, error)
FILEPATH_TABLE = [
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", True),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "\u03b1", True),
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("*x", "xxx", True),
]
BAD_PATTERNS = ["[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a["]


@pytest.mark.parametrize(("pattern", "path", "ok"), FILEPATH_TABLE)
def test_filepath_match_table(pattern: str, path: str, ok: bool) -> None:
    assert matches(path, [pattern]) is ok


@pytest.mark.parametrize("pattern", BAD_PATTERNS)
def test_filepath_bad_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="invalid pattern"):
        matcher(pattern)


@pytest.mark.parametrize(
    ("pattern", "kind"),
    [
        ("*", "regexp"),
        ("file*", "regexp"),
        ("**", "suffix"),
        ("**/**", "regexp"),
        ("dir/**", "prefix"),
        ("**/dir", "suffix"),
        ("**/dir2/*", "regexp"),
        ("**file", "suffix"),
        ("a[b-d]e", "regexp"),
        (".*", "regexp"),
        ("abc.def", "exact"),
        ("a(b)c/def", "exact"),
        ("a\\*b", "regexp"),
    ],
)
def test_compiled_kinds(pattern: str, kind: str) -> None:
    assert matcher(pattern).patterns[0].kind == kind


def test_last_match_wins() -> None:
    pm = matcher("*.md", "!README.md", "docs", "!docs/keep.md", "docs/keep.md")
    assert pm.matches("CHANGES.md")
    assert not pm.matches("README.md")
    assert pm.matches("docs/keep.md")
    assert pm.matches("docs/other.txt")
    assert not pm.matches("src/a.py")
    assert matcher("!README.md", "*.md").matches("README.md")


@given(st.text(alphabet="abc/.", min_size=1, max_size=12))
def test_a_literal_pattern_matches_itself(name: str) -> None:
    cleaned = go_clean(name).lstrip("/")
    if cleaned in (".", "") or cleaned.startswith(".."):
        return
    assert matches(cleaned, [cleaned])
    assert matches(cleaned + "/child", [cleaned])


# -- ignore file lookup ------------------------------------------------------------------------


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    (context / "build").mkdir(parents=True)
    dockerfile = context / "build" / "app.Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    assert find_ignore_file(context, dockerfile) is None
    assert load_ignore(context, dockerfile).patterns == ()
    general = context / ".dockerignore"
    general.write_text("*.log\n")
    assert find_ignore_file(context, dockerfile) == general
    assert find_ignore_file(context) == general
    specific = context / "build" / "app.Dockerfile.dockerignore"
    specific.write_text("# only for app\nnode_modules\n")
    assert find_ignore_file(context, dockerfile) == specific
    assert [p.text for p in load_ignore(context, dockerfile).patterns] == ["node_modules"]
    assert [p.text for p in load_ignore(context).patterns] == ["*.log"]


def test_bad_ignore_file_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("ok\n\n!\n")
    with pytest.raises(BuildError) as info:
        load_ignore(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / '.dockerignore'}:3: illegal exclusion pattern")
    (tmp_path / ".dockerignore").write_text("a[\n")
    with pytest.raises(BuildError, match=r"\.dockerignore:1: invalid pattern 'a\['"):
        load_ignore(tmp_path)


# -- walking -----------------------------------------------------------------------------------


def make_tree(root: Path, paths: list[str]) -> None:
    for path in paths:
        target = root / path
        if path.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path)


TREE = [
    "Dockerfile",
    ".dockerignore",
    "README.md",
    "CHANGES.md",
    "src/app.py",
    "src/app.pyc",
    "src/pkg/mod.py",
    "node_modules/x/index.js",
    "node_modules/y/keep.txt",
    "docs/guide.md",
    "docs/api/ref.md",
    "empty/",
]


def test_walk_without_patterns_lists_everything(tmp_path: Path) -> None:
    make_tree(tmp_path, TREE)
    walked = list(walk_context(tmp_path))
    assert walked == sorted(walked, key=lambda p: p.split("/"))
    assert "empty" in walked
    assert "node_modules/x/index.js" in walked
    assert len(walked) == 19


def test_walk_applies_patterns_and_exceptions(tmp_path: Path) -> None:
    make_tree(tmp_path, TREE)
    pm = matcher(
        "*.md", "!README.md", "**/*.pyc", "node_modules", "!node_modules/y/keep.txt", "docs"
    )
    assert list(walk_context(tmp_path, pm)) == [
        ".dockerignore",
        "Dockerfile",
        "README.md",
        "empty",
        "node_modules",
        "node_modules/y",
        "node_modules/y/keep.txt",
        "src",
        "src/app.py",
        "src/pkg",
        "src/pkg/mod.py",
    ]


def test_walk_does_not_read_excluded_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path, TREE)
    read: list[str] = []
    original = ignore._entries

    def spy(directory: Path) -> list[os.DirEntry[str]]:
        read.append(directory.relative_to(tmp_path).as_posix())
        return original(directory)

    monkeypatch.setattr(ignore, "_entries", spy)
    list(walk_context(tmp_path, matcher("node_modules", "docs", "!src/keep")))
    assert sorted(read) == [".", "empty", "src", "src/pkg"]
    read.clear()
    list(walk_context(tmp_path, matcher("node_modules", "!node_modules/y")))
    assert "node_modules" in read
    assert "node_modules/x" not in read
    read.clear()
    list(walk_context(tmp_path, matcher("node_modules", "!**/keep.txt")))
    assert {"node_modules", "node_modules/x", "node_modules/y"} <= set(read)


def test_wildcard_exception_reincludes_inside_an_excluded_directory(tmp_path: Path) -> None:
    make_tree(tmp_path, TREE)
    walked = list(walk_context(tmp_path, matcher("node_modules", "!**/keep.txt")))
    assert [p for p in walked if p.startswith("node_modules")] == [
        "node_modules",
        "node_modules/y",
        "node_modules/y/keep.txt",
    ]
    walked = list(walk_context(tmp_path, matcher("*", "!src/*.py")))
    assert walked == ["src", "src/app.py"]


def test_walk_lists_symlinks_without_following_them(tmp_path: Path) -> None:
    make_tree(tmp_path, ["real/file"])
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "dangling").symlink_to("nowhere")
    assert list(walk_context(tmp_path, matcher("nothing"))) == [
        "dangling",
        "link",
        "real",
        "real/file",
    ]
    assert list(walk_context(tmp_path)) == ["dangling", "link", "real", "real/file"]


def test_walk_of_a_missing_context_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="cannot read build context directory"):
        list(walk_context(tmp_path / "missing"))
