"""Dockerfile builds: cold, fully cached and after a COPY change; library, CLI, docker and podman.

Run (as root): ``.venv/bin/python -m benchmarks.bench_build [--runs 10] [--files 10000]
[--with-docker] [--baseline DIR]``. Measures, in one run, the 6-step Dockerfile of issue 5
(``FROM busybox``, ``WORKDIR``, ``COPY``, ``RUN``, ``ENV``, ``CMD``) on a store holding busybox:

1. ``Engine.build`` in-process: cold (``no_cache``: every step runs, the ``RUN`` in a
   container), fully cached, and after editing the COPYed file (which must re-run only the steps
   from that ``COPY`` on: that is checked, not assumed);
2. ``minidock build -q`` as a whole process, the same three (the rebuild after a COPY change
   checked too, from ``--progress plain``), each with its CPU time (user + sys of the command
   and its ``RUN`` container: steadier than wall time on a busy machine), and the fully cached
   one once more without the build memo (``MINIDOCK_BUILD_MEMO=0``: parse, plan and look every
   step up). With ``--baseline DIR`` (another checkout, e.g. ``git archive HEAD | tar -x -C
   DIR``) its ``minidock build`` runs too, round by round in alternating order with this one's
   (its own context and tag, the same store), and the differences are given round by round:
   a drift of the machine's speed weighs on both alike;
3. ``docker build`` (BuildKit; a running dockerd, or ``--with-docker`` for a private one) and
   ``podman build`` (private ``--root``), the same three, when they are there;
4. hashing a context of ``--files`` small files: files/s with no stat cache, then with it; a
   ``COPY . /ctx/`` build of it, then unchanged again (in-process, then from a fresh engine
   reading the stat cache from the store, then as whole ``minidock build`` processes, with and
   without the memo), each of which must reuse every file digest.

Every timing is printed as p50 / p90 / min over ``--runs`` runs (after warm-ups). Ratios are
"times as long as ours" (their p50 / our p50). Targets (issue 5): fully cached rebuild <= 10 ms
in-process and <= 60 ms as a whole process; cold faster than BuildKit's 218 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._roots import remove_work
from benchmarks._stats import Timing, measure
from benchmarks.bench_runtime import (
    CHILD_ENV,
    WARMUPS,
    Other,
    PrivateDockerd,
    find_docker,
    find_podman,
    guarded,
    load,
    make_store,
    run_quiet,
    section,
    umount_under,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from pytest_minidock.api import Engine

TARGET_CACHED_LIB_MS = 10.0
TARGET_CACHED_CLI_MS = 60.0
BUILDKIT_COLD_MS = 218.0
DOCKERFILE = """\
FROM busybox
WORKDIR /app
COPY app.txt .
RUN cat app.txt > copy.txt
ENV MODE=prod
CMD ["cat", "copy.txt"]
"""


def make_context(work: Path) -> Path:
    ctx = work / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "app.txt").write_text("hello\n")
    return ctx


def editor(ctx: Path) -> Callable[[], None]:
    """Each call gives the COPYed file content it never had (else the cache would know it)."""

    def edit() -> None:
        (ctx / "app.txt").write_text(f"hello {time.time_ns()}\n")

    return edit


# -- 1. library ----------------------------------------------------------------------------------
def bench_library(engine: Engine, ctx: Path, runs: int) -> list[Timing]:
    def build(no_cache: bool = False) -> None:
        engine.build(ctx, tags=["bench:1"], no_cache=no_cache)

    edit = editor(ctx)
    for _ in range(WARMUPS):
        build(no_cache=True)
    cold = measure("library: cold (--no-cache)", lambda: build(no_cache=True), runs)
    build()
    cached = measure("library: fully cached", build, runs)
    changed = measure("library: after a COPY change", build, runs, setup=edit)
    edit()
    result = engine.build(ctx, tags=["bench:1"])
    ran = [s.name.split("] ", 1)[1] for s in result.steps if not s.cached]
    expected = [
        "COPY app.txt .",
        "RUN cat app.txt > copy.txt",
        "ENV MODE=prod",
        'CMD ["cat", "copy.txt"]',
    ]
    if ran != expected:
        raise SystemExit(f"!! after a COPY change these steps ran: {ran}, expected {expected}")
    print(f"after a COPY change, ran only: {', '.join(ran)}")
    return [cold, cached, changed]


# -- 2./3. whole processes -----------------------------------------------------------------------
def run_env(argv: list[str], env: dict[str, str], timeout: float = 300) -> str:
    """Run ``argv`` with ``env``; its stderr (raises on failure)."""
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {' | '.join(err[-3:])}")
    return proc.stderr.decode(errors="replace")


def steps_run(plain: str) -> list[str]:
    """The steps a ``--progress plain`` build ran (not ``CACHED``), by their instruction."""
    names: dict[str, str] = {}
    ran: list[str] = []
    for line in plain.splitlines():
        number, _, rest = line.partition(" ")
        if rest.startswith("[") and "] " in rest:
            names[number] = rest.split("] ", 1)[1]
        elif rest.startswith("DONE") and number in names:
            ran.append(names[number])
    return ran


class ChildCpu:
    """CPU time (user + sys) of the commands run through it: each one's, and that of the
    processes it waited for (a ``RUN`` step's container). Steadier than wall time on a machine
    doing other work."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def wrap(self, name: str, fn: Callable[[], object]) -> Callable[[], None]:
        import resource

        samples = self.samples.setdefault(name, [])

        def run() -> None:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            fn()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            samples.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)

        return run

    def timing(self, name: str) -> Timing:
        return Timing(f"  cpu (user+sys) of {name.split(': ', 1)[1]}", tuple(self.samples[name]))


