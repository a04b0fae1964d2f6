"""The pytest plugin's cost: function-scoped containers per test, and one session container.

Run (as root): ``.venv/bin/python -m benchmarks.bench_plugin [--runs 5] [--tests 100] [--part 2]
[--pairs 100] [--with-docker [--runs-others 3]]`` (``--part``: only that part, 1 or 2; both by
default; ``--baseline DIR``: part 2 also for the checkout in DIR, e.g. ``git archive HEAD | tar
-x -C DIR``, interleaved with this one; ``--with-docker``: part 1 side by side with
pytest-docker-tools and testcontainers, below). It makes a store holding ``busybox`` (offline,
from Debian's busybox-static) and throw-away test projects, then runs pytest on them as
subprocesses (``-p no:cacheprovider``, bytecode cached in a private ``PYTHONPYCACHEPREFIX``; each
tool's sessions load only its own pytest plugin: ours ``-p no:docker_tools``, the others ``-p
no:minidock``), alternating the sessions below (after one warm-up each):

1. ``--runs`` times: ``--tests`` tests, each with its own function-scoped busybox ``httpd``
   container with a published port and the default wait (``container("busybox",
   command=[httpd...], ports=[80])``; the test gets the published address, ``web.addr(80)``),
   against the same tests without the fixture. Per-test cost = (wall time - wall time without
   containers) / tests: start, wait and removal, plus the session's one-off costs (engine,
   clean-up, session network) spread over the tests. Issue 6's target: ≤ 50 ms.
   Per phase: each test's setup and teardown as timed by a hook wrapper in the project's
   conftest, and the plugin's own summary (``p50 start``: create + start, ``p50 ready``: the
   wait). Also the CPU time (user + system) of pytest and the processes it waited for (its
   launcher, which reaps the containers), per test: on a shared 2-core machine the wall times
   move with the neighbours' load, the CPU time much less.

   ``--with-docker`` (needs ``/usr/sbin/dockerd``, Debian's docker.io, and ``pip install -e
   '.[bench]'``) also runs the same tests written as each other tool's documentation shows, in
   the first ``--runs-others`` rounds beside ours (each after a 3-test warm-up; a round's
   sessions in alternating order), against a private dockerd (``bench_runtime.PrivateDockerd``:
   temp data-root and socket, ``--iptables=false``, so published ports go through docker-proxy;
   stopped by its PID afterwards, its leftover containers reported first) holding busybox
   imported from the same rootfs tar (``docker import``: no Docker Hub here), with
   ``DOCKER_HOST`` pointing at it:

   - pytest-docker-tools: ``container(image="busybox", command=[httpd...], ports={"80/tcp":
     None}, scope="function")``, the test calling ``web.get_addr("80/tcp")``. Its default
     wait (``Container.ready``, tried at once, then once a second up to 30 s): the container
     reloaded and running, an IP on each network, and every published TCP port LISTENing in
     ``/proc/net/tcp{,6}`` as read by a ``docker exec cat`` in the container.
   - testcontainers: a function-scoped fixture ``with DockerContainer("busybox")
     .with_command([httpd...]).with_exposed_ports(80).waiting_for(HttpWaitStrategy(80,
     "/passwd")) as c: yield c`` (its own HTTP wait: GET through the published port until 200,
     tried at once, then every ``TC_POOLING_INTERVAL``, 1 s by default, kept), the test calling
     ``get_container_host_ip()`` and ``get_exposed_port(80)``. Its Ryuk reaper container
     cannot be pulled here, so it runs with ``TESTCONTAINERS_RYUK_DISABLED=true``: only the
     fixture's ``with`` removes each container (as it does anyway when nothing crashes).

   Each tool's per-test cost is computed like ours (against its own no-container session, which
   imports the same modules), p50 over its runs, and printed beside ours with the ratios
   "tool / minidock" of wall and CPU time. Their CPU time adds to pytest's what the docker side
   spent meanwhile: dockerd and all it starts (containerd, shims, runc, docker-proxy) are moved
   into a cpuacct cgroup of their own, read with the containers' (``/docker``). A failing other
   tool is reported and dropped, never failing part 1. Without ``--with-docker`` one line says
   how to get the side by side. Reported elsewhere (not measured here, printed either way):
   pytest-docker-tools' README ~5.6 s per container, testcontainers users ~1.2 s.
2. ``--pairs`` times: one test using a session-scoped container with a cached image, against
   one test without it: the overhead of a session container on an otherwise empty session
   (target ≤ 150 ms at p50). Each pair runs back to back, in alternating order (with
   ``--baseline``, the four sessions of a round in alternating order), and the overhead is the
   median of the pairs' differences, given with its spread (p25-p75) and a 95% confidence
   interval (distribution-free, from order statistics). On a shared 2-core VM a whole pytest
   run (~0.5-0.8 s, most of it Python and pytest starting, the same in both sessions) varies by
   a few hundred ms from run to run with the machine's speed (its CPU time too, by ~±20%), so
   the wall-time difference is noisy; two steadier views of the same overhead are printed below
   it: from the conftest's ``pytest_configure`` to the process's end (leaving out the identical
   start-up, the main source of the noise), and from inside the session (the container's
   set-up, removal and the wrap-up after the last test, to pytest's last clean-up). It also
   says how busy other processes kept the machine meanwhile (from ``/proc/stat``: its busy
   time less the run's own CPU time), gives the overhead over the pairs run on a quiet machine
   (``QUIET``), and judges by those if there are enough of them (a third, at least 10), else
   by all the pairs, with a warning if the machine was busy. The verdict is "reliably" met only
   when the median's confidence interval lies below the target.

The store root, its bridge, its nftables table and the project are removed at the end (with
``--with-docker``: also dockerd's temp dirs, its cgroup, and docker0 if dockerd made it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._plugin_others import HOW_TO, DockerSide, Tool, installed
from benchmarks._roots import remove_work
from benchmarks._stats import Timing
from benchmarks.bench_runtime import commit, load, make_store

TARGET_PER_TEST_MS = 50.0
TARGET_SESSION_MS = 150.0
QUIET = 0.15
"""Cores other processes may keep busy during a run of part 2 for it to count as quiet."""
REPORTED_S = {"pytest-docker-tools (its README)": 5.6, "testcontainers (users' reports)": 1.2}
"""Seconds per function-scoped container reported for other tools (not measured here)."""
HTTPD = '["httpd", "-f", "-p", "80", "-h", "/etc"]'
CHILD_ENV: dict[str, str] = {}

CONFTEST = f"""
from pytest_minidock import container

