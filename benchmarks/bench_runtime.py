"""Container start-up and memory: the library, the ``minidock`` CLI, docker and podman side by side.

Run (as root): ``.venv/bin/python -m benchmarks.bench_runtime [--runs 50] [--containers 20]
[--with-docker] [--only lib|cli]``. Measures, in one run:

1. ``/bin/true`` through the library in-process (``Engine.run`` → ``wait`` → ``remove``), with the
   container's own network namespace (``none``/default: loopback only) and with ``host``;
2. ``minidock run --rm busybox true`` as a whole process, next to bare ``python -c pass``,
   ``python -S -c pass`` and ``python -c "import pytest_minidock.cli"``, and the same ``run``
   under ``python -S`` (without this venv's site and its editable-install finder);
3. memory per extra running container with ``--containers`` ``sleep 1000`` containers: the sum
   of RSS and of PSS of our monitors, the payloads (and this process, whose pages the forked
   monitors share), and the system's ``MemAvailable``, each per container;
4. the same with docker and podman when they are there. docker is used when its client and a
   running dockerd answer (``$DOCKER_HOST`` or the default socket); ``--with-docker`` starts a
   private dockerd instead (own ``--data-root``, socket and exec root under a temp dir, no
   iptables) and stops it by PID afterwards. podman runs with a private ``--root``/``--runroot``.
   Both get a ``busybox`` image imported from the same rootfs tar as ours when they lack one.
   Missing tools are reported as "not installed"; they never make the benchmark fail. Side
   effects on the host: podman's default network (netavark) and dockerd turn on
   ``net.ipv4.ip_forward`` and netavark leaves its (empty) ``NETAVARK*`` iptables chains; a
   ``docker0`` bridge made by our dockerd is deleted again.

MemAvailable is system-wide: on a shared machine other processes move it by tens of MB, so read
(c) together with the "after clean-up" drift it prints.

Ratios in the summary are "times as long/large as ours" (docker p50 / our p50).

``--rootless`` (as root) measures instead, as root and as a throw-away ordinary user with a
subordinate id range (``benchmarks._rootless``: same interpreter, same copy of the package,
alternating rounds), the library's start+exit (and + remove) of ``/bin/true`` with
``--network none`` and on the default bridge, and ``minidock run --rm [--network none] busybox
true`` as a whole process, and prints them side by side (p50 / p90 and rootless / root).
``--runs`` then counts the runs per side, split over ``--rounds``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from benchmarks._roots import remove_work
from benchmarks._stats import Timing, measure

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pytest_minidock.api import Engine

T = TypeVar("T")
WARMUPS = 3
CHILD_ENV: dict[str, str] = {}
"""The environment of the measured Python processes (set in ``main``): bytecode cached in a
private ``PYTHONPYCACHEPREFIX`` as an installed package has it, even under
``PYTHONDONTWRITEBYTECODE`` (which would recompile every edited module at each start)."""
TARGET_LIB_MS = 10.0
TARGET_CLI_MS = 60.0
TARGET_CLI_BRIDGE_MS = 150.0
"""Issue 3's target for ``minidock run --rm busybox true`` on the default bridge network."""
TARGET_MEM_MB = 2.0
FLOOR_MODULES = ("json", "signal", "select", "fcntl", "_ctypes")
"""The standard modules a container runtime in Python cannot do without (state files, signal
forwarding, polling, locks, syscalls): imported, with the interpreter's start, they are the
floor of a whole ``run`` command (with a container's start and exit, ``summary``)."""


