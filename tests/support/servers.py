"""Throw-away servers for tests and benchmarks: each connection handled by a daemon thread."""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


def serve(listener: socket.socket, handler: Callable[[socket.socket], object]) -> None:
    """Accept on ``listener`` in a daemon thread, each connection handed to ``handler`` in a
    thread of its own, until ``listener`` is closed (or shut down)."""

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def tcp_server(
    handler: Callable[[socket.socket], object], *, backlog: int | None = None
) -> tuple[socket.socket, int]:
    """A server on an ephemeral port of 127.0.0.1 (``serve``); the listener and its port."""
    server = socket.create_server(("127.0.0.1", 0), backlog=backlog)
    serve(server, handler)
    return server, server.getsockname()[1]
