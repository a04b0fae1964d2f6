"""Rootless runs of the benchmarks: a throw-away user, the same measurements as root and as it.

``bench_runtime --rootless`` and ``bench_ports --rootless`` (as root) make an ordinary user with a
subordinate id range (``useradd``, ``usermod --add-subuids/--add-subgids``), copy the package, the
benchmarks and ``tests/support`` (the busybox rootfs) to its home, and run the benchmark's
measuring part (``--rootless-child WORK``: a store of its own under ``WORK``, JSON samples on the
last line of its output) alternately as root and as that user, both through
``runuser``/``env -i`` with Debian's ``/usr/bin/python3`` and the same copy on ``PYTHONPATH``
(root's venv may live in a directory other users cannot read; the measured code needs only the
standard library), so that the user is the only difference. ``table`` prints them side by side.

At the end the user's network holders are stopped (``holder.stop``, as the user), its remaining
processes killed by pid, the user, its home, its id ranges and its runtime directory removed, and
``/dev/net/tun``'s mode restored (it is made 0666 meanwhile: slirp4netns and pasta need it).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._stats import Timing
from tests.support.hostshare import TUN, close_tun, open_tun, subid_lock
from tests.support.subids import SUBIDS, free_start, own_start, pids_of

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from types import TracebackType

REPO = Path(__file__).resolve().parents[1]
PYTHON = "/usr/bin/python3"
STOP_HOLDERS = """
from pytest_minidock.runtime import holder
for which in ("full", "single"):
    if holder.stop(holder.holder_dir(which, make=False)):
        print(f"stopped the {which} network holder")
