"""Rootless mode for real: an ordinary user runs, enters, copies and removes containers.

Root makes a throw-away user with a subordinate id range (``useradd``, ``usermod --add-subuids``),
gives it a copy of the package and of the busybox rootfs, and runs the ``minidock`` CLI (and small
owner scripts using the library) as that user through ``runuser``. The user's store is its default
one (``~/.local/share/minidock``). The user, its home, its id ranges and any process left of it
are removed at the end.

The user's Python: this interpreter if the user may run it, else Debian's ``/usr/bin/python3``
(root's may live under a private directory). The CLI needs the standard library only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import require_tool
from tests.support.subids import SUBIDS, free_start, own_start, pids_of

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.privileged

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_minidock"


class User:
    """The throw-away user, and ``minidock`` (or Python) run as that user."""

    def __init__(self, name: str, home: Path, python: str, subuid: int) -> None:
        self.name = name
        self.home = home
        self.python = python
        self.subuid = subuid
        entry = pwd.getpwnam(name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.store = home / ".local" / "share" / "minidock"

    def env(self, **extra: str) -> list[str]:
        base = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(self.home / "src"),
            **extra,
        }
        return [f"{k}={v}" for k, v in base.items()]

    def argv(self, *args: str, **env: str) -> list[str]:
        return ["runuser", "-u", self.name, "--", "env", "-i", *self.env(**env), *args]

    def run(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args, **env), capture_output=True, text=True, timeout=timeout, check=False
        )

    def md(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``minidock ARGS`` as the user."""
        return self.run(self.python, "-m", "pytest_minidock", *args, **env)

    def ok(self, *args: str, **env: str) -> str:
        done = self.md(*args, **env)
        assert done.returncode == 0, (args, done.returncode, done.stderr)
        return done.stdout

    def pids(self) -> list[int]:
        """The processes running as this user (or, inside its user namespaces, as its ids)."""
        return pids_of(self.uid, self.subuid)

    def processes(self, *argv: str) -> list[int]:
        """The user's processes whose command line holds the arguments ``argv`` in a row."""
        needle = b"\0" + b"\0".join(a.encode() for a in argv) + b"\0"
        out = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if needle in b"\0" + Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
        return out


def _python_for(name: str) -> str:
    for candidate in (sys.executable, "/usr/bin/python3"):
        check = "import sys; sys.exit(sys.version_info < (3, 11))"
        done = subprocess.run(
            ["runuser", "-u", name, "--", candidate, "-c", check],
            capture_output=True,
            check=False,
        )
        if done.returncode == 0:
            return candidate
    pytest.fail(f"no Python 3.11+ that user {name} may run (install python3)")


def _busybox_owned_tar(busybox: Path, out: Path) -> None:
    """busybox plus files of other owners: ``/opt/hello`` (uid 1234, 0750), ``/opt/data``
    (a 0700 directory of uid 4321 holding ``f``)."""
    shutil.copyfile(busybox, out)
    with tarfile.open(out, "a") as tar:

        def add(name: str, uid: int, mode: int, data: bytes | None) -> None:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = uid
            info.mode = mode
            info.mtime = int(time.time())
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

        add("opt", 0, 0o755, None)
        add("opt/hello", 1234, 0o750, b"#!/bin/sh\necho hello from 1234\n")
        add("opt/data", 4321, 0o700, None)
        add("opt/data/f", 4321, 0o600, b"data of 4321\n")


