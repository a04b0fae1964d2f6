"""Snapshots and layers as root: owners, devices, chardev whiteouts and real overlay mounts."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.store.layers import (
    LayerBlob,
    layer_from_diff,
    layer_from_dir,
    layer_from_overlay_upper,
    open_layer,
)
from pytest_minidock.store.snapshots import ExtractPolicy, extract_layer
from tests.support.tars import Member, d, f

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.privileged

ROOT = ExtractPolicy(devices=True, chown=True, whiteout="chardev")
ROOTLESS = ExtractPolicy(devices=False, chown=False, whiteout="xattr")


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    # Fail, never skip: a privileged test that cannot run has not passed.
    assert os.geteuid() == 0, "this test needs root (marker 'privileged')"


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount (in reverse) when the test ends, whatever happened."""
    points: list[Path] = []
    yield points
    for point in reversed(points):
        subprocess.run(["umount", str(point)], check=False)


def _overlay(mounts: list[Path], target: Path, lower: list[Path], **extra: Path | str) -> Path:
    target.mkdir(exist_ok=True)
    opts = ["lowerdir=" + ":".join(str(p) for p in lower)]
    opts += [f"{k}={v}" if v != "" else k for k, v in extra.items()]
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", ",".join(opts), str(target)], check=True
    )
    mounts.append(target)
    return target


def _extract(dest: Path, *members: Member, policy: ExtractPolicy = ROOT) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    dest.mkdir()
    extract_layer(io.BytesIO(buf.getvalue()), dest, policy=policy, source=dest.name)
    return dest


def _extract_blob(blob: LayerBlob, dest: Path, policy: ExtractPolicy = ROOT) -> Path:
    dest.mkdir()
    with open_layer(blob.path, diff_id=blob.diff_id) as stream:
        extract_layer(stream, dest, policy=policy, source=str(blob.digest))
    return dest


