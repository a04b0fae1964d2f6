"""Container lifecycle: create, start (fork → monitor → PID 1), wait, stop, kill, exec, remove.

Process model, with no daemon::

    owner (pytest, an xdist worker, the CLI)
      └─ monitor        forked; dies with the owner (PR_SET_PDEATHSIG) unless started detached,
         │              then it is re-parented to init by a double fork and survives the CLI.
         │              It copies the container's output into its log, records the exit code,
         │              removes the cgroup (and the container, with --rm), then exits with the
         │              container's exit code.
         └─ PID 1       forked after unshare(CLONE_NEWPID); dies with the monitor. It unshares
                        mount/UTS/IPC/net/cgroup namespaces, assembles the root filesystem
                        (overlay, /proc, /dev, …), pivots into it, drops privileges and execs
                        the payload (or runs the minimal init of ``--init``).

By default a non-detached container is not forked from the owner but from the owner's launcher
(``runtime/launcher.py``: a small fresh interpreter, cheap to fork, that dies with the owner),
which also monitors it from one poll loop shared by all its containers (one with a terminal or
the owner's stdio gets a monitor process forked from the launcher); PID 1 and the monitoring run
the same code (``Monitor``) either way, from the plain-data ``_Launch``. Detached starts,
containers with resource limits and ``MINIDOCK_LAUNCHER=0`` use the direct fork shown above.

What a start needs is made ahead where it can be: the launcher keeps PID 1s forked with their
namespaces and system mounts ready (``mounts.plan_kit``, on the host's network too;
``MINIDOCK_KIT=0`` makes every PID 1 mount its own at start instead) and spare container
directories (``StateDir.make_spare``, made by those PID 1s before they wait); every container
shares the read-only init layer holding its mount points (``mounts.make_init_layer``); its
overlay is ``volatile`` (its exit does not sync the host's filesystem); and its state is
rewritten in place (``state``), never by rename. ``start`` uses what ``create`` just made in
the same process without reading it back, and the user an image's layers resolve to is
remembered (``_users``), as are the planner's look-ups in those read-only layers. Through the
launcher, ``wait`` sleeps on an exit pipe the launcher closes once it recorded the exit, rather
than polling the state file.

If the owner is killed, even by SIGKILL, the kernel kills the monitor, then PID 1, and with it
every process of the PID namespace; all mounts lived in the container's private mount namespace
and vanish with it. What is left on disk (state, cgroup directory) is cleaned by
``cleanup_leftovers`` on the next start.

Rootless (the owner is not root on the host, ``capabilities.host_root``), the same code runs: the
process that makes a container's namespaces (the launcher, or a monitor forked from the owner)
first becomes root of a user namespace of its own (``userns.become_root``), and all the above
happens inside it. What differs: devices are bound from the host's ``/dev``, not made; the
overlay reads ``user.overlay.*`` xattrs (``userxattr``); on the host's network the host's
``/sys`` is bound (a new sysfs needs the network namespace's owner); a ``--user`` must be mapped
in the namespace (checked by the owner, one clear line if not); ``exec`` and ``cp`` first join
the user namespace owning the container's namespaces; limits no cgroup of the user's can apply
are dropped, each said once; and the networks of containers with a network of their own live
in the user's network holder (``holder``: bridges, veths, nftables in a network namespace of the
user's), where their published ports are relayed in (``portfwd.relay_published``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import time
from pathlib import Path

from pytest_minidock._record import dataclass, replace
from pytest_minidock.capabilities import host_root
from pytest_minidock.errors import MinidockError, RuntimeFailure, UsageError
from pytest_minidock.runtime.logs import LogWriter
from pytest_minidock.runtime.state import (
    ContainerRecord,
    ContainerState,
    Owner,
    StateDir,
    new_id,
    now_iso,
    process_start_time,
)

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from pytest_minidock.runtime import mounts
    from pytest_minidock.runtime._sys import Syscalls
    from pytest_minidock.runtime.cgroups import Cgroup, CgroupManager
    from pytest_minidock.runtime.network import Lease
    from pytest_minidock.runtime.ports import PublishedPorts
    from pytest_minidock.spec import ContainerSpec, ResolvedUser

__all__ = ["ExecResult", "Monitor", "Runtime", "Started", "Stdio", "remove_files"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXIT_RUNTIME = 125  # docker: the container could not be created or started
EXIT_CANNOT_INVOKE = 126  # the command exists but cannot be executed
EXIT_NOT_FOUND = 127  # the command was not found
_SIGKILL = 9  # on every Linux architecture (not the ``signal`` module: ~1.5 ms to import)
_MAX_EXIT_FDS = 256
_MAX_FRESH = 64
_MAX_USERS = 64
_users: dict[tuple[str, tuple[str, ...]], ResolvedUser] = {}
"""``resolve_user``'s answers by (user, image layers): see ``Runtime._prepare``."""


@dataclass(frozen=True, slots=True)
class Stdio:
    """Where a container's standard streams go besides its log.

    ``stdin``: an fd the container reads (None: /dev/null). ``stdout``/``stderr``: fds the monitor
    copies output to as well (an attached ``run``). ``tty``: give the container a pseudo-terminal;
    the monitor then copies between it and ``stdin``/``stdout``.
    """

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    tty: bool = False


@dataclass(frozen=True, slots=True)
class Started:
    """A container that has just started: its PID 1 and its monitor (pids as the host sees them)."""

    id: str
    pid: int
    monitor_pid: int
    monitor_is_child: bool


@dataclass(frozen=True, slots=True)
class ExecResult:
    """The outcome of ``exec`` with captured output."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""


@dataclass
class _Launch:
    """Everything the monitor and PID 1 need, computed before forking (no I/O after fork).

    Plain data only (the launcher receives it as JSON, see ``to_wire``/``from_wire``), except
    ``cgroup``: a container with resource limits is always started by the direct path.
    """

    cid: str
    dir: Path
    root: str  # the state root (``StateDir``)
    image: str
    hostname: str
    own_net: bool
    uid: int
    gid: int
    groups: tuple[int, ...]
    env: tuple[str, ...]
    argv: tuple[str, ...]
    init: bool
    privileged: bool
    bound: bool
    stdio: Stdio
    auto_remove: bool
    keep_caps: frozenset[int] | None
    plan: tuple[Any, ...] = ()
    cgroup: Cgroup | None = None
    kit: bool = False
    """The plan moves in the system mounts of ``mounts.plan_kit`` (PID 1 makes them if it did
    not ahead)."""
    go_fd: int = -1
    """Read end of a pipe PID 1 waits on before the exec: one byte ``g`` once the owner has
    attached the container's network (its end closed without it: the set-up failed)."""
    port_fds: tuple[int, ...] = ()
    """Sockets holding the published host ports: the monitor keeps them while the container runs."""
    exit_fd: int = -1
    """Write end of a pipe the monitor holds until it has recorded the exit (then closes it):
    the owner that started the container sleeps on its read end in ``wait`` (launcher only)."""

    def to_wire(self) -> tuple[dict[str, Any], list[int]]:
        """The JSON-able request and the fds to pass with it: stdio (those present), then the
        ``go`` pipe (if any), then the port sockets, then the exit pipe (if any)."""
        stdio = self.stdio
        fds = [fd for fd in (stdio.stdin, stdio.stdout, stdio.stderr) if fd is not None]
        if self.go_fd >= 0:
            fds.append(self.go_fd)
        fds.extend(self.port_fds)
        if self.exit_fd >= 0:
            fds.append(self.exit_fd)
        request = {
            "cid": self.cid,
            "dir": str(self.dir),
            "root": self.root,
            "image": self.image,
            "hostname": self.hostname,
            "own_net": self.own_net,
            "uid": self.uid,
            "gid": self.gid,
            "groups": list(self.groups),
            "env": list(self.env),
            "argv": list(self.argv),
            "init": self.init,
            "privileged": self.privileged,
            "auto_remove": self.auto_remove,
            "keep_caps": None if self.keep_caps is None else sorted(self.keep_caps),
            "plan": [_op_to_wire(op) for op in self.plan],
            "tty": stdio.tty,
            "stdin": stdio.stdin is not None,
            "stdout": stdio.stdout is not None,
            "stderr": stdio.stderr is not None,
            "go": self.go_fd >= 0,
            "kit": self.kit,
            "ports": len(self.port_fds),
            "exit": self.exit_fd >= 0,
        }
        return request, fds

    @classmethod
    def from_wire(
        cls, request: dict[str, Any], fds: Sequence[int], *, plan: bool = True
    ) -> _Launch:
        """The launch ``to_wire`` described, with ``fds`` the stdio fds received with it
        (``plan``: decode the mount plan too; a monitor that does not make PID 1 needs none)."""
        from pytest_minidock.runtime import mounts

        given = iter(fds)
        stdio = Stdio(
            stdin=next(given) if request["stdin"] else None,
            stdout=next(given) if request["stdout"] else None,
            stderr=next(given) if request["stderr"] else None,
            tty=bool(request["tty"]),
        )
        caps = request["keep_caps"]
        go = next(given) if request.get("go") else -1
        port_fds = tuple(next(given) for _ in range(int(request.get("ports", 0))))
        exit_fd = next(given) if request.get("exit") else -1
        return cls(
            cid=request["cid"],
            dir=Path(request["dir"]),
            root=request["root"],
            image=request["image"],
            hostname=request["hostname"],
            own_net=bool(request["own_net"]),
            uid=int(request["uid"]),
            gid=int(request["gid"]),
            groups=tuple(request["groups"]),
            env=tuple(request["env"]),
            argv=tuple(request["argv"]),
            init=bool(request["init"]),
            privileged=bool(request["privileged"]),
            bound=True,
            stdio=stdio,
            auto_remove=bool(request["auto_remove"]),
            keep_caps=None if caps is None else frozenset(caps),
            plan=tuple(mounts.Op(*op) for op in request["plan"]) if plan else (),
            kit=bool(request.get("kit")),
            go_fd=go,
            port_fds=port_fds,
            exit_fd=exit_fd,
        )


