"""The per-owner launcher process (runtime/launcher.py): crash semantics, reuse, stdio, codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.api import Engine
from pytest_minidock.errors import RuntimeFailure
from pytest_minidock.runtime import launcher
from pytest_minidock.runtime.container import Stdio
from pytest_minidock.runtime.logs import read_logs
from pytest_minidock.spec import Overrides
from tests.conftest import ROOTLESS
from tests.privileged.test_runtime import runtime_root  # noqa: F401 - the shared store fixture

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.privileged, pytest.mark.rootless]


@pytest.fixture
def engine(runtime_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:  # noqa: F811
    monkeypatch.delenv("MINIDOCK_LAUNCHER", raising=False)
    eng = Engine(runtime_root)
    before = {r.id for r in eng.runtime.state.all()}
    yield eng
    for record in eng.runtime.state.all():
        if record.id not in before:
            eng.remove(record.id, force=True)


def ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return out


def gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    """The pids of ``pids`` still there after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    left = pids
    while left and time.monotonic() < deadline:
        left = [p for p in left if Path(f"/proc/{p}").exists()]
        time.sleep(0.02)
    return left


def log_of(engine: Engine, cid: str, stream: str = "stdout") -> bytes:
    return b"".join(
        r.data for r in read_logs(engine.container(cid).dir / "log") if r.stream == stream
    )


