"""Durability of blob commits: every file renamed into ``ROOT/blobs`` had its final bytes fsynced
first, the blob directory is fsynced before the index names an image, and a failed write (digest
mismatch, broken source, failed fsync or rename) leaves neither a blob nor a temp file.

The system calls are wrapped, not faked: ``os.fsync`` records the inode and size it made durable,
``os.replace``/``os.rename``/``os.link`` check, for a destination in the blob store, that the
source's inode was fsynced at its present size (an fsync before the last write does not count).
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import pytest

from pytest_minidock.digest import Digest, sha256_bytes
from pytest_minidock.errors import DigestMismatch, RegistryError, StoreError
from pytest_minidock.reference import Reference
from pytest_minidock.store.layers import compress_tar, layer_from_dir
from pytest_minidock.store.store import Store
from tests.support.tars import files_tar

if TYPE_CHECKING:
    from collections.abc import Callable

_real_fsync = os.fsync
_real_replace = os.replace
_real_rename = os.rename
_real_link = os.link


def _resolve(path: Any, dir_fd: int | None) -> Path:
    p = Path(os.fsdecode(path))
    if p.is_absolute():
        return p
    base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.getcwd()
    return Path(base) / p


class Journal:
    """Wraps fsync and the renames of one test; ``events`` in order, ``problems`` found."""

    def __init__(self, store_root: Path) -> None:
        self.blobs = store_root / "blobs"
        self.index = store_root / "index.json"
        self.synced: dict[tuple[int, int], int] = {}
        """(dev, inode) -> size when it was last fsynced."""
        self.events: list[tuple[str, Path]] = []
        """("blob", path renamed into blobs/), ("dirsync", directory), ("index", index.json)."""
        self.problems: list[str] = []
        self._lock = threading.Lock()  # the layer compressor fsyncs on its own thread

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Journal:
        monkeypatch.setattr(os, "fsync", self.fsync)
        monkeypatch.setattr(os, "replace", self._renaming(_real_replace))
        monkeypatch.setattr(os, "rename", self._renaming(_real_rename))
        monkeypatch.setattr(os, "link", self._renaming(_real_link))
        return self

    def fsync(self, fd: int) -> None:
        _real_fsync(fd)
        st = os.fstat(fd)
        with self._lock:
            if stat.S_ISDIR(st.st_mode):
                self.events.append(("dirsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
            else:
                self.synced[(st.st_dev, st.st_ino)] = st.st_size

    def _renaming(self, real: Callable[..., None]) -> Callable[..., None]:
        def wrapped(src: Any, dst: Any, **kwargs: Any) -> None:
            target = _resolve(dst, kwargs.get("dst_dir_fd"))
            if target.is_relative_to(self.blobs):
                st = os.stat(src, dir_fd=kwargs.get("src_dir_fd"), follow_symlinks=False)
                with self._lock:
                    got = self.synced.get((st.st_dev, st.st_ino))
                    if got != st.st_size:
                        self.problems.append(
                            f"{target.name[:12]}: {st.st_size} bytes renamed in, "
                            f"fsynced: {'never' if got is None else f'{got} bytes'}"
                        )
            real(src, dst, **kwargs)
            with self._lock:
                if target.is_relative_to(self.blobs):
                    self.events.append(("blob", target))
                elif target == self.index:
                    self.events.append(("index", target))

        return wrapped

    def published(self) -> list[Path]:
        return [path for kind, path in self.events if kind == "blob"]

    def assert_durable_before_index(self) -> None:
        """Every blob renamed in before the index write had its directory fsynced after its
        rename and before that write."""
        cut = [kind for kind, _ in self.events].index("index")
        before = self.events[:cut]
        for i, (kind, path) in enumerate(before):
            if kind == "blob":
                assert ("dirsync", path.parent) in before[i + 1 :], (
                    f"{path} is named by the index before its directory was fsynced"
                )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def journal(store: Store, monkeypatch: pytest.MonkeyPatch) -> Journal:
    return Journal(store.root).install(monkeypatch)


def _assert_clean(store: Store) -> None:
    """No blob and no temp file: a failed write left nothing behind."""
    assert list(store.blobs) == []
    assert list(store.paths.tmp.iterdir()) == []


def _assert_committed(journal: Journal, store: Store, *digests: Digest) -> None:
    assert journal.problems == []
    published = journal.published()
    for digest in digests:
        assert store.blobs.path(digest) in published, f"{digest} was not renamed into the store"
        digest.verify(store.blobs.path(digest).read_bytes())
    assert list(store.paths.tmp.iterdir()) == []


class BrokenSource(io.RawIOBase):
    """A stream that gives ``good`` bytes, then fails as a dropped connection or disk would."""

    def __init__(self, good: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._data.readinto(buffer)
        if not n:
            raise OSError(errno.EIO, "source broke")
        return n


# -- every writer fsyncs a blob's final bytes before its rename -------------------------------
def test_the_journal_catches_a_rename_without_fsync(store: Store, journal: Journal) -> None:
    """The check itself: a temp file renamed in without an fsync, or fsynced before its last
    write, is reported."""
    for fsync_early in (False, True):
        tmp = store.blobs.temp_path("blob")
        with open(tmp, "wb") as f:
            f.write(b"first")
            f.flush()
            if fsync_early:
                os.fsync(f.fileno())
            f.write(b" and more")
        store.blobs.publish(tmp, sha256_bytes(b"first and more"))
    assert journal.problems == [
        f"{sha256_bytes(b'first and more').hex[:12]}: 14 bytes renamed in, fsynced: never",
        f"{sha256_bytes(b'first and more').hex[:12]}: 14 bytes renamed in, fsynced: 5 bytes",
    ]


@pytest.mark.parametrize("durable", [True, False])
def test_blob_writer_fsyncs_before_the_rename(
    store: Store, journal: Journal, durable: bool
) -> None:
    small = store.blobs.write_bytes(b'{"config": 1}', durable=durable)
    data = os.urandom(3 << 20)  # several of ingest's reads
    big, size = store.blobs.ingest(io.BytesIO(data), sha256_bytes(data), len(data))
    assert size == len(data)
    _assert_committed(journal, store, small, big)


def test_small_in_memory_gzip_layer_fsyncs_before_the_rename(
    store: Store, journal: Journal
) -> None:
    """A tar of at most ``_SMALL_LAYER`` bytes (``WORKDIR``, a small ``COPY``): compressed from
    memory by ``compress_tar_bytes``."""
    blob = store.add_layer(io.BytesIO(files_tar({"etc/app.conf": b"x=1\n"})), source="small")
    _assert_committed(journal, store, blob.digest)


def test_large_gzip_layer_fsyncs_before_the_rename(
    store: Store, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A larger tar: unpacked while a thread compresses it (``compress_tar``, several chunks,
    the deflate pool)."""
    import pytest_minidock.store.store as store_module

    monkeypatch.setattr(store_module, "_SMALL_LAYER", 4096)
    data = files_tar({"big": os.urandom(3 << 20), "small": b"s"})
    blob = store.add_layer(io.BytesIO(data), source="large")
    assert blob.uncompressed_size == len(data)
    _assert_committed(journal, store, blob.digest)