_OP_FIELDS = ("kind", "target", "source", "fstype", "flags", "data", "mode", "device", "ctr")


def _op_to_wire(op: Any) -> list[Any]:
    return [getattr(op, name) for name in _OP_FIELDS]


def _holder_joined() -> bool:
    """Whether this process joined the rootless holder (``holder.joined``): only then has
    ``portfwd.relay_published`` ports to relay. Not imported here when it was not already."""
    from sys import modules

    holder = modules.get("pytest_minidock.runtime.holder")
    return holder is not None and bool(holder.joined())


def _exit_code(status: int) -> int:
    """Docker's exit code for a wait status: the code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _parse_sync(message: bytes) -> tuple[int, int, tuple[int, str] | None]:
    """The sync pipe's lines: ``P <pid> <monitor pid>`` (started), ``E <code> <message>`` (could
    not start), ``N`` (PID 1 has its own network namespace); the pids (0 if not said) and the
    error, if any."""
    pid = monitor_pid = 0
    error: tuple[int, str] | None = None
    for line in message.decode(errors="replace").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "P":
            a, b = rest.split()
            pid, monitor_pid = int(a), int(b)
        elif kind == "E":
            code, _, text = rest.partition(" ")
            error = (int(code), text)
    return pid, monitor_pid, error


def _read_until_started(fd: int, *, netns: bool = False) -> bytes:
    """What the sync pipe says up to its ``P`` line (and with ``netns``, PID 1's ``N``: it has
    its own network namespace), or up to an ``E`` line or its end."""
    data = b""

    def done() -> bool:
        kinds = {line[:1] for line in data.split(b"\n")[:-1]}
        return b"E" in kinds or (b"P" in kinds and (not netns or b"N" in kinds))

    while not done():
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        if not chunk:
            break
        data += chunk
    return data


def _port_specs(spec: ContainerSpec) -> list[Any]:
    """The ``PortSpec``s of ``-p`` (and of ``-P``: every EXPOSEd port)."""
    from pytest_minidock.runtime.ports import expose_all, parse_publish

    specs = [one for text in spec.publish for one in parse_publish(text)]
    if spec.publish_all:
        specs.extend(expose_all(spec.exposed_ports))
    return specs


def _network_name(spec: ContainerSpec) -> str | None:
    """The network a container is attached to at start (None: host's, or loopback only)."""
    if spec.network in ("host", "none"):
        return None
    return "bridge" if spec.network == "default" else spec.network


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]