"""


def _describe(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"{pid} (gone)"
    words = " ".join(a.decode(errors="replace") for a in argv if a)[:80]
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        comm, state = (
            stat[stat.index("(") + 1 : stat.rindex(")")],
            stat.rsplit(")", 1)[1].split()[0],
        )
        words = words or f"[{comm}] state {state}"
    return f"{pid} ({words})"


class Side:
    """Who runs a measuring child: root or the throw-away user, with its environment."""

    def __init__(self, label: str, user: str, home: Path, src: Path, work: Path) -> None:
        self.label = label
        self.user = user
        self.home = home
        self.src = src
        self.work = work

    def argv(self, *args: str) -> list[str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(self.src),
            # bytecode cached as an installed package has it (not in the copy, not per run)
            "PYTHONPYCACHEPREFIX": str(self.work / "pycache"),
        }
        return [
            "runuser",
            "-u",
            self.user,
            "--",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            PYTHON,
            *args,
        ]

    def child(self, module: str, *args: str, timeout: float = 900) -> dict[str, Any]:
        """Run ``python -m MODULE --rootless-child WORK ARGS`` as this side; its JSON."""
        argv = self.argv("-m", module, "--rootless-child", str(self.work), *args)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            tail = " | ".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"{self.label} child {module}: exit {done.returncode}: {tail}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result


class RootlessUser:
    """The throw-away user and root, each a ``Side``; a context manager that removes the user."""

    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}{os.getpid() % 100000}"
        self.uid = -1
        self.subuid = -1
        self.home = Path("/nonexistent")
        self.tun_open = False
        """``/dev/net/tun`` counted open by this process (``hostshare.open_tun``)."""
        self.root_work = Path("/nonexistent")
        self.cleanup_notes: list[str] = []

    # -- set-up ------------------------------------------------------------------------------
    def __enter__(self) -> RootlessUser:
        for tool in ("useradd", "userdel", "usermod", "runuser", "newuidmap", "newgidmap"):
            if shutil.which(tool) is None:
                raise SystemExit(f"--rootless needs {tool} on PATH")
        if not os.access(PYTHON, os.X_OK):
            raise SystemExit(f"--rootless needs {PYTHON} (Debian's python3)")
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", self.name],
            check=True,
            capture_output=True,
        )
        try:
            self._set_up()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _set_up(self) -> None:
        entry = pwd.getpwnam(self.name)
        self.uid, self.home = entry.pw_uid, Path(entry.pw_dir)
        start = own_start(self.name)  # (useradd may have given it one: SUB_UID_MIN ...)
        if start is None:
            with subid_lock():  # (not the range a test process is giving its user meanwhile)
                start = free_start()
                ids = f"{start}-{start + SUBIDS - 1}"
                subprocess.run(
                    ["usermod", "--add-subuids", ids, "--add-subgids", ids, self.name],
                    check=True,
                    capture_output=True,
                )
        self.subuid = start
        src = self.home / "src"
        skip = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO / "pytest_minidock", src / "pytest_minidock", ignore=skip)
        shutil.copytree(REPO / "benchmarks", src / "benchmarks", ignore=skip)
        shutil.copytree(REPO / "tests" / "support", src / "tests" / "support", ignore=skip)
        shutil.copyfile(REPO / "tests" / "__init__.py", src / "tests" / "__init__.py")
        (self.home / "work").mkdir()
        subprocess.run(["chown", "-R", f"{self.name}:{self.name}", str(self.home)], check=True)
        self.root_work = Path(
            subprocess.run(
                ["mktemp", "-d", "/tmp/minidock-bench-rootless-XXXXXX"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        if TUN.exists():  # 0666 while any process needs it; the last one puts its mode back
            open_tun()
            self.tun_open = True

    @property
    def root(self) -> Side:
        return Side("root", "root", Path("/root"), self.home / "src", self.root_work)

    @property
    def user(self) -> Side:
        return Side(self.name, self.name, self.home, self.home / "src", self.home / "work")

    def describe(self) -> str:
        return (
            f"rootless user {self.name} (uid {self.uid}, subordinate ids {self.subuid}+{SUBIDS}), "
            f"both sides: {PYTHON} via runuser/env -i, PYTHONPATH {self.home / 'src'}"
        )

    # -- clean-up ----------------------------------------------------------------------------
    def pids(self) -> list[int]:
        """Processes running as the user or, inside its user namespaces, as its ids."""
        if self.uid < 0:
            return []
        return pids_of(self.uid, self.subuid)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.uid >= 0 and (self.home / "src").is_dir():
            done = subprocess.run(
                self.user.argv("-c", STOP_HOLDERS),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            self.cleanup_notes += done.stdout.split("\n")
            if done.returncode != 0:
                self.cleanup_notes.append(f"holder.stop failed: {done.stderr.strip()[-300:]}")
        deadline = time.monotonic() + 10
        left = self.pids()
        if left:
            self.cleanup_notes.append(
                f"left running after holder.stop: {', '.join(_describe(p) for p in left)}"
            )
        killed: set[int] = set()
        while self.pids() and time.monotonic() < deadline:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.1)  # (until reaped: userdel refuses a user still running)
        if killed:
            self.cleanup_notes.append(f"killed {len(killed)} leftover process(es) of {self.name}")
        while True:
            done = subprocess.run(
                ["userdel", "--remove", self.name], capture_output=True, text=True, check=False
            )
            if done.returncode in (0, 6, 12) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if done.returncode not in (0, 6):
            self.cleanup_notes.append(f"userdel {self.name}: {done.stderr.strip()}")
        for file in ("/etc/subuid", "/etc/subgid"):
            with contextlib.suppress(OSError):
                lines = Path(file).read_text().splitlines(keepends=True)
                kept = [line for line in lines if not line.startswith(f"{self.name}:")]
                if kept != lines:
                    Path(file).write_text("".join(kept))
        if self.uid >= 0:
            shutil.rmtree(f"/tmp/minidock-{self.uid}", ignore_errors=True)
        if self.root_work.is_dir():
            from benchmarks._roots import remove_work
            from pytest_minidock.runtime.network import Networks

            table = Networks(self.root_work / "root").table
            remove_work(self.root_work)
            listed = subprocess.run(
                ["nft", "list", "table", "ip", table], capture_output=True, check=False
            )
            if listed.returncode == 0:
                self.cleanup_notes.append(f"root's nftables table {table} is still there")
        if self.tun_open:
            close_tun()
            self.tun_open = False
        self.cleanup_notes = [n for n in self.cleanup_notes if n.strip()]


# -- child side: samples as JSON -------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark's root-beside-rootless mode."""
    import argparse

    parser.add_argument(
        "--rootless",
        action="store_true",
        help="root vs an ordinary user (throw-away, made and removed here) instead",
    )
    parser.add_argument("--rounds", type=int, default=2, help="with --rootless: rounds per side")
    parser.add_argument("--rootless-child", type=Path, help=argparse.SUPPRESS)


