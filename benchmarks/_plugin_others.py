"""bench_plugin part 1 side by side: pytest-docker-tools and testcontainers on a private dockerd.

The test projects of the other tools (each written the way its documentation shows), the private
dockerd they run against (``bench_runtime.PrivateDockerd``, ``--iptables=false``: published ports
go through docker-proxy), busybox imported into it from our rootfs tar (no Docker Hub here), and
the CPU time the docker side spends outside pytest: dockerd and everything it starts
(containerd, the shims, runc, docker-proxy) are moved into a cpuacct cgroup of their own, whose
usage is read with that of the containers' cgroups (``/docker``).

Not imported by ``pytest_minidock``: ``testcontainers`` and ``pytest-docker-tools`` are
benchmark-only dependencies (``pip install -e .[bench]``), imported only by the generated test
projects, in their own pytest processes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.bench_runtime import find_docker

if TYPE_CHECKING:
    from benchmarks.bench_runtime import Other, PrivateDockerd

HOW_TO = (
    "side by side with pytest-docker-tools and testcontainers: add --with-docker "
    "(needs /usr/sbin/dockerd: apt-get install docker.io, and .venv/bin/pip install -e '.[bench]')"
)


@dataclass(frozen=True)
class Tool:
    """Another tool's way of writing the benchmark's fixture and test."""

    name: str
    module: str
    """The package that must be importable for it (its pytest plugin or library)."""
    conftest: str
    """The fixture ``web``, formatted with ``httpd`` (the command as a JSON list)."""
    body: str
    """A test's body: it gets the published address, as a test of a web server would."""
    plugins: tuple[str, ...]
    """``-p`` options: each tool's sessions (and their empty baseline) load only its plugin."""
    wait: str
    """What the tool's readiness check used here waits for."""


PYTEST_DOCKER_TOOLS = Tool(
    name="pytest-docker-tools",
    module="pytest_docker_tools",
    conftest="""
from pytest_docker_tools import container

web = container(
    image="busybox",
    command={httpd},
    ports={{"80/tcp": None}},
    scope="function",
)
""",
    body='host, port = web.get_addr("80/tcp")',
    plugins=("no:minidock",),
    # pytest_docker_tools/factories/container.py: wait_for_callable(container.ready, timeout=30)
    # and wrappers/container.py: Container.ready; utils.py: wait_for_callable
    wait=(
        "its default: Container.ready, tried at once and then once a second (up to 30 s): "
        "the container reloaded and running, an IP on each network, and each published TCP "
        "port in state LISTEN in `cat /proc/net/tcp /proc/net/tcp6` run by `docker exec`"
    ),
)
TESTCONTAINERS = Tool(
    name="testcontainers",
    module="testcontainers",
    conftest="""
import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import HttpWaitStrategy


@pytest.fixture
def web():
    with (
        DockerContainer("busybox")
        .with_command({httpd})
        .with_exposed_ports(80)
        .waiting_for(HttpWaitStrategy(80, "/passwd"))
    ) as container:
        yield container
""",
    body="host, port = web.get_container_host_ip(), web.get_exposed_port(80)",
    plugins=("no:minidock", "no:docker_tools"),
    # testcontainers/core/wait_strategies.py: HttpWaitStrategy.wait_until_ready,
    # _poll_interval = config.sleep_time = TC_POOLING_INTERVAL (default 1 s)
    wait=(
        "its own HttpWaitStrategy(80, '/passwd'): GET http://localhost:<published port>/passwd "
        "until 200, tried at once and then every TC_POOLING_INTERVAL (default 1 s, kept); "
        "TESTCONTAINERS_RYUK_DISABLED=true (its Ryuk reaper image cannot be pulled here), so "
        "only the fixture's `with` removes each container"
    ),
)
TOOLS = (PYTEST_DOCKER_TOOLS, TESTCONTAINERS)


def installed(tools: tuple[Tool, ...] = TOOLS) -> tuple[list[Tool], list[str]]:
    """The tools importable here, and one line for each that is not."""
    found, missing = [], []
    for tool in tools:
        if importlib.util.find_spec(tool.module) and importlib.util.find_spec("docker"):
            found.append(tool)
        else:
            missing.append(
                f"{tool.name}: not installed (.venv/bin/pip install -e '.[bench]' for the side "
                "by side)"
            )
    return found, missing


# -- CPU time of the docker side -----------------------------------------------------------------
_V1 = Path("/sys/fs/cgroup/cpuacct")
_V2 = Path("/sys/fs/cgroup")


