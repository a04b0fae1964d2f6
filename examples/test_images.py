"""Example: the image store from a test. An image is an immutable value you can name, list,
inspect and copy; later examples build images and run containers from them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_minidock.reference import Reference

if TYPE_CHECKING:
    from pytest_minidock.store.store import Store


def test_busybox_is_in_the_store(minidock_store: Store, busybox_image: str) -> None:
    record = minidock_store.resolve(busybox_image)
    assert Reference.parse("busybox:latest").with_default_tag() in record.names
    assert minidock_store.image(busybox_image).config().config.cmd == ("sh",)
    # Every layer is unpacked once, ready to be an overlay lowerdir for containers.
    (lower,) = minidock_store.lowerdirs(busybox_image)
    assert (lower / "bin" / "busybox").is_file()
    assert (lower / "bin" / "sh").exists()


def test_tagging_is_cheap_and_shares_the_image(minidock_store: Store, busybox_image: str) -> None:
    minidock_store.tag(busybox_image, Reference.parse("example/shell:1"))
    assert minidock_store.resolve("example/shell:1").id == minidock_store.resolve(busybox_image).id
    assert minidock_store.remove("example/shell:1") == ["Untagged: example/shell:1"]
