"""Every container command through the real ``minidock`` CLI, compared with what docker prints/does.

Each test runs ``python -m pytest_minidock --root ROOT …`` against one session store holding
``busybox:latest`` and removes the containers, volumes and images it made, even when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_minidock.api import Engine
from pytest_minidock.errors import MinidockError
from pytest_minidock.spec import Overrides
from tests.conftest import ROOTLESS, make_busybox_root, root_only

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = [pytest.mark.privileged, pytest.mark.rootless]

HEX64 = re.compile(r"^[0-9a-f]{64}$")
RECENTLY = r"(Less than a second|\d+ seconds?)"
DEFAULT_CAPS = 0xA80425FB  # docker's default set, as CapEff shows it
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


@pytest.fixture(scope="session")
def cli_root(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Path:
    """A store holding busybox:latest (``CMD ["sh"]``), shared by the tests of this file."""
    return make_busybox_root(tmp_path_factory.mktemp("cli-root"), busybox_rootfs)


@pytest.fixture(scope="session")
def cli_environ(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of the CLI subprocesses: byte code cached in a temp dir, so that ~150
    interpreter starts do not each recompile the modules being edited."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path_factory.mktemp("pycache"))
    return env


class Cli:
    """``minidock --root ROOT …`` as a subprocess."""

    def __init__(self, root: Path, environ: dict[str, str] | None = None) -> None:
        self.root = root
        self.environ = environ
        self.engine = Engine(root)

    def __call__(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest_minidock", "--root", str(self.root), *args],
            capture_output=True,
            text=True,
            input=input,
            env=self.environ if env is None else env,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str, **kwargs: Any) -> str:
        """The stdout of a command that must succeed."""
        res = self(*args, **kwargs)
        assert res.returncode == 0, (args, res.returncode, res.stderr)
        return res.stdout

    def cid(self, *args: str) -> str:
        """``run -d``/``create``: the new container's ID."""
        cid = self.ok(*args).strip()
        assert HEX64.match(cid), cid
        return cid

    def inspect(self, name: str) -> dict[str, Any]:
        objs = json.loads(self.ok("inspect", name))
        assert len(objs) == 1
        return dict(objs[0])

    def bg(self, *command: str, name: str | None = None, **overrides: Any) -> str:
        """A busybox container started detached through ``Engine`` (set-up, not under test)."""
        ov = Overrides(command=command, **overrides)
        return self.engine.run("busybox", ov, name=name, keep=True, detached=True).id

    def wait(self, cid: str) -> int:
        return self.engine.wait(cid, timeout=30)


@pytest.fixture
def mini(cli_root: Path, cli_environ: dict[str, str]) -> Iterator[Cli]:
    """The CLI; afterwards every container, volume and image the test made is removed."""
    cli = Cli(cli_root, cli_environ)
    engine = cli.engine
    volumes = engine.runtime.state.volumes
    before = set(engine.runtime.state.ids())
    vols_before = set(os.listdir(volumes)) if volumes.is_dir() else set()
    images_before = {str(r.id) for r in engine.store.images()}
    yield cli
    for cid in set(engine.runtime.state.ids()) - before:
        with contextlib.suppress(MinidockError):
            engine.remove(cid, force=True, volumes=True)
    if volumes.is_dir():
        for name in set(os.listdir(volumes)) - vols_before:
            shutil.rmtree(volumes / name, ignore_errors=True)
    for record in engine.store.images():
        if str(record.id) not in images_before:
            with contextlib.suppress(MinidockError):
                engine.remove_image(str(record.id), force=True)