@pytest.fixture(scope="module")
def user(busybox_rootfs: Path) -> Iterator[User]:
    """Name: ``mdrl<pid>``; Scope: module; Depends: ``busybox_rootfs``, root, ``useradd``,
    ``runuser``, ``newuidmap``. Creates the user with a home, ``SUBIDS`` subordinate uids and
    gids, the package under ``~/src`` and ``busybox:latest`` and ``owned:latest`` imported into
    the user's default store; removes the user, its home, its ranges and its processes."""
    for tool in ("useradd", "userdel", "usermod", "runuser", "newuidmap", "newgidmap"):
        require_tool(tool)
    name = f"mdrl{os.getpid() % 100000}"
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", name],
        check=True,
        capture_output=True,
    )
    made: User | None = None
    try:
        start = own_start(name)  # (useradd may have given it a range: SUB_UID_MIN...)
        if start is None:
            start = free_start()
            ids = f"{start}-{start + SUBIDS - 1}"
            subprocess.run(
                ["usermod", "--add-subuids", ids, "--add-subgids", ids, name],
                check=True,
                capture_output=True,
            )
            assert own_start(name) == start
        home = Path(pwd.getpwnam(name).pw_dir)
        shutil.copytree(
            PACKAGE, home / "src" / "pytest_minidock", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copyfile(busybox_rootfs, home / "busybox.tar")
        _busybox_owned_tar(busybox_rootfs, home / "owned.tar")
        subprocess.run(["chown", "-R", f"{name}:{name}", str(home)], check=True)
        made = User(name, home, _python_for(name), start)
        for tar, ref in (("busybox.tar", "busybox:latest"), ("owned.tar", "owned:latest")):
            made.ok("import", "--change", 'CMD ["sh"]', str(home / tar), ref)
        yield made
    finally:
        deadline = time.monotonic() + 10
        while made is not None and made.pids() and time.monotonic() < deadline:
            for pid in made.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)  # (until they are reaped: userdel refuses a user still running)
        while True:
            done = subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)
            if done.returncode in (0, 6, 12) or time.monotonic() > deadline:  # 6: no such user
                break  # (12: its home could not be removed: reported below)
            time.sleep(0.2)
        for file in ("/etc/subuid", "/etc/subgid"):  # (userdel removes them; make sure)
            with contextlib.suppress(OSError):
                lines = Path(file).read_text().splitlines(keepends=True)
                kept = [line for line in lines if not line.startswith(f"{name}:")]
                if kept != lines:
                    Path(file).write_text("".join(kept))
        if made is not None:  # (its network holder's runtime directory, made without XDG)
            shutil.rmtree(f"/tmp/minidock-{made.uid}", ignore_errors=True)
        assert done.returncode in (0, 6), f"userdel {name}: {done.stderr!r}"


@pytest.fixture
def clean(user: User) -> Iterator[User]:
    """The user, with no container of it left after the test (nor a process of it)."""
    yield user
    leftovers = user.md("ps", "-aq").stdout.split()
    if leftovers:
        user.md("rm", "-f", *leftovers)
    assert not leftovers, "the test left containers"
    assert not user.processes("-m", "pytest_minidock"), "the test left processes"
    containers = user.store / "containers"
    assert not [p for p in containers.iterdir() if not p.name.startswith(".")]


def test_the_users_store_is_its_own(clean: User) -> None:
    assert (clean.store / "index.json").is_file()
    assert clean.store.stat().st_uid == clean.uid
    rows = [line.split()[:2] for line in clean.ok("images").splitlines()[1:]]
    assert sorted(rows) == [["busybox", "latest"], ["owned", "latest"]]


