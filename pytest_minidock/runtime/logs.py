"""Container logs: docker's json-file format, one JSON object per chunk of output.

The monitor writes ``{"log": text, "stream": "stdout"|"stderr", "time": RFC3339Nano}`` lines in the
order output arrived, so ``logs`` can replay both streams interleaved, with timestamps on demand.
"""

from __future__ import annotations

import json
import os
import time

from pytest_minidock._record import dataclass

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

__all__ = ["LogRecord", "LogWriter", "follow", "read_logs"]


def _rfc3339(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One chunk of container output."""

    stream: str
    data: bytes
    time: str


class LogWriter:
    """Appends records to a container's log file (used by the monitor process)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def write(self, stream: str, data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        line = json.dumps({"log": text, "stream": stream, "time": _rfc3339(time.time_ns())})
        os.write(self.fd, line.encode() + b"\n")

    def close(self) -> None:
        os.close(self.fd)


def _parse(line: bytes) -> LogRecord | None:
    try:
        obj = json.loads(line)
        return LogRecord(obj["stream"], obj["log"].encode(), obj["time"])
    except (ValueError, KeyError, TypeError):
        return None


def read_logs(path: Path, *, tail: int | None = None) -> list[LogRecord]:
    """All records (or the last ``tail`` lines of output, as docker counts them)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    return _records(raw, tail)


def _records(raw: bytes, tail: int | None) -> list[LogRecord]:
    records = [r for r in (_parse(line) for line in raw.splitlines()) if r is not None]
    if tail is None:
        return records
    if tail <= 0:
        return []
    # docker's --tail counts lines of output, not chunks: split chunks into lines first.
    lines: list[LogRecord] = []
    for r in records:
        lines.extend(LogRecord(r.stream, part, r.time) for part in r.data.splitlines(keepends=True))
    return lines[-tail:]


def follow(
    path: Path, *, still_running: Callable[[], bool], poll: float = 0.05, tail: int | None = None
) -> Iterator[LogRecord]:
    """Yield existing records, then new ones as they are written, until the container stops.

    The log is read from one offset on: a record is neither lost nor repeated when the monitor
    appends while the existing ones are read, and a half-written last line waits for its end.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = b""
    offset = raw.rfind(b"\n") + 1  # complete lines only
    yield from _records(raw[:offset], tail)
    pending = b""
    while True:
        running = still_running()
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            record = _parse(line)
            if record is not None:
                yield record
        if not running and not chunk:
            return
        time.sleep(poll)