def until(done: Callable[[], object], what: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def ps_rows(output: str) -> list[dict[str, str]]:
    """``ps`` output as dicts, columns cut where the header's columns start (as docker aligns)."""
    lines = output.rstrip("\n").split("\n")
    header = lines[0]
    names = re.split(r" {2,}", header.strip())
    starts = [header.index(n) for n in names]
    rows = []
    for line in lines[1:]:
        cells = [
            line[a:b].strip() for a, b in zip(starts, [*starts[1:], len(line) + 1], strict=True)
        ]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def status_caps(status: str, field: str) -> int:
    """A capability mask (``CapEff``, ``CapBnd``) from a ``/proc/PID/status`` text."""
    found = re.search(rf"^{field}:\s*([0-9a-f]+)$", status, re.M)
    assert found is not None, status
    return int(found.group(1), 16)


def cgroup_file(pid: int, controller: str, v1_file: str, v2_file: str) -> str:
    """Read a controller's file of the cgroup ``pid`` is in (v1 hierarchy, else the v2 one)."""
    mounts: list[tuple[str, str, str]] = []  # (fstype, mount point, super options)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, opts = right.split(" ")
        mounts.append((fstype, left.split(" ")[4], opts))
    unified = ""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            for fstype, point, opts in mounts:
                if fstype == "cgroup" and controller in opts.split(","):
                    return Path(point + path, v1_file).read_text()
        if controllers == "":
            unified = path
    for fstype, point, _ in mounts:
        if fstype == "cgroup2":
            return Path(point + unified, v2_file).read_text()
    raise AssertionError(f"no {controller} cgroup for {pid}")


# -- create / start / run ---------------------------------------------------------------------


def test_create_start_wait_prints_the_exit_code(mini: Cli) -> None:
    cid = mini.cid("create", "busybox", "sh", "-c", "echo hello; exit 4")
    assert mini.engine.container(cid).state.status == "created"
    assert mini.ok("start", cid) == f"{cid}\n"  # docker echoes the argument
    assert mini.ok("wait", cid) == "4\n"
    assert mini.ok("logs", cid) == "hello\n"


def test_start_attach_exits_with_the_container_code(mini: Cli) -> None:
    cid = mini.cid("create", "busybox", "sh", "-c", "echo out; echo err >&2; exit 5")
    res = mini("start", "-a", cid)
    assert (res.returncode, res.stdout, res.stderr) == (5, "out\n", "err\n")
    # attaching again re-runs it, as docker does; the container outlives both CLI calls
    assert mini("start", "-a", cid).returncode == 5
    assert mini.engine.container(cid).state.exit_code == 5


def test_run_in_the_foreground_prints_both_streams_and_exits_with_the_code(mini: Cli) -> None:
    res = mini("run", "busybox", "sh", "-c", "echo to-out; echo to-err >&2; exit 3")
    assert (res.returncode, res.stdout, res.stderr) == (3, "to-out\n", "to-err\n")


def test_run_interactive_passes_stdin(mini: Cli) -> None:
    res = mini("run", "--rm", "-i", "busybox", "cat", input="hi\nthere\n")
    assert (res.returncode, res.stdout) == (0, "hi\nthere\n")
    # without -i the container's stdin is /dev/null, as with docker
    res = mini("run", "--rm", "busybox", "cat", input="ignored\n")
    assert (res.returncode, res.stdout) == (0, "")


def test_run_rm_leaves_no_container(mini: Cli) -> None:
    before = set(mini.engine.runtime.state.ids())
    assert mini("run", "--rm", "busybox", "sh", "-c", "exit 2").returncode == 2
    assert set(mini.engine.runtime.state.ids()) == before
    assert set(mini.ok("ps", "-a", "-q").split()) == {cid[:12] for cid in before}


@pytest.mark.netns
def test_run_rm_of_a_payload_that_exits_at_once_frees_its_lease(mini: Cli) -> None:
    """``true`` exits before the starter records its NetworkSettings; the monitor's removal
    must free the lease all the same (else every such run leaked an address of the subnet)."""
    from pytest_minidock.runtime.network import Networks

    for _ in range(3):
        assert mini("run", "--rm", "busybox", "true").returncode == 0
    assert Networks(mini.root).default().endpoints == ()


@pytest.mark.netns
def test_a_subnet_full_of_leases_of_gone_containers_is_reclaimed(mini: Cli) -> None:
    """Leases whose containers are gone (a crash mid-removal) are freed when a start finds the
    subnet full, instead of failing with 'no free address left'."""
    from pytest_minidock.runtime.network import Networks

    mini.ok("network", "create", "--subnet", "10.251.7.0/29", "tiny")
    try:
        nets = Networks(mini.root)
        ghosts = 0
        with contextlib.suppress(MinidockError):
            while True:  # every host address of the /29 but the gateway's
                nets.lease("tiny", f"{ghosts:064x}", name=f"ghost{ghosts}")
                ghosts += 1
        assert ghosts == 5
        res = mini("run", "--rm", "--network", "tiny", "busybox", "true")
        assert res.returncode == 0, res.stderr
        assert nets.get("tiny").endpoints == ()
    finally:
        mini.ok("network", "rm", "tiny")


def test_run_detached_prints_the_full_id(mini: Cli) -> None:
    cid = mini.cid("run", "-d", "busybox", "sleep", "30")
    assert mini.engine.container(cid).state.running()


def test_a_foreground_container_outlives_the_cli_until_rm(mini: Cli) -> None:
    # docker keeps every container not run with --rm; the next CLI call must not clean it up
    res = mini("run", "--name", "kept-fg", "busybox", "true")
    assert res.returncode == 0, res.stderr
    mini.ok("run", "--rm", "busybox", "true")  # runs the leftover clean-up
    rows = [r for r in ps_rows(mini.ok("ps", "-a")) if r["NAMES"] == "kept-fg"]
    assert len(rows) == 1
    assert re.fullmatch(rf"Exited \(0\) {RECENTLY} ago", rows[0]["STATUS"])
    assert mini.ok("rm", "kept-fg") == "kept-fg\n"


# -- ps -----------------------------------------------------------------------------------------


def test_ps_columns_and_statuses(mini: Cli) -> None:
    up = mini.bg("sleep", "30", name="ps-up")
    gone = mini.bg("sh", "-c", "exit 7", name="ps-gone")
    made = mini.cid("create", "--name", "ps-made", "busybox", "echo", "a-long-command-line")
    assert mini.wait(gone) == 7
    out = mini.ok("ps")
    header = out.split("\n")[0]
    assert re.split(r" {2,}", header) == [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ]
    running = {r["NAMES"]: r for r in ps_rows(out)}
    assert "ps-up" in running
    assert "ps-gone" not in running
    assert "ps-made" not in running
    row = running["ps-up"]
    assert row["CONTAINER ID"] == up[:12]
    assert row["IMAGE"] == "busybox"
    assert row["COMMAND"] == '"sleep 30"'
    assert re.fullmatch(rf"{RECENTLY} ago", row["CREATED"])
    assert re.fullmatch(rf"Up {RECENTLY}", row["STATUS"])
    assert row["PORTS"] == ""

    every = {r["NAMES"]: r for r in ps_rows(mini.ok("ps", "-a"))}
    assert re.fullmatch(rf"Exited \(7\) {RECENTLY} ago", every["ps-gone"]["STATUS"])
    assert every["ps-made"]["STATUS"] == "Created"
    assert every["ps-made"]["COMMAND"] == '"echo a-long-command…"'  # docker's 20-rune ellipsis

    quiet = mini.ok("ps", "-q").split()
    assert up[:12] in quiet
    assert gone[:12] not in quiet
    quiet = mini.ok("ps", "-a", "-q").split()
    assert {up[:12], gone[:12], made[:12]} <= set(quiet)
    assert all(re.fullmatch(r"[0-9a-f]{12}", x) for x in quiet)


# -- logs ---------------------------------------------------------------------------------------


def test_logs_tail_and_timestamps(mini: Cli) -> None:
    cid = mini.bg("sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done")
    mini.wait(cid)
    assert mini.ok("logs", cid) == "line1\nline2\nline3\nline4\nline5\n"
    assert mini.ok("logs", "--tail", "2", cid) == "line4\nline5\n"
    assert mini.ok("logs", "-n", "0", cid) == ""
    stamped = mini.ok("logs", "-t", "--tail", "1", cid)
    # docker's RFC3339NanoFixed: always nine digits of fraction, UTC
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z line5\n", stamped), stamped


def test_logs_follow_ends_when_the_container_exits(mini: Cli) -> None:
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo line$i; sleep 0.1; done"
    cid = mini.cid("run", "-d", "busybox", "sh", "-c", script)
    t0 = time.monotonic()
    res = mini("logs", "-f", cid)  # subprocess's timeout fails the test if it never ends
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert res.stdout == "".join(f"line{i}\n" for i in range(1, 11))
    assert elapsed > 0.3  # it did follow a running container
    assert mini.engine.container(cid).state.status == "exited"


def test_logs_keep_stdout_and_stderr_apart_and_in_order(mini: Cli) -> None:
    script = "echo o1; sleep 0.05; echo e1 >&2; sleep 0.05; echo o2; sleep 0.05; echo e2 >&2"
    cid = mini.bg("sh", "-c", script)
    mini.wait(cid)
    res = mini("logs", cid)
    assert (res.stdout, res.stderr) == ("o1\no2\n", "e1\ne2\n")
    res = mini("logs", "-t", cid)
    merged = sorted(
        line.split(" ", 1) for line in (res.stdout + res.stderr).splitlines() if line.strip()
    )
    assert [text for _, text in merged] == ["o1", "e1", "o2", "e2"]


# -- inspect / top ------------------------------------------------------------------------------


def test_inspect_a_container(mini: Cli) -> None:
    cid = mini.cid("run", "-d", "--name", "insp", "-e", "FOO=bar", "busybox", "sleep", "30")
    obj = mini.inspect("insp")
    assert obj["Id"] == cid
    assert obj["Name"] == "/insp"
    state = obj["State"]
    assert (state["Status"], state["Running"], state["ExitCode"]) == ("running", True, 0)
    assert state["Pid"] > 0
    assert "sleep" in Path(f"/proc/{state['Pid']}/cmdline").read_text()
    assert "FOO=bar" in obj["Config"]["Env"]
    assert "HOSTNAME=" + cid[:12] in obj["Config"]["Env"]
    assert obj["Config"]["Image"] == "busybox"
    assert mini.ok("inspect", "-f", "{{.State.Pid}}", cid) == f"{state['Pid']}\n"
    assert mini.ok("inspect", "--type", "container", "-f", "{{.Name}}", "insp") == "/insp\n"
    res = mini("inspect", "--type", "image", "insp")
    assert res.returncode == 1
    assert "insp" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1

    mini.engine.kill(cid)
    assert mini.wait(cid) == 137
    assert mini.ok("inspect", "-f", "{{.State.ExitCode}}", "insp") == "137\n"
    state = mini.inspect("insp")["State"]
    assert (state["Status"], state["Running"], state["Pid"]) == ("exited", False, 0)
    assert state["FinishedAt"] >= state["StartedAt"] > "2000"


def test_inspect_an_image_still_works(mini: Cli) -> None:
    image_id = str(mini.engine.store.resolve("busybox").id)
    assert mini.ok("inspect", "-f", "{{.Id}}", "busybox") == image_id + "\n"
    assert mini.ok("inspect", "--type", "image", "-f", "{{.Id}}", "busybox") == image_id + "\n"
    obj = mini.inspect("busybox:latest")
    assert obj["Config"]["Cmd"] == ["sh"]
    res = mini("inspect", "--type", "container", "busybox")
    assert res.returncode == 1


def test_inspect_format_prints_values_as_go_templates_do(mini: Cli) -> None:
    mini.bg("sleep", "30", name="gofmt")
    assert mini.ok("inspect", "-f", "{{.State.Running}}", "gofmt") == "true\n"
    assert mini.ok("inspect", "-f", "{{.Config.Cmd}}", "gofmt") == "[sleep 30]\n"


def test_top_shows_the_payload_processes_only(mini: Cli) -> None:
    cid = mini.bg("sh", "-c", "sleep 31 & exec sleep 32")
    pid1 = mini.engine.container(cid).state.pid
    cmdline = Path(f"/proc/{pid1}/cmdline")
    until(lambda: cmdline.read_bytes() == b"sleep\x0032\x00" and _children(pid1), "sleep 32")
    rows = ps_rows(mini.ok("top", cid))
    assert sorted(r["CMD"] for r in rows) == ["sleep 31", "sleep 32"]
    assert {int(r["PID"]) for r in rows} <= {pid1, *map(int, _children(pid1))}
    assert str(os.getpid()) not in {r["PID"] for r in rows}
    assert {r["UID"] for r in rows} == {str(os.getuid())}  # the host's view: root's, or ours
    mini.engine.stop(cid, timeout=0)
    res = mini("top", cid)
    assert res.returncode == 1
    assert "not running" in res.stderr


def _children(pid: int) -> list[str]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return path.read_text().split() if path.exists() else []


# -- cp -----------------------------------------------------------------------------------------


def _host_tree(base: Path) -> Path:
    tree = base / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "deep.txt").write_text("deep\n")
    (tree / "sub" / "link").symlink_to("deep.txt")
    (tree / "top.txt").write_text("top\n")
    os.chmod(tree / "top.txt", 0o764)
    return tree


