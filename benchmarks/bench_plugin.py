"""The pytest plugin's cost: function-scoped containers per test, and one session container.

Run (as root): ``.venv/bin/python -m benchmarks.bench_plugin [--runs 5] [--tests 100] [--part 2]``
(``--part``: only that part, 1 or 2; both by default; ``--baseline DIR``: part 2 also for the
checkout in DIR, e.g. ``git archive HEAD | tar -x -C DIR``, interleaved with this one). It makes
a store holding ``busybox`` (offline, from Debian's busybox-static) and a throw-away test project,
then runs pytest on it as a subprocess (``-p no:cacheprovider``, bytecode cached in a private
``PYTHONPYCACHEPREFIX``), alternating the sessions below ``--runs`` times (after one warm-up each):

1. ``--tests`` tests, each with its own function-scoped busybox ``httpd`` container with a published
   port and the default wait (``container("busybox", command=[httpd...], ports=[80])``), against
   the same tests without the fixture. Per-test cost = (wall time - wall time without
   containers) / tests: start, wait and removal, plus the session's one-off costs (engine,
   clean-up, session network) spread over the tests. Issue 6's target: ≤ 50 ms; reported
   elsewhere (not measured here): pytest-docker-tools' README ~5.6 s per container,
   testcontainers users ~1.2 s.
   Per phase: each test's setup and teardown as timed by a hook wrapper in the project's
   conftest, and the plugin's own summary (``p50 start``: create + start, ``p50 ready``: the
   wait). Also the CPU time (user + system) of pytest and the processes it waited for (its
   launcher, which reaps the containers), per test: on a shared 2-core machine the wall times
   move with the neighbours' load, the CPU time much less.
2. one test using a session-scoped container with a cached image, against one test without it:
   the overhead of a session container on an otherwise empty session (target ≤ 150 ms).

The store root, its bridge, its nftables table and the project are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._roots import remove_work
from benchmarks._stats import Timing
from benchmarks.bench_runtime import make_store

TARGET_PER_TEST_MS = 50.0
TARGET_SESSION_MS = 150.0
REPORTED_S = {"pytest-docker-tools (its README)": 5.6, "testcontainers (users' reports)": 1.2}
"""Seconds per function-scoped container reported for other tools (not measured here)."""
HTTPD = '["httpd", "-f", "-p", "80", "-h", "/etc"]'
CHILD_ENV: dict[str, str] = {}

CONFTEST = f"""
import json, os, time

import pytest
from pytest_minidock import container

web = container("busybox", command={HTTPD}, ports=[80], scope="{{scope}}")

PHASES = {{{{"setup": [], "teardown": [], "last_teardown": [], "end": []}}}}
END = {{{{}}}}

@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    t0 = time.perf_counter()
    try:
        return (yield)
    finally:
        PHASES["setup"].append(time.perf_counter() - t0)

@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    t0 = time.perf_counter()
    try:
        return (yield)
    finally:
        if nextitem is not None:  # the last one tears the session down too
            PHASES["teardown"].append(time.perf_counter() - t0)
        else:
            PHASES["last_teardown"].append(time.perf_counter() - t0)
            END["t"] = time.perf_counter()

def pytest_configure(config):
    # clean-ups run last-added first: added now, this runs after those the plugin adds during
    # the session (the network removal it joins at the very end)
    config.add_cleanup(_dump)

def _dump():
    if "t" in END:  # from the last teardown to pytest's last clean-up: the session's wrap-up
        PHASES["end"].append(time.perf_counter() - END["t"])
    with open(os.environ["BENCH_PHASES"], "w") as f:
        json.dump(PHASES, f)
"""
MANY = """
import pytest

@pytest.mark.parametrize("i", range({tests}))
def test_one(i, {fixture}):
    pass
"""
ONE = """
def test_one({fixture}):
    pass
