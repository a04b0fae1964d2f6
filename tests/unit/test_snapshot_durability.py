"""Snapshots that a crash left with empty or missing files are found and unpacked again.

Snapshots are never synced when they are made; their ``size`` marker names the boot that made
them. One of an earlier boot (or of an older version: a size alone) is checked once against its
layer's tar headers before it is used, then marked with this boot, or discarded and unpacked
again. A snapshot of this boot is never checked. Boots are switched by patching the store's boot
id reader: a new ``Store`` object after the switch is a process of the next boot.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
import threading
from typing import TYPE_CHECKING

import pytest

import pytest_minidock.store.snapshots as snapshots_module
import pytest_minidock.store.store as store_module
from pytest_minidock.errors import MinidockError, RuntimeFailure, StoreError
from pytest_minidock.reference import Reference
from pytest_minidock.store import locking
from pytest_minidock.store.layers import open_layer
from pytest_minidock.store.snapshots import ExtractPolicy, regular_files
from pytest_minidock.store.store import Store
from tests.support.tars import Member, d, f, files_tar, hard, info, sym, tar_bytes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from pathlib import Path
    from typing import BinaryIO

    from pytest_minidock.digest import Digest
    from pytest_minidock.image.model import Descriptor

ROOTLESS = ExtractPolicy(devices=False, chown=False, whiteout="xattr")
FILES = {"etc/config": b"setting=1\n" * 500, "bin/tool": b"\x7fELF" + b"\x01" * 3000, "empty": b""}


class Boots:
    """The boot id the store reads, switched by the test (``reboot``)."""

    def __init__(self) -> None:
        self.current = "boot-1"

    def reboot(self) -> None:
        self.current = f"boot-{int(self.current.split('-')[1]) + 1}"


@pytest.fixture
def boots(monkeypatch: pytest.MonkeyPatch) -> Boots:
    boots = Boots()
    monkeypatch.setattr(store_module, "_boot_id", lambda: boots.current)
    return boots


def _layer(store: Store, data: bytes, name: str = "img:1") -> tuple[Digest, Descriptor]:
    """Import ``data`` as a one-layer image; its diff_id and layer descriptor."""
    record = store.import_tarball(io.BytesIO(data), [Reference.parse(name)], source="test")
    layer = store.image(name).manifest().layers[0]
    return record.diff_ids[0], layer


def _marker(fs: Path) -> str:
    return (fs.parent / "size").read_text()


def _no_walk(*args: object, **kwargs: object) -> tuple[dict[bytes, int], int]:
    raise AssertionError("a snapshot of this boot was checked")


def _no_extraction(*args: object, **kwargs: object) -> int:
    raise AssertionError("unpacked again")


def _regular_tree(fs: Path) -> dict[bytes, int]:
    """The regular files below ``fs`` that are not xattr whiteouts, with their sizes."""
    out: dict[bytes, int] = {}
    root = os.fsencode(fs)
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            try:
                os.getxattr(path, "user.overlay.whiteout", follow_symlinks=False)
                continue
            except OSError:
                pass
            out[os.path.relpath(path, root)] = st.st_size
    return out


# ---- the check --------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "remove", "shorten"])
def test_a_file_a_crash_emptied_is_unpacked_again(
    tmp_path: Path, boots: Boots, damage: str
) -> None:
    store = Store(tmp_path / "store")
    diff_id, _ = _layer(store, files_tar(FILES))
    fs = store.snapshot(diff_id)
    assert _marker(fs) == f"{sum(map(len, FILES.values()))} boot-1"
    target = fs / "etc" / "config"
    if damage == "truncate":  # what delayed allocation leaves of an unsynced file
        os.truncate(target, 0)
    elif damage == "remove":
        target.unlink()
    else:
        os.truncate(target, 100)
    boots.reboot()
    after = Store(tmp_path / "store")
    again = after.snapshot(diff_id)
    assert (after.checked_snapshots, after.repaired_snapshots) == (1, 1)
    assert again == fs
    for name, data in FILES.items():
        assert (again / name).read_bytes() == data
    assert _marker(again) == f"{sum(map(len, FILES.values()))} boot-2"
    assert after.check() == []
    assert list(after.paths.tmp.iterdir()) == []
    after.snapshot(diff_id)
    assert Store(tmp_path / "store").snapshot(diff_id) == fs
    assert (after.checked_snapshots, after.repaired_snapshots) == (1, 1)


def test_an_intact_snapshot_of_an_earlier_boot_is_kept_and_marked_with_this_boot(
    tmp_path: Path, boots: Boots, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store")
    diff_id, _ = _layer(store, files_tar(FILES))
    fs = store.snapshot(diff_id)
    inodes = {name: (fs / name).stat().st_ino for name in FILES}
    size_before = _marker(fs).split()[0]
    boots.reboot()
    monkeypatch.setattr(snapshots_module, "extract_layer", _no_extraction)
    after = Store(tmp_path / "store")
    assert after.snapshot(diff_id) == fs
    assert (after.checked_snapshots, after.repaired_snapshots) == (1, 0)
    assert {name: (fs / name).stat().st_ino for name in FILES} == inodes
    assert _marker(fs) == f"{size_before} boot-2"
    assert list(after.paths.tmp.iterdir()) == []  # (the marker's temp was renamed)
    # checked once in this boot: neither this object nor another process checks it again
    monkeypatch.setattr(snapshots_module, "regular_files", _no_walk)
    assert after.snapshot(diff_id) == fs
    assert Store(tmp_path / "store").snapshot(diff_id) == fs


def test_a_snapshot_of_this_boot_is_never_checked(
    tmp_path: Path, boots: Boots, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store")
    data = files_tar(FILES)
    diff_id, layer = _layer(store, data)
    monkeypatch.setattr(snapshots_module, "regular_files", _no_walk)
    fs = store.snapshot(diff_id)
    os.truncate(fs / "etc" / "config", 0)  # (this boot's damage is nobody's: not looked at)
    for other in (store, Store(tmp_path / "store")):
        assert other.snapshot(diff_id, layer) == fs
        assert other.lowerdirs("img:1") == [fs]
        other.add_layer(io.BytesIO(data), source="again")
        assert other.checked_snapshots == 0


@pytest.mark.parametrize("old", ["{size}", "{size}\n", "", "garbage"])
def test_an_old_format_or_emptied_marker_is_checked(
    tmp_path: Path, boots: Boots, monkeypatch: pytest.MonkeyPatch, old: str
) -> None:
    """A marker of a size alone (an older version's) is a snapshot of an earlier boot; so is
    one whose own content a crash lost: checked, then rewritten with the size recomputed."""
    store = Store(tmp_path / "store")
    diff_id, _ = _layer(store, files_tar(FILES))
    fs = store.snapshot(diff_id)
    size = int(_marker(fs).split()[0])
    (fs.parent / "size").write_text(old.format(size=size))
    monkeypatch.setattr(snapshots_module, "extract_layer", _no_extraction)
    after = Store(tmp_path / "store")  # (the same boot: the marker names none)
    assert after.snapshot(diff_id) == fs
    assert (after.checked_snapshots, after.repaired_snapshots) == (1, 0)
    assert _marker(fs) == f"{size} boot-1"
    assert after.disk_usage().snapshot_bytes == size


def test_a_missing_blob_is_a_clear_error_and_the_snapshot_stays(
    tmp_path: Path, boots: Boots
) -> None:
    store = Store(tmp_path / "store")
    diff_id, layer = _layer(store, files_tar(FILES))
    fs = store.snapshot(diff_id)
    store.blobs.path(layer.digest).unlink()
    boots.reboot()
    with pytest.raises(StoreError, match=r"made before the last reboot.* blob .* is missing"):
        Store(tmp_path / "store").snapshot(diff_id, layer)
    assert (fs / "etc" / "config").read_bytes() == FILES["etc/config"]
    assert _marker(fs).endswith(" boot-1")


def test_a_container_s_recorded_lowerdirs_are_rechecked(
    tmp_path: Path, boots: Boots, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``recheck_lowerdirs``: what starting a container created before the reboot needs (its
    ``LowerDirs`` were recorded then); paths that are not this store's snapshots are left."""
    store = Store(tmp_path / "store")
    diff_id, _ = _layer(store, files_tar(FILES))
    fs = store.snapshot(diff_id)
    os.truncate(fs / "etc" / "config", 0)
    boots.reboot()
    after = Store(tmp_path / "store")
    others = [tmp_path / "elsewhere" / "fs", after.paths.snapshots / "not-a-digest" / "fs"]
    after.recheck_lowerdirs([*others, str(fs), fs.parent / "size"])
    assert (after.checked_snapshots, after.repaired_snapshots) == (1, 1)
    assert (fs / "etc" / "config").read_bytes() == FILES["etc/config"]
    monkeypatch.setattr(snapshots_module, "regular_files", _no_walk)
    after.recheck_lowerdirs([fs])
    Store(tmp_path / "store").recheck_lowerdirs([fs])
    Store(tmp_path / "store", as_owner=_forked_owner).recheck_lowerdirs([fs])  # (not its form)


# ---- layers that store the same snapshot again -------------------------------------------------


@pytest.mark.parametrize("path", ["small", "large"])
@pytest.mark.parametrize("damaged", [True, False])
def test_a_layer_stored_again_after_a_reboot_checks_the_snapshot_there(
    tmp_path: Path, boots: Boots, monkeypatch: pytest.MonkeyPatch, path: str, damaged: bool
) -> None:
    """``add_layer`` of a layer whose snapshot is there from an earlier boot: a damaged one is
    replaced by the one just unpacked, an intact one is kept (a container may use it)."""
    if path == "large":  # unpacked while a thread compresses
        monkeypatch.setattr(store_module, "_SMALL_LAYER", 700)
    data = files_tar(FILES)
    store = Store(tmp_path / "store")
    blob = store.add_layer(io.BytesIO(data), source="first")
    fs = store.snapshot(blob.diff_id)
    inode = fs.stat().st_ino
    if damaged:
        os.truncate(fs / "bin" / "tool", 0)
    boots.reboot()
    after = Store(tmp_path / "store")
    after.add_layer(io.BytesIO(data), source="again")
    assert (after.checked_snapshots, after.repaired_snapshots) == (1, int(damaged))
    assert (fs.stat().st_ino == inode) is not damaged
    assert (fs / "bin" / "tool").read_bytes() == FILES["bin/tool"]
    assert _marker(fs).endswith(" boot-2")
    assert list(after.paths.tmp.iterdir()) == []
    after.add_layer(io.BytesIO(data), source="third")
    assert after.checked_snapshots == 1


# ---- concurrent users ---------------------------------------------------------------------------


def test_two_threads_at_once_one_checks_the_other_waits_and_uses_it(
    tmp_path: Path, boots: Boots, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store")
    diff_id, layer = _layer(store, files_tar(FILES))
    fs = store.snapshot(diff_id)
    os.truncate(fs / "etc" / "config", 0)
    boots.reboot()
    waiting = threading.Event()
    real_exclusive = locking.exclusive
    real_walk = snapshots_module.regular_files

    def exclusive(path: Path, *, what: str = "") -> AbstractContextManager[None]:
        if threading.current_thread().name == "second":
            waiting.set()  # (about to wait for the lock the first one holds)
        return real_exclusive(path, what=what)

    def walk(stream: BinaryIO, *, source: str) -> tuple[dict[bytes, int], int]:
        second.start()
        assert waiting.wait(30)
        return real_walk(stream, source=source)

    monkeypatch.setattr(store_module, "exclusive", exclusive)
    monkeypatch.setattr(snapshots_module, "regular_files", walk)
    stores = [Store(tmp_path / "store"), Store(tmp_path / "store")]
    results: dict[str, Path | BaseException] = {}

    def use(n: int) -> None:
        try:
            results[threading.current_thread().name] = stores[n].snapshot(diff_id, layer)
        except BaseException as exc:
            results[threading.current_thread().name] = exc

    first = threading.Thread(target=use, args=(0,), name="first")
    second = threading.Thread(target=use, args=(1,), name="second")
    first.start()
    first.join(60)
    second.join(60)
    assert results == {"first": fs, "second": fs}
    assert [(s.checked_snapshots, s.repaired_snapshots) for s in stores] == [(1, 1), (0, 0)]
    assert (fs / "etc" / "config").read_bytes() == FILES["etc/config"]


WORKER = textwrap.dedent(
    """
    import sys
    from pytest_minidock.digest import Digest
    from pytest_minidock.store.store import Store

    store = Store(sys.argv[1])
    fs = store.snapshot(Digest.parse(sys.argv[2]))
    size = fs.joinpath("etc/config").stat().st_size
    print(store.checked_snapshots, store.repaired_snapshots, size)
    """
)


def test_processes_at_once_check_and_repair_it_once(tmp_path: Path) -> None:
    """Four processes of this (real) boot use a snapshot marked with another boot and a file
    emptied: exactly one checks and unpacks it again, the others use its result."""
    store = Store(tmp_path / "store")
    diff_id, _ = _layer(store, files_tar(FILES))
    fs = store.snapshot(diff_id)
    size = _marker(fs).split()[0]
    (fs.parent / "size").write_text(f"{size} 00000000-0000-0000-0000-000000000000")
    os.truncate(fs / "etc" / "config", 0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(store.root), str(diff_id)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    counts = sorted(tuple(map(int, out.split())) for out, _ in outs)
    assert counts == [(0, 0, 5000)] * 3 + [(1, 1, 5000)]
    boot = store_module._boot_id()
    assert _marker(fs) == f"{size} {boot}"


# ---- layer forms --------------------------------------------------------------------------------


def _own(member: Member) -> Member:
    """``member`` owned by the calling user (so that a chowning extraction may give it)."""
    member[0].uid, member[0].gid = os.getuid(), os.getgid()
    return member


def _gnu_longname_tail() -> bytes:
    """Members in GNU form (a long name: the extractor hands the rest to tarfile)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in ((("g/" + "n" * 150), b"gnu long"), ("g/short", b"after handover")):
            ti = tarfile.TarInfo(name)
            ti.size, ti.uid, ti.gid = len(data), os.getuid(), os.getgid()
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _tricky_layer() -> bytes:
    """Whiteouts, an opaque dir, hardlinks (one to a file replaced later), replaced files and
    directories, names the extractor maps, long PAX names, then a GNU tail for tarfile."""
    members = [
        d("./"),
        d("dir"),
        f("dir/kept", b"kept" * 100),
        f("dir/.wh..wh..opq"),
        f("dir/.wh.gone"),  # a whiteout beside an opaque marker
        f(".wh.removed-below"),
        f("orig", b"original content"),
        hard("link", "orig"),
        f("orig", b"replaced, longer than the original"),  # link keeps the old size
        hard("./dir//link2", "dir/kept"),
        f("tree/a/b", b"deep"),
        f("tree", b"a file where a tree was"),
        f("later", b"first"),
        d("later"),
        f("later/inside", b"inside the dir that replaced a file"),
        f("wh-me", b"whited out in this layer"),
        f(".wh.wh-me"),
        f(".wh..wh.plnk/123", b"aufs metadata"),
        f("p/" + "x" * 120, b"long pax name"),
        sym("s", "orig"),
        f("same", b"one"),
        f("./same", b"three"),
        (info("fifo", tarfile.FIFOTYPE, 0o644), None),
    ]
    tar = tar_bytes(*(_own(m) for m in members))
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:  # without its end-of-archive blocks
        t.getmembers()
        end = t.offset
    return tar[:end] + _gnu_longname_tail()


def _forked_owner(work: Callable[[], None], what: str) -> None:
    """``as_owner`` as ``runtime.userns.run_as_root`` runs it, without the user namespace: in a
    forked child, its store errors pickled back."""
    from pytest_minidock.runtime import userns

    keep = (MinidockError, OSError)
    pid, fd = userns.fork_child(work, lambda exc: userns._report(exc, keep))
    status, data = userns.reap(pid, fd)
    if status != 0:
        kept = userns._kept(data, keep)
        if kept is not None:
            raise kept
        raise RuntimeFailure(f"{what}: {data!r}")


def _stores() -> Iterator[tuple[str, dict[str, object]]]:
    yield "rootless", {"policy": ROOTLESS}
    yield "as_owner", {"as_owner": _forked_owner}
    if os.geteuid() == 0:
        yield "root", {"policy": ExtractPolicy(devices=True, chown=True, whiteout="chardev")}


STORES = dict(_stores())


@pytest.mark.parametrize("form", list(STORES))
def test_whiteouts_hardlinks_and_replaced_members_pass_when_intact(
    tmp_path: Path, boots: Boots, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    data = _tricky_layer()
    store = Store(tmp_path / "store", **STORES[form])  # type: ignore[arg-type]
    diff_id, layer = _layer(store, data)
    fs = store.snapshot(diff_id)
    # the walk names exactly the regular files extraction left, with their sizes
    with open_layer(store.blobs.path(layer.digest)) as stream:
        files, written = regular_files(stream, source="test")
    assert {os.fsdecode(k): v for k, v in files.items()} == {
        os.fsdecode(k): v for k, v in _regular_tree(fs).items()
    }
    assert written == int(_marker(fs).split()[0])
    assert files[b"link"] == len(b"original content")
    assert b"dir/.wh.gone" not in files
    assert b"g/" + b"n" * 150 in files
    boots.reboot()
    monkeypatch.setattr(snapshots_module, "extract_layer", _no_extraction)
    after = Store(tmp_path / "store", **STORES[form])  # type: ignore[arg-type]
    assert after.snapshot(diff_id) == fs
    assert (after.checked_snapshots, after.repaired_snapshots) == (1, 0)
    assert _marker(fs).endswith(" boot-2")
    monkeypatch.undo()
    monkeypatch.setattr(store_module, "_boot_id", lambda: "boot-3")
    os.truncate(fs / "link", 0)  # (the hardlinked file a crash emptied)
    third = Store(tmp_path / "store", **STORES[form])  # type: ignore[arg-type]
    assert third.snapshot(diff_id) == fs
    assert (third.checked_snapshots, third.repaired_snapshots) == (1, 1)
    assert (fs / "link").read_bytes() == b"original content"
    assert _marker(fs).endswith(" boot-3")
    assert list(third.paths.tmp.iterdir()) == []
