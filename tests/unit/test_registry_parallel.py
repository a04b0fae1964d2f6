"""``registry.parallel.run_all``: tasks on a few threads, the first failure cancelling the rest."""

from __future__ import annotations

import threading
import time

import pytest

from pytest_minidock.registry.parallel import Cancelled, run_all


def test_every_task_runs_on_at_most_the_workers_asked_for() -> None:
    running = 0
    most = 0
    done: list[int] = []
    lock = threading.Lock()

    def task(n: int, cancel: threading.Event) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
            done.append(n)

    run_all([lambda c, n=n: task(n, c) for n in range(8)], 3, "test")
    assert sorted(done) == list(range(8))
    assert 1 < most <= 3


def test_a_single_task_runs_in_the_calling_thread() -> None:
    seen: list[str] = []
    run_all([lambda cancel: seen.append(threading.current_thread().name)], 4, "test")
    assert seen == [threading.current_thread().name]


def test_the_first_failure_cancels_the_others_and_is_raised() -> None:
    started: list[int] = []
    cancelled: list[int] = []

    def slow(n: int, cancel: threading.Event) -> None:
        started.append(n)
        for _ in range(500):
            if cancel.is_set():
                cancelled.append(n)
                raise Cancelled
            time.sleep(0.01)

    def failing(cancel: threading.Event) -> None:
        time.sleep(0.02)
        raise ValueError("the first failure")

    def later(cancel: threading.Event) -> None:
        raise AssertionError("not started once a task has failed")

    tasks = [lambda c: slow(0, c), failing, lambda c: slow(1, c), later]
    began = time.monotonic()
    with pytest.raises(ValueError, match="the first failure"):
        run_all(tasks, 3, "test")
    assert time.monotonic() - began < 3
    assert sorted(cancelled) == sorted(started) == [0, 1]