"""
_SUMMARY = re.compile(r"p50 start (\d+) ms, p50 ready (\d+) ms")


def project(base: Path, name: str, scope: str, tests: int, containers: bool) -> Path:
    """A test project: a conftest with the ``web`` fixture and ``tests`` tests (using it or not)."""
    path = base / name
    path.mkdir()
    (path / "pytest.ini").write_text("[pytest]\n")
    (path / "conftest.py").write_text(CONFTEST.format(scope=scope))
    fixture = "web" if containers else "request"
    body = MANY.format(tests=tests, fixture=fixture) if tests > 1 else ONE.format(fixture=fixture)
    (path / "test_bench.py").write_text(body)
    return path


class Session:
    """One pytest subprocess run over a project: wall time and what it printed."""

    def __init__(self, path: Path, root: Path, tests: int, pythonpath: str = "") -> None:
        self.path = path
        self.root = root
        self.tests = tests
        self.pythonpath = pythonpath
        """A checkout to run instead of this one (``--baseline``)."""
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.setups: list[float] = []
        self.teardowns: list[float] = []
        self.last_teardowns: list[float] = []
        self.ends: list[float] = []
        self.starts: list[float] = []
        self.readies: list[float] = []

    def run(self, record: bool) -> None:
        argv = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:hypothesispytest",
            f"--minidock-root={self.root}",
            str(self.path),
        ]
        phases = self.path / "phases.json"
        env = {**CHILD_ENV, "BENCH_PHASES": str(phases)}
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        before = _children_cpu()
        t0 = time.perf_counter()
        done = subprocess.run(
            argv, check=False, cwd=self.path, env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - t0
        cpu = _children_cpu() - before
        if done.returncode != 0 or f"{self.tests} passed" not in done.stdout:
            raise RuntimeError(f"pytest failed in {self.path}:\n{done.stdout}\n{done.stderr}")
        if not record:
            return
        self.walls.append(wall)
        self.cpus.append(cpu)
        times = json.loads(phases.read_text())
        self.setups += times["setup"]
        self.teardowns += times["teardown"]
        self.last_teardowns += times["last_teardown"]
        self.ends += times["end"]
        found = _SUMMARY.search(done.stdout)
        if found:
            self.starts.append(float(found[1]) / 1000)
            self.readies.append(float(found[2]) / 1000)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def leftovers(root: Path) -> list[str]:
    from pytest_minidock.api import Engine

    return [r.name for r in Engine(root).runtime.state.all()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tests", type=int, default=100)
    parser.add_argument("--part", type=int, choices=(1, 2), default=None, help="only this part")
    parser.add_argument("--baseline", type=Path, default=None, help="part 2 for this checkout too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_plugin needs root (namespaces, mounts, networks)")

    work = Path(tempfile.mkdtemp(prefix="minidock-bench-plugin-"))
    CHILD_ENV.update(os.environ)
    CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    root, _ = make_store(work)
    n = args.tests
    sessions: dict[str, Session] = {}
    if args.part in (None, 1):
        sessions["many"] = Session(project(work, "many", "function", n, True), root, n)
        sessions["many-empty"] = Session(project(work, "many-empty", "function", n, False), root, n)
    if args.part in (None, 2):
        sessions["one"] = Session(project(work, "one", "session", 1, True), root, 1)
        sessions["one-empty"] = Session(project(work, "one-empty", "session", 1, False), root, 1)
        if args.baseline is not None:
            base = str(args.baseline.resolve())
            sessions["one-base"] = Session(sessions["one"].path, root, 1, base)
            sessions["one-empty-base"] = Session(sessions["one-empty"].path, root, 1, base)
    print(f"store: {root}   runs: {args.runs} (+1 warm-up)   tests: {n}   cores: {os.cpu_count()}")
    try:
        for i in range(args.runs + 1):
            for session in sessions.values():
                session.run(record=i > 0)
        left = leftovers(root)
    finally:
        remove_work(work)

    if args.part in (None, 1):
        _report_many(sessions["many"], sessions["many-empty"], n)
    if args.part in (None, 2):
        mine = _report_one(sessions["one"], sessions["one-empty"])
        if args.baseline is not None:
            print(f"\n   the same for the baseline {args.baseline}")
            base = _report_one(sessions["one-base"], sessions["one-empty-base"])
            print(f"   overhead p50: {mine * 1000:.0f} ms, baseline {base * 1000:.0f} ms")
    if left:
        print(f"!! containers left in the store after the runs: {', '.join(left)}")


def _report_many(many: Session, empty: Session, n: int) -> None:
    print(f"\n1. {n} tests, each with its own function-scoped busybox httpd (published port)")
    print(Timing(f"session, {n} containers", tuple(many.walls)).line("s"))
    print(Timing(f"session, {n} tests, no containers", tuple(empty.walls)).line("s"))
    per_test = tuple((a - b) / n for a, b in zip(many.walls, empty.walls, strict=True))
    cost = Timing("per test (difference / tests)", per_test)
    print(cost.line())
    cpu = tuple((a - b) / n for a, b in zip(many.cpus, empty.cpus, strict=True))
    print(Timing("  CPU per test (difference / tests)", cpu).line())
    print(Timing("  a test's setup (start + wait)", tuple(many.setups)).line())
    print(Timing("  a test's teardown (removal)", tuple(many.teardowns)).line())
    if many.starts:
        print(Timing("  summary p50 start (create+start)", tuple(many.starts)).line())
        print(Timing("  summary p50 ready (the wait)", tuple(many.readies)).line())
    for who, seconds in REPORTED_S.items():
        print(f"  {who}: ~{seconds:.1f} s per container = {seconds / cost.median:.0f}x ours")
    verdict = "met" if cost.median * 1000 <= TARGET_PER_TEST_MS else "NOT met"
    print(f"target: per test <= {TARGET_PER_TEST_MS:.0f} ms at p50: {verdict}")


def _report_one(one: Session, none: Session) -> float:
    """Print part 2; the median overhead in seconds."""
    print("\n2. one session container (cached image) on an otherwise empty session")
    print(Timing("session, 1 test + session container", tuple(one.walls)).line())
    print(Timing("session, 1 test, no container", tuple(none.walls)).line())
    overhead = Timing(
        "overhead (difference)", tuple(a - b for a, b in zip(one.walls, none.walls, strict=True))
    )
    print(overhead.line())
    cpu = tuple(a - b for a, b in zip(one.cpus, none.cpus, strict=True))
    print(Timing("  CPU (difference)", cpu).line())
    # Seen from inside the session, run by run: the test's set-up (the container's start and
    # wait), the last teardown (its removal) and the wrap-up after it (the network removal
    # joined at pytest's last clean-up), each minus the same phase of the empty session. Far
    # steadier than the wall-time difference, which carries the noise of two whole pytest runs.
    inside = tuple(
        (s1 + t1 + e1) - (s0 + t0 + e0)
        for s1, t1, e1, s0, t0, e0 in zip(
            one.setups,
            one.last_teardowns,
            one.ends,
            none.setups,
            none.last_teardowns,
            none.ends,
            strict=False,
        )
    )
    if inside:
        print(Timing("  inside: set-up + removal + wrap-up", inside).line())
        print(Timing("    the test's set-up (start + wait)", tuple(one.setups)).line())
        print(Timing("    the last teardown (removal)", tuple(one.last_teardowns)).line())
        print(Timing("    wrap-up to pytest's last clean-up", tuple(one.ends)).line())
    verdict = "met" if overhead.median * 1000 <= TARGET_SESSION_MS else "NOT met"
    print(f"target: overhead <= {TARGET_SESSION_MS:.0f} ms at p50: {verdict}")
    return overhead.median


if __name__ == "__main__":
    main()
