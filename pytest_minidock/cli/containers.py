"""``minidock`` container commands: run, create, start, ps, exec, logs, stop, kill, rm, wait,
inspect, top, cp, commit and volumes — docker's names, flags and output."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~4 ms
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator
    from typing import Any

    from pytest_minidock.api import Engine
    from pytest_minidock.cli.flags import Args
    from pytest_minidock.runtime.state import ContainerRecord
    from pytest_minidock.spec import Overrides

__all__ = ["add_container_commands"]


def _engine(args: argparse.Namespace) -> Engine:
    """The CLI forks its containers' monitors itself (no launcher): it waits for them with
    ``waitpid``, and a launcher would only add a process start to every command."""
    from pytest_minidock.api import Engine

    return Engine(args.root, launcher=False)


def _require_namespaces() -> None:
    """As an ordinary user, containers run in a user namespace (rootless mode): where the machine
    forbids those, say so first thing, in one line naming the setting to change, rather than
    after pulling the image or with a bare errno from the first namespace."""
    from pytest_minidock.capabilities import host_root

    if not host_root():
        from pytest_minidock.runtime.userns import check_available

        check_available()


def _overrides(args: argparse.Namespace, engine: Engine) -> Overrides:
    from pytest_minidock.spec import Overrides, parse_env, parse_labels

    env: list[str] = []
    for path in args.env_file:
        env.extend(engine.env_file(path))
    env.extend(parse_env(args.env, dict(os.environ)))
    return Overrides(
        command=tuple(args.command) if args.command else None,
        # docker takes the whole string as the program: "--entrypoint 'a b'" runs "a b"
        entrypoint=None if args.entrypoint is None else (args.entrypoint,),
        env=tuple(env),
        workdir=args.workdir,
        user=args.user,
        hostname=args.hostname,
        binds=tuple(args.volume),
        tmpfs=tuple(args.tmpfs),
        read_only=args.read_only,
        init=args.init,
        privileged=args.privileged,
        tty=args.tty,
        stdin_open=args.interactive,
        memory=args.memory,
        cpus=args.cpus,
        pids_limit=args.pids_limit,
        stop_signal=args.stop_signal,
        stop_timeout=args.stop_timeout,
        cap_add=tuple(args.cap_add),
        cap_drop=tuple(args.cap_drop),
        labels=parse_labels(args.label),
        network=args.network,
        aliases=tuple(args.network_alias),
        publish=tuple(args.publish),
        publish_all=args.publish_all,
    )


@contextlib.contextmanager
def _raw_terminal(fd: int, enabled: bool) -> Iterator[None]:
    """Put the terminal in raw mode for an interactive ``-it`` session, and restore it."""
    if not enabled or not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def cmd_run(args: argparse.Namespace) -> int:
    _require_namespaces()
    engine = _engine(args)
    record = _create(engine, args, detached=args.detach)
    if args.detach:
        engine.start(record.id, detached=True)
        print(record.id)
        return 0
    return _run_attached(engine, record.id, args)


def _run_attached(engine: Engine, cid: str, args: argparse.Namespace | Args) -> int:
    from pytest_minidock.runtime.container import Stdio

    stdio = Stdio(stdin=0 if args.interactive else None, stdout=1, stderr=2, tty=args.tty)
    with _raw_terminal(0, args.tty and args.interactive):
        started = engine.start(cid, stdio=stdio)

        def forward(signum: int, frame: Any) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(started.pid, signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            _, status = os.waitpid(started.monitor_pid, 0)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _create(engine: Engine, args: argparse.Namespace, *, detached: bool) -> ContainerRecord:
    """``create`` and ``run``: clean what crashed owners left, then create from the flags."""
    from pytest_minidock.cli.registry import ensure_image

    engine.cleanup(networks=False)
    ensure_image(engine, args.image, args.pull)
    return engine.create(
        args.image,
        _overrides(args, engine),
        name=args.name,
        auto_remove=args.rm,
        keep=not args.rm,  # docker keeps it until ``rm``, after ``start -a`` and the CLI's exit
        detached=detached,
    )


def cmd_create(args: argparse.Namespace) -> int:
    record = _create(_engine(args), args, detached=True)
    print(record.id)
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from pytest_minidock.cli.images import for_each

    _require_namespaces()
    engine = _engine(args)
    if args.attach:  # docker attaches to the first container only
        record = engine.container(args.containers[0])
        spec = engine.runtime.spec_of(record)
        from pytest_minidock.cli.flags import Args

        ns = Args(interactive=args.interactive, tty=spec.tty)
        return _run_attached(engine, record.id, ns)
    return for_each(args.containers, lambda name: engine.start(name, detached=True))


def _errors() -> type[Exception]:
    from pytest_minidock.errors import MinidockError

    return MinidockError


def _human_since(iso: str, now: float) -> str:
    from pytest_minidock.cli.images import human_duration

    ts = _parse_time(iso)
    return human_duration(now - ts) if ts else "N/A"


def _parse_time(iso: str) -> float:
    from datetime import datetime

    if not iso:
        return 0.0
    head, _, frac = iso.rstrip("Z").partition(".")
    try:
        base = datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return 0.0
    return base + (float("0." + frac) if frac else 0.0)


def _status(record: ContainerRecord, now: float) -> str:
    st = record.state
    if st.status == "running" and st.running():
        return f"Up {_human_since(st.started_at, now)}"
    if st.status in ("exited", "running"):
        return f"Exited ({st.exit_code}) {_human_since(st.finished_at, now)} ago"
    return st.status.capitalize()


def _command(record: ContainerRecord) -> str:
    argv = record.config.get("Spec", {}).get("argv", [])
    text = " ".join(argv)
    if len(text) > 20:
        text = text[:19] + "…"
    return f'"{text}"'


def cmd_ps(args: argparse.Namespace) -> int:
    from pytest_minidock.cli.images import _table

    engine = _engine(args)
    records = engine.containers(all=args.all)
    if args.quiet:
        for r in records:
            print(r.short_id)
        return 0
    now = time.time()
    rows = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")]
    for r in records:
        rows.append(
            (
                r.short_id,
                r.config.get("Image", ""),
                _command(r),
                f"{_human_since(r.created, now)} ago",
                _status(r, now),
                "",
                r.name,
            )
        )
    _table(rows, sys.stdout)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from pytest_minidock.runtime.container import Stdio
    from pytest_minidock.spec import parse_env

    _require_namespaces()
    engine = _engine(args)
    stdio = Stdio(stdin=0 if args.interactive else None, stdout=1, stderr=2, tty=args.tty)
    with _raw_terminal(0, args.tty and args.interactive):
        result = engine.exec(
            args.container,
            args.command,
            env=parse_env(args.env, dict(os.environ)),
            workdir=args.workdir,
            user=args.user,
            stdio=stdio,
        )
    return result.exit_code


def cmd_logs(args: argparse.Namespace) -> int:
    from pytest_minidock.runtime.logs import follow, read_logs

    engine = _engine(args)
    record = engine.container(args.container)
    path = record.dir / "log"
    if args.follow:
        records = follow(
            path,
            still_running=lambda: engine.runtime.state.read_state(record.id).running(),
            tail=args.tail,
        )
    else:
        records = iter(read_logs(path, tail=args.tail))
    for rec in records:
        out = sys.stdout.buffer if rec.stream == "stdout" else sys.stderr.buffer
        if args.timestamps:
            out.write(rec.time.encode() + b" ")
        out.write(rec.data)
        out.flush()
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from pytest_minidock.cli.images import for_each

    engine = _engine(args)
    return for_each(args.containers, lambda name: engine.stop(name, timeout=args.time))


def cmd_kill(args: argparse.Namespace) -> int:
    from pytest_minidock.cli.images import for_each
    from pytest_minidock.spec import signal_number

    engine = _engine(args)
    return for_each(args.containers, lambda name: engine.kill(name, signal_number(args.signal)))


def cmd_rm(args: argparse.Namespace) -> int:
    from pytest_minidock.cli.images import for_each

    engine = _engine(args)
    return for_each(
        args.containers, lambda name: engine.remove(name, force=args.force, volumes=args.volumes)
    )


def cmd_wait(args: argparse.Namespace) -> int:
    engine = _engine(args)
    for name in args.containers:
        print(engine.wait(name))
    return 0


def container_inspect(engine: Engine, record: ContainerRecord) -> dict[str, Any]:
    """Docker's ``container inspect`` object (the fields that have a meaning here)."""
    st = record.state
    spec = record.config.get("Spec", {})
    running = st.running()
    return {
        "Id": record.id,
        "Created": record.created,
        "Path": (spec.get("argv") or [""])[0],
        "Args": (spec.get("argv") or [""])[1:],
        "State": {
            "Status": "running" if running else ("exited" if st.status == "running" else st.status),
            "Running": running,
            "Paused": False,
            "OOMKilled": st.oom_killed,
            "Dead": False,
            "Pid": st.pid if running else 0,
            "ExitCode": st.exit_code,
            "Error": st.error,
            "StartedAt": st.started_at or "0001-01-01T00:00:00Z",
            "FinishedAt": st.finished_at or "0001-01-01T00:00:00Z",
        },
        "Image": record.config.get("ImageID", ""),
        "Name": "/" + record.name,
        "RestartCount": st.restart_count,
        "HostConfig": {
            "AutoRemove": record.config.get("AutoRemove", False),
            "Privileged": spec.get("privileged", False),
            "ReadonlyRootfs": spec.get("read_only", False),
            "Init": spec.get("init", False),
            "NetworkMode": spec.get("network", "default"),
            "CapAdd": spec.get("cap_add") or None,
            "CapDrop": spec.get("cap_drop") or None,
            "PidsLimit": spec.get("pids_limit"),
            "Memory": _memory_bytes(spec.get("memory")),
            "NanoCpus": _nano_cpus(spec.get("cpus")),
            "Binds": _raw_binds(spec) or None,
            "Tmpfs": {
                m["target"]: m.get("options", "")
                for m in spec.get("mounts", [])
                if m.get("kind") == "tmpfs"
            }
            or None,
        },
        "Mounts": _docker_mounts(engine, record),
        "NetworkSettings": record.config.get("NetworkSettings")
        or {"Networks": {}, "Ports": {}, "IPAddress": "", "Gateway": ""},
        "Config": {
            "Hostname": spec.get("hostname", ""),
            "ExposedPorts": {p: {} for p in spec.get("exposed_ports", [])} or None,
            "User": spec.get("user", ""),
            "Tty": spec.get("tty", False),
            "OpenStdin": spec.get("stdin_open", False),
            "Env": spec.get("env", []),
            "Cmd": spec.get("argv", []),
            "Image": record.config.get("Image", ""),
            "WorkingDir": spec.get("workdir", ""),
            "Labels": spec.get("labels", {}),
            "StopSignal": spec.get("stop_signal", "SIGTERM"),
        },
        "GraphDriver": {
            "Name": "overlay2",
            "Data": {
                "LowerDir": ":".join(reversed(record.config.get("LowerDirs", []))),
                "UpperDir": str(record.dir / "upper"),
                "WorkDir": str(record.dir / "work"),
            },
        },
        "LogPath": str(record.dir / "log"),
    }


