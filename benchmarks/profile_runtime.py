"""Where one library start+exit spends its time, across the owner, the monitor and PID 1.

Run (as root): ``.venv/bin/python -m benchmarks.profile_runtime [--network none|host]
[--runs 20] [--launcher] [--cprofile]``. Wraps the runtime's functions (by name, at run time;
a name that no longer exists is skipped) so that each call stamps the monotonic clock into
memory shared with the forked processes (it survives ``pivot_root`` and the closing of
descriptors), then prints the timeline of one run and, per phase, the median over ``--runs``
runs. Without ``--launcher`` the owner forks the monitor itself (the CLI's path); with it PID 1
comes from the launcher (the library's default), started here as ``benchmarks._profiled_launcher``
with the same stamps (the memory is then a file in /dev/shm named by ``$MINIDOCK_PROFILE_SHM``).
``--cprofile`` adds a cProfile of the owner's side. Nothing here changes what the runtime does.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
import tempfile
import time
from typing import Any

# (what only ``main`` needs is imported there: the instrumented launcher imports this module,
# and its forks cost what its size does)

_REC = struct.Struct("<q48s")
_SLOTS = 256
_REGION = 1 << 14
_HEAD = struct.Struct("<iii")  # pid, role, number of records
_ROLES = "PMXLZ"  # owner (parent), monitor, PID 1, launcher, zygote (a PID 1 forked ahead)
_role = [0]
_launcher_pid = [0]
_ident = [os.getpid()]
"""This process's key to its region: its pid, or a random one in a child (every PID 1 is pid 1
in its own namespace)."""


def _new_ident() -> None:
    _ident[0] = int.from_bytes(os.urandom(3), "big") | 1 << 24


os.register_at_fork(after_in_child=_new_ident)


def _map() -> mmap.mmap:
    """The stamps' memory: shared with forked children, and with the launcher through a file."""
    size = _REGION * _SLOTS
    path = os.environ.get("MINIDOCK_PROFILE_SHM")
    if path is None:
        fd, path = tempfile.mkstemp(prefix="minidock-profile-", dir="/dev/shm")
        os.ftruncate(fd, size)
        os.environ["MINIDOCK_PROFILE_SHM"] = path
    else:
        fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, size, mmap.MAP_SHARED)
    finally:
        os.close(fd)


_shm = _map()


def _slot(pid: int) -> int:
    """This process's region (by its pid, probing on from ``pid % _SLOTS``; claimed if free)."""
    for i in range(_SLOTS):
        base = ((pid + i) % _SLOTS) * _REGION
        owner, _, _ = _HEAD.unpack_from(_shm, base)
        if owner in (pid, 0):
            return base
    return -1


def stamp(label: str) -> None:
    """Record ``label`` now, in this process's region (no allocation of descriptors)."""
    t = time.perf_counter_ns()
    pid = _ident[0]
    role = _role[0]
    if role == 3 and _launcher_pid[0] and os.getpid() != _launcher_pid[0]:
        role = 4  # forked from the launcher, not yet PID 1: a zygote
    base = _slot(pid)
    if base < 0:
        return
    _, _, n = _HEAD.unpack_from(_shm, base)
    off = base + _HEAD.size + n * _REC.size
    if off + _REC.size < base + _REGION:
        _REC.pack_into(_shm, off, t, label.encode()[:48])
        _HEAD.pack_into(_shm, base, pid, role, n + 1)


def reset() -> None:
    _shm[:] = bytes(len(_shm))


def events() -> list[tuple[int, int, int, str]]:
    """(time, role, pid, label) of every stamp since ``reset``, in time order."""
    out = []
    for slot in range(_SLOTS):
        base = slot * _REGION
        pid, role, n = _HEAD.unpack_from(_shm, base)
        for i in range(n):
            t, label = _REC.unpack_from(_shm, base + _HEAD.size + i * _REC.size)
            out.append((t, role, pid, label.rstrip(b"\0").decode()))
    return sorted(out)


