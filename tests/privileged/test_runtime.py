"""The container runtime as root: isolation, lifecycle, exit codes, exec, clean-up (issue 3)."""

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
from pytest_minidock.image.changes import apply_changes
from pytest_minidock.reference import Reference
from pytest_minidock.runtime.logs import read_logs
from pytest_minidock.spec import Overrides
from tests.conftest import make_busybox_root

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.privileged, pytest.mark.rootless]


@pytest.fixture(scope="session")
def runtime_root(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Path:
    """A store holding busybox:latest and an image with ENTRYPOINT/CMD/ENV/WORKDIR/USER set."""
    root = make_busybox_root(tmp_path_factory.mktemp("runtime-root"), busybox_rootfs)
    engine = Engine(root)
    engine.store.tag("busybox", Reference.parse("configured:1"))
    record = engine.store.resolve("configured:1")
    config = engine.store.image("configured:1").config()
    from dataclasses import replace

    cc = apply_changes(
        config.config,
        [
            'ENTRYPOINT ["/bin/echo", "entry"]',
            'CMD ["default-arg"]',
            "ENV GREETING=hello PATH=/bin:/usr/bin",
            "WORKDIR /srv/app",
            "USER nobody",
        ],
    )
    manifest = engine.store.image("configured:1").manifest()
    engine.store.commit_layers(
        replace(config, config=cc), list(manifest.layers), [Reference.parse("configured:1")]
    )
    assert record.id != engine.store.resolve("configured:1").id
    return root


@pytest.fixture
def engine(runtime_root: Path) -> Iterator[Engine]:
    eng = Engine(runtime_root)
    before = {r.id for r in eng.runtime.state.all()}
    yield eng
    for record in eng.runtime.state.all():
        if record.id not in before:
            eng.remove(record.id, force=True)


def run(engine: Engine, image: str, *command: str, **overrides: object) -> tuple[int, str, str]:
    """Run a container to completion; return (exit code, stdout, stderr) from its log."""
    ov = Overrides(command=tuple(command) or None, **overrides)  # type: ignore[arg-type]
    started = engine.run(image, ov)
    code = engine.wait(started.id, timeout=30)
    records = read_logs(engine.container(started.id).dir / "log")
    out = b"".join(r.data for r in records if r.stream == "stdout").decode()
    err = b"".join(r.data for r in records if r.stream == "stderr").decode()
    return code, out, err


def mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_exit_codes_propagate(engine: Engine) -> None:
    assert run(engine, "busybox", "true")[0] == 0
    assert run(engine, "busybox", "sh", "-c", "exit 3")[0] == 3
    # PID 1 ignores signals sent from inside its namespace (as in docker): kill from outside.
    started = engine.run("busybox", Overrides(command=("sleep", "100")))
    engine.kill(started.id, signal.SIGKILL)
    assert engine.wait(started.id, timeout=10) == 137
    # A signal PID 1 has no handler for is ignored, as in docker; with --init it is forwarded.
    started = engine.run("busybox", Overrides(command=("sleep", "100"), init=True))
    engine.kill(started.id, signal.SIGUSR1)
    assert engine.wait(started.id, timeout=10) == 128 + signal.SIGUSR1


def test_entrypoint_cmd_env_workdir_user(engine: Engine) -> None:
    code, out, _ = run(engine, "configured:1")
    assert (code, out) == (0, "entry default-arg\n")
    assert run(engine, "configured:1", "given")[1] == "entry given\n"
    code, out, _ = run(
        engine, "configured:1", "-c", "echo $GREETING $PWD $(id -u) $HOME", entrypoint=("sh",)
    )
    assert out == "hello /srv/app 65534 /home\n"
    code, out, _ = run(engine, "configured:1", "-c", "id -u", entrypoint=("sh",), user="root")
    assert out == "0\n"
    code, out, _ = run(engine, "busybox", "sh", "-c", "echo $A", env=("A=from-e",))
    assert out == "from-e\n"


def test_isolation_pid_uts_and_etc_files(engine: Engine) -> None:
    _code, out, _ = run(
        engine,
        "busybox",
        "sh",
        "-c",
        "echo $$; ls /proc | grep -c '^[0-9]'; hostname; cat /etc/hostname;"
        " grep -c localhost /etc/hosts",
        hostname="box1",
    )
    pid, nprocs, hostname, etc_hostname, localhost = out.split()
    assert pid == "1"
    assert int(nprocs) <= 3  # sh, ls, grep — nothing of the host's
    assert hostname == etc_hostname == "box1"
    assert int(localhost) >= 1
    assert os.uname().nodename != "box1"


def test_writes_stay_in_the_container_and_lower_files_can_be_deleted(engine: Engine) -> None:
    lower = engine.store.lowerdirs("busybox")[0]
    started = engine.run(
        "busybox",
        Overrides(command=("sh", "-c", "echo new > /etc/new; rm /bin/ls; test ! -e /bin/ls")),
    )
    assert engine.wait(started.id, timeout=30) == 0
    record = engine.container(started.id)
    assert (record.dir / "upper" / "etc" / "new").read_text() == "new\n"
    assert (lower / "bin" / "ls").exists()  # the image is untouched
    assert not (lower / "etc" / "new").exists()
    assert not Path("/etc/new").exists()


def test_stop_kills_a_sigterm_ignoring_payload_after_the_timeout(engine: Engine) -> None:
    started = engine.run("busybox", Overrides(command=("sh", "-c", "trap '' TERM; sleep 100")))
    time.sleep(0.2)
    t0 = time.monotonic()
    code = engine.stop(started.id, timeout=1)
    elapsed = time.monotonic() - t0
    assert code == 137
    assert 0.9 < elapsed < 5


def test_stop_uses_sigterm_first(engine: Engine) -> None:
    started = engine.run(
        "busybox",
        Overrides(command=("sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.05; done")),
    )
    time.sleep(0.3)
    assert engine.stop(started.id, timeout=5) == 42


def test_init_reaps_zombies(engine: Engine) -> None:
    # Orphans are re-parented to PID 1; a PID 1 that never waits (sleep) leaves them zombies.
    script = "for i in 1 2 3 4 5; do (sleep 0.05 &); done; exec sleep 30"

    def zombies(init: bool) -> int:
        started = engine.run("busybox", Overrides(command=("sh", "-c", script), init=init))
        time.sleep(0.5)
        out = engine.exec(
            started.id, ["sh", "-c", "ps -o stat | grep -c Z || true"], capture=True
        ).stdout
        engine.remove(started.id, force=True)
        return int(out.decode().strip())

    assert zombies(init=False) >= 5
    assert zombies(init=True) == 0


def test_rm_leaves_nothing_behind(engine: Engine) -> None:
    before = mountinfo()
    started = engine.run("busybox", Overrides(command=("sleep", "100")))
    record = engine.container(started.id)
    pid = started.pid
    assert Path(f"/proc/{pid}").exists()
    engine.remove(started.id, force=True)
    assert (
        not Path(f"/proc/{pid}").exists()
        or Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0
    )
    assert not record.dir.exists()
    assert mountinfo() == before
    assert not any(record.id in line for line in Path("/proc/self/cgroup").read_text().splitlines())
    for base in Path("/sys/fs/cgroup").rglob(record.id):
        pytest.fail(f"cgroup left behind: {base}")


def test_sigkill_of_the_owner_leaves_nothing_running(runtime_root: Path) -> None:
    script = f"""
import sys, time
from pytest_minidock.api import Engine
from pytest_minidock.spec import Overrides
e = Engine({str(runtime_root)!r})
s = e.run("busybox", Overrides(command=("sleep", "1000")))
print(s.id, s.pid, s.monitor_pid, flush=True)
time.sleep(1000)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    cid, pid, monitor = proc.stdout.readline().split()
    assert Path(f"/proc/{pid}").exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        Path(f"/proc/{pid}").exists() or Path(f"/proc/{monitor}").exists()
    ):
        time.sleep(0.02)
    assert not Path(f"/proc/{pid}").exists()
    assert not Path(f"/proc/{monitor}").exists()
    engine = Engine(runtime_root)
    assert cid in engine.cleanup()
    assert not (runtime_root / "containers" / cid).exists()


def test_exec_runs_in_the_container(engine: Engine) -> None:
    started = engine.run("busybox", Overrides(command=("sleep", "100"), hostname="execbox"))
    result = engine.exec(
        started.id, ["sh", "-c", "hostname; echo $$; cat /proc/1/cmdline"], capture=True
    )
    hostname, pid, cmdline = result.stdout.decode().split("\n", 2)
    assert hostname == "execbox"
    assert int(pid) > 1
    assert cmdline.startswith("sleep")
    assert engine.exec(started.id, ["sh", "-c", "exit 7"], capture=True).exit_code == 7
    with pytest.raises(RuntimeFailure) as info:
        engine.exec(started.id, ["nosuchcommand"], capture=True)
    assert getattr(info.value, "exit_code", None) == 127


def test_exec_tty_is_a_real_pty(runtime_root: Path) -> None:
    import pty

    engine = Engine(runtime_root)
    started = engine.run("busybox", Overrides(command=("sleep", "100")), detached=True)
    try:
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - child
            os.execv(
                sys.executable,
                [
                    sys.executable,
                    "-m",
                    "pytest_minidock",
                    "--root",
                    str(runtime_root),
                    "exec",
                    "-it",
                    started.id,
                    "sh",
                ],
            )
        out = b""

        def read_until(marker: bytes) -> None:
            nonlocal out
            deadline = time.monotonic() + 10
            while marker not in out and time.monotonic() < deadline:
                try:
                    chunk = os.read(fd, 1024)
                except OSError:
                    return
                out += chunk
                if b"\x1b[6n" in chunk:  # ash asks the terminal where the cursor is
                    os.write(fd, b"\x1b[1;1R")

        read_until(b"# ")
        os.write(fd, b"tty; echo MARK-$((6*7))\r")
        read_until(b"MARK-42")
        os.write(fd, b"exit 5\r")
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        assert b"/dev/pts/" in out
        assert b"MARK-42" in out
        assert os.WEXITSTATUS(status) == 5
    finally:
        engine.remove(started.id, force=True)


def test_bad_input_is_a_one_line_error_with_docker_exit_codes(runtime_root: Path) -> None:
    def cli(*args: str) -> tuple[int, str]:
        res = subprocess.run(
            [sys.executable, "-m", "pytest_minidock", "--root", str(runtime_root), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return res.returncode, res.stderr.strip()

    code, err = cli("run", "--rm", "--pull", "never", "nosuchimage:1", "true")
    assert code == 125
    assert err.startswith("Error: no such image: nosuchimage:1")
    assert "\n" not in err
    # pulled on demand (docker's default, --pull missing): a registry on loopback that is not
    # there (tests send nothing beyond loopback)
    code, err = cli("run", "--rm", "127.0.0.1:1/nosuchimage:1", "true")
    assert code == 125
    lines = err.splitlines()
    assert lines[0] == "Unable to find image '127.0.0.1:1/nosuchimage:1' locally"
    assert lines[-1].startswith("Error: ")
    assert "127.0.0.1:1" in lines[-1]
    code, err = cli("run", "--rm", "-u", "nosuchuser", "busybox", "true")
    assert code in (125, 126)
    assert "unable to find user nosuchuser" in err
    assert "\n" not in err
    code, err = cli("run", "--rm", "-v", "relative:path:ro:bad", "busybox", "true")
    assert code == 125
    assert "\n" not in err
    code, err = cli("run", "--rm", "busybox", "nosuchcommand")
    assert code == 127
    assert 'exec: "nosuchcommand": executable file not found in $PATH' in err
    code, err = cli("run", "--rm", "busybox", "/etc/passwd")
    assert code == 126
    code, _ = cli("run", "--rm", "busybox", "sh", "-c", "exit 9")
    assert code == 9


def test_cli_run_ps_logs_stop_rm(runtime_root: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest_minidock", "--root", str(runtime_root), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    res = cli(
        "run",
        "-d",
        "--name",
        "cli-test",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; sleep 100",
    )
    assert res.returncode == 0, res.stderr
    cid = res.stdout.strip()
    try:
        time.sleep(0.3)
        ps = cli("ps").stdout
        assert "cli-test" in ps
        assert "Up " in ps
        logs = cli("logs", "cli-test")
        assert (logs.stdout, logs.stderr) == ("out\n", "err\n")
        assert cli("logs", "-t", "cli-test").stdout.split(" ", 1)[1] == "out\n"
        assert cli("stop", "-t", "1", "cli-test").returncode == 0
        ps_a = cli("ps", "-a").stdout
        assert "Exited (137)" in ps_a or "Exited (143)" in ps_a
        dup = cli("run", "--name", "cli-test", "busybox", "true")
        assert dup.returncode == 125
        assert "already in use" in dup.stderr
    finally:
        cli("rm", "-f", cid)
    assert "cli-test" not in cli("ps", "-a").stdout


def test_without_overlayfs_containers_get_a_copy_and_say_so(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_minidock.runtime import fallback

    monkeypatch.setenv("MINIDOCK_OVERLAY", "off")
    monkeypatch.setattr(fallback._Once, "warned", False)
    lower = engine.store.lowerdirs("busybox")[0]
    code, out, _ = run(
        engine, "busybox", "sh", "-c", "echo x > /etc/new; rm /bin/ls; grep -c overlay /proc/mounts"
    )
    assert (code, out.strip()) == (1, "0")  # grep -c: no overlay mount at all
    assert "overlayfs is not available" in capsys.readouterr().err
    assert (lower / "bin" / "ls").exists()
    assert not (lower / "etc" / "new").exists()