# -- /proc readers -----------------------------------------------------------------------------
def smaps_kb(pid: int) -> dict[str, int]:
    """``Rss``, ``Pss`` and ``Uss`` (private clean + dirty) of ``pid`` in kB; zeros if gone."""
    out = {"Rss": 0, "Pss": 0, "Uss": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    out[key] = int(rest.split()[0])
                elif key in ("Private_Clean", "Private_Dirty"):
                    out["Uss"] += int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return out


def mem_available_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def settled_mem_available_kb() -> int:
    """MemAvailable after a short pause, the median of 5 reads (other processes move it)."""
    time.sleep(0.3)
    reads = []
    for _ in range(5):
        reads.append(mem_available_kb())
        time.sleep(0.05)
    return sorted(reads)[2]


def parent_pid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pids_named(*names: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm in names:
                out.append(int(entry))
    return out


# -- results -----------------------------------------------------------------------------------
@dataclass
class Memory:
    """Per-container memory of one runtime with ``n`` containers running (kB per container)."""

    who: str
    n: int
    helper: str  # the per-container helper process: our monitor, containerd-shim, conmon
    helper_rss: float = 0.0
    helper_pss: float = 0.0
    helper_uss: float = 0.0
    payload_rss: float = 0.0
    payload_pss: float = 0.0
    rss_increase: float = 0.0  # (sum of RSS after - before) / n, payloads included
    pss_increase: float = 0.0  # (sum of PSS after - before) / n, payloads included
    available_drop: float = 0.0  # (MemAvailable before - after) / n
    available_back: float = 0.0  # MemAvailable after clean-up - before, total (noise indicator)
    notes: list[str] = field(default_factory=list)

    def beyond_payload_pss(self) -> float:
        return self.pss_increase - self.payload_pss

    def lines(self) -> list[str]:
        mb = 1024.0
        return [
            f"{self.who}: {self.n} containers running `sleep 1000`, per container:",
            f"  {self.helper:<22} RSS {self.helper_rss / mb:6.2f} MB  PSS "
            f"{self.helper_pss / mb:6.2f} MB  USS {self.helper_uss / mb:6.2f} MB",
            f"  {'payload (sleep)':<22} RSS {self.payload_rss / mb:6.2f} MB  PSS "
            f"{self.payload_pss / mb:6.2f} MB",
            f"  (a) sum of RSS increase   {self.rss_increase / mb:6.2f} MB   beyond payload "
            f"{(self.rss_increase - self.payload_rss) / mb:6.2f} MB",
            f"  (b) sum of PSS increase   {self.pss_increase / mb:6.2f} MB   beyond payload "
            f"{self.beyond_payload_pss() / mb:6.2f} MB",
            f"  (c) MemAvailable drop     {self.available_drop / mb:6.2f} MB   beyond payload "
            f"{(self.available_drop - self.payload_pss) / mb:6.2f} MB   (after clean-up: "
            f"{self.available_back / mb:+.1f} MB total vs before)",
            *(f"  note: {n}" for n in self.notes),
        ]


def timing_ms(t: Timing | None) -> str:
    return "-" if t is None else f"{t.median * 1000:.1f} / {t.pct(90) * 1000:.1f}"


def ratio(other: float | None, ours: float | None) -> str:
    if other is None or ours is None or ours <= 0:
        return "-"
    return f"{other / ours:.1f}x"


# -- our store ---------------------------------------------------------------------------------
def make_store(work: Path) -> tuple[Path, Path]:
    """A fresh store root holding ``busybox:latest``; returns (root, the rootfs tar)."""
    from pytest_minidock.api import Engine
    from pytest_minidock.image.changes import apply_changes
    from pytest_minidock.image.model import ContainerConfig
    from pytest_minidock.reference import Reference
    from tests.support.rootfs import BUSYBOX_CHANGES, busybox_tar

    tar = busybox_tar(work / "busybox.tar")
    root = work / "root"
    with open(tar, "rb") as f:
        Engine(root).store.import_tarball(
            f,
            [Reference.parse("busybox:latest")],
            source="busybox-static",
            changes=apply_changes(ContainerConfig(), BUSYBOX_CHANGES),
        )
    return root, tar


# -- 1. the library, in-process ----------------------------------------------------------------
def bench_library(engine: Engine, network: str, runs: int) -> tuple[list[Timing], list[str]]:
    """run / run→wait / run→wait→remove of ``/bin/true``; returns the timings and what went wrong
    in runs that reported a non-zero exit code (a wrong code is a bug, not a slow run)."""
    from pytest_minidock.spec import Overrides

    overrides = Overrides(command=("/bin/true",), network=network)
    started_s, exited_s, removed_s = [], [], []
    bad: list[str] = []
    for i in range(WARMUPS + runs):
        t0 = time.perf_counter()
        started = engine.run("busybox", overrides)
        t1 = time.perf_counter()
        code = engine.wait(started.id)
        t2 = time.perf_counter()
        if code != 0:
            state = engine.container(started.id).state
            bad.append(f"exit {code}, status {state.status}, error {state.error!r}")
        engine.remove(started.id)
        t3 = time.perf_counter()
        if i < WARMUPS:
            continue
        started_s.append(t1 - t0)
        exited_s.append(t2 - t0)
        removed_s.append(t3 - t0)
    label = f"lib [{network}]"
    return [
        Timing(f"{label} run (payload exec'd)", tuple(started_s)),
        Timing(f"{label} run→wait (start+exit)", tuple(exited_s)),
        Timing(f"{label} run→wait→remove", tuple(removed_s)),
    ], bad


# -- 2. whole processes ------------------------------------------------------------------------
def run_quiet(argv: Sequence[str], timeout: float = 120) -> None:
    proc = subprocess.run(
        argv,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        env=CHILD_ENV or None,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {' | '.join(err[-3:])}")


def bench_process(name: str, argv: Sequence[str], runs: int) -> Timing:
    for _ in range(WARMUPS):
        run_quiet(argv)
    return measure(name, lambda: run_quiet(argv), runs)


# -- 3. memory ---------------------------------------------------------------------------------
def memory_ours(engine: Engine, n: int) -> Memory:
    from pytest_minidock.runtime import launcher
    from pytest_minidock.spec import Overrides

    me = os.getpid()
    warm = engine.run("busybox", Overrides(command=("true",)))  # the launcher, if used, is up
    engine.wait(warm.id)
    engine.remove(warm.id)
    shared = launcher.shared().pid if engine.runtime.launcher else 0
    gc.collect()
    before_self = smaps_kb(me)
    before_launcher = smaps_kb(shared) if shared else {"Rss": 0, "Pss": 0}
    before_avail = settled_mem_available_kb()
    started = []
    helper = "launcher's share" if shared else "monitor (forked)"
    mem = Memory("minidock (library)", n, helper)
    try:
        for _ in range(n):
            started.append(engine.run("busybox", Overrides(command=("sleep", "1000"))))
        after_avail = settled_mem_available_kb()
        after_self = smaps_kb(me)
        after_launcher = smaps_kb(shared) if shared else {"Rss": 0, "Pss": 0}
        # a monitor process per container, unless the launcher monitors them itself
        monitors = [smaps_kb(s.monitor_pid) for s in started if s.monitor_pid != shared]
        payloads = [smaps_kb(s.pid) for s in started]
    finally:
        for s in started:
            with contextlib.suppress(Exception):
                engine.remove(s.id, force=True)
    mem.available_back = settled_mem_available_kb() - before_avail
    fill(mem, monitors, payloads, before_avail=before_avail, after_avail=after_avail)
    for key in ("Rss", "Pss"):
        grew = (after_launcher[key] - before_launcher[key]) / n
        if key == "Rss":
            mem.rss_increase += grew
            mem.helper_rss += grew if not monitors else 0.0
        else:
            mem.pss_increase += grew
            mem.helper_pss += grew if not monitors else 0.0
    if shared:
        mem.notes.append(
            f"the launcher (pid {shared}) monitors them all: PSS "
            f"{before_launcher['Pss'] / 1024:.1f}"
            f" → {after_launcher['Pss'] / 1024:.1f} MB, {len(monitors)} monitor processes"
        )
    mem.rss_increase += (after_self["Rss"] - before_self["Rss"]) / n
    mem.pss_increase += (after_self["Pss"] - before_self["Pss"]) / n
    mem.notes.append(
        f"this process (the monitors' parent): PSS {before_self['Pss'] / 1024:.1f} → "
        f"{after_self['Pss'] / 1024:.1f} MB, RSS {after_self['Rss'] / 1024:.1f} MB "
        "(its PSS change is counted in (b))"
    )
    return mem


def fill(
    mem: Memory,
    helpers: list[dict[str, int]],
    payloads: list[dict[str, int]],
    *,
    before_avail: int,
    after_avail: int,
    daemons_before: dict[str, int] | None = None,
    daemons_after: dict[str, int] | None = None,
) -> None:
    n = mem.n

    def avg(items: list[dict[str, int]], key: str) -> float:
        return sum(i[key] for i in items) / max(1, len(items))

    mem.helper_rss, mem.helper_pss, mem.helper_uss = (
        avg(helpers, k) for k in ("Rss", "Pss", "Uss")
    )
    mem.payload_rss, mem.payload_pss = avg(payloads, "Rss"), avg(payloads, "Pss")
    mem.rss_increase = (sum(h["Rss"] for h in helpers) + sum(p["Rss"] for p in payloads)) / n
    mem.pss_increase = (sum(h["Pss"] for h in helpers) + sum(p["Pss"] for p in payloads)) / n
    if daemons_before is not None and daemons_after is not None:
        mem.rss_increase += (daemons_after["Rss"] - daemons_before["Rss"]) / n
        mem.pss_increase += (daemons_after["Pss"] - daemons_before["Pss"]) / n
    mem.available_drop = (before_avail - after_avail) / n


# -- 4. docker and podman ----------------------------------------------------------------------
def umount_under(path: Path) -> None:
    """Lazily unmount whatever is still mounted below ``path`` (our own temp dirs only)."""
    prefix = str(path).rstrip("/") + "/"
    points = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL, check=False)


class Other:
    """A docker-compatible CLI (docker or podman) with its fixed global options."""

    def __init__(self, name: str, argv: list[str], run_opts: list[str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.run_opts = run_opts or []
        self.notes: list[str] = []

    def cmd(self, *args: str) -> list[str]:
        return [*self.argv, *args]

    def run_cmd(self, *args: str) -> list[str]:
        return [*self.argv, "run", *self.run_opts, *args]

    def ok(self, *args: str, timeout: float = 60) -> bool:
        try:
            proc = subprocess.run(
                self.cmd(*args), capture_output=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0

    def output(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(
            self.cmd(*args), capture_output=True, timeout=timeout, check=True, text=True
        )
        return proc.stdout

    def run_output(self, *args: str, timeout: float = 120) -> str:
        return self.output("run", *self.run_opts, *args, timeout=timeout)

    def ensure_busybox(self, tar: Path) -> None:
        if not self.ok("image", "inspect", "busybox"):
            self.output("import", str(tar), "busybox", timeout=300)
            self.notes.append(f"imported busybox from {tar.name} (our rootfs tar)")


class PrivateDockerd:
    """A dockerd of our own: temp data-root, exec-root and socket; stopped by its PID."""

    def __init__(self, dockerd: str, work: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mdb-dk-", dir="/tmp"))  # short socket path
        self.sock = f"unix://{self.dir}/docker.sock"
        self.had_docker0 = Path("/sys/class/net/docker0").exists()
        self.log = open(work / "dockerd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                dockerd,
                "--data-root",
                str(self.dir / "data"),
                "--exec-root",
                str(self.dir / "exec"),
                "--pidfile",
                str(self.dir / "docker.pid"),
                "-H",
                self.sock,
                "--iptables=false",
                "--ip6tables=false",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.log_path = work / "dockerd.log"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to our dockerd's PID; it stops its containerd
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        if not self.had_docker0 and Path("/sys/class/net/docker0").exists():
            with contextlib.suppress(OSError):
                subprocess.run(["ip", "link", "del", "docker0"], check=False)
        umount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


def find_docker(with_docker: bool, work: Path) -> tuple[Other | None, PrivateDockerd | None, str]:
    client = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
    if client is None:
        return None, None, "docker: not installed"
    if with_docker:
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.path.exists(dockerd):
            return None, None, "docker: dockerd not installed (apt-get install docker.io)"
        private = PrivateDockerd(dockerd, work)
        docker = Other("docker", [client, "-H", private.sock])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if docker.ok("version", timeout=10):
                return docker, private, f"docker: private dockerd pid {private.proc.pid}"
            if private.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = private.log_path.read_text(errors="replace").strip().splitlines()[-3:]
        private.stop()
        return None, None, "docker: our dockerd did not come up: " + " | ".join(tail)
    docker = Other("docker", [client])
    if docker.ok("version", timeout=15):
        host = os.environ.get("DOCKER_HOST", "the default socket")
        return docker, None, f"docker: running dockerd at {host}"
    return None, None, "docker: not installed (no running dockerd; --with-docker starts one)"


def find_podman(work: Path, tar: Path) -> tuple[Other | None, str]:
    """podman with a private store; probes the options this host needs (crun cannot use a
    hybrid cgroup hierarchy; without CAP_SYS_RESOURCE podman's default rlimits are refused)."""
    podman = shutil.which("podman")
    if podman is None:
        return None, "podman: not installed"
    base = [
        podman,
        "--root",
        str(work / "podman" / "root"),
        "--runroot",
        str(work / "podman" / "run"),
        "--events-backend",
        "file",
    ]
    if not os.path.isdir("/run/systemd/system"):
        base += ["--cgroup-manager", "cgroupfs"]
    probe = Other("podman", base)
    try:
        probe.ensure_busybox(tar)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"podman: cannot import busybox: {exc}"
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    nproc_cap = min(x if x != resource.RLIM_INFINITY else 32768 for x in (*nproc, 32768))
    ulimits = [
        "--ulimit",
        f"nofile={nofile[0]}:{nofile[1]}",
        "--ulimit",
        f"nproc={nproc_cap}:{nproc_cap}",
    ]
    error = ""
    for glob in ([], ["--runtime", "runc"]):
        for run_opts in ([], ulimits):
            candidate = Other("podman", base + glob, run_opts)
            proc = subprocess.run(
                candidate.run_cmd("--rm", "busybox", "true"),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if proc.returncode == 0:
                used = " ".join([*glob, *run_opts]) or "(defaults)"
                candidate.notes = [*probe.notes, f"options: {used}"]
                return candidate, "podman: private --root/--runroot under the temp dir"
            error = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None, f"podman: cannot run a container here: {error}"


def bench_other(other: Other, runs: int) -> list[Timing]:
    out = []
    for net in ([], ["--network", "none"]):
        label = f"{other.name} run --rm{' --network none' if net else ' busybox true'}"
        out.append(bench_process(label, other.run_cmd("--rm", *net, "busybox", "true"), runs))
    return out


def memory_other(
    other: Other, n: int, helper: str, daemons: tuple[str, ...], pid_fmt: str
) -> Memory:
    """``n`` detached ``sleep 1000`` containers: the helper (parent of the payload) and the
    daemons' growth."""

    def daemon_sum() -> dict[str, int]:
        total = {"Rss": 0, "Pss": 0}
        for pid in pids_named(*daemons):
            m = smaps_kb(pid)
            total["Rss"] += m["Rss"]
            total["Pss"] += m["Pss"]
        return total

    mem = Memory(other.name, n, helper)
    d_before = daemon_sum()
    before_avail = settled_mem_available_kb()
    ids = []
    try:
        for _ in range(n):
            ids.append(other.run_output("-d", "busybox", "sleep", "1000").strip())
        after_avail = settled_mem_available_kb()
        d_after = daemon_sum()
        helpers, payloads = [], []
        for cid in ids:
            pid = int(other.output("inspect", "-f", pid_fmt, cid).strip())
            payloads.append(smaps_kb(pid))
            helpers.append(smaps_kb(parent_pid(pid)))
    finally:
        if ids:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                rm = ["rm", "-f", *ids] if other.name == "docker" else ["rm", "-f", "-t", "0", *ids]
                other.output(*rm, timeout=300)
    mem.available_back = settled_mem_available_kb() - before_avail
    fill(
        mem,
        helpers,
        payloads,
        before_avail=before_avail,
        after_avail=after_avail,
        daemons_before=d_before,
        daemons_after=d_after,
    )
    mem.notes.append(
        f"{'+'.join(daemons)} grew by {(d_after['Rss'] - d_before['Rss']) / 1024:.1f} MB RSS "
        f"/ {(d_after['Pss'] - d_before['Pss']) / 1024:.1f} MB PSS in total (counted in (a), (b))"
        if daemons
        else "no daemon"
    )
    return mem


# -- main --------------------------------------------------------------------------------------
def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).parent,
        )
    except OSError:
        return "?"
    return out.stdout.strip() or "?"


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def section(title: str) -> None:
    print(f"\n== {title}")


def guarded(what: str, fn: Callable[[], T]) -> T | None:
    """Run a docker/podman measurement; any failure is printed, never raised."""
    try:
        return fn()
    except Exception as exc:
        print(f"{what}: failed: {exc}")
        return None


def run_cli(root: Path, runs: int, work: Path) -> list[Timing]:
    """Section 2: whole processes (Python alone, the CLI's import, ``minidock run``)."""
    section("2. whole processes (bytecode cached in a private PYTHONPYCACHEPREFIX)")
    CHILD_ENV.update(os.environ)
    CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    py = sys.executable
    minidock = str(Path(py).parent / "minidock")
    md = [minidock, "--root", str(root)]
    # The same CLI without site (no editable-install finder, whose import runs at every
    # start of this venv's Python): what a wheel install would cost, about.
    import site

    import pytest_minidock

    paths = [str(Path(pytest_minidock.__file__).parent.parent), *site.getsitepackages()]
    no_site = [
        py,
        "-S",
        "-c",
        f"import sys; sys.path[:0] = {paths!r}; from pytest_minidock.cli import main; "
        "sys.exit(main())",
        "--root",
        str(root),
    ]
    cli = [
        bench_process("python -c pass", [py, "-c", "pass"], runs),
        bench_process("python -S -c pass (no site)", [py, "-S", "-c", "pass"], runs),
        bench_process(
            "python -c 'import …minidock.cli'",
            [py, "-c", "import pytest_minidock.cli"],
            runs,
        ),
        bench_process("minidock --version", [minidock, "--version"], runs),
        bench_process(
            "minidock run --rm busybox true", [*md, "run", "--rm", "busybox", "true"], runs
        ),
        bench_process(
            "minidock run --rm --network none",
            [*md, "run", "--rm", "--network", "none", "busybox", "true"],
            runs,
        ),
        bench_process(
            "minidock run --rm (python -S)",
            [*no_site, "run", "--rm", "busybox", "true"],
            runs,
        ),
        # The floor of any runtime written in Python: the interpreter and the standard modules
        # a container's start and its state need (JSON state files, signals, polling, locks,
        # syscalls through ctypes), before a line of minidock runs.
        bench_process(
            "python -c 'import json, signal, …'",
            [py, "-c", f"import {', '.join(FLOOR_MODULES)}"],
            runs,
        ),
    ]
    for t in cli:
        print(t.line())
    return cli


# -- rootless beside root --------------------------------------------------------------------------
ROOTLESS_ROWS = (
    ("lib start+exit [none]", "lib [none] run→wait (start+exit)"),
    ("lib start+exit+remove [none]", "lib [none] run→wait→remove"),
    ("lib start+exit [default bridge]", "lib [default] run→wait (start+exit)"),
    ("lib start+exit+remove [default bridge]", "lib [default] run→wait→remove"),
    ("CLI run --rm --network none busybox true", "cli [none]"),
    ("CLI run --rm busybox true (bridge)", "cli [default]"),
)


def rootless_child(work: Path, runs: int) -> None:
    """The measuring part of ``--rootless``, run as root and as the user: JSON samples."""
    from benchmarks._rootless import emit
    from pytest_minidock.api import Engine

    root = work / "root"
    if not root.is_dir():
        root, _ = make_store(work)
    engine = Engine(root)
    timings: list[Timing] = []
    try:
        for network in ("none", "default"):
            got, bad = bench_library(engine, network, runs)
            if bad:
                sys.exit(f"/bin/true [{network}] reported {bad[0]}")
            timings += got[1:]
        CHILD_ENV.update(os.environ)
        CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        md = [sys.executable, "-m", "pytest_minidock", "--root", str(root), "run", "--rm"]
        timings.append(
            bench_process("cli [none]", [*md, "--network", "none", "busybox", "true"], runs)
        )
        timings.append(bench_process("cli [default]", [*md, "busybox", "true"], runs))
    finally:
        stop_launcher()
    emit(timings)


def rootless_main(runs: int, rounds: int) -> None:
    from benchmarks._rootless import RootlessUser, interleaved, table

    per_round = max(1, -(-runs // rounds))
    with RootlessUser("mdbench") as pair:
        print(pair.describe())
        print(
            f"runs: {per_round} x {rounds} rounds per side (+{WARMUPS} warm-ups a round)   "
            f"cores: {os.cpu_count()}   commit: {commit()}   load: {load()}"
        )
        (root, _), (user, _) = interleaved(
            pair, "benchmarks.bench_runtime", rounds, ["--runs", str(per_round)]
        )
        table("root vs rootless: container start-up", ROOTLESS_ROWS, root, user)
        print(f"load average at the end: {load()}")
    for note in pair.cleanup_notes:
        print(f"clean-up: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    from benchmarks import _rootless

    _rootless.add_arguments(parser)
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument(
        "--only",
        choices=("lib", "cli"),
        help="only section 1 (the library) or 2 (whole processes), without the summary",
    )
    parser.add_argument(
        "--with-docker",
        action="store_true",
        help="start a private dockerd for the docker rows (stopped again by PID)",
    )
    args = parser.parse_args()
    if args.rootless_child is not None:
        rootless_child(args.rootless_child, args.runs)
        return
    if os.geteuid() != 0:
        sys.exit("bench_runtime needs root (namespaces, mounts, cgroups)")
    if args.rootless:
        rootless_main(args.runs, args.rounds)
        return

    from pytest_minidock.api import Engine

    work = Path(tempfile.mkdtemp(prefix="minidock-bench-"))
    private: PrivateDockerd | None = None
    try:
        root, tar = make_store(work)
        engine = Engine(root)
        print(
            f"store: {root}   runs: {args.runs} (+{WARMUPS} warm-ups)   cores: {os.cpu_count()}"
            f"   commit: {commit()}   load: {load()}"
        )

        lib: dict[str, list[Timing]] = {}
        if args.only == "cli":
            run_cli(root, args.runs, work)
            return
        section("1. library, in-process: /bin/true (p50 / p90 / min)")
        for network in ("none", "host"):
            timings, bad = bench_library(engine, network, args.runs)
            lib[network] = timings
            for t in timings:
                print(t.line())
            for problem in bad:
                print(f"!! /bin/true [{network}] reported {problem}")
        netns_cost = lib["none"][1].median - lib["host"][1].median
        print(f"own netns (lo up) costs {netns_cost * 1000:+.1f} ms at p50 of run→wait")
        if args.only == "lib":
            return
        cli = run_cli(root, args.runs, work)

        section(f"3. memory per container, {args.containers} running `sleep 1000`")
        ours_mem = memory_ours(engine, args.containers)
        mems: dict[str, Memory | None] = {"ours": ours_mem, "docker": None, "podman": None}
        for line in ours_mem.lines():
            print(line)

        section("4. docker and podman")
        others: dict[str, list[Timing]] = {"docker": [], "podman": []}
        docker, private, note = find_docker(args.with_docker, work)
        print(note)
        if docker is not None:
            guarded("docker: busybox import", lambda: docker.ensure_busybox(tar))
            others["docker"] = guarded("docker", lambda: bench_other(docker, args.runs)) or []
            mems["docker"] = guarded(
                "docker memory",
                lambda: memory_other(
                    docker,
                    args.containers,
                    "containerd-shim",
                    ("dockerd", "containerd"),
                    "{{.State.Pid}}",
                ),
            )
        podman, note = find_podman(work, tar)
        print(note)
        if podman is not None:
            others["podman"] = guarded("podman", lambda: bench_other(podman, args.runs)) or []
            mems["podman"] = guarded(
                "podman memory",
                lambda: memory_other(podman, args.containers, "conmon", (), "{{.State.Pid}}"),
            )
        for who in ("docker", "podman"):
            for t in others[who]:
                print(t.line())
            tool = docker if who == "docker" else podman
            for n in tool.notes if tool is not None else []:
                print(f"{who}: {n}")
            mem = mems[who]
            if mem is not None:
                for line in mem.lines():
                    print(line)

        summary(lib, cli, others, mems)
        print(f"load average at the end: {load()}")
    finally:
        if private is not None:
            private.stop()
        stop_launcher()
        umount_under(work)
        remove_work(work)


def stop_launcher() -> None:
    """Stop this process's launcher (if it ever started one) before its store roots go: its
    PID 1s forked ahead would otherwise make spare directories in a root being removed."""
    launcher = sys.modules.get("pytest_minidock.runtime.launcher")
    if launcher is not None:
        launcher.shared().close()


def summary(
    lib: dict[str, list[Timing]],
    cli: list[Timing],
    others: dict[str, list[Timing]],
    mems: dict[str, Memory | None],
) -> None:
    section("summary (ms: p50 / p90; memory: PSS per container beyond the payload)")
    header = (
        f"{'row':<34} {'target':>8} {'ours':>13} {'docker':>13} {'podman':>13} "
        f"{'docker/ours':>11} {'podman/ours':>11}  ok"
    )
    print(header)
    print("-" * len(header))

    def row(name: str, target: float, ours: Timing, d: Timing | None, p: Timing | None) -> None:
        ok = "yes" if ours.median * 1000 <= target else "NO"
        print(
            f"{name:<34} {f'<={target:g}ms':>8} {timing_ms(ours):>13} {timing_ms(d):>13} "
            f"{timing_ms(p):>13} {ratio(d.median if d else None, ours.median):>11} "
            f"{ratio(p.median if p else None, ours.median):>11}  {ok}"
        )

    row("lib start+exit (own netns)", TARGET_LIB_MS, lib["none"][1], None, None)
    row("lib start+exit+remove (own netns)", TARGET_LIB_MS, lib["none"][2], None, None)
    row("lib start+exit (host net)", TARGET_LIB_MS, lib["host"][1], None, None)

    def other(who: str, i: int) -> Timing | None:
        return others[who][i] if len(others[who]) > i else None

    d, p = [other("docker", i) for i in (0, 1)], [other("podman", i) for i in (0, 1)]
    row("CLI run --rm busybox true", TARGET_CLI_BRIDGE_MS, cli[4], d[0], p[0])
    row("CLI run --rm --network none", TARGET_CLI_MS, cli[5], d[1], p[1])
    row("CLI run --rm, python -S (no .pth)", TARGET_CLI_BRIDGE_MS, cli[6], d[0], p[0])
    if len(cli) > 7:
        floor = (cli[7].median + lib["host"][1].median) * 1000
        print(
            f"floor of a whole command in Python: {floor:.0f} ms = the interpreter with "
            f"{', '.join(FLOOR_MODULES)} ({cli[7].median * 1000:.0f} ms) + a start and exit "
            f"in-process ({lib['host'][1].median * 1000:.1f} ms, host network), before any "
            f"minidock module; the CLI's target: {TARGET_CLI_MS:g} ms"
        )

    def mem_mb(m: Memory | None) -> float | None:
        return None if m is None else m.beyond_payload_pss() / 1024

    ours, dm, pm = (mem_mb(mems[k]) for k in ("ours", "docker", "podman"))

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} MB"

    ok = "yes" if ours is not None and ours <= TARGET_MEM_MB else "NO"
    print(
        f"{'memory/container (PSS, beyond sleep)':<34} {f'<={TARGET_MEM_MB:g}MB':>8} "
        f"{fmt(ours):>13} {fmt(dm):>13} {fmt(pm):>13} {ratio(dm, ours):>11} "
        f"{ratio(pm, ours):>11}  {ok}"
    )
    print(
        "ratios: the other tool's p50 (or memory) divided by ours; >1x means ours is faster/smaller"
    )


if __name__ == "__main__":
    main()