def wrap(obj: Any, name: str, label: str | None = None, role: int | None = None) -> None:
    """Stamp ``label>``/``label<`` around ``obj.name`` (``role``: the process it starts)."""
    orig = getattr(obj, name, None)
    if orig is None:
        print(f"(not found, not timed: {getattr(obj, '__name__', obj)}.{name})")
        return
    tag = label or name

    @functools.wraps(orig)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if role is not None:
            _role[0] = role
        stamp(f"{tag}>")
        try:
            return orig(*args, **kwargs)
        finally:
            stamp(f"{tag}<")

    setattr(obj, name, timed)


def instrument(*, owner: bool = True) -> None:
    """Wrap the runtime's phases (``owner``: the owner's side too, with the modules only it
    imports: the launcher must stay as small as it is, its forks cost what its size does)."""
    from pytest_minidock.runtime import _sys, container, launcher, logs, mounts, state

    runtime = container.Runtime
    targets: list[tuple[Any, str, str]] = [
        (runtime, "create", "Runtime.create (dirs, files)"),
        (runtime, "start", "Runtime.start"),
        (runtime, "_prepare", "Runtime._prepare"),
        (runtime, "spec_of", "Runtime.spec_of"),
        (runtime, "wait", "Runtime.wait"),
        (runtime, "remove", "Runtime.remove"),
        (runtime, "_remove_files", "Runtime._remove_files"),
        (container, "_read_all", "owner: read sync pipe"),
        (container, "_read_until_started", "owner: read until started"),
        (container, "_remove_tree", "remove_tree"),
        (container._Launch, "to_wire", "_Launch.to_wire"),
        (container._Launch, "from_wire", "_Launch.from_wire"),
        (launcher.Launcher, "launch", "Launcher.launch (send)"),
        (launcher, "_recv_request", "recv request"),
        (launcher._Supervisor, "start", "supervisor.start"),
        (launcher._Supervisor, "hand_off", "supervisor.hand_off"),
        (launcher._Supervisor, "prefork", "supervisor.prefork"),
        (launcher._Supervisor, "_prefork_one", "supervisor.prefork_one"),
        (launcher._Supervisor, "reap", "supervisor.reap"),
        (launcher._Supervisor, "output", "supervisor.output"),
        (container.Monitor, "record_exit", "record_exit"),
        (container.Monitor, "record_running", "record_running"),
        (logs.LogWriter, "__init__", "log open"),
        (container, "_close_fds_except", "close_fds_except"),
        (container, "unshare_namespaces", "unshare_namespaces"),
        (container.Monitor, "_pump", "pump (payload running)"),
        (state.StateDir, "find", "state.find"),
        (state.StateDir, "update", "state.update"),
        (state.StateDir, "read_state", "state.read_state"),
        (state.StateDir, "write_state", "state.write_state"),
        (state.StateDir, "make_spare", "state.make_spare"),
        (state.StateDir, "take_spare", "state.take_spare"),
        (state.StateDir, "claim_name", "state.claim_name"),
        (state.StateDir, "release_name", "state.release_name"),
        (logs.LogWriter, "close", "log.close"),
        (mounts, "apply", "mounts.apply"),
        (mounts, "plan_rootfs", "mounts.plan_rootfs"),
        (container, "_find_executable", "find_executable"),
        (container, "_drop_privileges", "drop_privileges"),
        (os, "fork", "os.fork"),
        (os, "waitpid", "os.waitpid"),
    ]
    if owner:
        from pytest_minidock import api, spec
        from pytest_minidock.runtime import cgroups

        targets += [
            (api.Engine, "create", "Engine.create"),
            (spec, "make_spec", "make_spec"),
            (spec, "resolve_user", "resolve_user"),
            (cgroups.CgroupfsManager, "create", "cgroups.create"),
        ]
        for name in ("stats", "kill_all", "remove", "add"):
            wrap(cgroups.CgroupfsGroup, name, f"cgroup.{name}")
    for obj, name, label in targets:
        wrap(obj, name, label)
    for name in ("unshare", "set_pdeathsig", "sethostname", "loopback_up", "mount", "mknod"):
        wrap(_sys.LinuxSyscalls, name, f"sys.{name}")
    for name in ("mkdir", "symlink", "touch", "pivot_root", "umount2", "drop_capabilities"):
        wrap(_sys.LinuxSyscalls, name, f"sys.{name}")
    wrap(container.Monitor, "entry", "monitor", role=1)
    wrap(container.Monitor, "_pid1", "pid1", role=2)
    execve, exit_ = os.execve, os._exit

    def timed_execve(*args: Any) -> None:
        stamp("EXECVE")
        execve(*args)

    def timed_exit(code: int) -> None:
        stamp(f"_exit({code})")
        exit_(code)

    os.execve = timed_execve  # type: ignore[assignment]
    os._exit = timed_exit  # type: ignore[assignment]


