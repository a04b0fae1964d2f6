"""User namespaces for rootless mode: whether the machine allows them, which id maps to ask for,
moving a process into one, and joining a container's.

An ordinary user gets a user namespace in which they are root (uid 0 inside = their uid outside).
With the ``newuidmap``/``newgidmap`` helpers (Debian's ``uidmap`` package) and a subordinate range
in ``/etc/subuid`` and ``/etc/subgid``, ids 1..N inside map to that range, so images whose files
belong to other users unpack and run as they do for root (the *full* map). Without them the map is
the single line ``0 <uid> 1``: the files of other owners then all belong to uid 0 (the user), which
most images tolerate, and a container can run as uid 0 only (the *single* mapping).
``MINIDOCK_USERNS=single`` asks for the single mapping even where the full one is possible.

How the runtime uses it, when the calling process is not root on the host (``host_root``):

- the processes that make a container's namespaces (the launcher, a directly forked monitor)
  first become root of a user namespace of their own (:func:`become_root`); every namespace,
  mount and PID 1 made afterwards belongs to it;
- a process that enters a running container from outside (``exec``, ``cp``) first joins the
  user namespace owning the container's namespaces (:func:`join_owner`): an ordinary user may
  ``setns`` into a user namespace it created, and gets root's capabilities over the container's
  namespaces there;
- the owner checks up front that user namespaces are allowed (:func:`check_available`) and that
  a ``--user`` is mapped (:func:`check_mapped`), so that both fail with one clear line.
"""

from __future__ import annotations

import os
from pathlib import Path

from pytest_minidock._record import dataclass
from pytest_minidock.capabilities import forget_userns, host_root, host_uid, in_initial_userns
from pytest_minidock.errors import PrivilegeError, UsageError
from pytest_minidock.runtime._sys import CLONE_NEWNS, CLONE_NEWUSER

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Final, Protocol

    from pytest_minidock.runtime._sys import Syscalls

    class _Done(Protocol):
        """What running a map helper returns (``subprocess.CompletedProcess`` fits)."""

        @property
        def returncode(self) -> int: ...
        @property
        def stderr(self) -> bytes | None: ...


__all__ = [
    "ENV_USERNS",
    "IdMap",
    "IdRange",
    "become_root",
    "check_available",
    "check_mapped",
    "current_idmap",
    "enter",
    "host_root",
    "host_uid",
    "in_initial_userns",
    "join_owner",
    "map_lines",
    "mapped_groups",
    "parse_map",
    "plan_idmap",
    "reap",
    "run_as_root",
    "runtime_idmap",
    "setgroups_denied",
    "snapshot_owner",
    "subordinate_ranges",
    "unavailable_reason",
    "write_maps",
]

ENV_USERNS: Final = "MINIDOCK_USERNS"
"""``single``: rootless containers get the single mapping even where the full one is possible."""
NS_GET_USERNS: Final = 0xB701
"""``ioctl`` on a namespace file: a new file for the user namespace owning it (``_IO(0xb7, 1)``)."""
_PROC_SYS = Path("/proc/sys")
"""Where :func:`unavailable_reason` reads the settings (tests point it at a fake tree)."""


@dataclass(frozen=True, slots=True)
class IdRange:
    """``count`` ids from ``inside`` in the namespace are ``outside`` onwards on the host."""

    inside: int
    outside: int
    count: int

    def line(self) -> str:
        """The range as a ``/proc/PID/uid_map`` line."""
        return f"{self.inside} {self.outside} {self.count}"


@dataclass(frozen=True, slots=True)
class IdMap:
    """The uid and gid maps of a user namespace, and whether the setuid helpers write them."""

    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]
    helpers: bool

    @property
    def single(self) -> bool:
        """Only the user's own id is mapped (to 0)."""
        return not self.helpers

    def describe(self) -> str:
        """One line for messages: ``uid 0=1000, 1-65536=100000-165535 (newuidmap)``."""

        def part(ranges: tuple[IdRange, ...]) -> str:
            out = []
            for r in ranges:
                if r.count == 1:
                    out.append(f"{r.inside}={r.outside}")
                else:
                    out.append(
                        f"{r.inside}-{r.inside + r.count - 1}={r.outside}-{r.outside + r.count - 1}"
                    )
            return ", ".join(out)

        how = "newuidmap/newgidmap" if self.helpers else "a single mapping"
        return f"uid {part(self.uids)}; gid {part(self.gids)} ({how})"


