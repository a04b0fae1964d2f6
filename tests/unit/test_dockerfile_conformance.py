"""buildkit's own parser golden files, run against our parser byte for byte.

The suite is the team's shared copy (``../shared/conformance/buildkit-parser``, see its
``FORMAT.md``), vendored in ``tests/conformance/buildkit-parser`` (Apache-2.0, see its LICENSE
and SOURCE.txt) so that a clone alone runs it; when the shared copy is there too, the vendored
one must equal it. Every ``testfiles/*/Dockerfile`` must dump exactly to its ``result``, every
``testfiles-negative/*/Dockerfile`` must be refused, and ``testfile-line/Dockerfile`` must give
buildkit's line numbers. A missing suite fails in CI and skips elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_minidock.dockerfile.parser import dump, parse
from pytest_minidock.errors import DockerfileError
from tests.conftest import IN_CI

SUITE = Path(__file__).parents[1] / "conformance" / "buildkit-parser"
SHARED = Path(__file__).parents[3] / "shared" / "conformance" / "buildkit-parser"


def _files(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared copy next to this clone to compare")
def test_the_vendored_suite_is_the_shared_one() -> None:
    assert _files(SUITE) == _files(SHARED)


def _cases(kind: str) -> list[object]:
    folder = SUITE / kind
    if not folder.is_dir():
        return [pytest.param(None, id="suite-missing")]
    return [pytest.param(d, id=d.name) for d in sorted(folder.iterdir()) if d.is_dir()]


def _require(path: Path | None) -> Path:
    if path is None or not path.exists():
        message = f"buildkit parser conformance suite not found at {SUITE}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def test_suite_is_complete() -> None:
    _require(SUITE)
    assert len(_cases("testfiles")) == 33
    assert len(_cases("testfiles-negative")) == 4


@pytest.mark.parametrize("case", _cases("testfiles"))
def test_dump_matches_buildkit_result(case: Path | None) -> None:
    folder = _require(case)
    expected = (folder / "result").read_bytes().replace(b"\r\n", b"\n").decode()
    result = parse((folder / "Dockerfile").read_bytes(), str(folder / "Dockerfile"))
    assert dump(result.nodes) == expected


@pytest.mark.parametrize("case", _cases("testfiles-negative"))
def test_negative_case_is_refused(case: Path | None) -> None:
    folder = _require(case)
    with pytest.raises(DockerfileError, match=r"Dockerfile:\d+: "):
        parse((folder / "Dockerfile").read_bytes(), "Dockerfile")


def test_line_numbers_match_buildkit() -> None:
    path = _require(SUITE / "testfile-line" / "Dockerfile")
    result = parse(path.read_bytes(), str(path))
    assert [(n.start_line, n.end_line) for n in result.nodes] == [(5, 5), (11, 12), (17, 31)]
    assert result.nodes[0].start_line == 5
    assert result.nodes[-1].end_line == 31


def test_a_missing_suite_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="suite not found"):
        _require(None)
    monkeypatch.setitem(globals(), "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="suite not found"):
        _require(SUITE / "no-such-case")
