"""The image store: import, names, removal, garbage collection, archives, crash-safety."""

from __future__ import annotations

import io
import json
import os
import tarfile
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.digest import Digest, sha256_bytes
from pytest_minidock.errors import (
    DigestMismatch,
    ImageInUse,
    ImageNotFound,
    InvalidReference,
    StoreError,
    UnsafeLayer,
)
from pytest_minidock.image.archive import ArchiveReader, save_archive
from pytest_minidock.image.validate import validate_image
from pytest_minidock.reference import Reference
from pytest_minidock.store.store import Store
from tests.support.tars import files_tar

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

R = Reference.parse


def _import(store: Store, data: bytes, name: str | None = None) -> Digest:
    refs = [R(name)] if name else []
    return store.import_tarball(io.BytesIO(data), refs, source="test").id


def test_fresh_store_is_an_oci_layout(store: Store) -> None:
    assert json.loads((store.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert store.images() == []
    assert store.check() == []


def test_import_list_and_inspect(store: Store, busybox_rootfs: Path) -> None:
    with open(busybox_rootfs, "rb") as f:
        record = store.import_tarball(f, [R("busybox")], source=str(busybox_rootfs))
    assert record.names == (R("docker.io/library/busybox:latest"),)
    assert store.resolve("busybox").id == record.id
    assert store.resolve("busybox:latest").id == record.id
    assert store.resolve(record.id.hex[:12]).id == record.id
    assert store.resolve(str(record.id)).id == record.id
    info = store.inspect("busybox")
    assert info["Id"] == str(record.id)
    assert info["RepoTags"] == ["busybox:latest"]
    assert info["RootFS"]["Layers"] == [str(d) for d in record.diff_ids]
    # The layer's diff_id is the digest of the tar exactly as given (like docker import).
    assert record.diff_ids == (sha256_bytes(busybox_rootfs.read_bytes()),)
    (lower,) = store.lowerdirs("busybox")
    assert (lower / "bin" / "busybox").stat().st_size > 100_000
    assert os.readlink(lower / "usr" / "bin" / "env") == "/bin/busybox"
    assert record.size > 1_000_000
    assert store.check() == []
    assert validate_image(store.image("busybox")) == []


def test_import_accepts_gzip_input_with_the_same_diff_id(store: Store) -> None:
    import gzip

    data = files_tar({"a": b"x"})
    plain = _import(store, data, "a:plain")
    zipped = _import(store, gzip.compress(data), "a:gz")
    assert store.resolve("a:plain").diff_ids == store.resolve("a:gz").diff_ids
    assert plain != zipped or plain == zipped  # created time may differ; layers are what matter


def test_same_content_gives_same_layer_blob(store: Store) -> None:
    data = files_tar({"etc/hello": b"hi\n"})
    _import(store, data, "one")
    _import(store, data, "two")
    layers = {store.image(n).manifest().layers[0].digest for n in ("one", "two")}
    assert len(layers) == 1


def test_unknown_image_and_bad_names(store: Store) -> None:
    with pytest.raises(ImageNotFound, match="no such image: nope"):
        store.resolve("nope")
    with pytest.raises(InvalidReference):
        store.resolve("-foo")


def test_retag_leaves_a_dangling_image_and_prune_removes_it(store: Store) -> None:
    old = _import(store, files_tar({"v": b"1"}), "app:1")
    new = _import(store, files_tar({"v": b"2"}), "app:1")
    records = {r.id: r for r in store.images()}
    assert records[old].names == ()
    assert records[new].names == (R("app:1"),)
    report = store.prune()
    assert report.deleted_images == (old,)
    assert report.reclaimed > 0
    assert [r.id for r in store.images()] == [new]
    assert store.check() == []


def test_rmi_untags_then_deletes_and_collects_blobs(store: Store) -> None:
    image_id = _import(store, files_tar({"f": b"data"}), "x:1")
    store.tag("x:1", R("x:2"))
    assert store.remove("x:1") == ["Untagged: x:1"]
    assert store.resolve("x:2").id == image_id
    blobs_before = set(store.blobs)
    assert store.remove("x:2") == ["Untagged: x:2", f"Deleted: {image_id}"]
    assert store.images() == []
    assert blobs_before
    assert set(store.blobs) == set()
    assert list(store.paths.snapshots.iterdir()) == []


def test_rmi_by_id_with_several_names_needs_force(store: Store) -> None:
    image_id = _import(store, files_tar({"f": b"data"}), "x:1")
    store.tag("x:1", R("y:1"))
    with pytest.raises(ImageInUse, match="referenced in multiple repositories"):
        store.remove(image_id.short)
    lines = store.remove(image_id.short, force=True)
    assert lines[-1] == f"Deleted: {image_id}"


def test_rmi_of_an_image_in_use(store: Store) -> None:
    image_id = _import(store, files_tar({"f": b"data"}), "x:1")
    with pytest.raises(ImageInUse, match="a container is using it"):
        store.remove("x:1", in_use=lambda d: d == image_id)
    assert store.remove("x:1", force=True, in_use=lambda d: d == image_id) == ["Untagged: x:1"]
    assert store.resolve(image_id.hex).names == ()


def test_save_load_round_trip_keeps_the_image_id(
    store: Store, tmp_path: Path, busybox_rootfs: Path
) -> None:
    with open(busybox_rootfs, "rb") as f:
        record = store.import_tarball(f, [R("busybox:latest")], source="busybox")
    archive = tmp_path / "busybox.tar"
    with open(archive, "wb") as out:
        save_archive([(store.image("busybox"), record.names)], out)
    # docker's layout: manifest.json + an OCI layout
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert {"manifest.json", "index.json", "oci-layout"} <= names
    assert manifest == [
        {
            "Config": f"blobs/sha256/{record.id.hex}",
            "RepoTags": ["busybox:latest"],
            "Layers": [f"blobs/sha256/{record.diff_ids[0].hex}"],
        }
    ]
    store.remove("busybox")
    assert store.images() == []
    other = Store(tmp_path / "other")
    for target in (store, other):
        with open(archive, "rb") as f, ArchiveReader(f, str(archive)) as reader:
            ((image, refs),) = reader.images()
            assert validate_image(image) == []
            loaded = target.write_image(image, refs)
        assert loaded.id == record.id
        assert loaded.manifest.digest == record.manifest.digest
        assert loaded.names == (R("busybox:latest"),)
        assert target.check() == []


def _legacy_archive(layer: bytes, config: bytes, tags: list[str]) -> bytes:
    """The pre-Docker-25 ``docker save`` layout: <id>/layer.tar and <config>.json."""
    buf = io.BytesIO()
    cfg_hex = sha256_bytes(config).hex
    files = {
        f"{cfg_hex}.json": config,
        "abc123/layer.tar": layer,
        "abc123/VERSION": b"1.0",
        "manifest.json": json.dumps(
            [{"Config": f"{cfg_hex}.json", "RepoTags": tags, "Layers": ["abc123/layer.tar"]}]
        ).encode(),
    }
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_load_legacy_docker_archive(store: Store) -> None:
    layer = files_tar({"hello.txt": b"hello"})
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["cat", "/hello.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [str(sha256_bytes(layer))]},
        }
    ).encode()
    data = _legacy_archive(layer, config, ["legacy:1"])
    with ArchiveReader(io.BytesIO(data), "legacy.tar") as reader:
        ((image, refs),) = reader.images()
        record = store.write_image(image, refs)
    assert record.id == sha256_bytes(config)
    assert record.names == (R("legacy:1"),)
    (lower,) = store.lowerdirs("legacy:1")
    assert (lower / "hello.txt").read_bytes() == b"hello"
    assert store.check() == []


def test_load_refuses_a_layer_that_does_not_match_its_diff_id(store: Store) -> None:
    layer = files_tar({"hello.txt": b"hello"})
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [str(sha256_bytes(b"other"))]},
        }
    ).encode()
    with ArchiveReader(io.BytesIO(_legacy_archive(layer, config, ["bad:1"])), "bad.tar") as r:
        ((image, refs),) = r.images()
        with pytest.raises((StoreError, DigestMismatch, Exception), match=r"diff_id|hashes"):
            store.write_image(image, refs)
    assert store.images() == []
    store.gc()
    assert list(store.blobs) == []
    assert list(store.paths.tmp.iterdir()) == []