def _memory_bytes(text: str | None) -> int:
    from pytest_minidock.runtime.cgroups import parse_memory

    with contextlib.suppress(_errors()):
        return parse_memory(text) if text else 0
    return 0


def _nano_cpus(text: str | None) -> int:
    from pytest_minidock.runtime.cgroups import parse_cpus

    with contextlib.suppress(_errors()):
        return round(parse_cpus(text) * 1e9) if text else 0
    return 0


def _raw_binds(spec: dict[str, Any]) -> list[str]:
    """``HostConfig.Binds``: the ``-v`` specs of bind mounts and named volumes."""
    out = []
    for m in spec.get("mounts", []):
        if m.get("kind") in ("bind", "volume") and m.get("source"):
            out.append(f"{m['source']}:{m['target']}" + (":ro" if m.get("readonly") else ""))
    return out


def _anonymous_volume(cid: str, target: str) -> str:
    """The name the runtime gives a container's anonymous volume at ``target``."""
    return f"anon-{cid[:12]}-{target.strip('/').replace('/', '_') or 'root'}"


def _docker_mounts(engine: Engine, record: ContainerRecord) -> list[dict[str, Any]]:
    """``Mounts`` as docker shows them: binds and volumes (``--tmpfs`` is in ``HostConfig``)."""
    out: list[dict[str, Any]] = []
    for m in record.config.get("Spec", {}).get("mounts", []):
        kind, target = m.get("kind"), m.get("target", "")
        rw = not m.get("readonly", False)
        if kind == "bind":
            out.append(
                {
                    "Type": "bind",
                    "Source": m.get("source", ""),
                    "Destination": target,
                    "Mode": "" if rw else "ro",
                    "RW": rw,
                    "Propagation": "rprivate",
                }
            )
        elif kind == "volume":
            name = m.get("source") or _anonymous_volume(record.id, target)
            out.append(
                {
                    "Type": "volume",
                    "Name": name,
                    "Source": str(engine.runtime.volume_path(name)),
                    "Destination": target,
                    "Driver": "local",
                    "Mode": "z" if m.get("source") else "",
                    "RW": rw,
                    "Propagation": "",
                }
            )
    return out


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from pytest_minidock.cli.images import format_template

    engine = _engine(args)
    out = []
    status = 0
    for name in args.names:
        obj: dict[str, Any] | None = None
        if args.type in (None, "container"):
            with contextlib.suppress(_errors()):
                obj = container_inspect(engine, engine.container(name))
        if obj is None and args.type in (None, "image"):
            with contextlib.suppress(_errors()):
                obj = engine.store.inspect(name)
        if obj is None:
            print(f"Error: no such object: {name}", file=sys.stderr)
            status = 1
            continue
        out.append(obj)
    if args.format:
        for o in out:
            print(format_template(args.format, o))
    else:
        print(json.dumps(out, indent=4))
    return status