def _listing(base: Path) -> set[str]:
    return {str(p.relative_to(base)) for p in base.rglob("*")}


def test_cp_from_the_host_into_a_container(mini: Cli, tmp_path: Path) -> None:
    src = tmp_path / "file.txt"
    src.write_text("f1\n")
    if not ROOTLESS:  # (an ordinary user may not; their own ids are root's in the container)
        os.chown(src, 1234, 4321)
    tree = _host_tree(tmp_path)
    before = _listing(tmp_path)
    cid = mini.bg("sleep", "30")
    mini.ok("cp", str(src), f"{cid}:/tmp")  # into a directory: keeps the name
    mini.ok("cp", str(src), f"{cid}:/tmp/renamed.txt")  # a new path: that name
    mini.ok("cp", str(tree), f"{cid}:/srv")  # a tree as a new path
    mini.ok("cp", str(tree), f"{cid}:/tmp")  # a tree into a directory
    script = (
        "cat /tmp/file.txt /tmp/renamed.txt /srv/top.txt /tmp/tree/sub/deep.txt;"
        " readlink /srv/sub/link; stat -c '%u:%g %a' /tmp/file.txt /srv/top.txt"
    )
    out = mini.engine.exec(cid, ["sh", "-c", script], capture=True).stdout.decode()
    # docker: copies into a container belong to root there; modes are kept
    assert out == "f1\nf1\ntop\ndeep\ndeep.txt\n0:0 644\n0:0 764\n"
    mini.ok("cp", "-a", str(src), f"{cid}:/tmp/archived")  # -a keeps the uid/gid
    owner = mini.engine.exec(cid, ["stat", "-c", "%u:%g", "/tmp/archived"], capture=True).stdout
    assert owner == (f"{os.getuid()}:{os.getgid()}\n" if ROOTLESS else "1234:4321\n").encode()
    assert _listing(tmp_path) == before  # nothing left on the host


