"""COPY/ADD/WORKDIR layers without a container: docker's copy rules, --chown/--chmod, archives,
reproducible tars, and the merged view of an image's layers they consult."""

from __future__ import annotations

import io
import os
import tarfile
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.build.files import (
    CopyItem,
    LayerTree,
    Owner,
    TarEntry,
    copy_into,
    ensure_dir,
    entries_from_archive,
    materialize,
    parse_chmod,
    resolve_owner,
    resolve_user_ids,
    view_item,
)
from pytest_minidock.build.rootfs import LayerView, clean_path
from pytest_minidock.errors import BuildError

if TYPE_CHECKING:
    from pathlib import Path

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:\napp:x:1001:\n"


def _layer(root: Path, files: dict[str, str | None]) -> Path:
    """A snapshot-like directory: ``None`` makes a directory, ``"->x"`` a symlink."""
    root.mkdir(parents=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif content.startswith("->"):
            path.symlink_to(content[2:])
        else:
            path.write_text(content)
    return root


def _whiteout(path: Path) -> None:
    """An overlay whiteout in the rootless (xattr) form the store writes for non-root users."""
    path.write_bytes(b"")
    os.setxattr(path, "user.overlay.whiteout", b"y")


@pytest.fixture
def view(tmp_path: Path) -> LayerView:
    base = _layer(
        tmp_path / "l0",
        {
            "etc/passwd": PASSWD,
            "etc/group": GROUP,
            "srv": None,
            "var/run": "->/run",
            "run": None,
            "gone/file": "x",
            "opaque/old": "x",
            "file": "not a dir",
        },
    )
    top = _layer(tmp_path / "l1", {"srv/app/new": "n", "opaque/new": "n"})
    for layer in (base, top):  # a directory in a layer carries its own metadata
        os.chmod(layer / "srv", 0o750)
    _whiteout(top / "gone")
    os.setxattr(top / "opaque", "user.overlay.opaque", b"y")
    return LayerView([base, top])


def members(tree: LayerTree) -> dict[str, tuple[str, int, int, int]]:
    buf = io.BytesIO()
    tree.write(buf, 0)
    buf.seek(0)
    out = {}
    with tarfile.open(fileobj=buf) as tar:
        for m in tar:
            data = tar.extractfile(m).read().decode() if m.isreg() else m.linkname  # type: ignore[union-attr]
            out[m.name + "/" if m.isdir() else m.name] = (data, m.mode, m.uid, m.gid)
    return out


def file_item(name: str, data: str = "x", mode: int = 0o644, uid: int = 0) -> CopyItem:
    raw = data.encode()
    return CopyItem(name, False, (TarEntry("", "file", mode, uid, uid, len(raw), data=raw),))


def test_the_view_merges_layers_with_whiteouts_opaque_dirs_and_links(view: LayerView) -> None:
    assert view.resolve("/gone") is None
    assert view.resolve("/gone/file") is None
    opaque = view.resolve("/opaque")
    assert opaque is not None
    assert [e.path for e in view.listdir(opaque)] == ["/opaque/new"]
    srv = view.resolve("/srv")
    assert srv is not None
    assert srv.st.st_mode & 0o777 == 0o750
    assert [rel for rel, _ in view.walk(srv)] == ["app", "app/new"]
    assert view.realpath("/var/run/x") == "/run/x"
    assert view.realpath("/var/run/../../etc") == "/etc"
    assert view.realpath("/file/x") is None
    assert view.read_file("/etc/passwd") == PASSWD.encode()
    assert view.read_file("/srv") is None
    assert LayerView([]).resolve("/") is not None
    assert clean_path("a/./b/../../..//c") == "/c"


def test_owners_resolve_through_the_images_passwd_and_group(view: LayerView) -> None:
    assert resolve_owner("app", view) == Owner(1000, 1000)  # no group: the same number
    assert resolve_owner("app:staff", view) == Owner(1000, 50)
    assert resolve_owner("42:7", None) == Owner(42, 7)
    assert resolve_user_ids("app", view) == Owner(1000, 1001)  # USER: the primary group
    assert resolve_user_ids("1000", view) == Owner(1000, 1001)
    assert resolve_user_ids("5:staff", view) == Owner(5, 50)
    with pytest.raises(ValueError, match="unable to find user nobody"):
        resolve_owner("nobody", view)
    with pytest.raises(ValueError, match="unable to find group wheel"):
        resolve_owner("app:wheel", view)


@pytest.mark.parametrize(
    ("text", "before", "is_dir", "after"),
    [
        ("755", 0o600, False, 0o755),
        ("0640", 0o777, True, 0o640),
        ("u+x", 0o644, False, 0o744),
        ("go-w", 0o666, False, 0o644),
        ("a=rX", 0o700, True, 0o555),
        ("a=rX", 0o600, False, 0o444),
        ("u=rwx,g=rx,o=", 0o777, False, 0o750),
        ("+t", 0o755, True, 0o1755),
    ],
)
def test_chmod_octal_and_symbolic(text: str, before: int, is_dir: bool, after: int) -> None:
    assert parse_chmod(text)(before, is_dir) == after


def test_chmod_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="invalid --chmod=rwx"):
        parse_chmod("rwx")


