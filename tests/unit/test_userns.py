"""Rootless groundwork: subordinate id ranges, the id maps planned from them, and why a machine
refuses user namespaces (simulated with a fake /proc/sys)."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.errors import PrivilegeError
from pytest_minidock.runtime.userns import (
    IdMap,
    IdRange,
    current_idmap,
    map_lines,
    plan_idmap,
    subordinate_ranges,
    unavailable_reason,
    write_maps,
)

if TYPE_CHECKING:
    from pathlib import Path

SUBUID = """\
# comment
alice:100000:65536
1001:200000:65536
bob:300000
carol:x:10
alice:500000:10
"""


def test_subordinate_ranges_by_name_and_uid_in_file_order() -> None:
    assert subordinate_ranges(SUBUID, "alice", 1000) == [(100000, 65536), (500000, 10)]
    assert subordinate_ranges(SUBUID, "dave", 1001) == [(200000, 65536)]
    assert subordinate_ranges(SUBUID, "bob", 1002) == []  # malformed line skipped
    assert subordinate_ranges(SUBUID, "carol", 1003) == []


def test_full_map_with_helpers_and_ranges() -> None:
    idmap = plan_idmap(
        uid=1000,
        gid=1000,
        user="alice",
        subuid_text=SUBUID,
        subgid_text=SUBUID,
        helpers_available=True,
    )
    assert idmap.helpers
    assert idmap.uids == (IdRange(0, 1000, 1), IdRange(1, 100000, 65536))
    assert map_lines(idmap.uids) == "0 1000 1\n1 100000 65536\n"
    assert idmap.describe().startswith("uid 0=1000, 1-65536=100000-165535;")


@pytest.mark.parametrize(
    ("helpers", "subgid"),
    [(False, SUBUID), (True, ""), (True, "someoneelse:1:2\n")],
)
def test_single_map_otherwise(helpers: bool, subgid: str) -> None:
    idmap = plan_idmap(
        uid=1000,
        gid=100,
        user="alice",
        subuid_text=SUBUID,
        subgid_text=subgid,
        helpers_available=helpers,
    )
    assert idmap == IdMap(uids=(IdRange(0, 1000, 1),), gids=(IdRange(0, 100, 1),), helpers=False)
    assert idmap.single
    assert "single mapping" in idmap.describe()


def test_current_idmap_reads_etc(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text("")
    idmap = current_idmap(etc=tmp_path, which=lambda name: None)
    assert not idmap.helpers


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("user/max_user_namespaces", "0", "user.max_user_namespaces"),
        ("kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone=1"),
        ("kernel/apparmor_restrict_unprivileged_userns", "1", "AppArmor"),
    ],
)
def test_reasons_name_the_setting_to_change(
    tmp_path: Path, name: str, value: str, says: str
) -> None:
    assert unavailable_reason(tmp_path) is None
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(value + "\n")
    reason = unavailable_reason(tmp_path)
    assert reason is not None
    assert says in reason


def test_write_maps_single_writes_proc_files(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    idmap = IdMap(uids=(IdRange(0, 1000, 1),), gids=(IdRange(0, 100, 1),), helpers=False)
    write_maps(42, idmap, proc=tmp_path)
    assert (tmp_path / "42" / "setgroups").read_text() == "deny\n"
    assert (tmp_path / "42" / "uid_map").read_text() == "0 1000 1\n"
    assert (tmp_path / "42" / "gid_map").read_text() == "0 100 1\n"


def test_write_maps_single_names_the_refusing_file(tmp_path: Path) -> None:
    idmap = IdMap(uids=(IdRange(0, 1000, 1),), gids=(IdRange(0, 100, 1),), helpers=False)
    with pytest.raises(PrivilegeError, match=r"99/setgroups"):
        write_maps(99, idmap, proc=tmp_path)  # no such process dir


def test_write_maps_with_helpers_runs_them_and_reports_failure() -> None:
    idmap = IdMap(
        uids=(IdRange(0, 1000, 1), IdRange(1, 100000, 65536)),
        gids=(IdRange(0, 1000, 1), IdRange(1, 100000, 65536)),
        helpers=True,
    )
    calls: list[list[str]] = []

    def ok(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    write_maps(7, idmap, run=ok)
    assert calls == [
        ["newuidmap", "7", "0", "1000", "1", "1", "100000", "65536"],
        ["newgidmap", "7", "0", "1000", "1", "1", "100000", "65536"],
    ]

    def refuse(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(argv, 1, b"", b"newuidmap: uid range not allowed")

    with pytest.raises(PrivilegeError, match=r"newuidmap 7 0 1000 1 .*not allowed"):
        write_maps(7, idmap, run=refuse)