def _usage(cgroup: Path) -> float:
    """CPU seconds used so far by the processes of ``cgroup`` and its descendants; 0 if none."""
    try:
        if (cgroup / "cpuacct.usage").exists():
            return int((cgroup / "cpuacct.usage").read_text()) / 1e9
        for line in (cgroup / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    except (OSError, ValueError):
        pass
    return 0.0


def _descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


class DaemonCpu:
    """A cpuacct cgroup holding our dockerd and all it starts from now on, plus the containers'
    ``/docker`` cgroup: the docker side's CPU time, which pytest's own rusage does not see
    (the shims and containers are not its children)."""

    def __init__(self, pid: int) -> None:
        base = _V1 if (_V1 / "cpuacct.usage").exists() else _V2
        self.containers = base / "docker"
        self.group: Path | None = base / f"minidock-bench-dockerd-{pid}"
        self.note = ""
        try:
            self.group.mkdir()
            for p in _descendants(pid):
                with contextlib.suppress(OSError):  # (a process that just ended)
                    (self.group / "cgroup.procs").write_text(str(p))
        except OSError as exc:
            self.note = f"no cgroup for dockerd's CPU time ({exc}): docker CPU = pytest only"
            with contextlib.suppress(OSError):
                self.group.rmdir()
            self.group = None

    def seconds(self) -> float:
        if self.group is None:
            return 0.0
        return _usage(self.group) + _usage(self.containers)

    def remove(self) -> str:
        """Remove the cgroup once its processes are gone; a note if it cannot be."""
        if self.group is None:
            return ""
        deadline = time.monotonic() + 10
        while True:
            try:
                self.group.rmdir()
                return ""
            except OSError as exc:
                if time.monotonic() > deadline:
                    return f"!! cgroup {self.group} not removed: {exc}"
                time.sleep(0.2)


# -- the private dockerd -------------------------------------------------------------------------
class DockerSide:
    """A private dockerd holding ``busybox``, the environment that points the tools at it, and
    the CPU time it spends."""

    def __init__(self, docker: Other, private: PrivateDockerd) -> None:
        self.docker = docker
        self.private = private
        self.cpu = DaemonCpu(private.proc.pid)
        self.env = {"DOCKER_HOST": private.sock, "TESTCONTAINERS_RYUK_DISABLED": "true"}
        self.version = self.driver = "?"
        self.stopped = False
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.version = docker.output("version", "--format", "{{.Server.Version}}").strip()
            self.driver = docker.output("info", "--format", "{{.Driver}}").strip()

    @classmethod
    def start(cls, work: Path, tar: Path) -> tuple[DockerSide | None, str]:
        """Start dockerd and import busybox; ``None`` and why on failure (never raises)."""
        try:
            docker, private, note = find_docker(True, work)
        except Exception as exc:
            return None, f"docker: cannot start a private dockerd: {exc}"
        if docker is None or private is None:
            return None, note
        try:
            docker.ensure_busybox(tar)
        except (subprocess.SubprocessError, OSError) as exc:
            private.stop()
            return None, f"docker: cannot import busybox from {tar}: {exc}"
        try:
            side = cls(docker, private)
        except BaseException:
            private.stop()
            raise
        return side, side.describe()

    def describe(self) -> str:
        return (
            f"private dockerd pid {self.private.proc.pid} on {self.private.sock} (docker "
            f"{self.version}, storage driver {self.driver}, --iptables=false: published ports "
            "through docker-proxy), busybox imported from our rootfs tar (`docker import`)"
            + (f"; {self.cpu.note}" if self.cpu.note else "")
        )

    def containers(self) -> list[str]:
        """The ids of every container in our dockerd, running or not (``docker ps -aq``)."""
        return self.docker.output("ps", "-aq", timeout=60).split()

    def stop(self) -> list[str]:
        """Report and remove leftover containers, stop dockerd by its PID, remove the cgroup
        (once: a second call does nothing)."""
        if self.stopped:
            return []
        self.stopped = True
        notes = []
        try:
            left = self.containers()
        except (subprocess.SubprocessError, OSError) as exc:
            left = []
            notes.append(f"!! docker ps -aq failed: {exc}")
        if left:
            notes.append(f"!! containers left in our dockerd: {' '.join(left)} (now removed)")
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.docker.output("rm", "-f", *left, timeout=300)
        else:
            notes.append("docker ps -aq on our dockerd before stopping it: empty")
        pid = self.private.proc.pid
        self.private.stop()
        notes.append(f"dockerd pid {pid} stopped (exit {self.private.proc.returncode})")
        gone = self.cpu.remove()
        if gone:
            notes.append(gone)
        return notes