def subordinate_ranges(text: str, user: str, uid: int) -> list[tuple[int, int]]:
    """The ``(start, count)`` ranges ``/etc/subuid``-style ``text`` grants ``user`` (by name or
    by numeric id), in file order. Comments, blank and malformed lines are skipped, as shadow's
    tools do."""
    found: list[tuple[int, int]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            continue
        owner, start, count = parts
        if owner not in (user, str(uid)):
            continue
        try:
            first, number = int(start), int(count)
        except ValueError:
            continue
        if first >= 0 and number > 0:
            found.append((first, number))
    return found


def plan_idmap(
    *,
    uid: int,
    gid: int,
    user: str,
    subuid_text: str,
    subgid_text: str,
    helpers_available: bool,
) -> IdMap:
    """The maps to ask for: the user's ids as 0, plus the first subordinate uid and gid ranges at
    1 onwards when both exist and the helpers are installed; else the single mapping."""
    subuids = subordinate_ranges(subuid_text, user, uid)
    subgids = subordinate_ranges(subgid_text, user, uid)
    if helpers_available and subuids and subgids:
        (ustart, ucount), (gstart, gcount) = subuids[0], subgids[0]
        return IdMap(
            uids=(IdRange(0, uid, 1), IdRange(1, ustart, ucount)),
            gids=(IdRange(0, gid, 1), IdRange(1, gstart, gcount)),
            helpers=True,
        )
    return IdMap(uids=(IdRange(0, uid, 1),), gids=(IdRange(0, gid, 1),), helpers=False)


@dataclass(frozen=True, slots=True)
class _Facts:
    """What decided the map: for the advice of :func:`check_mapped`."""

    user: str
    helpers: bool
    subuids: bool
    forced_single: bool


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _which(name: str) -> str | None:
    """``shutil.which`` without ``shutil`` (it imports bz2, lzma and more: ~2-3 ms)."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def current_idmap(
    *, etc: Path = Path("/etc"), which: Callable[[str], str | None] | None = None
) -> IdMap:
    """:func:`plan_idmap` for the calling process's user, from ``/etc/subuid``/``/etc/subgid``
    and the helpers on ``PATH``."""
    which = which or _which
    uid, gid = os.getuid(), os.getgid()
    return plan_idmap(
        uid=uid,
        gid=gid,
        user=_user_name(uid),
        subuid_text=_read(etc / "subuid"),
        subgid_text=_read(etc / "subgid"),
        helpers_available=bool(which("newuidmap") and which("newgidmap")),
    )


_planned: dict[str, tuple[IdMap, _Facts]] = {}


def runtime_idmap(environ: dict[str, str] | None = None) -> IdMap:
    """The map rootless containers get: :func:`current_idmap`, or the single mapping when
    ``MINIDOCK_USERNS=single`` (read once per process and environment value)."""
    return _plan(environ)[0]


def _plan(environ: dict[str, str] | None = None) -> tuple[IdMap, _Facts]:
    env = os.environ if environ is None else environ
    forced = env.get(ENV_USERNS, "").lower() == "single"
    key = "single" if forced else ""
    found = _planned.get(key)
    if found is None:
        idmap = current_idmap()
        user = _user_name(os.getuid())
        facts = _Facts(
            user=user,
            helpers=bool(_which("newuidmap") and _which("newgidmap")),
            subuids=bool(subordinate_ranges(_read(Path("/etc/subuid")), user, os.getuid())),
            forced_single=forced and idmap.helpers,
        )
        if forced and idmap.helpers:
            idmap = IdMap(uids=idmap.uids[:1], gids=idmap.gids[:1], helpers=False)
        found = _planned[key] = (idmap, facts)
    return found


def unavailable_reason(proc_sys: Path | None = None) -> str | None:
    """Why an ordinary user cannot make a user namespace here, with the setting to change; None
    when nothing known stands in the way. Reads the sysctls that Linux, Debian's kernel patch and
    Ubuntu's AppArmor use to forbid them."""
    base = _PROC_SYS if proc_sys is None else proc_sys

    def value(name: str) -> str | None:
        try:
            return (base / name).read_text().strip()
        except OSError:
            return None

    if value("user/max_user_namespaces") == "0":
        return (
            "user namespaces are disabled (user.max_user_namespaces = 0); enable them with "
            "`sysctl -w user.max_user_namespaces=15000`"
        )
    if value("kernel/unprivileged_userns_clone") == "0":
        return (
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0); "
            "enable them with `sysctl -w kernel.unprivileged_userns_clone=1`"
        )
    if value("kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (
            "AppArmor restricts unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns = 1); allow them with "
            "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor profile"
        )
    return None


_checked: list[str | None] = []


