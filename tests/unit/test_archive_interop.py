"""Our ``save`` archives read by another implementation (skopeo's docker-archive and OCI code),
and archives written by skopeo loaded by us: the image ID survives every trip."""

from __future__ import annotations

import json
import subprocess
import tarfile
from typing import TYPE_CHECKING

from pytest_minidock.image.archive import ArchiveReader, save_archive
from pytest_minidock.reference import Reference
from tests.conftest import require_tool

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_minidock.store.store import Store


def _skopeo(*args: str) -> str:
    res = subprocess.run(
        [require_tool("skopeo"), "--insecure-policy", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_skopeo_reads_our_archive_and_we_read_skopeos(
    store: Store, tmp_path: Path, busybox_rootfs: Path
) -> None:
    with open(busybox_rootfs, "rb") as f:
        record = store.import_tarball(f, [Reference.parse("busybox:latest")])
    ours = tmp_path / "ours.tar"
    with open(ours, "wb") as out:
        save_archive([(store.image("busybox"), record.names)], out)

    info = json.loads(_skopeo("inspect", f"docker-archive:{ours}"))
    assert info["Layers"] == [str(d) for d in record.diff_ids]  # uncompressed, as docker saves
    config = json.loads(_skopeo("inspect", "--config", f"docker-archive:{ours}"))
    assert config["rootfs"]["diff_ids"] == [str(d) for d in record.diff_ids]

    # skopeo re-encodes it as a docker-archive and as an OCI layout; we load both.
    theirs = tmp_path / "theirs.tar"
    _skopeo("copy", f"docker-archive:{ours}", f"docker-archive:{theirs}:busybox:copied")
    oci_dir = tmp_path / "oci"
    _skopeo("copy", f"docker-archive:{ours}", f"oci:{oci_dir}:busybox:oci")
    oci_tar = tmp_path / "oci.tar"
    with tarfile.open(oci_tar, "w") as tar:
        for p in sorted(oci_dir.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(oci_dir)), recursive=False)

    store.remove("busybox")
    with open(theirs, "rb") as f, ArchiveReader(f, str(theirs)) as reader:
        ((image, names),) = reader.images()
        loaded = store.write_image(image, names)
    assert loaded.id == record.id  # docker-archive to docker-archive keeps the config bytes
    assert loaded.names == (Reference.parse("busybox:copied"),)
    # Converting to OCI, skopeo re-serialises the config (a new ID), but the content is the same.
    with open(oci_tar, "rb") as f, ArchiveReader(f, str(oci_tar)) as reader:
        ((image, names),) = reader.images()
        converted = store.write_image(image, names)
    assert converted.diff_ids == record.diff_ids
    assert json.loads(store.image(str(converted.id)).raw_config()) == config
    assert store.check() == []