def test_streamed_gzip_layer_without_unpacking_fsyncs_before_the_rename(
    store: Store, journal: Journal
) -> None:
    blob = store.add_layer(
        io.BytesIO(files_tar({"f": os.urandom(1 << 20)})), source="s", unpack=False
    )
    _assert_committed(journal, store, blob.digest)


def test_uncompressed_layer_fsyncs_before_the_rename(tmp_path: Path, journal: Journal) -> None:
    store = Store(tmp_path / "store", compression="none")
    for source in (b"", os.urandom(2 << 20)):  # in memory, then streamed
        blob = store.add_layer(io.BytesIO(files_tar({"f": source})), source="plain", unpack=False)
        _assert_committed(journal, store, blob.digest)


def test_layer_from_a_tree_adopted_by_the_store_is_fsynced_first(
    store: Store, journal: Journal, tmp_path: Path
) -> None:
    """The ``RUN`` and ``commit`` path: ``layer_from_*`` writes a temp, ``add_layer_blob``
    renames it in."""
    tree = tmp_path / "tree"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "tool").write_bytes(os.urandom(1 << 20) * 2)
    (tree / "readme").write_text("hello\n")
    out = store.blobs.temp_path("layer")
    blob = layer_from_dir(tree, out)
    assert journal.synced.get((out.stat().st_dev, out.stat().st_ino)) == blob.size
    store.add_layer_blob(blob)
    _assert_committed(journal, store, blob.digest)