def test_cp_from_a_container_to_the_host(mini: Cli, tmp_path: Path) -> None:
    setup = "mkdir -p /t/sub; echo z > /t/sub/z; ln -s z /t/sub/zl; chown 33:33 /t/sub/z"
    cid = mini.bg("sh", "-c", setup + "; exec sleep 30")
    cmdline = Path(f"/proc/{mini.engine.container(cid).state.pid}/cmdline")
    until(lambda: cmdline.read_bytes().startswith(b"sleep"), "the set-up script")
    out = tmp_path / "out"
    out.mkdir()
    mini.ok("cp", f"{cid}:/etc/passwd", str(out))  # into a directory
    mini.ok("cp", f"{cid}:/etc/group", str(out / "grp"))  # as a new path
    mini.ok("cp", f"{cid}:/t", str(out))  # a tree into a directory
    mini.ok("cp", f"{cid}:/t/", str(out / "t2"))  # a tree as a new path
    assert (out / "passwd").read_text().startswith("root:x:0:0:")
    assert (out / "grp").read_text().startswith("root:x:0:")
    for t in (out / "t", out / "t2"):
        assert (t / "sub" / "z").read_text() == "z\n"
        assert os.readlink(t / "sub" / "zl") == "z"
        # docker: copies on the host belong to the user who ran cp
        assert (os.stat(t / "sub" / "z").st_uid, os.stat(t / "sub" / "z").st_gid) == (
            os.getuid(),
            os.getgid(),
        )
    mini.ok("cp", "-a", f"{cid}:/t/sub/z", str(out / "kept"))
    kept = (os.stat(out / "kept").st_uid, os.stat(out / "kept").st_gid)
    # rootless, cp writes on the host as the user, who may not give files away
    assert kept == ((os.getuid(), os.getgid()) if ROOTLESS else (33, 33))
    assert _listing(tmp_path) == {
        "out",
        "out/passwd",
        "out/grp",
        "out/kept",
        *(f"out/{t}{rest}" for t in ("t", "t2") for rest in ("", "/sub", "/sub/z", "/sub/zl")),
    }


