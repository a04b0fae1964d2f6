"""A lock released by one thread is free even when another thread forked a child while it was
held: the child's copy of the descriptor must not keep the lock (it did, and a container's PID 1
waiting for its network held the networks' lock until the owner, waiting for that lock, deadlocked).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.runtime.state import StateDir
from pytest_minidock.store.locking import exclusive, gc_shared

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager
    from pathlib import Path


def _fork_while_held(lock: Callable[[], AbstractContextManager[None]]) -> int:
    """Hold ``lock`` in a thread, fork a child that just waits, release: returns the child."""
    held = threading.Event()
    forked = threading.Event()
    child: list[int] = []

    def holder() -> None:
        with lock():
            held.set()
            forked.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    pid = os.fork()
    if pid == 0:  # a monitor or PID 1 before its exec: it keeps every inherited descriptor
        signal.pause()
        os._exit(0)
    child.append(pid)
    forked.set()
    thread.join(10)
    return child[0]


@pytest.mark.parametrize("kind", ["exclusive", "gc_shared"])
def test_store_locks_are_free_after_release_despite_a_forked_child(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "locks" / "x.lock"
    make = exclusive if kind == "exclusive" else gc_shared
    pid = _fork_while_held(lambda: make(path))
    try:
        with exclusive(path, timeout=2, what="the test's"):
            pass
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_container_lock_is_free_after_release_despite_a_forked_child(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    cid = "a" * 64
    state.dir(cid).mkdir(parents=True)
    (state.dir(cid) / "state").write_bytes(b"")
    pid = _fork_while_held(lambda: state.locked(cid))
    try:
        done = threading.Event()

        def take() -> None:
            with state.locked(cid):
                done.set()

        threading.Thread(target=take, daemon=True).start()
        assert done.wait(2), "the forked child still holds the container's lock"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