def test_a_file_lands_at_dest_or_inside_a_directory_dest(view: LayerView) -> None:
    tree = LayerTree()
    copy_into(tree, [file_item("a.txt")], "/opt/b.txt", workdir="/", view=view)
    assert set(members(tree)) == {"opt/", "opt/b.txt"}
    tree = LayerTree()
    copy_into(tree, [file_item("a.txt")], "/opt/", workdir="/", view=view)
    assert "opt/a.txt" in members(tree)
    tree = LayerTree()  # an existing directory without the slash
    copy_into(tree, [file_item("a.txt")], "/srv", workdir="/", view=view)
    got = members(tree)
    assert got["srv/a.txt"][0] == "x"
    assert got["srv/"][1] == 0o750  # the existing directory keeps its metadata
    tree = LayerTree()  # relative to the working directory, through the image's symlinks
    copy_into(tree, [file_item("a.txt")], "x/", workdir="/var/run", view=view)
    assert "run/x/a.txt" in members(tree)


def test_several_sources_need_a_directory_destination(view: LayerView) -> None:
    with pytest.raises(BuildError, match="must be a directory and end with a /"):
        copy_into(LayerTree(), [file_item("a"), file_item("b")], "/opt/x", workdir="/", view=view)
    with pytest.raises(BuildError, match="a path on the way is not a directory"):
        copy_into(LayerTree(), [file_item("a")], "/file/x", workdir="/", view=view)
    tree = LayerTree()
    copy_into(tree, [file_item("a"), file_item("b")], "/opt/x/", workdir="/", view=view)
    assert {"opt/x/a", "opt/x/b"} <= set(members(tree))


def test_a_directory_copies_its_contents_with_chown_and_chmod(view: LayerView) -> None:
    root = TarEntry("", "dir", 0o700, 5, 5)
    entries = (
        TarEntry("sub", "dir", 0o755, 5, 5),
        TarEntry("sub/f", "file", 0o600, 5, 5, 1, data=b"f"),
        TarEntry("l", "symlink", 0o777, 5, 5, link="sub/f"),
    )
    item = CopyItem("src", True, entries, root)
    tree = LayerTree()
    copy_into(tree, [item], "/new/dir", workdir="/", view=view)
    got = members(tree)
    assert got["new/"][1:] == (0o755, 0, 0)  # created on the way
    assert got["new/dir/"][1:] == (0o700, 0, 0)  # takes the source directory's mode
    assert got["new/dir/sub/f"] == ("f", 0o600, 0, 0)  # context files belong to root
    assert got["new/dir/l"][0] == "sub/f"
    tree = LayerTree()
    copy_into(
        tree,
        [CopyItem("src", True, entries, root, keep_owner=True)],
        "/d",
        workdir="/",
        view=view,
        chmod=parse_chmod("u=rwX,go=rX"),
        chown=resolve_owner("app", view),
    )
    got = members(tree)
    assert got["d/sub/f"][1:] == (0o644, 1000, 1000)
    assert got["d/sub/"][1:] == (0o755, 1000, 1000)
    tree = LayerTree()
    copy_into(
        tree, [CopyItem("src", True, entries, root, keep_owner=True)], "/e", workdir="/", view=view
    )
    assert members(tree)["e/sub/f"][2:] == (5, 5)  # --from keeps owners