def bench_commands(
    name: str,
    build: list[str],
    ctx: Path,
    runs: int,
    no_cache: list[str],
    *,
    cpu: ChildCpu | None = None,
) -> list[Timing]:
    """``build`` + ``[--no-cache]`` + ``ctx``: cold, cached, after a COPY change (with ``cpu``,
    the CPU time of each run is kept there too)."""
    edit = editor(ctx)
    cold_cmd = [*build, *no_cache, str(ctx)]
    warm_cmd = [*build, str(ctx)]

    def timed(label: str, cmd: list[str]) -> Callable[[], None]:
        def run() -> None:
            run_quiet(cmd, 300)

        return run if cpu is None else cpu.wrap(label, run)

    for _ in range(WARMUPS):
        run_quiet(cold_cmd, timeout=300)
    label = f"{name}: cold (--no-cache)"
    cold = measure(label, timed(label, cold_cmd), runs)
    run_quiet(warm_cmd, timeout=300)
    label = f"{name}: fully cached"
    cached = measure(label, timed(label, warm_cmd), runs)
    label = f"{name}: after a COPY change"
    changed = measure(label, timed(label, warm_cmd), runs, setup=edit)
    return [cold, cached, changed]


class Checkout:
    """A checkout whose ``minidock build`` section 2 times: its environment (``PYTHONPATH``),
    its own build context and tag (two checkouts' images differ: one would untag the other's,
    and its memo with it), and the CPU time of its runs."""

    def __init__(self, name: str, env: dict[str, str], ctx: Path, tag: str) -> None:
        self.name = name
        self.env = env
        self.ctx = ctx
        self.tag = tag
        self.cpu = ChildCpu()

    def command(self, build: list[str], *extra: str) -> Callable[[], None]:
        argv = [*build, "-t", self.tag, *extra, str(self.ctx)]

        def run() -> None:
            run_env(argv, self.env)

        return run