def check_available() -> None:
    """Rootless: raise ``PrivilegeError`` (one line: what to enable) if this machine forbids
    ordinary users user namespaces; nothing for root. Read once per process."""
    if host_root():
        return
    if not _checked:
        _checked.append(unavailable_reason())
    reason = _checked[0]
    if reason is not None:
        raise PrivilegeError(f"cannot run containers as an ordinary user: {reason}")


def parse_map(text: str) -> tuple[IdRange, ...]:
    """The ranges of ``/proc/PID/uid_map`` (or ``gid_map``) text."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append(IdRange(*(int(p) for p in parts)))
    return tuple(out)


def _maps(ranges: Sequence[IdRange], ident: int) -> bool:
    return any(r.inside <= ident < r.inside + r.count for r in ranges)


def check_mapped(
    user: str,
    uid: int,
    gid: int,
    *,
    uids: Sequence[IdRange] | None = None,
    gids: Sequence[IdRange] | None = None,
) -> None:
    """Raise ``UsageError`` (which id, why, how to fix it) if ``uid`` or ``gid`` is not mapped in
    the rootless containers' user namespace (``uids``/``gids``: that namespace's maps; default
    :func:`runtime_idmap`'s). ``user`` is the ``--user`` text, for the message."""
    idmap, facts = _plan()
    uids = idmap.uids if uids is None else uids
    gids = idmap.gids if gids is None else gids
    for kind, ident, ranges in (("uid", uid, uids), ("gid", gid, gids)):
        if _maps(ranges, ident):
            continue
        spans: list[list[int]] = []  # contiguous inside ranges, merged: "0-65536"
        for r in sorted(ranges, key=lambda r: r.inside):
            if spans and spans[-1][1] + 1 == r.inside:
                spans[-1][1] = r.inside + r.count - 1
            else:
                spans.append([r.inside, r.inside + r.count - 1])
        mapped = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
        name = facts.user
        if facts.forced_single:
            fix = f"unset {ENV_USERNS}=single to map your subordinate ids too"
        elif len(ranges) > 1 or any(r.count > 1 for r in ranges):
            fix = f"use a {kind} in that range (the subordinate ids of {name})"
        elif not facts.subuids:
            fix = (
                f"give {name} subordinate ids, as root: `usermod --add-subuids 100000-165535 "
                f"--add-subgids 100000-165535 {name}`"
                + ("" if facts.helpers else ", and install newuidmap/newgidmap (Debian: uidmap)")
            )
        elif not facts.helpers:
            fix = "install newuidmap/newgidmap (Debian: `apt install uidmap`)"
        else:
            fix = f"check the ranges of {name} in /etc/subuid and /etc/subgid"
        raise UsageError(
            f"user {user!r}: {kind} {ident} is not mapped in the rootless user namespace "
            f"(it maps {kind}s {mapped}): {fix}"
        )


def mapped_groups(gids: Sequence[int], ranges: Sequence[IdRange] | None = None) -> list[int]:
    """The supplementary groups of ``gids`` that are mapped (``ranges``: default
    :func:`runtime_idmap`'s gid map); the others cannot be given to a rootless container."""
    ranges = runtime_idmap().gids if ranges is None else ranges
    return [g for g in gids if _maps(ranges, g)]


def setgroups_denied(path: str = "/proc/self/setgroups") -> bool:
    """Whether ``setgroups`` is denied in this process's user namespace (the single mapping)."""
    try:
        with open(path, "rb") as f:
            return f.read().strip() == b"deny"
    except OSError:
        return False


def map_lines(ranges: Sequence[IdRange]) -> str:
    """The ``/proc/PID/uid_map`` text for ``ranges``."""
    return "".join(r.line() + "\n" for r in ranges)


class _Ran:
    """A finished helper: its exit code and what it wrote on stderr."""

    __slots__ = ("returncode", "stderr")

    def __init__(self, returncode: int, stderr: bytes) -> None:
        self.returncode = returncode
        self.stderr = stderr


def _spawn(argv: list[str]) -> _Ran:
    """Run ``argv`` (found on ``PATH``) with its stderr captured; no ``subprocess`` (~3 ms to
    import in the launcher)."""
    r, w = os.pipe()
    try:
        pid = os.posix_spawnp(
            argv[0], argv, dict(os.environ), file_actions=[(os.POSIX_SPAWN_DUP2, w, 2)]
        )
    except OSError as exc:
        os.close(r)
        os.close(w)
        return _Ran(127, str(exc).encode())
    os.close(w)
    status, out = reap(pid, r)
    return _Ran(os.waitstatus_to_exitcode(status), out)