def cmd_port(args: argparse.Namespace) -> int:
    """``docker port NAME [PORT[/PROTO]]``."""
    from pytest_minidock.runtime.ports import format_port

    engine = _engine(args)
    record = engine.container(args.container)
    print(format_port(engine.port(record.id), args.port, record.name), end="")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from pytest_minidock.cli.images import _table

    engine = _engine(args)
    record = engine.container(args.container)
    if not record.state.running():
        print(f"Error: container {record.name} is not running", file=sys.stderr)
        return 1
    rows = [("UID", "PID", "PPID", "CMD")]
    for pid, ppid, uid, cmd in _processes_in(record.state.pid):
        rows.append((str(uid), str(pid), str(ppid), cmd))
    _table(rows, sys.stdout)
    return 0


def _processes_in(pid1: int) -> list[tuple[int, int, int, str]]:
    """Processes sharing ``pid1``'s PID namespace: (pid, ppid, uid, command line)."""
    try:
        target = os.stat(f"/proc/{pid1}/ns/pid").st_ino
    except OSError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/pid").st_ino != target:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            status = open(f"/proc/{entry}/status").read()  # noqa: SIM115
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        out.append(
            (int(entry), int(fields.get("PPid", "0")), int(fields.get("Uid", "0").split()[0]), cmd)
        )
    return sorted(out)


