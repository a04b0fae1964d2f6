"""User namespaces for rootless mode: whether the machine allows them, which id maps to ask for,
and moving a process into one.

An ordinary user gets a user namespace in which they are root (uid 0 inside = their uid outside).
With the ``newuidmap``/``newgidmap`` helpers (Debian's ``uidmap`` package) and a subordinate range
in ``/etc/subuid`` and ``/etc/subgid``, ids 1..N inside map to that range, so images whose files
belong to other users unpack and run as they do for root. Without them the map is the single line
``0 <uid> 1``: the files of other owners then all belong to uid 0 (the user), which most images
tolerate.

This module is the groundwork of issue 8 (rootless mode): planning is pure and unit-tested;
:func:`enter` is proven by a privileged test that drops to an unprivileged uid first. Wiring it
into the launcher (the runtime's one code path) is the next step.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_minidock._record import dataclass
from pytest_minidock.errors import PrivilegeError
from pytest_minidock.runtime._sys import CLONE_NEWNS, CLONE_NEWUSER

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pytest_minidock.runtime._sys import Syscalls

__all__ = [
    "IdMap",
    "IdRange",
    "current_idmap",
    "enter",
    "map_lines",
    "plan_idmap",
    "subordinate_ranges",
    "unavailable_reason",
    "write_maps",
]


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


def current_idmap(
    *, etc: Path = Path("/etc"), which: Callable[[str], str | None] | None = None
) -> IdMap:
    """:func:`plan_idmap` for the calling process's user, from ``/etc/subuid``/``/etc/subgid``
    and the helpers on ``PATH``."""
    import pwd
    import shutil

    which = which or shutil.which

    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)

    def read(name: str) -> str:
        try:
            return (etc / name).read_text()
        except OSError:
            return ""

    return plan_idmap(
        uid=uid,
        gid=gid,
        user=user,
        subuid_text=read("subuid"),
        subgid_text=read("subgid"),
        helpers_available=bool(which("newuidmap") and which("newgidmap")),
    )


def unavailable_reason(proc_sys: Path = Path("/proc/sys")) -> str | None:
    """Why an ordinary user cannot make a user namespace here, with the setting to change; None
    when nothing known stands in the way. Reads the sysctls that Linux, Debian's kernel patch and
    Ubuntu's AppArmor use to forbid them."""

    def value(name: str) -> str | None:
        try:
            return (proc_sys / name).read_text().strip()
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


def map_lines(ranges: Sequence[IdRange]) -> str:
    """The ``/proc/PID/uid_map`` text for ``ranges``."""
    return "".join(r.line() + "\n" for r in ranges)


def write_maps(
    pid: int,
    idmap: IdMap,
    *,
    run: Callable[[list[str]], subprocess.CompletedProcess[bytes]] | None = None,
    proc: Path = Path("/proc"),
) -> None:
    """Give the user namespace of ``pid`` its maps: through ``newuidmap``/``newgidmap`` (run from
    outside that namespace), or by writing ``/proc/PID/{setgroups,uid_map,gid_map}`` for the
    single mapping. Raises ``PrivilegeError`` naming the helper or file that refused."""
    if idmap.helpers:
        runner = run or (lambda argv: subprocess.run(argv, capture_output=True, check=False))
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

    def refused(exc: OSError) -> PrivilegeError:
        reason = unavailable_reason()  # read only to explain a refusal
        why = f": {reason}" if reason else ""
        return PrivilegeError(f"cannot create a user namespace ({exc.strerror or exc}){why}")

    if not idmap.helpers:  # the single mapping: a process may write its own after unshare
        try:
            syscalls.unshare(CLONE_NEWUSER | CLONE_NEWNS)
        except OSError as exc:
            raise refused(exc) from exc
        write_maps(os.getpid(), idmap)
    else:
        _enter_with_helpers(idmap, syscalls, refused)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _enter_with_helpers(
    idmap: IdMap, syscalls: Syscalls, refused: Callable[[OSError], PrivilegeError]
) -> None:
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
            raise refused(exc) from exc
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
            f"{answer.decode(errors='replace') or 'the helper died'}"
        )
