"""Snapshots: safe extraction of layer tars into overlay-ready directories (no root needed)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.digest import Digest
from pytest_minidock.errors import DigestMismatch, StoreError, UnsafeLayer
from pytest_minidock.store.layers import open_layer
from pytest_minidock.store.snapshots import ExtractPolicy, extract_layer
from tests.support import tars
from tests.support.tars import Member, T, d, dev, f, hard, sym, tar_bytes
from tests.support.trees import listing

if TYPE_CHECKING:
    from pathlib import Path

ROOTLESS = ExtractPolicy(devices=False, chown=False, whiteout="xattr")
SOURCE = "sha256:feedface"


# ---- building tars -----------------------------------------------------------------------------


def _extract(dest: Path, *members: Member, policy: ExtractPolicy = ROOTLESS) -> int:
    return extract_layer(io.BytesIO(tar_bytes(*members)), dest, policy=policy, source=SOURCE)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A stand-in for the host around the snapshot: ``dest`` plus precious neighbours."""
    (tmp_path / "dest").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "sentinel.txt").write_bytes(b"precious")
    (tmp_path / "outside" / "sentinel.txt").chmod(0o600)
    return tmp_path


# ---- what extraction produces ------------------------------------------------------------------


def test_policy_for_current_user_follows_euid() -> None:
    policy = ExtractPolicy.for_current_user()
    if os.geteuid() == 0:
        assert policy == ExtractPolicy(devices=True, chown=True, whiteout="chardev")
    else:
        assert policy == ROOTLESS