web = container("busybox", command={HTTPD}, ports=[80], scope="{{scope}}")
"""
PHASE_HOOKS = """
import json, os, time

import pytest

PHASES = {"setup": [], "teardown": [], "last_teardown": [], "end": []}
END = {}

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
    PHASES["configured"] = time.monotonic()  # (the parent's clock too)
    # clean-ups run last-added first: a conftest's pytest_configure runs before the plugins',
    # so this runs after theirs, the end of the session the plugin waits for included
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
    {body}
"""
ONE = """
def test_one({fixture}):
    pass
"""
BODY = "host, port = web.addr(80)"
"""A test's body in part 1: it gets the published address, as a test of a web server would."""
_SUMMARY = re.compile(r"p50 start (\d+) ms, p50 ready (\d+) ms")


def project(
    base: Path, name: str, scope: str, tests: int, containers: bool, *, tool: Tool | None = None
) -> Path:
    """A test project: a conftest with the ``web`` fixture (ours, or ``tool``'s) and ``tests``
    tests (using it or not)."""
    path = base / name
    path.mkdir()
    (path / "pytest.ini").write_text("[pytest]\n")
    fixture = CONFTEST.format(scope=scope) if tool is None else tool.conftest.format(httpd=HTTPD)
    (path / "conftest.py").write_text(fixture + PHASE_HOOKS)
    if tests > 1:
        body = (BODY if tool is None else tool.body) if containers else "pass"
        text = MANY.format(tests=tests, fixture="web" if containers else "request", body=body)
    else:
        text = ONE.format(fixture="web" if containers else "request")
    (path / "test_bench.py").write_text(text)
    return path