def test_cp_out_of_and_into_a_stopped_container(mini: Cli, tmp_path: Path) -> None:
    cid = mini.bg("sh", "-c", "echo made > /made.txt")
    assert mini.wait(cid) == 0
    mini.ok("cp", f"{cid}:/made.txt", str(tmp_path / "made.txt"))
    assert (tmp_path / "made.txt").read_text() == "made\n"
    (tmp_path / "in.txt").write_text("in\n")
    mini.ok("cp", str(tmp_path / "in.txt"), f"{cid}:/in.txt")
    res = mini("start", "-a", cid)  # the change is there on the next start
    assert res.returncode == 0
    mini.ok("cp", f"{cid}:/in.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_text() == "in\n"
    assert sorted(os.listdir(tmp_path)) == ["back.txt", "in.txt", "made.txt"]


def test_cp_of_a_missing_source_is_a_one_line_error(mini: Cli, tmp_path: Path) -> None:
    cid = mini.bg("sleep", "30")
    (tmp_path / "dest").mkdir()
    for args in (
        (f"{cid}:/no/such/file", str(tmp_path / "dest")),
        (f"{cid}:/nosuch", str(tmp_path / "dest" / "new")),
        (str(tmp_path / "nosuch"), f"{cid}:/tmp"),
        (str(tmp_path / "dest"), f"{cid}:/no/such/dir/x"),
    ):
        res = mini("cp", *args)
        assert res.returncode == 1, args
        assert res.stderr.startswith("Error: "), res.stderr
        assert res.stderr.count("\n") == 1, res.stderr
    assert _listing(tmp_path) == {"dest"}  # no .minidock-cp-* left behind


# -- commit -------------------------------------------------------------------------------------


def _top_layer_names(engine: Engine, ref: str) -> set[str]:
    img = engine.store.image(ref)
    desc = img.manifest().layers[-1]
    with engine.store.blobs.open(desc.digest) as f, tarfile.open(fileobj=f, mode="r|*") as t:
        return {m.name.rstrip("/") for m in t}


def test_commit_keeps_the_changes_but_not_the_runtime_stubs(mini: Cli) -> None:
    script = "mkdir /data; echo xx > /data/x; rm /bin/vi; hostname; cat /etc/hosts > /dev/null"
    assert mini("run", "--name", "to-commit", "busybox", "sh", "-c", script).returncode == 0
    try:
        image_id = mini.ok("commit", "to-commit", "newimg:1").strip()
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", image_id)
        res = mini(
            "run", "--rm", "newimg:1", "sh", "-c", "cat /data/x; test ! -e /bin/vi && echo no-vi"
        )
        assert (res.returncode, res.stdout) == (0, "xx\nno-vi\n")
        names = _top_layer_names(mini.engine, "newimg:1")
        assert {"data", "data/x", "bin/.wh.vi"} <= names
        for stub in ("etc/hosts", "etc/hostname", "etc/resolv.conf", "proc", "dev", "sys"):
            assert stub not in names  # busybox has none of them: the runtime made them
        assert "etc" not in names  # /etc was only copied up to hold those stubs

        mini.ok("commit", "-c", 'CMD ["cat","/data/x"]', "to-commit", "newimg:2")
        res = mini("run", "--rm", "newimg:2")
        assert (res.returncode, res.stdout) == (0, "xx\n")
        images = mini.ok("images")
        assert re.search(r"^newimg\s+1\s", images, re.M)
        assert re.search(r"^newimg\s+2\s", images, re.M)
    finally:
        for ref in ("newimg:2", "newimg:1"):
            with contextlib.suppress(MinidockError):
                mini.engine.remove_image(ref, force=True)


def test_commit_keeps_an_etc_hosts_the_image_had_and_adds_none(mini: Cli, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 from-the-image\n")
    mini.cid("create", "--name", "hosts-parent", "busybox", "true")
    try:
        mini.ok("cp", str(hosts), "hosts-parent:/etc/hosts")  # into the stopped container
        mini.ok("commit", "hosts-parent", "hostsimg:1")
        assert {"etc", "etc/hosts"} <= _top_layer_names(mini.engine, "hostsimg:1")
        # at run time the runtime's /etc/hosts is mounted over the image's, as in docker
        res = mini("run", "--name", "hosts-child", "hostsimg:1", "cat", "/etc/hosts")
        assert res.returncode == 0, res.stderr
        assert "localhost" in res.stdout
        assert "from-the-image" not in res.stdout
        mini.ok("commit", "hosts-child", "hostsimg:2")
        names = _top_layer_names(mini.engine, "hostsimg:2")
        assert not {"etc", "etc/hosts", "etc/hostname", "etc/resolv.conf"} & names
    finally:
        for name in ("hosts-child", "hosts-parent"):
            with contextlib.suppress(MinidockError):
                mini.engine.remove(name, force=True)
        for ref in ("hostsimg:2", "hostsimg:1"):
            with contextlib.suppress(MinidockError):
                mini.engine.remove_image(ref, force=True)


# -- volumes and mounts -------------------------------------------------------------------------


def test_named_volume_is_shared_then_removed(mini: Cli) -> None:
    assert mini.ok("volume", "create", "v1") == "v1\n"
    mini.ok("run", "--rm", "-v", "v1:/data", "busybox", "sh", "-c", "echo shared > /data/f")
    res = mini("run", "--rm", "-v", "v1:/data", "busybox", "cat", "/data/f")
    assert (res.returncode, res.stdout) == (0, "shared\n")
    assert re.search(r"^local\s+v1$", mini.ok("volume", "ls"), re.M)
    (info,) = json.loads(mini.ok("volume", "inspect", "v1"))
    assert (info["Name"], info["Driver"], info["Scope"]) == ("v1", "local", "local")
    assert Path(info["Mountpoint"], "f").read_text() == "shared\n"

    user = mini.cid("create", "-v", "v1:/data", "busybox", "true")
    mounts = mini.inspect(user)["Mounts"]
    assert mounts == [
        {
            "Type": "volume",
            "Name": "v1",
            "Source": info["Mountpoint"],
            "Destination": "/data",
            "Driver": "local",
            "Mode": "z",
            "RW": True,
            "Propagation": "",
        }
    ]
    res = mini("volume", "rm", "v1")  # docker refuses to remove a volume in use
    assert res.returncode == 1
    assert "in use" in res.stderr
    mini.ok("rm", user)
    assert mini.ok("volume", "rm", "v1") == "v1\n"
    assert not re.search(r"\sv1$", mini.ok("volume", "ls"), re.M)
    assert not Path(info["Mountpoint"]).exists()


def test_bind_mounts_read_write_and_read_only(mini: Cli, tmp_path: Path) -> None:
    res = mini("run", "--rm", "-v", f"{tmp_path}:/mnt", "busybox", "sh", "-c", "echo rw > /mnt/f")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "f").read_text() == "rw\n"
    res = mini(
        "run", "--name", "ro-bind", "-v", f"{tmp_path}:/mnt:ro", "busybox", "sh", "-c",
        "cat /mnt/f; echo no > /mnt/g",
    )  # fmt: skip
    assert res.returncode != 0
    assert res.stdout == "rw\n"
    assert "Read-only file system" in res.stderr
    assert not (tmp_path / "g").exists()
    (mount,) = mini.inspect("ro-bind")["Mounts"]
    assert (mount["Type"], mount["Source"], mount["Destination"], mount["RW"]) == (
        "bind",
        str(tmp_path),
        "/mnt",
        False,
    )


def test_anonymous_volume_goes_with_rm_v(mini: Cli) -> None:
    cid = mini.cid("run", "-d", "-v", "/scratch", "busybox", "sh", "-c", "echo s > /scratch/s")
    assert mini.wait(cid) == 0
    (mount,) = mini.inspect(cid)["Mounts"]
    assert (mount["Type"], mount["Destination"], mount["RW"]) == ("volume", "/scratch", True)
    assert Path(mount["Source"], "s").read_text() == "s\n"
    assert mount["Name"] in mini.ok("volume", "ls").split()
    assert mini.ok("rm", "-v", cid) == f"{cid}\n"
    assert not Path(mount["Source"]).exists()
    assert mount["Name"] not in mini.ok("volume", "ls").split()


def test_tmpfs_and_a_read_only_root(mini: Cli) -> None:
    res = mini(
        "run", "--rm", "--tmpfs", "/run:size=1m", "busybox", "grep", " /run ", "/proc/mounts"
    )
    assert res.returncode == 0, res.stderr
    fields = res.stdout.split()
    assert fields[:3] == ["tmpfs", "/run", "tmpfs"]
    assert "size=1024k" in fields[3].split(",")

    res = mini("run", "--rm", "--read-only", "busybox", "touch", "/x")
    assert res.returncode == 1
    assert "Read-only file system" in res.stderr  # EROFS
    res = mini(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "busybox", "sh", "-c",
        "touch /tmp/y && echo tmp-ok; grep ' / ' /proc/mounts",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    first, root_mount = res.stdout.splitlines()
    assert first == "tmp-ok"
    assert "ro" in root_mount.split()[3].split(",")


# -- run options --------------------------------------------------------------------------------


def test_workdir_is_created(mini: Cli) -> None:
    res = mini("run", "--rm", "-w", "/newdir/deeper", "busybox", "sh", "-c", "pwd; ls -d /newdir")
    assert (res.returncode, res.stdout) == (0, "/newdir/deeper\n/newdir\n")


def test_user_uid_gid(mini: Cli) -> None:
    res = mini("run", "--rm", "-u", "65534:65534", "busybox", "id")
    assert (res.returncode, res.stdout) == (
        0,
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)\n",
    )
    assert mini("run", "--rm", "-u", "nobody", "busybox", "id", "-u").stdout == "65534\n"


def test_env_and_env_file(mini: Cli, tmp_path: Path) -> None:
    env_file = tmp_path / "vars.env"
    env_file.write_text(
        "# a comment\nA=from-file\n\n   # indented comment\nB=two words  \nC\nD=d\nUNSET_ONE\n"
    )
    res = mini(
        "run", "--rm", "--env-file", str(env_file), "-e", "A=from-e", "-e", "E", "busybox",
        "sh", "-c", 'echo "$A|$B|$C|$D|$E|${UNSET_ONE-unset}"',
        env={**(mini.environ or os.environ), "C": "from-host", "E": "host-e"},
    )  # fmt: skip
    assert (res.returncode, res.stdout) == (0, "from-e|two words  |from-host|d|host-e|unset\n")
    res = mini("run", "--rm", "--env-file", str(tmp_path / "missing"), "busybox", "true")
    assert res.returncode == 125
    assert res.stderr.count("\n") == 1


def test_entrypoint(mini: Cli) -> None:
    res = mini("run", "--rm", "--entrypoint", "echo", "busybox", "hello", "world")
    assert (res.returncode, res.stdout) == (0, "hello world\n")
    # docker takes --entrypoint as one word, never split on spaces
    res = mini("run", "--rm", "--entrypoint", "echo hi", "busybox")
    assert res.returncode == 127
    assert 'exec: "echo hi": executable file not found in $PATH' in res.stderr
    res = mini("run", "--rm", "--entrypoint", "", "busybox", "echo", "reset")
    assert (res.returncode, res.stdout) == (0, "reset\n")


def test_hostname(mini: Cli) -> None:
    res = mini("run", "--rm", "-h", "myhost", "busybox", "sh", "-c", "hostname; echo $HOSTNAME")
    assert (res.returncode, res.stdout) == (0, "myhost\nmyhost\n")


# -- limits -------------------------------------------------------------------------------------


@root_only("cgroup limits need a cgroup the user was delegated; the CI user has none")
def test_memory_limit_oom_kills(mini: Cli) -> None:
    hog = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo survived'
    res = mini("run", "--name", "hog", "--memory", "32m", "busybox", "sh", "-c", hog)
    assert res.returncode == 137
    assert "survived" not in res.stdout
    obj = mini.inspect("hog")
    assert obj["State"]["OOMKilled"] is True
    assert obj["State"]["ExitCode"] == 137
    assert obj["HostConfig"]["Memory"] == 32 * 1024 * 1024


@root_only("cgroup limits need a cgroup the user was delegated; the CI user has none")
def test_pids_limit(mini: Cli) -> None:
    script = "(for i in $(seq 30); do sleep 5 & done); exec sleep 5"

    def sleepers(cid: str) -> int:
        """How many ``sleep 5`` run in the container once its forks have settled."""
        ns = os.stat(f"/proc/{mini.engine.container(cid).state.pid}/ns/pid").st_ino
        count, last = -1, -2
        deadline = time.monotonic() + 5
        while count != last and time.monotonic() < deadline:
            time.sleep(0.1)
            last, count = count, 0
            for entry in filter(str.isdigit, os.listdir("/proc")):
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{entry}/ns/pid").st_ino == ns:
                        count += Path(f"/proc/{entry}/cmdline").read_bytes() == b"sleep\x005\x00"
        return count

    assert sleepers(mini.bg("sh", "-c", script)) == 31  # unlimited: every fork works
    limited = mini.cid("run", "-d", "--pids-limit", "10", "busybox", "sh", "-c", script)
    assert 2 <= sleepers(limited) <= 10
    assert 2 <= mini.ok("top", limited).count("sleep 5") <= 10
    assert "can't fork" in mini("logs", limited).stderr
    assert mini.inspect(limited)["HostConfig"]["PidsLimit"] == 10


@root_only("cgroup limits need a cgroup the user was delegated; the CI user has none")
def test_cpus_is_accepted_and_set_in_the_cgroup(mini: Cli) -> None:
    cid = mini.cid("run", "-d", "--cpus", "0.5", "busybox", "sleep", "30")
    obj = mini.inspect(cid)
    assert obj["HostConfig"]["NanoCpus"] == 500_000_000
    pid = obj["State"]["Pid"]
    try:
        quota, period = cgroup_file(pid, "cpu", "cpu.cfs_quota_us", "cpu.max").split()
    except ValueError:  # v1: the quota file holds the quota only
        quota = cgroup_file(pid, "cpu", "cpu.cfs_quota_us", "cpu.max").strip()
        period = cgroup_file(pid, "cpu", "cpu.cfs_period_us", "cpu.max").strip()
    assert int(quota) / int(period) == 0.5


# -- kill / stop / rm ---------------------------------------------------------------------------


def test_kill_term_with_init_exits_143(mini: Cli) -> None:
    cid = mini.bg("sleep", "30", init=True)
    assert mini.ok("kill", "-s", "TERM", cid) == f"{cid}\n"
    assert mini.wait(cid) == 143
    (row,) = [r for r in ps_rows(mini.ok("ps", "-a")) if r["CONTAINER ID"] == cid[:12]]
    assert re.fullmatch(rf"Exited \(143\) {RECENTLY} ago", row["STATUS"])
    res = mini("kill", cid)
    assert res.returncode == 1
    assert "is not running" in res.stderr


def test_stop_prints_the_name(mini: Cli) -> None:
    mini.bg("sleep", "30", name="stopme", init=True)
    t0 = time.monotonic()
    assert mini.ok("stop", "stopme") == "stopme\n"
    assert time.monotonic() - t0 < 5  # TERM did it, no 10 s grace period
    assert mini.ok("inspect", "-f", "{{.State.ExitCode}}", "stopme") == "143\n"
    assert mini.ok("stop", "stopme") == "stopme\n"  # stopping a stopped container is fine


def test_rm_of_a_running_container_needs_force(mini: Cli) -> None:
    cid = mini.bg("sleep", "30", name="rmme")
    res = mini("rm", "rmme")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1
    assert "container is running" in res.stderr
    assert mini.engine.container(cid).state.running()
    assert mini.ok("rm", "-f", "rmme") == "rmme\n"
    assert cid[:12] not in mini.ok("ps", "-a", "-q").split()
    assert mini("rm", "rmme").returncode == 1


# -- privileges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), DEFAULT_CAPS),
        (("--cap-drop", "NET_RAW"), DEFAULT_CAPS & ~(1 << CAP_NET_RAW)),
        (("--cap-add", "NET_ADMIN"), DEFAULT_CAPS | (1 << CAP_NET_ADMIN)),
        (
            ("--cap-add", "net_admin", "--cap-drop", "CAP_NET_RAW"),
            (DEFAULT_CAPS | 1 << CAP_NET_ADMIN) & ~(1 << CAP_NET_RAW),
        ),
        (("--privileged",), None),  # every capability the host has (000001ffffffffff usually)
    ],
    ids=["default", "drop-net-raw", "add-net-admin", "both", "privileged"],
)
def test_capabilities(mini: Cli, flags: tuple[str, ...], expected: int | None) -> None:
    res = mini("run", "--rm", *flags, "busybox", "cat", "/proc/self/status")
    assert res.returncode == 0, res.stderr
    if expected is None and ROOTLESS:  # a new user namespace has every capability there is
        expected = (1 << int(Path("/proc/sys/kernel/cap_last_cap").read_text()) + 1) - 1
    elif expected is None:
        expected = status_caps(Path("/proc/self/status").read_text(), "CapBnd")
    assert f"{status_caps(res.stdout, 'CapEff'):016x}" == f"{expected:016x}"


