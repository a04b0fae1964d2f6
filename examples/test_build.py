"""Example: an image built from a Dockerfile (``greeter/Dockerfile``) by a ``build()`` fixture,
once per session and from the build cache after the first time, then run by ``container()``
fixtures with two readiness strategies. Needs root until rootless mode lands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_minidock import build, container, wait

if TYPE_CHECKING:
    from pytest_minidock.fixtures import Container, Image

greeter_image = build("greeter", buildargs={"GREETING": "hello from a built image"})

# By default a container is ready when its EXPOSEd port 8080 LISTENs.
greeter = container(greeter_image)

# Or when the image's HEALTHCHECK passes (run inside the container at its own pace).
healthy_greeter = container(greeter_image, wait=wait.healthy())


def test_the_built_image_serves_its_page(greeter: Container, greeter_image: Image) -> None:
    assert greeter.record().config["ImageID"] == greeter_image.id
    page = greeter.exec("wget -qO- http://127.0.0.1:8080/")
    assert page.stdout == b"hello from a built image\n"


def test_the_healthcheck_says_when_it_is_ready(healthy_greeter: Container) -> None:
    assert healthy_greeter.exec("wget -qO- http://127.0.0.1:8080/").exit_code == 0