class Session:
    """One pytest subprocess run over a project: wall time and what it printed."""

    def __init__(
        self,
        path: Path,
        root: Path,
        tests: int,
        pythonpath: str = "",
        *,
        tool: Tool | None = None,
        side: DockerSide | None = None,
    ) -> None:
        self.path = path
        self.root = root
        self.tests = tests
        self.pythonpath = pythonpath
        """A checkout to run instead of this one (``--baseline``)."""
        self.tool = tool
        """Another tool's session (on ``side``'s dockerd), or ours (``None``)."""
        self.side = side
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.daemon_cpus: list[float] = []
        """Of ``cpus``, the docker side's (dockerd & co., the containers); 0 for ours."""
        self.setups: list[float] = []
        self.teardowns: list[float] = []
        self.last_teardowns: list[float] = []
        self.ends: list[float] = []
        self.starts: list[float] = []
        self.readies: list[float] = []
        self.afters: list[float] = []
        """Seconds from the conftest's ``pytest_configure`` to the process's end."""
        self.others: list[float] = []
        """The cores that other processes kept busy meanwhile (the machine's busy time less
        the run's own CPU time, over its wall time)."""

    def run(self, record: bool) -> None:
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        argv += ["-p", "no:hypothesispytest"]
        # each tool's sessions load only its own plugin (pytest-docker-tools' would import the
        # docker SDK into ours: ~150 ms more at every start)
        for plugin in self.tool.plugins if self.tool else ("no:docker_tools",):
            argv += ["-p", plugin]
        if self.tool is None:
            argv.append(f"--minidock-root={self.root}")
        argv.append(str(self.path))
        phases = self.path / "phases.json"
        env = {**CHILD_ENV, "BENCH_PHASES": str(phases)}
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        if self.side is not None:
            env.update(self.side.env)
        # (a hung docker session must not hang the benchmark: 30 s per container at worst)
        timeout = 120 + 30 * self.tests if self.side else None
        before = _children_cpu()
        daemons = self.side.cpu.seconds() if self.side else 0.0
        busy = _machine_busy()
        t0 = time.perf_counter()
        try:
            done = subprocess.run(
                argv,
                check=False,
                cwd=self.path,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"pytest in {self.path} timed out after {timeout} s") from exc
        wall = time.perf_counter() - t0
        ended = time.monotonic()
        cpu = _children_cpu() - before
        if self.side is not None:  # what dockerd, containerd, the shims and containers spent
            daemons = self.side.cpu.seconds() - daemons
            cpu += daemons
        others = max(_machine_busy() - busy - cpu, 0.0) / wall
        if done.returncode != 0 or f"{self.tests} passed" not in done.stdout:
            raise RuntimeError(f"pytest failed in {self.path}:\n{done.stdout}\n{done.stderr}")
        if not record:
            return
        self.walls.append(wall)
        self.cpus.append(cpu)
        self.daemon_cpus.append(daemons)
        self.others.append(others)
        times = json.loads(phases.read_text())
        self.afters.append(ended - times["configured"])
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


