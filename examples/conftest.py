"""Examples' set-up: make sure the store holds ``busybox:latest`` (made offline from Debian's
busybox-static, as ``minidock import`` would from any rootfs tar)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_minidock.errors import ImageNotFound
from pytest_minidock.image.changes import apply_changes
from pytest_minidock.image.model import ContainerConfig
from pytest_minidock.reference import Reference
from tests.support.rootfs import BUSYBOX_CHANGES, busybox_tar

if TYPE_CHECKING:
    from pytest_minidock.store.store import Store


@pytest.fixture(scope="session", autouse=True)
def busybox_image(minidock_store: Store, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``busybox:latest`` in the session's store (imported once if missing)."""
    try:
        minidock_store.resolve("busybox:latest")
    except ImageNotFound:
        tar = busybox_tar(tmp_path_factory.mktemp("rootfs") / "busybox.tar")
        with open(tar, "rb") as f:
            minidock_store.import_tarball(
                f,
                [Reference.parse("busybox:latest")],
                source="busybox-static",
                changes=apply_changes(ContainerConfig(), BUSYBOX_CHANGES),
            )
    return "busybox:latest"