class Runtime:
    """Creates and drives containers whose state lives under ``root`` (``root/containers``)."""

    def __init__(
        self,
        root: Path | str,
        *,
        syscalls: Syscalls | None = None,
        cgroups: CgroupManager | None = None,
        session: str = "",
        launcher: bool | None = None,
    ) -> None:
        self.root = Path(root)
        self.state = StateDir(self.root)
        self._sys = syscalls
        self._cgroups = cgroups
        self.session = session
        if launcher is None:
            launcher = os.environ.get("MINIDOCK_LAUNCHER", "1") != "0"
        self.launcher = launcher
        """Start non-detached containers through this process's launcher (see ``launcher``)."""
        self._children: set[int] = set()  # monitors forked by this process (direct path)
        self._fresh: dict[str, tuple[ContainerRecord, ContainerSpec]] = {}
        """Containers ``create`` made in this process, not started yet: what ``start`` would
        read back from disk (it takes them from here instead)."""
        self._exit_fds: dict[str, int] = {}
        """Read ends of the exit pipes of the containers this object started through the
        launcher, by ID: readable (at its end) once the exit is recorded (see ``wait``)."""

    @property
    def sys(self) -> Syscalls:
        if self._sys is None:
            from pytest_minidock.runtime._sys import LinuxSyscalls

            self._sys = LinuxSyscalls()
        return self._sys

    @property
    def cgroups(self) -> CgroupManager:
        if self._cgroups is None:
            from pytest_minidock.runtime.cgroups import detect

            self._cgroups = detect()
        return self._cgroups

    # -- create --------------------------------------------------------------------------------
    def create(
        self,
        spec: ContainerSpec,
        lowerdirs: Sequence[str | Path],
        *,
        name: str | None = None,
        auto_remove: bool = False,
        keep: bool = False,
        detached: bool = False,
        extra_config: dict[str, Any] | None = None,
        cid: str | None = None,
    ) -> ContainerRecord:
        """Make a container's directory, config and ``created`` state (no process yet)."""
        cid = cid or new_id()
        d = self.state.dir(cid)
        spare = self.state.take_spare(cid)  # (a launcher makes them ahead: see StateDir)
        if not spare:
            d.mkdir(parents=True)
        claimed = ""
        try:
            via = d / "name" if spare else None  # (a spare's: linked into names/)
            if name:
                self.state.claim_name(name, cid, via=via)
                claimed = name.removeprefix("/")
            else:
                claimed = self.state.unique_random_name(cid, via=via)
            if not spare:
                for sub in ("upper", "work", "rootfs"):
                    (d / sub).mkdir()
            _write_new(d / "hostname", spec.hostname + "\n")
            _write_new(d / "hosts", _hosts_file(spec.hostname, spec.network))
            _write_new(d / "resolv.conf", _resolv_conf())
            config = {
                "Id": cid,
                "Name": claimed,
                "Created": now_iso(),
                "Image": spec.image,
                "ImageID": spec.image_id,
                "LowerDirs": [str(p) for p in lowerdirs],
                "AutoRemove": auto_remove,
                "Spec": json.loads(spec.to_json()),
                **(extra_config or {}),
            }
            state = ContainerState(
                status="created",
                detached=detached,
                keep=keep,
                owner=Owner.current(self.session),
            )
            self.state.write_state(cid, state)
            encoded = json.dumps(config, sort_keys=True).encode()
            # last: with it, the container exists (a spare's is there, empty, under another name)
            if spare and os.path.exists(d / ".config.json"):
                _write_new(d / ".config.json", encoded)
                os.rename(d / ".config.json", d / "config.json")
            else:
                (d / "config.json").write_bytes(encoded)
        except BaseException:
            if claimed:
                self.state.release_name(claimed, cid)
            _remove_tree(d)
            raise
        record = ContainerRecord(cid, claimed, config["Created"], json.loads(encoded), state, d)
        fresh = self._fresh
        while len(fresh) >= _MAX_FRESH:  # (created, never started here)
            with contextlib.suppress(StopIteration, KeyError):
                del fresh[next(iter(fresh))]
        fresh[cid] = (record, spec)
        return record

    def _record_and_spec(self, cid: str) -> tuple[ContainerRecord, ContainerSpec]:
        """The container to start and its spec: as ``create`` just made it in this process
        (unless it was removed since), else read back; ``RuntimeFailure`` if it is running."""
        fresh = self._fresh.pop(cid, None)
        if fresh is not None and (fresh[0].dir / "config.json").exists():
            return fresh
        record = self.state.find(cid)
        if record.state.running():
            raise RuntimeFailure(f"container {record.name} is already running")
        return record, self.spec_of(record)

    def lower_dirs(self, cid: str) -> list[str]:
        """The image layers a container's root filesystem is made of (its ``LowerDirs``): as
        ``create`` just made it in this process (no second read), else read back."""
        fresh = self._fresh.get(cid)
        record = fresh[0] if fresh is not None else self.state.find(cid)
        return list(record.config["LowerDirs"])

    def spec_of(self, record: ContainerRecord) -> ContainerSpec:
        from pytest_minidock.spec import ContainerSpec

        return ContainerSpec.from_json(json.dumps(record.config["Spec"]).encode())

    # -- start ---------------------------------------------------------------------------------
    def start(self, cid: str, *, stdio: Stdio | None = None, detached: bool = False) -> Started:
        """Start a created (or exited) container; return once its payload has been exec'd.

        ``detached``: the container survives the calling process (the CLI's ``run -d``/``start``);
        otherwise it dies with it. Raises ``RuntimeFailure`` (with ``exit_code`` 125/126/127) when
        the container cannot start.
        """
        record, spec = self._record_and_spec(cid)
        rootless = not host_root()
        try:
            if rootless:
                from pytest_minidock.runtime.userns import check_available

                check_available()
            launch = self._prepare(record, spec, stdio or Stdio(), bound=not detached)
        except MinidockError:
            if rootless and record.config.get("AutoRemove"):  # (root: as it always was)
                with contextlib.suppress(MinidockError):
                    self.remove(record.id, force=True)
            raise
        network = _network_name(spec)
        reserved: PublishedPorts | None = None
        go_w = -1
        if network is not None:  # host ports held first: a taken one fails before anything runs
            from pytest_minidock.runtime import ports

            reserved = ports.reserve(_port_specs(spec))
            go_r, go_w = os.pipe2(os.O_CLOEXEC)
            launch = replace(launch, go_fd=go_r, port_fds=tuple(reserved.fds()))
        via_launcher = not detached and self._use_launcher(launch)
        exit_r = -1
        if via_launcher:  # the launcher closes its end once it has recorded the exit
            exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
            launch = replace(launch, exit_fd=exit_w)
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        pid = 0
        try:
            if via_launcher:
                from pytest_minidock.runtime import launcher

                request, fds = launch.to_wire()
                try:
                    launcher.shared().launch(request, [sync_w, *fds])
                except (OSError, RuntimeFailure) as exc:
                    os.close(sync_r)
                    raise RuntimeFailure(f"cannot start container {record.name}: {exc}") from exc
                finally:
                    with contextlib.suppress(OSError):
                        os.close(sync_w)
                    os.close(launch.exit_fd)
            else:
                owner = os.getpid()
                try:
                    pid = os.fork()
                except OSError as exc:
                    os.close(sync_r)
                    os.close(sync_w)
                    raise RuntimeFailure(f"cannot fork for container {record.name}: {exc}") from exc
                if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
                    os.close(sync_r)
                    if go_w >= 0:  # PID 1 must see its end when the owner closes it
                        os.close(go_w)
                    self._monitor_entry(launch, sync_w, detached, owner)
                os.close(sync_w)
        except BaseException:
            if go_w >= 0:
                os.close(go_w)
            if exit_r >= 0:
                os.close(exit_r)
            raise
        finally:  # the monitor (or launcher) has its own copies now
            if reserved is not None:
                reserved.close()
            if launch.go_fd >= 0:
                os.close(launch.go_fd)
        try:
            net_error: BaseException | None = None
            lease: Lease | None = None
            if go_w >= 0 and network is not None and reserved is not None:
                try:  # while PID 1 is being made: its address and forwarded ports
                    lease = self._lease(record, spec, network, reserved)
                except BaseException as exc:  # PID 1 is told by the closed pipe; report below
                    net_error = exc
            message = _read_until_started(sync_r, netns=go_w >= 0)
            if go_w >= 0:
                try:
                    if lease is not None:
                        self._connect(record, spec, lease, message=message, go_w=go_w)
                except BaseException as exc:  # PID 1 is told by the closed pipe; report below
                    net_error = exc
                finally:
                    os.close(go_w)
            message += _read_all(sync_r)
        finally:
            os.close(sync_r)
        if detached:  # the intermediate child exits at once; the monitor is init's now
            os.waitpid(pid, 0)
        elif pid:
            self._children.add(pid)
        started_pid, monitor_pid, error = _parse_sync(message)
        if net_error is not None:  # (PID 1 only says that it was not told to go on)
            error = (EXIT_RUNTIME, f"cannot start container {record.name}: {net_error}")
        if exit_r >= 0:
            if error is None and started_pid:
                self._keep_exit_fd(cid, exit_r)
            else:
                os.close(exit_r)
        if error is not None:
            if network is not None:
                self._disconnect(cid)
            if pid and not detached:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                self._children.discard(pid)
            if launch.auto_remove:
                with contextlib.suppress(MinidockError):
                    self.remove(cid, force=True)
            failure = RuntimeFailure(error[1])
            failure.exit_code = error[0]  # type: ignore[attr-defined]
            raise failure
        if not started_pid:
            raise RuntimeFailure(f"container {record.name} did not start (monitor died)")
        return Started(cid, started_pid, monitor_pid, monitor_is_child=bool(pid) and not detached)

    def _lease(
        self, record: ContainerRecord, spec: ContainerSpec, network: str, reserved: PublishedPorts
    ) -> Lease:
        """Lease the container's address on ``network`` and forward its reserved host ports: all
        but the links, which need PID 1's network namespace."""
        from pytest_minidock.errors import SubnetExhausted
        from pytest_minidock.runtime.network import Networks

        def lease() -> Lease:
            return Networks(self.root).lease(
                network,
                record.id,
                name=record.name,
                aliases=spec.aliases,
                hosts_file=record.dir / "hosts",
                hostname=spec.hostname,
                mappings=reserved.mappings,
            )

        try:
            return lease()
        except SubnetExhausted:
            # leases of containers that are gone (a crash mid-removal; the CLI skips the
            # network clean-up at start): free them, then try once more
            self.cleanup_networks()
            return lease()

    def _connect(
        self,
        record: ContainerRecord,
        spec: ContainerSpec,
        lease: Lease,
        *,
        message: bytes,
        go_w: int,
    ) -> None:
        """PID 1 has its network namespace (``message`` says its pid): make the links of its
        ``lease`` there, let it exec, and record the ``NetworkSettings`` meanwhile (if that
        fails, PID 1 is killed and the error reported)."""
        pid, _, error = _parse_sync(message)
        if error is not None or not pid:
            return  # it failed already: the error is reported as it is
        from pytest_minidock.runtime import ports
        from pytest_minidock.runtime.network import Networks

        Networks(self.root).connect(lease, pid)
        os.write(go_w, b"g")
        attachment = lease.attachment()
        try:
            self.state.update_config(
                record.id,
                NetworkSettings={
                    "Networks": {attachment.network: attachment.inspect()},
                    "Ports": ports.ports_inspect(lease.mappings, spec.exposed_ports),
                    "IPAddress": attachment.ip,
                    "Gateway": attachment.gateway,
                },
            )
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, _SIGKILL)
            raise

    def _disconnect(self, cid: str) -> None:
        """Take the container off its networks (leases, veths, forwarded ports)."""
        from pytest_minidock.runtime.network import Networks

        with contextlib.suppress(MinidockError, OSError):
            Networks(self.root).detach(cid)

    def _use_launcher(self, launch: _Launch) -> bool:
        """Whether this start goes through the launcher: enabled, no cgroup (limits need this
        process's cgroup manager), and the real system calls (the launcher has no others)."""
        if not self.launcher or launch.cgroup is not None:
            return False
        from pytest_minidock.runtime._sys import LinuxSyscalls

        return type(self.sys) is LinuxSyscalls

    def _prepare(
        self, record: ContainerRecord, spec: ContainerSpec, stdio: Stdio, *, bound: bool
    ) -> _Launch:
        _preload(tty=stdio.tty, init=spec.init)
        assert self.sys is not None  # load libc here, not in every forked child
        from pytest_minidock.runtime import mounts
        from pytest_minidock.spec import lookup_in_layers, merge_env, resolve_user

        d = record.dir
        lowerdirs = tuple(record.config["LowerDirs"])
        layers = (*lowerdirs, str(d / "upper"))
        # The image's layers never change: a user found in them stays found, while the
        # container's own upper dir has no /etc to hide or change its passwd and group files.
        key = (spec.user, lowerdirs)
        own_etc = os.path.lexists(d / "upper" / "etc")
        user = None if own_etc else _users.get(key)
        if user is None:
            user = resolve_user(spec.user, lambda path: lookup_in_layers(layers, path))
            if not own_etc:
                if len(_users) >= _MAX_USERS:
                    _users.clear()
                _users[key] = user
        env = merge_env(("PATH=" + DEFAULT_PATH, f"HOME={user.home}"), spec.env)
        root = host_root()
        if not root:  # rootless: only the ids of the user namespace's map exist
            from pytest_minidock.runtime.userns import check_mapped, mapped_groups

            check_mapped(spec.user or "root", user.uid, user.gid)
            user = replace(user, groups=tuple(mapped_groups(user.groups)))
        # A cgroup only for limits: the PID namespace already tracks and kills every process,
        # and moving a freshly forked process into a cgroup costs ~10-20 ms on this kernel.
        cgroup = None
        if _wants_limits(spec):
            limits = _limits(spec)
            if root:
                cgroup = self.cgroups.create(record.id, limits)
            else:
                cgroup = self._some_limits(record, limits)
        try:
            binds, tmpfs = self._mounts(spec, record)
            use_overlay = self._overlay(record, lowerdirs, rootless=not root)
            if use_overlay:  # started before: its last (volatile) overlay left a marker
                mounts.clear_volatile(str(d / "work"))
            cfg = mounts.RootfsConfig(
                rootfs=str(d / "rootfs"),
                overlay=use_overlay,
                lowerdirs=lowerdirs,
                upperdir=str(d / "upper"),
                workdir=str(d / "work"),
                readonly=spec.read_only,
                binds=binds,
                tmpfs=tmpfs,
                etc_files=(
                    (str(d / "hosts"), "/etc/hosts"),
                    (str(d / "hostname"), "/etc/hostname"),
                    (str(d / "resolv.conf"), "/etc/resolv.conf"),
                ),
                workdir_in_container=spec.workdir or "/",
                privileged=spec.privileged,
                create_devices=root,
                userxattr=use_overlay and not root,
                host_sys=not root and spec.network == "host",
                kit=os.environ.get("MINIDOCK_KIT", "1") != "0",
                init_layer=mounts.make_init_layer(str(self.root / "init-layer"))
                if use_overlay
                else "",
                volatile=mounts.volatile_supported(),
            )
            plan = mounts.plan_rootfs(cfg)
            keep_caps = _capabilities(spec)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        return _Launch(
            cid=record.id,
            dir=d,
            root=str(self.root),
            image=spec.image,
            hostname=spec.hostname,
            own_net=spec.network != "host",
            uid=user.uid,
            gid=user.gid,
            groups=tuple(user.groups),
            env=env,
            argv=spec.argv,
            init=spec.init,
            privileged=spec.privileged,
            bound=bound,
            stdio=stdio,
            auto_remove=bool(record.config.get("AutoRemove")),
            keep_caps=keep_caps,
            plan=plan,
            kit=mounts.uses_kit(plan),
            cgroup=cgroup,
        )

    def _some_limits(self, record: ContainerRecord, limits: Any) -> Cgroup | None:
        """Rootless: the container's cgroup with the ``limits`` a delegated cgroup can apply
        (None if none can); the others are dropped, and each dropped one said once."""
        from pytest_minidock.capabilities import host_uid
        from pytest_minidock.runtime import cgroups

        manager = self.cgroups
        kept = cgroups.drop_unavailable(limits, manager, uid=host_uid())
        return manager.create(record.id, kept) if kept.requested else None

    def _overlay(
        self, record: ContainerRecord, lowerdirs: tuple[str, ...], *, rootless: bool = False
    ) -> bool:
        """True to mount an overlay; else make sure the rootfs holds a merged copy of the image
        (``rootless``: the overlay is mounted in a user namespace)."""
        from pytest_minidock.runtime import fallback

        if fallback.overlay_available(rootless=rootless):
            return True
        fallback.warn_once(rootless=rootless)
        marker = record.dir / "rootfs.copied"
        if not marker.exists():
            fallback.materialize(lowerdirs, record.dir / "rootfs")
            marker.write_text("")
        return False

    def _mounts(self, spec: ContainerSpec, record: ContainerRecord) -> tuple[Any, Any]:
        from pytest_minidock.runtime import mounts

        binds: list[mounts.BindMount] = []
        tmpfs: list[mounts.TmpfsMount] = []
        for m in spec.mounts:
            if m.kind == "tmpfs":
                tmpfs.append(mounts.TmpfsMount(m.target, m.options))
                continue
            if m.kind == "volume":
                source = self.volume_path(m.source or f"anon-{record.id[:12]}-{_slug(m.target)}")
                source.mkdir(parents=True, exist_ok=True)
            else:
                source = Path(m.source)
                if not source.exists():  # docker -v creates a missing host directory
                    source.mkdir(parents=True)
            binds.append(mounts.BindMount(str(source), m.target, m.readonly))
        return tuple(binds), tuple(tmpfs)

    def volume_path(self, name: str) -> Path:
        """The host directory holding a named volume's data."""
        return self.state.volumes / name / "_data"

    # -- the forked side -----------------------------------------------------------------------
    def _monitor_entry(
        self, launch: _Launch, sync_w: int, detached: bool, parent: int = 0
    ) -> None:  # pragma: no cover
        """First child of the direct path: becomes the monitor (see ``Monitor``)."""
        cgroups = self._cgroups

        def remove_stale(cid: str) -> None:
            if cgroups is not None:
                cgroups.remove_stale(cid)

        Monitor(launch, self.sys, self.state, remove_stale).entry(sync_w, detached, parent)

    # -- waiting and signals -------------------------------------------------------------------
    def wait(self, cid: str, timeout: float | None = None) -> int:
        """Block until the container is not running; return its exit code.

        A container this object started through the launcher: sleeps on its exit pipe, which
        the launcher closes once it has recorded the exit. Otherwise sleeps on a pidfd of PID 1
        (the payload's exit wakes us at once), then polls the state briefly until its monitor
        has recorded the exit (or is found dead).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        # This wait owns the exit pipe while it sleeps on it (another thread waiting for the
        # same container meanwhile polls); it is put back if the wait times out.
        fd = self._exit_fds.pop(cid, -1)
        exit_fd = fd
        name = ""
        if fd < 0:
            record = self.state.find(cid)
            cid, name = record.id, record.name
            fd = exit_fd = self._exit_fds.pop(cid, -1)
            state = record.state
            if fd < 0 and state.status in ("running", "removing") and state.running():
                with contextlib.suppress(OSError):
                    fd = self.sys.pidfd_open(state.pid)
        pause, polls = 0.00025, 0
        try:
            while True:
                if fd < 0 or fd != exit_fd:  # (with the exit pipe: once it is readable)
                    state = self.state.read_state(cid)
                    self._reap(state)
                    if _exited(state) or not state.monitor_alive():
                        # The monitor may have recorded the exit and gone between our read and
                        # our liveness check: read again before calling it dead.
                        state = self.state.read_state(cid)
                        if state.status == "running":  # the monitor died without recording
                            state = self._mark_dead(cid, state)
                        return state.exit_code
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    # the exit pipe, still open: kept for the next wait
                    if fd >= 0 and fd == exit_fd and self._exit_fds.setdefault(cid, fd) == fd:
                        fd = -1
                    with contextlib.suppress(MinidockError):
                        name = name or self.state.find(cid).name
                    raise RuntimeFailure(f"timed out waiting for container {name or cid[:12]}")
                if fd >= 0:  # until the exit is recorded (exit pipe), or PID 1 exits (pidfd)
                    wait_for = 0.05 if remaining is None else min(0.05, remaining)
                    if select.select([fd], [], [], wait_for)[0]:
                        os.close(fd)
                        fd = -1
                else:  # PID 1 is gone (or not ours to watch): the monitor records it soon
                    time.sleep(pause if remaining is None else min(pause, remaining))
                    polls += 1
                    if polls > 40:  # ~10 ms at 0.25 ms, then less and less often
                        pause = min(pause * 1.5, 0.05)
        finally:
            if fd >= 0:
                os.close(fd)

    def _keep_exit_fd(self, cid: str, fd: int) -> None:
        """Keep a started container's exit pipe for ``wait`` (the oldest go beyond a few
        hundred: their containers are waited for by polling the state, as from elsewhere)."""
        fds = self._exit_fds
        while len(fds) >= _MAX_EXIT_FDS:
            with contextlib.suppress(StopIteration, KeyError, OSError):
                os.close(fds.pop(next(iter(fds))))
        old = fds.pop(cid, -1)
        fds[cid] = fd
        if old >= 0:
            os.close(old)

    def _drop_exit_fd(self, cid: str) -> None:
        fd = self._exit_fds.pop(cid, -1)
        if fd >= 0:
            os.close(fd)

    def _reap(self, state: ContainerState) -> None:
        """Collect the exit status of a monitor that is our own child (no zombies); a monitor
        the launcher forked is the launcher's to reap, never waited for here."""
        pid = state.monitor_pid
        if pid in self._children:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._children.discard(pid)

    def _mark_dead(self, cid: str, state: ContainerState) -> ContainerState:
        """Record the exit of a container whose monitor died without recording it."""
        with self.state.locked(cid):
            current = self.state.read_state(cid)
            if current.status != "running" or current.monitor_alive():
                return current  # recorded meanwhile, or not dead after all
            current = replace(
                current,
                status="exited",
                exit_code=current.exit_code or 137,
                finished_at=current.finished_at or now_iso(),
                error=current.error or "the container's monitor process died",
            )
            self.state.write_state(cid, current)
            return current

    def kill(self, cid: str, sig: int = _SIGKILL) -> None:
        """Send ``sig`` to the container's PID 1 (``docker kill -s``)."""
        record = self.state.find(cid)
        if not record.state.running():
            raise RuntimeFailure(f"container {record.name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.state.pid, sig)

    def stop(self, cid: str, timeout: float | None = None) -> int:
        """Send the stop signal, wait ``timeout`` seconds (the spec's, default 10), then SIGKILL."""
        record = self.state.find(cid)
        if not record.state.running():
            return record.state.exit_code
        spec = self.spec_of(record)
        from pytest_minidock.spec import signal_number

        grace = spec.stop_timeout if timeout is None else timeout
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.state.pid, signal_number(spec.stop_signal))
        try:
            return self.wait(record.id, timeout=grace)
        except RuntimeFailure:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.state.pid, _SIGKILL)
        return self.wait(record.id, timeout=30)

    # -- removal -------------------------------------------------------------------------------
    def remove(self, cid: str, *, force: bool = False, volumes: bool = False) -> str:
        """``docker rm``: remove a stopped container (``force`` kills a running one first)."""
        record = self.state.find(cid)
        if record.state.running():
            if not force:
                raise RuntimeFailure(
                    f"cannot remove container {record.name}: container is running: stop the "
                    "container before removing or force remove"
                )
            self.state.update(record.id, status="removing")
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.state.pid, _SIGKILL)
            with contextlib.suppress(RuntimeFailure):
                self.wait(record.id, timeout=30)
        self._drop_exit_fd(record.id)
        self._remove_files(record.id, volumes=volumes)
        return record.name

    def _remove_files(self, cid: str, *, volumes: bool = False) -> None:
        remove_files(self.state, cid, volumes=volumes, remove_stale=self._remove_stale_cgroup)

    def _remove_stale_cgroup(self, cid: str) -> None:
        self.cgroups.remove_stale(cid)

    # -- crash recovery ------------------------------------------------------------------------
    def cleanup_leftovers(self, *, networks: bool = True) -> list[str]:
        """Remove what crashed owners left: containers whose owner is gone, unless kept or
        detached; mark as exited the ones whose monitor died. Returns the removed IDs.
        ``networks``: then ``cleanup_networks`` too (a few ms; the CLI skips it).

        Only this root's containers are touched: cgroups are machine-wide, and a group named
        for a container this root does not know may belong to another root's live container.
        """
        removed = []
        self.state.remove_spares()  # those of launchers that are gone
        for trash in self.state.containers.glob(".rm-*"):
            cid = trash.name.split("-")[1] if trash.name.count("-") >= 2 else ""
            if cid:  # a crash mid-removal: its cgroup may be left too
                with contextlib.suppress(Exception):
                    self.cgroups.remove_stale(cid)
            _remove_tree(trash)
        for record in self.state.all():
            state = record.state
            if state.status == "running" and not state.monitor_alive():
                state = self._mark_dead(record.id, state)
                if state.pid and process_start_time(state.pid) == state.pid_start:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(state.pid, _SIGKILL)
            if state.keep or state.detached or state.owner.alive():
                continue
            if state.status == "running" and state.monitor_alive():
                continue
            with contextlib.suppress(MinidockError, OSError):
                self._remove_files(record.id, volumes=True)
                removed.append(record.id)
        if networks and (self.root / "networks").is_dir():
            self.cleanup_networks()
        return removed

    def cleanup_networks(self) -> None:
        """Drop the network endpoints, forwarded ports and session networks that no existing
        container or live session claims (``rm`` detaches; this catches crashes mid-way)."""
        from pytest_minidock.runtime.network import Networks

        Networks(self.root).cleanup(lambda cid: self.state.dir(cid).is_dir())

    # -- exec ----------------------------------------------------------------------------------
    def exec(
        self,
        cid: str,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        stdio: Stdio | None = None,
        capture: bool = False,
        privileged: bool | None = None,
    ) -> ExecResult:
        """Run a command inside a running container (setns into its namespaces).

        With ``capture``, stdout and stderr are collected and returned; otherwise they go to
        ``stdio``'s fds (default: this process's own 0/1/2). Returns the exit code.
        """
        from pytest_minidock.spec import lookup_in_layers, merge_env, resolve_user

        _preload(tty=stdio is not None and stdio.tty, init=False)
        assert self.sys is not None
        record = self.state.find(cid)
        if not record.state.running():
            raise RuntimeFailure(f"container {record.name} is not running")
        if not argv:
            raise UsageError("exec needs a command")
        spec = self.spec_of(record)
        layers = (*record.config["LowerDirs"], str(record.dir / "upper"))
        resolved = resolve_user(
            spec.user if user is None else user, lambda p: lookup_in_layers(layers, p)
        )
        full_env = merge_env(("PATH=" + DEFAULT_PATH, f"HOME={resolved.home}"), spec.env)
        full_env = merge_env(full_env, env)
        keep_caps = _capabilities(spec)
        is_priv = spec.privileged if privileged is None else privileged
        cwd = workdir or spec.workdir or "/"
        pid1 = record.state.pid
        # The container's own cgroups (it has some only when it has limits), to join them too.
        cgroup_procs = (
            [f"{p}/cgroup.procs" for p in self.cgroups.open(record.id).paths if p.is_dir()]
            if _wants_limits(spec)
            else []
        )
        ns_fds = {}
        for ns in ("ipc", "uts", "net", "cgroup", "pid", "mnt"):
            try:
                ns_fds[ns] = os.open(f"/proc/{pid1}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                for fd in ns_fds.values():
                    os.close(fd)
                raise RuntimeFailure(f"cannot enter container {record.name}: {exc}") from exc
        rootless = not host_root()
        if rootless:  # the container's user namespace maps its ids: is the user's one of them?
            try:
                from pytest_minidock.runtime import userns

                uids, gids = (
                    userns.parse_map(Path(f"/proc/{pid1}/{kind}_map").read_text())
                    for kind in ("uid", "gid")
                )
                userns.check_mapped(
                    (spec.user if user is None else user) or "root",
                    resolved.uid,
                    resolved.gid,
                    uids=uids,
                    gids=gids,
                )
                resolved = replace(
                    resolved, groups=tuple(userns.mapped_groups(resolved.groups, gids))
                )
            except BaseException:
                for fd in ns_fds.values():
                    os.close(fd)
                raise
        # (rootless: a namespace we are in already, the host's network, is not entered again:
        # the kernel asks for its owner's capabilities even then)
        joins = [
            (ns, fd) for ns, fd in ns_fds.items() if not (rootless and _same_namespace(ns, fd))
        ]
        root_fd = os.open(f"/proc/{pid1}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        stdio = stdio or Stdio(stdin=None, stdout=1, stderr=2)
        out_pipe = err_pipe = None
        if capture:
            out_pipe = os.pipe2(os.O_CLOEXEC)
            err_pipe = os.pipe2(os.O_CLOEXEC)
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        master = slave = -1
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = EXIT_RUNTIME
                try:
                    self.sys.set_pdeathsig(_SIGKILL)
                    os.close(sync_r)
                    # Join the container's cgroups while the host's /sys/fs/cgroup is visible.
                    for p in cgroup_procs:
                        with contextlib.suppress(OSError), open(p, "w") as f:
                            f.write(str(os.getpid()))
                    entering = "user"
                    try:
                        if rootless:  # the user namespace that owns the container's first
                            userns.join_owner(ns_fds["mnt"], self.sys)
                        for ns, fd in joins:
                            entering = ns
                            self.sys.setns(fd, 0)
                    except OSError as exc:
                        with contextlib.suppress(OSError):
                            os.write(
                                sync_w,
                                f"E {EXIT_RUNTIME} cannot enter container {record.name}: "
                                f"setns into its {entering} namespace: "
                                f"{exc.strerror or exc}\n".encode(),
                            )
                        raise
                    os.fchdir(root_fd)
                    os.chroot(".")
                    if stdio.tty:  # the container's devpts, so that tty/ttyname work inside
                        master, slave = os.openpty()
                    child = os.fork()
                    if child == 0:
                        self._exec_child(
                            argv,
                            env=full_env,
                            cwd=cwd,
                            user=resolved,
                            keep_caps=keep_caps,
                            privileged=is_priv,
                            stdio=stdio,
                            out_pipe=out_pipe,
                            err_pipe=err_pipe,
                            slave=slave,
                            sync_w=sync_w,
                        )
                    os.close(sync_w)
                    if master >= 0:
                        os.close(slave)
                        _copy_tty(master, stdio)
                    _, status = os.waitpid(child, 0)
                    code = _exit_code(status)
                finally:
                    os._exit(code)
            os.close(sync_w)
            sync_w = -1
            if slave >= 0:
                os.close(slave)
                slave = -1
            out = err = b""
            if capture:
                assert out_pipe is not None
                assert err_pipe is not None
                os.close(out_pipe[1])
                os.close(err_pipe[1])
                out, err = _collect(out_pipe[0], err_pipe[0])
            message = _read_all(sync_r)
            _, status = os.waitpid(pid, 0)
            code = _exit_code(status)
            if message.startswith(b"E "):
                ecode, _, text = message[2:].decode(errors="replace").strip().partition(" ")
                failure = RuntimeFailure(text)
                failure.exit_code = int(ecode)  # type: ignore[attr-defined]
                raise failure
            return ExecResult(code, out, err)
        finally:
            for fd in (*ns_fds.values(), root_fd, sync_r, sync_w, master, slave):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            for pair in (out_pipe, err_pipe):
                if pair is not None:
                    for fd in pair:
                        with contextlib.suppress(OSError):
                            os.close(fd)

    def _exec_child(
        self,
        argv: Sequence[str],
        *,
        env: tuple[str, ...],
        cwd: str,
        user: ResolvedUser,
        keep_caps: frozenset[int] | None,
        privileged: bool,
        stdio: Stdio,
        out_pipe: tuple[int, int] | None,
        err_pipe: tuple[int, int] | None,
        slave: int,
        sync_w: int,
    ) -> None:  # pragma: no cover - child
        code, message = EXIT_RUNTIME, ""
        try:
            if slave >= 0:
                os.setsid()
                import fcntl
                import termios

                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                fds = (slave, slave, slave)
            else:
                stdin = (
                    stdio.stdin if stdio.stdin is not None else os.open("/dev/null", os.O_RDONLY)
                )
                out = out_pipe[1] if out_pipe else (stdio.stdout if stdio.stdout is not None else 1)
                err = err_pipe[1] if err_pipe else (stdio.stderr if stdio.stderr is not None else 2)
                fds = (stdin, out, err)
            for target, fd in enumerate(fds):
                os.dup2(fd, target, inheritable=True)
            try:
                os.chdir(cwd)
            except OSError as exc:
                raise _ExecError(
                    EXIT_CANNOT_INVOKE, f"cannot chdir to {cwd}: {exc.strerror}"
                ) from exc
            path = _find_executable(argv[0], env)
            if path is None:
                raise _ExecError(
                    EXIT_NOT_FOUND,
                    f'exec: "{argv[0]}": executable file not found in $PATH',
                )
            _drop_privileges(self.sys, user, keep_caps, privileged)
            os.closerange(3, sync_w)
            os.closerange(sync_w + 1, 65536)
            os.execve(path, list(argv), _env_dict(env))
        except _ExecError as exc:
            code, message = exc.code, str(exc)
        except PermissionError as exc:
            code, message = EXIT_CANNOT_INVOKE, f"exec: {argv[0]}: permission denied ({exc})"
        except BaseException as exc:
            message = f"exec failed: {exc}"
        with contextlib.suppress(OSError):
            os.write(sync_w, f"E {code} {message}\n".encode())
        os._exit(code)


class Monitor:
    """The monitor and PID 1 of one container, run from its plain-data ``_Launch``.

    One implementation for both ways of starting: forked from the owner (the direct path:
    detached starts, the CLI, no launcher) or from the owner's launcher process (``launcher``).
    """

    def __init__(
        self,
        launch: _Launch,
        sys: Syscalls,
        state: StateDir,
        remove_stale: Callable[[str], None] | None = None,
    ) -> None:
        self.launch = launch
        self.sys = sys
        self.state = state
        self.remove_stale = remove_stale
        self.relay: Any = None
        """Rootless: the relay of the published ports (``portfwd.relay_published``)."""

    def entry(self, sync_w: int, detached: bool, parent: int = 0) -> None:  # pragma: no cover
        """First child: becomes the monitor (after a double fork when detached); never returns.

        ``parent``: the pid of the process that forked this one; exit at once if it is already
        gone (it may die between the fork and ``PR_SET_PDEATHSIG``)."""
        launch = self.launch
        code = 1
        try:
            if detached:
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)
                null = os.open("/dev/null", os.O_RDWR)
                for target in (0, 1, 2):
                    if target not in _stdio_fds(launch.stdio):
                        os.dup2(null, target)
                os.close(null)
            else:
                self.sys.set_pdeathsig(_SIGKILL)
                if parent and os.getppid() != parent:
                    os._exit(EXIT_RUNTIME)
            if os.geteuid() != 0:  # rootless: namespaces need a user namespace of our own
                from pytest_minidock.runtime.userns import become_root

                become_root(self.sys)
                if not detached:  # (kept across the unshare; said again all the same)
                    self.sys.set_pdeathsig(_SIGKILL)
                    if parent and os.getppid() != parent:
                        os._exit(EXIT_RUNTIME)
            code = self._monitor(launch, sync_w)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(sync_w, f"E {EXIT_RUNTIME} {exc}\n".encode())
            code = EXIT_RUNTIME
        finally:
            os._exit(code)

    def _monitor(self, launch: _Launch, sync_w: int) -> int:  # pragma: no cover - child
        from pytest_minidock.runtime import _sys

        monitor_pid = os.getpid()
        stdio = launch.stdio
        tty_master = tty_slave = -1  # tty_slave: the socket PID 1 sends the pty master over
        out_r = out_w = err_r = err_w = -1
        if stdio.tty:
            import socket

            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            tty_master, tty_slave = a.detach(), b.detach()
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if launch.port_fds and _holder_joined():
            # rootless: relayed from here, by a thread (none after the unshare); root's ports
            # are nftables' to forward, and its monitor spares the import (~3 ms, in the start)
            from pytest_minidock.runtime import portfwd

            self.relay = portfwd.relay_published(
                launch.root, launch.cid, launch.port_fds, paused=True
            )
        flags = _sys.CLONE_NEWPID
        self.sys.unshare(flags)
        pid = os.fork()
        if pid == 0:
            try:
                self._pid1(
                    launch,
                    sync_w=sync_w,
                    out_w=out_w,
                    err_w=err_w,
                    tty_slave=tty_slave,
                    tty_master=tty_master,
                    out_r=out_r,
                    err_r=err_r,
                )
            finally:
                os._exit(EXIT_RUNTIME)
        for fd in (out_w, err_w, tty_slave):
            if fd >= 0:
                os.close(fd)
        _close_fds_except(
            {0, 1, 2, sync_w, out_r, err_r, tty_master, *_stdio_fds(stdio), *launch.port_fds}
            | {launch.exit_fd}  # (closed when this process exits, after recording the exit)
            | (self.relay.fds() if self.relay is not None else set())
        )
        if self.relay is not None:
            self.relay.resume()
        self.record_running(pid, monitor_pid, process_start_time(monitor_pid))
        os.write(sync_w, f"P {pid} {monitor_pid}\n".encode())  # (the owner then attaches the
        os.close(sync_w)  # network PID 1 waits for, before it makes its terminal)
        if stdio.tty:  # receive the pty master PID 1 made in the container's own devpts
            import socket

            with socket.socket(fileno=tty_master) as sock:
                _, fds, _, _ = socket.recv_fds(sock, 1, 1)
            tty_master = fds[0] if fds else -1
        log = LogWriter(launch.dir / "log")
        if stdio.tty:
            if tty_master >= 0:
                self._pump_tty(log, tty_master, stdio)
        else:
            self._pump(log, out_r, err_r, stdio)
        _, status = os.waitpid(pid, 0)
        code = _exit_code(status)
        log.close()
        self.record_exit(code)
        return code

    def record_exit(self, code: int) -> None:
        """The payload exited with ``code``: drop the cgroup, record the exit (unless an
        ``rm -f`` is under way) and, for ``--rm``, remove the container."""
        launch = self.launch
        oom = False
        if launch.cgroup is not None:
            with contextlib.suppress(Exception):
                oom = bool(getattr(launch.cgroup.stats(), "oom_kills", 0))
            with contextlib.suppress(Exception):
                launch.cgroup.kill_all(_SIGKILL)
            with contextlib.suppress(Exception):
                launch.cgroup.remove()
        if self.relay is not None:  # (rootless) its copies of the host sockets too
            with contextlib.suppress(Exception):
                self.relay.close()
        if launch.port_fds:  # stop forwarding, then let the host ports go (before the state
            with contextlib.suppress(Exception):  # says "exited": they are free by then)
                from pytest_minidock.runtime.network import Networks

                Networks(launch.root).unpublish(launch.cid)
            for fd in launch.port_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        with self.state.locked(launch.cid):  # one read-modify-write: `rm -f` may be under way
            state = self.state.read_state(launch.cid)
            self.state.write_state(
                launch.cid,
                replace(
                    state,
                    status="removing" if state.status == "removing" else "exited",
                    exit_code=code,
                    finished_at=now_iso(),
                    oom_killed=oom,
                ),
            )
        if launch.auto_remove:
            with contextlib.suppress(Exception):
                remove_files(self.state, launch.cid, remove_stale=self.remove_stale)

    def record_running(
        self,
        pid: int,
        monitor_pid: int,
        monitor_start: int | None,
        *,
        pid_start: int | None = None,
    ) -> None:
        """PID 1 was forked: the container is running (the owner reads it once started).
        ``pid_start``: PID 1's start time, if known (else read here)."""
        launch = self.launch
        self.state.update(
            launch.cid,
            status="running",
            pid=pid,
            pid_start=process_start_time(pid) if pid_start is None else pid_start,
            monitor_pid=monitor_pid,
            monitor_start=monitor_start,
            started_at=now_iso(),
            finished_at="",
            exit_code=0,
            error="",
            detached=not launch.bound,
        )

    def _pump(
        self, log: LogWriter, out_r: int, err_r: int, stdio: Stdio
    ) -> None:  # pragma: no cover
        streams = {out_r: ("stdout", stdio.stdout), err_r: ("stderr", stdio.stderr)}
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN)
        while streams:
            for fd, _ in poller.poll():
                data = os.read(fd, 65536)
                if not data:
                    poller.unregister(fd)
                    os.close(fd)
                    del streams[fd]
                    continue
                name, forward = streams[fd]
                log.write(name, data)
                if forward is not None:
                    with contextlib.suppress(OSError):
                        _write_all(forward, data)

    def _pump_tty(self, log: LogWriter, master: int, stdio: Stdio) -> None:  # pragma: no cover
        poller = select.poll()
        poller.register(master, select.POLLIN)
        stdin = stdio.stdin
        if stdin is not None:
            poller.register(stdin, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == master:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: every slave fd is closed
                        data = b""
                    if not data:
                        os.close(master)
                        return
                    log.write("stdout", data)
                    if stdio.stdout is not None:
                        with contextlib.suppress(OSError):
                            _write_all(stdio.stdout, data)
                else:
                    data = os.read(fd, 65536)
                    if not data:
                        poller.unregister(fd)
                        continue
                    with contextlib.suppress(OSError):
                        _write_all(master, data)

    def _pid1(
        self,
        launch: _Launch,
        *,
        sync_w: int,
        out_w: int,
        err_w: int,
        tty_slave: int,
        tty_master: int,
        out_r: int,
        err_r: int,
        parent_pidfd: int = -1,
        prepared: bool = False,
        kit_ready: bool = False,
        premounted: mounts.Premount | None = None,
    ) -> None:  # pragma: no cover - child
        """PID 1 of the new PID namespace: namespaces, root filesystem, privileges, exec.

        ``parent_pidfd``: a pidfd of the forking process; if it died before PR_SET_PDEATHSIG
        took effect, PID 1 exits at once (``getppid`` cannot tell: it is 0 in a new PID ns).
        ``prepared``: this process already ran ``unshare_namespaces`` (forked ahead of time
        by the launcher), with ``launch.own_net``; ``kit_ready``: it made the kit too
        (``mounts.plan_kit``); ``premounted``: and an overlay (``use_premount``)."""
        from pytest_minidock.runtime import mounts

        sys_ = self.sys
        code, message = EXIT_RUNTIME, ""
        try:
            if not prepared:
                sys_.set_pdeathsig(_SIGKILL)
                if parent_pidfd >= 0 and select.select([parent_pidfd], [], [], 0)[0]:
                    os._exit(EXIT_RUNTIME)
            for fd in (out_r, err_r, tty_master):
                if fd >= 0:
                    os.close(fd)
            if launch.cgroup is not None:
                launch.cgroup.add(os.getpid())
            if not prepared:
                unshare_namespaces(sys_, own_net=launch.own_net)
            if launch.go_fd >= 0:  # in our own network namespace: the owner may attach it now
                os.write(sync_w, b"N\n")
            if launch.kit and not kit_ready:
                mounts.apply(mounts.plan_kit(), sys_)
            elif kit_ready and not launch.kit:
                mounts.drop_kit(sys_)
            plan = launch.plan
            if premounted is not None:
                plan = use_premount(plan, premounted, sys_)
            mounts.apply(plan, sys_)
            sys_.sethostname(launch.hostname)
            if launch.go_fd >= 0:  # the owner attaches our network meanwhile
                go = os.read(launch.go_fd, 1)
                os.close(launch.go_fd)
                if go != b"g":
                    raise _ExecError(EXIT_RUNTIME, "the container's network was not set up")
            # standard streams
            if tty_slave >= 0:  # a terminal from the container's own devpts instance
                import socket

                master, slave = os.openpty()
                with socket.socket(fileno=tty_slave) as sock:
                    socket.send_fds(sock, [b"m"], [master])
                os.close(master)
                os.setsid()
                import fcntl
                import termios

                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                fds = (slave, slave, slave)
            else:
                stdin = launch.stdio.stdin
                if stdin is None:
                    stdin = os.open("/dev/null", os.O_RDONLY)
                fds = (stdin, out_w, err_w)
            for target, fd in enumerate(fds):
                os.dup2(fd, target, inheritable=True)
            code, message = EXIT_NOT_FOUND, ""
            path = _find_executable(launch.argv[0], launch.env)
            if path is None:
                raise _ExecError(
                    EXIT_NOT_FOUND,
                    f'exec: "{launch.argv[0]}": executable file not found in $PATH'
                    if "/" not in launch.argv[0]
                    else f"exec: {launch.argv[0]}: no such file or directory",
                )
            _drop_privileges(sys_, launch, launch.keep_caps, launch.privileged)
            os.closerange(3, sync_w)
            os.closerange(sync_w + 1, 65536)
            if launch.init:
                from pytest_minidock.runtime.init import run_init

                code = run_init(path, launch.argv, launch.env, sync_w)
                os._exit(code)
            os.execve(path, list(launch.argv), _env_dict(launch.env))
        except _ExecError as exc:
            code, message = exc.code, str(exc)
        except PermissionError as exc:
            code, message = EXIT_CANNOT_INVOKE, f"exec: {launch.argv[0]}: permission denied ({exc})"
        except BaseException as exc:
            code = EXIT_RUNTIME
            message = f"cannot start container {launch.image}: {exc}"
        with contextlib.suppress(OSError):
            os.write(sync_w, f"E {code} {message}\n".encode())
        os._exit(code)


def _exited(state: ContainerState) -> bool:
    """Whether the monitor recorded the exit (an ``rm -f`` keeps the status ``removing``)."""
    if state.status == "removing":
        return bool(state.finished_at)
    return state.status != "running"


def unshare_namespaces(sys_: Syscalls, *, own_net: bool) -> None:  # pragma: no cover - PID 1
    """PID 1's own mount, UTS, IPC and cgroup namespaces (and network, with its loopback up)."""
    from pytest_minidock.runtime import _sys

    flags = _sys.CLONE_NEWNS | _sys.CLONE_NEWUTS | _sys.CLONE_NEWIPC | _sys.CLONE_NEWCGROUP
    if own_net:
        flags |= _sys.CLONE_NEWNET
    sys_.unshare(flags)
    if own_net:
        sys_.loopback_up()


def use_premount(
    plan: tuple[Any, ...], pre: mounts.Premount, sys_: Syscalls
) -> tuple[Any, ...]:  # pragma: no cover - PID 1 (tests/privileged)
    """The rest of ``plan`` once the overlay ``pre`` (a zygote mounted ahead) stands in for its
    overlay mount: ``pre``'s upper and work dirs renamed onto the container's (empty, fresh)
    ones, its mount moved onto the container's rootfs. If it does not fit (another image, a
    restarted container), it is taken down and ``plan`` returned as it is."""
    from pytest_minidock.runtime import mounts
    from pytest_minidock.runtime._sys import MNT_DETACH, MS_MOVE

    for i, op in enumerate(plan):
        if op.kind == "mount" and op.fstype == "overlay":
            parts = mounts.overlay_parts(op.data)
            if parts is not None and pre.fits(parts[0], parts[3]):
                _, upper, work, _ = parts
                try:
                    os.rename(f"{pre.staged}/upper", upper)
                    os.rename(f"{pre.staged}/work", work)
                    sys_.mount(f"{pre.staged}/rootfs", op.target, "", MS_MOVE, "")
                except OSError:  # (the plan's own mount needs a work dir it may use again)
                    with contextlib.suppress(OSError):
                        sys_.umount2(f"{pre.staged}/rootfs", MNT_DETACH)
                    mounts.clear_volatile(work)
                    return plan
                return plan[:i] + plan[i + 1 :]
            break
    with contextlib.suppress(OSError):
        sys_.umount2(f"{pre.staged}/rootfs", MNT_DETACH)
    return plan


def remove_files(
    state: StateDir,
    cid: str,
    *,
    volumes: bool = False,
    remove_stale: Callable[[str], None] | None = None,
) -> None:
    """Remove a container's directory and name (``remove_stale``: drops its cgroup)."""
    d = state.dir(cid)
    try:
        config = json.loads((d / "config.json").read_bytes())
    except (OSError, ValueError):
        config = {}
    name = config.get("Name", "")
    spec = config.get("Spec", {})
    if remove_stale is not None and (
        spec.get("memory") or spec.get("cpus") or spec.get("pids_limit")
    ):
        with contextlib.suppress(Exception):
            remove_stale(cid)
    network = spec.get("network", "default") if isinstance(spec, dict) else "default"
    # its leases, veths and forwarded ports. NetworkSettings is written after PID 1 is let go:
    # a payload that exits at once is removed before it, and its lease must go all the same.
    if config.get("NetworkSettings") or network not in ("host", "none"):
        from pytest_minidock.runtime.network import Networks

        with contextlib.suppress(Exception):
            Networks(state.root).detach(cid)
    if volumes:
        for vol in state.volumes.glob(f"anon-{cid[:12]}-*"):
            _remove_tree(vol)
    trash = d.with_name(f".rm-{cid}-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.rename(d, trash)
    if name:
        state.release_name(name, cid)
    _remove_tree(trash)


def _same_namespace(ns: str, fd: int) -> bool:
    """Whether the namespace open as ``fd`` is this process's own ``ns`` namespace."""
    theirs, ours = os.fstat(fd), os.stat(f"/proc/self/ns/{ns}")
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _stdio_fds(stdio: Stdio) -> set[int]:
    return {fd for fd in (stdio.stdin, stdio.stdout, stdio.stderr) if fd is not None}


def _close_fds_except(keep: set[int]) -> None:  # pragma: no cover - monitor
    """Close every inherited descriptor but ``keep`` (the monitor must not pin the owner's
    pipes, sockets or files, e.g. a ``subprocess`` caller's stdout)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _preload(*, tty: bool = True, init: bool = True) -> None:
    """Import, before forking, every module the forked side needs after ``pivot_root`` (from
    then on the host's Python files are out of reach): for a terminal (``tty``), for ``--init``.
    (What PID 1 needs before ``pivot_root``, e.g. to bring its loopback up, it imports itself.)"""
    if tty:
        import fcntl  # noqa: F401
        import socket  # noqa: F401
        import termios  # noqa: F401
    if init:
        from pytest_minidock.runtime import init as init_module  # noqa: F401


class _ExecError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _find_executable(cmd: str, env: Sequence[str]) -> str | None:
    """Resolve ``cmd`` with the container's PATH, as execvp would (in the container's root)."""
    if "/" in cmd:
        return cmd if os.path.exists(cmd) else None
    path = DEFAULT_PATH
    for item in env:
        if item.startswith("PATH="):
            path = item[5:]
    for d in path.split(":"):
        candidate = os.path.join(d or ".", cmd)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    for d in path.split(":"):
        candidate = os.path.join(d or ".", cmd)
        if os.path.isfile(candidate):
            return candidate  # exists but not executable: execve reports EACCES → 126
    return None


def _env_dict(env: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in env:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def _drop_privileges(
    sys_: Syscalls, user: ResolvedUser | _Launch, keep_caps: frozenset[int] | None, privileged: bool
) -> None:  # pragma: no cover - child
    try:
        os.setgroups(list(user.groups))
    except PermissionError:
        # rootless with the single mapping: the user namespace denies setgroups (the process
        # keeps the supplementary groups it has, which the namespace cannot name anyway). (No
        # import: the host's Python files are out of reach in the container's root.)
        try:
            with open("/proc/self/setgroups", "rb") as f:
                denied = f.read().strip() == b"deny"
        except OSError:
            denied = False
        if not denied:
            raise
    os.setresgid(user.gid, user.gid, user.gid)
    if keep_caps is not None:
        sys_.drop_capabilities(keep_caps)
    os.setresuid(user.uid, user.uid, user.uid)
    if not privileged:
        sys_.set_no_new_privs()


def _capabilities(spec: ContainerSpec) -> frozenset[int] | None:
    """The capability set the payload keeps (None: all of them, for ``--privileged``)."""
    from pytest_minidock.runtime._sys import DOCKER_DEFAULT_CAPS, parse_caps

    if spec.privileged:
        return None
    caps = set(DOCKER_DEFAULT_CAPS)
    if spec.cap_add:
        caps |= parse_caps(spec.cap_add)
    if spec.cap_drop:
        caps -= parse_caps(spec.cap_drop)
    return frozenset(caps)


def _wants_limits(spec: ContainerSpec) -> bool:
    """Whether the spec asks for any resource limit (importing ``cgroups`` only if it may)."""
    if not (spec.memory or spec.cpus or spec.pids_limit):
        return False
    return bool(_limits(spec).requested)


def _limits(spec: ContainerSpec) -> Any:
    from pytest_minidock.runtime.cgroups import Limits, parse_cpus, parse_memory

    return Limits(
        memory=parse_memory(spec.memory) if spec.memory else None,
        cpus=parse_cpus(spec.cpus) if spec.cpus else None,
        pids=spec.pids_limit,
    )


def _collect(out_r: int, err_r: int) -> tuple[bytes, bytes]:
    bufs: dict[int, list[bytes]] = {out_r: [], err_r: []}
    open_fds = {out_r, err_r}
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [])
        for fd in ready:
            data = os.read(fd, 65536)
            if data:
                bufs[fd].append(data)
            else:
                open_fds.discard(fd)
    return b"".join(bufs[out_r]), b"".join(bufs[err_r])


def _copy_tty(master: int, stdio: Stdio) -> None:
    stdin = stdio.stdin
    fds = [master] + ([stdin] if stdin is not None else [])
    while True:
        ready, _, _ = select.select(fds, [], [])
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            if not data:
                return
            _write_all(stdio.stdout if stdio.stdout is not None else 1, data)
        if stdin is not None and stdin in ready:
            data = os.read(stdin, 65536)
            if not data:
                fds.remove(stdin)
            else:
                _write_all(master, data)


def _write_new(path: Path, text: str | bytes) -> None:
    """Write a new (or a spare's empty) file. Not ``write_text``: on ext4, closing a file that
    was truncated (``O_TRUNC``) forces its block allocation, ~0.1-0.3 ms (auto_da_alloc)."""
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _hosts_file(hostname: str, network: str) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    if network != "host":
        lines.append(f"127.0.1.1\t{hostname}")
    return "\n".join(lines) + "\n"


def _resolv_conf() -> str:
    """The host's resolv.conf without loopback resolvers (unreachable from a container)."""
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        text = ""
    kept = []
    for line in text.splitlines():
        parts = line.split()
        if (
            parts[:1] == ["nameserver"]
            and len(parts) > 1
            and (parts[1].startswith("127.") or parts[1] == "::1")
        ):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def _slug(path: str) -> str:
    return path.strip("/").replace("/", "_") or "root"


def _remove_tree(path: Path) -> None:
    """Remove a directory tree (or a file); one already gone is fine. Without ``shutil`` (it
    imports bz2, lzma and more: ~2-3 ms for every ``run --rm``): ``os.fwalk`` never follows a
    symlink out of the tree. Anything it cannot remove (a read-only directory, without root),
    the store's helper removes."""
    try:
        for _, dirs, files, fd in os.fwalk(path, topdown=False, follow_symlinks=False):
            for name in files:
                os.unlink(name, dir_fd=fd)
            for name in dirs:
                try:
                    os.rmdir(name, dir_fd=fd)
                except NotADirectoryError:  # a symlink to a directory
                    os.unlink(name, dir_fd=fd)
        os.rmdir(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            _remove_tree_slowly(path)
    except NotADirectoryError:
        os.unlink(path)
    except OSError:
        _remove_tree_slowly(path)


def _remove_tree_slowly(path: Path) -> None:
    from pytest_minidock.errors import StoreError
    from pytest_minidock.store.blobs import remove_tree

    try:
        remove_tree(path)
    except StoreError:
        if os.geteuid() == 0:
            raise
        # rootless: what the container's other users made (files of subordinate ids) only the
        # root of a user namespace that maps those ids may remove
        from pytest_minidock.runtime.userns import run_as_root

        run_as_root(lambda: remove_tree(path), f"cannot remove {path}")