_TICK = 1 / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """Seconds of CPU time the whole machine has spent busy (not idle nor waiting on I/O)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) * _TICK


def leftovers(root: Path) -> list[str]:
    from pytest_minidock.api import Engine

    return [r.name for r in Engine(root).runtime.state.all()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tests", type=int, default=100)
    parser.add_argument("--part", type=int, choices=(1, 2), default=None, help="only this part")
    # (100: the pairs' differences spread over ~100 ms, so 40 pairs leave the median's 95%
    # interval ~75 ms wide, too wide to tell 120 ms from 150; 100 make it ~45 ms)
    parser.add_argument("--pairs", type=int, default=100, help="part 2: paired runs (100)")
    parser.add_argument("--baseline", type=Path, default=None, help="part 2 for this checkout too")
    parser.add_argument(
        "--with-docker",
        action="store_true",
        help="part 1 also with pytest-docker-tools and testcontainers on a private dockerd",
    )
    parser.add_argument(
        "--runs-others",
        type=int,
        default=3,
        help="part 1 with --with-docker: runs of each other tool (3; each takes minutes)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_plugin needs root (namespaces, mounts, networks)")

    work = Path(tempfile.mkdtemp(prefix="minidock-bench-plugin-"))
    CHILD_ENV.update(os.environ)
    CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    n = args.tests
    sessions: dict[str, Session] = {}
    one: list[Session] = []
    side: DockerSide | None = None
    side_notes: list[str] = []
    cleanup: list[str] = []
    failed: dict[str, str] = {}
    try:
        root, tar = make_store(work)
        tools: list[Tool] = []
        if args.part in (None, 1):
            sessions["many"] = Session(project(work, "many", "function", n, True), root, n)
            sessions["many-empty"] = Session(
                project(work, "many-empty", "function", n, False), root, n
            )
            if args.with_docker:
                tools, side_notes = installed()
                if tools:
                    side, note = DockerSide.start(work, tar)
                    side_notes.append(note)
                    if side is None:
                        tools = []
            for tool in tools:
                for key, tests, containers in (
                    (tool.name, n, True),
                    (f"{tool.name}-empty", n, False),
                    (f"{tool.name}-warm-up", min(n, 3), True),
                ):
                    path = project(work, key, "function", tests, containers, tool=tool)
                    sessions[key] = Session(path, root, tests, tool=tool, side=side)
        if args.part in (None, 2):
            sessions["one"] = Session(project(work, "one", "session", 1, True), root, 1)
            sessions["one-empty"] = Session(
                project(work, "one-empty", "session", 1, False), root, 1
            )
            if args.baseline is not None:
                base = str(args.baseline.resolve())
                sessions["one-base"] = Session(sessions["one"].path, root, 1, base)
                sessions["one-empty-base"] = Session(sessions["one-empty"].path, root, 1, base)
            one = [s for k, s in sessions.items() if k.startswith("one")]
        others = f", the others {args.runs_others} runs each" if tools else ""
        print(
            f"store: {root}   part 1: {args.runs} runs{others}, {n} tests   part 2: "
            f"{args.pairs} pairs   (+1 warm-up each)   cores: {os.cpu_count()}   "
            f"commit: {commit()}   load: {load()}"
        )
        try:
            if args.part in (None, 1):
                _run_many(sessions, tools, args.runs, args.runs_others, failed)
        finally:
            if side is not None:
                cleanup += side.stop()
        for i in range(args.pairs + 1 if one else 0):
            # alternating order: a pair's two sessions run back to back, each first half
            # of the time, so a drift of the machine's speed weighs on both alike
            for session in one if i % 2 else one[::-1]:
                session.run(record=i > 0)
        left = leftovers(root)
    finally:
        if side is not None:  # (stopped after part 1 already, unless that failed first)
            cleanup += side.stop()
        remove_work(work)

    if args.part in (None, 1):
        ours = _report_many(sessions["many"], sessions["many-empty"], n)
        if args.with_docker:
            _report_others(sessions, tools, n, ours, notes=side_notes, failed=failed)
            for note in cleanup:
                print(f"   clean-up: {note}")
        else:
            print(HOW_TO)
    if args.part in (None, 2):
        mine = _report_one(sessions["one"], sessions["one-empty"])
        if args.baseline is not None:
            print(f"\n   the same for the baseline {args.baseline}")
            theirs = _report_one(sessions["one-base"], sessions["one-empty-base"])
            print(f"\n   overhead p50: {mine * 1000:.0f} ms, baseline {theirs * 1000:.0f} ms")
            a, b = sessions["one"], sessions["one-empty"]
            c, d = sessions["one-base"], sessions["one-empty-base"]
            for what, x, y, z, w in (
                ("wall", a.walls, b.walls, c.walls, d.walls),
                ("from pytest_configure", a.afters, b.afters, c.afters, d.afters),
            ):
                rounds = _pairs(_pairs(x, y), _pairs(z, w))
                print(_spread(f"   this - baseline, round by round ({what})", rounds))
    if left:
        print(f"!! containers left in the store after the runs: {', '.join(left)}")
    print(f"load average at the end: {load()}")


def _run_many(
    sessions: dict[str, Session],
    tools: list[Tool],
    runs: int,
    runs_others: int,
    failed: dict[str, str],
) -> None:
    """Part 1's rounds: ours (with and without containers) ``runs`` times, each other tool's
    pair in the first ``runs_others`` rounds beside them, after one warm-up round (the others
    warm up on a 3-test project). A round's sessions run in alternating order, so a drift of
    the machine's speed weighs on all alike. A failing other tool is dropped (``failed``: why);
    ours failing fails the benchmark."""
    ours = [sessions["many"], sessions["many-empty"]]
    for i in range(max(runs, runs_others if tools else 0) + 1):
        batch = list(ours) if i <= runs else []
        for tool in tools:
            if tool.name in failed or (i > runs_others):
                continue
            if i == 0:
                batch.append(sessions[f"{tool.name}-warm-up"])
            else:
                batch += [sessions[tool.name], sessions[f"{tool.name}-empty"]]
        for session in batch if i % 2 else batch[::-1]:
            tool = session.tool
            if tool is None:
                session.run(record=i > 0)
                continue
            if tool.name in failed:
                continue
            t0 = time.perf_counter()
            try:
                session.run(record=i > 0)
            except RuntimeError as exc:
                failed[tool.name] = str(exc)
                print(f"!! {tool.name}: {str(exc)[-2000:]}", file=sys.stderr)
                continue
            print(
                f"  round {i}: {session.path.name}, {session.tests} tests: "
                f"{time.perf_counter() - t0:.1f} s   load {load()}",
                file=sys.stderr,
                flush=True,
            )


def _per_test(many: Session, empty: Session, n: int) -> tuple[Timing, Timing]:
    """Per-test wall and CPU cost: each run's difference from its round's empty session / n."""
    walls = tuple((a - b) / n for a, b in zip(many.walls, empty.walls, strict=False))
    cpus = tuple((a - b) / n for a, b in zip(many.cpus, empty.cpus, strict=False))
    return Timing("per test (difference / tests)", walls), Timing("  CPU per test", cpus)


def _report_many(many: Session, empty: Session, n: int) -> tuple[Timing, Timing]:
    """Print part 1 for us; the per-test wall and CPU cost."""
    print(f"\n1. {n} tests, each with its own function-scoped busybox httpd (published port)")
    print(Timing(f"session, {n} containers", tuple(many.walls)).line("s"))
    print(Timing(f"session, {n} tests, no containers", tuple(empty.walls)).line("s"))
    cost, cpu = _per_test(many, empty, n)
    print(cost.line())
    print(Timing("  CPU per test (difference / tests)", cpu.samples).line())
    print(Timing("  a test's setup (start + wait)", tuple(many.setups)).line())
    print(Timing("  a test's teardown (removal)", tuple(many.teardowns)).line())
    if many.starts:
        print(Timing("  summary p50 start (create+start)", tuple(many.starts)).line())
        print(Timing("  summary p50 ready (the wait)", tuple(many.readies)).line())
    busy = Timing("", tuple(many.others + empty.others))
    print(f"  other processes kept p50 {busy.median:.2f} cores busy during these runs")
    for who, seconds in REPORTED_S.items():
        print(
            f"  reported elsewhere, not measured here: {who} ~{seconds:.1f} s per container "
            f"= {seconds / cost.median:.0f}x ours"
        )
    verdict = "met" if cost.median * 1000 <= TARGET_PER_TEST_MS else "NOT met"
    print(f"target: per test <= {TARGET_PER_TEST_MS:.0f} ms at p50: {verdict}")
    return cost, cpu


def _report_others(
    sessions: dict[str, Session],
    tools: list[Tool],
    n: int,
    ours: tuple[Timing, Timing],
    *,
    notes: list[str],
    failed: dict[str, str],
) -> None:
    """Print part 1 for the other tools, and the ratios to ours."""
    print(f"\n1b. the same {n} tests with pytest-docker-tools and testcontainers (--with-docker)")
    for note in notes:
        print(f"   {note}")
    if not tools:
        print(f"   nothing measured: {HOW_TO}")
        return
    print(
        "   CPU per test of these: pytest's own + dockerd, containerd, the shims, runc and "
        "docker-proxy (a cgroup of their own) + the containers' cgroups"
    )
    rows: list[tuple[str, Timing, Timing]] = [("minidock", *ours)]
    for tool in tools:
        many, empty = sessions[tool.name], sessions[f"{tool.name}-empty"]
        print(f"\n   {tool.name}: fixture `web` as its docs show; wait: {tool.wait}")
        if tool.name in failed:
            print(f"   !! failed: {failed[tool.name].splitlines()[0]} (output above, on stderr)")
        if not many.walls or not empty.walls:
            continue
        print(Timing(f"session, {n} containers", tuple(many.walls)).line("s"))
        print(Timing(f"session, {n} tests, no containers", tuple(empty.walls)).line("s"))
        cost, cpu = _per_test(many, empty, n)
        print(cost.line())
        print(Timing("  CPU per test (difference / tests)", cpu.samples).line())
        docker = zip(many.daemon_cpus, empty.daemon_cpus, strict=False)
        print(Timing("    of it the docker side's", tuple((a - b) / n for a, b in docker)).line())
        print(Timing("  a test's setup (start + wait)", tuple(many.setups)).line())
        print(Timing("  a test's teardown (removal)", tuple(many.teardowns)).line())
        busy = Timing("", tuple(many.others + empty.others))
        print(f"  other processes kept p50 {busy.median:.2f} cores busy during these runs")
        rows.append((tool.name, cost, cpu))
    print("\n   side by side, per test (p50 over runs):")
    for name, cost, cpu in rows:
        print(
            f"   {name:<20} wall {cost.median * 1000:8.1f} ms   CPU {cpu.median * 1000:8.1f} ms"
            f"   runs {len(cost.samples)}"
        )
    base_cost, base_cpu = ours
    for name, cost, cpu in rows[1:]:
        print(
            f"   {name} / minidock: {cost.median / base_cost.median:.1f}x the wall time, "
            f"{cpu.median / base_cpu.median:.1f}x the CPU time"
        )


def _median_ci(samples: list[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median: the order statistics whose
    ranks a binomial(n, 1/2) puts 2.5% below and above."""
    ordered = sorted(samples)
    n = len(ordered)
    below, j = 0.0, 0
    while j < n and below + math.comb(n, j) / 2**n <= 0.025:
        below += math.comb(n, j) / 2**n
        j += 1
    j = max(j - 1, 0)  # the largest rank j with P(X < j + 1) <= 2.5%: ordered[j], 0-based
    return ordered[j], ordered[n - 1 - j]