def test_parents_keep_each_sources_path(view: LayerView) -> None:
    tree = LayerTree()
    items = [
        CopyItem("a", False, file_item("a").entries, keep="x/a"),
        CopyItem("b", False, file_item("b").entries, keep="y/z/b"),
    ]
    copy_into(tree, items, "/dst", workdir="/", view=view, parents=True)
    assert {"dst/", "dst/x/", "dst/x/a", "dst/y/", "dst/y/z/", "dst/y/z/b"} <= set(members(tree))


def test_layers_are_sorted_reproducible_and_put_hardlink_data_first(tmp_path: Path) -> None:
    def build() -> bytes:
        tree = LayerTree()
        tree.add(TarEntry("z", "file", 0o644, size=1, data=b"z"))
        tree.add(TarEntry("a", "hardlink", 0o644, link="z"))
        tree.add(TarEntry("d", "dir", 0o755))
        tree.add(TarEntry("d/f", "file", 0o644, size=1, data=b"f"))
        buf = io.BytesIO()
        tree.write(buf, 1234)
        return buf.getvalue()

    data = build()
    assert data == build()
    assert b"d/\x00" in data  # directories are written with their slash, as docker does
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        listed = [(m.name, m.type, m.linkname, m.mtime, m.uname) for m in tar]
    assert listed == [
        ("a", tarfile.REGTYPE, "", 1234, ""),
        ("d", tarfile.DIRTYPE, "", 1234, ""),
        ("d/f", tarfile.REGTYPE, "", 1234, ""),
        ("z", tarfile.LNKTYPE, "a", 1234, ""),
    ]
    tree = LayerTree()
    tree.add(TarEntry("x", "hardlink", 0o644, link="nothing"))
    with pytest.raises(BuildError, match="hard link x points to nothing"):
        tree.write(io.BytesIO(), 0)


def test_layer_tars_read_back_with_every_kind_of_member_and_long_odd_names(
    tmp_path: Path,
) -> None:
    """The tar writer (``store.layers.tar_header``, not tarfile) as tarfile reads it back: PAX
    records for long, non-ASCII and undecodable names and link targets and for large ids;
    devices, fifos, symlinks, hard links; contents from memory and from host files."""
    host = tmp_path / "big"
    host.write_bytes(bytes(range(256)) * 5000)  # 1.28 MB: several read chunks, a padded tail
    long = "d/" + "x" * 150
    odd = "caf\u00e9/\udcff-raw"  # a non-ASCII name and one of undecodable bytes
    tree = LayerTree()
    tree.add(TarEntry("d", "dir", 0o2755, uid=3, gid=4))
    tree.add(TarEntry(long, "file", 0o4750, uid=2**22, gid=7, size=2, data=b"hi"))
    tree.add(TarEntry(odd, "file", 0o600, size=host.stat().st_size, host=os.fsencode(host)))
    tree.add(TarEntry("d/ln", "symlink", 0o777, link="../" + "y" * 120))
    tree.add(TarEntry("d/hard", "hardlink", 0o644, link=long))
    tree.add(TarEntry("dev/null", "char", 0o666, rdev=os.makedev(1, 3)))
    tree.add(TarEntry("dev/loop0", "block", 0o660, rdev=os.makedev(7, 0)))
    tree.add(TarEntry("fifo", "fifo", 0o644))
    tree.add(TarEntry("empty", "file", 0o644, data=b""))
    buf = io.BytesIO()
    tree.write(buf, 2**40)  # a time too large for its ustar field
    data = buf.getvalue()
    assert len(data) % 512 == 0
    assert data.endswith(bytes(1024))
    buf.seek(0)
    got: dict[str, tuple[object, ...]] = {}
    with tarfile.open(fileobj=buf, encoding="utf-8", errors="surrogateescape") as tar:
        for m in tar:
            body = tar.extractfile(m).read() if m.isreg() else None  # type: ignore[union-attr]
            got[m.name] = (m.type, m.mode, m.uid, m.gid, m.mtime, m.linkname, body)
            if m.isdev():
                got[m.name] += (m.devmajor, m.devminor)
    t = 2**40
    assert list(got) == sorted(got, key=os.fsencode)
    assert got["d"] == (tarfile.DIRTYPE, 0o2755, 3, 4, t, "", None)
    # the hard link's data moved to the member that sorts first, d/hard; the file links to it
    assert got["d/hard"] == (tarfile.REGTYPE, 0o4750, 2**22, 7, t, "", b"hi")
    assert got[long][0] == tarfile.LNKTYPE
    assert got[long][5] == "d/hard"
    assert got[odd][0] == tarfile.REGTYPE
    assert got[odd][6] == host.read_bytes()
    assert got["d/ln"][:6] == (tarfile.SYMTYPE, 0o777, 0, 0, t, "../" + "y" * 120)
    assert got["dev/null"][0] == tarfile.CHRTYPE
    assert got["dev/null"][7:] == (1, 3)
    assert got["dev/loop0"][0] == tarfile.BLKTYPE
    assert got["dev/loop0"][7:] == (7, 0)
    assert got["fifo"][0] == tarfile.FIFOTYPE
    assert got["empty"][6] == b""


