"""Entering a user namespace as an ordinary user: the test forks, drops to uid/gid 65534 and
enters with the single mapping, then reports what it sees through a pipe."""

from __future__ import annotations

import json
import os

import pytest

from pytest_minidock.runtime._sys import LinuxSyscalls
from pytest_minidock.runtime.userns import IdMap, IdRange, enter, unavailable_reason

pytestmark = pytest.mark.privileged

NOBODY = 65534


def _in_child_as_nobody() -> dict[str, object]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        out: dict[str, object] = {}
        try:
            # loaded before the drop: the interpreter's files may be unreadable to nobody
            syscalls = LinuxSyscalls()
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            syscalls.prctl(4, 1)  # PR_SET_DUMPABLE: as a process that never changed uid is
            idmap = IdMap(
                uids=(IdRange(0, NOBODY, 1),), gids=(IdRange(0, NOBODY, 1),), helpers=False
            )
            enter(idmap, syscalls)
            with open("/proc/self/uid_map") as f:
                out["uid_map"] = f.read().split()
            out["ids"] = [os.getuid(), os.geteuid(), os.getgid()]
            # root in its own namespace: it may mount a tmpfs in its mount namespace
            os.makedirs("/tmp/minidock-userns-probe", exist_ok=True)
            ret = os.system("mount -t tmpfs none /tmp/minidock-userns-probe 2>/dev/null")
            out["mount"] = ret == 0
        except Exception as exc:  # reported to the parent
            out["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(w, json.dumps(out).encode())
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)  # type: ignore[no-any-return]


def test_an_ordinary_user_becomes_root_in_its_own_user_namespace() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root to drop to an ordinary uid first")
    assert unavailable_reason() is None, "user namespaces are unavailable on this machine"
    seen = _in_child_as_nobody()
    assert "error" not in seen, seen
    assert seen["ids"] == [0, 0, 0]
    assert seen["uid_map"] == ["0", str(NOBODY), "1"]
    assert seen["mount"] is True
    # the probe mount lived only in the child's mount namespace
    with open("/proc/self/mountinfo") as f:
        assert "minidock-userns-probe" not in f.read()
    os.rmdir("/tmp/minidock-userns-probe")
