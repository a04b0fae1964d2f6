"""Rootless networks, end to end, as a throw-away ordinary user (issue 8): two containers on a
user network talk by name, a published port answers on the host's 127.0.0.1 (UDP: busybox has
no server for it; ``tests/unit/test_portfwd_direct.py`` relays it in place), the
fixtures' readiness waits see it, the per-user holder is shared by concurrent processes and
replaced when dead, outbound access goes through pasta or slirp4netns (and its absence is said),
and nothing is left behind, on the host or in the holder.

Root makes the user (``useradd``, a subordinate id range) and a copy of the package it can read;
each scenario runs as that user in a fresh ``/usr/bin/python3`` (its JSON answer on the last
line). ``/dev/net/tun`` is made mode 0666 for the module (Debian's default; pasta and slirp4netns
need it), then restored, by the last of the processes that use it at the same time (pytest-xdist
workers, other runs: ``tests/support/hostshare.py``); each has an address of its own on the
host's loopback for the outbound tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import IN_CI, require_tool
from tests.support.hostshare import TUN, loopback_address, shared_tun, subid_lock
from tests.support.subids import free_start

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.privileged, pytest.mark.netns]

PRELUDE = """
import json, os, socket, sys, time
from pathlib import Path
from pytest_minidock.spec import Overrides
from pytest_minidock.fixtures.handle import SessionEngine
from pytest_minidock.runtime.logs import read_logs
ROOT = Path(os.environ["MDT_ROOT"])

def result(**answer):
    print("RESULT " + json.dumps(answer), flush=True)

def log_of(engine, cid):
    return b"".join(r.data for r in read_logs(engine.container(cid).dir / "log")).decode()
"""

IMPORT = """
from pytest_minidock.image.changes import apply_changes
from pytest_minidock.image.model import ContainerConfig
from pytest_minidock.reference import Reference
from pytest_minidock.store.store import Store
with open(sys.argv[1], "rb") as f:
    Store(ROOT).import_tarball(f, [Reference.parse("busybox:latest")], source="busybox.tar",
                               changes=apply_changes(ContainerConfig(), ['CMD ["sh"]']))
import pytest_minidock
result(package=pytest_minidock.__file__)
"""

HOLDER = """
from pytest_minidock.runtime import holder
if sys.argv[1] == "ensure":
    found = holder.ensure()
    result(pid=found.pid, start=found.start, supervisor=found.supervisor, helper=found.helper,
           outbound=found.outbound, problem=found.problem, dir=found.dir)
elif sys.argv[1] == "stop":
    result(stopped=holder.stop())
elif sys.argv[1] == "stop-all":
    result(stopped=[holder.stop(holder.holder_dir(k)) for k in ("full", "single")])
"""

TALK = """
from pytest_minidock import wait
engine = SessionEngine(ROOT)
net = "rl-" + os.urandom(3).hex()
engine.network_create(net)
httpd = ("sh", "-c", "sleep 0.5; exec httpd -f -p 80 -h /etc")
server = engine.run("busybox", Overrides(command=httpd, network=net, aliases=("web",),
                                         publish=("80",)), name="server-" + net)
waited = server.wait_ready()  # the default: wait.ports(), from inside its network namespace
server.wait_ready(wait.http(80, "/hostname"))  # through the published port
outputs = {}
for target in ("server-" + net, "web"):
    request = "printf 'GET /hostname HTTP/1.0\\\\r\\\\n\\\\r\\\\n'"
    client = engine.run("busybox", Overrides(
        command=("sh", "-c", f"{request} | nc {target} 80"), network=net))
    code = engine.wait(client.id, timeout=30)
    outputs[target] = [code, log_of(engine, client.id)]
    engine.remove(client.id)
ports = engine.container(server.id).config["NetworkSettings"]["Ports"]
from pytest_minidock.runtime.network import Networks
networks = Networks(ROOT)
found = networks.get(net)
links = [found.bridge, *(e.host_ifname for e in found.endpoints)]
print("READY " + json.dumps({"tcp": int(ports["80/tcp"][0]["HostPort"]), "links": links,
                             "table": networks.table}), flush=True)