def test_import_makes_every_blob_durable_before_the_index_names_it(
    store: Store, journal: Journal
) -> None:
    record = store.import_tarball(
        io.BytesIO(files_tar({"bin/sh": b"#!", "etc/passwd": b"root:x:0:0::/:/bin/sh\n"})),
        [Reference.parse("durable:1")],
        source="test",
    )
    manifest = store.image("durable:1").manifest()
    _assert_committed(
        journal, store, record.manifest.digest, manifest.config.digest, manifest.layers[0].digest
    )
    journal.assert_durable_before_index()


def test_write_image_makes_every_blob_durable_before_the_index_names_it(
    tmp_path: Path, store: Store, journal: Journal
) -> None:
    """An image copied from another store (as a load or a pull does): layers through
    ``BlobStore.ingest``, config and manifest through ``write_bytes``."""
    source = Store(tmp_path / "source")
    source.import_tarball(
        io.BytesIO(files_tar({"f": os.urandom(4096)})), [Reference.parse("src:1")]
    )
    journal.events.clear()
    journal.synced.clear()
    record = store.write_image(source.image("src:1"), [Reference.parse("copy:1")])
    manifest = store.image("copy:1").manifest()
    _assert_committed(
        journal, store, record.manifest.digest, manifest.config.digest, manifest.layers[0].digest
    )
    journal.assert_durable_before_index()


def test_pulled_blob_is_fsynced_before_the_rename(store: Store, journal: Journal) -> None:
    """The registry pull's sink (background write-back, then a final fsync)."""
    from pytest_minidock.registry.failures import Context
    from pytest_minidock.registry.pull import _BlobSink

    data = os.urandom(5 << 20)  # past the write-back threshold
    sink = _BlobSink(store, sha256_bytes(data))
    try:
        for start in range(0, len(data), 1 << 20):
            sink.write(data[start : start + (1 << 20)])
        sink.commit(Context(registry="registry.test", reference="x:1"), len(data))
    finally:
        sink.discard()
    _assert_committed(journal, store, sha256_bytes(data))


# -- a failed write leaves no blob and no temp ------------------------------------------------
def test_digest_or_size_mismatch_leaves_nothing(store: Store, journal: Journal) -> None:
    data = b"the real bytes"
    with pytest.raises(DigestMismatch):
        store.blobs.write_bytes(b"tampered bytes", sha256_bytes(data))
    with pytest.raises(DigestMismatch, match="got 14 bytes, expected 15"):
        store.blobs.ingest(io.BytesIO(data), sha256_bytes(data), 15)
    with pytest.raises(DigestMismatch):
        store.blobs.ingest(io.BytesIO(b"x" + data[1:]), sha256_bytes(data), len(data))
    with store.blobs.writer(sha256_bytes(data)) as w:  # committed by hand
        w.write(b"other")
        with pytest.raises(DigestMismatch):
            w.commit()
    assert journal.published() == []
    _assert_committed(journal, store)
    _assert_clean(store)


def test_pulled_blob_with_the_wrong_digest_leaves_nothing(store: Store) -> None:
    from pytest_minidock.registry.failures import Context
    from pytest_minidock.registry.pull import _BlobSink

    sink = _BlobSink(store, sha256_bytes(b"expected"))
    try:
        sink.write(b"unexpected")
        with pytest.raises(RegistryError, match="hashes to"):
            sink.commit(Context(registry="registry.test", reference="x:1"), len(b"unexpected"))
    finally:
        sink.discard()
    _assert_clean(store)


def test_a_source_that_breaks_mid_blob_leaves_nothing(store: Store) -> None:
    data = os.urandom(3 << 20)
    with pytest.raises(OSError, match="source broke"):
        store.blobs.ingest(
            cast("IO[bytes]", BrokenSource(data[: 2 << 20])), sha256_bytes(data), len(data)
        )
    _assert_clean(store)