def emit(timings: Sequence[Timing], values: dict[str, list[float]] | None = None) -> None:
    """Print a child's results as one JSON line (the parent reads the last line)."""
    print(
        json.dumps(
            {
                "timings": {t.name: list(t.samples) for t in timings},
                "values": values or {},
            }
        ),
        flush=True,
    )


def merge(results: Sequence[dict[str, Any]]) -> tuple[dict[str, Timing], dict[str, list[float]]]:
    """The rounds' samples of one side, joined per name."""
    samples: dict[str, list[float]] = {}
    values: dict[str, list[float]] = {}
    for result in results:
        for name, got in result["timings"].items():
            samples.setdefault(name, []).extend(got)
        for name, got in result["values"].items():
            values.setdefault(name, []).extend(got)
    return {k: Timing(k, tuple(v)) for k, v in samples.items()}, values


def interleaved(
    pair: RootlessUser, module: str, rounds: int, args: Sequence[str]
) -> tuple[
    tuple[dict[str, Timing], dict[str, list[float]]],
    tuple[dict[str, Timing], dict[str, list[float]]],
]:
    """``rounds`` alternating (root, user) runs of ``module``'s child; each side's results."""
    got: dict[str, list[dict[str, Any]]] = {"root": [], "user": []}
    for i in range(rounds):
        order = ("root", "user") if i % 2 == 0 else ("user", "root")
        for who in order:
            side = pair.root if who == "root" else pair.user
            t0 = time.monotonic()
            got[who].append(side.child(module, *args))
            print(
                f"  round {i + 1}/{rounds} {side.label}: {time.monotonic() - t0:.0f} s", flush=True
            )
    return merge(got["root"]), merge(got["user"])


# -- the table -------------------------------------------------------------------------------------
def _ms(t: Timing | None) -> str:
    return "-" if t is None else f"{t.median * 1000:.1f} / {t.pct(90) * 1000:.1f}"


def _print_rows(
    title: str,
    rows: Sequence[tuple[str, str]],
    cell: Callable[[str, bool], tuple[str, float | None, int]],
) -> None:
    """The root / rootless table: ``cell(key, rootless)`` is a side's text, median and count."""
    print(f"\n== {title}")
    header = f"{'row':<40} {'root':>15} {'rootless':>15} {'ratio':>7} {'n':>7}"
    print(header)
    print("-" * len(header))
    for label, key in rows:
        (ta, ma, na), (tb, mb, nb) = cell(key, False), cell(key, True)
        ratio = "-" if ma is None or mb is None or ma <= 0 else f"{mb / ma:.2f}x"
        print(f"{label:<40} {ta:>15} {tb:>15} {ratio:>7} {f'{na}/{nb}':>7}")


def table(
    title: str,
    rows: Sequence[tuple[str, str]],
    root: dict[str, Timing],
    user: dict[str, Timing],
) -> None:
    """``rows``: (label, sample name); ms p50 / p90 for root and rootless, and rootless p50 /
    root p50."""

    def cell(key: str, rootless: bool) -> tuple[str, float | None, int]:
        t = (user if rootless else root).get(key)
        return _ms(t), None if t is None else t.median, len(t.samples) if t else 0

    _print_rows(f"{title} (ms: p50 / p90; ratio: rootless p50 / root p50)", rows, cell)


def _value(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.2f}"


def value_table(
    title: str,
    unit: str,
    rows: Sequence[tuple[str, str]],
    root: dict[str, list[float]],
    user: dict[str, list[float]],
) -> None:
    """Like ``table`` for rates (medians; ratio rootless / root)."""
    import statistics

    def cell(key: str, rootless: bool) -> tuple[str, float | None, int]:
        values = (user if rootless else root).get(key)
        median = statistics.median(values) if values else None
        return _value(median), median, len(values) if values else 0

    _print_rows(f"{title} ({unit}, median; ratio: rootless / root)", rows, cell)
