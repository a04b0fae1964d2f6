"""Inter-process locks of the store: exclusive locks and a shared/exclusive GC lock.

Every lock is an advisory ``flock`` on a file under ``ROOT/locks``: it is released by the kernel
when its holder dies, even by SIGKILL, so a crashed process never leaves the store locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager

from pytest_minidock.errors import StoreError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager
    from pathlib import Path

__all__ = ["exclusive", "gc_exclusive", "gc_shared"]

DEFAULT_TIMEOUT = 300.0


def exclusive(
    path: Path, *, timeout: float = DEFAULT_TIMEOUT, what: str = ""
) -> AbstractContextManager[None]:
    """Hold the exclusive lock at ``path`` (created on demand) for the ``with`` body.

    The same ``flock`` the ``filelock`` package takes on Linux (so the two interoperate), without
    its import (~90 ms on a cold process). ``timeout`` in seconds; negative: wait for ever; 0: try
    once."""
    return _flock(path, fcntl.LOCK_EX, timeout, what)


@contextmanager
def _flock(path: Path, mode: int, timeout: float, what: str) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:  # its directory too is created on demand
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = None if timeout < 0 else time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise StoreError(
                        f"timed out after {timeout:.0f}s waiting for the lock {path}"
                        f"{' (' + what + ')' if what else ''}; another minidock process holds it"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            # Unlock explicitly: closing releases the flock only when no other descriptor shares
            # this open file description, and a child forked meanwhile by another thread (a
            # container's monitor or PID 1, before its exec) holds a copy of it.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def gc_shared(path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> AbstractContextManager[None]:
    """Held (shared) by every writer that adds blobs or snapshots; excludes garbage collection."""
    return _flock(path, fcntl.LOCK_SH, timeout, "store garbage collection is running")


def gc_exclusive(path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> AbstractContextManager[None]:
    """Held by garbage collection: waits until no writer holds the shared side."""
    return _flock(path, fcntl.LOCK_EX, timeout, "store writers are busy")