def test_run_rm_propagates_the_exit_code_and_leaves_nothing(clean: User) -> None:
    done = clean.md("run", "--rm", "--network", "none", "busybox", "sh", "-c", "echo hi; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, "hi\n", "")
    assert clean.ok("ps", "-aq") == ""


def test_the_full_map_runs_a_subordinate_uid(clean: User) -> None:
    script = "cat /proc/self/uid_map; id -u; touch /tmp/f; stat -c %u /tmp/f"
    out = clean.ok("run", "--rm", "--network", "none", "-u", "1000", "busybox", "sh", "-c", script)
    lines = out.split("\n")
    assert lines[0].split() == ["0", str(clean.uid), "1"]
    assert lines[1].split() == ["1", str(clean.subuid), str(SUBIDS)]
    assert lines[2:4] == ["1000", "1000"]
    done = clean.md("run", "--rm", "--network", "none", "-u", "70000", "busybox", "true")
    assert done.returncode == 125
    assert done.stderr.startswith("Error: user '70000': uid 70000 is not mapped")
    assert done.stderr.count("\n") == 1


def test_the_single_mapping_runs_an_image_of_other_owners(clean: User) -> None:
    script = "wc -l < /proc/self/uid_map; /opt/hello; cat /opt/data/f; rm /opt/hello; ls /opt"
    out = clean.ok(
        "run", "--rm", "--network", "none", "owned", "sh", "-c", script, MINIDOCK_USERNS="single"
    )
    assert out == "1\nhello from 1234\ndata of 4321\ndata\n"
    done = clean.md(
        "run", "--rm", "--network", "none", "-u", "1000", "owned", "id", MINIDOCK_USERNS="single"
    )
    assert done.returncode == 125
    assert "uid 1000 is not mapped" in done.stderr
    assert "unset MINIDOCK_USERNS=single" in done.stderr


def test_files_of_lower_layers_can_be_deleted(clean: User) -> None:
    script = "rm -r /usr /etc/group; rm /bin/cat; test ! -e /bin/cat && test ! -e /usr && echo gone"
    for env in ({}, {"MINIDOCK_USERNS": "single"}):
        out = clean.ok("run", "--rm", "--network", "none", "busybox", "sh", "-c", script, **env)
        assert out == "gone\n"
    # the image is untouched
    assert clean.ok("run", "--rm", "--network", "none", "busybox", "cat", "/etc/group")


def test_exec_and_cp_from_other_processes_then_rm_leaves_nothing(
    clean: User, tmp_path: Path
) -> None:
    cid = clean.ok("run", "-d", "--name", "rl", "--network", "none", "busybox", "sleep", "4321")
    cid = cid.strip()
    assert clean.ok("exec", "rl", "id", "-u") == "0\n"
    clean.ok("exec", "-u", "1000", "rl", "sh", "-c", "mkdir /tmp/d; echo x > /tmp/d/f")
    assert clean.md("exec", "rl", "sh", "-c", "exit 3").returncode == 3
    # cp in and out (as the user: its home is where it may write)
    (clean.home / "in.txt").write_text("from the host\n")
    os.chown(clean.home / "in.txt", clean.uid, clean.gid)
    clean.ok("cp", str(clean.home / "in.txt"), "rl:/tmp/")
    assert clean.ok("exec", "rl", "cat", "/tmp/in.txt") == "from the host\n"
    assert clean.ok("exec", "rl", "stat", "-c", "%u", "/tmp/in.txt") == "0\n"
    clean.ok("cp", "rl:/tmp/d", str(clean.home / "out"))
    assert (clean.home / "out" / "f").read_text() == "x\n"
    assert (clean.home / "out" / "f").stat().st_uid == clean.uid
    assert clean.processes("sleep", "4321")
    # rm -f: the container dies, its files (some of a subordinate uid) all go
    assert clean.ok("rm", "-f", "rl") == "rl\n"
    assert not clean.processes("sleep", "4321")
    assert not (clean.store / "containers" / cid).exists()
    with open("/proc/self/mountinfo") as f:
        assert cid[:12] not in f.read()


def test_a_stopped_container_restarts_and_takes_cp_both_ways(clean: User) -> None:
    script = "cat /etc/x.txt 2>/dev/null; echo ran"
    clean.ok("create", "--name", "stopped", "--network", "none", "busybox", "sh", "-c", script)
    assert clean.ok("start", "-a", "stopped") == "ran\n"
    (clean.home / "x.txt").write_text("x\n")
    os.chown(clean.home / "x.txt", clean.uid, clean.gid)
    clean.ok("cp", str(clean.home / "x.txt"), "stopped:/etc/x.txt")
    assert clean.ok("start", "-a", "stopped") == "x\nran\n"  # (its overlay mounted again)
    clean.ok("cp", "stopped:/etc/x.txt", str(clean.home / "back.txt"))
    assert (clean.home / "back.txt").read_text() == "x\n"
    clean.ok("rm", "stopped")


OWNER = """
import os, sys, time
from pytest_minidock.api import Engine
from pytest_minidock.spec import Overrides
engine = Engine(launcher=sys.argv[1] == "launcher")
for _ in range(int(sys.argv[2])):
    s = engine.run("busybox", Overrides(command=("sleep", sys.argv[3]), network="none",
                                       memory="64m", pids_limit=50))
print(os.getpid(), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["launcher", "direct"])
def test_killing_the_owner_kills_its_containers_and_limits_are_dropped_once(
    clean: User, how: str
) -> None:
    script = clean.home / "owner.py"
    script.write_text(textwrap.dedent(OWNER))
    marker = str(5000 + (how == "launcher"))
    proc = subprocess.Popen(
        clean.argv(clean.python, str(script), how, "2", marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    owner = 0
    try:
        assert proc.stdout is not None
        owner = int(proc.stdout.readline())
        assert len(clean.processes("sleep", marker)) == 2
        os.kill(owner, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while clean.processes("sleep", marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not clean.processes("sleep", marker)
        assert not clean.processes("pytest_minidock.runtime.launcher")
    finally:
        for pid in (owner, proc.pid):
            with contextlib.suppress(ProcessLookupError):
                if pid:
                    os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
    warnings = [line for line in err.splitlines() if line.startswith("minidock:")]
    assert len(warnings) == 1, err
    assert "without --memory, --pids-limit" in warnings[0]
    # what the killed owner left on disk goes at the next start (once its dead processes are
    # reaped: the init of some machines takes a second to do that)
    deadline = time.monotonic() + 10
    while True:
        clean.ok("run", "--rm", "--network", "none", "busybox", "true")
        if not clean.ok("ps", "-aq") or time.monotonic() > deadline:
            break
        time.sleep(0.2)


def test_the_network_choices(clean: User) -> None:
    clean.ok("run", "--rm", "busybox", "true")  # (the bridge: in the user's network holder)
    before = set(os.listdir("/sys/class/net"))  # (other tests may add or remove links)
    out = clean.ok("run", "--rm", "--network", "host", "busybox", "ls", "/sys/class/net")
    after = set(os.listdir("/sys/class/net"))
    assert before & after <= set(out.split()) <= before | after
    assert len(before & after) > 1
    # the host's /sys is bound in (a user namespace may not mount a sysfs of its own there),
    # with the submounts it brings (cgroups, tracing ...): every one of them read-only
    mounts = clean.ok("run", "--rm", "--network", "host", "busybox", "cat", "/proc/mounts")
    sys_mounts = [line.split() for line in mounts.splitlines() if " /sys" in line]
    assert any(m[1] == "/sys" for m in sys_mounts), mounts
    assert any(m[1].startswith("/sys/") for m in sys_mounts), mounts
    writable = [m[1] for m in sys_mounts if "rw" in m[3].split(",")]
    assert writable == [], mounts
    out = clean.ok("run", "--rm", "--network", "none", "busybox", "ls", "/sys/class/net")
    assert out.split() == ["lo"]


def test_a_machine_without_user_namespaces_says_what_to_enable(user: User) -> None:
    """Simulated: a user namespace of the user's own whose limit of user namespaces is 0."""
    require_tool("unshare")
    inner = (
        "echo 0 > /proc/sys/user/max_user_namespaces && exec "
        f"{user.python} -m pytest_minidock run --rm --network none busybox true"
    )
    done = user.run("unshare", "--user", "--map-root-user", "sh", "-c", inner)
    assert done.returncode == 125, done.stderr
    assert done.stderr == (
        "Error: cannot run containers as an ordinary user: user namespaces are disabled "
        "(user.max_user_namespaces = 0); enable them with "
        "`sysctl -w user.max_user_namespaces=15000`\n"
    )


def test_the_full_map_keeps_the_owners_of_image_files_and_rmi_removes_them(clean: User) -> None:
    """The snapshots of ``owned`` are unpacked in the containers' user namespace: files of
    container uid N belong to subordinate uid N (host uid subuid + N - 1), and removing the
    image as the user removes them too (through that namespace)."""
    clean.ok("tag", "owned", "owned2")  # (removed below; the fixture's ``owned`` stays)
    script = "stat -c %u /opt/hello /opt/data; cat /opt/data/f; id -u"
    out = clean.ok("run", "--rm", "--network", "none", "owned2", "sh", "-c", script)
    assert out == "1234\n4321\ndata of 4321\n0\n"
    snaps = clean.store / "snapshots"
    owned = [p for p in snaps.iterdir() if p.name.endswith(".subids")]
    hello = [p / "fs" / "opt" / "hello" for p in owned if (p / "fs" / "opt" / "hello").exists()]
    assert len(hello) == 1
    assert hello[0].stat().st_uid == clean.subuid + 1234 - 1
    data = hello[0].parent / "data"
    assert (data.stat().st_uid, data.stat().st_mode & 0o777) == (clean.subuid + 4321 - 1, 0o700)
    # the single mapping keeps its own snapshot, with the owners flattened
    out = clean.ok(
        "run",
        "--rm",
        "--network",
        "none",
        "owned2",
        "stat",
        "-c",
        "%u",
        "/opt/hello",
        MINIDOCK_USERNS="single",
    )
    assert out == "0\n"
    # a second name of another image made of the same layers: rmi of both, then prune, as the
    # user, leave no snapshot, blob or temp of those layers behind
    clean.ok("rmi", "owned2")
    assert hello[0].exists()  # (``owned`` still uses it)
    clean.ok("rmi", "owned")
    assert not hello[0].exists()
    prune = (
        "from pytest_minidock.api import Engine; r = Engine().store.prune(all_images=True); "
        "print(len(r.deleted_images))"
    )
    assert clean.run(clean.python, "-c", prune).stdout == "1\n"  # busybox
    assert sorted(p.name for p in snaps.iterdir()) == []
    assert list((clean.store / "blobs" / "sha256").iterdir()) == []
    assert list((clean.store / "tmp").iterdir()) == []
    # the fixture's images, back for the other tests
    for tar, ref in (("busybox.tar", "busybox:latest"), ("owned.tar", "owned:latest")):
        clean.ok("import", "--change", 'CMD ["sh"]', str(clean.home / tar), ref)


# ---- snapshots of an earlier boot (a crash may have emptied their files) -------------------------

CHECK = """
import json, sys
from pytest_minidock.api import Engine
store = Engine().store
dirs = [str(d) for d in store.lowerdirs(sys.argv[1])]
print(json.dumps({"lowerdirs": dirs, "counts": [store.checked_snapshots,
                                                store.repaired_snapshots]}))
"""
"""The snapshots of an image, made or checked by a new store as the user: its lower dirs, and
how many snapshots of an earlier boot it checked and unpacked again."""

USERNS = {"full": {}, "single": {"MINIDOCK_USERNS": "single"}}
THIS_BOOT = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
OTHER_BOOT = "00000000-0000-4000-8000-000000000000"


def _lowerdirs(user: User, ref: str, **env: str) -> dict[str, Any]:
    """``CHECK`` as the user in a new process: its answer (the JSON of its last line)."""
    done = user.run(user.python, "-c", CHECK, ref, **env)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return answer


def _owned_snapshot(user: User, userns: str) -> Path:
    """The snapshot of ``owned``'s layer in this map's form, made (or found) in this boot."""
    answer = _lowerdirs(user, "owned", **USERNS[userns])
    assert answer["counts"] == [0, 0]
    snaps = [Path(d).parent for d in answer["lowerdirs"] if Path(d, "opt", "data").is_dir()]
    assert len(snaps) == 1, answer
    assert snaps[0].name.endswith(".subids") == (userns == "full")
    return snaps[0]


def _made_in_another_boot(snap: Path) -> str:
    """Rewrite the ``size`` marker of ``snap`` (``<size> <boot id>``) as one of another boot;
    the size it names."""
    size, boot = (snap / "size").read_text().split()
    assert boot == THIS_BOOT
    (snap / "size").write_text(f"{size} {OTHER_BOOT}")
    return size


@pytest.mark.parametrize("userns", ["full", "single"])
def test_an_intact_snapshot_of_an_earlier_boot_is_checked_once_and_kept(
    clean: User, userns: str
) -> None:
    """With the full map the check runs in the containers' user namespace (``as_owner``): the
    snapshot holds a 0700 directory of a subordinate uid that the user cannot search."""
    snap = _owned_snapshot(clean, userns)
    size = _made_in_another_boot(snap)
    data = snap / "fs" / "opt" / "data" / "f"
    inodes = (snap.stat().st_ino, (snap / "fs").stat().st_ino, data.stat().st_ino)
    assert _lowerdirs(clean, "owned", **USERNS[userns])["counts"] == [1, 0]
    assert (snap.stat().st_ino, (snap / "fs").stat().st_ino, data.stat().st_ino) == inodes
    assert (snap / "size").read_text() == f"{size} {THIS_BOOT}"
    assert (snap / "size").stat().st_uid == clean.uid
    assert list((clean.store / "tmp").iterdir()) == []
    # marked with this boot: a new store does not check it again
    assert _lowerdirs(clean, "owned", **USERNS[userns])["counts"] == [0, 0]
    assert data.stat().st_ino == inodes[2]


@pytest.mark.parametrize("userns", ["full", "single"])
def test_a_snapshot_of_an_earlier_boot_with_an_emptied_file_is_unpacked_again(
    clean: User, userns: str
) -> None:
    """What a crash leaves of a file never synced: its name, without its content."""
    snap = _owned_snapshot(clean, userns)
    size = _made_in_another_boot(snap)
    data = snap / "fs" / "opt" / "data" / "f"
    hello = snap / "fs" / "opt" / "hello"
    full = userns == "full"
    owners = (clean.subuid + 4321 - 1, clean.subuid + 1234 - 1) if full else (clean.uid,) * 2
    assert (data.stat().st_uid, hello.stat().st_uid) == owners
    os.truncate(data, 0)
    assert _lowerdirs(clean, "owned", **USERNS[userns])["counts"] == [1, 1]
    assert data.read_bytes() == b"data of 4321\n"
    assert (data.stat().st_uid, hello.stat().st_uid) == owners
    assert (data.parent.stat().st_uid, data.parent.stat().st_mode & 0o777) == (owners[0], 0o700)
    assert (snap / "size").read_text() == f"{size} {THIS_BOOT}"
    assert list((clean.store / "tmp").iterdir()) == []
    assert _lowerdirs(clean, "owned", **USERNS[userns])["counts"] == [0, 0]
    script = "stat -c %u /opt/data/f; cat /opt/data/f"
    out = clean.ok(
        "run", "--rm", "--network", "none", "owned", "sh", "-c", script, **USERNS[userns]
    )
    assert out == ("4321\n" if full else "0\n") + "data of 4321\n"