def _view(root: Path) -> dict[str, tuple[object, ...]]:
    """What a container would see: type, mode, owner, content or target or device, xattrs."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            detail: object = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    detail = fh.read()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
            xattrs = tuple(
                sorted(
                    (n, os.getxattr(path, n, follow_symlinks=False))
                    for n in os.listxattr(path, follow_symlinks=False)
                    if not n.startswith(("trusted.overlay.", "user.overlay."))
                )
            )
            rel = os.path.relpath(path, root)
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            out[rel] += (detail, xattrs)
    return out


# ---- owners, devices, privileged xattrs --------------------------------------------------------


def test_round_trip_keeps_owners_setuid_devices_and_trusted_xattrs(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "dev").mkdir(parents=True)
    (tree / "home" / "user").mkdir(parents=True)
    os.chown(tree / "home" / "user", 1000, 1000)
    (tree / "home" / "user").chmod(0o700)
    tool = tree / "usr" / "bin" / "su"
    tool.parent.mkdir(parents=True)
    tool.write_bytes(b"setuid tool")
    os.chown(tool, 0, 42)
    tool.chmod(0o4750)
    owned = tree / "home" / "user" / "notes"
    owned.write_bytes(b"mine")
    os.chown(owned, 1000, 1000)
    os.mknod(tree / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(tree / "dev" / "loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.chown(tree / "dev" / "loop0", 0, 6)
    os.mkfifo(tree / "dev" / "initctl", 0o600)
    os.setxattr(tool, "trusted.tag", b"kept")
    os.symlink("/usr/bin/su", tree / "su")
    os.lchown(tree / "su", 1000, 1000)
    blob = layer_from_dir(tree, tmp_path / "l.tgz")
    snap = _extract_blob(blob, tmp_path / "snap")
    assert _view(snap) == _view(tree)
    assert stat.S_IMODE(os.stat(snap / "usr" / "bin" / "su").st_mode) == 0o4750
    assert os.lstat(snap / "su").st_uid == 1000


def test_chown_to_another_user_happens_before_chmod(tmp_path: Path) -> None:
    snap = _extract(
        tmp_path / "snap",
        f("sgid", b"x", 0o2755, uid=1234, gid=5678),
        f("suid", b"x", 0o4711, uid=1234, gid=5678),
        d("home/", 0o2770, uid=1234, gid=5678),
    )
    for name, mode in (("sgid", 0o2755), ("suid", 0o4711), ("home", 0o2770)):
        st = os.stat(snap / name)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, mode), name


def test_chardev_whiteouts_and_trusted_opaque(tmp_path: Path) -> None:
    snap = _extract(
        tmp_path / "snap",
        f(".wh.gone"),
        d("o/"),
        f("o/.wh..wh..opq"),
        f("o/new", b"n"),
        f("made", b"x"),
        f(".wh.made"),
    )
    for name in ("gone", "made"):
        st = os.lstat(snap / name)
        assert stat.S_ISCHR(st.st_mode)
        assert st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(snap / "o", "trusted.overlay.opaque") == b"y"
    assert "user.overlay.opaque" not in os.listxattr(snap / "o")


# ---- overlay mounts ----------------------------------------------------------------------------

BASE: tuple[Member, ...] = (
    d("etc/"),
    f("etc/keep", b"keep"),
    f("etc/gone", b"gone"),
    d("etc/gone-dir/"),
    f("etc/gone-dir/inner", b"inner"),
    d("opaque/"),
    f("opaque/old-1", b"1"),
    f("opaque/old-2", b"2"),
    d("merged/"),
    f("merged/lower", b"lower"),
)
TOP: tuple[Member, ...] = (
    d("etc/"),
    f("etc/.wh.gone"),
    f("etc/.wh.gone-dir"),
    f("etc/keep", b"changed"),
    d("opaque/"),
    f("opaque/.wh..wh..opq"),
    f("opaque/new", b"new"),
    d("merged/"),
    f("merged/upper", b"upper"),
)


@pytest.mark.parametrize(
    ("policy", "options"),
    [(ROOT, {}), (ROOTLESS, {"userxattr": ""})],
    ids=["chardev", "xattr-userxattr"],
)
def test_overlay_of_two_snapshots_honours_whiteouts_and_opaque_dirs(
    tmp_path: Path, mounts: list[Path], policy: ExtractPolicy, options: dict[str, str]
) -> None:
    base = _extract(tmp_path / "base", *BASE, policy=policy)
    top = _extract(tmp_path / "top", *TOP, policy=policy)
    merged = _overlay(mounts, tmp_path / "merged", [top, base], **options)
    assert sorted(os.listdir(merged / "etc")) == ["keep"]
    assert (merged / "etc" / "keep").read_bytes() == b"changed"
    assert not os.path.lexists(merged / "etc" / "gone")
    assert not os.path.lexists(merged / "etc" / "gone-dir")
    assert sorted(os.listdir(merged / "opaque")) == ["new"]
    assert sorted(os.listdir(merged / "merged")) == ["lower", "upper"]


def test_overlay_upper_becomes_a_layer_that_reproduces_the_merged_view(
    tmp_path: Path, mounts: list[Path]
) -> None:
    base = _extract(tmp_path / "base", *BASE, d("keep-dir/", 0o750), f("keep-dir/x", b"x"))
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    merged = _overlay(
        mounts,
        tmp_path / "rw",
        [base],
        upperdir=upper,
        workdir=work,
        redirect_dir="off",
        metacopy="off",
    )
    (merged / "etc" / "gone").unlink()
    shutil.rmtree(merged / "etc" / "gone-dir")
    (merged / "etc" / "keep").write_bytes(b"edited")
    shutil.rmtree(merged / "opaque")
    (merged / "opaque").mkdir()
    (merged / "opaque" / "fresh").write_bytes(b"fresh")
    (merged / "merged" / "added").write_bytes(b"added")
    (merged / "keep-dir").chmod(0o700)
    os.mknod(merged / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    expected = _view(merged)
    subprocess.run(["umount", str(merged)], check=True)
    mounts.remove(merged)

    blob = layer_from_overlay_upper(upper, tmp_path / "upper.tgz")
    with open_layer(blob.path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        names = {m.name: m for m in tar}
    assert names["etc/.wh.gone"].isreg()
    assert "etc/.wh.gone-dir" in names
    assert "etc/gone-dir/inner" not in names
    assert "opaque/.wh..wh..opq" in names
    assert names["null"].ischr()
    assert (names["null"].devmajor, names["null"].devminor) == (1, 3)
    assert not any(n.startswith(("work", "index")) for n in names)

    layer = _extract_blob(blob, tmp_path / "layer")
    view = _overlay(mounts, tmp_path / "ro", [layer, base])
    assert _view(view) == expected


def test_diff_layer_over_its_lower_snapshot_reproduces_the_upper_tree(
    tmp_path: Path, mounts: list[Path]
) -> None:
    lower = _extract(tmp_path / "lower", *BASE, d("home/", 0o750, uid=1000, gid=1000))
    upper = tmp_path / "upper"
    shutil.copytree(lower, upper, symlinks=True)
    for dirpath, dirnames, filenames in os.walk(lower):
        for name in dirnames + filenames:
            src = os.path.join(dirpath, name)
            dst = os.path.join(upper, os.path.relpath(src, lower))
            st = os.lstat(src)
            os.lchown(dst, st.st_uid, st.st_gid)
            os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
    shutil.rmtree(upper / "opaque")
    (upper / "etc" / "gone").unlink()
    (upper / "home" / "new").write_bytes(b"new")  # home keeps uid 1000 and mode 0750
    (upper / "etc" / "keep").write_bytes(b"keep-2")
    blob = layer_from_diff(lower, upper, tmp_path / "diff.tgz")
    layer = _extract_blob(blob, tmp_path / "layer")
    home = os.stat(layer / "home")
    assert (home.st_uid, stat.S_IMODE(home.st_mode)) == (1000, 0o750)
    view = _overlay(mounts, tmp_path / "ro", [layer, lower])
    assert _view(view) == _view(upper)
