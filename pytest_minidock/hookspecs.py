"""Hook specifications of pytest-minidock: the ``pytest_minidock_*`` hooks a conftest or plugin
may implement to decide policy or to observe containers.

Registered by the plugin with ``pluginmanager.add_hookspecs`` (``pytest_addhooks``). Implement
them in a ``conftest.py`` or a plugin like any pytest hook::

    def pytest_minidock_container_spec(request, spec):
        spec.env["TEST_NAME"] = request.node.name

Types are imported for type checkers only: importing this module costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_minidock.api import Engine
    from pytest_minidock.fixtures import Container, ContainerRequest
    from pytest_minidock.registry.auth import Credentials

hookspec = pytest.hookspec


@hookspec(firstresult=True)
def pytest_minidock_engine(config: pytest.Config, root: Path | None, session: str) -> Engine | None:
    """Make the engine of this test session (the ``minidock`` fixture).

    Called once per session (per xdist worker), the first time containers or images are needed.
    Stops at the first non-None result.

    :param config: The pytest config object.
    :param root: The store root from ``--minidock-root`` or the ``minidock_root`` ini key
        (None: the library's default).
    :param session: The session name the engine must pass as ``Engine(..., session=...)``:
        containers are owned by it, and crash clean-up relies on it.
    :return: An ``Engine`` (subclass ``pytest_minidock.fixtures.SessionEngine`` to keep
        ``minidock.run(...)`` returning container handles), or None for the default engine.
    """


@hookspec
def pytest_minidock_container_spec(request: pytest.FixtureRequest, spec: ContainerRequest) -> None:
    """Edit a container before it is created: image, command, environment, ports, labels, wait.

    Called for every instance of a ``container()`` fixture (for a function-scoped one, once per
    test), after the fixture's own arguments and markers were applied. Edit ``spec`` in place.

    :param request: The fixture request (``request.node`` is the test for function scope).
    :param spec: The mutable ``ContainerRequest``: ``image``, ``command``, ``env`` (a dict),
        ``overrides`` (``spec.Overrides``, replace fields with ``dataclasses.replace``),
        ``wait``, ``timeout``.
    """


@hookspec(firstresult=True)
def pytest_minidock_registry_credentials(
    config: pytest.Config, registry: str
) -> Credentials | None:
    """Give the credentials for a registry, before docker's ``config.json`` is asked.

    Stops at the first non-None result.

    :param config: The pytest config object.
    :param registry: The registry's name as in references: ``docker.io``, ``127.0.0.1:5000``.
    :return: ``pytest_minidock.registry.auth.Credentials``, or None to fall through.
    """


@hookspec
def pytest_minidock_container_started(config: pytest.Config, container: Container) -> None:
    """A fixture's container is running and ready (or was reattached with ``--minidock-reuse``).

    :param config: The pytest config object.
    :param container: Its handle; ``container.timings`` holds the start and readiness times.
    """


@hookspec
def pytest_minidock_container_finished(
    config: pytest.Config, container: Container, failed: bool, kept: bool
) -> None:
    """A fixture's container is done with: called before it is removed (its logs are readable).

    :param config: The pytest config object.
    :param container: Its handle.
    :param failed: Whether a test that used it failed.
    :param kept: Whether it is kept running after the session (``--minidock-keep``, the
        ``minidock_retention`` ini key or ``pytest_minidock_keep``).
    """


@hookspec(firstresult=True)
def pytest_minidock_keep(config: pytest.Config, container: Container, failed: bool) -> bool | None:
    """Decide whether a container survives the session. Stops at the first non-None result.

    Only asked for containers that *can* be kept: those started detached because of
    ``--minidock-keep`` or ``minidock_retention = failed|all`` (other containers die with the
    pytest process by design, even on SIGKILL).

    :param config: The pytest config object.
    :param container: Its handle.
    :param failed: Whether a test that used it failed.
    :return: True to keep it, False to remove it, None for the configured policy.
    """


@hookspec
def pytest_minidock_build_progress(config: pytest.Config, image: str, event: object) -> None:
    """Observe the progress of a ``build()`` fixture's image build.

    :param config: The pytest config object.
    :param image: The build fixture's name.
    :param event: The builder's progress event, as ``Engine.build`` reports it.
    """
