"""Build progress: events the builder reports, and printers in BuildKit's plain and tty styles.

The builder numbers every step it reports (``#N``) and sends a ``BuildEvent`` when the step
starts, for each line of output a ``RUN`` prints, when it is found in the cache, and when it is
done or fails. ``PlainProgress`` prints them as ``docker build --progress=plain`` does::

    #3 [build 2/4] RUN make
    #3 0.412 cc -o app main.c
    #3 DONE 0.9s

    #4 [stage-1 1/2] COPY --from=build /src/app /app
    #4 CACHED

``TtyProgress`` keeps one status line per running step and shows finished steps as BuildKit's
tty view does (``=> [build 2/4] RUN make  0.9s``). Both are thread safe: stages build in
parallel.
"""

from __future__ import annotations

import threading
import time

from pytest_minidock._record import dataclass

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal, TextIO, TypeAlias

__all__ = ["BuildEvent", "EventKind", "PlainProgress", "ProgressCallback", "TtyProgress", "printer"]

if TYPE_CHECKING:
    EventKind = Literal["start", "cached", "output", "done", "error", "info"]
else:
    EventKind = str


@dataclass(frozen=True, slots=True)
class BuildEvent:
    """One thing that happened to step ``#number`` (``name``: ``[stage i/n] INSTRUCTION``)."""

    kind: EventKind
    number: int
    name: str
    text: str = ""
    """An output line (``output``), what failed (``error``) or a message (``info``)."""
    elapsed: float = 0.0
    """Seconds since the step started (``output``, ``done``, ``error``)."""


ProgressCallback: TypeAlias = "Callable[[BuildEvent], None]"


class PlainProgress:
    """Print events like ``--progress=plain``."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: BuildEvent) -> None:
        n = f"#{event.number}"
        if event.kind == "start":
            lines = [f"{n} {event.name}"]
        elif event.kind == "cached":
            lines = [f"{n} {event.name}", f"{n} CACHED", ""]
        elif event.kind == "output":
            lines = [f"{n} {event.elapsed:.3f} {event.text}"]
        elif event.kind == "done":
            lines = [f"{n} DONE {event.elapsed:.1f}s", ""]
        elif event.kind == "error":
            lines = [f"{n} ERROR: {event.text}", ""]
        else:
            lines = [f"{n} {event.name}"]
            if event.text:
                lines.append(f"{n} {event.text}")
            lines += [f"{n} DONE {event.elapsed:.1f}s", ""]
        with self._lock:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()


class TtyProgress:
    """Print events like BuildKit's tty view: a line per finished step, the running one live."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._running: dict[int, tuple[str, float, str]] = {}
        self._status = False
        self._start = time.monotonic()

    def _clear(self) -> None:
        if self._status:
            self.stream.write("\r\x1b[K")
            self._status = False

    def _show_status(self) -> None:
        if not self._running:
            return
        number = max(self._running)
        name, started, last = self._running[number]
        took = time.monotonic() - started
        line = f"=> {name}  {took:.1f}s"
        if last:
            line += f"  \x1b[2m{last}\x1b[0m"
        self.stream.write(line[:200])
        self._status = True

    def __call__(self, event: BuildEvent) -> None:
        with self._lock:
            self._clear()
            if event.kind == "start":
                self._running[event.number] = (event.name, time.monotonic(), "")
            elif event.kind == "output":
                name, started, _ = self._running.get(event.number, (event.name, 0.0, ""))
                self._running[event.number] = (name, started, event.text)
            elif event.kind == "cached":
                self.stream.write(f"\x1b[34m=> CACHED {event.name}\x1b[0m\n")
            elif event.kind == "done":
                self._running.pop(event.number, None)
                self.stream.write(f"\x1b[34m=> {event.name}  {event.elapsed:.1f}s\x1b[0m\n")
            elif event.kind == "error":
                self._running.pop(event.number, None)
                self.stream.write(f"\x1b[31m=> ERROR {event.name}\x1b[0m\n{event.text}\n")
            else:
                detail = f" {event.text}" if event.text else ""
                self.stream.write(f"\x1b[34m=> {event.name}{detail}\x1b[0m\n")
            self._show_status()
            self.stream.flush()


def printer(mode: str, stream: TextIO) -> Callable[[BuildEvent], None]:
    """The printer for ``--progress`` ``plain``, ``tty`` or ``auto`` (tty if ``stream`` is one)."""
    if mode == "auto":
        mode = "tty" if stream.isatty() else "plain"
    if mode == "tty":
        return TtyProgress(stream)
    if mode == "plain":
        return PlainProgress(stream)
    raise ValueError(f"unknown progress mode {mode!r}: use plain, tty or auto")
