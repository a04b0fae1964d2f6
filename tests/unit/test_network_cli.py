"""``minidock network`` over a fake kernel: docker's subcommands, output and exit codes."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.cli import main
from tests.unit.test_network_manager import FakeKernel

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(autouse=True)
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_minidock.runtime.network.LinuxKernel", FakeKernel)


def run(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--root", str(root), "network", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_create_ls_inspect_rm(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(
        capsys, tmp_path, "create", "--subnet", "10.9.0.0/24", "--label", "team=a", "web"
    )
    assert (code, err) == (0, "")
    nid = out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", nid)
    code, out, _ = run(capsys, tmp_path, "ls")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert [ln.split()[1:] for ln in lines[1:]] == [
        ["host", "host", "local"],
        ["none", "null", "local"],
        ["web", "bridge", "local"],
    ]
    assert lines[3].startswith(nid[:12])
    code, out, _ = run(capsys, tmp_path, "ls", "-q")
    assert out.splitlines()[2] == nid[:12]
    code, out, _ = run(capsys, tmp_path, "inspect", "web")
    [info] = json.loads(out)
    assert info["Id"] == nid
    assert info["IPAM"]["Config"] == [{"Subnet": "10.9.0.0/24", "Gateway": "10.9.0.1"}]
    assert info["Labels"] == {"team": "a"}
    code, out, err = run(capsys, tmp_path, "rm", "web", "nope")
    assert code == 1
    assert out == "web\n"
    assert err == "Error: network nope not found\n"
    assert run(capsys, tmp_path, "rm", "-f", "nope") == (0, "nope\n", "")


def test_errors_exit_with_1_and_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run(capsys, tmp_path, "create", "--subnet", "10.9.0.0/16", "web")
    code, out, err = run(capsys, tmp_path, "create", "--subnet", "10.9.1.0/24", "db")
    assert (code, out) == (1, "")
    assert err == (
        "Error: subnet 10.9.1.0/24 overlaps network web: choose another --subnet (or none, to "
        "have one chosen)\n"
    )
    code, _, err = run(capsys, tmp_path, "create", "bridge")
    assert (code, err) == (1, "Error: bridge is a pre-defined network and cannot be created\n")
    code, out, err = run(capsys, tmp_path, "inspect", "web", "nope")
    assert code == 1
    assert [n["Name"] for n in json.loads(out)] == ["web"]
    assert err == "Error: network nope not found\n"
    code, _, err = run(capsys, tmp_path, "create", "--label", "=x", "other")
    assert (code, err) == (1, "Error: invalid label '=x': expected KEY[=VALUE]\n")


def test_prune(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run(capsys, tmp_path, "create", "a")
    run(capsys, tmp_path, "create", "b")
    assert run(capsys, tmp_path, "prune", "-f") == (0, "Deleted Networks:\na\nb\n", "")
    assert run(capsys, tmp_path, "prune", "-f") == (0, "", "")