@pytest.mark.parametrize(
    "evil",
    [
        {"../escape": b"x"},
        {"/abs/path": b"x"},
        {"a/../../escape": b"x"},
    ],
)
def test_malicious_layers_are_refused_with_nothing_written(
    store: Store, tmp_path: Path, evil: dict[str, bytes]
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UnsafeLayer, match="test"):
        _import(store, files_tar(evil), "evil:1")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (store.root.parent / "escape").exists()
    assert store.images() == []
    assert list(store.blobs) == []
    assert list(store.paths.snapshots.iterdir()) == []
    assert list(store.paths.tmp.iterdir()) == []


def test_blob_writer_never_leaves_half_blobs(store: Store) -> None:
    data = b"hello"
    with pytest.raises(DigestMismatch):
        store.blobs.write_bytes(b"tampered", sha256_bytes(data))
    with pytest.raises(DigestMismatch, match="got 5 bytes, expected 6"):
        store.blobs.ingest(io.BytesIO(data), sha256_bytes(data), 6)
    assert list(store.blobs) == []
    assert list(store.paths.tmp.iterdir()) == []
    d = store.blobs.write_bytes(data)
    assert store.blobs.read(d) == data
    assert oct(store.blobs.path(d).stat().st_mode & 0o777) == "0o444"