def bench_checkouts(
    checkouts: list[Checkout], build: list[str], runs: int
) -> dict[str, list[Timing]]:
    """Cold, fully cached and after a COPY change, for each checkout: each round runs every
    checkout once, in alternating order. The checkout's name -> its three timings."""
    cases = (
        ("cold (--no-cache)", ("--no-cache",), False),
        ("fully cached", (), False),
        ("after a COPY change", (), True),
    )
    walls: dict[tuple[str, str], list[float]] = {}
    for case, extra, edit in cases:
        runners = []
        for c in checkouts:
            label = f"{c.name}: {case}"
            runners.append((c, label, c.cpu.wrap(label, c.command(build, *extra))))
            walls[c.name, case] = []
            if case == "fully cached":
                c.command(build)()  # (the memo of this build)
            else:
                for _ in range(WARMUPS):
                    c.command(build, *extra)()
        for i in range(runs):
            for c, _label, run in runners if i % 2 == 0 else runners[::-1]:
                if edit:
                    editor(c.ctx)()
                t0 = time.perf_counter()
                run()
                walls[c.name, case].append(time.perf_counter() - t0)
    return {
        c.name: [Timing(f"{c.name}: {case}", tuple(walls[c.name, case])) for case, _, _ in cases]
        for c in checkouts
    }


def paired(name: str, a: Timing | list[float], b: Timing | list[float]) -> str:
    """The round-by-round differences ``a - b``: their median and quartiles, in ms."""
    xs = a.samples if isinstance(a, Timing) else a
    ys = b.samples if isinstance(b, Timing) else b
    diffs = Timing(name, tuple(x - y for x, y in zip(xs, ys, strict=True)))
    return (
        f"{name:<44} p50 {diffs.median * 1000:+7.1f}ms   p25..p75 "
        f"{diffs.pct(25) * 1000:+6.1f}..{diffs.pct(75) * 1000:+.1f}ms   n={len(xs)}"
    )


def bench_other(other: Other, work: Path, runs: int) -> list[Timing]:
    ctx = work / f"ctx-{other.name}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "app.txt").write_text("hello\n")
    build = other.cmd("build", "-q", "--network", "none", "-t", "bench:1")
    if other.name == "podman":
        build += ["--layers"]
    return bench_commands(f"{other.name} build", build, ctx, runs, ["--no-cache"])


# -- 4. context hashing ------------------------------------------------------------------------
def rate(files: int, t: Timing) -> str:
    """Files per second at the p50 and at the p90 time."""
    return f"{files / t.median:9.0f} files/s (p90: {files / t.pct(90):.0f})"


def bench_context(engine: Engine, work: Path, files: int, runs: int, minidock: str) -> None:
    from pytest_minidock.build.context import BuildContext, StatCache
    from pytest_minidock.dockerfile.instructions import Location

    ctx = work / "bigctx"
    for i in range(files):
        d = ctx / f"d{i // 500:03d}"
        if i % 500 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}.txt").write_text(f"file {i}\n" * 8)
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY . /ctx/\n")
    here = Location("Dockerfile", 2, 2, "COPY . /ctx/")
    subprocess.run(["sync"], check=True)
    time.sleep(0.05)  # clear of the clock tick the files were written in (no racy entries)
    hashed = measure(
        f"hash {files} files, no stat cache",
        lambda: BuildContext(ctx, stat_cache=StatCache()).sources(["."], here),
        runs,
    )
    cache = StatCache()
    BuildContext(ctx, stat_cache=cache).sources(["."], here)
    reused = measure(
        f"hash {files} files, with stat cache",
        lambda: BuildContext(ctx, stat_cache=cache).sources(["."], here),
        runs,
    )
    print(f"{hashed.line()}  {rate(files, hashed)}  (file contents in the page cache)")
    print(f"{reused.line()}  {rate(files, reused)}  (reused {cache.reused // runs} per run)")

    t0 = time.perf_counter()
    engine.build(ctx, tags=["bigctx:1"])
    cold = time.perf_counter() - t0
    stats = engine.builder._stat_caches[ctx.resolve()]
    print(
        f"build COPY . of {files} files, first: {cold * 1000:.0f} ms (hashed {stats.hashed}, "
        f"reused {stats.reused})"
    )
    before = (stats.hashed, stats.reused)
    again = measure(
        "  unchanged again, same engine", lambda: engine.build(ctx, tags=["bigctx:1"]), runs
    )
    result = engine.build(ctx, tags=["bigctx:1"])
    hashed_n, reused_n = stats.hashed - before[0], stats.reused - before[1]
    print(
        f"{again.line()}  all cached: {all(s.cached for s in result.steps)}; over "
        f"{runs + 1} builds hashed {hashed_n}, reused {reused_n}"
    )
    engines: list[Engine] = []

    def fresh_build() -> None:
        fresh = type(engine)(engine.root)  # a new process's view: the stat cache from disk
        fresh.build(ctx, tags=["bigctx:1"])
        engines.append(fresh)

    disk = measure("  unchanged, fresh engine", fresh_build, runs)
    counts = [e.builder._stat_caches[ctx.resolve()] for e in engines]
    print(
        f"{disk.line()}  stat cache read from the store: hashed "
        f"{sum(c.hashed for c in counts)}, reused {sum(c.reused for c in counts)} in {runs} builds"
    )
    cmd = [minidock, "--root", str(engine.root), "build", "-q", "-t", "bigctx:1", str(ctx)]
    run_quiet(cmd, 300)  # writes the memo
    memo = measure("  unchanged, minidock build", lambda: run_quiet(cmd, 300), runs)
    print(f"{memo.line()}  (answered from the memo: {files} lstat calls)")
    plain_env = {**CHILD_ENV, "MINIDOCK_BUILD_MEMO": "0"}
    nomemo = measure("  unchanged, no memo", lambda: run_env(cmd, plain_env), runs)
    print(f"{nomemo.line()}  (MINIDOCK_BUILD_MEMO=0: every digest from the stat cache)")