def main() -> None:
    import argparse
    import collections
    import contextlib
    import cProfile
    import pstats
    import statistics
    from pathlib import Path

    from benchmarks._roots import remove_work
    from benchmarks.bench_runtime import WARMUPS, make_store, stop_launcher

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--network", default="none")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--launcher", action="store_true", help="monitors forked by the launcher")
    args = parser.parse_args()

    from pytest_minidock.api import Engine
    from pytest_minidock.spec import Overrides

    work = Path(tempfile.mkdtemp(prefix="minidock-prof-"))
    try:
        root, _ = make_store(work)
        engine = Engine(root, launcher=args.launcher)
        if args.launcher:  # start the launcher as our instrumented copy of it
            from pytest_minidock.runtime import launcher

            vars(launcher)["__name__"] = "benchmarks._profiled_launcher"
        overrides = Overrides(command=("/bin/true",), network=args.network)

        def cycle() -> None:
            started = engine.run("busybox", overrides)
            stamp("RUN returned")
            engine.wait(started.id)
            stamp("WAIT returned")
            engine.remove(started.id)
            stamp("REMOVE returned")

        if args.cprofile:
            for _ in range(WARMUPS):
                cycle()
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.runs):
                cycle()
            prof.disable()
            stats = pstats.Stats(prof)
            stats.sort_stats("cumulative").print_stats(35)
            stats.sort_stats("tottime").print_stats(20)

        instrument()
        firsts: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
        totals: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
        for i in range(WARMUPS + args.runs):
            reset()
            t0 = time.perf_counter_ns()
            cycle()
            if i < WARMUPS:
                continue
            evs = events()
            if i == WARMUPS:
                print(f"== one run (network {args.network}): ms since run() was called")
                for t, role, pid, label in evs:
                    who = f"{_ROLES[role]}{pid:<7}"
                    print(f"{(t - t0) / 1e6:8.3f}  {who} {'   ' * role}{label}")
            opened: dict[tuple[int, str], list[int]] = collections.defaultdict(list)
            spent: dict[tuple[int, str], float] = collections.defaultdict(float)
            seen = set()
            for t, role, pid, label in evs:
                if (role, label) not in seen:
                    seen.add((role, label))
                    firsts[(role, label)].append((t - t0) / 1e6)
                key = (pid, label[:-1])
                if label.endswith(">"):
                    opened[key].append(t)
                elif label.endswith("<") and opened[key]:
                    spent[(role, label[:-1])] += (t - opened[key].pop()) / 1e6
            for key, ms in spent.items():
                totals[key].append(ms)
        print(f"\n== median over {args.runs} runs: first occurrence, ms since run() was called")
        for key in sorted(firsts, key=lambda k: statistics.median(firsts[k])):
            print(f"{statistics.median(firsts[key]):8.3f}  {_ROLES[key[0]]} {key[1]}")
        print("\n== median time per run inside each phase (all its calls), by process")
        for key in sorted(totals, key=lambda k: (k[0], -statistics.median(totals[k]))):
            print(f"{statistics.median(totals[key]):8.3f} ms  {_ROLES[key[0]]} {key[1]}")
        print("P: the owner (this process), M: the monitor, X: the container's PID 1,")
        print("L: the launcher (with --launcher, also the monitor of these containers),")
        print("Z: a PID 1 the launcher forked ahead (a zygote), until it is handed a start")
    finally:
        stop_launcher()
        remove_work(work)
        with contextlib.suppress(OSError):
            os.unlink(os.environ["MINIDOCK_PROFILE_SHM"])


if __name__ == "__main__":
    main()