def test_sigkill_of_the_owner_kills_launcher_monitors_and_containers(
    runtime_root: Path,  # noqa: F811
) -> None:
    script = f"""
import time
from pytest_minidock.api import Engine
from pytest_minidock.runtime import launcher
from pytest_minidock.spec import Overrides
e = Engine({str(runtime_root)!r}, launcher=True)
pids = []
for _ in range(3):
    s = e.run("busybox", Overrides(command=("sleep", "1000")))
    assert not s.monitor_is_child
    pids += [s.pid, s.monitor_pid]
print(launcher.shared().pid, *pids, flush=True)
time.sleep(1000)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:  # (whatever fails, the owner is killed: its containers must not outlive the test)
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 7
        launcher_pid, containers = pids[0], pids[1:]
        for pid in pids:
            assert Path(f"/proc/{pid}").exists()
        for pid1, monitor in zip(containers[0::2], containers[1::2], strict=True):
            assert monitor == launcher_pid  # the launcher monitors plain containers itself
            assert ppid(pid1) == launcher_pid
        assert ppid(launcher_pid) == proc.pid
        children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
        spare = [int(c) for c in children if int(c) not in pids]  # zygotes forked ahead, if any
        assert len(spare) <= launcher._ZYGOTES
        spares = runtime_root / "spares"  # its spare container directories, once made

        def its_spares() -> list[str]:
            names = os.listdir(spares) if spares.is_dir() else []
            return [n for n in names if n.lstrip(".").startswith(f"{launcher_pid}-")]

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(its_spares()) < launcher._SPARES:
            time.sleep(0.01)
        assert its_spares()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert gone(pids + spare) == []
    assert Engine(runtime_root).cleanup()  # the owner's containers are leftovers now
    assert its_spares() == []  # and its spares


def test_the_launcher_removes_its_spare_directories_when_its_owner_lets_it_go(
    engine: Engine,
) -> None:
    shared = launcher.shared()
    s = engine.run("busybox", Overrides(command=("true",)))
    assert engine.wait(s.id, timeout=30) == 0
    pid, spares = shared.pid, engine.root / "spares"

    def its_spares(*, half_made: bool = False) -> list[str]:
        prefixes = (f"{pid}-", f".{pid}-") if half_made else (f"{pid}-",)
        return [n for n in os.listdir(spares) if n.startswith(prefixes)]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(its_spares()) < launcher._SPARES:
        time.sleep(0.01)
    assert len(its_spares()) == launcher._SPARES
    made = {os.stat(spares / n).st_ino for n in os.listdir(spares) if not n.startswith(".")}
    taken = engine.create("busybox", Overrides(command=("true",)))
    assert taken.dir.stat().st_ino in made  # a spare became its directory
    engine.remove(taken.id)
    shared.close()
    assert gone([pid]) == []
    assert its_spares(half_made=True) == []


def test_the_launcher_starts_once_and_serves_many_containers(engine: Engine) -> None:
    shared = launcher.shared()
    first = engine.run("busybox", Overrides(command=("true",)))
    assert engine.wait(first.id, timeout=30) == 0
    starts, pid = shared.starts, shared.pid
    assert pid
    monitors = []
    for i in range(5):
        s = engine.run("busybox", Overrides(command=("sh", "-c", f"exit {i}")))
        monitors.append(s.monitor_pid)
        assert not s.monitor_is_child
        assert engine.wait(s.id, timeout=30) == i
    assert shared.starts == starts
    assert shared.pid == pid
    second = Engine(engine.root)  # another Runtime in this process: the same launcher
    s = second.run("busybox", Overrides(command=("sleep", "30")))
    try:
        assert s.monitor_pid == pid  # no monitor process of its own
        assert ppid(s.pid) == pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert str(s.pid) in children
        assert len(children) <= 2 + launcher._ZYGOTES  # and perhaps PID 1s forked ahead
    finally:
        second.remove(s.id, force=True)
    assert shared.starts == starts


def test_attached_stdout_and_stdin_pass_through(engine: Engine) -> None:
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    try:
        s = engine.run(
            "busybox",
            Overrides(command=("sh", "-c", "cat; echo err >&2"), stdin_open=True),
            stdio=Stdio(stdin=in_r, stdout=out_w, stderr=out_w),
        )
        os.close(in_r)
        os.close(out_w)
        in_r = out_w = -1
        # the owner's stdio: a monitor process of its own (a slow reader stalls no other)
        assert s.monitor_pid != launcher.shared().pid
        assert ppid(s.monitor_pid) == launcher.shared().pid
        os.write(in_w, b"hello through the launcher\n")
        os.close(in_w)
        in_w = -1
        assert engine.wait(s.id, timeout=30) == 0
        got = b""
        while chunk := os.read(out_r, 65536):
            got += chunk
    finally:
        for fd in (out_r, out_w, in_r, in_w):
            if fd >= 0:
                os.close(fd)
    assert got == b"hello through the launcher\nerr\n"
    assert log_of(engine, s.id) == b"hello through the launcher\n"
    assert log_of(engine, s.id, "stderr") == b"err\n"


def test_tty_through_the_launcher(engine: Engine) -> None:
    out_r, out_w = os.pipe()
    try:
        s = engine.run(
            "busybox",
            Overrides(command=("sh", "-c", "tty; test -t 0 && echo is-a-tty"), tty=True),
            stdio=Stdio(stdout=out_w, tty=True),
        )
        os.close(out_w)
        out_w = -1
        assert engine.wait(s.id, timeout=30) == 0
        got = b""
        while chunk := os.read(out_r, 65536):
            got += chunk
    finally:
        for fd in (out_r, out_w):
            if fd >= 0:
                os.close(fd)
    assert b"/dev/pts/" in got
    assert b"is-a-tty" in got


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        (("no-such-command",), 127, 'exec: "no-such-command": executable file not found'),
        (("/no/such/file",), 127, "exec: /no/such/file: no such file or directory"),
        (("/etc/passwd",), 126, "exec: /etc/passwd: permission denied"),
    ],
)
def test_exec_failures_keep_their_codes(
    engine: Engine, command: tuple[str, ...], code: int, message: str
) -> None:
    starts = launcher.shared().starts
    with pytest.raises(RuntimeFailure) as info:
        engine.run("busybox", Overrides(command=command))
    assert info.value.exit_code == code  # type: ignore[attr-defined]
    assert message in str(info.value)
    assert launcher.shared().starts <= max(starts, 1)  # went through the (one) launcher


def test_env_var_disables_the_launcher(
    runtime_root: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MINIDOCK_LAUNCHER", "0")
    eng = Engine(runtime_root)
    assert not eng.runtime.launcher
    s = eng.run("busybox", Overrides(command=("sh", "-c", "exit 4")))
    try:
        assert s.monitor_is_child
        assert eng.wait(s.id, timeout=30) == 4
    finally:
        eng.remove(s.id, force=True)
    assert not Engine(runtime_root, launcher=False).runtime.launcher
    monkeypatch.delenv("MINIDOCK_LAUNCHER")
    assert Engine(runtime_root).runtime.launcher


def test_detached_starts_use_the_direct_path(engine: Engine) -> None:
    s = engine.run("busybox", Overrides(command=("sleep", "30")), detached=True)
    assert not s.monitor_is_child
    assert ppid(s.monitor_pid) not in (launcher.shared().pid, os.getpid())
    engine.remove(s.id, force=True)


def test_the_launcher_holds_none_of_the_owners_fds(
    runtime_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    marker = tmp_path / "owner-only-file"
    script = f"""
