"""Blob transfers on a few threads: the first failure stops the others and is raised.

Plain ``threading`` rather than ``concurrent.futures`` (which imports ``logging``: ~10 ms of every
``minidock pull``): each worker takes the next task until none is left or one has failed.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["Cancelled", "run_all"]


class Cancelled(Exception):
    """Raised by a task that saw the cancel event: another task failed (never escapes)."""


def run_all(tasks: Sequence[Callable[[threading.Event], None]], workers: int, name: str) -> None:
    """Run each task (given the shared cancel event) on up to ``workers`` threads.

    A single task runs in the calling thread. When one fails, the event is set so that the
    others stop at their next chunk and tasks not yet started are skipped, and the first failure
    is raised once all have ended (also on ``KeyboardInterrupt``: no worker outlives the call).
    """
    cancel = threading.Event()
    if len(tasks) == 1:
        tasks[0](cancel)
        return
    lock = threading.Lock()
    queue = iter(tasks)
    failures: list[BaseException] = []

    def work() -> None:
        while not cancel.is_set():
            with lock:
                task = next(queue, None)
            if task is None:
                return
            try:
                task(cancel)
            except Cancelled:
                pass
            except BaseException as exc:  # handed to the caller's thread
                with lock:
                    failures.append(exc)
                cancel.set()

    threads = [
        threading.Thread(target=work, name=f"{name}-{i}", daemon=True)
        for i in range(max(1, min(workers, len(tasks))))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        cancel.set()
        for thread in threads:
            thread.join()
        raise
    if failures:
        raise failures[0]