def test_a_file_that_shrinks_while_copied_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("abc")
    tree = LayerTree()
    tree.add(TarEntry("f", "file", 0o644, size=3, host=os.fsencode(path)))

    class Shrinking(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            path.write_text("")  # (after the header: the contents are read next)
            return super().write(data)

    with pytest.raises(BuildError, match="changed while it was being copied"):
        tree.write(Shrinking(), 0)


def test_a_changed_file_is_not_copied_with_a_stale_digest(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("longer now")
    tree = LayerTree()
    tree.add(TarEntry("f", "file", 0o644, size=3, host=os.fsencode(path)))
    with pytest.raises(BuildError, match="changed while it was being copied"):
        tree.write(io.BytesIO(), 0)


def test_workdir_directories_are_created_with_the_users_ownership(view: LayerView) -> None:
    tree = LayerTree()
    ensure_dir(tree, "/srv/app/data/x", view, Owner(1000, 1001))
    got = members(tree)
    assert got["srv/"][1:] == (0o750, os.getuid(), os.getgid())  # existing: as it is
    assert got["srv/app/"][1] == 0o755
    assert got["srv/app/data/"][2:] == (1000, 1001)
    assert got["srv/app/data/x/"][2:] == (1000, 1001)


def _archive(path: Path, names: list[tuple[str, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in names:
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            info.uid = info.gid = 7
            tar.addfile(info, io.BytesIO(data) if not name.endswith("/") else None)
        link = tarfile.TarInfo("./pkg/link")
        link.type = tarfile.LNKTYPE
        link.linkname = "pkg/a"
        tar.addfile(link)
    return path


def test_archives_unpack_with_their_owners_and_never_outside(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    archive = _archive(tmp_path / "a.tgz", [("./pkg/", b""), ("/pkg/a", b"A")])
    got = entries_from_archive(archive, spool, "a.tgz")
    assert [(e.path, e.kind, e.uid) for e in got] == [
        ("pkg", "dir", 7),
        ("pkg/a", "file", 7),
        ("pkg/link", "hardlink", 0),
    ]
    tree = LayerTree()
    copy_into(
        tree, [CopyItem("a.tgz", True, got, keep_owner=True)], "/opt/", workdir="/", view=None
    )
    out = members(tree)
    assert out["opt/pkg/a"] == ("A", 0o644, 7, 7)
    assert out["opt/pkg/link"][0] == "opt/pkg/a"
    evil = _archive(tmp_path / "evil.tar", [("../../etc/x", b"x")], "w")
    with pytest.raises(BuildError, match=r"cannot unpack evil.tar: member '../../etc/x' points"):
        entries_from_archive(evil, spool, "evil.tar")


def test_materialize_writes_entries_and_never_through_a_link(
    tmp_path: Path, view: LayerView
) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    srv = view.resolve("/srv")
    assert srv is not None
    item = view_item(view, srv, "srv")
    materialize(item.entries, dest)
    assert (dest / "app" / "new").read_text() == "n"
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(BuildError, match="refusing to write below"):
        materialize(
            [
                TarEntry("l", "symlink", 0o777, link=str(tmp_path)),
                TarEntry("l/escaped", "file", 0o644, size=1, data=b"x"),
            ],
            bad,
        )
    assert not (tmp_path / "escaped").exists()