# -- regressions: bugs found by this file, fixed in runtime/container.py --------------------------


def test_exec_runs_inside_the_container_cgroups(mini: Cli) -> None:
    """An exec'd process counts against the container's limits (it used to stay outside)."""
    cid = mini.bg("sleep", "30", pids_limit=50)
    out = mini.ok("exec", cid, "sh", "-c", "cat /proc/1/cgroup; echo --; cat /proc/self/cgroup")
    # controllers -> path, as the container's cgroup namespace shows them ("/" = its own group)
    pid1, me = ({c: path for _, c, path in (line.split(":", 2) for line in part.splitlines())}
                for part in out.split("--\n"))  # fmt: skip
    limited = next((c for c in pid1 if "pids" in c.split(",")), "")  # v1 pids, else v2
    assert pid1[limited] == "/"
    assert me[limited] == "/"


def test_cleanup_in_another_root_leaves_our_containers_running(mini: Cli, tmp_path: Path) -> None:
    """cgroups are machine-wide: another root's clean-up must not take ours for its orphans."""
    cid = mini.bg("sleep", "30", pids_limit=50)
    other = tmp_path / "other-root"
    (other / "containers" / f".rm-{'0' * 64}-1").mkdir(parents=True)  # a crash mid-rm
    res = Cli(other, mini.environ)(
        "run", "--rm", "nosuchimage:1", "true"
    )  # any CLI run cleans up first
    assert res.returncode == 125
    time.sleep(0.2)
    assert mini.engine.container(cid).state.running()