def cmd_cp(args: argparse.Namespace) -> int:
    _engine(args).copy(args.src, args.dest, archive=args.archive)
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    record = _engine(args).commit(
        args.container,
        args.reference,
        changes=args.change,
        message=args.message,
        author=args.author,
    )
    print(record.id)
    return 0


def cmd_volume(args: argparse.Namespace) -> int:
    import json
    import shutil

    engine = _engine(args)
    vols = engine.runtime.state.volumes
    if args.volume_command == "create":
        from pytest_minidock.runtime.state import NAME_RE, new_id

        name = args.name or new_id()
        if not NAME_RE.match(name):
            print(f'Error: invalid volume name "{name}"', file=sys.stderr)
            return 1
        (vols / name / "_data").mkdir(parents=True, exist_ok=True)
        print(name)
    elif args.volume_command == "ls":
        print("DRIVER    VOLUME NAME")
        if vols.is_dir():
            for v in sorted(vols.iterdir()):
                print(f"local     {v.name}")
    elif args.volume_command == "rm":
        status = 0
        for name in args.names:
            if not (vols / name).is_dir():
                print(f"Error: no such volume: {name}", file=sys.stderr)
                status = 1
                continue
            users = _volume_users(engine, name)
            if users:
                print(
                    f"Error: remove {name}: volume is in use - [{', '.join(users)}]",
                    file=sys.stderr,
                )
                status = 1
                continue
            shutil.rmtree(vols / name)
            print(name)
        return status
    elif args.volume_command == "inspect":
        out = []
        for name in args.names:
            path = vols / name / "_data"
            if not path.is_dir():
                print(f"Error: no such volume: {name}", file=sys.stderr)
                return 1
            out.append({"Driver": "local", "Name": name, "Mountpoint": str(path), "Scope": "local"})
        print(json.dumps(out, indent=4))
    return 0


