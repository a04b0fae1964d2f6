"""The pytest plugin (``pytest11`` entry point ``minidock``): options, ini keys, markers, hooks,
report sections, the terminal summary and the session fixtures.

Thin by design: it registers what pytest needs and imports the library lazily, so that merely having
pytest-minidock installed costs a test session next to nothing. The work is done by
``pytest_minidock.fixtures`` (imported once a container, an image or the engine is asked for).
Disable the plugin with ``-p no:minidock``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from pytest_minidock.api import Engine
    from pytest_minidock.fixtures import MinidockSession
    from pytest_minidock.store.store import Store

SESSION = pytest.StashKey["MinidockSession"]()
"""The session's ``MinidockSession``, once a fixture made it."""
RUN = pytest.StashKey[str]()
"""This run's ID (the xdist controller's, sent to the workers)."""
WORKER_STATS = pytest.StashKey[list[dict[str, Any]]]()
"""What the xdist workers reported for the terminal summary."""
EXPECTED = pytest.StashKey["int | None"]()
"""How many containers the collected tests will start (None: cannot tell), once collected."""

PULL_POLICIES = ("missing", "always", "never")
RETENTIONS = ("none", "failed", "all")


LIBRARY = "pytest_minidock"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    unmark_for_rewrite(pluginmanager)
    from pytest_minidock import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def unmark_for_rewrite(pluginmanager: pytest.PytestPluginManager) -> None:
    """Keep pytest's assertion rewriting off the library's modules (done as the plugin loads,
    before it imports any other).

    pytest marks each package of a plugin's distribution for assertion rewriting and then loads
    its modules through its own loader, which reads the cached code several times slower than
    Python's (``marshal.load`` on a buffered file: ~0.8 ms a module here instead of ~0.2), so a
    session's first container paid ~20 ms more for the ~20 library modules it imports. The
    library has no assertion meant for a test report (tests' and conftests' own are rewritten
    as before). This reaches into pytest's private rewrite hook, each name looked up with a
    fallback: if they change, the modules are rewritten as before, which is only slower.
    """
    hook = getattr(pluginmanager, "rewrite_hook", None)
    marked = getattr(hook, "_must_rewrite", None)
    if not isinstance(marked, set) or LIBRARY not in marked:
        return
    marked.discard(LIBRARY)
    cache = getattr(hook, "_marked_for_rewrite_cache", None)
    if isinstance(cache, dict):
        for name in [n for n in cache if n == LIBRARY or n.startswith(LIBRARY + ".")]:
            del cache[name]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("minidock", "containers for tests (pytest-minidock)")
    group.addoption(
        "--minidock-root",
        dest="minidock_root",
        default=None,
        metavar="DIR",
        help="store root for images and containers (default: ini minidock_root, "
        "$MINIDOCK_ROOT, /var/lib/minidock for root, ~/.local/share/minidock otherwise)",
    )
    group.addoption(
        "--minidock-keep",
        dest="minidock_keep",
        action="store_true",
        help="keep the containers running after the session (listed in the summary)",
    )
    group.addoption(
        "--minidock-reuse",
        dest="minidock_reuse",
        action="store_true",
        help="reattach session containers to the ones a kept run left, if their spec is "
        "unchanged (recreate them otherwise); they are kept again",
    )
    group.addoption(
        "--minidock-pull",
        dest="minidock_pull",
        default=None,
        choices=PULL_POLICIES,
        help="when to pull images: missing (default), always, never (ini minidock_pull)",
    )
    group.addoption(
        "--minidock-no-cache",
        dest="minidock_no_cache",
        action="store_true",
        help="build() fixtures build without the build cache",
    )
    group.addoption(
        "--minidock-timeout",
        dest="minidock_timeout",
        default=None,
        type=float,
        metavar="SECONDS",
        help="how long a container may take to be ready (ini minidock_timeout, default 60)",
    )
    parser.addini("minidock_root", "store root for images and containers", default="")
    parser.addini("minidock_pull", "when to pull images: missing|always|never", default="missing")
    parser.addini("minidock_timeout", "seconds a container may take to be ready", default="60")
    parser.addini(
        "minidock_retention",
        "which containers survive the session: none|failed (those of failing tests)|all",
        default="none",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "minidock(timeout=SECONDS): options for this test's function-scoped containers",
    )
    for key, allowed in (("minidock_pull", PULL_POLICIES), ("minidock_retention", RETENTIONS)):
        value = str(config.getini(key))
        if value not in allowed:
            raise pytest.UsageError(f"ini {key} = {value!r}: use one of {', '.join(allowed)}")
    _timeout(config)
    workerinput: dict[str, Any] = getattr(config, "workerinput", {})
    config.stash[RUN] = str(workerinput.get("minidock_run") or os.urandom(3).hex())
    config.stash[WORKER_STATS] = []


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: the workers share this run's ID and know the controller's pid."""
    node.workerinput["minidock_run"] = node.config.stash[RUN]
    node.workerinput["minidock_controller"] = os.getpid()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist controller: collect a worker's numbers for the summary."""
    stats = getattr(node, "workeroutput", {}).get("minidock")
    if stats:
        node.config.stash[WORKER_STATS].append(stats)