def ratio_lines(ours: list[Timing], theirs: list[Timing]) -> None:
    for mine, other in zip(ours, theirs, strict=True):
        print(f"{other.name}: {other.median / mine.median:5.2f}x as long as {mine.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="section 2 also for the checkout in this directory, interleaved with this one",
    )
    parser.add_argument(
        "--with-docker",
        action="store_true",
        help="start a private dockerd for the docker rows (stopped again by PID)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_build needs root (RUN steps run in containers)")

    from pytest_minidock.api import Engine

    work = Path(tempfile.mkdtemp(prefix="minidock-bench-build-"))
    private: PrivateDockerd | None = None
    try:
        root, tar = make_store(work)
        engine = Engine(root)
        ctx = make_context(work)
        print(
            f"store: {root}   runs: {args.runs} (+{WARMUPS} warm-ups)   cores: {os.cpu_count()}"
            f"   load: {load()}"
        )
        print("Dockerfile: " + " | ".join(DOCKERFILE.strip().splitlines()))

        section("1. library, in-process: Engine.build (p50 / p90 / min)")
        lib = bench_library(engine, ctx, args.runs)
        for t in lib:
            print(t.line())

        section("2. minidock build -q as a whole process (bytecode cached)")
        CHILD_ENV.update(os.environ)
        CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        minidock = str(Path(sys.executable).parent / "minidock")
        CHILD_ENV["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)  # this checkout
        checkouts = [Checkout("minidock build", dict(CHILD_ENV), work / "ctx-cli", "bench:2")]
        if args.baseline is not None:
            base_env = {**CHILD_ENV, "PYTHONPATH": str(args.baseline.resolve())}
            checkouts.append(Checkout("baseline build", base_env, work / "ctx-base", "bench:3"))
        for c in checkouts:
            shutil.copytree(ctx, c.ctx)
        cli_ctx = checkouts[0].ctx
        cli_cmd = [minidock, "--root", str(root), "build", "-q", "-t", "bench:2"]
        timed = bench_checkouts(
            checkouts, [minidock, "--root", str(root), "build", "-q"], args.runs
        )
        cli = timed["minidock build"]
        cpu = checkouts[0].cpu
        for c in checkouts:
            for t in timed[c.name]:
                print(t.line())
                print(c.cpu.timing(t.name).line())
        if args.baseline is not None:
            print(f"this checkout - the baseline ({args.baseline}), round by round:")
            base = checkouts[1]
            for mine, theirs in zip(cli, timed[base.name], strict=True):
                case = mine.name.split(": ", 1)[1]
                print(paired(f"  {case}: wall", mine, theirs))
                print(
                    paired(
                        f"  {case}: cpu",
                        cpu.samples[mine.name],
                        base.cpu.samples[theirs.name],
                    )
                )
        plain_env = {**CHILD_ENV, "MINIDOCK_BUILD_MEMO": "0"}
        nomemo = measure(
            "minidock build: fully cached, no memo",
            lambda: run_env([*cli_cmd, str(cli_ctx)], plain_env),
            args.runs,
        )
        print(f"{nomemo.line()}  (MINIDOCK_BUILD_MEMO=0)")
        editor(cli_ctx)()
        time.sleep(0.05)
        plain_cmd = [minidock, "--root", str(root), "build", "--progress", "plain"]
        plain = run_env([*plain_cmd, "-t", "bench:2", str(cli_ctx)], CHILD_ENV)
        ran = steps_run(plain)
        expected = ["COPY app.txt .", "RUN cat app.txt > copy.txt", "ENV MODE=prod"]
        expected.append('CMD ["cat", "copy.txt"]')
        if ran != expected:
            raise SystemExit(f"!! minidock build after a COPY change ran {ran}, not {expected}")
        print(f"minidock build after a COPY change ran only: {', '.join(ran)}")
        bare = measure(
            "python -c 'import pytest_minidock.build.builder'",
            lambda: run_quiet([sys.executable, "-c", "import pytest_minidock.build.builder"]),
            args.runs,
        )
        print(bare.line())

        section("3. docker and podman")
        others: list[list[Timing]] = []
        docker, private, note = find_docker(args.with_docker, work)
        print(note)
        podman, pnote = find_podman(work, tar)
        print(pnote)
        for other in (docker, podman):
            if other is None:
                continue
            got = guarded(f"{other.name}", lambda o=other: (o.ensure_busybox(tar), o)[1])
            if got is None:
                continue
            timings = guarded(
                f"{other.name} build", lambda o=other: bench_other(o, work, args.runs)
            )
            if timings is None:
                continue
            for t in timings:
                print(t.line())
            others.append(timings)

        section(f"4. context hashing: {args.files} files (p50 / p90 / min)")
        bench_context(engine, work, args.files, args.runs, minidock)

        section("summary (p50)")
        cold, cached, changed = lib
        print(
            f"library: cold {cold.median * 1000:.0f} ms, fully cached "
            f"{cached.median * 1000:.1f} ms (target <= {TARGET_CACHED_LIB_MS:.0f}), after a COPY "
            f"change {changed.median * 1000:.0f} ms; cold / cached = "
            f"{cold.median / cached.median:.0f}x"
        )
        cpu_cold = cpu.timing(cli[0].name).median
        print(
            f"minidock build process: cold {cli[0].median * 1000:.0f} ms (cpu "
            f"{cpu_cold * 1000:.0f} ms; BuildKit: "
            f"{BUILDKIT_COLD_MS:.0f}), fully cached {cli[1].median * 1000:.0f} ms (target <= "
            f"{TARGET_CACHED_CLI_MS:.0f}; {nomemo.median * 1000:.0f} ms without the memo; "
            f"importing the builder alone: {bare.median * 1000:.0f} ms), after a COPY change "
            f"{cli[2].median * 1000:.0f} ms (cpu {cpu.timing(cli[2].name).median * 1000:.0f} ms)"
        )
        for timings in others:
            ratio_lines(cli, timings)
        print(
            "issue 5's reference (whole commands): BuildKit 218 / 70 / 219 ms, classic docker "
            "529 / 55 / 502 ms, podman 700 / 247 / 740 ms"
        )
    finally:
        if private is not None:
            private.stop()
        umount_under(work)
        remove_work(work)


if __name__ == "__main__":
    main()
