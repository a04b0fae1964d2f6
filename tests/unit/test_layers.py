"""Layer changesets: reproducible gzip tars from a directory, a diff of two, or an overlay upper."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import shutil
import socket
import stat
import subprocess
import tarfile
from typing import TYPE_CHECKING, BinaryIO

import pytest

from pytest_minidock.digest import Digest
from pytest_minidock.errors import DigestMismatch, StoreError, UsageError
from pytest_minidock.store import blobio, layers
from pytest_minidock.store.layers import (
    LayerBlob,
    compress_tar,
    compress_tar_bytes,
    layer_from_diff,
    layer_from_dir,
    layer_from_overlay_upper,
    open_layer,
)
from pytest_minidock.store.snapshots import ExtractPolicy, extract_layer

if TYPE_CHECKING:
    from pathlib import Path

OLD = 1_600_000_000  # an mtime well in the past
ROOTLESS = ExtractPolicy(devices=False, chown=False, whiteout="xattr")


# ---- helpers ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def _write(path: Path, data: bytes, mode: int = 0o644, mtime: int = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    os.utime(path, (mtime, mtime))
    return path


def _make_tree(root: Path) -> Path:
    """A small tree with every kind of entry an unprivileged user can make."""
    root.mkdir()
    _write(root / "etc" / "hostname", b"box\n")
    _write(root / "bin" / "tool", b"\x7fELF" + bytes(range(256)) * 40, 0o4755)
    _write(root / "bin" / "sgid", b"sgid", 0o2711)
    (root / "tmp").mkdir(mode=0o777)
    (root / "tmp").chmod(0o1777)
    (root / "empty").mkdir()
    os.symlink("/bin/tool", root / "bin" / "abs-link")
    os.symlink("../etc/hostname", root / "bin" / "rel-link")
    os.symlink("missing", root / "dangling")
    os.link(root / "bin" / "tool", root / "bin" / "tool-hardlink")
    os.mkfifo(root / "fifo", 0o640)
    _write(root / "big.bin", random.Random(7).randbytes(3 * layers.CHUNK + 12345))
    _write(root / "deep" / ("x" * 120) / ("y" * 120) / "file", b"long name")
    _write(root / os.fsdecode(b"caf\xc3\xa9-\xff.txt"), b"non-utf8 name")
    _write(root / "attrs", b"xattrs")
    os.setxattr(root / "attrs", "user.one", b"1")
    os.setxattr(root / "attrs", "user.binary", b"\xff\x00\xfe")
    return root


def _read_tar(blob: LayerBlob | Path) -> list[tarfile.TarInfo]:
    path = blob.path if isinstance(blob, LayerBlob) else blob
    with open_layer(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        return list(tar)


def _names(blob: LayerBlob | Path) -> list[str]:
    return [m.name + ("/" if m.isdir() else "") for m in _read_tar(blob)]


def _raw_names(blob: LayerBlob) -> list[bytes]:
    """Entry names exactly as in the headers (PAX path wins), using tarfile only to parse."""
    return [os.fsencode(m.name) for m in _read_tar(blob)]


def _drain(stream: BinaryIO) -> None:
    while stream.read(65536):
        pass


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything about a tree that a layer round trip must keep."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            detail: object = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    detail = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                detail = st.st_rdev
            link = None
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                link = inodes.setdefault((st.st_dev, st.st_ino), rel)
            xattrs = (
                tuple(sorted((n, os.getxattr(path, n)) for n in os.listxattr(path)))
                if not stat.S_ISLNK(st.st_mode)
                else ()
            )
            mtime = None if stat.S_ISLNK(st.st_mode) else st.st_mtime_ns // 10**9
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail, link)
            out[rel] += (xattrs, mtime)
    return out


# ---- format ----------------------------------------------------------------------------------


def test_entries_are_sorted_relative_pax_with_empty_owner_names(tmp_path: Path) -> None:
    tree = _make_tree(tmp_path / "tree")
    blob = layer_from_dir(tree, tmp_path / "layer.tar.gz")
    members = _read_tar(blob)
    raw = _raw_names(blob)
    assert raw == sorted(raw)
    assert "empty" in [m.name for m in members if m.isdir()]
    for m in members:
        assert not m.name.startswith(("/", "./"))
        assert m.uname == ""
        assert m.gname == ""
        assert m.mtime == 0  # clamped to the default of 0
    # directories end with "/" in the header itself
    with open_layer(blob.path) as stream:
        data = stream.read()
    assert b"etc/\x00" in data
    assert b"SCHILY.xattr.user.one=1\n" in data
    by_name = {m.name: m for m in members}
    assert by_name["bin/tool"].mode == 0o4755
    assert by_name["bin/sgid"].mode == 0o2711
    assert by_name["tmp"].mode == 0o1777
    assert by_name["bin/tool-hardlink"].islnk()
    assert by_name["bin/tool-hardlink"].linkname == "bin/tool"
    assert by_name["bin/abs-link"].issym()
    assert by_name["bin/abs-link"].linkname == "/bin/tool"
    assert by_name["fifo"].isfifo()
    assert by_name["fifo"].mode == 0o640
    assert by_name["attrs"].pax_headers["SCHILY.xattr.user.one"] == "1"
    long_name = "deep/" + "x" * 120 + "/" + "y" * 120 + "/file"
    assert by_name[long_name].size == len(b"long name")
    assert by_name["etc/hostname"].uid == os.getuid()


def test_gzip_header_has_no_name_and_no_time_and_digests_match(tmp_path: Path) -> None:
    tree = _make_tree(tmp_path / "tree")
    blob = layer_from_dir(tree, tmp_path / "layer.tar.gz")
    data = blob.path.read_bytes()
    assert data[:4] == b"\x1f\x8b\x08\x00"  # deflate, no FNAME/FCOMMENT/FEXTRA flags
    assert data[4:8] == b"\x00\x00\x00\x00"  # MTIME 0
    assert blob.size == len(data)
    assert blob.digest == Digest("sha256", hashlib.sha256(data).hexdigest())
    raw = gzip.decompress(data)
    assert blob.uncompressed_size == len(raw)
    assert blob.diff_id == Digest("sha256", hashlib.sha256(raw).hexdigest())
    with open_layer(blob.path) as stream:
        assert stream.read() == raw
    assert raw.endswith(bytes(1024))
    assert len(raw) % 512 == 0


def test_external_gzip_and_tar_accept_the_layer(tmp_path: Path) -> None:
    tree = _make_tree(tmp_path / "tree")
    blob = layer_from_dir(tree, tmp_path / "layer.tar.gz", mtime=None)
    subprocess.run(["gzip", "-t", str(blob.path)], check=True)
    out = tmp_path / "by-tar"
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(blob.path), "-C", str(out)], check=True)
    # GNU tar finds no difference in content, modes, links or times against the source tree
    diff = subprocess.run(
        ["tar", "-dzf", str(blob.path), "-C", str(tree)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert (out / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()


def test_same_tree_twice_gives_the_same_digest(tmp_path: Path) -> None:
    tree = _make_tree(tmp_path / "tree")
    a = layer_from_dir(tree, tmp_path / "a.tgz")
    b = layer_from_dir(tree, tmp_path / "b.tgz")
    assert a.digest == b.digest
    assert a.diff_id == b.diff_id
    assert a.path.read_bytes() == b.path.read_bytes()
    copy = _make_tree(tmp_path / "copy")  # same content: other inodes, times and path
    for p in (copy, *copy.rglob("*")):
        if not p.is_symlink():
            os.utime(p, (OLD + 99, OLD + 99))
    c = layer_from_dir(copy, tmp_path / "c.tgz")
    assert c.digest == a.digest


def test_mtime_is_clamped_by_default_and_kept_with_none(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    f = _write(tree / "f", b"same")
    a = layer_from_dir(tree, tmp_path / "a.tgz")
    os.utime(f, (OLD + 5, OLD + 5))
    b = layer_from_dir(tree, tmp_path / "b.tgz")
    assert a.digest == b.digest
    kept_a = layer_from_dir(tree, tmp_path / "ka.tgz", mtime=None)
    os.utime(f, (OLD + 6, OLD + 6))
    kept_b = layer_from_dir(tree, tmp_path / "kb.tgz", mtime=None)
    assert kept_a.digest != kept_b.digest
    assert {m.name: m.mtime for m in _read_tar(kept_b)}["f"] == OLD + 6


def test_mtime_clamp_comes_from_source_date_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "tree"
    _write(tree / "new", b"n", mtime=OLD + 1000)
    _write(tree / "old", b"o", mtime=OLD - 1000)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(OLD))
    times = {m.name: m.mtime for m in _read_tar(layer_from_dir(tree, tmp_path / "a.tgz"))}
    assert times == {"new": OLD, "old": OLD - 1000}
    explicit = layer_from_dir(tree, tmp_path / "b.tgz", mtime=OLD - 5000)
    assert {m.mtime for m in _read_tar(explicit)} == {OLD - 5000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        layer_from_dir(tree, tmp_path / "c.tgz")


def test_content_change_changes_the_digest(tmp_path: Path) -> None:
    tree = _make_tree(tmp_path / "tree")
    a = layer_from_dir(tree, tmp_path / "a.tgz")
    _write(tree / "etc" / "hostname", b"other\n")
    b = layer_from_dir(tree, tmp_path / "b.tgz")
    assert a.digest != b.digest
    assert a.diff_id != b.diff_id
    (tree / "etc" / "hostname").chmod(0o600)
    c = layer_from_dir(tree, tmp_path / "c.tgz")
    assert c.digest != b.digest


def test_output_does_not_depend_on_threads_or_on_compress_tar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = _make_tree(tmp_path / "tree")
    threaded = layer_from_dir(tree, tmp_path / "a.tgz")
    monkeypatch.setattr(blobio, "default_workers", lambda: 0)
    inline = layer_from_dir(tree, tmp_path / "b.tgz")
    assert inline.path.read_bytes() == threaded.path.read_bytes()
    monkeypatch.undo()
    with open_layer(threaded.path) as stream:
        again = compress_tar(stream, tmp_path / "c.tgz")
    assert again.digest == threaded.digest
    assert again.diff_id == threaded.diff_id
    assert again.uncompressed_size == threaded.uncompressed_size
    assert again.path == tmp_path / "c.tgz"


@pytest.mark.parametrize("size", [0, 1000, 2 * layers.CHUNK + 7])
def test_compress_tar_bytes_writes_what_compress_tar_does(tmp_path: Path, size: int) -> None:
    """The in-memory form (small layers) gives the same blob, one chunk or several."""
    payload = os.urandom(size)
    streamed = compress_tar(io.BytesIO(payload), tmp_path / "a.tgz")
    in_memory = compress_tar_bytes(payload, tmp_path / "b.tgz")
    assert in_memory.path.read_bytes() == streamed.path.read_bytes()
    assert (in_memory.digest, in_memory.diff_id, in_memory.size) == (
        streamed.digest,
        streamed.diff_id,
        streamed.size,
    )
    assert in_memory.uncompressed_size == size
    assert gzip.decompress(in_memory.path.read_bytes()) == payload


def test_compress_tar_hashes_both_sides_and_reads_in_odd_pieces(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = os.urandom(2 * layers.CHUNK + 7)
        info = tarfile.TarInfo("blob")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    payload = raw.getvalue()

    class Dribble(io.RawIOBase):
        def __init__(self) -> None:
            self.pos = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
            n = min(len(b), 70_001, len(payload) - self.pos)
            b[:n] = payload[self.pos : self.pos + n]
            self.pos += n
            return n

    a = compress_tar(io.BytesIO(payload), tmp_path / "a.tgz", compresslevel=6)
    b = compress_tar(Dribble(), tmp_path / "b.tgz", compresslevel=6)  # type: ignore[arg-type]
    assert a.path.read_bytes() == b.path.read_bytes()
    assert gzip.decompress(a.path.read_bytes()) == payload
    assert a.diff_id == Digest("sha256", hashlib.sha256(payload).hexdigest())
    assert a.digest == Digest("sha256", hashlib.sha256(a.path.read_bytes()).hexdigest())
    fast = compress_tar(io.BytesIO(payload), tmp_path / "c.tgz", compresslevel=1)
    assert fast.diff_id == a.diff_id
    assert fast.digest != a.digest
    with pytest.raises(UsageError, match="compresslevel"):
        compress_tar(io.BytesIO(payload), tmp_path / "d.tgz", compresslevel=10)


def test_sockets_are_skipped_and_an_empty_dir_makes_an_empty_layer(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tree / "s"))
        blob = layer_from_dir(tree, tmp_path / "l.tgz")
    finally:
        sock.close()
    assert _names(blob) == []
    assert gzip.decompress(blob.path.read_bytes()) == bytes(1024)


def test_missing_source_is_a_store_error_and_leaves_no_output(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="nope"):
        layer_from_dir(tmp_path / "nope", tmp_path / "l.tgz")
    assert not (tmp_path / "l.tgz").exists()


# ---- open_layer --------------------------------------------------------------------------------


def test_open_layer_reads_plain_tar_and_refuses_zstd(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    _write(tree / "f", b"x")
    blob = layer_from_dir(tree, tmp_path / "l.tgz")
    plain = tmp_path / "l.tar"
    plain.write_bytes(gzip.decompress(blob.path.read_bytes()))
    with open_layer(plain) as s:
        assert s.read() == plain.read_bytes()
    zstd = tmp_path / "l.tar.zst"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    with pytest.raises(StoreError, match="zstd"):
        open_layer(zstd)
    with pytest.raises(StoreError, match="cannot open layer"):
        open_layer(tmp_path / "missing")


def test_open_layer_verifies_the_diff_id_at_eof(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    _write(tree / "f", os.urandom(3 * layers.CHUNK))
    blob = layer_from_dir(tree, tmp_path / "l.tgz")
    with open_layer(blob.path, diff_id=blob.diff_id) as s:
        assert hashlib.sha256(s.read()).hexdigest() == blob.diff_id.hex
    wrong = Digest("sha256", "0" * 64)
    with open_layer(blob.path, diff_id=wrong) as s, pytest.raises(DigestMismatch, match="diff_id"):
        _drain(s)


def test_open_layer_can_be_closed_half_read(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    _write(tree / "f", os.urandom(8 * layers.CHUNK))
    blob = layer_from_dir(tree, tmp_path / "l.tgz", compresslevel=1)
    with open_layer(blob.path) as s:
        assert len(s.read(1000)) == 1000
    assert s.closed


def test_corrupt_gzip_raises_while_reading(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    _write(tree / "f", os.urandom(2 * layers.CHUNK))
    blob = layer_from_dir(tree, tmp_path / "l.tgz")
    data = bytearray(blob.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(bytes(data))
    with open_layer(bad) as s, pytest.raises(StoreError, match="corrupt"):
        _drain(s)


# ---- round trip --------------------------------------------------------------------------------


def test_dir_to_layer_to_snapshot_round_trip(tmp_path: Path) -> None:
    tree = _make_tree(tmp_path / "tree")
    for p in (tree, *tree.rglob("*")):
        if not p.is_symlink():
            os.utime(p, (OLD, OLD))
    blob = layer_from_dir(tree, tmp_path / "l.tgz", mtime=None)
    dest = tmp_path / "snap"
    dest.mkdir()
    with open_layer(blob.path, diff_id=blob.diff_id) as stream:
        written = extract_layer(stream, dest, policy=ROOTLESS, source=str(blob.digest))
    before, after = _snapshot(tree), _snapshot(dest)
    assert after == before
    assert os.stat(dest / "bin" / "tool").st_ino == os.stat(dest / "bin" / "tool-hardlink").st_ino
    content = sum(
        p.stat().st_size
        for p in tree.rglob("*")
        if p.is_file() and not p.is_symlink() and p.name != "tool-hardlink"
    )
    assert written == content


# ---- diff ------------------------------------------------------------------------------------


def test_diff_emits_changes_whiteouts_and_their_parents(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    _write(lower / "keep" / "same", b"same")
    _write(lower / "keep" / "touched", b"touched")  # same bytes, new mtime: unchanged
    _write(lower / "keep" / "edited", b"v1")
    _write(lower / "keep" / "grown", b"v1")
    _write(lower / "keep" / "chmodded", b"m", 0o644)
    _write(lower / "keep" / "gone", b"bye")
    _write(lower / "olddir" / "a" / "b", b"nested")
    _write(lower / "was-file", b"file")
    _write(lower / "was-dir" / "child", b"c")
    _write(lower / "xattr", b"x")
    os.symlink("one", lower / "link")
    (lower / "modes").mkdir(mode=0o755)
    upper = tmp_path / "upper"
    shutil.copytree(lower, upper, symlinks=True)
    for p in (lower, *lower.rglob("*"), upper, *upper.rglob("*")):
        if not p.is_symlink():
            os.utime(p, (OLD, OLD))
    os.utime(upper / "keep" / "touched", (OLD + 60, OLD + 60))
    _write(upper / "keep" / "edited", b"v2", mtime=OLD + 60)  # same size, new content
    _write(upper / "keep" / "grown", b"v1 and more")
    (upper / "keep" / "chmodded").chmod(0o600)
    (upper / "keep" / "gone").unlink()
    shutil.rmtree(upper / "olddir")
    (upper / "was-file").unlink()
    _write(upper / "was-file" / "inside", b"now a dir")
    shutil.rmtree(upper / "was-dir")
    _write(upper / "was-dir", b"now a file")
    os.setxattr(upper / "xattr", "user.new", b"v")
    os.unlink(upper / "link")
    os.symlink("two", upper / "link")
    (upper / "modes").chmod(0o700)
    _write(upper / "new" / "deep" / "file", b"new")
    blob = layer_from_diff(lower, upper, tmp_path / "d.tgz")
    assert _names(blob) == [
        ".wh.olddir",
        "keep/",
        "keep/.wh.gone",
        "keep/chmodded",
        "keep/edited",
        "keep/grown",
        "link",
        "modes/",
        "new/",
        "new/deep/",
        "new/deep/file",
        "was-dir",
        "was-file/",
        "was-file/inside",
        "xattr",
    ]
    members = {m.name: m for m in _read_tar(blob)}
    assert members["keep/.wh.gone"].size == 0
    assert members["keep/.wh.gone"].isreg()
    assert members["link"].linkname == "two"
    assert members["modes"].mode == 0o700
    assert members["xattr"].pax_headers["SCHILY.xattr.user.new"] == "v"
    assert members["keep"].mode == stat.S_IMODE(os.stat(upper / "keep").st_mode)


def test_diff_of_identical_trees_is_empty_and_hardlinks_stay_links(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    _write(lower / "a", b"a")
    upper = tmp_path / "upper"
    shutil.copytree(lower, upper)
    for p in (lower, *lower.rglob("*"), upper, *upper.rglob("*")):
        os.utime(p, (OLD, OLD))
    assert _names(layer_from_diff(lower, upper, tmp_path / "same.tgz")) == []
    _write(upper / "d" / "one", b"linked")
    os.link(upper / "d" / "one", upper / "d" / "two")
    os.link(upper / "a", upper / "a-link")  # "a" is unchanged: the new name is a plain file
    members = {m.name: m for m in _read_tar(layer_from_diff(lower, upper, tmp_path / "l.tgz"))}
    assert members["d/two"].islnk()
    assert members["d/two"].linkname == "d/one"
    assert members["a-link"].isreg()
    assert members["a-link"].size == 1
    assert "a" not in members  # linking does not change the file's own metadata or bytes


# ---- overlay upper dirs (the rootless xattr form; the chardev form is a privileged test) --------


def test_overlay_upper_xattr_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    _write(upper / "gone", b"")
    os.setxattr(upper / "gone", "user.overlay.whiteout", b"y")
    _write(upper / "opaque" / "fresh", b"fresh")
    os.setxattr(upper / "opaque", "user.overlay.opaque", b"y")
    _write(upper / "mixed" / "removed", b"")
    os.setxattr(upper / "mixed" / "removed", "user.overlay.whiteout", b"y")
    os.setxattr(upper / "mixed", "user.overlay.opaque", b"x")  # "has xattr whiteouts", not opaque
    _write(upper / "copied-up", b"data")
    os.setxattr(upper / "copied-up", "user.overlay.origin", b"\x00\xfb")
    os.setxattr(upper / "copied-up", "user.keep", b"kept")
    blob = layer_from_overlay_upper(upper, tmp_path / "l.tgz")
    assert _names(blob) == [
        ".wh.gone",
        "copied-up",
        "mixed/",
        "mixed/.wh.removed",
        "opaque/",
        "opaque/.wh..wh..opq",
        "opaque/fresh",
    ]
    members = {m.name: m for m in _read_tar(blob)}
    assert members["copied-up"].pax_headers == {"SCHILY.xattr.user.keep": "kept"}
    assert not any("overlay" in k for m in members.values() for k in m.pax_headers)


def test_overlay_upper_that_needs_its_lower_layers_is_refused(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "moved").mkdir(parents=True)
    os.setxattr(upper / "moved", "user.overlay.redirect", b"/elsewhere")
    with pytest.raises(StoreError, match="redirect_dir=off"):
        layer_from_overlay_upper(upper, tmp_path / "l.tgz")
    assert not (tmp_path / "l.tgz").exists()