def _volume_users(engine: Engine, name: str) -> list[str]:
    """The IDs of the containers (in any state) that mount volume ``name``, as docker refuses to
    remove a volume in use."""
    users = []
    for record in engine.runtime.state.all():
        for m in record.config.get("Spec", {}).get("mounts", []):
            if m.get("kind") != "volume":
                continue
            if (m.get("source") or _anonymous_volume(record.id, m.get("target", ""))) == name:
                users.append(record.id)
                break
    return users


# -- parser ---------------------------------------------------------------------------------------
def add_container_commands(sub: Any) -> None:
    import argparse

    from pytest_minidock.cli.flags import add_run_flags

    p = sub.add_parser("run", help="create and run a new container", add_help=False)
    add_run_flags(p, detach=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("create", help="create a new container", add_help=False)
    add_run_flags(p, detach=False)
    p.set_defaults(func=cmd_create, detach=True)

    p = sub.add_parser("start", help="start stopped containers")
    p.add_argument("-a", "--attach", action="store_true", help="attach stdout/stderr")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("ps", help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="show all containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only display IDs")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("exec", help="run a command in a running container")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("container")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec, error_code=126)

    p = sub.add_parser("logs", help="fetch the logs of a container")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-t", "--timestamps", action="store_true")
    p.add_argument("-n", "--tail", type=lambda v: None if v == "all" else int(v), default=None)
    p.add_argument("container")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="stop running containers")
    p.add_argument("-t", "--time", type=float, default=None, help="seconds to wait before killing")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("kill", help="kill running containers")
    p.add_argument("-s", "--signal", default="KILL")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("-v", "--volumes", action="store_true", help="remove anonymous volumes")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("wait", help="block until containers stop, then print their exit codes")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("inspect", help="low-level information on containers and images")
    p.add_argument("-f", "--format")
    p.add_argument("--type", choices=("container", "image"))
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("port", help="list a container's published ports")
    p.add_argument("container")
    p.add_argument("port", nargs="?", metavar="PORT[/PROTO]")
    p.set_defaults(func=cmd_port)

    p = sub.add_parser("top", help="display the processes of a container")
    p.add_argument("container")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("cp", help="copy files between a container and the host")
    p.add_argument("-a", "--archive", action="store_true", help="keep the source's uid/gid")
    p.add_argument("src", help="CONTAINER:SRC_PATH or a host path")
    p.add_argument("dest", help="a host path or CONTAINER:DEST_PATH")
    p.set_defaults(func=cmd_cp)

    p = sub.add_parser("commit", help="create a new image from a container's changes")
    p.add_argument("-c", "--change", action="append", default=[])
    p.add_argument("-m", "--message", default="")
    p.add_argument("-a", "--author", default="")
    p.add_argument("container")
    p.add_argument("reference", nargs="?")
    p.set_defaults(func=cmd_commit)

    vol = sub.add_parser("volume", help="manage volumes")
    vsub = vol.add_subparsers(dest="volume_command", metavar="COMMAND")
    vsub.required = True
    v = vsub.add_parser("create")
    v.add_argument("name", nargs="?")
    v.set_defaults(func=cmd_volume)
    v = vsub.add_parser("ls")
    v.set_defaults(func=cmd_volume)
    v = vsub.add_parser("rm")
    v.add_argument("names", nargs="+")
    v.set_defaults(func=cmd_volume)
    v = vsub.add_parser("inspect")
    v.add_argument("names", nargs="+")
    v.set_defaults(func=cmd_volume)