def test_files_dirs_links_modes_times_and_byte_count(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    big = os.urandom(5 * (1 << 20) + 3)
    written = _extract(
        dest,
        d("bin/", 0o755),
        f("bin/busybox", big, 0o4755),
        sym("bin/sh", "/bin/busybox"),
        sym("bin/up", "../etc/hostname"),
        hard("bin/ash", "bin/busybox"),
        d("tmp/", 0o1777),
        d("secret/", 0o700),
        f("secret/key", b"k", 0o400),
        f("etc/hostname", b"box\n", 0o644),  # parent never listed: made 0755
        f("dotted/./name", b"dot"),
        (tars.info("fifo", tarfile.FIFOTYPE, 0o620), None),
    )
    assert written == len(big) + 4 + 1 + 3
    assert (dest / "bin" / "busybox").read_bytes() == big
    assert stat.S_IMODE(os.stat(dest / "bin" / "busybox").st_mode) == 0o4755
    assert os.stat(dest / "bin" / "ash").st_ino == os.stat(dest / "bin" / "busybox").st_ino
    assert os.readlink(dest / "bin" / "sh") == "/bin/busybox"
    assert os.readlink(dest / "bin" / "up") == "../etc/hostname"
    assert stat.S_IMODE(os.stat(dest / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(dest / "secret").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(dest / "secret" / "key").st_mode) == 0o400
    assert stat.S_IMODE(os.stat(dest / "etc").st_mode) == 0o755
    assert (dest / "dotted" / "name").read_bytes() == b"dot"
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)
    assert stat.S_IMODE(os.lstat(dest / "fifo").st_mode) == 0o620
    for rel in ("bin", "bin/busybox", "tmp", "secret", "secret/key", "fifo"):
        assert os.lstat(dest / rel).st_mtime_ns == T * 10**9, rel
    assert os.lstat(dest / "bin" / "sh").st_mtime_ns == T * 10**9


def test_rootless_policy_keeps_files_owned_by_the_user(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    _extract(dest, f("f", b"x", uid=12345, gid=54321), d("d/", uid=12345, gid=54321))
    assert os.stat(dest / "f").st_uid == os.getuid()
    assert os.stat(dest / "d").st_gid == os.getgid()


def test_xattrs_are_applied_but_overlay_and_selinux_ones_never(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    info, data = f("file", b"x")
    info.pax_headers = {
        "SCHILY.xattr.user.mime": "text/plain",
        "SCHILY.xattr.user.bin": b"\xff\x00".decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.overlay.whiteout": "y",
        "SCHILY.xattr.security.selinux": "system_u:object_r:etc_t:s0",
    }
    dinfo, _ = d("dir/")
    dinfo.pax_headers = {
        "SCHILY.xattr.user.overlay.opaque": "y",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "SCHILY.xattr.user.tag": "t",
    }
    _extract(dest, (info, data), (dinfo, None))
    assert os.getxattr(dest / "file", "user.mime") == b"text/plain"
    assert os.getxattr(dest / "file", "user.bin") == b"\xff\x00"
    assert sorted(os.listxattr(dest / "file")) == ["user.bin", "user.mime"]
    assert os.listxattr(dest / "dir") == ["user.tag"]


def test_trusted_xattrs_are_set_by_root_and_skipped_for_users(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    info, data = f("file", b"x")
    info.pax_headers = {"SCHILY.xattr.trusted.origin": "layer"}
    _extract(dest, (info, data))
    if os.geteuid() == 0:
        assert os.getxattr(dest / "file", "trusted.origin") == b"layer"
    else:
        assert os.listxattr(dest / "file") == []


def test_later_members_replace_earlier_ones(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    _extract(
        dest,
        f("file", b"v1"),
        f("file", b"version 2"),
        d("dir/", 0o700),
        f("dir/kept", b"k"),
        d("dir/", 0o750),  # an existing dir: only its metadata changes
        d("was-dir/"),
        f("was-dir/child", b"c"),
        sym("was-dir", "/elsewhere"),
        f("was-file", b"f"),
        d("was-file/"),
        f("was-file/inside", b"i"),
        sym("link", "a"),
        f("link", b"now a file"),
    )
    assert (dest / "file").read_bytes() == b"version 2"
    assert stat.S_IMODE(os.stat(dest / "dir").st_mode) == 0o750
    assert (dest / "dir" / "kept").read_bytes() == b"k"
    assert os.readlink(dest / "was-dir") == "/elsewhere"
    assert (dest / "was-file" / "inside").read_bytes() == b"i"
    assert (dest / "link").read_bytes() == b"now a file"
    assert not (dest / "link").is_symlink()


def test_root_entry_sets_the_snapshot_root_metadata(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    _extract(dest, d("./", 0o751), f("./a", b"a"))
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o751
    assert os.stat(dest).st_mtime_ns == T * 10**9
    assert (dest / "a").read_bytes() == b"a"


def test_a_real_layer_blob_extracts_through_open_layer(tmp_path: Path) -> None:
    blob = tmp_path / "layer.tar"
    blob.write_bytes(tar_bytes(d("etc/"), f("etc/os-release", b"ID=test\n")))
    dest = tmp_path / "dest"
    dest.mkdir()
    with open_layer(blob, diff_id=Digest.from_bytes(blob.read_bytes())) as stream:
        assert extract_layer(stream, dest, policy=ROOTLESS, source=SOURCE) == 8
    assert (dest / "etc" / "os-release").read_bytes() == b"ID=test\n"


# ---- whiteouts (rootless xattr form) -----------------------------------------------------------


def test_xattr_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    _extract(
        dest,
        f(".wh.top"),
        d("a/"),
        f("a/old", b"made by this layer"),
        f("a/.wh.old"),
        d("o/"),
        f("o/.wh..wh..opq"),
        f("o/.wh.hidden"),
        f("o/new", b"n"),
        d(".wh..wh.plnk/"),
        f(".wh..wh.plnk/123.456"),
        f(".wh.re"),
        d("re/"),
        f("re/child", b"c"),
    )
    assert sorted(os.listdir(dest)) == ["a", "o", "re", "top"]  # aufs ".wh..wh.plnk" skipped
    for whiteout in (dest / "top", dest / "a" / "old"):
        assert whiteout.stat().st_size == 0
        assert os.getxattr(whiteout, "user.overlay.whiteout") == b"y"
    # overlay reads xattr whiteouts only in directories marked opaque=x
    assert os.getxattr(dest, "user.overlay.opaque") == b"x"
    assert os.getxattr(dest / "a", "user.overlay.opaque") == b"x"
    # an opaque dir hides everything below it anyway: its whiteouts are dropped
    assert os.getxattr(dest / "o", "user.overlay.opaque") == b"y"
    assert sorted(os.listdir(dest / "o")) == ["new"]
    # ".wh.re" then "re/": the new directory replaces the lower one whole
    assert os.getxattr(dest / "re", "user.overlay.opaque") == b"y"
    assert (dest / "re" / "child").read_bytes() == b"c"


def test_whiteout_of_a_directory_made_by_the_same_layer_removes_it(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    _extract(dest, d("x/"), d("x/y/", 0o500), f("x/y/z", b"z"), f(".wh.x"))
    assert os.listdir(dest) == ["x"]
    assert (dest / "x").is_file()
    assert os.getxattr(dest / "x", "user.overlay.whiteout") == b"y"


# ---- malicious layers --------------------------------------------------------------------------

PRELUDE = (d("ok/"), f("ok/file", b"fine"), sym("ok/link", "file"))

MALICIOUS: dict[str, tuple[tuple[Member, ...], str]] = {
    "dotdot": ((f("../escape", b"pwned"),), r"'\.\.' component"),
    "dotdot-inside": ((f("ok/../../escape", b"pwned"),), r"'\.\.' component"),
    "absolute": ((f("{host}/abs", b"pwned"),), "absolute path"),
    "through-absolute-symlink": (
        (sym("x", "{host}/outside"), f("x/sentinel.txt", b"pwned")),
        "parent path 'x' is a symlink",
    ),
    "through-relative-symlink": (
        (sym("x", "."), f("x/file", b"pwned")),
        "parent path 'x' is a symlink",
    ),
    "escaping-symlink": (
        (sym("x", "../../.."), f("x/file", b"pwned")),
        "climbs out of the layer root",
    ),
    "deep-escaping-symlink": (
        (
            d("a/"),
            sym("a/b", "../../../etc"),
        ),
        "climbs out of the layer root",
    ),
    "hardlink-absolute": ((hard("passwd", "/etc/passwd"),), "absolute path"),
    "hardlink-host-file": ((hard("s", "{host}/outside/sentinel.txt"),), "absolute path"),
    "hardlink-dotdot": ((hard("s", "../outside/sentinel.txt"),), r"'\.\.' component"),
    "hardlink-to-symlink": (
        (sym("l", "/etc/passwd"), hard("h", "l")),
        "not a regular file extracted earlier",
    ),
    "hardlink-through-symlink": (
        (sym("s", "ok"), hard("h", "s/file")),
        "not a regular file extracted earlier",
    ),
    "hardlink-missing": ((hard("h", "nowhere"),), "not a regular file extracted earlier"),
    "device": ((dev("dev/mem", major=1, minor=1),), "device nodes are not allowed"),
    "block-device": ((dev("sda", kind=tarfile.BLKTYPE, major=8, minor=0),), "device nodes"),
    "file-as-parent": ((f("plain", b"p"), f("plain/child", b"c")), "not a directory"),
    "nul-byte": ((f("ok/placeholder", b"x", pax_headers={"path": "ok/a\x00b"}),), "NUL byte"),
    "long-path": ((f("a/" * 2100 + "f", b"x"),), "longer than 4096 bytes"),
    "long-component": ((f("n" * 256, b"x"),), "longer than 255 bytes"),
    "too-deep": ((f("d/" * 300 + "f", b"x"),), "nested deeper than 256"),
    "whiteout-as-dir": ((f(".wh.x/y", b"x"),), "whiteout name is used as a directory"),
    "root-as-file": ((f("./", b"x"),), "only a directory may stand for the layer root"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_layer_is_refused_and_nothing_leaks(host: Path, case: str) -> None:
    members, reason = MALICIOUS[case]
    fixed: list[Member] = []
    for info, data in (*PRELUDE, *members):
        info.name = info.name.replace("{host}", str(host))
        info.linkname = info.linkname.replace("{host}", str(host))
        fixed.append((info, data))
    before = listing(host)
    dest = host / "dest"
    with pytest.raises(UnsafeLayer, match=reason) as err:
        _extract(dest, *fixed)
    assert SOURCE in str(err.value)
    assert os.listdir(dest) == []
    after = listing(host)
    del before["dest"], after["dest"]  # its mtime moved: things were made in it, then removed
    assert after == before  # nothing appeared or changed around dest
    assert (host / "outside" / "sentinel.txt").read_bytes() == b"precious"
    assert not os.path.lexists("/etc/pwned")


def test_unsafe_message_names_layer_member_and_reason(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeLayer) as err:
        _extract(dest, f("../escape", b"x"))
    assert str(err.value) == (
        f"unsafe layer {SOURCE}: member '../escape': name has a '..' component"
    )


def test_devices_are_refused_even_for_root_when_the_policy_says_so(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    policy = ExtractPolicy(devices=False, chown=os.geteuid() == 0, whiteout="xattr")
    with pytest.raises(UnsafeLayer, match="device"):
        _extract(dest, f("a", b"a"), dev("null"), policy=policy)
    assert os.listdir(dest) == []


def test_relative_symlinks_inside_the_root_are_fine(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    _extract(
        dest,
        sym("here", "."),
        sym("a/b/up", "../../c"),
        sym("a/b/stay", "./../x/../y"),
        sym("abs", "/../../../../etc/shadow"),  # absolute: resolved inside the container root
    )
    assert os.readlink(dest / "a" / "b" / "up") == "../../c"
    assert os.readlink(dest / "abs") == "/../../../../etc/shadow"


# ---- broken input and failures after the fact --------------------------------------------------


def test_truncated_tar_is_a_store_error_and_dest_is_emptied(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = tar_bytes(d("a/"), f("a/one", b"1" * 5000), f("a/two", b"2" * 50_000))
    with pytest.raises(StoreError, match=r"not a valid tar|truncated") as err:
        extract_layer(io.BytesIO(data[:-20_000]), dest, policy=ROOTLESS, source=SOURCE)
    assert not isinstance(err.value, UnsafeLayer)
    assert os.listdir(dest) == []


def test_damaged_header_after_the_first_member_is_not_a_silent_end(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = bytearray(tar_bytes(f("one", b"1"), f("two", b"2"), f("three", b"3")))
    second = data.index(b"two\x00")
    data[second] = ord("T")  # the checksum no longer matches
    with pytest.raises(StoreError, match="damaged tar header"):
        extract_layer(io.BytesIO(bytes(data)), dest, policy=ROOTLESS, source=SOURCE)
    assert os.listdir(dest) == []


def test_garbage_is_a_store_error(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(StoreError, match="not a valid tar"):
        extract_layer(io.BytesIO(b"hello" * 300), dest, policy=ROOTLESS, source=SOURCE)


def test_dest_must_be_an_empty_real_directory(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x").write_bytes(b"")
    with pytest.raises(StoreError, match="not empty"):
        _extract(dest, f("a", b"a"))
    assert os.listdir(dest) == ["x"]
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(StoreError, match="snapshot directory"):
        _extract(tmp_path / "link", f("a", b"a"))
    assert os.listdir(tmp_path / "real") == []


def test_digest_mismatch_after_extraction_empties_dest_and_restores_it(tmp_path: Path) -> None:
    """A verifying stream fails only at EOF, after every member (and the root's mode) is done."""
    blob = tmp_path / "layer.tar"
    blob.write_bytes(
        tar_bytes(d("./", 0o555), d("ro/", 0o500), f("ro/f", b"f", 0o400), d("ro/sub/", 0o000))
    )
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o750)
    wrong = Digest("sha256", hashlib.sha256(b"something else").hexdigest())
    with open_layer(blob, diff_id=wrong) as stream, pytest.raises(DigestMismatch):
        extract_layer(stream, dest, policy=ROOTLESS, source=SOURCE)
    assert os.listdir(dest) == []
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o750
    assert os.listxattr(dest) == []


def test_stream_is_read_to_eof(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    stream = io.BytesIO(tar_bytes(f("a", b"a")) + bytes(30_000))
    extract_layer(stream, dest, policy=ROOTLESS, source=SOURCE)
    assert stream.read() == b""
