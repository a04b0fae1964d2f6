"""Progress of a pull or push: one ``Progress`` event per step of each blob, docker's words.

Events are delivered to a ``ProgressCallback`` one at a time (the transfers serialise the calls),
from whichever worker thread made the progress. ``id`` is the blob's 12-character short digest,
as docker shows layer IDs, or a tag for the events about the whole image.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pytest_minidock._record import dataclass

__all__ = [
    "ALREADY_EXISTS",
    "DOWNLOADING",
    "DOWNLOAD_COMPLETE",
    "LAYER_EXISTS",
    "MOUNTED_FROM",
    "PREPARING",
    "PULLING_FROM",
    "PULLING_FS_LAYER",
    "PULL_COMPLETE",
    "PUSHED",
    "PUSHING",
    "RETRYING",
    "VERIFYING",
    "WAITING",
    "Progress",
    "ProgressCallback",
    "serialised",
]

PULLING_FROM = "Pulling from"
PULLING_FS_LAYER = "Pulling fs layer"
WAITING = "Waiting"
DOWNLOADING = "Downloading"
RETRYING = "Retrying"
VERIFYING = "Verifying Checksum"
DOWNLOAD_COMPLETE = "Download complete"
ALREADY_EXISTS = "Already exists"
PULL_COMPLETE = "Pull complete"
PREPARING = "Preparing"
PUSHING = "Pushing"
PUSHED = "Pushed"
LAYER_EXISTS = "Layer already exists"
MOUNTED_FROM = "Mounted from"


@dataclass(frozen=True, slots=True)
class Progress:
    """One step: ``a1b2c3d4e5f6: Downloading 1.2MB/2.1MB``."""

    id: str
    action: str
    current: int = 0
    total: int = 0
    detail: str = ""


ProgressCallback = Callable[[Progress], None]


def serialised(callback: ProgressCallback | None) -> ProgressCallback:
    """``callback`` behind a lock (a no-op when None), so worker threads may all report."""
    if callback is None:
        return _ignore
    lock = threading.Lock()
    target = callback

    def report(event: Progress) -> None:
        with lock:
            target(event)

    return report


def _ignore(event: Progress) -> None:
    return None