def fork_child(
    work: Callable[[], None], report: Callable[[BaseException], bytes]
) -> tuple[int, int]:
    """Fork a child that runs ``work`` and exits 0, or writes ``report(error)`` to its error
    pipe and exits 1; returns its pid and the pipe's read end (for :func:`reap`)."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(err_r)
            work()
            code = 0
        except BaseException as exc:
            try:  # noqa: SIM105 - the child reports what it can
                os.write(err_w, report(exc))
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(err_w)
    return pid, err_r


def reap(pid: int, fd: int) -> tuple[int, bytes]:
    """Read ``fd`` (a child's error pipe) to its end and close it, then wait for ``pid``:
    its wait status and what it wrote."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return status, b"".join(chunks)


def write_maps(
    pid: int,
    idmap: IdMap,
    *,
    run: Callable[[list[str]], _Done] | None = None,
    proc: Path = Path("/proc"),
) -> None:
    """Give the user namespace of ``pid`` its maps: through ``newuidmap``/``newgidmap`` (run from
    outside that namespace), or by writing ``/proc/PID/{setgroups,uid_map,gid_map}`` for the
    single mapping. Raises ``PrivilegeError`` naming the helper or file that refused."""
    if idmap.helpers:
        runner = run or _spawn
        for tool, ranges in (("newuidmap", idmap.uids), ("newgidmap", idmap.gids)):
            argv = [tool, str(pid)]
            for r in ranges:
                argv += [str(r.inside), str(r.outside), str(r.count)]
            done = runner(argv)
            if done.returncode != 0:
                detail = done.stderr.decode(errors="replace").strip() if done.stderr else ""
                raise PrivilegeError(
                    f"{' '.join(argv)} failed (exit {done.returncode})"
                    + (f": {detail}" if detail else "")
                )
        return
    base = proc / str(pid)
    for name, text in (
        ("setgroups", "deny\n"),  # a single gid map needs setgroups denied first
        ("uid_map", map_lines(idmap.uids)),
        ("gid_map", map_lines(idmap.gids)),
    ):
        try:
            (base / name).write_text(text)
        except OSError as exc:
            raise PrivilegeError(
                f"cannot write {base / name} ({text.strip()!r}): {exc.strerror}"
            ) from exc


def _refused(exc: OSError) -> PrivilegeError:
    """The error for an ``unshare(CLONE_NEWUSER)`` the kernel refused, with the reason if known."""
    reason = unavailable_reason()  # read only to explain a refusal
    if reason is None:
        import errno

        if exc.errno == errno.ENOSPC:
            reason = "the limit of user namespaces is reached (user.max_user_namespaces)"
        elif exc.errno == errno.EPERM:
            reason = (
                "the kernel refused (inside a container, or a seccomp or AppArmor policy that "
                "forbids user namespaces?)"
            )
    why = f": {reason}" if reason else ""
    return PrivilegeError(f"cannot create a user namespace ({exc.strerror or exc}){why}")


def enter(idmap: IdMap, syscalls: Syscalls | None = None) -> None:
    """Move the calling process into a new user namespace (and mount namespace) mapped by
    ``idmap``; afterwards it is uid 0 and gid 0 there, with every capability over it.

    The calling process must have one thread. The single mapping is written by the process
    itself; the full one from outside the new namespace, by a forked helper that waits for the
    ``unshare`` and runs ``newuidmap``/``newgidmap`` (they refuse to run inside the namespace
    they map).
    """
    if syscalls is None:
        from pytest_minidock.runtime._sys import LinuxSyscalls

        syscalls = LinuxSyscalls()
    if not idmap.helpers:  # the single mapping: a process may write its own after unshare
        try:
            syscalls.unshare(CLONE_NEWUSER | CLONE_NEWNS)
        except OSError as exc:
            raise _refused(exc) from exc
        forget_userns()
        write_maps(os.getpid(), idmap)
    else:
        _enter_with_helpers(idmap, syscalls)
        forget_userns()
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _enter_with_helpers(idmap: IdMap, syscalls: Syscalls) -> None:
    """``unshare``, while a forked helper left outside runs ``newuidmap``/``newgidmap`` on us."""
    pid = os.getpid()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    helper = os.fork()
    if helper == 0:  # the helper: stays outside, maps the parent once it has unshared
        status = 1
        try:
            os.close(go_w)
            os.close(done_r)
            if os.read(go_r, 1) == b"u":
                try:
                    write_maps(pid, idmap)
                    os.write(done_w, b"ok")
                    status = 0
                except PrivilegeError as exc:
                    os.write(done_w, str(exc).encode()[:4000])
        finally:
            os._exit(status)
    os.close(go_r)
    os.close(done_w)
    try:
        try:
            syscalls.unshare(CLONE_NEWUSER | CLONE_NEWNS)
        except OSError as exc:
            os.write(go_w, b"x")
            raise _refused(exc) from exc
        os.write(go_w, b"u")
        answer = b""
        while chunk := os.read(done_r, 4096):
            answer += chunk
    finally:
        os.close(go_w)
        os.close(done_r)
        os.waitpid(helper, 0)
    if answer != b"ok":
        raise PrivilegeError(
            f"cannot map ids in the user namespace ({idmap.describe()}): "
            f"{answer.decode(errors='replace') or 'the helper died'} "
            f"({ENV_USERNS}=single maps only your own id, without the helpers)"
        )


def become_root(syscalls: Syscalls | None = None) -> None:
    """Rootless: make the calling process (one thread; not root on the host) root of the user
    namespace of the user's network holder (``holder``: mapped by :func:`runtime_idmap`, started
    if need be), whose network namespace the user's networks live in; it stays in the host's
    network namespace. Every process that makes a container's namespaces calls this first, and
    only this: the one place that decides which user namespace that is. ``PrivilegeError`` (what
    to enable) if the kernel refuses."""
    from pytest_minidock.runtime import holder

    holder.enter(syscalls=syscalls)


def join_owner(ns_fd: int, syscalls: Syscalls) -> bool:
    """Join the user namespace owning the namespace open as ``ns_fd`` (e.g. a container's mount
    namespace), as its root; False (nothing done) if this process is in it already. The caller
    must have one thread (a forked child). Raises ``OSError`` if the kernel refuses."""
    import fcntl

    user_fd = fcntl.ioctl(ns_fd, NS_GET_USERNS)
    try:
        target, own = os.fstat(user_fd), os.stat("/proc/self/ns/user")
        if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
            return False
        syscalls.setns(user_fd, CLONE_NEWUSER)
    finally:
        os.close(user_fd)
    forget_userns()
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    return True


def run_as_root(
    work: Callable[[], None], what: str, *, keep: tuple[type[BaseException], ...] = ()
) -> None:
    """Run ``work`` in a forked child that became root of a user namespace (:func:`become_root`),
    for what an ordinary user may not do outside one: remove files a container's other users
    made, mount a stopped container's overlay, unpack a layer with its owners. ``RuntimeFailure``
    naming ``what`` if it fails; an error of one of the ``keep`` types is raised as itself."""
    from pytest_minidock.errors import RuntimeFailure

    def as_root() -> None:  # pragma: no cover - child
        become_root()
        work()

    pid, err_r = fork_child(as_root, lambda exc: _report(exc, keep))
    status, data = reap(pid, err_r)
    if status != 0:
        kept = _kept(data, keep)
        if kept is not None:
            raise kept
        detail = data.removeprefix(b"T").decode(errors="replace") or f"status {status}"
        raise RuntimeFailure(f"{what}: {detail}")


def _report(exc: BaseException, keep: tuple[type[BaseException], ...]) -> bytes:
    """What a child of :func:`run_as_root` tells its parent of ``exc``: the pickled exception
    (``P``) if it is of a ``keep`` type, else its text (``T``)."""
    if keep and isinstance(exc, keep):
        import pickle

        try:
            return b"P" + pickle.dumps(exc)
        except Exception:  # (an exception that does not pickle: its text)
            pass
    return b"T" + str(exc).encode()[:4000]


def _kept(data: bytes, keep: tuple[type[BaseException], ...]) -> BaseException | None:
    """The exception a child pickled, if it is of a ``keep`` type and unpickles."""
    if not (keep and data.startswith(b"P")):
        return None
    import pickle

    try:
        exc = pickle.loads(data[1:])  # (our own child's bytes, through a pipe)
    except Exception:  # (told as text instead)
        return None
    return exc if isinstance(exc, keep) else None


def snapshot_owner() -> Callable[[Callable[[], None], str], None] | None:
    """How the image store unpacks and removes snapshots for this process (``Store``'s
    ``as_owner``): None for root on the host and under the single mapping (the calling process
    does it: owners become its own); with the full map, :func:`run_as_root` in the containers'
    user namespace, so that files of container uid N belong to subordinate uid N on the host
    and only that namespace's root removes them. Store errors come back as themselves."""
    if host_root() or not runtime_idmap().helpers:
        return None
    from pytest_minidock.errors import MinidockError

    def as_owner(work: Callable[[], None], what: str) -> None:
        run_as_root(work, what, keep=(MinidockError, OSError))

    return as_owner
