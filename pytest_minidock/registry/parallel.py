"""Blob transfers on a thread pool: the first failure stops the others and is raised."""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["Cancelled", "run_all"]


class Cancelled(Exception):
    """Raised by a task that saw the cancel event: another task failed (never escapes)."""


def run_all(tasks: Sequence[Callable[[threading.Event], None]], workers: int, name: str) -> None:
    """Run each task (given the shared cancel event) on up to ``workers`` threads.

    A single task runs in the calling thread. When one fails, the event is set so that the
    others stop at their next chunk, and the first failure is raised once all have ended (also
    on ``KeyboardInterrupt``: no worker outlives the call).
    """
    cancel = threading.Event()
    if len(tasks) == 1:
        tasks[0](cancel)
        return
    pool = ThreadPoolExecutor(max(1, min(workers, len(tasks))), thread_name_prefix=name)
    try:
        pending = {pool.submit(task, cancel) for task in tasks}
        first: BaseException | None = None
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                exc = fut.exception()
                if exc is not None and not isinstance(exc, Cancelled) and first is None:
                    first = exc
                    cancel.set()
        if first is not None:
            raise first
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
