"""``--init``: a minimal PID 1 that forwards signals to the payload and reaps every zombie.

It runs in the container's PID 1 (a forked copy of the monitor, already inside the container's
namespaces and root), forks the payload as PID 2, forwards the signals a process manager would
(TERM, INT, HUP, QUIT, USR1, USR2, WINCH) and reaps orphans until the payload exits; then it exits
with the payload's status, as tini does. Everything else in the namespace dies with it.
"""

from __future__ import annotations

import contextlib
import os
import signal

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

__all__ = ["FORWARDED_SIGNALS", "run_init"]

FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


def run_init(path: str, argv: Sequence[str], env: Sequence[str], sync_w: int) -> int:
    """Fork and exec the payload, then reap until it exits; return its docker exit code."""
    env_map = dict(item.partition("=")[::2] for item in env)
    child = os.fork()
    if child == 0:  # pragma: no cover - the payload
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execve(path, list(argv), env_map)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.write(sync_w, f"E 126 exec: {argv[0]}: {exc.strerror}\n".encode())
            os._exit(126)
    os.close(sync_w)

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # pragma: no cover - the payload was already reaped
            return 0
        if pid == child:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)