def test_stale_temp_files_of_dead_writers_are_collected(store: Store) -> None:
    dead = store.paths.tmp / "blob-999999999-deadbeef"
    dead.write_bytes(b"half")
    mine = store.blobs.temp_path("blob")
    mine.write_bytes(b"in progress")
    store.gc()
    assert not dead.exists()
    assert mine.exists()


def test_check_reports_a_corrupt_blob(store: Store) -> None:
    _import(store, files_tar({"f": b"data"}), "x:1")
    layer = store.image("x:1").manifest().layers[0].digest
    path = store.blobs.path(layer)
    os.chmod(path, 0o644)
    path.write_bytes(b"garbage")
    problems = store.check()
    assert any(str(layer) in p for p in problems)


def test_unwritable_root_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"cannot use .* as the minidock store"):
        Store(blocker / "store")


def test_an_incomplete_snapshot_is_unpacked_again_not_reused(store: Store) -> None:
    """A snapshot counts only with its ``size`` file (written last, before publication): one an
    interrupted deletion left under its real name is discarded and unpacked afresh."""
    image = _import(store, files_tar({"d/keep": b"keep", "d/other": b"other"}), "half:1")
    diff_id = store.resolve("half:1").diff_ids[0]
    fs = store.snapshot(diff_id)
    snap = fs.parent
    (snap / "size").unlink()  # as an older version's half-done deletion left it
    (fs / "d" / "keep").unlink()
    assert any("incomplete" in p for p in store.check())
    again = store.snapshot(diff_id)
    assert (again / "d" / "keep").read_bytes() == b"keep"
    assert (snap / "size").is_file()
    assert store.check() == []
    assert image == store.resolve("half:1").id


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry below ``root``: mode and content (a link's target)."""
    out: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                data = os.readlink(path).encode()
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    data = f.read()
            else:
                data = b""
            out[os.path.relpath(path, root)] = (st.st_mode, data)
    return out


def test_small_and_large_layers_are_stored_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small tar is ingested from memory, a large one while a thread compresses it: the same
    blob, the same diff_id and the same snapshot either way."""
    import pytest_minidock.store.store as store_module

    data = files_tar({"a/one": b"1" * 3000, "a/two": b"two", "b": os.urandom(5000)})
    small = Store(tmp_path / "small")
    blob_small = small.add_layer(io.BytesIO(data), source="small")
    monkeypatch.setattr(store_module, "_SMALL_LAYER", 700)  # the tar is larger: threaded path
    large = Store(tmp_path / "large")
    blob_large = large.add_layer(io.BytesIO(data), source="large")
    assert (blob_small.digest, blob_small.diff_id, blob_small.size) == (
        blob_large.digest,
        blob_large.diff_id,
        blob_large.size,
    )
    assert small.blobs.path(blob_small.digest).read_bytes() == (
        large.blobs.path(blob_large.digest).read_bytes()
    )
    snap_small = small.snapshot(blob_small.diff_id)
    snap_large = large.snapshot(blob_large.diff_id)
    assert _tree(snap_small) == _tree(snap_large)
    assert (snap_small.parent / "size").read_text() == (snap_large.parent / "size").read_text()
    assert small.check() == []
    assert large.check() == []
    assert list(small.blobs.tmp_dir.iterdir()) == list(large.blobs.tmp_dir.iterdir()) == []


def test_a_layer_stored_again_reuses_its_blob_and_snapshot(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same layer again (a ``--no-cache`` rebuild): its snapshot is not unpacked a second
    time and its blob file is left as it is."""
    import pytest_minidock.store.snapshots as snapshots_module

    data = files_tar({"app/file": b"content"})
    first = store.add_layer(io.BytesIO(data), source="first")
    blob_inode = store.blobs.path(first.digest).stat().st_ino
    snap = store.snapshot(first.diff_id)
    snap_inode = snap.stat().st_ino

    def no_extraction(*args: object, **kwargs: object) -> int:
        raise AssertionError("unpacked again")

    monkeypatch.setattr(snapshots_module, "extract_layer", no_extraction)
    again = store.add_layer(io.BytesIO(data), source="again")
    assert (again.digest, again.diff_id) == (first.digest, first.diff_id)
    assert store.blobs.path(first.digest).stat().st_ino == blob_inode
    assert store.snapshot(first.diff_id).stat().st_ino == snap_inode
    assert (snap / "app" / "file").read_bytes() == b"content"
    assert list(store.blobs.tmp_dir.iterdir()) == []


def test_an_image_s_blobs_are_synced_once_before_the_index_names_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layer, config and manifest renames are made durable by one fsync of the blob directory,
    and that comes before the index (the only durable thing naming them) is written."""
    import pytest_minidock.store.blobs as blobs_module
    import pytest_minidock.store.index as index_module
    from pytest_minidock.image.model import Descriptor, ImageConfig

    events: list[str] = []
    real_fsync_dir = blobs_module.fsync_dir

    def recording(path: Path) -> None:
        events.append(f"sync {os.path.relpath(path, store.root)}")
        real_fsync_dir(path)

    real_write = index_module.ImageIndex._write

    def write(self: object, entries: list[Descriptor]) -> None:
        events.append("index")
        real_write(self, entries)  # type: ignore[arg-type]

    monkeypatch.setattr(blobs_module, "fsync_dir", recording)
    monkeypatch.setattr(index_module, "fsync_dir", recording)
    monkeypatch.setattr(index_module.ImageIndex, "_write", write)
    blobs = [
        store.add_layer(io.BytesIO(files_tar({f"f{i}": b"x" * i})), source="t") for i in (1, 2)
    ]
    assert events == []  # no fsync per layer
    config = ImageConfig(diff_ids=tuple(b.diff_id for b in blobs))
    layers = [Descriptor(store.layer_media_type, b.digest, b.size) for b in blobs]
    store.commit_layers(config, layers, [R("synced:1")])
    assert events == ["sync blobs/sha256", "index", "sync ."]
    assert store.resolve("synced:1").diff_ids == config.diff_ids


def test_gc_takes_a_snapshot_out_of_snapshots_before_deleting_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion that fails half-way leaves a temp (retried later), never a partial snapshot
    under its real name, and the failure is reported."""
    import pytest_minidock.store.store as store_module

    _import(store, files_tar({"f": b"gone soon"}), "gone:1")
    diff_id = store.resolve("gone:1").diff_ids[0]
    snap = store.snapshot(diff_id).parent

    def failing(path: Path) -> None:
        raise StoreError(f"cannot remove {path}: Permission denied")

    monkeypatch.setattr(store_module, "remove_tree", failing)
    with pytest.raises(StoreError, match="cannot remove"):
        store.remove("gone:1")  # drops the image, then collects its snapshot
    assert not snap.exists()
    assert [p.name.split("-")[0] for p in store.blobs.tmp_dir.iterdir()] == ["trash"]
    monkeypatch.undo()
    store.blobs.remove_stale_temps(now=float("inf"))
    assert list(store.blobs.tmp_dir.iterdir()) == []


def _as_unprivileged(tree: Path, fn: Callable[[], None]) -> tuple[int, str]:
    """Run ``fn`` in a child as an ordinary user owning ``tree`` (nobody, when we are root;
    as ourselves otherwise); return its exit status and what it wrote."""
    import sys

    if os.geteuid() == 0:
        for dirpath, dirnames, filenames in os.walk(tree):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                os.lchown(name, 65534, 65534)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        status = 0
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            fn()
        except BaseException as exc:
            os.write(write, f"{type(exc).__name__}: {exc}".encode())
            status = 1
        sys.stdout.flush()
        os._exit(status)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def test_remove_tree_removes_read_only_and_unlistable_directories_as_a_user() -> None:
    """Layers hold directories mode 0555 (or 0000); an ordinary user's store must still delete
    them (root's permissions hide this)."""
    import tempfile
    from pathlib import Path

    from pytest_minidock.store.blobs import remove_tree

    base = Path(tempfile.mkdtemp(prefix="minidock-rmtree-", dir="/tmp"))
    tree = base / "snap"
    (tree / "ro" / "inner").mkdir(parents=True)
    (tree / "ro" / "inner" / "f").write_text("x")
    (tree / "ro" / "g").write_text("y")
    (tree / "closed").mkdir()
    (tree / "closed" / "h").write_text("z")
    (tree / "ro" / "inner").chmod(0o555)
    (tree / "ro").chmod(0o555)
    (tree / "closed").chmod(0o000)
    try:
        code, out = _as_unprivileged(base, lambda: remove_tree(tree))
        assert (code, out) == (0, "")
        assert not tree.exists()
    finally:
        remove_tree(base)


@pytest.mark.privileged
def test_remove_tree_reports_what_it_cannot_remove() -> None:
    """Not ours to change (a directory of another owner): a ``StoreError`` naming the path,
    not a half-removed tree that passes for removed."""
    import tempfile
    from pathlib import Path

    from pytest_minidock.store.blobs import remove_tree

    base = Path(tempfile.mkdtemp(prefix="minidock-rmtree-", dir="/tmp"))
    tree = base / "snap"
    (tree / "theirs").mkdir(parents=True)
    (tree / "theirs" / "f").write_text("x")
    try:
        os.chmod(base, 0o755)
        code, out = _as_unprivileged(tree / "mine-only", lambda: remove_tree(tree))
        assert code == 1
        assert out.startswith("StoreError: cannot remove ")
        assert str(tree) in out
        assert (tree / "theirs" / "f").exists()
    finally:
        remove_tree(base)


@pytest.mark.parametrize("epoch", ["0", "1700000000", "-86400", "4102444800"])
def test_creation_time_honours_source_date_epoch(
    epoch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    from pytest_minidock.store.store import now_rfc3339

    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    expected = datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert now_rfc3339() == expected


def test_creation_time_is_now_with_microseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from pytest_minidock.store.store import now_rfc3339

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    before = datetime.now(UTC)
    text = now_rfc3339()
    after = datetime.now(UTC)
    assert len(text) == len("2026-01-01T00:00:00.000000Z")
    assert before <= datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z") <= after