def store_root(config: pytest.Config) -> str | None:
    """The store root chosen by option, then ini, else None (the library's default)."""
    option: str | None = config.getoption("minidock_root")
    if option:
        return option
    ini = str(config.getini("minidock_root") or "")
    return ini or None


def _timeout(config: pytest.Config) -> float:
    option: float | None = config.getoption("minidock_timeout")
    if option is not None:
        return option
    text = str(config.getini("minidock_timeout"))
    try:
        return float(text)
    except ValueError:
        raise pytest.UsageError(f"ini minidock_timeout = {text!r}: expected seconds") from None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Say at once what the machine lacks, if the collected tests use containers; if they can
    run, count the containers they will start and, if that is enough to be worth the runtime's
    launcher, start it now, so that its start-up overlaps the first tests' set-up (see
    ``fixtures.session.warm_launcher``)."""
    if not session.items:
        return
    # every container() and build() fixture, and ``minidock``, depend on minidock_session
    users = [i for i in session.items if "minidock_session" in getattr(i, "fixturenames", ())]
    if not users:
        return
    from pytest_minidock.fixtures import session as state

    reason = state.missing_capability()
    custom_engine = session.config.hook.pytest_minidock_engine.get_hookimpls()
    if reason is not None and not custom_engine:
        raise pytest.UsageError(
            f"{reason}\n{len(users)} collected test(s) use containers, the first: {users[0].nodeid}"
        )
    config = session.config
    if reason is None and not custom_engine and not config.option.collectonly:
        expected = state.expected_containers(users)
        config.stash[EXPECTED] = expected
        if expected is None or expected >= state.LAUNCHER_MIN_CONTAINERS:
            state.warm_launcher(
                keep=bool(config.getoption("minidock_keep")),
                retention=str(config.getini("minidock_retention")),
            )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    ms = item.config.stash.get(SESSION, None)
    if ms is not None:
        ms.on_report(item, report)
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """The last test's teardown ends the session's fixtures too: their containers are then
    removed in place (see ``MinidockSession.ending``)."""
    ms = item.config.stash.get(SESSION, None)
    if ms is not None:
        ms.ending = nextitem is None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After the session fixtures' teardown: an xdist worker sends its numbers to the controller."""
    ms = session.config.stash.get(SESSION, None)
    workeroutput = getattr(session.config, "workeroutput", None)
    if ms is not None and workeroutput is not None:
        workeroutput["minidock"] = ms.stats()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    collected: list[dict[str, Any]] = config.stash.get(WORKER_STATS, [])
    stats = list(collected)
    ms = config.stash.get(SESSION, None)
    if ms is not None and not hasattr(config, "workerinput"):
        stats.append(ms.stats())
    if not stats:
        return
    from pytest_minidock.fixtures import summary_lines

    lines = summary_lines(stats)
    if lines:
        terminalreporter.write_sep("=", "minidock")
        for line in lines:
            terminalreporter.write_line(line)


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def minidock_store(pytestconfig: pytest.Config) -> Store:
    """The local image store of this session.

    Name: ``minidock_store`` · Scope: session · Depends: nothing.
    Creates the store layout under the configured root if missing; removes nothing.
    """
    from pytest_minidock.api import open_store

    return open_store(store_root(pytestconfig))


@pytest.fixture(scope="session")
def minidock_session(pytestconfig: pytest.Config) -> Iterator[MinidockSession]:
    """The plugin's state for this session (per xdist worker): engine, network, keep policy.

    Name: ``minidock_session`` · Scope: session · Depends: nothing. Every ``container()`` and
    ``build()`` fixture depends on it. At teardown (after theirs) it removes the session network
    unless a kept container is on it (in the background: pytest waits for that as it exits).
    """
    from pytest_minidock.fixtures import MinidockSession

    config = pytestconfig
    workerinput: dict[str, Any] = getattr(config, "workerinput", {})
    ms = MinidockSession(
        config,
        root=store_root(config),
        run=config.stash[RUN],
        worker=str(workerinput.get("workerid", "")),
        controller=str(workerinput.get("minidock_controller", "")),
        keep=bool(config.getoption("minidock_keep")),
        reuse=bool(config.getoption("minidock_reuse")),
        retention=str(config.getini("minidock_retention")),
        pull=str(config.getoption("minidock_pull") or config.getini("minidock_pull")),
        no_cache=bool(config.getoption("minidock_no_cache")),
        timeout=_timeout(config),
        expected=config.stash.get(EXPECTED, None),
    )
    config.stash[SESSION] = ms
    try:
        yield ms
    finally:
        config.add_cleanup(ms.join)  # the networks go while pytest ends its session
        ms.close(background=True)


@pytest.fixture(scope="session")
def minidock(minidock_session: MinidockSession) -> Engine:
    """The session's ``Engine`` for imperative use: ``minidock.run(...)`` (a ``Container`` handle,
    a context manager), ``minidock.exec``, ``minidock.images``…

    Name: ``minidock`` · Scope: session · Depends: ``minidock_session``. Removes, when first
    used, what crashed runs left behind; containers it runs die with the session.
    """
    return minidock_session.engine