@pytest.mark.parametrize(
    ("small_layer", "unpack"),
    [(1 << 20, True), (4096, True), (1 << 20, False)],
    ids=["in-memory", "threaded-unpack", "streamed"],
)
def test_a_source_that_breaks_mid_layer_leaves_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch, small_layer: int, unpack: bool
) -> None:
    import pytest_minidock.store.store as store_module

    monkeypatch.setattr(store_module, "_SMALL_LAYER", small_layer)
    data = files_tar({"a": os.urandom(64 << 10), "b": os.urandom(2 << 20)})
    with pytest.raises((OSError, StoreError), match="source broke"):
        store.add_layer(io.BufferedReader(BrokenSource(data[:80_000])), source="s", unpack=unpack)
    _assert_clean(store)
    assert list(store.paths.snapshots.iterdir()) == []


def _failing_file_fsync(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make fsync of a regular file fail with EIO (directories still sync); the calls made."""
    calls: list[int] = []

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            _real_fsync(fd)
            return
        calls.append(fd)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_a_failed_fsync_of_a_blob_is_a_store_error_and_leaves_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _failing_file_fsync(monkeypatch)
    data = b'{"a": 1}'
    with pytest.raises(StoreError, match=r"cannot write blob sha256:\w+ to .*: Input/output"):
        store.blobs.write_bytes(data)
    with pytest.raises(StoreError, match=r"cannot write layer sha256:\w+ to .*: Input/output"):
        store.blobs.ingest(io.BytesIO(data), sha256_bytes(data), what=f"layer {sha256_bytes(data)}")
    assert len(calls) == 2
    _assert_clean(store)


@pytest.mark.parametrize("small_layer", [1 << 20, 4096], ids=["in-memory", "threaded-unpack"])
def test_a_failed_fsync_of_a_gzip_layer_is_a_store_error_and_leaves_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch, small_layer: int
) -> None:
    import pytest_minidock.store.store as store_module

    monkeypatch.setattr(store_module, "_SMALL_LAYER", small_layer)
    calls = _failing_file_fsync(monkeypatch)
    with pytest.raises(StoreError, match=r"cannot compress tar stream into .*: Input/output"):
        store.add_layer(io.BytesIO(files_tar({"f": os.urandom(8192)})), source="t")
    assert calls, "the gzip layer's bytes were never fsynced"
    _assert_clean(store)
    assert list(store.paths.snapshots.iterdir()) == []


def test_a_failed_fsync_of_a_layer_from_a_tree_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"data")
    _failing_file_fsync(monkeypatch)
    out = tmp_path / "layer.tar.gz"
    with pytest.raises(
        StoreError, match=f"cannot make layer from {re.escape(str(tree))}: Input/output"
    ):
        layer_from_dir(tree, out)
    assert not out.exists()
    with pytest.raises(StoreError, match="cannot compress tar stream into"):
        compress_tar(io.BytesIO(files_tar({"f": b"x"})), out)
    assert not out.exists()


def test_a_failed_rename_into_the_store_leaves_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if _resolve(dst, kwargs.get("dst_dir_fd")).is_relative_to(store.blobs.dir):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        _real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StoreError, match=r"cannot store blob sha256:\w+ at .*cross-device"):
        store.blobs.write_bytes(b"blob")
    with pytest.raises(StoreError, match=r"cannot store blob sha256:\w+ at .*cross-device"):
        store.add_layer(io.BytesIO(files_tar({"f": b"x"})), source="t", unpack=False)
    _assert_clean(store)


def test_a_failed_background_write_back_fails_the_pulled_blob(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux reports a write-back error once per open file: the pull's background
    ``fdatasync`` failing must fail the blob, not leave the final ``fsync`` to succeed."""
    from pytest_minidock.registry.failures import Context
    from pytest_minidock.registry.pull import _BlobSink

    def fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    data = os.urandom(5 << 20)
    sink = _BlobSink(store, sha256_bytes(data))
    try:
        for start in range(0, len(data), 1 << 20):
            sink.write(data[start : start + (1 << 20)])
        with pytest.raises(StoreError, match=r"cannot write blob sha256:.*Input/output error"):
            sink.commit(Context(registry="registry.test", reference="x:1"), len(data))
    finally:
        sink.discard()
    _assert_clean(store)