import os, time
from pytest_minidock.api import Engine
from pytest_minidock.runtime import launcher
from pytest_minidock.spec import Overrides
fd = os.open({str(marker)!r}, os.O_CREAT | os.O_WRONLY)
os.set_inheritable(fd, True)
r, w = os.pipe()
os.set_inheritable(w, True)
e = Engine({str(runtime_root)!r}, launcher=True)
s = e.run("busybox", Overrides(command=("sleep", "1000")))
print(launcher.shared().pid, s.monitor_pid, os.readlink(f"/proc/self/fd/{{w}}"), flush=True)
time.sleep(1000)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        launcher_pid, monitor, owner_pipe = proc.stdout.readline().split()
        for pid in (int(launcher_pid), int(monitor)):
            targets = fd_targets(pid)
            assert str(marker) not in targets.values()
            assert owner_pipe not in targets.values()
            assert {targets[0], targets[1], targets[2]} == {"/dev/null"}
        # /dev/null x 3, its wake-up pipe, its socket, its own PID namespace and pidfd; for the
        # container it monitors its output pipes and log; for its spare PID 1 a socket and pipes.
        own = list(fd_targets(int(launcher_pid)).values())
        assert own.count("/dev/null") == 3
        logs = [t for t in own if t.startswith(str(runtime_root))]
        assert len(logs) == 1
        assert logs[0].endswith("/log")
        kinds = {t.split(":")[0] for t in own if t != "/dev/null" and t not in logs}
        assert kinds == {"anon_inode", "pid", "pipe", "socket"}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    Engine(runtime_root).cleanup()


def test_a_spare_pid1_is_forked_ahead_and_used_by_the_next_start(engine: Engine) -> None:
    first = engine.run("busybox", Overrides(command=("sleep", "30")))
    shared = launcher.shared()
    deadline = time.monotonic() + 10
    ours = os.readlink("/proc/self/ns/net")

    def own_net(pid: int) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/ns/net") != ours
        except FileNotFoundError:  # (rootless: the intermediate child a PID 1 is forked from)
            return False

    # they soon have namespaces of their own, and wait for a request
    spare: list[int] = []
    while time.monotonic() < deadline and (
        len(spare) < launcher._ZYGOTES or not all(map(own_net, spare))
    ):
        time.sleep(0.01)
        children = Path(f"/proc/{shared.pid}/task/{shared.pid}/children").read_text().split()
        spare = [int(c) for c in children if int(c) != first.pid]
    assert len(spare) == launcher._ZYGOTES
    for pid in spare:
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    second = engine.run("busybox", Overrides(command=("sh", "-c", "echo $$; hostname")))
    assert second.pid in spare
    assert engine.wait(second.id, timeout=30) == 0
    assert log_of(engine, second.id).split() == [
        b"1",
        engine.container(second.id).config["Spec"]["hostname"].encode(),
    ]
    host = engine.run("busybox", Overrides(command=("true",), network="host"))
    assert host.pid not in spare  # the host's network: not one of those
    assert engine.wait(host.id, timeout=30) == 0
    # from now on, one is kept ready for the host's network too
    while time.monotonic() < deadline:
        children = Path(f"/proc/{shared.pid}/task/{shared.pid}/children").read_text().split()
        host_spare = [
            int(c)
            for c in children
            if os.readlink(f"/proc/{c}/ns/net") == os.readlink("/proc/self/ns/net")
            and os.readlink(f"/proc/{c}/ns/pid") != os.readlink("/proc/self/ns/pid")
        ]
        if host_spare:
            break
        time.sleep(0.01)
    assert 1 <= len(host_spare) <= launcher._HOST_ZYGOTES
    again = engine.run("busybox", Overrides(command=("sh", "-c", "echo $$"), network="host"))
    assert again.pid in host_spare
    assert engine.wait(again.id, timeout=30) == 0
    assert log_of(engine, again.id) == b"1\n"