sys.stdin.readline()  # the test probes the port from outside meanwhile
hostname = engine.container(server.id).config["Spec"]["hostname"]
engine.remove(server.id, force=True)
engine.network_remove(net)
result(outputs=outputs, hostname=hostname, waited=waited)
"""

PUBLISH = """
from pytest_minidock import wait
engine = SessionEngine(ROOT)
command = ("httpd", "-f", "-p", "80", "-h", "/etc")
server = engine.run("busybox", Overrides(command=command, publish=("80",)))
server.wait_ready(wait.http(80, "/hostname"))
port = int(engine.container(server.id).config["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
print("READY " + json.dumps({"tcp": port}), flush=True)
sys.stdin.readline()
engine.remove(server.id, force=True)
from pytest_minidock.runtime.ports import PortSpec, reserve
with reserve([PortSpec(80, host_port=port)]):  # the container is gone: the port is free again
    pass
result(freed=True)
"""

OUTBOUND = """
t0 = time.monotonic()
times = {}
engine = SessionEngine(ROOT)
target = sys.argv[1]
# (timeout: Debian 12's pasta now and then never passes the server's close on)
request = "printf 'GET / HTTP/1.0\\\\r\\\\n\\\\r\\\\n'"
command = ("sh", "-c", f"{request} | timeout 5 nc -w 3 {target} | head -1")
published = engine.run("busybox", Overrides(command=("httpd", "-f", "-p", "80", "-h", "/etc"),
                                            publish=("80",)))
published.wait_ready()
times["published"] = time.monotonic() - t0
ports = engine.container(published.id).config["NetworkSettings"]["Ports"]
port = int(ports["80/tcp"][0]["HostPort"])
with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
    c.sendall(b"GET /hostname HTTP/1.0\\r\\n\\r\\n")
    answer = c.recv(100).decode(errors="replace")
times["http"] = time.monotonic() - t0
client = engine.run("busybox", Overrides(command=command))
try:
    code = engine.wait(client.id, timeout=30)
except Exception as exc:
    code = str(exc)
times["client"] = time.monotonic() - t0
text = log_of(engine, client.id)
engine.remove(client.id, force=True)
engine.remove(published.id, force=True)
times["removed"] = time.monotonic() - t0
result(code=code, log=text, published=answer, times=times)
"""


class RootlessUser:
    """A throw-away ordinary user with a subordinate id range, a copy of the package it can
    read, and a store of its own holding ``busybox``."""

    def __init__(self, name: str, uid: int, work: Path, python: str) -> None:
        self.name = name
        self.uid = uid
        self.work = work
        self.python = python
        self.tree = work / "tree"
        self.store = work / "store"
        self.home = work / "home"

    @property
    def runtime_dir(self) -> Path:
        """Where its holders live (``holder.user_dir``'s last resort: no XDG_RUNTIME_DIR)."""
        return Path(f"/tmp/minidock-{self.uid}")

    def env(self, extra: dict[str, str] | None = None) -> list[str]:
        env = {
            "PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(self.tree),
            "PYTHONDONTWRITEBYTECODE": "1",
            "MDT_ROOT": str(self.store),
            **(extra or {}),
        }
        return ["env", "-i", *(f"{k}={v}" for k, v in env.items())]

    def argv(self, script: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
        code = PRELUDE + textwrap.dedent(script)
        return ["runuser", "-u", self.name, "--", *self.env(env), self.python, "-c", code, *args]

    def run(
        self, script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> tuple[dict[str, Any], str]:
        """Run ``script`` as the user: its ``result(...)`` and its stderr."""
        done = subprocess.run(
            self.argv(script, *args, env=env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
        )
        return _answer(done.stdout, done.stderr, done.returncode), done.stderr

    @contextlib.contextmanager
    def session(
        self, script: str, *args: str, env: dict[str, str] | None = None
    ) -> Iterator[tuple[dict[str, Any], Any]]:
        """Run ``script`` until it says ``READY {...}``; yield that and a box that holds its
        ``result`` once the block is done (the script is told to go on by a line on stdin)."""
        proc = subprocess.Popen(
            self.argv(script, *args, env=env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        box: dict[str, Any] = {}
        try:
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("READY "):
                    break
            else:
                proc.wait(timeout=30)
                raise AssertionError(f"no READY line: {''.join(lines)}{proc.stderr.read()}")
            yield json.loads(line[len("READY ") :]), box
            proc.stdin.write("\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=120)
            box.update(_answer("".join(lines) + out, err, proc.returncode))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    def processes(self) -> list[int]:
        """The pids of the user's running processes (every one of them this module's; not the
        zombies that wait for an init to reap them)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                fields = dict(
                    line.split(":", 1)
                    for line in Path(f"/proc/{entry}/status").read_text().splitlines()
                )
                if int(fields["Uid"].split()[0]) == self.uid and fields["State"].split()[0] != "Z":
                    found.append(int(entry))
        return sorted(found)


def _answer(stdout: str, stderr: str, code: int) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            found: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return found
    raise AssertionError(f"the scenario failed (exit {code}):\n{stdout}\n{stderr}")


def _python() -> str:
    """A python3 every user may run (root's may live in /root), new enough for the package."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            version = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            if version == "True":
                return candidate
    message = "needs a system python3 (3.11 or newer) that an ordinary user can run"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _copy_package(tree: Path) -> None:
    """The package under test and what the scenarios import of its dependencies (filelock, and
    pytest with its own, for the fixtures' handles), pure Python all."""
    import importlib

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in (
        "pytest_minidock", "filelock", "pytest", "_pytest", "pluggy", "iniconfig", "packaging",
        "py",
    ):  # fmt: skip
        source = Path(importlib.import_module(name).__file__ or "")
        if source.name == "__init__.py":
            shutil.copytree(source.parent, tree / source.parent.name, ignore=ignore)
        else:
            shutil.copy(source, tree / source.name)


@pytest.fixture(scope="module")
def tun() -> Iterator[None]:
    """/dev/net/tun usable by everyone for the module (as Debian ships it), then as it was
    once no process of this host needs it any more (``hostshare.shared_tun``)."""
    if not TUN.exists():
        pytest.skip(f"no {TUN}: pasta and slirp4netns cannot run")
    with shared_tun():
        yield


@pytest.fixture(scope="module")
def user(tun: None, busybox_rootfs: Path) -> Iterator[RootlessUser]:
    if os.geteuid() != 0:
        pytest.fail("this module needs root to make its ordinary user", pytrace=False)
    for tool in ("useradd", "userdel", "usermod", "runuser", "newuidmap", "newgidmap", "nsenter"):
        require_tool(tool)
    from pytest_minidock.runtime.userns import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.fail(f"rootless networks need user namespaces: {reason}", pytrace=False)
    python = _python()
    name = f"mdnet{secrets.token_hex(3)}"
    work = Path(tempfile.mkdtemp(prefix="md-rootless-net-"))
    os.chmod(work, 0o755)
    made = False
    try:
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", str(work / "home"), "--shell",
             "/usr/sbin/nologin", "--user-group", name],
            check=True,
        )  # fmt: skip
        made = True
        with subid_lock():  # (no other process of the tests takes the same range meanwhile)
            first = free_start()
            ids = f"{first}-{first + 65535}"
            subprocess.run(
                ["usermod", "--add-subuids", ids, "--add-subgids", ids, name], check=True
            )
        import pwd

        entry = pwd.getpwnam(name)
        found = RootlessUser(name, entry.pw_uid, work, python)
        _copy_package(found.tree)
        for d in (found.home, found.store):
            d.mkdir()
            os.chown(d, entry.pw_uid, entry.pw_gid)
        shutil.copy(busybox_rootfs, work / "busybox.tar")
        os.chmod(work / "busybox.tar", 0o644)
        imported, _ = found.run(IMPORT, str(work / "busybox.tar"))
        assert imported["package"].startswith(str(found.tree)), imported  # (the copy)
        yield found
        found.run(HOLDER, "stop-all")
        assert found.processes() == [], "the user's processes outlived its holder"
    finally:
        if made:
            uid = pwd.getpwnam(name).pw_uid
            for pid in RootlessUser(name, uid, work, python).processes():  # (after a failure)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["userdel", name], check=False)
            for table in ("/etc/subuid", "/etc/subgid"):  # (userdel removes them: make sure)
                with open(table) as f:
                    lines = f.readlines()
                kept = [ln for ln in lines if ln.split(":")[0] != name]
                if kept != lines:
                    with open(table, "w") as f:
                        f.writelines(kept)
            shutil.rmtree(f"/tmp/minidock-{uid}", ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def outside() -> Iterator[tuple[str, int]]:
    """A TCP server on an address added to the host's loopback for the test, this process's
    alone (``hostshare.loopback_address``): a place outside the holder (not the host's own
    address, which pasta gives the holder too). Its address and port."""
    with loopback_address() as address, _answering(address) as port:
        yield address, port


@contextlib.contextmanager
def _answering(address: str) -> Iterator[int]:
    """A TCP server on ``address`` that answers every request with ``outside``: its port."""
    server = socket.create_server((address, 0))
    server.settimeout(0.2)
    stop = False

    def serve() -> None:
        while not stop:
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\noutside\n")

    import threading

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop = True
        thread.join(5)
        server.close()


def _holder_links(pid: int) -> list[str]:
    """The links of the holder's network namespace (root may enter it)."""
    done = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ip", "-o", "link"],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines())


def _host_links() -> set[str]:
    done = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines()}


def _holder_tables(pid: int) -> list[str]:
    done = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def _host_tables() -> set[str]:
    done = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    return {line for line in done.stdout.splitlines() if "minidock" in line}


def _http_get(port: int, path: str = "/hostname") -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    return data.decode(errors="replace")


# -- the tests --------------------------------------------------------------------------------
def test_containers_talk_by_name_and_publish_ports_on_the_hosts_loopback(
    user: RootlessUser,
) -> None:
    with user.session(TALK) as (ports, box):
        # another user of the host (root, here) reaches the published ports on 127.0.0.1
        answer = _http_get(ports["tcp"])
        assert answer.startswith("HTTP/1.1 200"), answer
        holder, _ = user.run(HOLDER, "ensure")
        # the network's bridge and veths are in the holder's namespace, not the host's
        assert set(ports["links"]) <= set(_holder_links(holder["pid"])), ports
        assert not set(ports["links"]) & _host_links(), ports
        assert not any(ports["table"] in table for table in _host_tables())
        assert any(ports["table"] in table for table in _holder_tables(holder["pid"]))
    found = box
    hostname = found["hostname"]
    assert hostname in answer
    for target, (code, text) in found["outputs"].items():
        assert code == 0, (target, text)
        assert hostname in text, (target, text)  # by its name and by its alias
    assert found["waited"] >= 0.3  # the server listens after 0.5 s: the wait saw it was not yet
    # gone with the containers and the network
    assert not set(ports["links"]) & set(_holder_links(holder["pid"]))


@pytest.mark.parametrize("launcher", ["1", "0"])
def test_a_published_port_is_relayed_until_its_container_goes(
    user: RootlessUser, launcher: str
) -> None:
    """Through the launcher (its one relay thread serves all its containers) and without it
    (each monitor relays its own container's ports: a thread started before its PID namespace,
    the fds it keeps spared when it closes the rest)."""
    with user.session(PUBLISH, env={"MINIDOCK_LAUNCHER": launcher}) as (ports, box):
        for _ in range(3):
            assert _http_get(ports["tcp"]).startswith("HTTP/1.1 200")
    assert box["freed"] is True
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports["tcp"]), timeout=5).close()


def test_the_holder_is_shared_by_concurrent_processes(user: RootlessUser) -> None:
    user.run(HOLDER, "stop")
    procs = [
        subprocess.Popen(user.argv(HOLDER, "ensure"), stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    answers = [_answer(p.communicate(timeout=60)[0], "", p.wait()) for p in procs]
    assert len({(a["pid"], a["start"]) for a in answers}) == 1, answers
    # one holder, one supervisor and one helper: nothing else of the user runs
    mine = set(user.processes())
    expected = {answers[0]["pid"], answers[0]["supervisor"]} | (
        {answers[0]["helper"]} if answers[0]["helper"] else set()
    )
    assert mine == expected, (mine, answers[0])


def test_a_dead_holder_is_replaced_and_its_helpers_go_with_it(user: RootlessUser) -> None:
    old, _ = user.run(HOLDER, "ensure")
    os.kill(old["pid"], signal.SIGKILL)  # (a process of our throw-away user)
    deadline = time.monotonic() + 10
    while set(user.processes()) & {old["supervisor"], old["helper"]} and (
        time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert not set(user.processes()) & {old["supervisor"], old["helper"]}
    new, _ = user.run(HOLDER, "ensure")
    assert new["pid"] != old["pid"]
    with user.session(TALK) as (ports, _box):
        assert _http_get(ports["tcp"]).startswith("HTTP/1.1 200")


@pytest.mark.parametrize("helper", ["slirp4netns", "pasta"])
def test_outbound_access_through_the_helper(
    user: RootlessUser, outside: tuple[str, int], helper: str
) -> None:
    require_tool(helper)
    user.run(HOLDER, "stop")
    env = {"MINIDOCK_ROOTLESS_NET": helper}
    holder, _ = user.run(HOLDER, "ensure", env=env)
    assert holder["outbound"] == helper, holder
    address, port = outside
    found, err = user.run(OUTBOUND, f"{address} {port}", env=env)
    assert "HTTP/1.0 200" in found["log"], found
    assert found["published"].startswith("HTTP/1.1 200"), found
    assert "no outbound access" not in err
    user.run(HOLDER, "stop")


def test_without_pasta_or_slirp4netns_it_says_so_and_the_rest_works(
    user: RootlessUser, outside: tuple[str, int]
) -> None:
    user.run(HOLDER, "stop")
    bin_dir = user.work / "bin"  # the id-map helpers, but no outbound helper
    bin_dir.mkdir(exist_ok=True)
    for tool in ("newuidmap", "newgidmap"):
        target = shutil.which(tool)
        assert target is not None
        with contextlib.suppress(FileExistsError):
            (bin_dir / tool).symlink_to(target)
    env = {"PATH": str(bin_dir)}
    holder, _ = user.run(HOLDER, "ensure", env=env)
    assert holder["outbound"] == ""
    assert "neither slirp4netns nor pasta" in holder["problem"]
    address, port = outside
    found, err = user.run(OUTBOUND, f"{address} {port}", env=env)
    assert "HTTP/1.0 200" not in found["log"], found  # no way out ...
    assert found["published"].startswith("HTTP/1.1 200"), found  # ... but ports still work
    message = [line for line in err.splitlines() if "no outbound access" in line]
    assert len(message) == 1, err  # said once
    assert "install slirp4netns or passt (pasta)" in message[0]
    user.run(HOLDER, "stop")


def test_the_holder_outlives_its_containers_and_stop_ends_everything(
    user: RootlessUser,
) -> None:
    with user.session(TALK) as (ports, _box):
        assert _http_get(ports["tcp"]).startswith("HTTP/1.1 200")
    holder, _ = user.run(HOLDER, "ensure")
    # like podman's pause process, it stays (its network namespace keeps the user's networks)
    assert holder["pid"] in user.processes()
    stopped, _ = user.run(HOLDER, "stop")
    assert stopped["stopped"] is True
    deadline = time.monotonic() + 10
    while user.processes() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert user.processes() == []
    assert not (Path(holder["dir"]) / "holder.json").exists()
    assert not (Path(holder["dir"]) / "holder.sock").exists()


def test_the_runtime_directory_must_be_private(user: RootlessUser) -> None:
    shared = user.work / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    found = subprocess.run(
        user.argv(HOLDER, "ensure", env={"MINIDOCK_RUNTIME_DIR": str(shared)}),
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode != 0
    assert f"{shared} is not a private directory of this user" in found.stderr