def _spread(name: str, samples: list[float]) -> str:
    """``name``: p50, p25-p75 and the median's 95% confidence interval, in ms."""
    timing = Timing(name, tuple(samples))
    low, high = _median_ci(samples)
    return (
        f"{name:<36} p50 {timing.median * 1000:7.1f}ms   p25-p75 {timing.pct(25) * 1000:6.1f}"
        f"-{timing.pct(75) * 1000:<6.1f}ms   95% CI of p50 {low * 1000:6.1f}-{high * 1000:<6.1f}ms"
        f"   n={len(samples)}"
    )


def _pairs(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _report_one(one: Session, none: Session) -> float:
    """Print part 2; the median overhead in seconds."""
    print("\n2. one session container (cached image) on an otherwise empty session")
    print(Timing("session, 1 test + session container", tuple(one.walls)).line())
    print(Timing("session, 1 test, no container", tuple(none.walls)).line())
    print("   the overhead, pair by pair (the first session minus the second):")
    walls = _pairs(one.walls, none.walls)
    print(_spread("overhead: wall-time difference", walls))
    print(_spread("  CPU (pytest and what it reaped)", _pairs(one.cpus, none.cpus)))
    print(_spread("  from pytest_configure to the end", _pairs(one.afters, none.afters)))
    # Seen from inside the session, run by run: the test's set-up (the container's start and
    # wait), the last teardown and the wrap-up after it (the removal the plugin waits for as
    # pytest ends), each minus the same phase of the empty session.
    inside = [
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
    ]
    if inside:
        print(_spread("  inside: set-up + teardown + wrap-up", inside))
        print(Timing("    the test's set-up (start + wait)", tuple(one.setups)).line())
        print(Timing("    the last teardown", tuple(one.last_teardowns)).line())
        print(Timing("    wrap-up to pytest's last clean-up", tuple(one.ends)).line())
        print(Timing("    (the same, no container)", tuple(none.ends)).line())
    others = Timing("", tuple(one.others + none.others))
    print(
        f"   other processes kept p50 {others.median:.2f} cores busy during these runs "
        f"(p90 {others.pct(90):.2f}, of {os.cpu_count()})"
    )
    quiet = [
        i
        for i, (a, b) in enumerate(zip(one.others, none.others, strict=True))
        if max(a, b) <= QUIET
    ]
    judged = walls
    if quiet:
        print(
            f"   {len(quiet)} of {len(walls)} pairs ran while the others kept <= {QUIET} cores "
            "busy (in both sessions):"
        )
        print(_spread("overhead on a quiet machine", [walls[i] for i in quiet]))
        print(
            _spread(
                "  from pytest_configure to the end",
                [one.afters[i] - none.afters[i] for i in quiet],
            )
        )
    if len(quiet) >= max(10, len(walls) // 3):
        judged = [walls[i] for i in quiet]
    elif others.median > QUIET:
        print("   !! a busy machine: the wall times carry its load, rerun when it is quiet")
    median = Timing("", tuple(judged)).median
    low, high = _median_ci(judged)
    verdict = "met" if median * 1000 <= TARGET_SESSION_MS else "NOT met"
    sure = "reliably" if high * 1000 <= TARGET_SESSION_MS else "not reliably"
    if median * 1000 > TARGET_SESSION_MS:
        sure = "reliably" if low * 1000 > TARGET_SESSION_MS else "not reliably"
    print(
        f"target: overhead <= {TARGET_SESSION_MS:.0f} ms at p50: {verdict}, {sure} "
        f"(p50 {median * 1000:.0f} ms, 95% CI {low * 1000:.0f}-{high * 1000:.0f} ms, "
        f"{'the quiet' if judged is not walls else 'all'} {len(judged)} pairs)"
    )
    return median


if __name__ == "__main__":
    main()