def test_the_hosts_network_gets_the_same_system_mounts_as_a_network_of_its_own(
    engine: Engine,
) -> None:
    # (a zygote made them ahead for both: the host's sysfs over an empty tmpfs, then moved in)
    script = "grep -E ' /(proc|sys|dev)( |/)' /proc/mounts | cut -d' ' -f2-4; ls /sys/class/net"
    seen = {}
    for network in ("none", "host", "host"):
        s = engine.run("busybox", Overrides(command=("sh", "-c", script), network=network))
        assert engine.wait(s.id, timeout=30) == 0
        lines = log_of(engine, s.id).decode().splitlines()
        seen[network] = [line for line in lines if line.startswith("/")]
        if ROOTLESS and network == "host":
            # a user namespace may not mount the host network's sysfs: it gets the host's /sys
            # bound recursively, whose submounts (cgroups, tracing) are locked in with it
            own = set(seen["none"])
            seen[network] = [s for s in seen[network] if s in own or not s.startswith("/sys/")]
        assert any(line.startswith("/sys sysfs ro,") for line in seen[network])
        assert any(line.startswith("/proc/sys proc ro,") for line in seen[network])
        names = {line for line in lines if not line.startswith("/")}
        if network == "host":  # (others' veths come and go: one of the host's is enough)
            assert "lo" in names
            assert names & set(os.listdir("/sys/class/net")) - {"lo"}
        else:
            assert names == {"lo"}
    assert seen["host"] == seen["none"]


def test_wait_sleeps_on_an_exit_pipe_the_launcher_closes_once_the_exit_is_recorded(
    engine: Engine,
) -> None:
    runtime = engine.runtime
    s = engine.run("busybox", Overrides(command=("sh", "-c", "sleep 0.5; exit 3")))
    assert s.id in runtime._exit_fds
    with pytest.raises(RuntimeFailure, match="timed out"):
        engine.wait(s.id, timeout=0.05)
    assert s.id in runtime._exit_fds  # kept for the next wait
    assert engine.wait(s.id, timeout=30) == 3
    assert s.id not in runtime._exit_fds
    assert engine.container(s.id).state.status == "exited"
    # by name too, and a removed container's pipe goes with it
    t = engine.run("busybox", Overrides(command=("sleep", "30")))
    assert t.id in runtime._exit_fds
    engine.remove(t.id, force=True)
    assert t.id not in runtime._exit_fds
    u = engine.run("busybox", Overrides(command=("true",)))
    assert engine.wait(engine.container(u.id).name, timeout=30) == 0
    assert u.id not in runtime._exit_fds


def test_rm_force_of_a_running_container_returns_at_once(engine: Engine) -> None:
    s = engine.run("busybox", Overrides(command=("sleep", "1000")))
    t0 = time.monotonic()
    engine.remove(s.id, force=True)
    assert time.monotonic() - t0 < 10  # not the 30 s wait timeout: the exit is seen
    assert s.id not in {r.id for r in engine.runtime.state.all()}
    assert gone([s.pid]) == []
